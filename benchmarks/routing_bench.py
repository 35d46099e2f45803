"""Routes: best + 3 alternates per node pair, qkmsd.routing against networkx, same run.

Networks are random geometric graphs: nodes uniform on a square, a QKD link wherever two
nodes are within 30 km, the square's side chosen so the mean degree is about 6 (edge
effects included), the largest connected component of the links that are up kept.  Each
link gets a random state (owned key, key rate, QBER, recent failures, 2 % down) and both
arcs their cost from ``qkmsd.routing.link_cost``.  For the same random node pairs, each
with a destination of its own, both compute the least-cost route and 3 alternates:

- ours: ``Topology.routes(src, dst)``, cold: the destination's distances are not cached yet
  (a second pass over the same pairs, "warm", reuses them, as the controller does for pairs
  to one destination until the topology changes);
- networkx: the first 4 paths of ``shortest_simple_paths(G, src, dst, weight="weight")``
  (Yen's algorithm) on a ``DiGraph`` with the same arc costs.

Every pair's 4 route costs must agree (relative 1e-9).  Prints a table and writes
benchmarks/results/routing_bench.json.  ``--quick``: smaller runs, for a smoke test.

    PYTHONPATH=. python benchmarks/routing_bench.py [--quick]
"""

# Tables print wide rows; the timed lambdas run at once, inside their loop iteration.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import itertools
import math
import random
import statistics
import time
from collections.abc import Callable
from typing import Any

import networkx as nx
import numpy as np
from _bb84_common import write

from qkmsd.routing import ALTERNATES, LinkState, Topology

RADIUS_KM = 30.0
MEAN_DEGREE = 6.0
DOWN = 0.02


def side_km(n: int) -> float:
    """Side of the square giving mean degree MEAN_DEGREE: expected neighbours of a uniform
    point in a unit square within rho are pi rho^2 - 8 rho^3 / 3 + rho^4 / 2."""
    lo, hi = 1e-6, 1.0
    for _ in range(100):
        rho = (lo + hi) / 2
        degree = (n - 1) * (math.pi * rho**2 - 8 * rho**3 / 3 + rho**4 / 2)
        lo, hi = (rho, hi) if degree < MEAN_DEGREE else (lo, rho)
    return RADIUS_KM / lo


def geometric_links(n: int, rng: np.random.Generator) -> tuple[float, list[tuple[int, int]]]:
    side = side_km(n)
    pos = rng.random((n, 2)) * side
    links: list[tuple[int, int]] = []
    for start in range(0, n, 512):
        block = pos[start : start + 512]
        d2 = ((block[:, None, :] - pos[None, :, :]) ** 2).sum(axis=2)
        rows, cols = np.nonzero(d2 <= RADIUS_KM**2)
        for r, c in zip(rows.tolist(), cols.tolist(), strict=True):
            if start + r < c:
                links.append((start + r, c))
    return side, links


def link_states(links: list[tuple[int, int]], rng: random.Random) -> list[LinkState]:
    states = []
    for a, b in links:
        states.append(
            LinkState(
                a=f"n{a}",
                b=f"n{b}",
                bits_a=rng.randrange(0, 2_000_000),
                bits_b=rng.randrange(0, 2_000_000),
                key_rate_bps=rng.uniform(1e3, 1e5),
                qber=rng.uniform(0.005, 0.1),
                relay_failures=rng.choice((0, 0, 0, 0, 0, 0, 0, 1, 2, 3)),
                up=rng.random() >= DOWN,
            )
        )
    return states


def network(n: int, seed: int) -> tuple[Topology, nx.DiGraph[str], dict[str, Any]]:
    side, links = geometric_links(n, np.random.default_rng(seed))
    states = link_states(links, random.Random(seed))
    up: nx.Graph[str] = nx.Graph()
    up.add_edges_from((s.a, s.b) for s in states if s.up)
    keep = max(nx.connected_components(up), key=len)
    topology = Topology()
    topology.set_links(s for s in states if s.a in keep and s.b in keep)
    graph: nx.DiGraph[str] = nx.DiGraph()
    for a in topology.nodes():
        for b in topology.neighbours(a):
            graph.add_edge(a, b, weight=topology.cost(a, b))
    info = {
        "nodes_drawn": n,
        "side_km": round(side, 1),
        "mean_degree_drawn": round(2 * len(links) / n, 2),
        "nodes": graph.number_of_nodes(),
        "links": graph.number_of_edges() // 2,
        "mean_degree": round(graph.number_of_edges() / graph.number_of_nodes(), 2),
    }
    return topology, graph, info


def pairs(nodes: list[str], count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    dsts = rng.sample(nodes, count)
    out = []
    for d in dsts:
        s = rng.choice(nodes)
        while s == d:
            s = rng.choice(nodes)
        out.append((s, d))
    return out


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-9) for x, y in zip(sorted(a), sorted(b), strict=True)
    )


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """Wall and CPU seconds of one call, and its result.  The machine is shared: CPU time
    is steadier than wall time when other processes take the cores."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - w0, time.process_time() - c0, out


def run(n: int, count: int, seed: int) -> dict[str, Any]:
    topology, graph, info = network(n, seed)
    todo = pairs(sorted(topology.nodes()), count + 1, seed + 1)
    k = ALTERNATES + 1
    topology.routes(*todo.pop())  # warm-up: first calls into both libraries
    list(itertools.islice(nx.shortest_simple_paths(graph, *todo[0], "weight"), 1))
    ours, warm, theirs = [], [], []
    hops, mismatches = [], 0
    for src, dst in todo:
        wall, cpu, mine = timed(lambda: topology.routes(src, dst))  # noqa: B023
        ours.append((wall, cpu))
        wall, cpu, _ = timed(lambda: topology.routes(src, dst))  # noqa: B023
        warm.append((wall, cpu))
        wall, cpu, found = timed(
            lambda: list(itertools.islice(nx.shortest_simple_paths(graph, src, dst, "weight"), k))  # noqa: B023
        )
        theirs.append((wall, cpu))
        costs = [float(nx.path_weight(graph, p, "weight")) for p in found]
        if not close([p.cost for p in mine], costs):
            mismatches += 1
        hops.append(mine[0].hops)

    def ms(samples: list[tuple[float, float]], i: int) -> float:
        return round(statistics.mean(s[i] for s in samples) * 1e3, 3)

    return {
        **info,
        "pairs": count,
        "routes_per_pair": k,
        "best_route_hops_mean": round(statistics.mean(hops), 1),
        "ours_ms": ms(ours, 0),
        "networkx_ms": ms(theirs, 0),
        "ratio": round(ms(ours, 0) / ms(theirs, 0), 4),
        "ours_cpu_ms": ms(ours, 1),
        "networkx_cpu_ms": ms(theirs, 1),
        "ratio_cpu": round(ms(ours, 1) / ms(theirs, 1), 4),
        "ours_warm_ms": ms(warm, 0),
        "ours_warm_cpu_ms": ms(warm, 1),
        "cost_mismatches": mismatches,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer pairs, for a smoke test")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    plan = (
        [(100, 10), (1000, 5), (10_000, 1)] if args.quick else [(100, 50), (1000, 30), (10_000, 6)]
    )
    print(
        f"{'':>30}{'--------- wall ms / pair ---------':>36} {'--------- CPU ms / pair ---------':>35}"
    )
    print(
        f"{'nodes':>6} {'links':>6} {'deg':>5} {'hops':>5} {'pairs':>5} {'ours':>9} {'networkx':>10} {'ratio':>7} {'warm':>7} {'ours':>9} {'networkx':>10} {'ratio':>7} {'warm':>7} {'mismatch':>8}"
    )
    rows = []
    for n, count in plan:
        row = run(n, count, args.seed)
        rows.append(row)
        print(
            f"{row['nodes']:>6} {row['links']:>6} {row['mean_degree']:>5} {row['best_route_hops_mean']:>5} {count:>5} {row['ours_ms']:>9.2f} {row['networkx_ms']:>10.1f} {row['ratio']:>7.3f} {row['ours_warm_ms']:>7.2f} {row['ours_cpu_ms']:>9.2f} {row['networkx_cpu_ms']:>10.1f} {row['ratio_cpu']:>7.3f} {row['ours_warm_cpu_ms']:>7.2f} {row['cost_mismatches']:>8}"
        )
    growth = []
    for a, b in itertools.pairwise(rows):
        scale = math.log(b["nodes"] / a["nodes"])
        growth.append(
            {
                "from_nodes": a["nodes"],
                "to_nodes": b["nodes"],
                "ours_exponent": round(math.log(b["ours_cpu_ms"] / a["ours_cpu_ms"]) / scale, 2),
                "networkx_exponent": round(
                    math.log(b["networkx_cpu_ms"] / a["networkx_cpu_ms"]) / scale, 2
                ),
            }
        )
        g = growth[-1]
        print(
            f"growth in CPU time, {a['nodes']} -> {b['nodes']} nodes: ours ~ N^{g['ours_exponent']}, networkx ~ N^{g['networkx_exponent']}"
        )
    print("target: ours <= 0.25 x networkx at 1,000 and 10,000 nodes")
    write("routing_bench" + ("_quick" if args.quick else ""), rows, growth=growth, seed=args.seed)


if __name__ == "__main__":
    main()
