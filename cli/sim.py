"""``qkmsctl sim``: a whole qkms network simulated in one process (``python -m qkmssim``).

The simulator runs the daemon's own agents, so it imports ``qkmsd``; the CLI never does
(an import contract), and runs it as a subprocess with the same arguments, as the lab
runs ``qkmsd``.  Its report goes to stdout, its errors to stderr, its exit status is ours:
0 done, 1 the ledger found a key served twice or with two values, 2 bad arguments.
"""

from __future__ import annotations

import subprocess
import sys

import click

from ._errors import Command


@click.command(cls=Command)
@click.option(
    "--topology",
    required=True,
    metavar="FILE|FAMILY:N",
    help="A topology TOML file, or FAMILY:N (star, ring, bridge, grid, rgg, random).",
)
@click.option("--seconds", type=click.FloatRange(min=0, min_open=True), required=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="SPEC",
    help="link-down@S:A-B, link-silent@S:A-B, link-up@S:A-B, node-crash@S:NODE[:restart=S], "
    "controller-crash@S[:restart=S]; repeatable.",
)
@click.option("--demand", default="closed", show_default=True, help="paced:BPS or closed.")
@click.option("--pairs", type=click.IntRange(min=1), help="Demand pairs [default: all].")
@click.option("--heartbeat", type=click.FloatRange(min=0, min_open=True), help="Seconds.")
@click.option("--json", "as_json", is_flag=True, help="The whole report as JSON.")
def sim(
    topology: str,
    seconds: float,
    seed: int,
    faults: tuple[str, ...],
    demand: str,
    pairs: int | None,
    heartbeat: float | None,
    as_json: bool,
) -> None:
    """Run a network's real nodes on a virtual clock, with faults and SAE demand."""
    args = ["--topology", topology, "--seconds", repr(seconds), "--seed", str(seed)]
    for fault in faults:
        args += ["--fault", fault]
    args += ["--demand", demand]
    if pairs is not None:
        args += ["--pairs", str(pairs)]
    if heartbeat is not None:
        args += ["--heartbeat", repr(heartbeat)]
    if as_json:
        args.append("--json")
    result = subprocess.run([sys.executable, "-m", "qkmssim", *args], stdin=subprocess.DEVNULL)
    if result.returncode:
        raise click.exceptions.Exit(result.returncode)
