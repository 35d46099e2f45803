"""A long run in bounded memory: the pulses in blocks, one finite-key analysis over all of them.

Theory of operation.  ``run_block`` holds every detection of a run, every
sifted bit and the whole key in several unpacked copies, and hashes the key
with one FFT as long as the key: about 57 bytes per sifted bit.  ``run_stream``
gives the same result from a stream of blocks of ``block_pulses`` pulses:

1. each block runs the quantum phase, sifting and the QBER sample on its own;
   the counts the decoy analysis needs are sums, so they add up exactly;
2. each block's key-basis bits are corrected (Cascade, with the QBER of every
   sample drawn so far) and verified (a Toeplitz tag at ``eps_cor / blocks``
   per block, so that the run is ``eps_cor``-correct as a whole); the bits
   disclosed add up;
3. the corrected bits are kept packed, one bit per key bit;
4. the finite-key length comes from the run's total counts and leak, as if the
   run were one block: blocks are a memory device, not a weaker key;
5. privacy amplification is one Toeplitz matrix over the whole key, computed
   by segments (``toeplitz_hash_segmented``) whose seed is drawn on demand,
   so no array is longer than a few segments.

Peak memory is then about one block's working set plus the packed key (n/8
bytes for n key bits) and the packed secret key, instead of about 57 bytes per
sifted bit.  A run of at most one block is ``run_block`` itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from ._analytic import h2
from ._cascade import cascade
from ._estimation import DecoyCounts, asymptotic_estimate, count, sample_qber
from ._finite_key import finite_key_length
from ._params import Bb84Params
from ._pipeline import BlockResult, Mode, analytic_rate, run_block
from ._privacy import toeplitz_hash
from ._sifting import sift
from ._simulate import NO_EVE, Eve, simulate
from ._verify import tag_length, verify

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

# Privacy amplification segment (bits): each product of a segment pair is an FFT of
# about 3 segments of float64, ~150 MB at 2^21 with its temporaries.  The work grows as
# 1 / segment: at 2^20 a 5e11-pulse run at 75 km took 178 CPU-s and peaked at 200 MB.
PA_SEGMENT = 1 << 21


def toeplitz_hash_segmented(
    seed: Callable[[int, int], U8],
    x: Callable[[int, int], U8],
    n: int,
    m: int,
    segment: int = PA_SEGMENT,
) -> bytes:
    """``np.packbits(toeplitz_hash(S, X, m))`` without holding S, X or the result unpacked.

    ``seed(a, b)`` returns bits ``a:b`` of the n + m - 1 seed bits and ``x(a, b)``
    bits ``a:b`` of the n input bits.  The m x n matrix is cut into
    ``segment``-square tiles; a tile of a Toeplitz matrix is a Toeplitz matrix
    (rows r0:r1, columns c0:c1 use seed bits r0 - c1 + n : r1 - c0 + n - 1), and
    the output segment is the XOR of its tiles' products.  Raises
    ``ValueError`` when ``segment`` is not a positive multiple of 8.
    """
    if segment <= 0 or segment % 8:
        raise ValueError(f"segment must be a positive multiple of 8, got {segment}")
    out = bytearray()
    for r0 in range(0, max(m, 0), segment):
        r1 = min(r0 + segment, m)
        acc = np.zeros(r1 - r0, dtype=np.uint8)
        for c0 in range(0, n, segment):
            c1 = min(c0 + segment, n)
            acc ^= toeplitz_hash(seed(r0 - c1 + n, r1 - c0 + n - 1), x(c0, c1), r1 - r0)
        out += np.packbits(acc).tobytes()
    return bytes(out)


class _PackedBits:
    """An append-only bit string kept packed (one bit per bit), read back by ranges."""

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._tail = np.zeros(0, dtype=np.uint8)
        self._data = b""
        self.size = 0

    def append(self, bits: U8) -> None:
        joined = np.concatenate([self._tail, bits]) if self._tail.size else bits
        whole = joined.size - joined.size % 8
        self._chunks.append(np.packbits(joined[:whole]).tobytes())
        self._tail = joined[whole:].copy()
        self.size += int(bits.size)

    def freeze(self) -> None:
        if self._tail.size:
            self._chunks.append(np.packbits(self._tail).tobytes())
            self._tail = np.zeros(0, dtype=np.uint8)
        self._data = b"".join(self._chunks)
        self._chunks = []

    def read(self, a: int, b: int) -> U8:
        raw = np.frombuffer(self._data, dtype=np.uint8, count=-(-b // 8) - a // 8, offset=a // 8)
        start = a - (a // 8) * 8
        return np.unpackbits(raw)[start : start + b - a]


class _SeedBits:
    """The privacy-amplification seed, drawn chunk by chunk from one public 64-bit seed."""

    def __init__(self, base: int, chunk: int) -> None:
        self._base, self._chunk = base, chunk
        self._cache: dict[int, U8] = {}

    def _get(self, k: int) -> U8:
        bits = self._cache.get(k)
        if bits is None:
            gen = np.random.Generator(np.random.PCG64(np.random.SeedSequence([self._base, k])))
            bits = np.unpackbits(np.frombuffer(gen.bytes(self._chunk // 8), dtype=np.uint8))
            if len(self._cache) >= 4:
                self._cache.pop(next(iter(self._cache)))
            self._cache[k] = bits
        return bits

    def __call__(self, a: int, b: int) -> U8:
        first, last = a // self._chunk, (b - 1) // self._chunk
        whole = np.concatenate([self._get(k) for k in range(first, last + 1)])
        return whole[a - first * self._chunk : b - first * self._chunk]


def _add(total: DecoyCounts | None, part: DecoyCounts) -> DecoyCounts:
    if total is None:
        return part
    return DecoyCounts(
        *(getattr(total, f.name) + getattr(part, f.name) for f in dataclasses.fields(total))
    )


def run_stream(
    params: Bb84Params,
    distance_km: float,
    n_pulses: int,
    rng: np.random.Generator,
    *,
    block_pulses: int,
    eve: Eve = NO_EVE,
    mode: Mode = "event",
    keep_key: bool = True,
    pa_segment: int = PA_SEGMENT,
) -> BlockResult:
    """``run_block`` for a run of any length, in memory bounded by ``block_pulses``.

    See the module docstring.  Never raises for physics reasons (an abort is
    ``aborted=True`` with a reason); raises ``Bb84ParamsError`` for settings
    the mode cannot simulate and ``ValueError`` for ``block_pulses < 1``.
    ``keep_key=False`` drops the secret key (its length is still reported).
    """
    if block_pulses < 1:
        raise ValueError(f"block_pulses must be >= 1, got {block_pulses}")
    if n_pulses <= block_pulses:
        result = run_block(params, distance_km, n_pulses, rng, eve=eve, mode=mode)
        return result if keep_key else dataclasses.replace(result, key=b"")
    blocks = -(-n_pulses // block_pulses)
    base = BlockResult(
        params=params.name,
        distance_km=distance_km,
        n_pulses=n_pulses,
        mode=mode,
        eve=str(eve),
        analytic_key_rate_per_pulse=analytic_rate(params, distance_km),
        blocks=blocks,
    )
    tag_bits = tag_length(params.eps_cor / blocks, params.tag_bits)
    counts: DecoyCounts | None = None
    key = _PackedBits()
    detections = doubles = sifted_bits = sample_bits = sample_errors = 0
    leak = messages = corrected = residual = tags = 0
    done = 0
    res = base
    while done < n_pulses:
        size = min(block_pulses, n_pulses - done)
        done += size
        record = simulate(params, distance_km, size, rng, eve=eve, mode=mode)
        sifted = sift(record)
        sample = sample_qber(sifted, params.qber_sample_fraction, rng)
        counts = _add(counts, count(record, sifted, sample.keep))
        detections += record.detections
        doubles += record.double_clicks
        sifted_bits += sifted.size
        sample_bits += sample.size
        sample_errors += sample.errors
        del record
        alice, bob = sifted.alice[sample.keep], sifted.bob[sample.keep]
        del sifted
        qber = sample_errors / sample_bits if sample_bits else 0.5
        res = dataclasses.replace(
            base,
            detections=detections,
            double_clicks=doubles,
            sifted_bits=sifted_bits,
            sample_bits=sample_bits,
            qber=qber,
            key_bits_before_ec=key.size + int(alice.size),
        )
        if sample_bits and qber > params.qber_threshold:
            return dataclasses.replace(
                res, abort_reason=f"QBER {qber:.4f} above threshold {params.qber_threshold:g}"
            )
        if alice.size == 0:
            continue
        ec = cascade(alice, bob, qber, rng, variant=params.cascade)
        del bob
        leak += ec.disclosed_bits
        messages += ec.messages
        corrected += ec.errors_corrected
        check = verify(alice, ec.corrected, tag_bits, rng)
        residual += int(np.count_nonzero(alice != ec.corrected))
        tags += check.tag_bits
        if not check.ok:
            return dataclasses.replace(
                res,
                tag_bits=tags,
                residual_errors=residual,
                abort_reason="verification failed: keys still differ",
            )
        key.append(alice)
        del alice, ec
    n_key = key.size
    assert counts is not None  # n_pulses > block_pulses >= 1: at least one block ran
    asym = asymptotic_estimate(counts, params)
    qber_key = corrected / n_key if n_key else 0.0
    ideal = n_key * h2(qber_key)
    res = dataclasses.replace(
        res,
        key_bits_before_ec=n_key,
        y1_lower=asym.y1_lower,
        e1_upper=asym.e1_upper,
        asymptotic_rate_from_counts=asym.rate_per_pulse,
        qber_key=qber_key,
        ec_disclosed_bits=leak,
        ec_messages=messages,
        ec_efficiency=leak / ideal if ideal > 0 else math.inf,
        ec_errors_corrected=corrected,
        verified=n_key > 0,
        tag_bits=tags,
        residual_errors=residual,
    )
    if sample_bits == 0 or n_key == 0:
        return dataclasses.replace(res, abort_reason="no key: too few detections")
    bound = finite_key_length(counts.n_x, counts.n_z, counts.m_z, leak, params)
    res = dataclasses.replace(res, s_x0=bound.s_x0, s_x1=bound.s_x1, phi_x=bound.phi_x)
    length = min(bound.length, n_key)
    if length <= 0:
        return dataclasses.replace(
            res,
            secret_bits=max(0, length),
            abort_reason=f"no key: finite-key length {bound.length} <= 0",
        )
    secret = b""
    if keep_key:
        key.freeze()
        seed = _SeedBits(int(rng.integers(0, 2**63)), pa_segment)
        packed = toeplitz_hash_segmented(seed, key.read, n_key, length, pa_segment)
        secret = packed[: (length - length % 8) // 8]
    return dataclasses.replace(
        res,
        secret_bits=length,
        secret_key_rate_per_pulse=length / n_pulses,
        aborted=False,
        abort_reason="",
        key=secret,
    )
