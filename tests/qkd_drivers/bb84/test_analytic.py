"""The analytic model reproduces the literature (deterministic numbers, 1 % tolerance)."""

import math

import pytest

from qkd_drivers.bb84 import GYS, LIM2014, max_distance, optimised_rate, plob_bound, plob_bound_at


@pytest.mark.parametrize(
    ("distance_km", "rate"), [(0, 2.56e-3), (25, 7.54e-4), (50, 2.23e-4), (100, 1.72e-5)]
)
def test_infinite_decoy_rate_matches_ma_qi_zhao_lo_gys(distance_km: float, rate: float) -> None:
    assert optimised_rate(GYS, distance_km) == pytest.approx(rate, rel=0.01)


def test_infinite_decoy_maximum_distance_is_about_142_km() -> None:
    assert max_distance(GYS) == pytest.approx(142.0, rel=0.01)


def test_vacuum_plus_weak_decoy_maximum_distance_is_about_139_5_km() -> None:
    assert max_distance(GYS.replace(nu=0.1), decoys="vw") == pytest.approx(139.5, rel=0.01)


def test_no_key_beyond_the_maximum_distance() -> None:
    assert optimised_rate(GYS, max_distance(GYS) + 1.0) == 0.0


def test_plob_bound_is_minus_log2_one_minus_eta() -> None:
    assert plob_bound(0.5) == pytest.approx(1.0)
    assert plob_bound(1e-3) == pytest.approx(-math.log2(1 - 1e-3))
    assert plob_bound_at(LIM2014, 50.0) == pytest.approx(-math.log2(1 - 0.1))


def test_decoy_rates_stay_below_plob() -> None:
    for d in (10.0, 50.0, 100.0):
        assert optimised_rate(LIM2014, d) < plob_bound_at(LIM2014, d)
