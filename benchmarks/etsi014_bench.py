"""ETSI GS QKD 014 key delivery: two real qkmsd daemons against null KMEs on the same load.

Two sets of servers run side by side, each idle while the other is measured: a lab pair
of qkmsd daemons (KME_A, KME_B, one simulated QKD link fast enough that key never runs
short) and two null KMEs (``_etsi014_null``: qkmsd's HTTPS stack answering from a fixed
key, no key management).  N SAE pairs make round trips (``enc_keys`` of the master at
KME_A, ``dec_keys`` of the slave at KME_B, mutual TLS, kept-alive connections, 256-bit
keys; see ``_etsi014_harness``).

Closed loop (saturation), for each load generator, pair count and keys per request, every
window against qkmsd has a twin against the null KMEs right before or after it.  Each
twin gives a **ratio qkmsd / null** (round trips/s for single keys, keys/s when batched):
what qkmsd keeps of what the HTTP stack alone does on this machine at this moment.  The
median over ``--rounds`` twins is the figure to track; the target for single keys is
0.7.  (A null KME answers a repeated request from a cache, with no work per key, so the
batched ratio weighs all of qkmsd's per-key cost.)  Paced windows (open loop, 500 round
trips/s over 8 pairs) judge the p99 target, as before, with null twins on request
(``--control``).

Server-side figures (requests, keys out, store commits) come from each node's admin
``status``, taken before and after each window.

Run::

    .venv/bin/python benchmarks/etsi014_bench.py --quick   # smoke run, about 15 s
    .venv/bin/python benchmarks/etsi014_bench.py           # about 8 minutes
    .venv/bin/python benchmarks/etsi014_bench.py --pairs 8 --batches 1 --rounds 6
    .venv/bin/python benchmarks/etsi014_bench.py --pairs '' --batches '' --windows 10

It prints a table and the ratios and writes ``benchmarks/results/etsi014.json``
(``etsi014_quick.json`` with ``--quick``).  The load generator shares the machine with
the servers: the figures are the whole system's.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for _path in (str(ROOT), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import _etsi014_harness as harness  # noqa: E402
import _etsi014_stats as stats  # noqa: E402
from _etsi014_null import start_null  # noqa: E402

RESULTS = HERE / "results"

# What each setting is in a full run and with --quick, unless given on the command line.
FULL: dict[str, Any] = {
    "seconds": 5.0,
    "pairs": "1,8,64",
    "generators": "trio,threads,curl",
    "batches": f"{harness.BATCH},1",
    "rounds": 2,
    "paced": f"{stats.TARGET_SINGLE_PAIRS}:{stats.TARGET_SINGLE_RT_PER_S:g}",
    "windows": 3,
    "output": RESULTS / "etsi014.json",
}
QUICK: dict[str, Any] = FULL | {
    "seconds": 1.5,
    "pairs": str(stats.TARGET_SINGLE_PAIRS),
    "generators": "curl",
    "rounds": 1,
    "paced": "",
    "windows": 0,
    "output": RESULTS / "etsi014_quick.json",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 8 pairs, curl, 1.5 s")
    parser.add_argument("--seconds", type=float, help="per window (default 5)")
    parser.add_argument(
        "--pairs", help="closed loop: concurrent SAE pairs (default 1,8,64; '' for none)"
    )
    parser.add_argument("--generators", help="trio, threads and/or curl (default all three)")
    parser.add_argument(
        "--batches", help=f"closed loop: keys per request (default {FULL['batches']})"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="closed loop: twin windows (qkmsd, null) per load, order alternating (default 2)",
    )
    parser.add_argument(
        "--paced",
        help="single-key windows at a fixed rate, PAIRS:ROUND_TRIPS_PER_S,... "
        f"(default {FULL['paced']}; '' for none)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        help="paced: windows per generator, generators alternating (default 3)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="paced: give each window a twin against the null KMEs, right before or after it",
    )
    parser.add_argument("--rate-bps", type=float, default=harness.RATE_BPS, help="link rate")
    parser.add_argument("--dir", type=Path, help="lab directory (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    for name, value in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


Run = tuple[str, int, int, float | None, str]  # generator, pairs, keys/request, rate, kms


def plan(
    generators: list[str],
    counts: list[int],
    batches: list[int],
    rounds: int,
    paced: list[tuple[int, float]],
    windows: int,
    control: bool,
) -> list[Run]:
    """The windows of a run, in order.

    Closed loop: each load's twins, qkmsd then null in even rounds and null then qkmsd in
    odd ones, so that a steady drift of the machine's speed falls on both alike.  Paced:
    windows with the generators' order reversed each time, each with its null twin
    (``control``) right after it, then right before the next.
    """
    runs: list[Run] = []
    for r in range(rounds):
        for b in batches:
            for n in counts:
                for g in generators:
                    kinds = [stats.QKMSD, stats.NULL_KMS]
                    runs += [(g, n, b, None, k) for k in (kinds if r % 2 == 0 else kinds[::-1])]
    for n, pace in paced:
        for w in range(windows):
            for g in generators if w % 2 == 0 else generators[::-1]:
                kinds = [stats.QKMSD, stats.NULL_KMS] if control else [stats.QKMSD]
                runs += [(g, n, 1, pace, k) for k in (kinds if w % 2 == 0 else kinds[::-1])]
    return runs


def progress_line(row: dict[str, Any]) -> str:
    rate = row["paced_round_trips_per_s"]
    load = "closed loop" if rate is None else f"paced at {rate:g} rt/s"
    return (
        f"  {row['kms']:<5} {row['generator']:<7} {row['pairs']:>2} pair(s) x "
        f"{row['keys_per_request']:>2} keys, {load}: {row['keys_per_s']:9.1f} keys/s, "
        f"{row['round_trips_per_s']:7.1f} rt/s, p50 {row['p50_ms']:.2f} ms, "
        f"p99 {row['p99_ms']:.2f} ms"
        + (f", {sum(row['errors'].values())} error(s)" if row["errors"] else "")
        + (
            f" ({row['pairs_not_started']} pair(s) could not start)"
            if row["pairs_not_started"]
            else ""
        )
    )


def idle_cores(servers: harness.Servers, seconds: float = 2.0) -> dict[str, float]:
    """Each server's CPU at rest (a qkmsd node takes key in from its link all along)."""
    before = {n: harness.cpu_seconds(p) for n, p in servers.pids.items()}
    time.sleep(seconds)
    return {n: (harness.cpu_seconds(p) - before[n]) / seconds for n, p in servers.pids.items()}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    counts = [int(x) for x in args.pairs.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    generators = [g for g in args.generators.split(",") if g]
    unknown = [g for g in generators if g not in harness.GENERATORS]
    if unknown:
        raise SystemExit(f"unknown generator(s) {unknown} (known: {', '.join(harness.GENERATORS)})")
    paced = [
        (int(n), float(r)) for n, r in (item.split(":") for item in args.paced.split(",") if item)
    ]
    runs = plan(generators, counts, batches, args.rounds, paced, args.windows, args.control)
    if not runs:
        raise SystemExit("nothing to run: give --pairs and --batches, or --paced and --windows")
    most = max(n for _, n, _, _, _ in runs)

    info = harness.machine()  # before the servers start: the load average says what else runs
    # Before the run too: a commit made in the tree while it runs is not what it measured.
    code = harness.code_version(ROOT)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="qkms-etsi014-bench-"))
    null_dir = Path(tempfile.mkdtemp(prefix="qkms-etsi014-null-"))
    fs = harness.filesystem_of(directory.resolve())
    print(f"lab in {directory} ({fs}); starting KME_A, KME_B and the null KMEs", flush=True)
    servers: dict[str, harness.Servers] = {}
    rows: list[dict[str, Any]] = []
    try:
        servers[stats.QKMSD] = harness.start_lab(directory, most, args.rate_bps)
        if any(kms == stats.NULL_KMS for *_, kms in runs):
            servers[stats.NULL_KMS] = start_null(null_dir, most)
        idle = idle_cores(servers[stats.QKMSD])
        print(
            f"daemons at rest (link producing {args.rate_bps / 1e6:g} Mbit/s): "
            + ", ".join(f"{n} {v:.2f} cores" for n, v in idle.items()),
            flush=True,
        )
        for generator, count, batch, rate, kms in runs:
            row = harness.run_window(servers[kms], generator, count, batch, args.seconds, rate)
            rows.append(row)
            print(progress_line(row), flush=True)
    finally:
        if stats.NULL_KMS in servers:
            servers[stats.NULL_KMS].stop()
        shutil.rmtree(null_dir, ignore_errors=True)
        if not args.keep:
            if stats.QKMSD in servers:
                servers[stats.QKMSD].stop()
            if args.dir is None:  # our temp dir: its key stores hold hundreds of MB
                shutil.rmtree(directory, ignore_errors=True)

    print()
    for line in stats.table_lines(rows):
        print(line)
    ratios = stats.ratio_summary(rows)
    if ratios:
        print("\nqkmsd / null KMEs, closed loop (median of the twins' ratios; the tracked figure)")
        for line in stats.ratio_lines(ratios):
            print(line)
    summary = stats.paced_summary(rows)
    if summary:
        print()
    for line in stats.summary_lines(summary):
        print(line)
    controls = stats.control_summary(rows) if args.control else []
    for line in stats.control_lines(controls):
        print(line)
    result = {
        "benchmark": "etsi014",
        "description": "enc_keys at KME_A + dec_keys at KME_B per round trip, mutual TLS, "
        "keep-alive; qkmsd and null KMEs in twin windows",
        "machine": info,
        "code": code,
        "settings": {
            "quick": args.quick,
            "seconds": args.seconds,
            "rounds": args.rounds,
            "windows": args.windows,
            "control": args.control,
        },
        "lab": {
            "directory_fs": fs,
            "link": {
                "driver": "paired",
                "rate_bps": args.rate_bps,
                "block_bits": harness.BLOCK_BITS,
            },
            "key_bits": harness.KEY_BITS,
            "daemons_at_rest_cpu_cores": idle,
        },
        "targets": {
            "batched_keys_per_s": stats.TARGET_BATCHED_KEYS_PER_S,
            "single_key_round_trips_per_s_at_8_pairs": stats.TARGET_SINGLE_RT_PER_S,
            "single_key_p99_ms_at_8_pairs": stats.TARGET_SINGLE_P99_MS,
            "single_key_ratio_to_null": stats.TARGET_SINGLE_RATIO,
        },
        "rows": [{**r, "target": stats.verdict(r)} for r in stats.for_json(rows)],
        "ratio_summary": ratios,
        "paced_summary": summary,
        **({"control_summary": controls} if args.control else {}),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    if args.keep:
        print(f"lab still running: qkmsctl lab down --dir {directory}")


if __name__ == "__main__":
    main()
