"""``qkmsctl lab``: a whole qkms network on this machine, one qkmsd per node."""

from __future__ import annotations

import json
import time
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
    """Run a local lab network: up, status, kill, start, cut, heal, down."""


@lab.command()
@click.option(
    "--topology",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="topology file, e.g. examples/pair.toml",
)
@_dir
@click.option(
    "--netns",
    is_flag=True,
    help="each node in a network namespace of its own, joined by veth pairs that "
    "`lab cut` and `lab heal` take down and up (root; else loopback, said so)",
)
def up(topology: Path, directory: Path, netns: bool) -> None:
    """Make the PKI and configs, start every node, wait until all are ready."""
    topo = load_topology(topology)
    manifest = Lab(directory).up(topo, progress=lambda s: click.echo(s, err=True), netns=netns)
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


@lab.command()
@_dir
@click.argument("a")
@click.argument("b")
def cut(directory: Path, a: str, b: str) -> None:
    """Silently drop every packet between nodes A and B (a --netns lab)."""
    Lab(directory).cut(a, b)
    click.echo(f"cut {a} - {b}: packets between them vanish, no connection is closed")


@lab.command()
@_dir
@click.argument("a")
@click.argument("b")
def heal(directory: Path, a: str, b: str) -> None:
    """Carry packets between nodes A and B again after `lab cut`."""
    Lab(directory).heal(a, b)
    click.echo(f"healed {a} - {b}")


@lab.command()
@_dir
@click.argument("a")
@click.argument("b")
@click.argument("spec")
@click.option(
    "--in",
    "delay_s",
    type=click.FloatRange(min=0),
    default=2.0,
    show_default=True,
    help="seconds from now (both ends switch at the same block)",
)
def eve(directory: Path, a: str, b: str, spec: str, delay_s: float) -> None:
    """Put a simulated eavesdropper on the bb84sim link A-B, or take her away.

    SPEC is intercept-resend=F (0 <= F <= 1), pns, beam-splitting, or none.
    """
    at = Lab(directory).eve(a, b, spec, delay_s=delay_s)
    when = time.strftime("%H:%M:%S", time.localtime(at))
    what = "no eavesdropper" if spec == "none" else f"eavesdropper {spec}"
    click.echo(f"{a} - {b}: {what} from {when} on (blocks that start then)")


@lab.command()
@_dir
@click.argument("node")
def netns(directory: Path, node: str) -> None:
    """Print the network namespace NODE runs in (for `ip netns exec NS ...`)."""
    click.echo(Lab(directory).netns(node))
