"""Two end-to-end pools compete for one short QKD link: does priority decide who fills first?

Node A keeps pools A~C and A~D; every relay into either starts on link A~B (then B~C or
B~D, which have key to spare).  Link A~B is short: a new block of A~B key arrives every
``--tick`` seconds, paying for one relay (256-bit key, 96 bytes of link key a hop).  Both
pools want ``--target`` bits (their low and high watermark).  The real relay agents,
key stores (SQLite on a temporary directory) and routing tables run in one trio run
under a ``MockClock`` that jumps whenever every task waits, so the figures are seconds
of *simulated* time, deterministic up to scheduling order, independent of the machine.

Cases, in the same run: priorities 5 and 1 (``priority_of``, as key profiles give), then
equal priorities (no profiles).  For each, the simulated time at which each pool reached
its target, median and range over ``--runs`` runs (the order in which trio wakes tasks
varies from run to run), and the median count of relays A started that failed.  Prints
a table and writes benchmarks/results/profiles_priority.json.

    PYTHONPATH=. python benchmarks/profiles_priority.py [--target BITS] [--tick S] [--runs N]
"""

# Tables print wide rows.
# ruff: noqa: E501

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
from pathlib import Path
from typing import Any

import trio
import trio.testing
from _bb84_common import write

from qkmsd.keystore import NewBlock
from tests.qkmsd.relay.conftest import HOP_BYTES, A, B, C, D, Net, link_id, open_net

KEY_BITS = 256


async def _keep_delivered(
    net: Net, reached: dict[str, float], target: int, both: trio.Event
) -> None:
    """A's key manager, in short: store each relayed key as READY; note when a pool has
    ``target`` bits."""
    seen = {lid: 0 for lid in net[A].delivered}
    while True:
        await trio.sleep(0.01)
        for lid, blocks in net[A].delivered.items():
            fresh = blocks[seen[lid] :]
            seen[lid] = len(blocks)
            if fresh:
                store = net[A].store
                store.add_blocks([NewBlock(lid, b.block_id, b.key, 0.0, 1.0, True) for b in fresh])
                store.mark_ready(lid, [b.block_id for b in fresh])
            if lid not in reached and len(blocks) * KEY_BITS >= target:
                reached[lid] = trio.current_time()
                if len(reached) == 2:
                    both.set()


async def _trickle(net: Net, tick: float) -> None:
    """One relay's worth of A's key on A~B per tick (the ids A owns are the even ones)."""
    block_id = 2
    while True:
        await trio.sleep(tick)
        net.add_link_key(A, B, [block_id], size=HOP_BYTES)
        block_id += 2


async def _case(
    root: Path, priorities: dict[str, float], target: int, tick: float
) -> dict[str, Any]:
    reached: dict[str, float] = {}
    both = trio.Event()
    async with open_net(
        root,
        links=[(A, B), (B, C), (B, D)],
        pools=[(A, C), (A, D)],
        link_blocks=range(1),  # block 0: A's, one relay's worth
        block_bytes=HOP_BYTES,
        watermarks=(target, target),
        priority_of=lambda node, peer: priorities.get(peer, 0.0),
    ) as net:
        for a, b in ((B, C), (B, D)):
            net.add_link_key(a, b, range(10, 10 + 2 * target // KEY_BITS + 4), size=4 * HOP_BYTES)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_keep_delivered, net, reached, target, both)
            nursery.start_soon(_trickle, net, tick)
            await nursery.start(net[A].agent.run)
            with trio.move_on_after(100 * tick * (2 * target // KEY_BITS)):
                await both.wait()
            nursery.cancel_scope.cancel()
        failed = net[A].agent.statistics().relays_failed
    return {
        "relays_failed": failed,
        "priority_high_pool": priorities.get(C, 0.0),
        "priority_low_pool": priorities.get(D, 0.0),
        "high_pool_s": reached.get(link_id(A, C)),
        "low_pool_s": reached.get(link_id(A, D)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, default=16 * KEY_BITS, help="bits per pool")
    parser.add_argument("--tick", type=float, default=1.0, help="s between relays' worth of key")
    parser.add_argument("--runs", type=int, default=7, help="runs per case")
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the short link's failed relays, by design
    rows = []
    for priorities in ({C: 5.0, D: 1.0}, {C: 1.0, D: 1.0}):
        for run in range(args.runs):
            with tempfile.TemporaryDirectory() as tmp:
                row = trio.run(
                    _case,
                    Path(tmp),
                    priorities,
                    args.target,
                    args.tick,
                    clock=trio.testing.MockClock(autojump_threshold=0),
                )
            rows.append({**row, "run": run})
    ideal = args.target / KEY_BITS * args.tick
    print(
        f"target {args.target} bits per pool, one {KEY_BITS}-bit relay's worth of A~B key every "
        f"{args.tick:g} s (simulated); {args.runs} runs; one pool alone could be full after {ideal:g} s"
    )
    print(
        f"{'priorities (A~C, A~D)':<24}{'A~C full at: median (min-max)':>32}{'A~D full at: median (min-max)':>32}{'failed relays':>15}"
    )
    summary = []
    for high, low in ((5.0, 1.0), (1.0, 1.0)):
        case = [r for r in rows if (r["priority_high_pool"], r["priority_low_pool"]) == (high, low)]
        cells = []
        entry: dict[str, Any] = {"priority_high_pool": high, "priority_low_pool": low}
        for key in ("high_pool_s", "low_pool_s"):
            times = [r[key] for r in case if r[key] is not None]
            never = len(case) - len(times)
            if times:
                cells.append(
                    f"{statistics.median(times):.1f} s ({min(times):.1f}-{max(times):.1f})"
                    + (f", {never} never" if never else "")
                )
                entry[key] = {
                    "median": statistics.median(times),
                    "min": min(times),
                    "max": max(times),
                    "never": never,
                }
            else:
                cells.append("never")
                entry[key] = None
        entry["relays_failed_median"] = statistics.median(r["relays_failed"] for r in case)
        summary.append(entry)
        failed = f"{entry['relays_failed_median']:g}"
        print(f"{high:g}, {low:g}{'':<18}{cells[0]:>32}{cells[1]:>32}{failed:>15}")
    write(
        "profiles_priority",
        rows,
        summary=summary,
        target_bits=args.target,
        tick_s=args.tick,
        key_bits=KEY_BITS,
    )


if __name__ == "__main__":
    main()
