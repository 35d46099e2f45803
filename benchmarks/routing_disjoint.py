"""Controller routes with and without their node-disjoint sets, same graphs, same run.

The controller computes, per node pair, the best route and 2 alternates (networkx's Yen)
and, since multi-path relay takes node-disjoint paths, a node-disjoint set of up to 8 paths
of least total cost (``qkmsd.routing``'s minimum-cost flow).  This measures what the
disjoint sets add to ``qkmsd.controller.compute_routes``: the same random geometric
networks as ``routing_bench.py`` (mean degree about 6, random link states, each link
costing the dearer of its two directions, as the controller prices it), the same random
pairs, timed with ``disjoint=0`` and with the default.  Prints a table and writes
benchmarks/results/routing_disjoint.json.

    PYTHONPATH=. python benchmarks/routing_disjoint.py [--quick]
"""

from __future__ import annotations

import argparse
import statistics
from typing import Any

import networkx as nx
from _bb84_common import write
from routing_bench import network, pairs, timed

from qkmsd.controller import compute_routes


def run(n: int, count: int, seed: int) -> dict[str, Any]:
    topology, directed, info = network(n, seed)
    graph: nx.Graph[str] = nx.Graph()
    for a, b, data in directed.edges(data=True):
        cost = max(data["weight"], directed.edges[b, a]["weight"])
        graph.add_edge(a, b, cost=cost)
    chosen = pairs(sorted(graph.nodes), count, seed)
    plain_w, plain_c, _ = timed(lambda: compute_routes(graph, chosen, disjoint=0))
    both_w, both_c, routes = timed(lambda: compute_routes(graph, chosen))
    sizes = [len(r.disjoint) for r in routes]
    return {
        **info,
        "pairs": len(chosen),
        "routes_ms_per_pair_cpu": round(plain_c / len(chosen) * 1e3, 3),
        "with_disjoint_ms_per_pair_cpu": round(both_c / len(chosen) * 1e3, 3),
        "routes_ms_per_pair_wall": round(plain_w / len(chosen) * 1e3, 3),
        "with_disjoint_ms_per_pair_wall": round(both_w / len(chosen) * 1e3, 3),
        "disjoint_paths_mean": round(statistics.fmean(sizes), 2) if sizes else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = [(100, 20)] if args.quick else [(100, 80), (200, 150), (1000, 50)]
    rows = [run(n, count, seed=7) for n, count in sizes]
    print(f"{'nodes':>6} {'pairs':>6} {'routes ms':>10} {'+disjoint ms':>13} {'paths':>6}")
    for r in rows:
        print(
            f"{r['nodes']:>6} {r['pairs']:>6} {r['routes_ms_per_pair_cpu']:>10.3f}"
            f" {r['with_disjoint_ms_per_pair_cpu']:>13.3f} {r['disjoint_paths_mean']:>6.2f}"
        )
    if not args.quick:
        write("routing_disjoint", rows)


if __name__ == "__main__":
    main()
