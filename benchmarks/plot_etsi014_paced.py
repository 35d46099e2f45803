"""Plot the p99 of every paced ETSI 014 window in the results against the time it ran.

Each paced window of ``etsi014_bench`` (8 SAE pairs, 500 round trips/s) is one point:
its p99 round trip, at the time of day it ran, one marker per load generator, with the
20 ms target as a line.  The picture shows what the tables in docs/etsi014.md say: the
tail follows the shared machine's speed through the day.

Run::

    .venv/bin/python benchmarks/plot_etsi014_paced.py    # writes docs/etsi014_paced_p99.png

Window times are the run's start plus the seconds of the rows before it (set-up between
rows is not counted), so a point may sit a few seconds early.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

import _etsi014_harness as harness  # noqa: E402
import _etsi014_stats as stats  # noqa: E402

RESULTS = HERE / "results"
OUTPUT = HERE.parent / "docs" / "etsi014_paced_p99.png"
TARGET_P99_MS = stats.TARGET_SINGLE_P99_MS
LINK = {"driver": "paired", "rate_bps": harness.RATE_BPS, "block_bits": harness.BLOCK_BITS}
MARKERS = {"curl": "o", "threads": "s", "trio": "^"}


class Window(NamedTuple):
    at: dt.datetime
    generator: str
    p99_ms: float
    source: str


def paced_windows(paths: Iterable[Path]) -> list[Window]:
    """Every paced window in the benchmark result files ``paths``, in time order.

    Files that are not ``etsi014_bench`` results (the null KMEs', the compare tool's,
    unreadable ones), runs with another link than the benchmark's default, and windows at
    another load than the target's (8 pairs at 500/s) are skipped.
    """
    out: list[Window] = []
    for path in paths:
        try:
            result: dict[str, Any] = json.loads(path.read_text())
            start = dt.datetime.fromisoformat(result["machine"]["date"])
            rows: list[dict[str, Any]] = result["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if result.get("benchmark") != "etsi014" or result.get("lab", {}).get("link") != LINK:
            continue
        elapsed = 0.0
        for row in rows:
            if _at_target_load(row) and row.get("p99_ms") is not None:
                at = start + dt.timedelta(seconds=elapsed)
                out.append(Window(at, row["generator"], float(row["p99_ms"]), path.name))
            elapsed += float(row.get("seconds", 0.0))
    return sorted(out)


def _at_target_load(row: dict[str, Any]) -> bool:
    """A paced window of qkmsd at the target's load: 8 pairs, 500 round trips/s (not a rate
    sweep's, nor a control window against null KMEs)."""
    return (
        row.get("kms", stats.QKMSD) == stats.QKMSD
        and row.get("paced_round_trips_per_s") == stats.TARGET_SINGLE_RT_PER_S
        and row.get("pairs") == stats.TARGET_SINGLE_PAIRS
    )


def plot(windows: list[Window], output: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=110)
    for generator in sorted({w.generator for w in windows}):
        mine = [w for w in windows if w.generator == generator]
        ax.scatter(
            [w.at for w in mine],
            [w.p99_ms for w in mine],
            s=14,
            marker=MARKERS.get(generator, "x"),
            alpha=0.7,
            label=f"{generator} ({len(mine)} windows)",
        )
    ax.axhline(TARGET_P99_MS, color="black", linewidth=1, linestyle="--", label="target p99")
    ax.set_yscale("log")
    ax.set_ylabel("p99 round trip per window (ms, log scale)")
    ax.set_xlabel("time of day (UTC)")
    first = windows[0].at.date().isoformat()
    ax.set_title(f"Single-key round trips, 8 pairs paced at 500/s, 4-5 s windows ({first})")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M", tz=dt.UTC))
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="directory of JSON results")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    windows = paced_windows(sorted(args.results.glob("etsi014*.json")))
    if not windows:
        raise SystemExit(f"no paced windows in {args.results}")
    plot(windows, args.output)
    for generator in sorted({w.generator for w in windows}):
        mine = [w for w in windows if w.generator == generator]
        under = sum(w.p99_ms < TARGET_P99_MS for w in mine)
        print(f"{generator:8s} {len(mine):4d} windows, {under} with p99 < {TARGET_P99_MS:g} ms")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
