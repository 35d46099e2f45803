"""Parameter estimation: QBER from a disclosed sample, counts, decoy-state bounds.

Everything here uses only what Alice and Bob disclose: the bits of the random
sample, every bit of the test basis (Z) and of the decoy classes, and the
public intensity and basis labels.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from ._analytic import gllp_rate, vacuum_weak_decoy_bounds
from ._params import Bb84Params
from ._sifting import SiftedKey
from ._simulate import DECOY, SIGNAL, VACUUM, DetectionRecord, X, Z

I64 = npt.NDArray[np.int64]
BoolArr = npt.NDArray[np.bool_]


@dataclasses.dataclass(frozen=True, slots=True)
class QberSample:
    """A random sample of the key-basis bits, disclosed and then discarded."""

    qber: float
    size: int
    errors: int
    keep: BoolArr = dataclasses.field(repr=False)


def sample_qber(sifted: SiftedKey, fraction: float, rng: np.random.Generator) -> QberSample:
    """Disclose a random ``fraction`` of the key-basis (X) bits and measure their QBER.

    ``keep`` marks the sifted entries left for the key (X basis, not sampled).
    """
    key = sifted.basis == X
    sampled = key & (rng.random(sifted.size) < fraction)
    errors = int(np.count_nonzero(sifted.alice[sampled] != sifted.bob[sampled]))
    size = int(np.count_nonzero(sampled))
    return QberSample(errors / size if size else 0.5, size, errors, key & ~sampled)


@dataclasses.dataclass(frozen=True, slots=True)
class DecoyCounts:
    """Public counts per intensity class (signal, decoy, vacuum).

    ``n_x``: key-basis detections left for the key; ``n_z``/``m_z``: test-basis
    detections and their errors; ``detections``: all detections (any bases);
    ``sifted``/``sifted_errors``: every sifted detection and its errors (the
    latter known once error correction has run).
    """

    sent: I64
    detections: I64
    n_x: I64
    n_z: I64
    m_z: I64
    sifted: I64
    sifted_errors: I64


def count(record: DetectionRecord, sifted: SiftedKey, keep: BoolArr) -> DecoyCounts:
    """Tally the counts the decoy analysis needs."""

    def per_class(mask: BoolArr) -> I64:
        return np.bincount(sifted.intensity[mask], minlength=3)[:3].astype(np.int64)

    err = sifted.alice != sifted.bob
    z = sifted.basis == Z
    every = np.ones(sifted.size, dtype=np.bool_)
    return DecoyCounts(
        sent=record.sent.astype(np.int64),
        detections=np.bincount(record.intensity, minlength=3)[:3].astype(np.int64),
        n_x=per_class(keep),
        n_z=per_class(z),
        m_z=per_class(z & err),
        sifted=per_class(every),
        sifted_errors=per_class(err),
    )


def count_classes(classes: I64, params: Bb84Params) -> DecoyCounts:
    """The counts of an ``event_counts`` table (no bits drawn: for very large blocks).

    The QBER sample is taken as its expected share of the key-basis detections.
    """
    det = classes[..., 1:4].sum(axis=-1)
    err = classes[..., 2] + classes[..., 4]
    keep = np.floor(det[:, X, X] * (1.0 - params.qber_sample_fraction)).astype(np.int64)
    sifted = det[:, X, X] + det[:, Z, Z]
    return DecoyCounts(
        sent=classes[..., :4].sum(axis=(1, 2, 3)).astype(np.int64),
        detections=det.sum(axis=(1, 2)).astype(np.int64),
        n_x=keep,
        n_z=det[:, Z, Z].astype(np.int64),
        m_z=err[:, Z, Z].astype(np.int64),
        sifted=sifted.astype(np.int64),
        sifted_errors=(err[:, X, X] + err[:, Z, Z]).astype(np.int64),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class AsymptoticEstimate:
    """Gains, QBERs and Lo–Ma–Chen bounds from observed counts, and the rate they imply."""

    gains: tuple[float, float, float]
    qbers: tuple[float, float, float]
    y1_lower: float
    e1_upper: float
    rate_per_pulse: float


def asymptotic_estimate(counts: DecoyCounts, params: Bb84Params) -> AsymptoticEstimate:
    """The GLLP rate per pulse (vacuum + weak decoy) computed from observed counts.

    Same convention as ``vacuum_weak_decoy_rate`` times ``p_mu``: key from the
    sifted signal detections of both bases, sifting factor q = p_x^2 + p_z^2.
    """
    sent = np.maximum(counts.sent, 1)
    gains = counts.detections / sent
    qbers = np.where(counts.sifted > 0, counts.sifted_errors / np.maximum(counts.sifted, 1), 0.5)
    y1, e1 = vacuum_weak_decoy_bounds(
        params.mu, params.nu, gains[SIGNAL], gains[DECOY], qbers[DECOY], gains[VACUUM]
    )
    q = params.p_x**2 + (1.0 - params.p_x) ** 2
    rate = 0.0
    if y1 > 0.0:
        q1 = y1 * params.mu * math.exp(-params.mu)
        rate = params.p_mu * gllp_rate(q1, e1, gains[SIGNAL], qbers[SIGNAL], params.f_ec, q=q)
    return AsymptoticEstimate(
        gains=(float(gains[0]), float(gains[1]), float(gains[2])),
        qbers=(float(qbers[0]), float(qbers[1]), float(qbers[2])),
        y1_lower=float(y1),
        e1_upper=float(e1),
        rate_per_pulse=max(0.0, float(rate)),
    )
