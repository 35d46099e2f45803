"""The alarm table: measured values in, alarm life-cycle events out.  Sans-IO.

Theory of operation
-------------------
An alarm is keyed by (code, resource).  Each code has a ``Rule``: thresholds that map a
measured value to an X.733 severity (``CLEARED`` when no threshold is crossed).  The caller
observes every resource it watches at each look, with the time (``observe``); the table
answers with the events that look caused:

* no active alarm and a severity above ``CLEARED``: ``raised``, at once;
* an active alarm and a worse severity: ``changed``, at once;
* an active alarm and a better severity (or ``CLEARED``): the alarm moves down only to the
  worst severity observed during the last ``hold_down_s`` (``changed``, or ``cleared`` when
  that is ``CLEARED``).  So an alarm is cleared only after its condition has been gone for
  a whole hold-down, two raises of one alarm are at least a hold-down apart, and a value
  that flaps across a threshold gives one raise, not a storm.
* a *latched* rule's alarm never moves down by itself: it stays until ``clear`` (an
  operator).  If the condition is still there at the next look it is raised again.

``ack`` marks an active alarm acknowledged (it stays active).  ``fault`` makes a one-off
event that changes no state.  Nothing here does I/O or reads a clock.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping

from ..disruptions import Severity


class EventKind(enum.StrEnum):
    RAISED = "raised"
    CHANGED = "changed"
    ACKNOWLEDGED = "acknowledged"
    CLEARED = "cleared"
    FAULT = "fault"


@dataclasses.dataclass(frozen=True, slots=True)
class AlarmEvent:
    """One step of an alarm's life cycle, or a fault."""

    kind: EventKind
    code: str
    resource: str
    severity: Severity
    """The severity after the event (``CLEARED`` for a clear)."""
    previous: Severity
    value: float | None
    """The measured value that caused the event (None for an operator's ack or clear)."""
    at: float
    by: str = "condition"
    """``condition`` (a measurement) or ``operator`` (an admin call)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Rule:
    """How a code's measured value maps to a severity.

    ``levels`` are ``(threshold, severity)`` pairs from the least to the most severe; with
    ``above`` a value strictly above a threshold crosses it, otherwise strictly below.
    """

    levels: tuple[tuple[float, Severity], ...]
    above: bool = True
    latched: bool = False

    def severity(self, value: float) -> Severity:
        worst = Severity.CLEARED
        for threshold, severity in self.levels:
            crossed = value > threshold if self.above else value < threshold
            if crossed and severity > worst:
                worst = severity
        return worst


@dataclasses.dataclass(slots=True)
class Alarm:
    """An active alarm."""

    code: str
    resource: str
    severity: Severity
    raised_at: float
    changed_at: float
    value: float | None
    """The last value observed."""
    acknowledged_at: float | None = None
    seen: dict[Severity, float] = dataclasses.field(default_factory=dict, repr=False)
    """When each severity above CLEARED was last observed."""


class AlarmTable:
    """Active alarms and their life cycle.  See the module docstring."""

    def __init__(self, rules: Mapping[str, Rule], *, hold_down_s: float) -> None:
        if hold_down_s < 0:
            raise ValueError("hold_down_s must not be negative")
        self._rules = dict(rules)
        self._hold_down = hold_down_s
        self._active: dict[tuple[str, str], Alarm] = {}

    @property
    def hold_down_s(self) -> float:
        return self._hold_down

    def observe(self, code: str, resource: str, value: float, now: float) -> list[AlarmEvent]:
        """The events caused by ``value`` measured on ``resource`` at ``now``.

        Raises ``KeyError`` for a code without a rule.
        """
        rule = self._rules[code]
        severity = rule.severity(value)
        key = (code, resource)
        alarm = self._active.get(key)
        if alarm is None:
            if severity is Severity.CLEARED:
                return []
            alarm = Alarm(code, resource, severity, now, now, value, seen={severity: now})
            self._active[key] = alarm
            return [_event(EventKind.RAISED, alarm, Severity.CLEARED, value, now)]
        alarm.value = value
        if severity is not Severity.CLEARED:
            alarm.seen[severity] = now
        if rule.latched:
            target = max(severity, alarm.severity)
        else:
            recent = [s for s, t in alarm.seen.items() if now - t < self._hold_down]
            target = max([severity, *recent])
        if target == alarm.severity:
            return []
        previous = alarm.severity
        if target is Severity.CLEARED:
            del self._active[key]
            alarm.severity = Severity.CLEARED
            return [_event(EventKind.CLEARED, alarm, previous, value, now)]
        alarm.severity = target
        alarm.changed_at = now
        return [_event(EventKind.CHANGED, alarm, previous, value, now)]

    def ack(
        self, code: str, resource: str, now: float, *, by: str = "operator"
    ) -> list[AlarmEvent]:
        """Acknowledge an active alarm (it stays active).  No event if there is none, or
        it is acknowledged already."""
        alarm = self._active.get((code, resource))
        if alarm is None or alarm.acknowledged_at is not None:
            return []
        alarm.acknowledged_at = now
        return [_event(EventKind.ACKNOWLEDGED, alarm, alarm.severity, None, now, by=by)]

    def clear(
        self, code: str, resource: str, now: float, *, by: str = "operator"
    ) -> list[AlarmEvent]:
        """An operator clears an active alarm.  If its condition is still there, the next
        observation raises it again."""
        alarm = self._active.pop((code, resource), None)
        if alarm is None:
            return []
        previous, alarm.severity = alarm.severity, Severity.CLEARED
        return [_event(EventKind.CLEARED, alarm, previous, None, now, by=by)]

    def fault(
        self, code: str, resource: str, value: float, severity: Severity, now: float
    ) -> AlarmEvent:
        """A one-off event: no state, no life cycle."""
        return AlarmEvent(EventKind.FAULT, code, resource, severity, Severity.CLEARED, value, now)

    def restore(self, alarm: Alarm) -> None:
        """Put back an alarm that was active when the node stopped (from the history).

        It then moves as if its severity had been observed at ``alarm.changed_at``.
        """
        if alarm.severity is Severity.CLEARED:
            return
        alarm.seen = {alarm.severity: alarm.changed_at}
        self._active[(alarm.code, alarm.resource)] = alarm

    def get(self, code: str, resource: str) -> Alarm | None:
        return self._active.get((code, resource))

    def active(self) -> list[Alarm]:
        """Active alarms, worst first, then oldest first."""
        return sorted(self._active.values(), key=lambda a: (-a.severity, a.raised_at))


def _event(
    kind: EventKind,
    alarm: Alarm,
    previous: Severity,
    value: float | None,
    now: float,
    *,
    by: str = "condition",
) -> AlarmEvent:
    return AlarmEvent(kind, alarm.code, alarm.resource, alarm.severity, previous, value, now, by)
