"""One block end to end: quantum phase, sifting, estimation, Cascade, verification,
finite-key length, privacy amplification.

``run_block`` is pure: parameters and a generator in, a ``BlockResult`` out.
The generator stands for all randomness, including what Alice and Bob share
publicly (sample positions, permutations, hash seeds), so two parties that run
the same block from the same seed get the same key.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np

from ._analytic import h2, vacuum_weak_decoy_rate
from ._cascade import cascade
from ._estimation import asymptotic_estimate, count, sample_qber
from ._finite_key import finite_key_length
from ._params import Bb84Params
from ._privacy import privacy_amplification
from ._sifting import sift
from ._simulate import NO_EVE, Eve, simulate
from ._verify import tag_length, verify

Mode = Literal["pulse", "event"]


@dataclasses.dataclass(frozen=True, slots=True)
class BlockResult:
    """Every stage's figures for one block.  ``key`` is secret: not in ``repr`` or ``figures``."""

    params: str
    distance_km: float
    n_pulses: int
    mode: str
    eve: str
    blocks: int = 1
    detections: int = 0
    double_clicks: int = 0
    sifted_bits: int = 0
    sample_bits: int = 0
    qber: float = 0.5
    key_bits_before_ec: int = 0
    qber_key: float = 0.0
    y1_lower: float = 0.0
    e1_upper: float = 0.5
    asymptotic_rate_from_counts: float = 0.0
    analytic_key_rate_per_pulse: float = 0.0
    ec_disclosed_bits: int = 0
    ec_messages: int = 0
    ec_efficiency: float = 0.0
    ec_errors_corrected: int = 0
    verified: bool = False
    residual_errors: int = 0
    tag_bits: int = 0
    s_x0: float = 0.0
    s_x1: float = 0.0
    phi_x: float = 0.5
    secret_bits: int = 0
    secret_key_rate_per_pulse: float = 0.0
    aborted: bool = True
    abort_reason: str = ""
    key: bytes = dataclasses.field(default=b"", repr=False)

    def figures(self) -> dict[str, Any]:
        """Everything but the key, for printing and JSON."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "key"}
        for name, value in out.items():
            if isinstance(value, float) and not math.isfinite(value):
                out[name] = None
        return out


def analytic_rate(params: Bb84Params, distance_km: float) -> float:
    """The asymptotic vacuum + weak decoy rate per pulse for these exact settings.

    GLLP convention (key from the sifted signal pulses of both bases), times
    the share of signal pulses ``p_mu``.
    """
    q = params.p_x**2 + (1.0 - params.p_x) ** 2
    return params.p_mu * max(0.0, vacuum_weak_decoy_rate(params, distance_km, q=q))


def run_block(
    params: Bb84Params,
    distance_km: float,
    n_pulses: int,
    rng: np.random.Generator,
    *,
    eve: Eve = NO_EVE,
    mode: Mode = "event",
) -> BlockResult:
    """Simulate ``n_pulses`` pulses and distil what secret key they give.

    Never raises for physics reasons: an abort is ``aborted=True`` with an
    ``abort_reason``.  Raises ``Bb84ParamsError`` for settings the chosen mode
    cannot simulate.
    """
    base = BlockResult(
        params=params.name,
        distance_km=distance_km,
        n_pulses=n_pulses,
        mode=mode,
        eve=str(eve),
        analytic_key_rate_per_pulse=analytic_rate(params, distance_km),
    )
    record = simulate(params, distance_km, n_pulses, rng, eve=eve, mode=mode)
    sifted = sift(record)
    sample = sample_qber(sifted, params.qber_sample_fraction, rng)
    counts = count(record, sifted, sample.keep)
    asym = asymptotic_estimate(counts, params)
    alice, bob = sifted.alice[sample.keep], sifted.bob[sample.keep]
    n_key = int(alice.size)
    res = dataclasses.replace(
        base,
        detections=record.detections,
        double_clicks=record.double_clicks,
        sifted_bits=sifted.size,
        sample_bits=sample.size,
        qber=sample.qber,
        key_bits_before_ec=n_key,
        y1_lower=asym.y1_lower,
        e1_upper=asym.e1_upper,
        asymptotic_rate_from_counts=asym.rate_per_pulse,
    )
    if sample.size == 0 or n_key == 0:
        return dataclasses.replace(res, abort_reason="no key: too few detections")
    if sample.qber > params.qber_threshold:
        return dataclasses.replace(
            res,
            abort_reason=f"QBER {sample.qber:.4f} above threshold {params.qber_threshold:g}",
        )
    ec = cascade(alice, bob, sample.qber, rng, variant=params.cascade)
    qber_key = ec.errors_corrected / n_key
    ideal = n_key * h2(qber_key)
    res = dataclasses.replace(
        res,
        qber_key=qber_key,
        ec_disclosed_bits=ec.disclosed_bits,
        ec_messages=ec.messages,
        ec_efficiency=ec.disclosed_bits / ideal if ideal > 0 else math.inf,
        ec_errors_corrected=ec.errors_corrected,
    )
    check = verify(alice, ec.corrected, tag_length(params.eps_cor, params.tag_bits), rng)
    res = dataclasses.replace(
        res,
        verified=check.ok,
        tag_bits=check.tag_bits,
        # The simulator sees both keys: an omniscient check of what verification decided.
        residual_errors=int(np.count_nonzero(alice != ec.corrected)),
    )
    if not check.ok:
        return dataclasses.replace(res, abort_reason="verification failed: keys still differ")
    bound = finite_key_length(counts.n_x, counts.n_z, counts.m_z, ec.disclosed_bits, params)
    res = dataclasses.replace(res, s_x0=bound.s_x0, s_x1=bound.s_x1, phi_x=bound.phi_x)
    length = min(bound.length, n_key)
    if length <= 0:
        return dataclasses.replace(
            res,
            secret_bits=max(0, length),
            abort_reason=f"no key: finite-key length {bound.length} <= 0",
        )
    final = privacy_amplification(alice, length, rng)
    usable = length - length % 8
    return dataclasses.replace(
        res,
        secret_bits=length,
        secret_key_rate_per_pulse=length / n_pulses if n_pulses else 0.0,
        aborted=False,
        abort_reason="",
        key=np.packbits(final[:usable]).tobytes(),
    )
