"""Sifting, QBER sampling, Cascade, verification, Toeplitz hashing, finite key."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkd_drivers.bb84 import (
    GYS,
    LIM2014,
    block_sizes,
    cascade,
    count_classes,
    event_counts,
    finite_key_length,
    h2,
    privacy_amplification,
    sample_qber,
    sift,
    simulate,
    tag_length,
    toeplitz_hash,
    toeplitz_hash_direct,
    verify,
)


def rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def noisy_pair(n: int, qber: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = rng(seed)
    alice = g.integers(0, 2, n, dtype=np.uint8)
    return alice, alice ^ (g.random(n) < qber).astype(np.uint8)


def test_sifting_keeps_exactly_the_matching_bases() -> None:
    record = simulate(GYS, 0.0, 200_000, rng(1))
    sifted = sift(record)
    assert sifted.size == int(np.sum(record.alice_basis == record.bob_basis))
    assert 0 < sifted.size < record.detections


def test_qber_sample_is_disclosed_and_removed_from_the_key() -> None:
    sifted = sift(simulate(GYS, 0.0, 2_000_000, rng(2)))
    sample = sample_qber(sifted, 0.1, rng(3))
    assert sample.qber == pytest.approx(GYS.misalignment, abs=0.015)
    assert sample.size + int(sample.keep.sum()) == int(np.sum(sifted.basis == 0))


@pytest.mark.parametrize("variant", ["original", "optimised"])
@pytest.mark.parametrize("qber", [0.01, 0.03, 0.08])
def test_cascade_corrects_every_error(variant: str, qber: float) -> None:
    alice, bob = noisy_pair(20_000, qber, 4)
    result = cascade(alice, bob, qber, rng(5), variant=variant)  # type: ignore[arg-type]
    assert np.array_equal(result.corrected, alice)
    assert result.errors_corrected == int(np.sum(alice != bob))


@pytest.mark.parametrize("qber", [0.01, 0.02, 0.05, 0.08])
def test_optimised_cascade_discloses_little_more_than_shannon(qber: float) -> None:
    alice, bob = noisy_pair(10_000, qber, 6)
    result = cascade(alice, bob, qber, rng(7), variant="optimised")
    actual = float(np.mean(alice != bob))
    # Every disclosed parity is counted, so the Shannon limit bounds it from below.
    assert 10_000 * h2(actual) < result.disclosed_bits
    assert result.efficiency(actual) <= 1.13


def test_optimised_cascade_beats_the_original() -> None:
    alice, bob = noisy_pair(1 << 16, 0.05, 8)
    opt = cascade(alice, bob, 0.05, rng(9), variant="optimised").disclosed_bits
    orig = cascade(alice, bob, 0.05, rng(9), variant="original").disclosed_bits
    assert opt < orig


def test_optimised_block_sizes_are_powers_of_two_growing_fourfold() -> None:
    sizes = block_sizes(1 << 16, 0.05, "optimised")
    assert sizes[:3] == [32, 128, 512]
    assert all(s & (s - 1) == 0 for s in sizes)


def test_cascade_rejects_keys_of_different_length() -> None:
    with pytest.raises(ValueError, match="lengths differ"):
        cascade(np.zeros(3, np.uint8), np.zeros(4, np.uint8), 0.01, rng(0))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 300), m=st.integers(1, 100), seed=st.integers(0, 2**32 - 1))
def test_fft_toeplitz_hash_equals_the_direct_gf2_product(n: int, m: int, seed: int) -> None:
    g = rng(seed)
    x = g.integers(0, 2, n, dtype=np.uint8)
    s = g.integers(0, 2, n + m - 1, dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(s, x, m), toeplitz_hash_direct(s, x, m))


def test_fft_toeplitz_hash_is_bit_exact_on_a_large_all_ones_input() -> None:
    # All ones maximise the convolution's entries: the worst case for float rounding.
    n, m = 200_000, 64
    x = np.ones(n, dtype=np.uint8)
    s = rng(10).integers(0, 2, n + m - 1, dtype=np.uint8)
    rows = np.array([s[i : i + n].sum() & 1 for i in range(m)], dtype=np.uint8)
    assert np.array_equal(toeplitz_hash(s, x, m), rows)


def test_privacy_amplification_output_has_the_requested_length() -> None:
    key = rng(11).integers(0, 2, 5000, dtype=np.uint8)
    assert privacy_amplification(key, 1234, rng(12)).size == 1234


def test_verification_catches_a_single_flipped_bit() -> None:
    alice = rng(13).integers(0, 2, 10_000, dtype=np.uint8)
    bob = alice.copy()
    assert verify(alice, bob, 64, rng(14)).ok
    bob[1234] ^= 1
    assert not verify(alice, bob, 64, rng(14)).ok


def test_tags_are_at_least_64_bits_and_cover_eps_cor() -> None:
    assert tag_length(1e-15) == 64
    assert tag_length(1e-30) == 100


def _block(pulses: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    counts = count_classes(event_counts(LIM2014, 25.0, pulses, rng(15)), LIM2014)
    leak = int(1.1 * counts.n_x.sum() * h2(LIM2014.misalignment))
    return counts.n_x, counts.n_z, counts.m_z, leak


def test_finite_key_grows_faster_than_the_block() -> None:
    small = finite_key_length(*_block(10**9), params=LIM2014)
    large = finite_key_length(*_block(10**10), params=LIM2014)
    assert 0 < small.length
    assert large.length > 10 * small.length


def test_finite_key_is_shorter_for_stricter_epsilons() -> None:
    loose = finite_key_length(*_block(10**9), params=LIM2014)
    strict = finite_key_length(*_block(10**9), params=LIM2014.replace(eps_sec=1e-20, eps_cor=1e-25))
    assert strict.length < loose.length


def test_tiny_blocks_give_no_finite_key() -> None:
    assert finite_key_length(*_block(10**6), params=LIM2014).length <= 0
