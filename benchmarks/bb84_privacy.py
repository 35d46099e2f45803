"""Toeplitz privacy amplification (FFT) throughput and peak memory."""

# Tables print wide rows; the timed lambdas run at once, inside their loop iteration.
# ruff: noqa: E501, B023

from __future__ import annotations

import subprocess
import sys

import numpy as np
from _bb84_common import best_of, write

from qkd_drivers.bb84 import privacy_amplification

CHILD = """
import resource, sys, numpy as np
from qkd_drivers.bb84 import privacy_amplification
n = int(sys.argv[1])
g = np.random.Generator(np.random.PCG64(1))
key = g.integers(0, 2, n, dtype=np.uint8)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
privacy_amplification(key, n // 2, g)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, base)
"""


def main() -> None:
    rows = []
    for n in (10**5, 10**6, 10**7):
        g = np.random.Generator(np.random.PCG64(1))
        key = g.integers(0, 2, n, dtype=np.uint8)
        t, _ = best_of(lambda: privacy_amplification(key, n // 2, g), repeat=3 if n < 10**7 else 1)  # noqa: B023
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(n)], capture_output=True, text=True, check=True
        )
        peak_kb, base_kb = (int(x) for x in out.stdout.split())
        rows.append(
            {
                "n": n,
                "mbit_per_s": n / t / 1e6,
                "seconds": t,
                "peak_rss_mb": peak_kb / 1024,
                "rss_before_mb": base_kb / 1024,
            }
        )
        print(
            f"n={n:>9}: {n / t / 1e6:7.2f} Mbit/s input, {t:.3f} s, peak RSS {peak_kb / 1024:.0f} MB"
        )
    print("targets: >= 2 Mbit/s at 1e6-bit blocks; 1e7-bit blocks within 2 GB")
    write("bb84_privacy", rows)


if __name__ == "__main__":
    main()
