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
hand over key in blocks of 8,192 bits (``BLOCK_BITS``: one every 0.63 s on a 20 km link).

Two modes:

- ``steady`` (the default): each run warms up for ``WARMUP_S`` (20) virtual seconds, past
  the first election (about 3 s) and the first budgets, and its figures are measured over
  the window after it (qkmssim's ``--warmup``): ``WINDOW_S`` by size (40, 20, 10 and 5
  virtual s at N = 10, 50, 100, 200, what the CPU allows: about an hour of one core for
  the 48 runs; the N = 100 and 200 windows are the short ones and the table says so);
  results ``benchmarks/results/sim_campaign_steady.json``, plots
  ``docs/img/campaign_steady_*.png``;
- ``cold``: the network's first seconds from empty, no warm-up (``COLD_S``: 10, 8, 6, 4 s);
  results ``sim_campaign_cold.json``, plots ``campaign_cold_*.png``.

Every run ends with a 2 s drain (``DRAIN_S``).  Sizes run smallest first (``max-min``
before ``throughput`` within a size), and the JSON is written after every run:
``--resume`` keeps the runs the JSON has and makes the others, ``--sizes`` and
``--policies`` run part of the grid.

    python benchmarks/sim_campaign.py                  # the steady-state campaign
    python benchmarks/sim_campaign.py --mode cold      # the cold-start one
    python benchmarks/sim_campaign.py --quick          # 4 runs of 10 nodes, a minute or two
    python benchmarks/sim_campaign.py --plot-only      # plots and table from the JSON
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
COLD_S = {10: 10.0, 50: 8.0, 100: 6.0, 200: 4.0}
"""Cold mode: virtual seconds of demand from empty, by size."""
WARMUP_S = 20.0
"""Steady mode: virtual seconds before the window (the first election is at about 3 s,
the first budgets soon after)."""
WINDOW_S = {10: 40.0, 50: 20.0, 100: 10.0, 200: 5.0}
"""Steady mode: the measured window by size, what the CPU allows."""
BLOCK_BITS = 8192
"""Link key block size: a block every 0.63 s on a 20 km link, 1 s on the rgg's longest
(65,536, qkmssim's default for the families, is one every 5 s)."""
DRAIN_S = 2.0
"""Virtual seconds after the demand for relays under way to end (qkmssim's default is 12)."""
QUICK = [("ring", 10), ("grid", 10)]
QUICK_COLD_S = 8.0
QUICK_WINDOW_S = 10.0
MODES = ("steady", "cold")

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


Cell = tuple[str, int, str, float, float]
"""(family, N, policy, warm-up s, seconds of demand in all)."""


def cells_for(
    mode: str, quick: bool, sizes: tuple[int, ...] = SIZES, policies: tuple[str, ...] = POLICIES
) -> list[Cell]:
    warmup = WARMUP_S if mode == "steady" else 0.0
    if quick:
        spans = {10: QUICK_WINDOW_S if mode == "steady" else QUICK_COLD_S}
        grid = QUICK
    else:
        spans = WINDOW_S if mode == "steady" else COLD_S
        grid = [(f, n) for n in sizes for f in FAMILIES]
    cells = [(f, n, p, warmup, warmup + spans[n]) for f, n in grid for p in policies]
    # The smallest first, max-min before throughput: an interrupted campaign has sizes.
    cells.sort(key=lambda c: (c[1], POLICIES.index(c[2])))
    return cells


def run_one(family: str, n: int, policy: str, warmup: float, seconds: float) -> dict[str, Any]:
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
    if warmup:
        args += ["--warmup", f"{warmup:g}"]
    if pairs is not None:
        args += ["--pairs", str(pairs)]
    started = time.perf_counter()
    out = subprocess.run(args, capture_output=True, cwd=ROOT, check=False)
    if out.returncode not in (0, 1):
        raise RuntimeError(f"{family}:{n} {policy}: {out.stderr.decode()[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    fig = {k: report[k] for k in KEEP}
    if warmup and report.get("warmup_s") != warmup:
        raise RuntimeError(f"{family}:{n} {policy}: this qkmssim has no --warmup window")
    rates = sorted(p["rate_bps"] for p in report["per_pair"])
    hops = [p["hops"] for p in report["per_pair"]]
    mean = statistics.fmean(rates) if rates else 0.0
    fig.update(
        family=family,
        n=n,
        policy=policy,
        ordered_pairs=n * (n - 1),
        sampled=pairs is not None,
        warmup_s=warmup,
        window_s=seconds - warmup,
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
    mode: str,
    quick: bool,
    jobs: int,
    out: Path,
    sizes: tuple[int, ...],
    policies: tuple[str, ...] = POLICIES,
    resume: bool = False,
) -> dict[str, Any]:
    cells = cells_for(mode, quick, sizes, policies)
    every = cells_for(mode, quick)
    doc: dict[str, Any] = {
        "command": "python benchmarks/sim_campaign.py --mode " + mode + (" --quick" * quick),
        "mode": mode,
        "commit": git_commit(),
        "seed": SEED,
        "pairs": f"every ordered pair at N = 10; above, a seeded sample of {SAMPLE}",
        "block_bits": BLOCK_BITS,
        "demand": "closed",
        "warmup_s": WARMUP_S if mode == "steady" else 0.0,
        "drain_s": DRAIN_S,
        "complete": False,
        "runs": [],
    }

    def cell_of(r: dict[str, Any]) -> Cell:
        return (r["family"], r["n"], r["policy"], r.get("warmup_s", 0.0), r["seconds"])

    if resume and out.exists():
        # Keep the runs already made with the same settings (of any size and policy);
        # make the others asked for.
        done = json.loads(out.read_text())["runs"]
        doc["runs"] = [r for r in done if cell_of(r) in every]
        kept = {cell_of(r) for r in doc["runs"]}
        cells = [c for c in cells if c not in kept]
    lock = threading.Lock()

    def one(cell: Cell) -> None:
        fig = run_one(*cell)
        with lock:
            doc["runs"].append(fig)
            doc["runs"].sort(key=lambda r: (FAMILIES.index(r["family"]), r["n"], r["policy"]))
            out.write_text(json.dumps(doc, indent=1) + "\n")
            print(line(fig), flush=True)

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for future in [pool.submit(one, c) for c in cells]:
            future.result()
    doc["complete"] = len(doc["runs"]) == len(every)
    doc["cpu_s_total"] = round(sum(r["cpu_s"] for r in doc["runs"]), 1)
    doc["wall_s_total"] = round(sum(r["process_wall_s"] for r in doc["runs"]), 1)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def _f(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def window(r: dict[str, Any]) -> str:
    """The measured window, in virtual seconds from the start: ``20-60``."""
    return f"{r.get('warmup_s', 0.0):g}-{r['seconds']:g}"


def line(r: dict[str, Any]) -> str:
    return (
        f"{r['family']:>6}:{r['n']:<3} {r['policy']:<10} pairs {r['pairs']:>4} "
        f"{window(r):>6} s  delivered/ceiling {_f(r['delivered_over_ceiling'], 3)}  "
        f"util {_f(r['fibre_utilisation'])}  Jain {_f(r['jain_index'], 3)}  "
        f"worst/equal {_f(r['worst_over_equal_share'], 3)}  "
        f"worst/maxmin {_f(r['worst_over_maxmin'], 3)}  "
        f"no key {r['pairs_with_no_key']}/{r['pairs']}  cpu {r['cpu_s']:.0f} s"
    )


def table(doc: dict[str, Any]) -> str:
    """The Markdown table of docs/controller.md, "Network campaign": a row per run, and
    a "not run" row per cell of the mode's grid the JSON does not have."""
    keyed = []
    for r in doc["runs"]:
        pairs = f"{r['pairs']}" + (" (sample)" if r["sampled"] else " (all)")
        row = (
            f"| {r['family']} | {r['n']} | {pairs} | {window(r)} | {r['policy']} "
            f"| {_f(r['delivered_over_ceiling'], 3)} | {_f(r['fibre_utilisation'])} "
            f"| {_f(r['jain_index'], 3)} | {_f(r['worst_over_equal_share'], 3)} "
            f"| {_f(r['worst_over_maxmin'], 3)} | {r['pairs_with_no_key']} |"
        )
        keyed.append(((r["family"], r["n"], r["policy"]), row))
    made = {key for key, _ in keyed}
    quick = doc["command"].endswith("--quick")
    for family, n, policy, warmup, seconds in cells_for(doc.get("mode", "cold"), quick):
        if (family, n, policy) not in made:
            row = f"| {family} | {n} | - | {warmup:g}-{seconds:g} | {policy} | not run | | | | | |"
            keyed.append(((family, n, policy), row))
    keyed.sort(key=lambda kr: (FAMILIES.index(kr[0][0]), kr[0][1], POLICIES.index(kr[0][2])))
    rows = [
        "| family | N | pairs | window (s) | policy | delivered / ceiling | utilisation | Jain "
        "| worst / equal share | worst / max-min | pairs with no key |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    return "\n".join(rows + [row for _, row in keyed])


def plot(doc: dict[str, Any], img: Path) -> list[Path]:
    """Jain's index, the worst pair and fibre utilisation against N, per family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img.mkdir(parents=True, exist_ok=True)
    palette = ("tab:orange", "tab:cyan", "tab:red", "tab:green", "tab:purple", "grey")
    colours = dict(zip(FAMILIES, palette, strict=True))
    styles = {"max-min": "-", "throughput": "--"}
    mode = doc.get("mode", "cold")
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
            if key == "fibre_utilisation":  # over 1: key held at the warm-up spent after
                top = max([r[key] or 0.0 for r in doc["runs"]] + [1.0])
                ax.set_ylim(0, top + 0.05)
            elif key in ("jain_index", "no_key_share"):
                ax.set_ylim(0, 1.05)
            else:
                ax.set_ylim(bottom=0)
            ax.grid(alpha=0.3)
        axes[0][-1].legend(fontsize=7, ncol=2)
        windows = "/".join(f"{WINDOW_S[n]:g}" for n in SIZES)
        when = (
            f"after a {doc['warmup_s']:g} s warm-up, windows of {windows} s at N = 10/50/100/200"
            if mode == "steady"
            else "cold start, from 0 s"
        )
        fig.suptitle(
            f"qkmssim, closed-loop demand,\n{when}\n(solid: max-min, dashed: throughput)",
            fontsize=9,
        )
        fig.tight_layout()
        path = img / name.replace("campaign_", f"campaign_{mode}_")
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--mode", choices=MODES, default="steady", help="steady (default) or cold")
    ap.add_argument("--quick", action="store_true", help="4 runs of 10 nodes")
    ap.add_argument("--jobs", type=int, default=1, help="runs at a time (default 1)")
    ap.add_argument("--plot-only", action="store_true", help="plots and table from the JSON")
    ap.add_argument(
        "--sizes",
        default=",".join(map(str, SIZES)),
        help="run only these sizes (comma-separated)",
    )
    ap.add_argument(
        "--policies",
        default=",".join(POLICIES),
        help="run only these sharing policies (comma-separated)",
    )
    ap.add_argument("--out", type=Path, default=None, help="the JSON (default: results/)")
    ap.add_argument("--resume", action="store_true", help="keep the runs the JSON has")
    args = ap.parse_args()
    sizes = tuple(int(n) for n in args.sizes.split(","))
    if not set(sizes) <= set(SIZES):
        ap.error(f"--sizes: each of {', '.join(map(str, SIZES))}")
    policies = tuple(args.policies.split(","))
    if not set(policies) <= set(POLICIES):
        ap.error(f"--policies: each of {', '.join(POLICIES)}")
    name = f"sim_campaign_{args.mode}" + ("_quick" if args.quick else "")
    out = args.out or RESULTS / f"{name}.json"
    if args.plot_only:
        doc = json.loads(out.read_text())
    else:
        doc = campaign(args.mode, args.quick, max(1, args.jobs), out, sizes, policies, args.resume)
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
