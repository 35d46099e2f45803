"""How fast the simulator runs: simulated node-seconds per second, and memory per node.

Each case runs ``python -m qkmssim --json`` in a subprocess of its own (so that each peak
RSS is its own) and reads the figures it reports:

- node-seconds per wall second and per CPU second of the run (nodes x virtual seconds,
  the drain after the demand included, over the time ``Network.run`` took; building the
  PKI and the configs before it is left out).  This machine is shared: the CPU figure is
  what the run costs, the wall figure what it got;
- peak RSS, and memory per node: the difference between the 200-node and the 17-node
  runs' peak RSS over the 183 nodes between them (the interpreter and the libraries are
  in both);
- the same 17-node backbone with peer heartbeats every 5 s against the daemon's default
  (0.25 s, silence limit 1 s), for what short heartbeats cost.

Cases: ``examples/kreonet17.toml`` and ``rgg:200`` (seed 1), paced demand of 512 b/s on
N pairs drawn with the seed, ``--seconds`` virtual seconds (default 30).  Target: >= 1,000
node-s/s at 200 nodes.  Writes ``benchmarks/results/sim_speed.json``.

    python benchmarks/sim_speed.py [--seconds 30] [--seconds-200 S] [--skip-200]
        [--baseline DIR]

``--seconds-200`` gives the 200-node case fewer (or more) virtual seconds than the others.

``--baseline DIR`` runs every case also on the code in DIR (a checkout of another
revision), right after this tree's, for a before/after measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "sim_speed.json"


def run(
    topology: str, seconds: float, pairs: int, extra: list[str], tree: Path = ROOT
) -> dict[str, Any]:
    args = [
        sys.executable,
        "-m",
        "qkmssim",
        "--topology",
        topology,
        "--seconds",
        str(seconds),
        "--seed",
        "1",
        "--pairs",
        str(pairs),
        "--demand",
        "paced:512",
        "--json",
        *extra,
    ]
    started = time.perf_counter()
    env = {**os.environ, "PYTHONPATH": str(tree)}
    out = subprocess.run(args, capture_output=True, cwd=tree, check=True, env=env)
    report: dict[str, Any] = json.loads(out.stdout)
    keep = (
        "nodes",
        "links",
        "pairs",
        "seconds",
        "virtual_s",
        "wall_s",
        "cpu_s",
        "node_seconds_per_wall_s",
        "node_seconds_per_cpu_s",
        "peak_rss_mib",
        "keys_delivered",
        "relays_done",
        "relays_failed",
        "served_twice",
        "two_values",
    )
    figures = {k: report[k] for k in keep}
    figures["process_wall_s"] = round(time.perf_counter() - started, 2)
    figures["topology"] = (
        Path(topology).relative_to(ROOT).as_posix() if "/" in topology else topology
    )
    figures["options"] = " ".join(extra)
    return figures


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument(
        "--seconds-200",
        type=float,
        default=None,
        help="virtual seconds of the 200-node case (default: --seconds)",
    )
    p.add_argument("--skip-200", action="store_true")
    p.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="a checkout of other code (e.g. `git archive REV | tar -x -C DIR`): each case "
        "runs there too, right after this tree's, and the JSON gets both",
    )
    args = p.parse_args()
    kreonet = str(ROOT / "examples" / "kreonet17.toml")
    long = args.seconds if args.seconds_200 is None else args.seconds_200
    cases = [
        ("kreonet17", kreonet, 17, [], args.seconds),
        ("kreonet17, heartbeat 5 s", kreonet, 17, ["--heartbeat", "5"], args.seconds),
    ]
    if not args.skip_200:
        cases.append(("rgg:200", "rgg:200", 200, [], long))
    results = []
    for label, topology, pairs, extra, seconds in cases:
        figures = run(topology, seconds, pairs, extra)
        figures["case"] = label
        results.append(figures)
        print(
            f"{label:<28} {figures['node_seconds_per_wall_s']:>8} node-s/wall s "
            f"{figures['node_seconds_per_cpu_s']:>8} node-s/CPU s  "
            f"peak RSS {figures['peak_rss_mib']} MiB  ({figures['virtual_s']} virtual s, "
            f"{figures['wall_s']} wall s, {figures['cpu_s']} CPU s)",
            flush=True,
        )
        if args.baseline is not None:
            before = run(topology, seconds, pairs, extra, tree=args.baseline.resolve())
            figures["baseline"] = before
            print(
                f"{'  baseline':<28} {before['node_seconds_per_wall_s']:>8} node-s/wall s "
                f"{before['node_seconds_per_cpu_s']:>8} node-s/CPU s  "
                f"peak RSS {before['peak_rss_mib']} MiB",
                flush=True,
            )
    summary: dict[str, Any] = {"cases": results, "seconds": args.seconds, "seconds_200": long}
    by = {r["case"]: r for r in results}
    if "rgg:200" in by:
        per_node = (by["rgg:200"]["peak_rss_mib"] - by["kreonet17"]["peak_rss_mib"]) / 183
        summary["rss_per_node_kib"] = round(per_node * 1024, 1)
        summary["target_node_s_per_s_at_200"] = 1000
        print(f"memory per node: {summary['rss_per_node_kib']} KiB (200-node minus 17-node)")
    short, five = by["kreonet17"], by["kreonet17, heartbeat 5 s"]
    summary["heartbeat_0_25_cpu_cost"] = round(
        five["node_seconds_per_cpu_s"] / short["node_seconds_per_cpu_s"], 3
    )
    print(f"heartbeat 0.25 s: {summary['heartbeat_0_25_cpu_cost']}x the CPU per node-second of 5 s")
    RESULTS.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
