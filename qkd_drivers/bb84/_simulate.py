"""The quantum part of decoy-state BB84: source, fibre, eavesdropper, detectors.

Theory of operation.  Alice sends weak coherent pulses: per pulse she picks an
intensity class (signal mu, decoy nu, vacuum), a basis (X with probability
``p_x``, else Z) and a bit.  The photon number of a pulse is Poisson.  Each
photon survives the fibre and Bob's detection efficiency with probability
eta (Bob picks his basis like Alice).  A photon that reaches Bob's detectors
goes to the wrong one with probability ``misalignment`` when the bases match,
and with probability 1/2 when they do not.  Each of the two threshold
detectors also fires on its own with probability ``dark_count_prob``.  A
double click gives Bob a random bit.

Two modes give the same statistics:

``simulate_pulses``
    Per-pulse Monte Carlo: every pulse's class, basis, bit and photon number
    is drawn, in chunks, so memory grows with the detections, not the pulses.
    Optional afterpulsing and dead time (which couple pulses in time) are
    only available here.
``simulate_events``
    Event sampling from the exact outcome probabilities of each (intensity,
    Alice basis, Bob basis) class: the number of clicks is binomial, each
    click's class and outcome (right bit, wrong bit, double click) is drawn
    independently given that it clicked, and the pulses without a click are
    only counted.  ``event_counts`` draws the same counts (multinomials per
    class) without materialising any detection.

Eavesdroppers (``Eve``): intercept-resend on a fraction of pulses (Eve at
Alice's door measures in a random basis and resends one photon in her basis
through the fibre); photon-number splitting (Eve at Alice's door keeps one
photon of every multi-photon pulse, blocks single photons, and forwards the
rest over a lossless line, tuned so Bob's signal gain stays as expected);
beam splitting (Eve keeps the photons the fibre would lose: Bob sees no
change).  The decoy-state analysis is what exposes the PNS attack.

Randomness always comes from the ``numpy.random.Generator`` passed in.
"""

from __future__ import annotations

import dataclasses
import heapq
import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from ._params import Bb84Params, Bb84ParamsError

U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]
F64 = npt.NDArray[np.float64]

X, Z = 0, 1  # basis labels: X is the key basis, Z the test basis
SIGNAL, DECOY, VACUUM = 0, 1, 2  # intensity classes
DEFAULT_CHUNK = 1 << 20

EveKind = Literal["none", "intercept-resend", "pns", "beam-splitting"]


@dataclasses.dataclass(frozen=True, slots=True)
class Eve:
    """An eavesdropper model; ``fraction`` is the share of pulses attacked (intercept-resend)."""

    kind: EveKind = "none"
    fraction: float = 1.0

    def __str__(self) -> str:
        if self.kind == "intercept-resend":
            return f"intercept-resend={self.fraction:g}"
        return self.kind


NO_EVE = Eve()


def parse_eve(spec: str | None) -> Eve:
    """Parse ``intercept-resend=F``, ``pns``, ``beam-splitting`` or ``none``.

    Raises ``Bb84ParamsError`` naming the accepted forms.
    """
    if spec is None or spec in ("", "none"):
        return NO_EVE
    if spec == "pns":
        return Eve("pns")
    if spec == "beam-splitting":
        return Eve("beam-splitting")
    name, sep, value = spec.partition("=")
    if name in ("intercept-resend", "ir"):
        try:
            fraction = float(value) if sep else 1.0
        except ValueError:
            fraction = -1.0
        if 0.0 <= fraction <= 1.0:
            return Eve("intercept-resend", fraction)
    raise Bb84ParamsError(
        f"eve {spec!r} unknown (use intercept-resend=F with 0 <= F <= 1, pns, "
        "beam-splitting or none)"
    )


@dataclasses.dataclass(frozen=True, slots=True)
class DetectionRecord:
    """What Alice and Bob hold after the quantum phase: one entry per pulse Bob detected.

    ``sent`` counts the pulses of each intensity class.  Bit arrays are
    secret; ``repr`` shows only sizes.
    """

    n_pulses: int
    sent: I64
    intensity: U8 = dataclasses.field(repr=False)
    alice_basis: U8 = dataclasses.field(repr=False)
    bob_basis: U8 = dataclasses.field(repr=False)
    alice_bit: U8 = dataclasses.field(repr=False)
    bob_bit: U8 = dataclasses.field(repr=False)
    double_clicks: int = 0

    @property
    def detections(self) -> int:
        return int(self.intensity.size)


# ---------------------------------------------------------------------------
# Eve's photon-number-splitting strategy.


def _poisson_pmf(mu: float, nmax: int) -> F64:
    n = np.arange(nmax + 1, dtype=np.float64)
    if mu <= 0:
        unit = np.zeros(nmax + 1, dtype=np.float64)
        unit[0] = 1.0
        return unit
    logp = -mu + n * math.log(mu) - np.array([math.lgamma(k + 1.0) for k in range(nmax + 1)])
    pmf: F64 = np.exp(logp)
    return pmf


def _nmax(mu: float) -> int:
    return int(mu + 12.0 * math.sqrt(mu) + 30.0)


def _pns_forwarded_pmf(pmf: F64, block: float) -> F64:
    """Photon numbers Eve forwards: single photons blocked w.p. ``block``, one photon kept."""
    out = np.zeros_like(pmf)
    out[0] = pmf[0] + block * pmf[1]
    out[1] = (1.0 - block) * pmf[1]
    out[1:-1] += pmf[2:]
    return out


def pns_strategy(params: Bb84Params, distance_km: float) -> tuple[float, float]:
    """Eve's (block probability for single photons, line transmittance) for PNS.

    She keeps Bob's signal gain at its expected value: first by blocking
    single photons, then, if multi-photon pulses alone over a lossless line
    would give too many clicks, by attenuating her line too.
    """
    eta = params.transmittance(distance_km)
    target = 1.0 - math.exp(-params.mu * eta)
    pmf = _poisson_pmf(params.mu, _nmax(params.mu))
    m = np.arange(pmf.size, dtype=np.float64)

    def gain(block: float, line: float) -> float:
        fwd = _pns_forwarded_pmf(pmf, block)
        return float(np.sum(fwd * (1.0 - (1.0 - line * params.eta_bob) ** m)))

    if gain(1.0, 1.0) <= target:
        g_multi, g_single = gain(1.0, 1.0), gain(0.0, 1.0) - gain(1.0, 1.0)
        return min(1.0, max(0.0, 1.0 - (target - g_multi) / g_single)), 1.0
    lo, hi = 0.0, 1.0
    for _ in range(100):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if gain(1.0, mid) < target else (lo, mid)
    return 1.0, (lo + hi) / 2.0


# ---------------------------------------------------------------------------
# Exact outcome probabilities, for event sampling and for tests.


def _outcomes(pmf: F64, t: float, e: float, pd: float) -> F64:
    """P(no click, right only, wrong only, double) for a photon-number distribution.

    Each photon reaches the detectors w.p. ``t`` and then goes to the wrong
    detector w.p. ``e``; each detector also fires on its own w.p. ``pd``.
    """
    n = np.arange(pmf.size, dtype=np.float64)
    a = float(np.sum(pmf * (1.0 - t) ** n))
    no_right = float(np.sum(pmf * (1.0 - t * (1.0 - e)) ** n))
    no_wrong = float(np.sum(pmf * (1.0 - t * e) ** n))
    q = 1.0 - pd
    none = q * q * a
    right = q * no_wrong - none
    wrong = q * no_right - none
    double = 1.0 - q * no_right - q * no_wrong + none
    out = np.array([none, right, wrong, double], dtype=np.float64)
    out = np.clip(out, 0.0, 1.0)
    normalised: F64 = out / out.sum()
    return normalised


def outcome_probabilities(params: Bb84Params, distance_km: float, eve: Eve = NO_EVE) -> F64:
    """Exact outcome probabilities per class, shape (3 intensities, 2 Alice bases, 2 Bob bases, 4).

    The last axis is (no click, Bob's bit right, Bob's bit wrong, double
    click), "right" meaning equal to Alice's bit.
    """
    eta = params.transmittance(distance_km)
    e_d, pd = params.misalignment, params.dark_count_prob
    out = np.zeros((3, 2, 2, 4), dtype=np.float64)
    block, line = pns_strategy(params, distance_km) if eve.kind == "pns" else (0.0, 1.0)
    for k, mu in enumerate(params.intensities):
        pmf = _poisson_pmf(mu, _nmax(mu)) if mu > 0 else np.array([1.0, 0.0])
        for a in (X, Z):
            for b in (X, Z):
                e = e_d if a == b else 0.5
                if eve.kind == "pns":
                    probs = _outcomes(_pns_forwarded_pmf(pmf, block), line * params.eta_bob, e, pd)
                else:
                    probs = _outcomes(pmf, eta, e, pd)
                if eve.kind == "intercept-resend" and eve.fraction > 0.0:
                    resent = np.array([pmf[0], 1.0 - pmf[0]])
                    # Eve's basis equals Alice's: she resends Alice's state.
                    same = _outcomes(resent, eta, e_d if b == a else 0.5, pd)
                    # Eve's basis differs: her bit is random with respect to Alice's.
                    other = _outcomes(resent, eta, e_d if b != a else 0.5, pd)
                    other[1] = other[2] = (other[1] + other[2]) / 2.0
                    ir = 0.5 * same + 0.5 * other
                    probs = (1.0 - eve.fraction) * probs + eve.fraction * ir
                out[k, a, b] = probs
    return out


def class_probabilities(params: Bb84Params) -> F64:
    """P(intensity class, Alice basis, Bob basis), shape (3, 2, 2)."""
    pk = np.array(params.class_probs, dtype=np.float64)
    pb = np.array([params.p_x, 1.0 - params.p_x], dtype=np.float64)
    return pk[:, None, None] * pb[None, :, None] * pb[None, None, :]


# ---------------------------------------------------------------------------
# Event-sampled mode.


def event_counts(
    params: Bb84Params,
    distance_km: float,
    n_pulses: int,
    rng: np.random.Generator,
    *,
    eve: Eve = NO_EVE,
) -> I64:
    """Outcome counts of ``n_pulses`` pulses, shape (3 intensities, 2 Alice bases, 2 Bob bases, 5).

    The last axis is (no click, right bit, wrong bit, double click, double
    clicks whose random bit came out wrong).  Cost does not depend on
    ``n_pulses``: this is what makes the event-sampled mode fast, and it is
    all the decoy analysis needs.
    """
    cls_p = class_probabilities(params).reshape(-1)
    per_class = rng.multinomial(n_pulses, cls_p / cls_p.sum())
    outcome_p = outcome_probabilities(params, distance_km, eve).reshape(12, 4)
    out = np.zeros((12, 5), dtype=np.int64)
    for c in range(12):
        out[c, :4] = rng.multinomial(int(per_class[c]), outcome_p[c] / outcome_p[c].sum())
        out[c, 4] = rng.binomial(int(out[c, 3]), 0.5)
    return out.reshape(3, 2, 2, 5)


# A detection's public labels and its error, packed in one byte: intensity << 4 |
# Alice's basis << 3 | Bob's basis << 2 | double click << 1 | Bob's bit wrong.
_CODES = 64
_NO_CODE = np.uint8(255)
_TABLE_BITS = 16
_EVENT_CHUNK = 1 << 18


def _detection_code_probabilities(
    params: Bb84Params, distance_km: float, eve: Eve
) -> tuple[F64, F64]:
    """(P(pulse is detected with code c) for the 64 codes, P(no click) per intensity)."""
    cls_p = class_probabilities(params)
    joint = (cls_p / cls_p.sum())[..., None] * outcome_probabilities(params, distance_km, eve)
    by_code = np.zeros((4, 2, 2, 4), dtype=np.float64)
    by_code[:3, ..., 0] = joint[..., 1]
    by_code[:3, ..., 1] = joint[..., 2]
    # A double click gives Bob a random bit: right or wrong with probability 1/2 each.
    by_code[:3, ..., 2] = by_code[:3, ..., 3] = joint[..., 3] / 2.0
    return by_code.reshape(_CODES), joint[..., 0].sum(axis=(1, 2))


class _CodeSampler:
    """Independent draws from a distribution over the 64 codes, exact, one table look-up each.

    Marsaglia's table method: code c fills floor(p_c 2^16) entries of a 2^16-entry
    table indexed by 16 random bits; the entries left over (at most 64 in 2^16)
    send the draw to the remainders p_c - floor(p_c 2^16) / 2^16, drawn exactly.
    """

    def __init__(self, p: F64) -> None:
        size = 1 << _TABLE_BITS
        whole = np.floor(p * size)
        self.table = np.full(size, _NO_CODE, dtype=np.uint8)
        filled = np.repeat(np.arange(_CODES, dtype=np.uint8), whole.astype(np.int64))[:size]
        self.table[: filled.size] = filled
        rest = np.clip(p - whole / size, 0.0, None)
        self.rest = rest / rest.sum() if rest.sum() > 0 else rest

    def draw(self, m: int, rng: np.random.Generator) -> U8:
        index = rng.bit_generator.random_raw(-(-m // 4)).view(np.uint16)[:m]
        codes = np.take(self.table, index)
        rare = np.flatnonzero(codes == _NO_CODE)
        if rare.size:
            codes[rare] = rng.choice(_CODES, size=rare.size, p=self.rest)
        return codes


def simulate_events(
    params: Bb84Params,
    distance_km: float,
    n_pulses: int,
    rng: np.random.Generator,
    *,
    eve: Eve = NO_EVE,
) -> DetectionRecord:
    """Draw the detections of ``n_pulses`` pulses (see module docstring).

    The number of detections is binomial; each detection's class and outcome
    are drawn independently from their distribution given a click (which is
    what a multinomial of the classes and outcomes put in random order is),
    and the pulses that gave no click are only counted.  Cost grows with the
    number of detections, not of pulses.  Raises ``Bb84ParamsError`` when
    afterpulsing or dead time is set: they couple pulses in time, which only
    the per-pulse mode models.
    """
    if params.afterpulse_prob > 0.0 or params.dead_time_pulses > 0:
        raise Bb84ParamsError(
            "afterpulse_prob and dead_time_pulses need the per-pulse mode (mode 'pulse')"
        )
    by_code, no_click = _detection_code_probabilities(params, distance_km, eve)
    p_click = float(by_code.sum())
    total = int(rng.binomial(n_pulses, min(p_click, 1.0))) if p_click > 0.0 else 0
    silent = n_pulses - total
    sent = np.zeros(3, dtype=np.int64)
    if silent and no_click.sum() > 0.0:
        sent += rng.multinomial(silent, no_click / no_click.sum())
    intensity = np.empty(total, dtype=np.uint8)
    alice_basis = np.empty(total, dtype=np.uint8)
    bob_basis = np.empty(total, dtype=np.uint8)
    alice_bit = _random_bits(total, rng)
    bob_bit = np.empty(total, dtype=np.uint8)
    doubles = 0
    if total:
        sampler = _CodeSampler(by_code / p_click)
        one = np.uint8(1)
        for lo in range(0, total, _EVENT_CHUNK):
            hi = min(lo + _EVENT_CHUNK, total)
            code = sampler.draw(hi - lo, rng)
            np.right_shift(code, 4, out=intensity[lo:hi])
            np.bitwise_and(code >> 3, one, out=alice_basis[lo:hi])
            np.bitwise_and(code >> 2, one, out=bob_basis[lo:hi])
            np.bitwise_xor(alice_bit[lo:hi], code & one, out=bob_bit[lo:hi])
            doubles += int(np.count_nonzero(code & np.uint8(2)))
        sent += [np.count_nonzero(intensity == k) for k in (SIGNAL, DECOY, VACUUM)]
    return DetectionRecord(
        n_pulses=n_pulses,
        sent=sent,
        intensity=intensity,
        alice_basis=alice_basis,
        bob_basis=bob_basis,
        alice_bit=alice_bit,
        bob_bit=bob_bit,
        double_clicks=doubles,
    )


# ---------------------------------------------------------------------------
# Per-pulse mode.


def _threshold(p: float) -> np.uint64:
    return np.uint64(min(int(p * 2.0**64), 2**64 - 1))


def _bernoulli_positions(n: int, p: float, rng: np.random.Generator) -> I64:
    """Sorted positions of the successes of ``n`` Bernoulli(p) trials."""
    if p <= 0.0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    k = int(rng.binomial(n, p))
    return np.sort(rng.choice(n, size=k, replace=False).astype(np.int64))


@dataclasses.dataclass(slots=True)
class _DetectorState:
    """What Bob's detectors carry from one chunk to the next (dead time, afterpulses)."""

    dead_until: int = -1
    pending: list[tuple[int, int]] = dataclasses.field(default_factory=list)


def _apply_dead_time(
    pos: I64,
    d0: npt.NDArray[np.bool_],
    d1: npt.NDArray[np.bool_],
    base: int,
    end: int,
    params: Bb84Params,
    state: _DetectorState,
    rng: np.random.Generator,
) -> tuple[I64, npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """Sequential pass over the (sparse) clicks: dead time and afterpulses."""
    clicks: dict[int, list[bool]] = {}
    for p, a, b in zip((pos + base).tolist(), d0.tolist(), d1.tolist(), strict=True):
        clicks[p] = [a, b]
    queue = [p for p in clicks]
    heapq.heapify(queue)
    for t, det in state.pending:
        if t not in clicks:
            clicks[t] = [False, False]
            heapq.heappush(queue, t)
        clicks[t][det] = True
    state.pending = []
    out_pos: list[int] = []
    out0: list[bool] = []
    out1: list[bool] = []
    while queue:
        t = heapq.heappop(queue)
        if t >= end:
            # An afterpulse due in a later chunk.
            state.pending.extend((t, d) for d in (0, 1) if clicks[t][d])
            continue
        if t <= state.dead_until:
            continue
        c0, c1 = clicks[t]
        out_pos.append(t)
        out0.append(c0)
        out1.append(c1)
        state.dead_until = t + params.dead_time_pulses
        for det, fired in ((0, c0), (1, c1)):
            if fired and params.afterpulse_prob > 0.0 and rng.random() < params.afterpulse_prob:
                due = state.dead_until + 1
                if due not in clicks:
                    clicks[due] = [False, False]
                    heapq.heappush(queue, due)
                clicks[due][det] = True
    return (
        np.array(out_pos, dtype=np.int64) - base,
        np.array(out0, dtype=np.bool_),
        np.array(out1, dtype=np.bool_),
    )


def _random_bits(n: int, rng: np.random.Generator) -> U8:
    return np.unpackbits(np.frombuffer(rng.bytes((n + 7) // 8), dtype=np.uint8))[:n]


def simulate_pulses(
    params: Bb84Params,
    distance_km: float,
    n_pulses: int,
    rng: np.random.Generator,
    *,
    eve: Eve = NO_EVE,
    chunk: int = DEFAULT_CHUNK,
) -> DetectionRecord:
    """Per-pulse Monte Carlo of ``n_pulses`` pulses (see module docstring)."""
    eta = params.transmittance(distance_km)
    t_bob = eta
    block = 0.0
    if eve.kind == "pns":
        block, line = pns_strategy(params, distance_km)
        t_bob = line * params.eta_bob
    t_signal, t_decoy = _threshold(params.p_mu), _threshold(params.p_mu + params.p_nu)
    t_x = _threshold(params.p_x)
    t_eve = _threshold(eve.fraction)
    t_block = _threshold(block)
    bitgen = rng.bit_generator
    sent = np.zeros(3, dtype=np.int64)
    parts: list[tuple[U8, U8, U8, U8, U8]] = []
    doubles = 0
    state = _DetectorState()
    timed = params.afterpulse_prob > 0.0 or params.dead_time_pulses > 0
    done = 0
    while done < n_pulses:
        c = min(chunk, n_pulses - done)
        raw = bitgen.random_raw(c)
        cls = (raw >= t_signal).astype(np.uint8) + (raw >= t_decoy).astype(np.uint8)
        sent += np.bincount(cls, minlength=3)[:3]
        n = np.zeros(c, dtype=np.int64)
        for k, mu in ((SIGNAL, params.mu), (DECOY, params.nu)):
            where = np.flatnonzero(cls == k)
            n[where] = rng.poisson(mu, where.size)
        a_basis = (bitgen.random_raw(c) >= t_x).astype(np.uint8)
        b_basis = (bitgen.random_raw(c) >= t_x).astype(np.uint8)
        a_bit = _random_bits(c, rng)
        # The state that travels to Bob: Alice's, unless Eve resent her own.
        s_basis, s_bit = a_basis, a_bit
        if eve.kind == "intercept-resend" and eve.fraction > 0.0:
            hit = n > 0
            if eve.fraction < 1.0:
                hit &= bitgen.random_raw(c) < t_eve
            idx = np.flatnonzero(hit)
            e_basis = _random_bits(idx.size, rng)
            e_bit = np.where(e_basis == a_basis[idx], a_bit[idx], _random_bits(idx.size, rng))
            s_basis, s_bit = a_basis.copy(), a_bit.copy()
            s_basis[idx], s_bit[idx] = e_basis, e_bit
            n[idx] = 1
        elif eve.kind == "pns":
            one = np.flatnonzero(n == 1)
            n[one[bitgen.random_raw(one.size) < t_block]] = 0
            n[n >= 2] -= 1
        # Photons through the fibre and into the detectors.
        idx = np.flatnonzero(n)
        m = rng.binomial(n[idx], t_bob)
        keep = m > 0
        idx, m = idx[keep], m[keep]
        p_wrong = np.where(b_basis[idx] == s_basis[idx], params.misalignment, 0.5)
        wrong = rng.binomial(m, p_wrong)
        right = m - wrong
        sb = s_bit[idx].astype(np.bool_)
        ph1 = ((right > 0) & sb) | ((wrong > 0) & ~sb)
        ph0 = ((right > 0) & ~sb) | ((wrong > 0) & sb)
        dark0 = _bernoulli_positions(c, params.dark_count_prob, rng)
        dark1 = _bernoulli_positions(c, params.dark_count_prob, rng)
        pos = np.union1d(np.union1d(idx, dark0), dark1)
        d0 = np.zeros(pos.size, dtype=np.bool_)
        d1 = np.zeros(pos.size, dtype=np.bool_)
        at = np.searchsorted(pos, idx)
        d0[at] |= ph0
        d1[at] |= ph1
        d0[np.searchsorted(pos, dark0)] = True
        d1[np.searchsorted(pos, dark1)] = True
        if timed:
            pos, d0, d1 = _apply_dead_time(pos, d0, d1, done, done + c, params, state, rng)
        both = d0 & d1
        doubles += int(both.sum())
        bob_bit = d1.astype(np.uint8)
        bob_bit[both] = _random_bits(int(both.sum()), rng)
        parts.append((cls[pos], a_basis[pos], b_basis[pos], a_bit[pos], bob_bit))
        done += c
    cat = [np.concatenate([p[i] for p in parts]) for i in range(5)] if parts else []
    empty = np.zeros(0, dtype=np.uint8)
    return DetectionRecord(
        n_pulses=n_pulses,
        sent=sent,
        intensity=cat[0] if cat else empty,
        alice_basis=cat[1] if cat else empty,
        bob_basis=cat[2] if cat else empty,
        alice_bit=cat[3] if cat else empty,
        bob_bit=cat[4] if cat else empty,
        double_clicks=doubles,
    )


def simulate(
    params: Bb84Params,
    distance_km: float,
    n_pulses: int,
    rng: np.random.Generator,
    *,
    eve: Eve = NO_EVE,
    mode: Literal["pulse", "event"] = "event",
) -> DetectionRecord:
    """Run the quantum phase in the chosen mode."""
    if n_pulses < 0:
        raise ValueError(f"n_pulses must be >= 0, got {n_pulses}")
    if mode == "pulse":
        return simulate_pulses(params, distance_km, n_pulses, rng, eve=eve)
    return simulate_events(params, distance_km, n_pulses, rng, eve=eve)
