"""``python -m qkmssim --topology FILE|FAMILY:N --seconds S [...]``: run and print a report.

Exit codes: 0 the run ended and no key was served twice or with two values; 1 it ran but
the ledger found a key served twice or with two values; 2 bad arguments.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ._demand import DemandSpecError, parse_demand
from ._engine import DRAIN_S, SimError, SimSettings, simulate
from ._faults import FaultSpecError, parse_fault
from ._report import render, to_json
from ._topology import FAMILIES, SimTopologyError, load


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="qkmssim",
        description="Run a qkms network's real nodes in one process on a virtual clock.",
    )
    p.add_argument(
        "--topology",
        required=True,
        help=f"a topology TOML file, or FAMILY:N with FAMILY one of {', '.join(FAMILIES)}",
    )
    p.add_argument("--seconds", type=float, required=True, help="virtual seconds to run")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="SPEC",
        help="link-down@S:A-B, link-silent@S:A-B, link-up@S:A-B, node-crash@S:NODE"
        "[:restart=S], node-silent@S:NODE, controller-crash@S[:restart=S]; repeatable",
    )
    p.add_argument("--demand", default="closed", help="paced:BPS (per pair) or closed")
    p.add_argument(
        "--pairs",
        type=int,
        default=None,
        help="demand pairs drawn with the seed (default: every ordered pair)",
    )
    p.add_argument(
        "--pair",
        action="append",
        default=[],
        metavar="A-B",
        help="an ordered demand pair (master A, slave B); repeatable; replaces --pairs",
    )
    p.add_argument(
        "--block-bits",
        type=int,
        default=None,
        help="key block size of every link (default: the file's; families: 65536)",
    )
    p.add_argument(
        "--drain",
        type=float,
        default=DRAIN_S,
        help=f"virtual seconds after the demand, faults mended, for relays to end ({DRAIN_S:g})",
    )
    p.add_argument(
        "--warmup",
        type=float,
        default=0.0,
        metavar="S",
        help="count the report's keys, rates and link key from S virtual s to the end of "
        "the demand (default 0: all of it)",
    )
    p.add_argument(
        "--sharing",
        choices=("max-min", "proportional", "throughput"),
        default=None,
        help="[controller] sharing of the eligible nodes (default: the daemon's, max-min)",
    )
    p.add_argument(
        "--lease", type=float, default=None, help="[controller] lease_s of the eligible nodes"
    )
    p.add_argument("--heartbeat", type=float, default=None, help="[sync] heartbeat_s of every node")
    p.add_argument("--state-dir", type=Path, default=None, help="keep the nodes' state here")
    p.add_argument("--json", action="store_true", help="print the whole report as JSON")
    return p


def _pair(text: str) -> tuple[str, str]:
    a, dash, b = text.partition("-")
    if not dash or not a or not b:
        raise SimError(f"--pair {text!r}: expected MASTER-SLAVE (two node names)")
    return a, b


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        if args.block_bits is not None and not (
            64 <= args.block_bits <= 1 << 20 and args.block_bits % 64 == 0
        ):
            raise SimError("--block-bits must be a multiple of 64 from 64 to 1048576")
        topo = load(args.topology, seed=args.seed, block_bits=args.block_bits)
        settings = SimSettings(
            seconds=args.seconds,
            seed=args.seed,
            faults=tuple(parse_fault(f) for f in args.fault),
            demand=parse_demand(args.demand),
            pairs=args.pairs,
            pair_list=tuple(_pair(text) for text in args.pair),
            heartbeat_s=args.heartbeat,
            state_dir=args.state_dir,
            sharing=args.sharing,
            drain_s=args.drain,
            lease_s=args.lease,
            warmup_s=args.warmup,
        )
        if args.pairs is not None and args.pairs < 1:
            raise SimError("--pairs must be at least 1")
        report = simulate(topo, settings)
    except (SimTopologyError, FaultSpecError, DemandSpecError, SimError) as exc:
        print(f"qkmssim: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(to_json(report).decode() + "\n")
    else:
        print(render(report))
    return 1 if report.served_twice or report.value_reused or report.two_values else 0


if __name__ == "__main__":
    sys.exit(main())
