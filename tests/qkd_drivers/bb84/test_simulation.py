"""Source, channel, detectors and eavesdroppers; the two simulation modes agree."""

import math

import numpy as np
import pytest

from qkd_drivers.bb84 import (
    GYS,
    Bb84ParamsError,
    analytic_rate,
    asymptotic_estimate,
    class_probabilities,
    count_classes,
    event_counts,
    outcome_probabilities,
    parse_eve,
    run_block,
    simulate,
)
from qkd_drivers.bb84._simulate import X, Z, _CodeSampler


def rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def sifted_qber(record, intensity: int = 0) -> tuple[float, int]:  # type: ignore[no-untyped-def]
    sel = (record.alice_basis == record.bob_basis) & (record.intensity == intensity)
    n = int(sel.sum())
    return float(np.mean(record.alice_bit[sel] != record.bob_bit[sel])), n


def within(observed: float, expected: float, n: float, sigmas: float = 5.0) -> bool:
    """|observed - expected| within ``sigmas`` binomial standard deviations (n trials)."""
    sd = math.sqrt(max(expected * (1 - expected), 1e-12) / n)
    return abs(observed - expected) <= sigmas * sd


def test_pulse_and_event_modes_agree_on_counts_and_qber() -> None:
    n = 3_000_000
    pulse = simulate(GYS, 10.0, n, rng(1), mode="pulse")
    event = simulate(GYS, 10.0, n, rng(2), mode="event")
    for k in range(3):
        p_pulse = np.mean(pulse.intensity == k) * pulse.detections / n
        p_event = np.mean(event.intensity == k) * event.detections / n
        # Difference of two binomial proportions: sd = sqrt(2 p (1-p) / n).
        sd = math.sqrt(2 * max(p_event, 1e-9) / n)
        assert abs(p_pulse - p_event) <= 6 * sd + 1e-9
    q_pulse, n_pulse = sifted_qber(pulse)
    q_event, n_event = sifted_qber(event)
    sd = math.sqrt(q_event * (1 - q_event) * (1 / n_pulse + 1 / n_event))
    assert abs(q_pulse - q_event) <= 6 * sd


def test_per_pulse_mode_matches_the_exact_outcome_probabilities() -> None:
    n = 2_000_000
    record = simulate(GYS, 0.0, n, rng(3), mode="pulse")
    probs = outcome_probabilities(GYS, 0.0)
    expected_det = float(
        sum(
            GYS.class_probs[k] * p_a * p_b * (1 - probs[k, a, b, 0])
            for k in range(3)
            for a, p_a in ((X, GYS.p_x), (Z, 1 - GYS.p_x))
            for b, p_b in ((X, GYS.p_x), (Z, 1 - GYS.p_x))
        )
    )
    assert within(record.detections / n, expected_det, n)


def test_event_mode_matches_the_exact_outcome_probabilities_of_every_class() -> None:
    n = 10**9
    record = simulate(GYS, 0.0, n, rng(13), mode="event")
    probs = outcome_probabilities(GYS, 0.0)
    cls = class_probabilities(GYS)
    err = record.alice_bit ^ record.bob_bit
    for k in range(3):
        assert within(record.sent[k] / n, GYS.class_probs[k], n)
        for a in (X, Z):
            for b in (X, Z):
                sel = (record.intensity == k) & (record.alice_basis == a) & (record.bob_basis == b)
                p = probs[k, a, b]
                assert within(sel.sum() / n, cls[k, a, b] * (1 - p[0]), n)
                wrong = (p[2] + p[3] / 2) / (1 - p[0])
                assert within(err[sel].mean(), wrong, sel.sum())
    doubles = float(np.sum(cls * probs[..., 3]))
    assert within(record.double_clicks / n, doubles, n)


def test_event_sampler_draws_codes_below_its_table_resolution_exactly() -> None:
    # Code 7 lies wholly below 2^-16, code 9 partly: both come from the exact remainders.
    p = np.zeros(64)
    p[7], p[9], p[20] = 0.5 / 2**16, 0.3 + 0.25 / 2**16, 0.0
    p[0] = 1.0 - p.sum()
    n = 1 << 24
    codes = _CodeSampler(p).draw(n, rng(14))
    counts = np.bincount(codes, minlength=64)
    assert counts[20] == 0 and counts[64 - 1] == 0
    for c in (0, 7, 9):
        assert within(counts[c] / n, p[c], n)


def test_signal_qber_is_near_misalignment_at_short_distance() -> None:
    q, n = sifted_qber(simulate(GYS, 0.0, 2_000_000, rng(4)))
    assert within(q, GYS.misalignment, n)


def test_full_intercept_resend_gives_qber_near_a_quarter_and_aborts() -> None:
    eve = parse_eve("intercept-resend=1")
    # Eve guesses the basis right half the time (error e_d), else Bob's bit is random.
    expected = 0.25 + GYS.misalignment / 2
    q, n = sifted_qber(simulate(GYS, 25.0, 4_000_000, rng(5), eve=eve, mode="pulse"))
    assert within(q, expected, n)
    result = run_block(GYS, 25.0, 50_000_000, rng(6), eve=eve)
    assert result.aborted
    assert "QBER" in result.abort_reason
    assert result.qber == pytest.approx(expected, abs=0.02)


@pytest.mark.parametrize("fraction", [0.2, 0.4])
def test_partial_intercept_resend_adds_a_quarter_of_the_fraction(fraction: float) -> None:
    eve = parse_eve(f"intercept-resend={fraction}")
    q0, _ = sifted_qber(simulate(GYS, 25.0, 50_000_000, rng(7)))
    q, n = sifted_qber(simulate(GYS, 25.0, 50_000_000, rng(8), eve=eve))
    assert q - q0 == pytest.approx(fraction / 4, abs=6 * math.sqrt(0.25 / n) + 0.01)


def test_pns_attack_keeps_the_signal_gain_but_decoys_expose_it() -> None:
    eve = parse_eve("pns")
    honest = count_classes(event_counts(GYS, 50.0, 10**12, rng(9)), GYS)
    attacked = count_classes(event_counts(GYS, 50.0, 10**12, rng(9), eve=eve), GYS)
    gain = honest.detections[0] / honest.sent[0]
    assert attacked.detections[0] / attacked.sent[0] == pytest.approx(gain, rel=0.02)
    assert asymptotic_estimate(honest, GYS).rate_per_pulse > 0
    assert asymptotic_estimate(attacked, GYS).rate_per_pulse == 0.0


def test_beam_splitting_leaves_bob_statistics_unchanged() -> None:
    a = outcome_probabilities(GYS, 30.0)
    b = outcome_probabilities(GYS, 30.0, parse_eve("beam-splitting"))
    assert np.allclose(a, b)


def test_dead_time_lowers_and_afterpulsing_raises_the_click_count() -> None:
    n = 1_000_000
    base = simulate(GYS, 0.0, n, rng(10), mode="pulse").detections
    dead = simulate(GYS.replace(dead_time_pulses=200), 0.0, n, rng(10), mode="pulse").detections
    after = simulate(GYS.replace(afterpulse_prob=0.2), 0.0, n, rng(10), mode="pulse").detections
    assert dead < base * 0.9
    assert after > base * 1.1


def test_event_mode_refuses_dead_time() -> None:
    with pytest.raises(Bb84ParamsError, match="per-pulse"):
        simulate(GYS.replace(dead_time_pulses=10), 0.0, 1000, rng(0), mode="event")


@pytest.mark.parametrize("spec", ["intercept-resend=2", "pn", "intercept-resend=x"])
def test_bad_eve_is_rejected_with_the_accepted_forms(spec: str) -> None:
    with pytest.raises(Bb84ParamsError, match="intercept-resend=F"):
        parse_eve(spec)


@pytest.mark.parametrize(
    ("distance_km", "tolerance"), [(0, 0.05), (25, 0.05), (50, 0.05), (100, 0.10)]
)
def test_rate_from_large_simulated_blocks_matches_the_analytic_rate(
    distance_km: float, tolerance: float
) -> None:
    counts = count_classes(event_counts(GYS, distance_km, 10**13, rng(11)), GYS)
    rate = asymptotic_estimate(counts, GYS).rate_per_pulse
    assert rate == pytest.approx(analytic_rate(GYS, distance_km), rel=tolerance)


def test_no_simulated_key_beyond_the_maximum_distance() -> None:
    counts = count_classes(event_counts(GYS, 150.0, 10**13, rng(12)), GYS)
    assert asymptotic_estimate(counts, GYS).rate_per_pulse == 0.0
