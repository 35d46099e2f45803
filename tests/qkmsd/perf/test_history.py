"""The performance history: three resolutions, each pruned by its own age."""

from __future__ import annotations

from pathlib import Path

import pytest

from qkmsd.perf import PerfHistory, PerfHistoryError, Sample

HOUR = 3600.0
DAY = 86400.0
T0 = 1_800_000_000.0  # a whole hour, so buckets start at T0


def history(
    tmp_path: Path, keep: tuple[float, float, float] = (HOUR, DAY, 30 * DAY)
) -> PerfHistory:
    return PerfHistory.open(tmp_path / "perf.sqlite", keep_s=keep)


def test_a_bucket_keeps_the_mean_and_extremes_of_the_samples_in_it(tmp_path: Path) -> None:
    h = history(tmp_path)
    for i, value in enumerate([1.0, 5.0, 3.0]):
        h.add([Sample(T0 + 10 * i, "link:A~B", "qber", value)], now=T0 + 10 * i)
    raw = h.series(since=T0, now=T0 + 30, tier=0)["link:A~B"]["qber"]
    assert [p.mean for p in raw] == [1.0, 5.0, 3.0]
    [bucket] = h.series(since=T0, now=T0 + 30, tier=1)["link:A~B"]["qber"]
    assert (bucket.at, bucket.mean, bucket.low, bucket.high, bucket.n) == (T0, 3.0, 1.0, 5.0, 3)


def test_each_tier_is_pruned_by_its_own_age_so_the_file_stays_bounded(tmp_path: Path) -> None:
    h = history(tmp_path, keep=(HOUR, DAY, 7 * DAY))
    step = 300.0
    t = T0
    while t < T0 + 10 * DAY:
        h.add([Sample(t, "node", "rss_bytes", 1.0), Sample(t, "node", "open_fds", 2.0)], now=t)
        t += step
    rows = h.rows()
    # Two metrics: an hour of 5-minute samples, a day of 5-minute buckets, 7 days of hours.
    assert rows[0] <= 2 * (HOUR / step + 1)
    assert rows[1] <= 2 * (DAY / 300 + 1)
    assert rows[2] <= 2 * (7 * 24 + 1)


def test_a_query_takes_the_finest_tier_that_reaches_back_to_its_start(tmp_path: Path) -> None:
    h = history(tmp_path)
    now = T0 + 2 * DAY
    assert h.tier_for(now - 600, now) == 0
    assert h.tier_for(now - 2 * HOUR, now) == 1
    assert h.tier_for(now - 3 * DAY, now) == 2
    assert h.tier_for(now - 300 * DAY, now) == 2


def test_a_query_for_one_resource_leaves_the_others_out(tmp_path: Path) -> None:
    h = history(tmp_path)
    h.add([Sample(T0, "sae:SAE_A", "keys_per_s", 4.0), Sample(T0, "node", "open_fds", 9.0)], now=T0)
    found = h.series(since=T0 - 1, now=T0, resource="sae:SAE_A")
    assert list(found) == ["sae:SAE_A"]


def test_samples_after_a_point_come_oldest_first_and_limited(tmp_path: Path) -> None:
    h = history(tmp_path)
    for i in range(5):
        h.add([Sample(T0 + i, "node", "open_fds", float(i))], now=T0 + i)
    got = h.since(T0 + 1, 2)
    assert [s.value for s in got] == [2.0, 3.0]


def test_an_unopenable_file_is_a_perf_history_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "perf.sqlite").mkdir()
    with pytest.raises(PerfHistoryError, match="perf.sqlite"):
        history(tmp_path)
