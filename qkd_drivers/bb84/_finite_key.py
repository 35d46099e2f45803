"""Finite-key secret length in the style of Lim, Curty, Walenta, Xu and Zbinden.

"Concise security bounds for practical decoy-state quantum key distribution",
PRA 89, 022307 (2014), with intensities mu1 = mu (signal), mu2 = nu (decoy),
mu3 = 0 (vacuum).  The key is made of the X-basis detections of every
intensity; the Z basis bounds the phase error.  Hoeffding's inequality turns
observed counts n_{X,k} into bounds n^{+/-}_{X,k}:

    n^{+/-}_{X,k} = e^{mu_k} / p_k (n_{X,k} +/- sqrt(n_X / 2 ln(21 / eps_sec)))

and then

    l = s_{X,0} + s_{X,1} (1 - h(phi_X)) - lambda_EC
        - 6 log2(21 / eps_sec) - log2(2 / eps_cor)

is eps_sec-secret and eps_cor-correct.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import numpy.typing as npt

from ._analytic import h2
from ._params import Bb84Params

I64 = npt.NDArray[np.int64]


@dataclasses.dataclass(frozen=True, slots=True)
class FiniteKeyBound:
    s_x0: float
    s_x1: float
    s_z1: float
    v_z1: float
    phi_x: float
    leak_ec: int
    length: int


def _tau(params: Bb84Params, n: int) -> float:
    return sum(
        p * math.exp(-k) * k**n / math.factorial(n)
        for k, p in zip(params.intensities, params.class_probs, strict=True)
    )


def _gamma(a: float, b: float, c: float, d: float) -> float:
    if b <= 0.0 or b >= 1.0 or c <= 0.0 or d <= 0.0:
        return 0.5
    arg = (c + d) / (c * d * (1.0 - b) * b) / (a * a)
    return math.sqrt((c + d) * (1.0 - b) * b / (c * d * math.log(2.0)) * math.log2(arg))


def _bounds(
    counts: I64, params: Bb84Params, eps: float
) -> tuple[list[float], list[float], float, float]:
    """(n^-, n^+) per class and the s_0, s_1 lower bounds for one basis."""
    total = float(counts.sum())
    delta = math.sqrt(total / 2.0 * math.log(21.0 / eps))
    lows, highs = [], []
    for k, p, n in zip(params.intensities, params.class_probs, counts.tolist(), strict=True):
        lows.append(math.exp(k) / p * max(0.0, n - delta))
        highs.append(math.exp(k) / p * (n + delta))
    mu1, mu2, mu3 = params.intensities
    tau0, tau1 = _tau(params, 0), _tau(params, 1)
    s0 = max(0.0, tau0 * (mu2 * lows[2] - mu3 * highs[1]) / (mu2 - mu3))
    s1 = (
        tau1
        * mu1
        / (mu1 * (mu2 - mu3) - mu2**2 + mu3**2)
        * (lows[1] - highs[2] - (mu2**2 - mu3**2) / mu1**2 * (highs[0] - s0 / tau0))
    )
    return lows, highs, s0, max(0.0, s1)


def finite_key_length(
    n_x: I64, n_z: I64, m_z: I64, leak_ec: int, params: Bb84Params
) -> FiniteKeyBound:
    """The secret length l (may be <= 0: no key) and the bounds behind it.

    ``n_x``: key-basis detections per intensity class (signal, decoy, vacuum);
    ``n_z``, ``m_z``: test-basis detections and errors per class;
    ``leak_ec``: bits disclosed by error correction.
    """
    eps = params.eps_sec
    _, _, s_x0, s_x1 = _bounds(n_x, params, eps)
    _, _, _, s_z1 = _bounds(n_z, params, eps)
    mu2, mu3 = params.intensities[1], params.intensities[2]
    delta_m = math.sqrt(float(m_z.sum()) / 2.0 * math.log(21.0 / eps))
    m_hi = math.exp(mu2) / params.class_probs[1] * (float(m_z[1]) + delta_m)
    m_lo = math.exp(mu3) / params.class_probs[2] * max(0.0, float(m_z[2]) - delta_m)
    v_z1 = max(0.0, _tau(params, 1) * (m_hi - m_lo) / (mu2 - mu3))
    if s_z1 > 0.0 and s_x1 > 0.0:
        ratio = min(0.5, v_z1 / s_z1)
        phi_x = min(0.5, ratio + _gamma(eps / 21.0, ratio, s_z1, s_x1))
    else:
        phi_x = 0.5
    raw = (
        s_x0
        + s_x1 * (1.0 - h2(phi_x))
        - leak_ec
        - 6.0 * math.log2(21.0 / eps)
        - math.log2(2.0 / params.eps_cor)
    )
    return FiniteKeyBound(s_x0, s_x1, s_z1, v_z1, phi_x, leak_ec, math.floor(raw))
