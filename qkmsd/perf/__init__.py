"""The performance agent: samples, history with downsampling, push to a collector."""

from ._agent import PerfAgent, PerfParams, PerfSources, PerfStatistics
from ._history import PerfHistory, PerfHistoryError, Point, Sample
from ._push import PerfReport, Pusher, PushError

__all__ = [
    "PerfAgent",
    "PerfHistory",
    "PerfHistoryError",
    "PerfParams",
    "PerfReport",
    "PerfSources",
    "PerfStatistics",
    "Point",
    "PushError",
    "Pusher",
    "Sample",
]
