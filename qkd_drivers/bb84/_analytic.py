"""Asymptotic key rates of decoy-state BB84 and the PLOB bound.

Conventions (they reproduce Ma, Qi, Zhao and Lo, PRA 72, 012326 (2005), with
the GYS channel):

- eta = eta_Bob * 10^(-alpha L / 10);  Y_n = Y0 + 1 - (1 - eta)^n
- Q_mu = Y0 + 1 - exp(-eta mu);  E_mu Q_mu = Y0 / 2 + e_d (1 - exp(-eta mu))
- GLLP: R = q { -Q_mu f h(E_mu) + Q_1 [1 - h(e_1)] },  q = 1/2 (standard BB84
  sifting: half the detections survive, both bases make key)
- infinite decoys: Q_1 and e_1 exact; vacuum + weak decoy: the Lo–Ma–Chen
  lower bound on Y_1 and upper bound on e_1 from the expected gains.

All rates are per pulse sent.  Functions are deterministic, pure and cheap.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from ._params import Bb84Params


def h2(p: float) -> float:
    """Binary entropy in bits; 0 at p <= 0 or p >= 1."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    return -p * math.log2(p) - (1.0 - p) * math.log2(1.0 - p)


def gain(eta: float, mu: float, y0: float) -> float:
    """Expected gain Q_mu of a coherent pulse of mean photon number ``mu``."""
    return y0 + 1.0 - math.exp(-eta * mu)


def qber(eta: float, mu: float, y0: float, e_d: float) -> float:
    """Expected QBER E_mu of the detections of intensity ``mu``."""
    q = gain(eta, mu, y0)
    return (0.5 * y0 + e_d * (1.0 - math.exp(-eta * mu))) / q


def gllp_rate(q1: float, e1: float, q_mu: float, e_mu: float, f: float, *, q: float = 0.5) -> float:
    """GLLP key rate per pulse from single-photon gain/error and signal gain/QBER.

    Negative when no key can be distilled (callers clip as they see fit).
    """
    return q * (-q_mu * f * h2(e_mu) + q1 * (1.0 - h2(e1)))


def infinite_decoy_rate(
    params: Bb84Params, distance_km: float, mu: float | None = None, *, q: float = 0.5
) -> float:
    """Asymptotic rate with infinitely many decoys (Q_1, e_1 known exactly)."""
    mu = params.mu if mu is None else mu
    eta = params.transmittance(distance_km)
    y0 = params.y0
    y1 = y0 + eta - y0 * eta
    e1 = (0.5 * y0 + params.misalignment * eta) / y1
    q1 = y1 * mu * math.exp(-mu)
    return gllp_rate(
        q1, e1, gain(eta, mu, y0), qber(eta, mu, y0, params.misalignment), params.f_ec, q=q
    )


def vacuum_weak_decoy_bounds(
    mu: float, nu: float, q_mu: float, q_nu: float, e_nu: float, y0: float
) -> tuple[float, float]:
    """Lo–Ma–Chen (vacuum + weak decoy) lower bound on Y_1 and upper bound on e_1.

    ``q_mu``, ``q_nu``: gains of signal and decoy; ``e_nu``: QBER of the decoy;
    ``y0``: yield of the vacuum.  Returns ``(y1_lower, e1_upper)``; ``y1_lower``
    may be <= 0 when the data admit no single-photon contribution, and then
    ``e1_upper`` is 0.5.
    """
    y1 = (mu / (mu * nu - nu * nu)) * (
        q_nu * math.exp(nu)
        - q_mu * math.exp(mu) * nu * nu / (mu * mu)
        - (mu * mu - nu * nu) / (mu * mu) * y0
    )
    if y1 <= 0.0:
        return y1, 0.5
    e1 = (e_nu * q_nu * math.exp(nu) - 0.5 * y0) / (y1 * nu)
    return y1, min(0.5, max(0.0, e1))


def vacuum_weak_decoy_rate(
    params: Bb84Params,
    distance_km: float,
    mu: float | None = None,
    nu: float | None = None,
    *,
    q: float = 0.5,
) -> float:
    """Asymptotic rate with a vacuum and one weak decoy (expected, noise-free data)."""
    mu = params.mu if mu is None else mu
    nu = params.nu if nu is None else nu
    eta = params.transmittance(distance_km)
    y0, e_d = params.y0, params.misalignment
    q_mu, q_nu = gain(eta, mu, y0), gain(eta, nu, y0)
    y1, e1 = vacuum_weak_decoy_bounds(mu, nu, q_mu, q_nu, qber(eta, nu, y0, e_d), y0)
    if y1 <= 0.0:
        return 0.0
    return gllp_rate(y1 * mu * math.exp(-mu), e1, q_mu, qber(eta, mu, y0, e_d), params.f_ec, q=q)


def _golden_max(fn: Callable[[float], float], lo: float, hi: float, tol: float = 1e-6) -> float:
    g = (math.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = fn(c), fn(d)
    while b - a > tol:
        if fc > fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = fn(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = fn(d)
    return (a + b) / 2.0


def optimal_mu(
    params: Bb84Params, distance_km: float, *, decoys: str = "infinite", q: float = 0.5
) -> float:
    """The signal intensity that maximises the asymptotic rate at ``distance_km``."""
    if decoys == "infinite":
        return _golden_max(lambda m: infinite_decoy_rate(params, distance_km, m, q=q), 0.01, 1.5)
    return _golden_max(
        lambda m: vacuum_weak_decoy_rate(params, distance_km, m, q=q), params.nu + 0.01, 1.5
    )


def optimised_rate(
    params: Bb84Params, distance_km: float, *, decoys: str = "infinite", q: float = 0.5
) -> float:
    """The asymptotic rate at the optimal signal intensity (0 when none is positive)."""
    mu = optimal_mu(params, distance_km, decoys=decoys, q=q)
    if decoys == "infinite":
        rate = infinite_decoy_rate(params, distance_km, mu, q=q)
    else:
        rate = vacuum_weak_decoy_rate(params, distance_km, mu, q=q)
    return max(0.0, rate)


def max_distance(params: Bb84Params, *, decoys: str = "infinite", q: float = 0.5) -> float:
    """The distance (km) beyond which the optimised asymptotic rate is zero."""
    lo, hi = 0.0, 400.0
    while hi - lo > 0.01:
        mid = (lo + hi) / 2.0
        if optimised_rate(params, mid, decoys=decoys, q=q) > 0.0:
            lo = mid
        else:
            hi = mid
    return lo


def plob_bound(transmittance: float) -> float:
    """The PLOB repeaterless bound -log2(1 - eta), in bits per channel use."""
    if transmittance >= 1.0:
        return math.inf
    return -math.log2(1.0 - transmittance)


def plob_bound_at(params: Bb84Params, distance_km: float) -> float:
    """PLOB bound of the fibre alone (detector efficiency is not part of the channel)."""
    return plob_bound(10.0 ** (-params.attenuation_db_per_km * distance_km / 10.0))
