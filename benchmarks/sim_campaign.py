"""The network campaign in the simulator: six families, four sizes, two sharing policies.

Each run is ``python -m qkmssim --topology FAMILY:N --demand closed --sharing POLICY --json``
in a subprocess of its own, and this script keeps the network figures its report gives
(definitions in docs/simulator.md, computed by ``qkmssim/_report.py``):

- delivered key over the fibre ceiling (the links' rates over the mean hop count of the
  demand pairs' shortest routes);
- fibre utilisation (link key spent over link key produced);
- Jain's index over the demand pairs' rates;
- the worst pair's rate over an equal share (the mean rate) and over its max-min fair rate
  on the routes in use.

Demand is closed loop (each pair asks for 8 keys of 256 bits again as soon as it is
answered, 0.25 s after a refusal).  Every ordered pair asks at N = 10 (90 pairs); above,
every ordered pair is too many for this machine (a session and a demand task per pair:
39,800 at N = 200), so a seeded sample of ``SAMPLE`` (100) ordered pairs asks (qkmssim's
``--pairs``: ``random.Random(1).sample`` over the ordered pairs).  The controller's
budgets share link key by ``[controller] sharing`` (``max-min`` or ``throughput``).  Links
hand over key in blocks of 8,192 bits (``BLOCK_BITS``).  Runs start cold: no link or pool
holds key at 0 s and the controller is elected within the first 3 s, so these short windows
are the network's first seconds, not a steady state; see docs/controller.md, "Network
campaign".

Simulated time (``SECONDS``: 10, 8, 6 and 4 virtual s of demand at N = 10, 50, 100, 200,
then a 2 s drain) was chosen for the CPU: about 40 minutes on one core at most for the 48
runs, less than that measured (``cpu_s_total`` in the JSON).  ``--jobs 2`` runs two at a
time; ``--sizes`` and ``--resume`` run part of it or finish an interrupted one.

    python benchmarks/sim_campaign.py --quick          # 4 runs of 10 nodes, about a minute
    python benchmarks/sim_campaign.py --jobs 2         # the full campaign
    python benchmarks/sim_campaign.py --plot-only      # plots and table from the JSON

Writes ``benchmarks/results/sim_campaign.json`` (``sim_campaign_quick.json`` with
``--quick``) after every run, and the plots ``docs/img/campaign_*.png`` (full campaign).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
IMG = ROOT / "docs" / "img"

FAMILIES = ("star", "ring", "bridge", "grid", "rgg", "random")
SIZES = (10, 50, 100, 200)
POLICIES = ("max-min", "throughput")
SEED = 1
SAMPLE = 100
"""Above N = 10, a seeded sample of this many ordered pairs asks for keys."""
SECONDS = {10: 10.0, 50: 8.0, 100: 6.0, 200: 4.0}
"""Virtual seconds of demand by size: what the CPU budget allows."""
BLOCK_BITS = 8192
"""Link key block size: a block every 0.63 s on a 20 km link (65,536, qkmssim's default for
the families, is one every 5 s: a run of a few seconds would see almost no key)."""
DRAIN_S = 2.0
"""Virtual seconds after the demand for relays under way to end (qkmssim's default is 12)."""
QUICK = [("ring", 10), ("grid", 10)]
QUICK_SECONDS = 8.0

KEEP = (
    "topology",
    "nodes",
    "links",
    "pairs",
    "seconds",
    "seed",
    "demand",
    "keys_delivered",
    "delivered_bps",
    "fibre_ceiling_bps",
    "delivered_over_ceiling",
    "fibre_utilisation",
    "jain_index",
    "worst_over_equal_share",
    "worst_over_maxmin",
    "maxmin_note",
    "link_bits_produced",
    "link_bits_spent",
    "link_bits_per_delivered_bit",
    "relays_done",
    "relays_failed",
    "relays_unresolved",
    "served_twice",
    "value_reused",
    "two_values",
    "controller_changes",
    "leaders",
    "virtual_s",
    "wall_s",
    "cpu_s",
    "node_seconds_per_cpu_s",
    "peak_rss_mib",
)


def pairs_for(n: int) -> int | None:
    """Demand pairs of an N-node run: None (every ordered pair) at N = 10."""
    return None if n <= 10 else SAMPLE


def run_one(family: str, n: int, policy: str, seconds: float) -> dict[str, Any]:
    pairs = pairs_for(n)
    args = [
        sys.executable,
        "-m",
        "qkmssim",
        "--topology",
        f"{family}:{n}",
        "--seconds",
        f"{seconds:g}",
        "--seed",
        str(SEED),
        "--demand",
        "closed",
        "--sharing",
        policy,
        "--drain",
        f"{DRAIN_S:g}",
        "--block-bits",
        str(BLOCK_BITS),
        "--json",
    ]
    if pairs is not None:
        args += ["--pairs", str(pairs)]
    started = time.perf_counter()
    out = subprocess.run(args, capture_output=True, cwd=ROOT, check=False)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{family}:{n} {policy}: {out.stderr.decode()[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    fig = {k: report[k] for k in KEEP}
    rates = sorted(p["rate_bps"] for p in report["per_pair"])
    hops = [p["hops"] for p in report["per_pair"]]
    mean = statistics.fmean(rates) if rates else 0.0
    fig.update(
        family=family,
        n=n,
        policy=policy,
        ordered_pairs=n * (n - 1),
        sampled=pairs is not None,
        drain_s=DRAIN_S,
        mean_hops=round(statistics.fmean(hops), 3) if hops else None,
        pairs_with_no_key=sum(1 for r in rates if r == 0),
        median_over_equal_share=round(statistics.median(rates) / mean, 4) if mean else None,
        best_over_equal_share=round(rates[-1] / mean, 4) if mean else None,
        exit_status=out.returncode,
        process_wall_s=round(time.perf_counter() - started, 2),
    )
    return fig


def git_commit() -> str:
    out = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, cwd=ROOT, check=False
    )
    return out.stdout.decode().strip()


def campaign(
    quick: bool, jobs: int, out: Path, sizes: tuple[int, ...], resume: bool = False
) -> dict[str, Any]:
    if quick:
        cells = [(f, n, p, QUICK_SECONDS) for f, n in QUICK for p in POLICIES]
    else:
        cells = [(f, n, p, SECONDS[n]) for n in sizes for f in FAMILIES for p in POLICIES]
    # The smallest first: an interrupted campaign has whole sizes.
    cells.sort(key=lambda c: c[1])
    doc: dict[str, Any] = {
        "command": "python benchmarks/sim_campaign.py" + (" --quick" if quick else ""),
        "commit": git_commit(),
        "seed": SEED,
        "pairs": f"every ordered pair at N = 10; above, a seeded sample of {SAMPLE}",
        "block_bits": BLOCK_BITS,
        "demand": "closed",
        "drain_s": DRAIN_S,
        "complete": False,
        "runs": [],
    }
    if resume and out.exists():
        # Keep the runs already made with the same settings; make the others.
        done = json.loads(out.read_text())["runs"]
        doc["runs"] = [r for r in done if (r["family"], r["n"], r["policy"], r["seconds"]) in cells]
        kept = {(r["family"], r["n"], r["policy"], r["seconds"]) for r in doc["runs"]}
        cells = [c for c in cells if c not in kept]
    lock = threading.Lock()
    started = time.perf_counter()

    def one(cell: tuple[str, int, str, float]) -> None:
        fig = run_one(*cell)
        with lock:
            doc["runs"].append(fig)
            doc["runs"].sort(key=lambda r: (FAMILIES.index(r["family"]), r["n"], r["policy"]))
            out.write_text(json.dumps(doc, indent=1) + "\n")
            print(line(fig), flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, c) for c in cells]:
            future.result()
    doc["complete"] = True
    doc["cpu_s_total"] = round(sum(r["cpu_s"] for r in doc["runs"]), 1)
    doc["wall_s_total"] = round(time.perf_counter() - started, 1)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def line(r: dict[str, Any]) -> str:
    return (
        f"{r['family']:>6}:{r['n']:<3} {r['policy']:<10} pairs {r['pairs']:>4} "
        f"{r['seconds']:>4g} s  delivered/ceiling {_f(r['delivered_over_ceiling'], 3)}  "
        f"util {_f(r['fibre_utilisation'])}  Jain {_f(r['jain_index'], 3)}  "
        f"worst/equal {_f(r['worst_over_equal_share'], 3)}  "
        f"worst/maxmin {_f(r['worst_over_maxmin'], 3)}  "
        f"no key {r['pairs_with_no_key']}/{r['pairs']}  cpu {r['cpu_s']:.0f} s"
    )


def table(doc: dict[str, Any]) -> str:
    """The Markdown table of docs/controller.md, "Network campaign"."""
    rows = [
        "| family | N | pairs | s | policy | delivered / ceiling | utilisation | Jain "
        "| worst / equal share | worst / max-min | pairs with no key |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["runs"]:
        pairs = f"{r['pairs']}" + (" (sample)" if r["sampled"] else " (all)")
        rows.append(
            f"| {r['family']} | {r['n']} | {pairs} | {r['seconds']:g} | {r['policy']} "
            f"| {_f(r['delivered_over_ceiling'], 3)} | {_f(r['fibre_utilisation'])} "
            f"| {_f(r['jain_index'], 3)} | {_f(r['worst_over_equal_share'], 3)} "
            f"| {_f(r['worst_over_maxmin'], 3)} | {r['pairs_with_no_key']} |"
        )
    return "\n".join(rows)


def plot(doc: dict[str, Any], img: Path) -> list[Path]:
    """Jain's index, the worst pair and fibre utilisation against N, per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    palette = ("tab:orange", "tab:cyan", "tab:red", "tab:green", "tab:purple", "grey")
    colours = dict(zip(FAMILIES, palette, strict=True))
    styles = {"max-min": "-", "throughput": "--"}
    figures = [
        ("campaign_jain.png", [("jain_index", "Jain's index over pairs")]),
        (
            "campaign_worst_pair.png",
            [
                ("worst_over_equal_share", "worst pair / equal share"),
                ("worst_over_maxmin", "worst pair / its max-min fair rate"),
                ("no_key_share", "share of pairs that got no key"),
            ],
        ),
        ("campaign_utilisation.png", [("fibre_utilisation", "fibre utilisation")]),
    ]
    for r in doc["runs"]:
        r["no_key_share"] = r["pairs_with_no_key"] / r["pairs"]
    written = []
    for name, panels in figures:
        fig, axes = plt.subplots(1, len(panels), figsize=(5.4 * len(panels), 4.4), squeeze=False)
        for ax, (key, title) in zip(axes[0], panels, strict=True):
            for family in FAMILIES:
                for policy in POLICIES:
                    runs = [
                        r
                        for r in doc["runs"]
                        if r["family"] == family and r["policy"] == policy and r[key] is not None
                    ]
                    runs.sort(key=lambda r: r["n"])
                    if not runs:
                        continue
                    ax.plot(
                        [r["n"] for r in runs],
                        [r[key] for r in runs],
                        styles[policy],
                        marker="o",
                        color=colours[family],
                        label=f"{family} ({policy})",
                    )
            ax.set_xlabel("nodes N")
            ax.set_title(title)
            ax.set_xticks(list(SIZES))
            if key in ("jain_index", "fibre_utilisation", "no_key_share"):
                ax.set_ylim(0, 1.05)
            else:
                ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, ncol=2)
        fig.suptitle(
            "qkmssim, closed-loop demand, cold start (solid: max-min, dashed: throughput)",
            fontsize=9,
        )
        fig.tight_layout()
        path = img / name
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 runs of 10 nodes (about a minute)")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    ap.add_argument("--plot-only", action="store_true", help="plots and table from the JSON")
    ap.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="run only these sizes (comma-separated; the JSON then goes to --out)",
    )
    ap.add_argument("--out", type=Path, default=None, help="the JSON (default: results/)")
    ap.add_argument("--resume", action="store_true", help="keep the runs the JSON has")
    args = ap.parse_args()
    sizes = tuple(int(n) for n in args.sizes.split(","))
    if not set(sizes) <= set(SECONDS):
        ap.error(f"--sizes: each of {', '.join(map(str, SIZES))}")
    default = RESULTS / ("sim_campaign_quick.json" if args.quick else "sim_campaign.json")
    out = args.out or default
    if args.plot_only:
        doc = json.loads(out.read_text())
    else:
        doc = campaign(args.quick, max(1, args.jobs), out, sizes, args.resume)
        print(
            f"{len(doc['runs'])} runs, {doc['cpu_s_total']} CPU s, {doc['wall_s_total']} wall s"
            f" -> {out.resolve()}"
        )
    print(table(doc))
    if not args.quick:
        for path in plot(doc, IMG):
            print(f"plot {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
