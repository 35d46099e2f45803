"""Toeplitz hashing over GF(2), computed as a convolution with the FFT.

A Toeplitz matrix T (m x n) is fixed by its first column and row: a seed s of
n + m - 1 bits with T[i, j] = s[i - j + n - 1].  Then (T x)_i is bit
i + n - 1 of the integer convolution s * x, taken mod 2.  The float FFT is
exact here: the convolution's entries are at most n, far below where float64
rounding could flip a parity.  Both privacy amplification (m = secret length)
and verification tags (m = 64) use it.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

U8 = npt.NDArray[np.uint8]


def _fast_len(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n: a cheap length for numpy's FFT."""
    best = 1 << (n - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            p = p35
            while p < n:
                p *= 2
            best = min(best, p)
            p35 *= 3
        p5 *= 5
    return best


def toeplitz_hash(seed: U8, x: U8, m: int) -> U8:
    """T x over GF(2), T the m x len(x) Toeplitz matrix of ``seed`` (len(x) + m - 1 bits).

    Raises ``ValueError`` when the seed has the wrong length.
    """
    n = int(x.size)
    if seed.size != n + m - 1:
        raise ValueError(f"seed has {seed.size} bits, need n + m - 1 = {n + m - 1}")
    if m <= 0:
        return np.zeros(0, dtype=np.uint8)
    if n == 0:
        return np.zeros(m, dtype=np.uint8)
    size = _fast_len(n + seed.size - 1)
    fx = np.fft.rfft(x.astype(np.float64), size)
    fx *= np.fft.rfft(seed.astype(np.float64), size)
    conv = np.fft.irfft(fx, size)
    del fx
    out = np.rint(conv[n - 1 : n - 1 + m]).astype(np.int64) & 1
    return out.astype(np.uint8)


def toeplitz_hash_direct(seed: U8, x: U8, m: int) -> U8:
    """The same product computed directly (for tests; O(m n) memory)."""
    n = int(x.size)
    i = np.arange(m)[:, None]
    j = np.arange(n)[None, :]
    t = seed[i - j + n - 1].astype(np.int64)
    out: U8 = ((t @ x.astype(np.int64)) & 1).astype(np.uint8)
    return out


def privacy_amplification(key: U8, length: int, rng: np.random.Generator) -> U8:
    """Compress ``key`` to ``length`` bits with a Toeplitz matrix drawn from ``rng``.

    ``rng`` stands for randomness both parties share (the seed is public).
    """
    if length <= 0:
        return np.zeros(0, dtype=np.uint8)
    if length > key.size:
        raise ValueError(f"cannot amplify {key.size} bits to {length}")
    seed = rng.integers(0, 2, size=key.size + length - 1, dtype=np.uint8)
    return toeplitz_hash(seed, key, length)
