"""BB84 in bounded memory: peak RSS and secret bits per CPU-second against run length.

Each point runs in a subprocess of its own (peak RSS is per process) with one code tree:

- ``old``: ``run_block`` of a tree from git (``--old-rev``, default ``main``): the whole
  run held in memory as one block;
- ``new``: ``run_stream`` of this tree, in blocks of ``--block-bits`` expected key bits,
  one finite-key analysis and one privacy amplification over the whole run.

Both use the same seed per point, so a run of at most one block gives identical keys.
Figures per point: secret bits, rate per pulse beside the analytic (GLLP, vacuum + weak
decoy) rate, peak RSS, CPU seconds (user + system of the child, one core), secret bits
per CPU-second, and bytes of peak RSS per sifted bit.

    .venv/bin/python benchmarks/bb84_stream.py --distance-km 75 \
        --new 1e10,5e10,1e11,5e11 --old 1e10,5e10,1e11

writes ``benchmarks/results/bb84_stream_<distance>km_pa<tile>.json``.
"""

# The child's script is one string with long lines.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _bb84_common import write  # noqa: E402

CHILD = """
import json, resource, sys, time
import numpy as np
from qkd_drivers.bb84 import GYS, NO_EVE, analytic_rate
code, distance, pulses, block_bits, seed, pa = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rng = np.random.Generator(np.random.PCG64(seed))
t0 = time.perf_counter()
if code == "old":
    from qkd_drivers.bb84 import run_block
    r = run_block(GYS, distance, pulses, rng)
else:
    from qkd_drivers.bb84 import run_stream
    from qkd_drivers.bb84._driver import pulses_per_block
    r = run_stream(GYS, distance, pulses, rng, block_pulses=pulses_per_block(GYS, distance, NO_EVE, block_bits), pa_segment=pa)
wall = time.perf_counter() - t0
use = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({
    "secret_bits": r.secret_bits, "key_bytes": len(r.key), "sifted_bits": r.sifted_bits,
    "key_bits_before_ec": r.key_bits_before_ec, "qber": r.qber, "ec_efficiency": r.ec_efficiency,
    "blocks": getattr(r, "blocks", 1), "aborted": r.aborted, "abort_reason": r.abort_reason,
    "analytic_rate": analytic_rate(GYS, distance), "wall_s": wall,
    "cpu_s": use.ru_utime + use.ru_stime, "peak_rss_mb": use.ru_maxrss / 1024,
}))
"""


def old_tree(rev: str, into: Path) -> Path:
    """The ``qkd_drivers`` and ``protocol`` packages of ``rev``, extracted under ``into``."""
    data = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "qkd_drivers", "protocol"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def point(
    code: str, tree: Path, distance: float, pulses: int, block_bits: int, pa_segment: int
) -> dict[str, Any]:
    t0 = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            CHILD,
            code,
            str(distance),
            str(pulses),
            str(block_bits),
            "1",
            str(pa_segment),
        ],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    if done.returncode != 0:
        return {
            "code": code,
            "pulses": pulses,
            "failed": done.returncode,
            "stderr": done.stderr[-500:],
            "wall_s": time.perf_counter() - t0,
        }
    row: dict[str, Any] = {"code": code, "pulses": pulses, **json.loads(done.stdout)}
    row["rate_per_pulse"] = row["secret_bits"] / pulses
    row["rate_over_analytic"] = row["rate_per_pulse"] / row["analytic_rate"]
    row["secret_bits_per_cpu_s"] = row["secret_bits"] / row["cpu_s"]
    row["rss_bytes_per_sifted_bit"] = row["peak_rss_mb"] * 2**20 / max(1, row["sifted_bits"])
    return row


def show(row: dict[str, Any]) -> None:
    if "failed" in row:
        print(f"  {row['code']:3s} {row['pulses']:8.0e}  FAILED (exit {row['failed']})")
        return
    print(
        f"  {row['code']:3s} {row['pulses']:8.0e}  blocks {row['blocks']:4d}"
        f"  secret {row['secret_bits']:11d} bits  rate {row['rate_per_pulse']:.4g}"
        f" ({row['rate_over_analytic']:.3f} x analytic)  peak {row['peak_rss_mb']:7.0f} MB"
        f" ({row['rss_bytes_per_sifted_bit']:.2f} B/sifted bit)  cpu {row['cpu_s']:7.1f} s"
        f"  {row['secret_bits_per_cpu_s']:9.0f} secret bits/cpu-s"
    )


def counts(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--distance-km", type=float, default=75.0)
    parser.add_argument("--new", type=counts, default=counts("1e10,5e10,1e11"))
    parser.add_argument("--old", type=counts, default=counts("1e10,5e10"))
    parser.add_argument("--block-bits", type=int, default=1 << 20)
    parser.add_argument(
        "--pa-segment", type=int, default=1 << 21, help="privacy amplification tile"
    )
    parser.add_argument("--old-rev", default="main")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bb84-old-") as tmp:
        old = old_tree(args.old_rev, Path(tmp))
        print(
            f"bb84 gys at {args.distance_km:g} km, block {args.block_bits} key bits,"
            f" privacy amplification tiles of {args.pa_segment} bits (new code)"
        )
        # Interleaved, so that the shared machine's load falls on both alike.
        for pulses in sorted(set(args.new) | set(args.old)):
            for code, tree in (("old", old), ("new", REPO)):
                if pulses in (args.old if code == "old" else args.new):
                    row = point(
                        code, tree, args.distance_km, pulses, args.block_bits, args.pa_segment
                    )
                    show(row)
                    rows.append(row)
    write(
        f"bb84_stream_{args.distance_km:g}km_pa{args.pa_segment}",
        rows,
        distance_km=args.distance_km,
        block_bits=args.block_bits,
        pa_segment=args.pa_segment,
        old_rev=args.old_rev,
        command=" ".join(sys.argv),
    )


if __name__ == "__main__":
    main()
