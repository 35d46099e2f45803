"""The latency histogram: a value at a bound counts in that bound's bucket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qkmsd.histogram import Histogram


def test_a_value_at_a_bound_is_in_that_bucket_and_above_all_in_the_last() -> None:
    h = Histogram(buckets=(1.0, 2.0))
    for v in (0.5, 1.0, 1.5, 2.0, 2.5):
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == [2, 2, 1] and snap.count == 5 and snap.sum == 7.5


@given(st.lists(st.floats(min_value=0, max_value=100, allow_nan=False), max_size=50))
def test_every_observation_is_counted_once(values: list[float]) -> None:
    h = Histogram()
    for v in values:
        h.observe(v)
    snap = h.snapshot()
    assert snap.count == len(values) == sum(snap.counts)
    assert snap.sum == pytest.approx(sum(values), abs=1e-5)


def test_bounds_must_ascend() -> None:
    with pytest.raises(ValueError, match="ascending"):
        Histogram(buckets=(2.0, 1.0))
