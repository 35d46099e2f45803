"""``qkmsctl lab``: a whole qkms network on this machine, one qkmsd per node."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from . import _labfaults
from ._errors import Group
from ._lab import Lab
from ._render import node_status
from ._topology import load_topology

_dir = click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="lab directory (PKI, configs, state, lab.json)",
)


@click.group(cls=Group)
def lab() -> None:
    """Run a local lab network on loopback: up, status, kill, start, down; faults."""


@lab.command()
@click.option(
    "--topology",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="topology file, e.g. examples/pair.toml",
)
@_dir
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="PAIR=SPEC",
    help="put a fault proxy on a peer session, e.g. KME1-KME2=drop:0.01 or all=none"
    " (repeatable; change it later with `lab fault`)",
)
def up(topology: Path, directory: Path, faults: tuple[str, ...]) -> None:
    """Make the PKI and configs, start every node, wait until all are ready."""
    topo = load_topology(topology)
    manifest = Lab(directory).up(topo, progress=lambda s: click.echo(s, err=True), faults=faults)
    for node, kme in manifest["kmes"].items():
        click.echo(f"{node}: pid {kme['pid']}  admin {kme['admin_socket']}")
    click.echo(f"lab is up: {Lab(directory).manifest_path}")


@lab.command()
@_dir
def down(directory: Path) -> None:
    """Stop every node (SIGTERM, then SIGKILL after a deadline)."""
    stopped = Lab(directory).down()
    click.echo(f"stopped {len(stopped)} node(s)" + (f": {', '.join(stopped)}" if stopped else ""))


@lab.command()
@_dir
@click.option("--json", "as_json", is_flag=True, help="print the raw status as JSON")
def status(directory: Path, as_json: bool) -> None:
    """Print every node's status: peers and pool levels."""
    statuses = Lab(directory).status()
    if as_json:
        click.echo(json.dumps(statuses, indent=2))
        return
    for node, st in statuses.items():
        click.echo(f"{node}: {st['error']}" if "error" in st else node_status(st))
        click.echo()


@lab.command()
@_dir
@click.argument("node")
def kill(directory: Path, node: str) -> None:
    """Kill one node with SIGKILL (a crash)."""
    pid = Lab(directory).kill(node)
    click.echo(f"killed {node} (pid {pid})")


@lab.command()
@_dir
@click.argument("node")
def start(directory: Path, node: str) -> None:
    """Start one node again on its ports and state."""
    pid = Lab(directory).start(node)
    click.echo(f"started {node} (pid {pid})")


# --- fault proxies (cli/_labfaults.py) ---------------------------------------------------


def _faults(directory: Path) -> dict[str, Any] | None:
    faults: dict[str, Any] | None = Lab(directory).manifest().get("faults")
    return faults


@lab.command()
@_dir
@click.argument("node_a")
@click.argument("node_b")
@click.argument("spec")
def fault(directory: Path, node_a: str, node_b: str, spec: str) -> None:
    """Change the faults on the session between two nodes (SPEC `none` to stop them).

    SPEC: comma-separated terms: none, delay:50ms, drop:0.01, dup:0.01, reorder:0.01,
    truncate@4096, cut@5s, cutevery:2s, cut (a partition), seed:42.
    """
    route = _labfaults.set_fault(_faults(directory), node_a, node_b, spec)
    click.echo(f"{node_a}-{node_b}: {route['spec']}")


@lab.command()
@_dir
@click.option("--json", "as_json", is_flag=True, help="print the proxy's routes as JSON")
def faults(directory: Path, as_json: bool) -> None:
    """Show each proxied session: its faults and what the proxy did so far."""
    routes = _labfaults.request(_faults(directory), {"stats": True})["routes"]
    if as_json:
        click.echo(json.dumps(routes, indent=2))
        return
    for name, route in sorted(routes.items()):
        injected = sum(
            route[k] for k in ("dropped", "duplicated", "reordered", "truncated", "cuts")
        )
        click.echo(
            f"{name}: {route['spec']}  connections {route['connections']}"
            f" (open {route['open']}), faults injected {injected}"
        )


@lab.command()
@_dir
@click.argument("left")
@click.argument("right")
def partition(directory: Path, left: str, right: str) -> None:
    """Cut every session between two groups of nodes (comma-separated), until `lab heal`."""
    cut = _labfaults.partition(_faults(directory), left.split(","), right.split(","))
    click.echo(f"partitioned: {', '.join(cut)} cut")


@lab.command()
@_dir
def heal(directory: Path) -> None:
    """Stop every fault: all proxied sessions pass bytes untouched again."""
    routes = _labfaults.heal(_faults(directory))
    click.echo(f"healed: {', '.join(routes)}")
