"""Time to share link key among every ordered node pair, per policy, and how fair each is.

Networks: random geometric graphs (networkx ``random_geometric_graph``) in a square of
``--side-km`` (200 km), the radius set for a mean degree of about 7, the first seed from
``--seed`` whose graph is connected.  Each link's key rate follows the fibre's loss,
``--rate0`` (1e5 bits/s) times 10^(-0.2 dB/km * length / 10): a model, not a device's
figure.  On the networks of ``--nodes`` (100 and 200) every ordered pair of nodes relays
over one shortest path by hop count (networkx ``all_pairs_shortest_path``; 200 nodes =
39,800 pairs); on those of ``--multipath-nodes`` (30 and 50) every ordered pair splits its
key over its ``--multipath-k`` (2) shortest simple paths.  Demands unbounded, weights 1,
the overhead that of relays of ``relay.block_bits`` = 8192 bits (1 + 256 / 8192).

For each network and policy it prints and records the time ``allocate`` takes (median of
``--repeat`` runs, input checking included) and the figures of the allocation against
max-min on the same routes: Jain's index, the worst pair over its equal share and over its
max-min fair rate, link key used over what max-min uses.  ``--quick`` runs the 100-node
network and the 30-node multi-path one, once per policy.  BLAS runs on one thread unless
the environment says otherwise (``OPENBLAS_NUM_THREADS``).  Writes
``benchmarks/results/sharing_bench.json``.
"""

# ruff: noqa: E402

from __future__ import annotations

import os

# One BLAS thread: on a loaded 2-core machine OpenBLAS's spinning threads made one 300 x 300
# Cholesky factorisation 0.19 s instead of 0.006 s.  Set before numpy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse
import itertools
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE.parent) not in sys.path:
    sys.path.insert(0, str(HERE.parent))

import networkx as nx

from qkmsd.sharing import POLICIES, Pair, allocate, figures, link_id, overhead_for

RELAY_BLOCK_BITS = 8192


def network(
    nodes: int, seed: int, side_km: float, rate0: float, paths: int = 1
) -> tuple[dict[tuple[str, str], float], list[Pair], int]:
    """Links with rates, every ordered pair on its ``paths`` shortest paths, the seed used."""
    radius = math.sqrt(7.0 / (math.pi * nodes))
    for attempt in range(seed, seed + 1000):
        graph = nx.random_geometric_graph(nodes, radius, seed=attempt)
        if nx.is_connected(graph):
            break
    else:
        raise SystemExit(f"no connected graph of {nodes} nodes in 1000 seeds")
    pos = nx.get_node_attributes(graph, "pos")
    name = {node: f"n{node:03d}" for node in graph.nodes}
    links: dict[tuple[str, str], float] = {}
    for a, b in graph.edges:
        length = math.dist(pos[a], pos[b]) * side_km
        links[link_id(name[a], name[b])] = rate0 * 10 ** (-0.2 * length / 10)
    if paths == 1:
        pairs = [
            Pair(name[src], name[dst], [tuple(name[n] for n in path)])
            for src, found in nx.all_pairs_shortest_path(graph)
            for dst, path in found.items()
            if src != dst
        ]
    else:
        pairs = [
            Pair(
                name[src],
                name[dst],
                [
                    tuple(name[n] for n in path)
                    for path in itertools.islice(nx.shortest_simple_paths(graph, src, dst), paths)
                ],
            )
            for src in graph.nodes
            for dst in graph.nodes
            if src != dst
        ]
    return links, pairs, attempt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 nodes, one run per policy")
    parser.add_argument("--nodes", default="100,200")
    parser.add_argument(
        "--multipath-nodes", default="30,50", help="networks whose pairs use several paths"
    )
    parser.add_argument("--multipath-k", type=int, default=2, help="shortest paths per pair")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--side-km", type=float, default=200.0)
    parser.add_argument("--rate0", type=float, default=1e5)
    parser.add_argument("--out", default=str(HERE / "results" / "sharing_bench.json"))
    args = parser.parse_args()
    sizes = [(100, 1)] if args.quick else [(int(n), 1) for n in args.nodes.split(",") if n]
    multi = [30] if args.quick else [int(n) for n in args.multipath_nodes.split(",") if n]
    sizes += [(n, args.multipath_k) for n in multi]
    repeat = 1 if args.quick else args.repeat
    overhead = overhead_for(RELAY_BLOCK_BITS)

    rows: list[dict[str, Any]] = []
    header = (
        f"{'nodes':>5} {'links':>5} {'pairs':>6} {'paths':>5} {'policy':>12} {'time s':>8} "
        f"{'jain':>6} {'worst/eq':>9} {'worst/mm':>9} {'used/mm':>8}"
    )
    print(header)
    for nodes, k in sizes:
        links, pairs, seed = network(nodes, args.seed, args.side_km, args.rate0, k)
        reference = allocate(links, pairs, policy="max-min", overhead=overhead)
        for policy in POLICIES:
            times = []
            for _ in range(repeat):
                start = time.perf_counter()
                result = allocate(links, pairs, policy=policy, overhead=overhead)
                times.append(time.perf_counter() - start)
            fig = figures(
                result.rates,
                result.link_loads,
                links,
                pairs,
                overhead=overhead,
                max_min=reference.rates,
                max_min_link_loads=reference.link_loads,
            )
            row = {
                "nodes": nodes,
                "seed": seed,
                "links": len(links),
                "pairs": len(pairs),
                "paths_per_pair": k,
                "routes": sum(len(pair.paths) for pair in pairs),
                "policy": policy,
                "seconds_median": statistics.median(times),
                "seconds": times,
                "delivered_bits_per_s": sum(result.rates.values()),
                "jain": fig.jain,
                "worst_over_equal_share": fig.worst_over_equal_share,
                "worst_over_max_min": fig.worst_over_max_min,
                "used_over_max_min": fig.used_over_max_min,
                "link_utilisation": fig.link_utilisation,
            }
            rows.append(row)
            print(
                f"{nodes:>5} {len(links):>5} {len(pairs):>6} {k:>5} {policy:>12} "
                f"{row['seconds_median']:>8.2f} {fig.jain:>6.3f} "
                f"{fig.worst_over_equal_share or 0:>9.4f} {fig.worst_over_max_min or 0:>9.4f} "
                f"{fig.used_over_max_min or 0:>8.3f}",
                flush=True,
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "command": " ".join(["python", "benchmarks/sharing_bench.py", *sys.argv[1:]]),
                "machine": platform.platform(),
                "python": platform.python_version(),
                "side_km": args.side_km,
                "rate0_bits_per_s": args.rate0,
                "overhead": overhead,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
