"""Where a pair's fair share goes: its max-min rate, the budget it was given, what it got.

Runs one simulated network (``qkmssim``, in this process, closed-loop demand on every
ordered pair) and samples every node's budgets once a virtual second after the warm-up.
Per ordered pair it prints:

- ``max-min``: the max-min fair rate on its shortest path (as ``sim_fairness.py``) and
  ``in use``: on the routes the nodes used (the controller's first route per pair, sampled);
- ``budget``: the mean (and range) of the budget the controller pushed to its source;
- ``got``: the key its slave SAE fetched over the window, per second;
- ``overflow``: budget that flowed into the pair's token bucket while it was full, so was
  never spent (the source waited on something else: link key, a relay under way).

Reading it: ``budget`` far from ``in use`` is the allocation (rates measured over a
window, demand, routes); ``got`` below ``budget`` is execution (relays, buckets, timing).

    python benchmarks/sim_budget_trace.py ring:6 [--seconds 120] [--warmup 40]
        [--block-bits B]

Writes ``benchmarks/results/sim_budget_trace.json``.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import trio
import trio.testing

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sim_fairness import reference  # noqa: E402

from qkmsd import sharing  # noqa: E402
from qkmsd.tokenbucket import TokenBucket  # noqa: E402
from qkmssim import SimSettings, load  # noqa: E402
from qkmssim._engine import Network, _threads_inline  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "sim_budget_trace.json"
RELAY_OVERHEAD = sharing.overhead_for(4096, per_hop_bits=512)
Pair = tuple[str, str]


def buckets(net: Network) -> dict[Pair, TokenBucket]:
    """Each (node, destination) budget's bucket now: the relay pool's for a relayed pair,
    the direct source's for a neighbour."""
    out: dict[Pair, TokenBucket] = {}
    for name, sim in net.nodes.items():
        node = sim.node
        if node is None:
            continue
        if node.direct is not None:
            out.update({(name, t): b for t, b in node.direct._budgets.items()})
        if node.relay is not None:
            for pool in node.relay._pools.values():
                if pool.budget is not None:
                    out[(name, pool.config.peer)] = pool.budget
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("topology")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=40.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--block-bits", type=int, default=None)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args()
    topo = load(args.topology, seed=args.seed, block_bits=args.block_bits)
    settings = SimSettings(seconds=args.seconds, seed=args.seed, warmup_s=args.warmup)
    logging.getLogger("qkms").setLevel(logging.CRITICAL)
    budgets: dict[Pair, list[float]] = collections.defaultdict(list)
    routes: dict[Pair, tuple[str, ...]] = {}
    overflow_at_start: dict[int, float] = {}
    seen: dict[Pair, TokenBucket] = {}

    async def sample(net: Network) -> None:
        while trio.current_time() < args.seconds:
            await trio.sleep(1.0)
            if trio.current_time() < args.warmup:
                continue
            for pair, bucket in buckets(net).items():
                overflow_at_start.setdefault(id(bucket), bucket.overflowed)
                seen[pair] = bucket
                budgets[pair].append(bucket.rate)
            for name, sim in net.nodes.items():
                if sim.node is not None and sim.node.routes is not None:
                    for dest in net.nodes:
                        paths = sim.node.routes.paths(dest) if dest != name else []
                        if paths:
                            routes[(name, dest)] = tuple(paths[0])

    async def run(net: Network) -> Any:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample, net)
            return await net.run()

    with tempfile.TemporaryDirectory(prefix="budget-trace-") as home, _threads_inline():
        net = Network.build(topo, settings, Path(home))
        report = trio.run(run, net, clock=trio.testing.MockClock(autojump_threshold=0))
    window = args.seconds - args.warmup
    shortest = reference(args.topology, args.seed)[0]
    in_use = reference(args.topology, args.seed, routes)[0]
    rows = []
    for p_ in report.per_pair:
        pair = (p_.master, p_.slave)
        b = budgets.get(pair, [])
        bucket = seen.get(pair)
        lost = bucket.overflowed - overflow_at_start[id(bucket)] if bucket else 0.0
        rows.append(
            {
                "pair": f"{pair[0]}>{pair[1]}",
                "hops": p_.hops,
                "max_min_shortest_bps": round(shortest[pair], 1),
                "max_min_in_use_bps": round(in_use[pair], 1),
                "budget_mean_bps": round(statistics.fmean(b), 1) if b else None,
                "budget_min_bps": round(min(b), 1) if b else None,
                "budget_max_bps": round(max(b), 1) if b else None,
                "got_bps": round(p_.rate_bps, 1),
                "overflow_bps": round(lost / window, 1),
            }
        )
    rows.sort(key=lambda r: r["got_bps"] / r["max_min_in_use_bps"])
    print(
        f"{args.topology} {args.seconds:g} s, window from {args.warmup:g} s, blocks "
        f"{args.block_bits or 'default'}: relays {report.relays_done} done "
        f"{report.relays_failed} failed"
    )
    print(
        f"{'pair':8} {'hops':>4} {'max-min':>8} {'in use':>8} {'budget':>8} "
        f"{'(min-max)':>15} {'got':>8} {'got/in use':>10} {'got/budget':>10} {'overflow':>8}"
    )
    for r in rows:
        mean = r["budget_mean_bps"] or 0.0
        print(
            f"{r['pair']:8} {r['hops']:>4} {r['max_min_shortest_bps']:>8.0f} "
            f"{r['max_min_in_use_bps']:>8.0f} {mean:>8.0f} "
            f"{r['budget_min_bps'] or 0:>7.0f}-{r['budget_max_bps'] or 0:<7.0f} "
            f"{r['got_bps']:>8.0f} {r['got_bps'] / r['max_min_in_use_bps']:>10.3f} "
            f"{r['got_bps'] / mean if mean else 0.0:>10.3f} {r['overflow_bps']:>8.0f}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "topology": args.topology,
                "seconds": args.seconds,
                "warmup": args.warmup,
                "block_bits": args.block_bits,
                "seed": args.seed,
                "relays_done": report.relays_done,
                "relays_failed": report.relays_failed,
                "pairs": rows,
            },
            indent=2,
        )
        + "\n"
    )


if __name__ == "__main__":
    main()
