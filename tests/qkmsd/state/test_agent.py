"""The state agent over fake agents' readings, on trio's autojump clock."""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path

import msgspec
import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from qkmsd.admin import AdminParamsError
from qkmsd.config import AlarmsSection
from qkmsd.state import AlarmHistory, EventKind, Sources, StateAgent
from qkmsd.state._agent import PAST_GRACE_S, STARTUP_GRACE_S

LINK = "KME_A~KME_B"


@dataclasses.dataclass
class FakeLink:
    link_id: str = LINK
    driver_state: str = "up"
    driver_detail: str = ""
    qber: float | None = 0.02
    ready_bits: int = 1 << 20
    owned_ready_bits: int = 1 << 19
    discarded_blocks: int = 0
    e2e: bool = False
    bits_in: int = 0


@dataclasses.dataclass
class FakePeer:
    node_id: str = "KME_B"
    state: str = "connected"
    refused: int = 0
    clock_offset_s: float | None = None


@dataclasses.dataclass
class FakeNode:
    """The readings the other agents would give, and the key manager's holds."""

    link: FakeLink = dataclasses.field(default_factory=FakeLink)
    peer: FakePeer = dataclasses.field(default_factory=FakePeer)
    refused: int = 0
    relay_failed: int = 0
    store_fails: bool = False
    holds: list[tuple[str, str, bool]] = dataclasses.field(default_factory=list)
    rate_bps: float = 0.0
    """The link's driver stores this many bits a second (``bits_in`` rises so)."""
    _read_at: float | None = None
    controller: str | None = "KME_B"

    async def links(self) -> list[FakeLink]:
        now = trio.current_time()
        if self._read_at is not None:
            self.link.bits_in += int(self.rate_bps * (now - self._read_at))
        self._read_at = now
        return [dataclasses.replace(self.link)]

    async def probe(self) -> None:
        if self.store_fails:
            raise OSError("disk I/O error")

    def sources(self, **extra: object) -> Sources:
        return Sources(
            links=self.links,
            peers=lambda: [dataclasses.replace(self.peer)],
            refused=lambda: self.refused,
            relay_failures=lambda: self.relay_failed,
            store_probe=self.probe,
            hold_link=lambda link, code: self.holds.append((link, code, True)),
            release_link=lambda link, code: self.holds.append((link, code, False)),
            **extra,  # type: ignore[arg-type]
        )


SETTINGS = AlarmsSection(interval_s=5.0, hold_down_s=60.0, disk_free_min_mib=0)


def agent(node: FakeNode, history: Path | None = None, **settings: object) -> StateAgent:
    s = msgspec.structs.replace(SETTINGS, **settings)
    return StateAgent(
        settings=s, sources=node.sources(), history_path=history, clock=trio.current_time
    )


def kinds(agent: StateAgent, code: str) -> list[str]:
    return [f"{a.code}:{a.severity}" for a in agent.alarms() if a.code == code]


async def test_a_high_qber_raises_once_holds_the_link_and_clears_after_the_hold_down(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    node = FakeNode()
    state = agent(node, tmp_path / "alarms.sqlite")
    await nursery.start(state.run)
    await trio.sleep(12)
    assert state.alarms() == []
    node.link.qber = 0.2
    await trio.sleep(30)  # six looks above the threshold: one raise
    [alarm] = state.alarms()
    assert (alarm.code, alarm.resource, alarm.severity, alarm.value) == (
        "qber-high", LINK, "major", 0.2
    )  # fmt: skip
    assert node.holds == [(LINK, "qber-high", True)]
    node.link.qber = 0.03
    await trio.sleep(55)
    assert kinds(state, "qber-high") == ["qber-high:major"]
    await trio.sleep(10)
    assert state.alarms() == []
    assert node.holds == [(LINK, "qber-high", True), (LINK, "qber-high", False)]
    history = [(e.kind, e.code) for e in await state.history()]
    assert history == [("cleared", "qber-high"), ("raised", "qber-high")]
    assert state.statistics().raised == 1 and state.statistics().cleared == 1


async def test_a_flapping_qber_gives_one_raise_not_a_storm(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode()
    state = agent(node)
    await nursery.start(state.run)
    for _ in range(20):
        node.link.qber = 0.2 if node.link.qber == 0.02 else 0.02
        await trio.sleep(5)
    assert state.statistics().raised == 1 and state.statistics().cleared == 0


async def test_an_operator_clears_a_latched_qber_alarm_and_the_link_is_released(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(link=FakeLink(qber=0.3))
    state = agent(node, qber_clear="operator")
    await nursery.start(state.run)
    await trio.sleep(6)
    node.link.qber = 0.01
    await trio.sleep(600)
    assert kinds(state, "qber-high") == ["qber-high:major"]
    methods = state.admin_methods()
    assert await methods["alarm_ack"]({"code": "qber-high", "resource": LINK}) == {
        "acknowledged": True
    }
    assert await methods["alarm_clear"]({"code": "qber-high", "resource": LINK}) == {
        "cleared": True
    }
    assert state.alarms() == []
    assert node.holds[-1] == (LINK, "qber-high", False)


async def test_history_survives_reopening_and_active_alarms_are_restored(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    path = tmp_path / "alarms.sqlite"
    node = FakeNode(link=FakeLink(qber=0.3))
    with trio.move_on_after(11):
        await agent(node, path).run()
    node2 = FakeNode(link=FakeLink(qber=0.3))
    state = agent(node2, path)
    await state.start()
    [alarm] = state.alarms()
    assert (alarm.code, alarm.resource) == ("qber-high", LINK)
    assert node2.holds == [(LINK, "qber-high", True)]  # the link stays held across the restart
    assert await state.look() == []  # still the same alarm, not a new raise
    assert [e.kind for e in await state.history()] == ["raised"]


def test_history_is_bounded_by_count_and_age(tmp_path: Path) -> None:
    from qkmsd.state import AlarmTable, Rule, Severity

    history = AlarmHistory.open(tmp_path / "a.sqlite", max_age_s=100.0, max_rows=10)
    table = AlarmTable({"c": Rule(((0.0, Severity.MINOR),))}, hold_down_s=0.0)
    for i in range(30):
        history.record(table.observe("c", "r", float(i % 2), now=float(i)))
    assert history.count() == 10
    history.record(table.observe("c", "r", 0.0, now=1000.0))
    assert history.count() == 1
    history.close()


async def test_peer_down_raises_once_the_peer_is_down_longer_than_its_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode(peer=FakePeer(state="connecting"))
    state = agent(node)
    assert await state.look() == []
    await trio.sleep(5)
    [event] = await state.look()
    assert (event.kind, event.code, event.resource, event.value) == (
        EventKind.RAISED, "peer-down", "KME_B", 5.0
    )  # fmt: skip


async def test_link_down_a_refused_peer_and_discarded_blocks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    state = agent(node)
    await state.look()
    node.link.driver_state = "down"
    node.peer.refused = 3
    node.link.discarded_blocks = 7
    events = await state.look()
    assert {(e.kind, e.code, e.value) for e in events} == {
        (EventKind.FAULT, "peer-refused", 3.0),
        (EventKind.FAULT, "blocks-discarded", 7.0),
    }
    await trio.sleep(5)
    [event] = await state.look()
    assert (event.code, event.kind) == ("link-down", EventKind.RAISED)


async def test_an_empty_pool_with_refused_requests_raises_pool_empty(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode(link=FakeLink(ready_bits=0, owned_ready_bits=0))
    state = agent(node)
    assert [e.code for e in await state.look()] == ["pool-low"]
    node.refused = 4
    [event] = await state.look()
    assert (event.code, event.value, event.severity) == ("pool-empty", 4.0, 4)


async def test_relay_failures_above_the_rate_store_errors(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    state = agent(node, relay_failures_per_min=2.0)
    await state.look()
    node.relay_failed = 3
    node.store_fails = True
    events = await state.look()
    assert {(e.code, e.value) for e in events} == {("relay-failures", 3.0), ("store-error", 1.0)}


async def test_action_none_turns_a_code_off(autojump_clock: trio.testing.MockClock) -> None:
    node = FakeNode(link=FakeLink(ready_bits=0))
    state = agent(node, actions={"pool-low": "none"})
    assert await state.look() == []


def _certificate(path: Path, days: float) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "KME_A")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.mark.parametrize(("days", "severity"), [(400, None), (10, "warning"), (-1, "critical")])
async def test_a_certificate_near_its_expiry_raises(
    tmp_path: Path, days: float, severity: str | None
) -> None:
    node = FakeNode()
    sources = node.sources(certificates={"cert:node": _certificate(tmp_path / "n.pem", days)})
    state = StateAgent(settings=SETTINGS, sources=sources, history_path=None)
    await state.start()
    await state.look()
    assert [a.severity for a in state.alarms() if a.code == "cert-expiring"] == (
        [severity] if severity else []
    )


async def test_acking_an_alarm_that_is_not_active_names_the_active_ones() -> None:
    state = agent(FakeNode())
    with pytest.raises(AdminParamsError, match=r"no active alarm peer-down on 'KME_C' \(active"):
        await state.admin_methods()["alarm_ack"]({"code": "peer-down", "resource": "KME_C"})
    with pytest.raises(AdminParamsError, match="alarm_clear: "):
        await state.admin_methods()["alarm_clear"]({"code": "peer-down"})
    assert await state.admin_methods()["alarms"]({}) == {"active": [], "history": []}


async def test_a_key_rate_below_its_minimum_over_a_whole_period_raises_key_rate_low(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(rate_bps=2000.0)
    state = agent(node, key_rate_min_bps=1000.0, key_rate_period_s=60.0, hold_down_s=20.0)
    await nursery.start(state.run)
    await trio.sleep(120)
    assert kinds(state, "key-rate-low") == []
    node.rate_bps = 400.0
    await trio.sleep(30)  # half a period slow: the average is still above the minimum
    assert kinds(state, "key-rate-low") == []
    await trio.sleep(40)
    [alarm] = [a for a in state.alarms() if a.code == "key-rate-low"]
    assert alarm.resource == LINK and alarm.severity == "minor"
    assert alarm.value is not None and 400.0 <= alarm.value < 1000.0
    node.rate_bps = 3000.0
    await trio.sleep(120)
    assert kinds(state, "key-rate-low") == []


async def test_key_rate_low_is_off_while_its_minimum_is_zero(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(rate_bps=0.0)
    state = agent(node, key_rate_period_s=60.0)
    await nursery.start(state.run)
    await trio.sleep(300)
    assert kinds(state, "key-rate-low") == []


async def test_a_node_that_knows_no_controller_for_long_enough_raises_controller_lost(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode()
    s = msgspec.structs.replace(SETTINGS, controller_lost_s=10.0, hold_down_s=5.0)
    state = StateAgent(
        settings=s,
        sources=node.sources(controller=lambda: node.controller),
        history_path=None,
        clock=trio.current_time,
    )
    await nursery.start(state.run)
    await trio.sleep(32)  # between two looks: no tie with a look at the same instant
    assert kinds(state, "controller-lost") == []
    node.controller = None
    await trio.sleep(10)  # known none for up to 10 s: not yet
    assert kinds(state, "controller-lost") == []
    await trio.sleep(10)
    assert kinds(state, "controller-lost") == ["controller-lost:major"]
    node.controller = "KME_C"
    await trio.sleep(15)
    assert kinds(state, "controller-lost") == []


async def test_a_closed_session_raises_peer_down_after_the_grace_not_at_the_next_look(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode()
    state = agent(node, interval_s=5.0, down_grace_s=0.5)
    await nursery.start(state.run)
    await trio.sleep(5.2)  # just after a look
    node.peer.state = "connecting"
    closed_at = trio.current_time()
    await state.peer_down("KME_B")
    while not kinds(state, "peer-down"):  # noqa: ASYNC110 (the virtual clock, 50 ms steps)
        await trio.sleep(0.05)
    assert closed_at + 0.5 <= trio.current_time() < closed_at + 1.0  # not the look at 10.0
    await state.peer_up("KME_B")
    node.peer.state = "connected"


async def test_a_session_that_comes_straight_back_raises_nothing(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode()
    state = agent(node, interval_s=5.0, down_grace_s=0.5)
    await nursery.start(state.run)
    await trio.sleep(1)
    await state.peer_down("KME_B")
    await state.peer_up("KME_B")  # the peer's state stays "connected" at every look
    await trio.sleep(20)
    assert kinds(state, "peer-down") == []


async def test_a_driver_seen_down_brings_a_look_forward(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode()
    state = agent(node, interval_s=1.0, down_grace_s=0.5)
    await nursery.start(state.run)
    await trio.sleep(0.1)
    node.link.driver_state = "down"
    stopped_at = trio.current_time()
    while not kinds(state, "link-down"):  # noqa: ASYNC110 (the virtual clock, 50 ms steps)
        await trio.sleep(0.05)
    # Seen at the next look (within 1 s), raised at the look brought forward 0.5 s later.
    assert trio.current_time() - stopped_at < 1.0 + 0.5 + 0.1


async def test_history_since_a_time_leaves_older_events_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    node = FakeNode(link=FakeLink(qber=0.3))
    state = agent(node, tmp_path / "alarms.sqlite", hold_down_s=10.0)
    await nursery.start(state.run)
    await trio.sleep(10)
    node.link.qber = 0.01
    await trio.sleep(30)
    everything = await state.history()
    assert [e.kind for e in everything] == ["cleared", "raised"]
    cleared_at = everything[0].at
    answer = await state.admin_methods()["alarms"]({"since": cleared_at})
    assert [e["kind"] for e in answer["history"]] == ["cleared"]


async def test_stop_driver_stops_the_link_s_driver_while_a_high_qber_alarm_is_active(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(link=FakeLink(qber=0.3))
    calls: list[tuple[str, str, str]] = []
    settings = msgspec.structs.replace(
        SETTINGS, actions={"qber-high": "stop-driver"}, qber_clear="operator"
    )
    state = StateAgent(
        settings=settings,
        sources=node.sources(
            stop_driver=lambda link, code: calls.append(("stop", link, code)),
            start_driver=lambda link, code: calls.append(("start", link, code)),
        ),
        history_path=None,
        clock=trio.current_time,
    )
    await nursery.start(state.run)
    await trio.sleep(6)
    assert calls == [("stop", LINK, "qber-high")]
    assert node.holds == []  # stop-driver, not stop-link
    await state.admin_methods()["alarm_clear"]({"code": "qber-high", "resource": LINK})
    assert calls[-1] == ("start", LINK, "qber-high")


def test_stop_driver_is_refused_for_codes_that_could_never_clear() -> None:
    from qkmsd.disruptions import CODES, Action

    assert Action.STOP_DRIVER in CODES["qber-high"].actions
    assert Action.STOP_DRIVER not in CODES["link-down"].actions
    assert Action.STOP_DRIVER not in CODES["peer-down"].actions


async def test_route_down_routes_relays_around_a_link_while_its_alarm_is_active(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode(link=FakeLink(qber=0.3))
    calls: list[tuple[str, str, str]] = []
    settings = msgspec.structs.replace(
        SETTINGS, actions={"qber-high": "route-down"}, hold_down_s=10
    )
    state = StateAgent(
        settings=settings,
        sources=node.sources(
            route_down=lambda link, code: calls.append(("down", link, code)),
            route_up=lambda link, code: calls.append(("up", link, code)),
        ),
        history_path=None,
        clock=trio.current_time,
    )
    await nursery.start(state.run)
    await trio.sleep(6)
    assert calls == [("down", LINK, "qber-high")] and node.holds == []
    node.link.qber = 0.01
    await trio.sleep(30)
    assert calls == [("down", LINK, "qber-high"), ("up", LINK, "qber-high")]


async def test_a_peer_whose_clock_is_off_by_more_than_the_bound_raises_clock_skew(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    state = agent(node, clock_skew_max_s=1.0)
    node.peer.clock_offset_s = -0.4
    assert await state.look() == []
    node.peer.clock_offset_s = -2.5
    [event] = await state.look()
    assert (event.kind, event.code, event.resource, event.value) == (
        EventKind.RAISED, "clock-skew", "KME_B", 2.5
    )  # fmt: skip


async def test_a_poked_agent_raises_peer_down_a_prompt_look_after_the_peer_goes(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    node = FakeNode()
    state = agent(node, interval_s=30.0)
    await nursery.start(state.run)
    await trio.sleep(31)  # one ordinary look: all well
    node.peer = FakePeer(state="disconnected")
    await state.poke_peer("KME_B")
    # The poke's look sees it gone, the one just past the grace raises: not 30 s later.
    grace = SETTINGS.down_grace_s
    await trio.sleep(grace)
    assert kinds(state, "peer-down") == []
    await trio.sleep(PAST_GRACE_S + 0.05)
    assert kinds(state, "peer-down") == ["peer-down:major"]


async def test_an_ack_records_who_acknowledged_in_the_history(
    autojump_clock: trio.testing.MockClock, tmp_path: Path
) -> None:
    node = FakeNode(peer=FakePeer(state="connecting"))
    state = agent(node, tmp_path / "alarms.sqlite")
    await state.start()
    await trio.sleep(STARTUP_GRACE_S)
    await state.look()
    await trio.sleep(5)
    await state.look()
    ack = state.admin_methods()["alarm_ack"]
    await ack({"code": "peer-down", "resource": "KME_B", "by": "dashboard alice (ab12)"})
    [latest, *_] = await state.history()
    assert (latest.kind, latest.by) == ("acknowledged", "dashboard alice (ab12)")


async def test_a_peer_not_yet_connected_after_a_start_is_alarmed_only_after_the_startup_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode(peer=FakePeer(state="connecting"))
    state = agent(node, interval_s=1.0)
    await state.start()
    while trio.current_time() < STARTUP_GRACE_S - 1:
        assert await state.look() == []
        await trio.sleep(1)
    await trio.sleep(1.5)
    [event] = await state.look()
    assert (event.code, event.resource) == ("peer-down", "KME_B")


async def test_a_peer_lost_soon_after_a_start_is_alarmed_without_the_startup_grace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    state = agent(node, interval_s=1.0)
    await state.start()
    assert await state.look() == []  # reached
    node.peer = FakePeer(state="disconnected")
    await trio.sleep(1)
    assert await state.look() == []  # one look of grace
    await trio.sleep(1)
    [event] = await state.look()
    assert (event.code, event.resource) == ("peer-down", "KME_B")
    assert trio.current_time() < STARTUP_GRACE_S


def test_events_after_a_row_come_oldest_first_and_the_newest_without_one(tmp_path: Path) -> None:
    """What a node reports to the controller: the newest first time, then what came since."""
    from qkmsd.state import AlarmTable, Rule, Severity

    history = AlarmHistory.open(tmp_path / "a.sqlite", max_age_s=1e9, max_rows=100)
    table = AlarmTable({"c": Rule(((0.0, Severity.MINOR),))}, hold_down_s=0.0)
    for i in range(6):  # raised, cleared, raised, ...
        history.record(table.observe("c", "r", float((i + 1) % 2), now=float(i)))
    newest = history.after(None, 2)
    assert [e.at for _, e in newest] == [4.0, 5.0]
    after = history.after(newest[0][0], 10)
    assert [e.at for _, e in after] == [5.0]
    assert [e.at for _, e in history.after(0, 3)] == [0.0, 1.0, 2.0]
    history.close()
