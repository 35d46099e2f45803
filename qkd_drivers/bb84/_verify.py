"""Verification: compare a universal hash of both corrected keys.

The tag is a Toeplitz hash with a fresh random seed: a 2-universal family, so
two different keys collide with probability 2^-tag_bits (<= eps_cor for the
default 64 bits and eps_cor = 1e-15).  The tag bits are disclosed; the
finite-key length charges them through its log2(2 / eps_cor) term.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from ._privacy import toeplitz_hash

U8 = npt.NDArray[np.uint8]


@dataclasses.dataclass(frozen=True, slots=True)
class Verification:
    ok: bool
    tag_bits: int


def tag_length(eps_cor: float, minimum: int = 64) -> int:
    """Tag bits so that the collision probability is at most ``eps_cor``."""
    return max(minimum, math.ceil(-math.log2(eps_cor)))


def verify(alice: U8, bob: U8, tag_bits: int, rng: np.random.Generator) -> Verification:
    """Hash both keys with one seed drawn from ``rng``; equal tags mean "keys agree"."""
    if alice.size != bob.size:
        return Verification(False, tag_bits)
    seed = rng.integers(0, 2, size=alice.size + tag_bits - 1, dtype=np.uint8)
    ok = bool(
        np.array_equal(toeplitz_hash(seed, alice, tag_bits), toeplitz_hash(seed, bob, tag_bits))
    )
    return Verification(ok, tag_bits)
