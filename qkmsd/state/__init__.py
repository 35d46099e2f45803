"""The state agent: disruption detection, alarms (X.733 life cycle) and faults, history."""

from ..disruptions import CODES, Action, Disruption, Kind, Severity
from ._agent import (
    AlarmView,
    EventView,
    LinkReading,
    PeerReading,
    Sources,
    StateAgent,
    StateStatistics,
)
from ._history import AlarmHistory, AlarmHistoryError
from ._table import Alarm, AlarmEvent, AlarmTable, EventKind, Rule

__all__ = [
    "CODES",
    "Action",
    "Alarm",
    "AlarmEvent",
    "AlarmHistory",
    "AlarmHistoryError",
    "AlarmTable",
    "AlarmView",
    "Disruption",
    "EventKind",
    "EventView",
    "Kind",
    "LinkReading",
    "PeerReading",
    "Rule",
    "Severity",
    "Sources",
    "StateAgent",
    "StateStatistics",
]
