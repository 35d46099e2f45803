"""``qkmsctl profile add|set|list|show|remove|activate|deactivate``: a node's key generation
profiles (which node or SAE pairs each serves, key size, validity, target, priority) and
their service state, through the node's admin socket.

In a network with a controller a change goes through it to every node the profile
concerns, and the answer lists each node's outcome; ``--local`` changes the one node."""

from __future__ import annotations

import json
from typing import Any

import click

from ._errors import Command, Group
from ._render import ago, bits, table
from .operate import _client, _value, _where


def _target(p: dict[str, Any]) -> str:
    if p.get("rate_bps") is not None:
        return f"{bits(int(p['rate_bps']))}/s"
    if p.get("share") is not None:
        return f"{p['share']:.0%} of link key"
    return "-"


def _pairs(p: dict[str, Any]) -> str:
    return ", ".join([*p["node_pairs"], *p["sae_pairs"]])


def profiles_table(result: dict[str, Any]) -> str:
    if not result["profiles"]:
        return "no key profiles (add one with `qkmsctl profile add`)"
    rows = []
    for s in result["profiles"]:
        p = s["profile"]
        rows.append(
            [
                s["name"],
                "active" if s["active"] else "inactive",
                f"{p['priority']:g}",
                _pairs(p),
                p["key_size"] or "-",
                _target(p),
                s["keys_served"],
                bits(s["bits_served"]),
                bits(s["bits_generated"]),
                bits(s["shortfall_bits"]),
            ]
        )
    heads = ["profile", "state", "priority", "serves", "key size", "target"]
    heads += ["keys served", "served", "generated", "shortfall"]
    return table(heads, rows)


def profile_report(s: dict[str, Any]) -> str:
    p = s["profile"]
    state = "active" if s["active"] else "inactive"
    since = f", period began {ago(s['period_started_at'])}" if s["period_started_at"] else ""
    lines = [
        f"profile {s['name']}: {state}{since}",
        f"  serves:     {_pairs(p)}",
        f"  priority:   {p['priority']:g}",
        f"  key size:   {p['key_size'] or '- (the policy)'}",
        f"  validity:   {p['key_validity_s'] or '- (the policy)'}",
        f"  target:     {_target(p)} (period {p['period_s']:g} s)",
        f"  this period: {s['keys_served']} keys, {bits(s['bits_served'])} served, "
        f"{bits(s['bits_generated'])} generated, target so far {bits(s['target_bits'])}, "
        f"shortfall {bits(s['shortfall_bits'])}",
        f"  since start: {s['keys_served_total']} keys served",
    ]
    if s.get("conflict"):
        lines.append(f"  conflict:   {s['conflict']}")
    return "\n".join(lines)


def distribution_report(result: dict[str, Any]) -> str:
    """A change made through the controller: each node's outcome, then this node's view."""
    head = f"profile {result['name']}: {result['op']} through controller {result['controller']}"
    rows = [[o["node"], o["result"], o["message"]] for o in result["nodes"]]
    lines = [head, table(["node", "outcome", "detail"], rows)]
    if result.get("status"):
        lines += ["", profile_report(result["status"])]
    return "\n".join(lines)


def _echo(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif "nodes" in result:
        click.echo(distribution_report(result))
    else:
        click.echo(profile_report(result))


_local = click.option(
    "--local",
    is_flag=True,
    help="change this node only, not through the controller (as in a network without one)",
)


@click.group(cls=Group)
def profile() -> None:
    """Key generation profiles: what node pairs or SAE pairs get, and their service state."""


@profile.command("list", cls=Command)
@_where
def profile_list(as_json: bool, **where: Any) -> None:
    """Every profile, active or not, and its service state in the current period."""
    result = _client(where).call("profiles")
    click.echo(json.dumps(result, indent=2) if as_json else profiles_table(result))


@profile.command("show", cls=Command)
@click.argument("name")
@_where
def profile_show(name: str, as_json: bool, **where: Any) -> None:
    """One profile and its service state."""
    _echo(_client(where).call("profile", name=name), as_json)


@profile.command("add", cls=Command)
@click.argument("name")
@click.option("--node-pair", "node_pairs", nargs=2, multiple=True, metavar="A B")
@click.option("--sae-pair", "sae_pairs", nargs=2, multiple=True, metavar="MASTER SLAVE")
@click.option("--key-size", type=int, help="bits of each service key of its SAE pairs")
@click.option("--validity", "key_validity_s", type=float, help="service key validity, seconds")
@click.option("--rate", "rate_bps", type=float, help="target: bits/s served to its pairs")
@click.option("--share", type=float, help="target: this fraction (0..1] of its links' key")
@click.option("--priority", type=float, help="higher first when key is short (default 1)")
@click.option("--period", "period_s", type=float, help="service state period, s (default 60)")
@click.option("--active", is_flag=True, help="activate it at once")
@_local
@_where
def profile_add(
    name: str,
    node_pairs: tuple[tuple[str, str], ...],
    sae_pairs: tuple[tuple[str, str], ...],
    active: bool,
    local: bool,
    as_json: bool,
    **options: Any,
) -> None:
    """Register a profile, e.g. `profile add gold --sae-pair SAE_A SAE_B --key-size 512
    --rate 10000 --priority 5 --active`.  Kept in the node's state directory."""
    where = {k: options.pop(k) for k in ("socket_path", "config", "lab_dir", "node")}
    fields: dict[str, Any] = {k: v for k, v in options.items() if v is not None}
    fields["name"] = name
    fields["node_pairs"] = [f"{a}~{b}" for a, b in node_pairs]
    fields["sae_pairs"] = [f"{m}>{s}" for m, s in sae_pairs]
    if active:
        fields["active"] = True
    params: dict[str, Any] = {"profile": fields, **({"local": True} if local else {})}
    _echo(_client(where).call("profile_add", **params), as_json)


@profile.command("set", cls=Command)
@click.argument("name")
@click.argument("settings", nargs=-1, required=True)
@_local
@_where
def profile_set(
    name: str, settings: tuple[str, ...], local: bool, as_json: bool, **where: Any
) -> None:
    """Change fields, e.g. `profile set gold priority=9 rate_bps=null share=0.5`
    (null drops a field; pairs as JSON lists: `sae_pairs='["SAE_A>SAE_B"]'`)."""
    changes: dict[str, Any] = {}
    for setting in settings:
        field, sep, value = setting.partition("=")
        if not sep or not field:
            raise click.BadParameter(f"{setting!r}: give FIELD=VALUE", param_hint="SETTINGS")
        changes[field] = _value(value)
    extra = {"local": True} if local else {}
    _echo(_client(where).call("profile_set", name=name, changes=changes, **extra), as_json)


@profile.command("remove", cls=Command)
@click.argument("name")
@_local
@_where
def profile_remove(name: str, local: bool, as_json: bool, **where: Any) -> None:
    """Delete a profile."""
    extra = {"local": True} if local else {}
    result = _client(where).call("profile_remove", name=name, **extra)
    if as_json or "nodes" in result:
        _echo(result, as_json)
        return
    left = ", ".join(result["profiles"]) or "none"
    click.echo(f"removed {name} (left: {left})")


def _toggle(command: str, method: str, doc: str) -> None:
    @profile.command(command, cls=Command, help=doc)
    @click.argument("name")
    @_local
    @_where
    def toggle(name: str, local: bool, as_json: bool, **where: Any) -> None:
        extra = {"local": True} if local else {}
        _echo(_client(where).call(method, name=name, **extra), as_json)


_toggle(
    "activate",
    "profile_activate",
    "Apply the profile: its key size and validity, its priority; a new period begins.",
)
_toggle("deactivate", "profile_deactivate", "Stop applying the profile (it stays registered).")

__all__ = ["profile"]
