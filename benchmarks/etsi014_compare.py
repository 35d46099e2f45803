"""Compare two versions of qkmsd on single-key ETSI 014 delivery, in paired windows.

This machine's speed drifts by about 25 % from one minute to the next, more than most
changes are worth, so two benchmark runs taken one after the other say little about a
change.  This tool starts one lab per code tree (KME_A + KME_B each, both labs up at
once, each idle while the other is measured) and alternates short paced windows between
them: round r measures X then Y, round r+1 Y then X.  Each round gives a ratio Y/X taken
a few seconds apart, so the drift mostly cancels; the median of the ratios is the result.
The load generator is this tree's (``_etsi014_harness``; ``--generator``: ``threads``, a
blocking client with one thread per pair, the default, or ``curl``, libcurl with half the
CPU per round trip and so less noise), so only the daemons differ.

Run, e.g. to compare the working tree with the last commit::

    git worktree add /tmp/qkms-base HEAD
    .venv/bin/python benchmarks/etsi014_compare.py /tmp/qkms-base .

It prints each window and the median ratios, and writes
``benchmarks/results/etsi014_compare.json``.  Comparing a tree with itself shows the
noise: over 6 rounds of 4 s the CPU ratio stayed within 0.93 to 1.04 and the p99 ratio
ranged from 0.67 to 5 (one window with a stall), so trust CPU ratios beyond a few percent
and p99 ratios only over many rounds.
"""

# ruff: noqa: E501

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import _etsi014_harness as harness  # noqa: E402
import _etsi014_stats as stats  # noqa: E402

RESULTS = HERE / "results" / "etsi014_compare.json"


TREE_ENV = ("PYTHONPATH", "PYTHONSAFEPATH")


def tree_env(tree: Path) -> dict[str, str]:
    """Environment under which ``python -m qkmsd`` imports qkmsd from ``tree``.

    PYTHONPATH alone is not enough: ``-m`` puts the working directory first on sys.path,
    and run from a checkout that is the checkout's own code, whatever PYTHONPATH says (so
    until this was found, every comparison run from the project's root compared the
    working tree with itself).  PYTHONSAFEPATH (Python 3.11) leaves it out.
    """
    return {"PYTHONPATH": str(tree.resolve()), "PYTHONSAFEPATH": "1"}


def start_lab(tree: Path, directory: Path, pairs: int) -> harness.Servers:
    """A lab whose daemons import qkmsd from ``tree`` (the environment is all that differs)."""
    saved = {name: os.environ.get(name) for name in TREE_ENV}
    os.environ.update(tree_env(tree))
    try:
        return harness.start_lab(directory, pairs, harness.RATE_BPS)
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value


def window(
    servers: harness.Servers,
    seconds: float,
    rate: float,
    generator: str = "threads",
) -> dict[str, float]:
    row = harness.run_window(servers, generator, len(servers.pairs), 1, seconds, rate)
    trips = row["round_trips_per_s"]
    cpu = row["cpu_cores"]
    return {
        "round_trips_per_s": trips,
        "p50_ms": row["p50_ms"],
        "p99_ms": row["p99_ms"],
        "errors": sum(row["errors"].values()),
        "cpu_ms_per_round_trip": sum(cpu.values()) / trips * 1000,
        "KME_A_cpu_ms_per_round_trip": cpu["KME_A"] / trips * 1000,
        "KME_B_cpu_ms_per_round_trip": cpu["KME_B"] / trips * 1000,
        "generator_cpu_ms_per_round_trip": cpu["load_generator"] / trips * 1000,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("x", type=Path, help="code tree X (the baseline)")
    parser.add_argument("y", type=Path, help="code tree Y (the change)")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=4.0, help="per window")
    parser.add_argument("--pairs", type=int, default=stats.TARGET_SINGLE_PAIRS)
    parser.add_argument(
        "--rate",
        type=float,
        default=stats.TARGET_SINGLE_RT_PER_S,
        help="round trips/s over all pairs",
    )
    parser.add_argument(
        "--generator",
        choices=sorted(harness.GENERATORS),
        default="threads",
        help="load generator (default threads; curl costs half the CPU per round trip)",
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    trees = [args.x.resolve(), args.y.resolve()]
    for tree in trees:
        if not (tree / "qkmsd" / "__init__.py").is_file():
            raise SystemExit(f"{tree} is not a qkms tree (no qkmsd/__init__.py)")

    info = harness.machine()
    base = Path(tempfile.mkdtemp(prefix="qkms-etsi014-compare-"))
    labs = []
    windows: list[list[dict[str, float]]] = [[], []]
    try:
        for i, tree in enumerate(trees):
            print(f"starting lab {'XY'[i]} from {tree}", flush=True)
            labs.append(start_lab(tree, base / "xy"[i], args.pairs))
        for r in range(args.rounds):
            for i in (0, 1) if r % 2 == 0 else (1, 0):
                w = window(labs[i], args.seconds, args.rate, args.generator)
                windows[i].append(w)
                print(
                    f"round {r} {'XY'[i]}: {w['round_trips_per_s']:.0f} rt/s, p50 {w['p50_ms']:.1f} ms, "
                    f"p99 {w['p99_ms']:.1f} ms, CPU {w['cpu_ms_per_round_trip']:.2f} ms/rt "
                    f"(A {w['KME_A_cpu_ms_per_round_trip']:.2f}, B {w['KME_B_cpu_ms_per_round_trip']:.2f}, "
                    f"generator {w['generator_cpu_ms_per_round_trip']:.2f})",
                    flush=True,
                )
    finally:
        for lab in labs:
            lab.stop()
        shutil.rmtree(base, ignore_errors=True)

    keys = list(windows[0][0])
    medians = [{k: statistics.median(w[k] for w in windows[i]) for k in keys} for i in (0, 1)]
    ratios = {
        k: sorted(windows[1][r][k] / windows[0][r][k] for r in range(args.rounds))
        for k in (
            "p50_ms",
            "p99_ms",
            "cpu_ms_per_round_trip",
            "KME_A_cpu_ms_per_round_trip",
            "KME_B_cpu_ms_per_round_trip",
        )
    }
    print("\nmedian of windows      X          Y")
    for k in keys:
        print(f"  {k:<34} {medians[0][k]:9.2f}  {medians[1][k]:9.2f}")
    print("ratio Y/X per round (sorted), median")
    for k, values in ratios.items():
        print(
            f"  {k:<34} {statistics.median(values):.3f}  [{', '.join(f'{v:.2f}' for v in values)}]"
        )
    result: dict[str, Any] = {
        "benchmark": "etsi014_compare",
        "description": "paired paced windows, single-key enc_keys + dec_keys, X then Y alternating",
        "machine": info,
        "trees": {"x": str(trees[0]), "y": str(trees[1])},
        "code": {"x": harness.code_version(trees[0]), "y": harness.code_version(trees[1])},
        "pairs": args.pairs,
        "generator": args.generator,
        "rate_round_trips_per_s": args.rate,
        "seconds_per_window": args.seconds,
        "windows": {"x": windows[0], "y": windows[1]},
        "median": {"x": medians[0], "y": medians[1]},
        "ratio_y_over_x_median": {k: statistics.median(v) for k, v in ratios.items()},
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")


if __name__ == "__main__":
    main()
