"""``qkmsctl node drain|undrain|status``, ``qkmsctl policy show|set|unset|reload``,
``qkmsctl devices [register|remove]`` and ``qkmsctl device stop|start|restart``: change how a
running node serves, through its admin socket."""

from __future__ import annotations

import json
from typing import Any

import click

from ._admin import AdminClient
from ._errors import Command, Group
from ._render import ago, table
from .network import node
from .node import _config, _json, _lab, _node, _socket, _socket_from


def _where(f: Any) -> Any:
    for option in (_json, _node, _lab, _config, _socket):
        f = option(f)
    return f


def _client(where: dict[str, Any]) -> AdminClient:
    return AdminClient(
        _socket_from(where["config"], where["socket_path"], where["lab_dir"], where["node"])
    )


def node_report(result: dict[str, Any]) -> str:
    state = "draining" if result["draining"] else "serving"
    since = f" (since {ago(result['drained_since'])})" if result["drained_since"] else ""
    return (
        f"{result['node_id']}: {state}{since}, "
        f"{result['requests_in_flight']} ETSI 014 request(s) in flight"
    )


def _node_command(name: str, method: str, doc: str) -> None:
    @node.command(name, cls=Command, help=doc)
    @_where
    def command(as_json: bool, **where: Any) -> None:
        result = _client(where).call(method)
        click.echo(json.dumps(result, indent=2) if as_json else node_report(result))


_node_command("status", "node", "Whether the node takes new key requests, and how many run.")
_node_command(
    "drain",
    "node_drain",
    "Refuse new enc_keys (503) while dec_keys, status, key sync and relays go on; kept "
    "across a restart until undrain.",
)
_node_command("undrain", "node_undrain", "Take new key requests again.")


def policy_report(result: dict[str, Any]) -> str:
    fields = list(result["default"])
    rows = [["default", *(result["default"][f] for f in fields)]]
    rows += [[scope, *(p[f] for f in fields)] for scope, p in result["pairs"].items()]
    marked = [[f"{r[0]} *" if r[0] in result["overrides"] else r[0], *r[1:]] for r in rows]
    note = "\n* overridden by `qkmsctl policy set` (undo: policy unset SCOPE)"
    return table(["scope", *fields], marked) + (note if result["overrides"] else "")


@click.group(cls=Group)
def policy() -> None:
    """Show and change a node's supply policies (ETSI 014 limits per SAE pair) at runtime."""


@policy.command("show", cls=Command)
@_where
def policy_show(as_json: bool, **where: Any) -> None:
    """The policies in force: the default and each SAE pair's."""
    result = _client(where).call("policy")
    click.echo(json.dumps(result, indent=2) if as_json else policy_report(result))


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


@policy.command("set", cls=Command)
@click.argument("settings", nargs=-1, required=True)
@click.option(
    "--pair",
    nargs=2,
    metavar="MASTER SLAVE",
    help="change this SAE pair's policy (default: the default policy)",
)
@_where
def policy_set(
    settings: tuple[str, ...], pair: tuple[str, str] | None, as_json: bool, **where: Any
) -> None:
    """Override fields, e.g. `policy set key_size=512 max_key_per_request=64 --pair A B`.

    Kept across restarts (in the node's state directory) until `policy unset`; applies to
    the next request, and no session is dropped.
    """
    changes: dict[str, Any] = {}
    for setting in settings:
        field, sep, value = setting.partition("=")
        if not sep or not field:
            raise click.BadParameter(f"{setting!r}: give FIELD=VALUE", param_hint="SETTINGS")
        changes[field] = _value(value)
    scope = f"{pair[0]}>{pair[1]}" if pair else "default"
    result = _client(where).call("policy_set", scope=scope, changes=changes)
    click.echo(json.dumps(result, indent=2) if as_json else policy_report(result))


@policy.command("unset", cls=Command)
@click.option("--pair", nargs=2, metavar="MASTER SLAVE", help="the SAE pair (default: default)")
@_where
def policy_unset(pair: tuple[str, str] | None, as_json: bool, **where: Any) -> None:
    """Drop the overrides of the default policy or of one pair."""
    scope = f"{pair[0]}>{pair[1]}" if pair else "default"
    result = _client(where).call("policy_unset", scope=scope)
    click.echo(json.dumps(result, indent=2) if as_json else policy_report(result))


@policy.command("reload", cls=Command)
@_where
def policy_reload(as_json: bool, **where: Any) -> None:
    """Re-read [supply] from the node's config file (overrides stay on top)."""
    result = _client(where).call("policy_reload")
    click.echo(json.dumps(result, indent=2) if as_json else policy_report(result))


__all__ = ["node", "policy"]


def _stopped(device: dict[str, Any]) -> str:
    return ", ".join(device["stopped"]) or "-"


def devices_report(result: dict[str, Any]) -> str:
    return table(
        ["link", "peer", "driver", "state", "stopped by", "from", "detail"],
        [
            [
                d["link"],
                d["peer"],
                d["driver"],
                d["state"],
                ", ".join(d["stopped"]) or "-",
                "runtime" if d.get("registered") else "config",
                d["detail"],
            ]
            for d in result["devices"]
        ],
    )


@click.group(cls=Group, invoke_without_command=True)
@_where
@click.pass_context
def devices(ctx: click.Context, /, as_json: bool, **where: Any) -> None:
    """A node's QKD devices (the drivers of its QKD links): state, who stopped one, and
    whether it comes from the config file or was registered at runtime."""
    if ctx.invoked_subcommand is not None:
        return
    result = _client(where).call("devices")
    click.echo(json.dumps(result, indent=2) if as_json else devices_report(result))


@devices.command("register", cls=Command)
@click.argument("link")
@click.option("--peer", required=True, help="the node at the link's other end (in [peers])")
@click.option("--driver", "kind", required=True, help="the driver kind, as in [links.X] driver")
@click.option(
    "--param",
    "settings",
    multiple=True,
    metavar="NAME=VALUE",
    help="a driver parameter (repeat; VALUE read as JSON if it parses)",
)
@_where
def devices_register(
    link: str, peer: str, kind: str, settings: tuple[str, ...], as_json: bool, **where: Any
) -> None:
    """Add a QKD device at runtime: LINK's driver, e.g. `devices register KME_A~KME_C
    --peer KME_C --driver vendor-tcp --param address=10.0.0.7:7000`.  Register it at both
    ends; kept across restarts until `devices remove`."""
    params: dict[str, Any] = {}
    for setting in settings:
        name, sep, value = setting.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{setting!r}: give NAME=VALUE", param_hint="--param")
        params[name] = _value(value)
    result = _client(where).call(
        "device_register", link=link, peer=peer, driver=kind, params=params
    )
    click.echo(json.dumps(result, indent=2) if as_json else devices_report(result))


@devices.command("remove", cls=Command)
@click.argument("link")
@_where
def devices_remove(link: str, as_json: bool, **where: Any) -> None:
    """Remove a device registered at runtime: its driver stops and the link is forgotten
    (kept so across restarts).  A link of the config file is removed from the file."""
    result = _client(where).call("device_remove", link=link)
    click.echo(json.dumps(result, indent=2) if as_json else devices_report(result))


@click.group(cls=Group)
def device() -> None:
    """Stop, start or restart the driver of one QKD link (its device session)."""


def _device_command(name: str, method: str, doc: str) -> None:
    @device.command(name, cls=Command, help=doc)
    @click.argument("link")
    @_where
    def command(link: str, as_json: bool, **where: Any) -> None:
        result = _client(where).call(method, link=link)
        click.echo(json.dumps(result, indent=2) if as_json else devices_report(result))


_device_command(
    "stop",
    "device_stop",
    "Stop LINK's driver: the device session closes, stored blocks stay; kept across a "
    "restart until `device start`.",
)
_device_command("start", "device_start", "Start LINK's driver again after `device stop`.")
_device_command("restart", "device_restart", "Close LINK's device session and open it again.")
