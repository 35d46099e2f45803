"""The performance agent over fake agents' readings, on trio's autojump clock."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import trio
import trio.testing

from qkmsd.admin import AdminParamsError
from qkmsd.config import PerfSection
from qkmsd.perf import PerfAgent, PerfSources, PushError, Sample

LINK = "KME_A~KME_B"
E2E = "KME_A~KME_C"


@dataclasses.dataclass
class FakeLink:
    link_id: str = LINK
    e2e: bool = False
    driver_state: str = "up"
    qber: float | None = 0.03
    ready_bits: int = 0
    discarded_blocks: int = 0
    bits_in: int = 0


@dataclasses.dataclass
class FakeSae:
    requests: int = 0
    keys: int = 0
    bits: int = 0
    errors: dict[int, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class FakeRelay:
    relays_confirmed: int = 0
    relays_failed: int = 0
    bits_relayed: int = 0
    link_bits_spent: int = 0


@dataclasses.dataclass
class FakeNode:
    links: list[FakeLink] = dataclasses.field(default_factory=lambda: [FakeLink()])
    saes: dict[str, FakeSae] = dataclasses.field(default_factory=lambda: {"SAE_A": FakeSae()})
    relay: FakeRelay = dataclasses.field(default_factory=FakeRelay)

    async def read_links(self) -> Sequence[FakeLink]:
        return [dataclasses.replace(link) for link in self.links]

    def sources(self) -> PerfSources:
        return PerfSources(links=self.read_links, saes=lambda: self.saes, relay=lambda: self.relay)


SETTINGS = PerfSection(interval_s=10.0)


def make(node: FakeNode, tmp_path: Path | None, **settings: object) -> PerfAgent:
    return PerfAgent(
        settings=msgspec.structs.replace(SETTINGS, **settings),
        sources=node.sources(),
        history_path=None if tmp_path is None else tmp_path / "perf.sqlite",
        clock=trio.current_time,
    )


def values(samples: list[Sample]) -> dict[tuple[str, str], float]:
    return {(s.resource, s.metric): s.value for s in samples}


async def test_counters_become_rates_from_the_second_look_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    agent = make(node, None)
    first = values(await agent.look())
    assert ("link:" + LINK, "key_rate_bps") not in first  # a baseline, not a rate
    assert first[("link:" + LINK, "available")] == 1.0
    await trio.sleep(10)
    node.links[0].bits_in += 40_960
    node.links[0].ready_bits += 30_720  # 10,240 bits left the pool meanwhile
    node.saes["SAE_A"] = FakeSae(requests=20, keys=40, bits=40 * 256, errors={503: 5})
    node.relay = FakeRelay(relays_confirmed=3, bits_relayed=768, link_bits_spent=2304)
    got = values(await agent.look())
    assert got[("link:" + LINK, "key_rate_bps")] == 4096.0
    assert got[("pool:" + LINK, "inflow_bps")] == 4096.0
    assert got[("pool:" + LINK, "outflow_bps")] == 1024.0
    assert got[("pool:" + LINK, "level_bits")] == 30_720.0
    assert got[("sae:SAE_A", "requests_per_s")] == 2.0
    assert got[("sae:SAE_A", "bits_per_s")] == 1024.0
    assert got[("sae:SAE_A", "errors_503")] == 0.5
    assert got[("relay", "bits_per_s")] == 76.8
    assert got[("relay", "confirmed")] == 3.0


async def test_an_end_to_end_pool_has_pool_figures_but_no_link_figures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode(links=[FakeLink(link_id=E2E, e2e=True, qber=None)])
    agent = make(node, None)
    await agent.look()
    await trio.sleep(10)
    resources = {s.resource for s in await agent.look()}
    assert "pool:" + E2E in resources and "link:" + E2E not in resources


async def test_a_counter_that_falls_starts_again_without_a_negative_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    node.saes["SAE_A"].keys = 100
    agent = make(node, None)
    await agent.look()
    await trio.sleep(10)
    node.saes["SAE_A"].keys = 5
    assert ("sae:SAE_A", "keys_per_s") not in values(await agent.look())
    await trio.sleep(10)
    node.saes["SAE_A"].keys = 25
    assert values(await agent.look())[("sae:SAE_A", "keys_per_s")] == 2.0


async def test_the_perf_admin_method_returns_a_resources_series_by_name(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    node = FakeNode()
    agent = make(node, tmp_path)
    await nursery.start(agent.run)
    await trio.sleep(5)  # between looks
    for _ in range(6):
        node.links[0].bits_in += 10_240
        await trio.sleep(10)
    perf = agent.admin_methods()["perf"]
    answer = await perf({"resource": LINK, "since_s": 3600})
    assert list(answer["series"]) == ["link:" + LINK]
    rates = [p["mean"] for p in answer["series"]["link:" + LINK]["key_rate_bps"]]
    assert rates == [1024.0] * 5
    with pytest.raises(AdminParamsError, match="no samples of 'KME_X'"):
        await perf({"resource": "KME_X"})
    with pytest.raises(AdminParamsError, match="perf"):
        await perf({"since_s": -1})


class FakePusher:
    url = "https://collector.invalid/samples"

    def __init__(self) -> None:
        self.batches: list[list[Sample]] = []
        self.fail = False

    async def push(self, samples: Sequence[Sample]) -> None:
        if self.fail:
            raise PushError("connection refused")
        self.batches.append(list(samples))


async def test_samples_not_pushed_while_the_collector_is_down_go_with_the_next_push(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    node = FakeNode()
    pusher = FakePusher()
    agent = PerfAgent(
        settings=msgspec.structs.replace(SETTINGS, report_s=30.0),
        sources=node.sources(),
        history_path=tmp_path / "perf.sqlite",
        pusher=pusher,  # type: ignore[arg-type]
        clock=trio.current_time,
    )
    await nursery.start(agent.run)
    await trio.sleep(45)
    assert len(pusher.batches) == 2
    pusher.fail = True
    await trio.sleep(60)
    assert len(pusher.batches) == 2 and agent.statistics().push_failures == 2
    pusher.fail = False
    await trio.sleep(30)
    stamps = [s.at for batch in pusher.batches for s in batch]
    assert len(stamps) == len(set((s.at, s.resource, s.metric) for b in pusher.batches for s in b))
    looks = sorted(set(stamps))
    assert looks == [10.0 * i for i in range(1, len(looks) + 1)]  # none lost, none twice


@dataclasses.dataclass
class FakePool:
    relays_confirmed: int = 0
    relays_failed: int = 0
    bits_relayed: int = 0
    latency_s_total: float = 0.0
    link_bits_spent: int = 0


async def test_each_relayed_pool_has_its_latency_throughput_and_link_key_spent(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    node = FakeNode()
    pools = {E2E: FakePool()}
    agent = PerfAgent(
        settings=SETTINGS,
        sources=dataclasses.replace(node.sources(), relay_pools=lambda: pools),
        history_path=tmp_path / "perf.sqlite",
        clock=trio.current_time,
    )
    await nursery.start(agent.run)
    await trio.sleep(15)  # the first look takes the baselines
    pools[E2E] = FakePool(
        relays_confirmed=4,
        relays_failed=1,
        bits_relayed=4 * 256,
        latency_s_total=0.2,
        link_bits_spent=4 * (256 + 256),
    )
    got = values(await agent.look())
    res = "relay:" + E2E
    assert got[(res, "confirmed")] == 4.0 and got[(res, "failed")] == 1.0
    assert got[(res, "latency_s")] == pytest.approx(0.05)
    assert got[(res, "bits_per_s")] == pytest.approx(1024 / 5)
    assert got[(res, "link_bits_spent_ps")] == pytest.approx(2048 / 5)
    await trio.sleep(10)
    assert (res, "latency_s") not in values(await agent.look())  # no relay: no latency
    # Kept with the other samples: `qkmsctl perf relay` shows the node's and every pool's.
    answer = await agent.admin_methods()["perf"]({"resource": "relay", "since_s": 3600})
    assert set(answer["series"]) == {"relay", res}
    assert "latency_s" in answer["series"][res]
    one = await agent.admin_methods()["perf"]({"resource": res})
    assert list(one["series"]) == [res]


async def test_the_controller_counts_its_reports_while_it_holds_the_role(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    counts: dict[str, float] | None = None
    agent = PerfAgent(
        settings=SETTINGS,
        sources=dataclasses.replace(node.sources(), controller=lambda: counts),
        history_path=None,
        clock=trio.current_time,
    )
    assert not any(s.resource == "controller" for s in await agent.look())
    counts = {"reports": 10, "reports_refused": 0, "nodes_alive": 3, "alarm_events": 7}
    await agent.look()
    await trio.sleep(10)
    counts = {"reports": 40, "reports_refused": 2, "nodes_alive": 3, "alarm_events": 9}
    got = values(await agent.look())
    assert got[("controller", "reports_per_s")] == 3.0
    assert got[("controller", "reports_refused")] == 2.0
    assert got[("controller", "nodes_alive")] == 3.0
    assert got[("controller", "alarm_events")] == 9.0
    assert ("node", "rss_bytes") in got  # its own CPU and memory are the node's
