"""How fairly a simulated network shares its link key under the controller's budgets.

Each case runs ``python -m qkmssim --json`` (closed-loop demand on every ordered pair,
the controller's ``max-min`` sharing) in a subprocess and reads the pairs' delivered rates.
The figures are computed here, the same way for every tree measured:

- the **reference**: each ordered pair's max-min fair rate from ``qkmsd.sharing`` on its
  shortest path by hop count (the route the nodes use on these uniform families), over the
  link key each node owns: half of every link's rate in each direction (a hop from X to Y
  pads with the blocks of X~Y that X owns, and so does a key X cuts for a neighbour Y);
  a relayed pair spends ``1 + 512 / 4096`` link bits per delivered bit on each hop (the
  simulator's 4,096-bit relays with their MAC and confirmation keys), a neighbour pair 1;
- ``worst / max-min``: the smallest delivered rate over the pair's reference rate;
- ``Jain``: Jain's index over the delivered rates, ``(sum x)^2 / (n sum x^2)``;
- ``used / max-min``: the share of the link key produced that was spent (the report's
  ``fibre_utilisation``: relays' pads and MAC keys and keys cut for neighbours, over the
  key the links made while both ends were up; with ``--warmup``, over the window only,
  otherwise the 12 s drain included) over the share the reference allocation spends.

``--warmup S`` measures from virtual second ``S`` to the end of the demand only (the
simulator's ``--warmup``: the report's rates and link key over that window): a steady
state without the cold start.
``--block-bits B`` sets every link's key block (the families' default: 65,536 bits).

``--before REV`` also runs the same cases on the daemon code of git revision ``REV``
(checked out in a temporary worktree; the simulator, ``qkmssim``, is this tree's in both
runs), so that before and after come from one run on one machine.

    python benchmarks/sim_fairness.py [--seconds 60] [--warmup 0] [--block-bits B]
        [--before REV] [--cases ring:6,...]

Writes ``benchmarks/results/sim_fairness.json`` (``--out`` elsewhere).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import networkx as nx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from qkmsd import sharing  # noqa: E402
from qkmssim import load  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sim_fairness.json"
CASES = ("ring:6", "bridge:8", "grid:9", "rgg:50")
RELAY_OVERHEAD = sharing.overhead_for(4096, per_hop_bits=512)


def reference(
    topology: str, seed: int, routes: dict[tuple[str, str], tuple[str, ...]] | None = None
) -> tuple[dict[tuple[str, str], float], float, int]:
    """Max-min fair rate per ordered pair on its route in ``routes`` (else its shortest
    path) over owned link halves; the share of the link key that allocation spends; the
    number of links."""
    topo = load(topology, seed=seed, block_bits=None)  # rates do not depend on blocks
    graph = topo.graph()
    links = {(lk.a, lk.b): lk.rate_bps for lk in topo.links}
    pairs = []
    for a in topo.nodes:
        for b in topo.nodes:
            if a != b:
                path = (routes or {}).get((a, b)) or tuple(nx.shortest_path(graph, a, b))
                over = 1.0 if len(path) == 2 else RELAY_OVERHEAD
                pairs.append(sharing.Pair(a, b, (path,), overhead=over))
    result = sharing.allocate_directed(links, pairs, policy="max-min")
    used = sum(result.link_loads.values()) / sum(links.values())
    return dict(result.rates), used, len(topo.links)


def simulate(
    tree: Path, topology: str, seconds: float, seed: int, warmup: float, block_bits: int | None
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
        str(seed),
        "--demand",
        "closed",
        "--warmup",
        str(warmup),
        "--json",
    ]
    if block_bits is not None:
        args += ["--block-bits", str(block_bits)]
    # This tree's simulator in front of the measured tree's daemon code.
    with tempfile.TemporaryDirectory(prefix="fair-sim-") as overlay:
        (Path(overlay) / "qkmssim").symlink_to(ROOT / "qkmssim")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([overlay, str(tree)])}
        # cwd: ``-m`` puts it first on the path, before PYTHONPATH.
        return _run(args, tree, Path(overlay), env, topology)


def _run(
    args: list[str], tree: Path, cwd: Path, env: dict[str, str], topology: str
) -> dict[str, Any]:
    started = time.perf_counter()
    out = subprocess.run(args, capture_output=True, cwd=cwd, env=env, check=False)
    if out.returncode not in (0, 1):
        raise SystemExit(f"{topology} on {tree}: {out.stderr.decode()[-2000:]}")
    report: dict[str, Any] = json.loads(out.stdout)
    report["process_wall_s"] = round(time.perf_counter() - started, 1)
    return report


def figures(
    report: dict[str, Any],
    fair: dict[tuple[str, str], float],
    fair_utilisation: float,
    in_use: dict[tuple[str, str], float],
) -> dict[str, Any]:
    rates = {(p["master"], p["slave"]): p["rate_bps"] for p in report["per_pair"]}
    ratios = {pair: rates.get(pair, 0.0) / m for pair, m in fair.items() if m > 0}
    worst_pair = min(ratios, key=lambda p: (ratios[p], p))
    values = list(rates.values())
    jain = sum(values) ** 2 / (len(values) * sum(v * v for v in values)) if any(values) else 0.0
    zero = sum(1 for v in values if v == 0)
    on_routes = {pair: rates.get(pair, 0.0) / m for pair, m in in_use.items() if m > 0}
    worst_in_use = min(on_routes, key=lambda p: (on_routes[p], p))
    return {
        "worst_over_max_min_in_use": round(on_routes[worst_in_use], 4),
        "worst_pair_in_use": f"{worst_in_use[0]}>{worst_in_use[1]}",
        "pairs_below_0_9_in_use": sum(1 for r in on_routes.values() if r < 0.9),
        "worst_over_max_min": round(ratios[worst_pair], 4),
        "worst_pair": f"{worst_pair[0]}>{worst_pair[1]}",
        "pairs_below_0_9": sum(1 for r in ratios.values() if r < 0.9),
        "pairs_with_nothing": zero,
        "jain": round(jain, 4),
        "jain_max_min": round(
            sum(fair.values()) ** 2 / (len(fair) * sum(v * v for v in fair.values())), 4
        ),
        "used_over_max_min": round(report["fibre_utilisation"] / fair_utilisation, 4),
        "delivered_bps": report["delivered_bps"],
        "max_min_delivered_bps": round(sum(fair.values()), 1),
        "relays_done": report["relays_done"],
        "relays_failed": report["relays_failed"],
        "served_twice": report["served_twice"] + report["value_reused"] + report["two_values"],
        "report_worst_over_maxmin": report["worst_over_maxmin"],
        "cpu_s": report["cpu_s"],
        "process_wall_s": report["process_wall_s"],
    }


@contextlib.contextmanager
def checkout(rev: str) -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="fair-before-") as tmp:
        tree = Path(tmp) / "tree"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), rev],
            check=True,
            capture_output=True,
        )
        try:
            yield tree
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                check=False,
                capture_output=True,
            )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--warmup", type=float, default=0.0, help="virtual seconds not measured")
    p.add_argument("--block-bits", type=int, default=None, help="every link's key block")
    p.add_argument("--before", default=None, help="also measure git revision REV")
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--out", type=Path, default=RESULTS, help="the JSON written")
    args = p.parse_args()
    cases = [c for c in args.cases.split(",") if c]
    results: dict[str, Any] = {
        "seconds": args.seconds,
        "warmup": args.warmup,
        "block_bits": args.block_bits,
        "seed": args.seed,
        "demand": "closed, every ordered pair",
        "before": args.before,
        "cases": [],
    }
    with contextlib.ExitStack() as stack:
        trees = {"after": ROOT}
        if args.before:
            trees = {"before": stack.enter_context(checkout(args.before)), **trees}
        for case in cases:
            fair, fair_used, n_links = reference(case, args.seed)
            row: dict[str, Any] = {"topology": case, "pairs": len(fair), "links": n_links}
            for label, tree in trees.items():
                report = simulate(tree, case, args.seconds, args.seed, args.warmup, args.block_bits)
                routes = {
                    (p["master"], p["slave"]): tuple(p["route"])
                    for p in report["per_pair"]
                    if p.get("route")
                }
                in_use = reference(case, args.seed, routes)[0]
                row[label] = figures(report, fair, fair_used, in_use)
                f = row[label]
                print(
                    f"{case:10} {label:6} worst/max-min {f['worst_over_max_min']:.3f} "
                    f"({f['worst_pair']}, {f['pairs_with_nothing']} pairs with nothing) "
                    f"on routes in use {f['worst_over_max_min_in_use']:.3f} "
                    f"({f['worst_pair_in_use']}, {f['pairs_below_0_9_in_use']} below 0.9) "
                    f"Jain {f['jain']:.3f} (max-min {f['jain_max_min']:.3f}) "
                    f"used/max-min {f['used_over_max_min']:.3f} "
                    f"relays {f['relays_done']} done {f['relays_failed']} failed "
                    f"cpu {f['cpu_s']:.0f} s",
                    flush=True,
                )
            results["cases"].append(row)
            args.out.parent.mkdir(parents=True, exist_ok=True)  # after each case
            args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(f"wrote {args.out}")
    if not math.isfinite(args.seconds):
        raise SystemExit(2)


if __name__ == "__main__":
    main()
