"""The alarm table: life cycle, hold-down, X.733 severities.  Pure, no clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkmsd.state import AlarmTable, EventKind, Rule, Severity

HOLD = 10.0
QBER = Rule(((0.11, Severity.MAJOR),))
CERT = Rule(((30.0, Severity.WARNING), (0.0, Severity.CRITICAL)), above=False)
LATCHED = Rule(((0.11, Severity.MAJOR),), latched=True)


def table() -> AlarmTable:
    return AlarmTable(
        {"qber-high": QBER, "cert-expiring": CERT, "latched": LATCHED}, hold_down_s=HOLD
    )


def test_a_value_above_the_threshold_raises_with_the_value() -> None:
    t = table()
    [event] = t.observe("qber-high", "A~B", 0.2, now=100.0)
    assert (event.kind, event.severity, event.previous, event.value) == (
        EventKind.RAISED,
        Severity.MAJOR,
        Severity.CLEARED,
        0.2,
    )
    assert t.observe("qber-high", "A~B", 0.3, now=101.0) == []


def test_a_value_at_the_threshold_does_not_raise() -> None:
    assert table().observe("qber-high", "A~B", 0.11, now=0.0) == []


def test_the_clear_waits_a_whole_hold_down_after_the_condition_went() -> None:
    t = table()
    t.observe("qber-high", "A~B", 0.2, now=0.0)
    t.observe("qber-high", "A~B", 0.2, now=5.0)
    assert t.observe("qber-high", "A~B", 0.01, now=6.0) == []
    assert t.observe("qber-high", "A~B", 0.01, now=14.9) == []
    [event] = t.observe("qber-high", "A~B", 0.01, now=15.0)
    assert (event.kind, event.severity, event.previous) == (
        EventKind.CLEARED,
        Severity.CLEARED,
        Severity.MAJOR,
    )
    assert t.active() == []


def test_severity_goes_up_at_once_and_down_after_the_hold_down() -> None:
    t = table()
    assert [e.kind for e in t.observe("cert-expiring", "cert:node", 20.0, now=0.0)] == [
        EventKind.RAISED
    ]
    [up] = t.observe("cert-expiring", "cert:node", -1.0, now=1.0)
    assert (up.kind, up.previous, up.severity) == (
        EventKind.CHANGED,
        Severity.WARNING,
        Severity.CRITICAL,
    )
    assert t.observe("cert-expiring", "cert:node", 400.0, now=2.0) == []
    [down] = t.observe("cert-expiring", "cert:node", 400.0, now=11.0)
    assert (down.kind, down.severity) == (EventKind.CLEARED, Severity.CLEARED)


def test_an_acknowledged_alarm_stays_active_until_cleared() -> None:
    t = table()
    t.observe("qber-high", "A~B", 0.2, now=0.0)
    [ack] = t.ack("qber-high", "A~B", now=1.0)
    assert (ack.kind, ack.by, ack.severity) == (EventKind.ACKNOWLEDGED, "operator", Severity.MAJOR)
    assert t.ack("qber-high", "A~B", now=2.0) == []
    [alarm] = t.active()
    assert alarm.acknowledged_at == 1.0
    assert t.ack("qber-high", "other", now=2.0) == []


def test_a_latched_alarm_clears_only_by_hand_and_returns_if_its_condition_stays() -> None:
    t = table()
    t.observe("latched", "A~B", 0.2, now=0.0)
    assert t.observe("latched", "A~B", 0.01, now=1000.0) == []
    [cleared] = t.clear("latched", "A~B", now=1001.0)
    assert (cleared.kind, cleared.by) == (EventKind.CLEARED, "operator")
    assert t.observe("latched", "A~B", 0.01, now=1002.0) == []
    [again] = t.observe("latched", "A~B", 0.3, now=1003.0)
    assert again.kind is EventKind.RAISED


def test_a_fault_changes_no_state() -> None:
    t = table()
    event = t.fault("peer-refused", "KME_B", 3.0, Severity.WARNING, now=5.0)
    assert (event.kind, event.value) == (EventKind.FAULT, 3.0)
    assert t.active() == []


def test_an_unknown_code_is_a_key_error() -> None:
    with pytest.raises(KeyError):
        table().observe("nope", "x", 1.0, now=0.0)


# A run: time steps and QBER values on one resource.
runs = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=3 * HOLD, allow_nan=False),
        st.sampled_from([0.0, 0.05, 0.11, 0.12, 0.5]),
    ),
    max_size=60,
)


def _play(t: AlarmTable, run: list[tuple[float, float]]) -> tuple[list, float]:  # type: ignore[type-arg]
    now, events = 0.0, []
    for step, value in run:
        now += step
        events += [(now, value, e) for e in t.observe("qber-high", "A~B", value, now)]
    return events, now


@settings(max_examples=300)
@given(runs)
def test_no_flapping_raises_are_a_hold_down_apart_and_clears_follow_the_last_crossing(
    run: list[tuple[float, float]],
) -> None:
    t = table()
    now, raises, last_crossing = 0.0, [], None
    for step, value in run:
        now += step
        if value > 0.11:
            last_crossing = now
        for event in t.observe("qber-high", "A~B", value, now):
            if event.kind is EventKind.RAISED:
                raises.append(now)
            if event.kind is EventKind.CLEARED:
                assert last_crossing is not None and now - last_crossing >= HOLD
    assert all(b - a >= HOLD for a, b in zip(raises, raises[1:], strict=False))


@settings(max_examples=300)
@given(runs)
def test_every_raise_is_cleared_once_the_condition_goes(run: list[tuple[float, float]]) -> None:
    t = table()
    events, now = _play(t, run)
    later = now + 2 * HOLD
    events += [(later, 0.0, e) for e in t.observe("qber-high", "A~B", 0.0, later)]
    kinds = [e.kind for _, _, e in events]
    assert kinds.count(EventKind.RAISED) == kinds.count(EventKind.CLEARED)
    # The life cycle alternates: raised, then cleared, then raised again...
    assert kinds == [EventKind.RAISED, EventKind.CLEARED] * (len(kinds) // 2)
    assert t.active() == []


@settings(max_examples=300)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=2 * HOLD, allow_nan=False),
            st.floats(min_value=-10, max_value=60, allow_nan=False),
        ),
        max_size=60,
    )
)
def test_the_severity_is_the_worst_seen_within_the_hold_down(
    run: list[tuple[float, float]],
) -> None:
    t = table()
    now, seen = 0.0, []
    for step, days in run:
        now += step
        events = t.observe("cert-expiring", "cert:ca", days, now)
        seen.append((now, CERT.severity(days)))
        alarm = t.get("cert-expiring", "cert:ca")
        severity = alarm.severity if alarm is not None else Severity.CLEARED
        held = [s for at, s in seen if now - at < HOLD] + [CERT.severity(days)]
        # Raises come at once; drops wait: the alarm's severity is the worst of the
        # hold-down window, or what it was if the window has only better values since.
        assert severity >= CERT.severity(days)
        assert severity <= max(held) or not events
        for event in events:
            assert event.severity in set(Severity)
            assert event.severity != event.previous
