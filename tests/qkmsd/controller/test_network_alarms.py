"""The controller's network alarm history: deduplicated, bounded by age and by count."""

from __future__ import annotations

from protocol import CtlAlarmEvent
from qkmsd.controller import NetworkAlarms

NOW = 1_000_000.0


def event(at: float, kind: str = "raised", code: str = "link-down") -> CtlAlarmEvent:
    return CtlAlarmEvent(
        kind=kind,  # type: ignore[arg-type]
        code=code,
        resource="KME_A~KME_B",
        severity="major" if kind != "cleared" else "cleared",
        previous="cleared" if kind != "cleared" else "major",
        at=at,
        value=1.5,
    )


def test_an_event_sent_again_is_kept_once_and_the_newest_come_first() -> None:
    alarms = NetworkAlarms(max_age_s=3600, max_events=100, clock=lambda: NOW)
    assert alarms.add("KME_A", [event(NOW - 20), event(NOW - 10, "cleared")]) == 2
    assert alarms.add("KME_A", [event(NOW - 10, "cleared")]) == 0  # resent: a new controller
    assert alarms.add("KME_B", [event(NOW - 5, "cleared")]) == 1  # another node's
    got = alarms.events()
    assert [(e["node"], e["kind"]) for e in got] == [
        ("KME_B", "cleared"),
        ("KME_A", "cleared"),
        ("KME_A", "raised"),
    ]
    assert [e["node"] for e in alarms.events(node="KME_B")] == ["KME_B"]
    assert alarms.events(code="qber-high") == []
    assert len(alarms.events(since=NOW - 15)) == 2
    assert len(alarms.events(limit=1)) == 1
    assert alarms.received == 3


def test_the_history_is_bounded_by_age_and_by_count_oldest_first_out() -> None:
    now = [NOW]
    alarms = NetworkAlarms(max_age_s=100, max_events=5, clock=lambda: now[0])
    alarms.add("KME_A", [event(NOW - 200)])  # older than kept: never taken
    assert len(alarms) == 0
    alarms.add("KME_A", [event(NOW - i) for i in range(10)])
    assert len(alarms) == 5
    assert min(e["at"] for e in alarms.events()) == NOW - 4  # the newest five
    now[0] = NOW + 98.5
    assert [e["at"] for e in alarms.events()] == [NOW, NOW - 1]  # the rest aged out
