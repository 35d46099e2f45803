"""The size of the performance history: a node of the 17-node backbone sampled every 10 s
for a simulated week, through the real ``PerfAgent`` and ``PerfHistory``.

The node is fed fake readings shaped like a kreonet17 node with the most resources: 3 QKD
links, 2 end-to-end pools, 2 SAEs (one with errors by two statuses), relay counters, and
its own CPU, memory, fds and store size.  The clock is a counter (no sleeping): each look
is one sample interval later.  Printed and written to
``benchmarks/results/perf_history_size.json``: series per node, rows per tier, the file's
size after one day and after seven, and the 17-node figure (17 files of that size: every
node keeps its own history).

Run: ``python benchmarks/perf_history_size.py`` (about a minute; ``--days 1`` is quicker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import random
import sqlite3
import tempfile
import time
from pathlib import Path

import trio

from qkmsd.config import PerfSection
from qkmsd.perf import PerfAgent, PerfSources

RESULTS = Path(__file__).parent / "results" / "perf_history_size.json"
NODES = 17


@dataclasses.dataclass
class Link:
    link_id: str
    e2e: bool
    driver_state: str = "up"
    qber: float | None = 0.02
    ready_bits: int = 0
    discarded_blocks: int = 0
    bits_in: int = 0


@dataclasses.dataclass
class Sae:
    requests: int = 0
    keys: int = 0
    bits: int = 0
    errors: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Relay:
    relays_confirmed: int = 0
    relays_failed: int = 0
    bits_relayed: int = 0
    link_bits_spent: int = 0


class FakeNode:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.links = [Link(f"KME_01~KME_0{i}", False) for i in (2, 3, 4)]
        self.links += [Link(f"KME_01~KME_1{i}", True, qber=None) for i in (5, 6)]
        self.saes = {"SAE_01": Sae(errors={503: 0, 429: 0}), "SAE_01b": Sae()}
        self.relay = Relay()

    def step(self) -> None:
        r = self.rng
        for link in self.links:
            link.bits_in += r.randrange(20_000, 60_000)
            link.ready_bits = r.randrange(0, 1 << 22)
            if link.qber is not None:
                link.qber = r.uniform(0.01, 0.05)
        for sae in self.saes.values():
            sae.requests += r.randrange(100)
            sae.keys += r.randrange(200)
            sae.bits += 256 * r.randrange(200)
            for status in sae.errors:
                sae.errors[status] += r.randrange(3)
        self.relay.relays_confirmed += r.randrange(50)
        self.relay.bits_relayed += 256 * r.randrange(50)
        self.relay.link_bits_spent += 512 * r.randrange(50)

    async def read_links(self) -> list[Link]:
        return list(self.links)


def file_bytes(path: Path) -> int:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*"))


async def run(days: float, interval: float) -> dict[str, object]:
    now = [1_800_000_000.0]
    settings = PerfSection(interval_s=interval)
    node = FakeNode(random.Random(7))
    out: dict[str, object] = {"interval_s": interval, "days": days}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "perf.sqlite"
        agent = PerfAgent(
            settings=settings,
            sources=PerfSources(
                links=node.read_links,
                saes=lambda: node.saes,
                relay=lambda: node.relay,
                store_files=[path],
            ),
            history_path=path,
            clock=lambda: now[0],
            monotonic=lambda: now[0],
        )
        agent.open()
        looks = int(days * 86400 / interval)
        began = time.perf_counter()
        sizes: dict[str, int] = {}
        series = 0
        for i in range(1, looks + 1):
            node.step()
            samples = await agent.look()
            series = max(series, len(samples))
            now[0] += interval
            if i * interval % 86400 == 0:
                sizes[f"day_{int(i * interval // 86400)}"] = file_bytes(path)
        elapsed = time.perf_counter() - began
        assert agent._history is not None
        out.update(
            series_per_node=series,
            looks=looks,
            rows_per_tier=agent._history.rows(),
            file_bytes_by_day=sizes,
            file_bytes=file_bytes(path),
            ms_per_look=round(1000 * elapsed / looks, 3),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--interval-s", type=float, default=10.0)
    args = parser.parse_args()
    result = trio.run(run, args.days, args.interval_s)
    size = int(result["file_bytes"])  # type: ignore[call-overload]
    result["network_bytes"] = NODES * size
    mib = 1 << 20
    print(f"series per node: {result['series_per_node']}, looks: {result['looks']}")
    print(f"rows per tier (raw, 5 min, 1 h): {result['rows_per_tier']}")
    for day, b in result["file_bytes_by_day"].items():  # type: ignore[attr-defined]
        print(f"  after {day}: {b / mib:.2f} MiB")
    print(f"one node after {args.days:g} days: {size / mib:.2f} MiB")
    print(f"{NODES} nodes: {NODES * size / mib:.1f} MiB")
    print(f"{result['ms_per_look']} ms per look (sampling + history write)")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
