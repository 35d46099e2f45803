"""``qkmsctl lab``: a whole qkms network on this machine, one qkmsd per node."""

from __future__ import annotations

import json
from pathlib import Path

import click

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
    """Run a local lab network on loopback: up, status, kill, start, down."""


@lab.command()
@click.option(
    "--topology",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="topology file, e.g. examples/pair.toml",
)
@_dir
def up(topology: Path, directory: Path) -> None:
    """Make the PKI and configs, start every node, wait until all are ready."""
    topo = load_topology(topology)
    manifest = Lab(directory).up(topo, progress=lambda s: click.echo(s, err=True))
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
