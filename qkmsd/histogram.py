"""A latency histogram with fixed buckets, for Prometheus export (``qkms_*_seconds``).

Our own rather than ``prometheus_client.Histogram``: the node keeps no global metric
registry (each agent owns its counts and ``qkmsd/metrics.py`` reads them at scrape time),
so a histogram is one more count an agent owns.  Observing is a bisect and two adds.
"""

from __future__ import annotations

import bisect

import msgspec

LATENCY_BUCKETS_S: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
"""Upper bounds in seconds; the last bucket (+Inf) is implied."""


class HistogramSnapshot(msgspec.Struct, frozen=True):
    buckets: list[float]
    """Upper bounds, ascending (+Inf implied)."""
    counts: list[int]
    """Observations per bucket (not cumulative), one more than ``buckets``: the last is
    above every bound."""
    sum: float
    count: int


class Histogram:
    def __init__(self, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        if list(buckets) != sorted(set(buckets)):
            raise ValueError("bucket bounds must be distinct and ascending")
        self._bounds = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum = 0.0

    def observe(self, value: float) -> None:
        # A value equal to a bound belongs to that bucket (Prometheus' "le").
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> HistogramSnapshot:
        return HistogramSnapshot(
            list(self._bounds), list(self._counts), round(self._sum, 6), sum(self._counts)
        )
