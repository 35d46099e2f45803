"""``qkmsctl topology``, ``qkmsctl node add|remove``, ``qkmsctl link add|remove``: the
network as the controller knows it, and what the operator registers with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from ._admin import AdminClient
from ._errors import CliError, Command, Group
from ._lab import Lab
from ._render import bits, path_text, table
from .node import _call, _config, _json, _lab, _node, _socket


def _where(f: Any) -> Any:
    """The node to ask: --socket, --config or --lab/--node (any node; the controller
    answers ``topology``, and any node forwards a registration to it)."""
    return _socket(_config(_lab(_node(f))))


def _context(
    ctx: click.Context,
    socket_path: str | None,
    config: Path | None,
    lab_dir: Path | None,
    node: str | None,
) -> None:
    ctx.obj = {"socket": socket_path, "config": config, "lab": lab_dir, "node": node}


@click.command(cls=Command)
@_where
@_json
@click.option("--dot", is_flag=True, help="print a Graphviz graph (dot -Tsvg)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "etsi015"]),
    default="table",
    show_default=True,
    help="etsi015: JSON in the names of ETSI GS QKD 015's data model",
)
@click.pass_context
def topology(
    ctx: click.Context,
    socket_path: str | None,
    config: Path | None,
    lab_dir: Path | None,
    node: str | None,
    as_json: bool,
    dot: bool,
    fmt: str,
) -> None:
    """The network as the controller knows it: nodes, QKD and virtual links, routes.

    Ask the controller (``qkmsctl controller`` names it); another node says whom to ask.
    """
    if sum((as_json, dot, fmt != "table")) > 1:
        raise click.UsageError("--json, --dot and --format etsi015 each choose the output: one")
    if lab_dir is not None and node is None:
        node = _lab_controller(lab_dir)
    _context(ctx, socket_path, config, lab_dir, node)
    if fmt == "etsi015":
        click.echo(json.dumps(_call(ctx, "topology", format="etsi015"), indent=2))
        return
    result = _call(ctx, "topology")
    if as_json:
        click.echo(json.dumps(result, indent=2))
    elif dot:
        click.echo(topology_dot(result))
    else:
        click.echo(topology_tables(result))


def _lab_controller(lab_dir: Path) -> str:
    """The lab node that holds the controller role, as the first node that answers says."""
    lab = Lab(lab_dir)
    for name in sorted(lab.manifest()["kmes"]):
        try:
            answer = AdminClient(lab.admin_socket(name), timeout=2.0).call("controller")
        except CliError:
            continue  # a node that is down: ask the next
        if answer.get("controller"):
            return str(answer["controller"])
    raise CliError(f"lab {lab_dir}: no node knows a controller now (qkmsctl lab status)")


def topology_tables(result: dict[str, Any]) -> str:
    """The ``topology`` answer as three tables: nodes, links, routes."""
    nodes = table(
        ["node", "state", "location", "software", "reported", "sessions"],
        [
            [
                n["node_id"],
                n["state"],
                n["location"] or "-",
                n["software"] or "-",
                "-" if n["report_age_s"] is None else f"{n['report_age_s']:.1f}s ago",
                len(n["peers"]),
            ]
            for n in result["nodes"]
        ],
    )
    links = table(
        ["link", "kind", "ends", "state", "rate", "qber", "ready (a / b)", "path"],
        [
            [
                link["link_id"],
                link["kind"],
                f"{link['a']} - {link['b']}",
                link["state"],
                f"{bits(int(link['rate_bps']))}/s",
                "-" if link["qber"] is None else f"{link['qber']:.3f}",
                " / ".join(bits(link["ready_bits"].get(end)) for end in (link["a"], link["b"])),
                path_text(link.get("hops") or []) or "-",
            ]
            for link in result["links"]
        ],
    )
    routes = table(
        ["source", "destination", "path", "cost"],
        [
            [r["source"], r["destination"], path_text(p["nodes"]), f"{p['cost']:g}"]
            for r in result["routes"]
            for p in r["paths"]
        ],
    )
    head = f"controller {result['controller']} (term {result['term']})"
    more = result.get("routes_total", len(result["routes"])) - len(result["routes"])
    if more > 0:
        routes += f"\n... and {more} more route settings (not shown)"
    return "\n\n".join([head, nodes, links, routes if result["routes"] else "no routes"])


def topology_dot(result: dict[str, Any]) -> str:
    """The ``topology`` answer as a Graphviz graph: QKD links solid (dashed when down),
    virtual links dotted."""

    def q(text: str) -> str:
        return json.dumps(text)

    lines = ["graph qkms {", "  node [shape=box];"]
    for n in result["nodes"]:
        colour = {"up": "black", "lost": "red", "removed": "grey"}.get(n["state"], "blue")
        label = f'"{n["node_id"]}\\n{n["state"]}"'
        lines.append(f"  {q(n['node_id'])} [label={label}, color={colour}];")
    seen: set[str] = set()
    for link in result["links"]:
        if link["kind"] == "virtual":
            if link["link_id"] in seen:
                continue  # both ends report their pool: one edge
            seen.add(link["link_id"])
            style = "dotted"
        else:
            style = "solid" if link["state"] in ("up", "registered") else "dashed"
        label = f'"{link["link_id"]}\\n{link["state"]}"'
        lines.append(f"  {q(link['a'])} -- {q(link['b'])} [label={label}, style={style}];")
    lines.append("}")
    return "\n".join(lines)


@click.group(cls=Group)
def node() -> None:
    """Register a node with the controller or take one out (replicated, durable); drain
    this node for maintenance and back, or show whether it serves."""


@click.group(cls=Group)
def link() -> None:
    """Register a QKD link with the controller, or take one out (replicated, durable)."""


def _register(ctx: click.Context, as_json: bool, **params: Any) -> None:
    result = _call(ctx, "register", **params)
    if as_json:
        click.echo(json.dumps(result, indent=2))
        return
    entry = result["entry"]
    what = "taken out of the network" if entry["removed"] else "registered"
    ends = f" ({entry['a']} - {entry['b']})" if entry["kind"] == "link" else ""
    click.echo(
        f"{entry['kind']} {entry['name']}{ends} {what}: stored by controller"
        f" {result['controller']} and a majority of the eligible nodes"
    )


for _action, _help in (
    ("add", "Add NAME to the network (or take it back after a remove)."),
    ("remove", "Take NAME out: no route crosses it, whatever its reports say."),
):

    def _node_command(action: str = _action, text: str = _help) -> Any:
        @click.command(action, cls=Command, help=text)
        @click.argument("name")
        @click.option("--location", default="", help="where the node stands (a site name)")
        @_where
        @_json
        @click.pass_context
        def command(
            ctx: click.Context,
            name: str,
            location: str,
            socket_path: str | None,
            config: Path | None,
            lab_dir: Path | None,
            node: str | None,
            as_json: bool,
        ) -> None:
            _context(ctx, socket_path, config, lab_dir, node)
            _register(ctx, as_json, kind="node", action=action, name=name, location=location)

        return command

    def _link_command(action: str = _action, text: str = _help) -> Any:
        @click.command(action, cls=Command, help=text.replace("NAME", "the link A-B"))
        @click.argument("a")
        @click.argument("b")
        @click.option("--link-id", default="", help="the link's id (default A~B, ends sorted)")
        @_where
        @_json
        @click.pass_context
        def command(
            ctx: click.Context,
            a: str,
            b: str,
            link_id: str,
            socket_path: str | None,
            config: Path | None,
            lab_dir: Path | None,
            node: str | None,
            as_json: bool,
        ) -> None:
            _context(ctx, socket_path, config, lab_dir, node)
            _register(ctx, as_json, kind="link", action=action, name=link_id, a=a, b=b)

        return command

    node.add_command(_node_command())
    link.add_command(_link_command())
