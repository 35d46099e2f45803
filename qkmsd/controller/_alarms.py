"""The network's alarm history, kept by the controller from the alarm events in the nodes'
reports (``ctl.report`` ``alarms``), bounded by age and by count.

Soft state like the topology: in memory only.  A node sends, when it starts reporting to a
controller (a new one, or the same one restarted), the newest events of its own history
(up to ``MAX_ALARMS_PER_REPORT`` per report), then every new event; an event is sent again
until a report carrying it is acknowledged.  So a restarted or newly elected controller
rebuilds the recent history of every node that reports to it within a report period or
two, and events are never counted twice: an event is known by its node, time, kind, code
and resource.  What a node's own history dropped (``[alarms] history_max``) or what is
older than what the node resends is not rebuilt.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Sequence
from typing import Any

from protocol import CtlAlarmEvent

_Key = tuple[str, float, str, str, str]


class NetworkAlarms:
    """Alarm events of every node, newest kept.  Not thread-safe (the event loop's)."""

    def __init__(
        self, *, max_age_s: float, max_events: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._max_age = max_age_s
        self._max_events = max_events
        self._clock = clock
        self._events: dict[_Key, CtlAlarmEvent] = {}
        self._oldest_first: list[tuple[float, _Key]] = []
        """A heap of the events' times: pruning takes the oldest in O(log n) each."""
        self.received = 0
        """Events taken (repeats aside) since the controller started."""

    def __len__(self) -> int:
        return len(self._events)

    def add(self, node: str, events: Sequence[CtlAlarmEvent]) -> int:
        """Keep ``node``'s ``events``; returns how many were new."""
        new = 0
        oldest = self._clock() - self._max_age
        for event in events:
            key = (node, event.at, event.kind, event.code, event.resource)
            if event.at < oldest or key in self._events:
                continue
            self._events[key] = event
            heapq.heappush(self._oldest_first, (event.at, key))
            new += 1
        self.received += new
        if new:
            self._prune()
        return new

    def _prune(self) -> None:
        oldest = self._clock() - self._max_age
        heap = self._oldest_first
        while heap and (heap[0][0] < oldest or len(self._events) > self._max_events):
            _, key = heapq.heappop(heap)
            del self._events[key]

    def events(
        self,
        *,
        since: float | None = None,
        node: str | None = None,
        code: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """The newest ``limit`` events (at or after ``since``, of ``node``, of ``code``),
        newest first, each with the node it happened at."""
        self._prune()
        found = [
            (key, event)
            for key, event in self._events.items()
            if (since is None or event.at >= since)
            and (node is None or key[0] == node)
            and (code is None or event.code == code)
        ]
        found.sort(key=lambda item: item[1].at, reverse=True)
        return [
            {
                "node": key[0],
                "kind": e.kind,
                "code": e.code,
                "resource": e.resource,
                "severity": e.severity,
                "previous": e.previous,
                "value": e.value,
                "at": e.at,
                "by": e.by,
            }
            for key, e in found[:limit]
        ]
