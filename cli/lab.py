"""``qkmsctl lab``: a whole qkms network on this machine, one qkmsd per node."""

from __future__ import annotations

import json
import time
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
    """Run a local lab network: up, status, kill, start, down; cut and heal links, faults,
    partitions, an eavesdropper, QKD device emulators stopped and started."""


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
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="PAIR=SPEC",
    help="put a fault proxy on a peer session, e.g. KME1-KME2=drop:0.01 or all=none"
    " (repeatable; change it later with `lab fault`; not with --netns)",
)
def up(topology: Path, directory: Path, netns: bool, faults: tuple[str, ...]) -> None:
    """Make the PKI and configs, start every node, wait until all are ready."""
    topo = load_topology(topology)
    manifest = Lab(directory).up(
        topo, progress=lambda s: click.echo(s, err=True), netns=netns, faults=faults
    )
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
@click.argument("node")
def netns(directory: Path, node: str) -> None:
    """Print the network namespace NODE runs in (for `ip netns exec NS ...`)."""
    click.echo(Lab(directory).netns(node))


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
@click.argument("a", required=False)
@click.argument("b", required=False)
def heal(directory: Path, a: str | None, b: str | None) -> None:
    """Heal the link A-B after `lab cut` or `lab fault`; without A B, every fault proxy
    (a partition too)."""
    if (a is None) != (b is None):
        raise click.UsageError("give both A and B, or neither")
    lab_ = Lab(directory)
    manifest = lab_.manifest()
    faults_ = _faults(directory)
    if not manifest.get("netns") and not faults_:
        raise click.UsageError(
            "nothing to heal: this lab has no namespaces (`lab up --netns`) and no fault"
            " proxies (`lab up --fault`)"
        )
    if a is not None and b is not None:
        if manifest.get("netns"):
            lab_.heal(a, b)
        else:
            _labfaults.set_fault(faults_, a, b, "none")
        click.echo(f"healed {a} - {b}")
        return
    if not faults_:
        raise click.UsageError("a netns lab heals one pair at a time: `lab heal A B`")
    routes = _labfaults.heal(faults_)
    click.echo(f"healed: {', '.join(routes)}")


# --- device emulators (cli/_labdevices.py) ------------------------------------------------


@lab.group(cls=Group)
def device() -> None:
    """Stop and start the device emulators of a vendor-tcp link (a device failure)."""


_end = click.option(
    "--end", metavar="NODE", help="only this end's emulator (default: both ends of the link)"
)


@device.command("stop")
@_dir
@click.argument("a")
@click.argument("b")
@_end
def device_stop(directory: Path, a: str, b: str, end: str | None) -> None:
    """Stop the device emulators of link A-B: their nodes see the device gone."""
    stopped = Lab(directory).device_stop(a, b, end=end)
    click.echo(f"{a} - {b}: device stopped at {', '.join(stopped) or 'no end (none running)'}")


@device.command("start")
@_dir
@click.argument("a")
@click.argument("b")
@_end
def device_start(directory: Path, a: str, b: str, end: str | None) -> None:
    """Start the stopped device emulators of link A-B again, on their ports."""
    started = Lab(directory).device_start(a, b, end=end)
    click.echo(f"{a} - {b}: device started at {', '.join(started) or 'no end (all running)'}")
