"""The shared token bucket, with explicit times (no clock, no sleeping)."""

import math

import pytest

from qkmsd.tokenbucket import TokenBucket


def test_budget_bucket_starts_empty_and_fills_at_its_rate() -> None:
    bucket = TokenBucket(1000.0, 10.0, full=False, burst_s=2.0)
    assert bucket.wait(500, 10.0) == pytest.approx(0.5)
    assert bucket.wait(500, 10.5) == 0.0
    bucket.take(500)
    assert bucket.wait(500, 10.5) == pytest.approx(0.5)


def test_budget_bucket_holds_burst_seconds_but_at_least_the_draw() -> None:
    bucket = TokenBucket(1000.0, 0.0, full=False, burst_s=2.0)
    assert bucket.has(500, 100.0)  # a long idle earns two seconds' worth, no more
    assert bucket.tokens == pytest.approx(2000.0)
    assert bucket.overflowed == pytest.approx(98_000.0)  # the rest is counted as lost
    bucket.take(2000)
    assert not bucket.has(500, 100.4)
    # A draw above the burst is not refused for ever: the bucket fills up to it.
    big = TokenBucket(1000.0, 0.0, full=False, burst_s=2.0)
    assert big.wait(4096, 0.0) == pytest.approx(4.096)
    assert big.has(4096, 4.096)


def test_neighbour_budget_starts_full() -> None:
    bucket = TokenBucket(1000.0, 5.0, full=True, burst_s=2.0)
    assert bucket.has(2000, 5.0)
    bucket.take(2000)
    assert not bucket.has(1, 5.0)


def test_rate_change_keeps_tokens_earned_at_the_old_rate() -> None:
    bucket = TokenBucket(1000.0, 0.0, full=False, burst_s=10.0)
    bucket.set_rate(100.0, 1.0)  # 1000 earned at the old rate
    assert bucket.tokens == pytest.approx(1000.0)
    assert bucket.wait(1100, 1.0) == pytest.approx(1.0)  # the rest at the new rate


def test_fixed_depth_caps_tokens_whatever_the_time() -> None:
    bucket = TokenBucket(2.0, 0.0, full=True, depth=5)
    for _ in range(5):
        assert bucket.wait(1, 0.0) == 0.0
        bucket.take(1)
    assert bucket.wait(1, 0.0) == pytest.approx(0.5)
    assert bucket.has(5, 1000.0) and not bucket.has(6, 1000.0)


def test_zero_rate_waits_for_ever_and_refund_is_kept() -> None:
    bucket = TokenBucket(0.0, 0.0, full=False, burst_s=2.0)
    assert bucket.wait(1, 50.0) == math.inf
    bucket.give(1)
    assert bucket.wait(1, 50.0) == 0.0


def test_time_going_back_adds_nothing() -> None:
    bucket = TokenBucket(1000.0, 10.0, full=False, burst_s=2.0)
    assert not bucket.has(1, 9.0)
    assert bucket.tokens == 0.0
    assert bucket.has(1000, 11.0)


def test_rounding_error_does_not_make_a_draw_wait() -> None:
    bucket = TokenBucket(3.0, 0.0, full=False, burst_s=10.0)
    assert bucket.wait(1.0, 1 / 3 - 1e-12) == 0.0


def test_depth_and_burst_s_are_exclusive() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        TokenBucket(1.0, 0.0, full=True)
    with pytest.raises(ValueError, match="exactly one"):
        TokenBucket(1.0, 0.0, full=True, depth=1, burst_s=1.0)


def test_a_rate_change_never_cuts_a_small_budget_below_one_draw() -> None:
    """A pool at 1,000 bit/s saves up for a 4,096-bit relay over 4 s; the controller pushes
    a slightly different rate every report: what was saved stays (two seconds' worth of
    rate would be 2,000 bits, not a relay)."""
    bucket = TokenBucket(1000.0, 0.0, full=False, burst_s=2.0, draw=4096)
    for second in range(1, 4):
        bucket.set_rate(1000.0 + second, float(second))
    assert bucket.tokens == pytest.approx(3003.0)
    assert bucket.overflowed == 0.0
    assert bucket.wait(4096, 4.1) == 0.0
