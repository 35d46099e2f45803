"""Link state, the cost of one relay hop over a link, and the link key a relay spends.

The cost of the hop X -> Y over link X~Y (``link_cost``)::

    E    = max(B_X - R, 0) + r * T        key X can spend on hops to Y within the horizon
    f    = min(q / q_max, F)              QBER as a fraction of the link's abort threshold
    cost = 1                              the hop itself
         + w_key  * C / (C + E)           scarce key
         + w_qber * f / (1 - f)           QBER near its threshold
         + w_fail * min(n, n_max)         recent relay failures

with ``B_X`` the ready key of the link that X owns (a hop X -> Y pads with X's half of the
link), ``R`` the reserve relays leave to the link's own SAE pairs, ``r`` the secret key
rate (bits/s; counted as 0 when ``q >= q_max``, since the devices then make no key), ``T``
the horizon, ``C`` the comfort level, ``n`` the recent relay failures over the link. A link
that is down has no cost: it is not usable.

Why this shape:

- **Hops count.** A relay of N bits spends N bits of pad, a 32-byte confirmation key riding
  with the key, and a 32-byte one-time Poly1305 key on *every* hop, and every intermediate
  node sees the key. So the base cost of a hop is 1, and among healthy links the route with
  the fewest hops wins: the cost of a route is the key it spends, priced per link.
- **Scarce key costs more.** A link's key is also what its own SAE pairs are served from.
  Draining a nearly empty link to carry other nodes' relays delays its own pairs, and a
  relay that finds less than N bits above the reserve fails outright. ``C / (C + E)`` is
  0.5 at ``E = C``, tends to 1 as the link runs dry and to 0 on a full link, so relays
  spread towards links with key to spare, and the steepest change is near empty, where it
  matters. The key rate enters through ``E``: a link that makes key fast refills soon, so
  it is less scarce than its level alone says. The term is bounded (at most ``w_key``) so a
  dry link still gives a route when it is the only one; the relay over it then fails fast
  and the next route is tried.
- **QBER near its threshold.** A QKD link whose QBER approaches its threshold makes key
  ever more slowly and stops at the threshold; its stored key stays secret, but a route
  over it is about to lose its supply. The odds ``f / (1 - f)`` are small for a clean link
  (0.33 at a quarter of the threshold) and rise steeply near it (9 at ``f = 0.9``, where
  it is capped).
- **Recent failures.** A link over which relays recently failed (refused pads, time-outs)
  is likely to fail again soon; each failure adds ``w_fail`` hops, capped so the cost
  stays bounded.

Every cost is finite and at least 1; the largest is ``1 + w_key + w_qber * 9 + w_fail *
n_max`` (24 with the defaults).
"""

from __future__ import annotations

import math
from typing import Annotated

import msgspec

from protocol import RELAY_CONFIRM_KEY_BYTES

MAC_KEY_BYTES = 32
"""One-time Poly1305 key per hop (RFC 8439: 32 bytes), taken from the same link as the pad."""

HOP_OVERHEAD_BITS = (RELAY_CONFIRM_KEY_BYTES + MAC_KEY_BYTES) * 8
"""Link key a hop spends beyond the relayed key itself: the pad over the confirmation key
that rides with every relayed key, and the hop's MAC key (512 bits)."""

QBER_FRACTION_CAP = 0.9
"""``F``: QBER counts as at most this fraction of its threshold (keeps the cost finite)."""

NonNegInt = Annotated[int, msgspec.Meta(ge=0)]
NonNegFloat = Annotated[float, msgspec.Meta(ge=0.0)]


class LinkState(msgspec.Struct, frozen=True, kw_only=True):
    """What a node reports about one of its QKD links, as the routing cost reads it.

    ``bits_a`` is the ready key of the link owned by ``a`` (it pads hops ``a -> b``),
    ``bits_b`` the key owned by ``b``.  A reporter that knows only one level for the link
    gives the smaller of the two ends' levels for both.
    """

    a: str
    b: str
    bits_a: NonNegInt
    bits_b: NonNegInt
    key_rate_bps: NonNegFloat = 0.0
    """Secret key rate of the link, bits per second."""
    qber: Annotated[float, msgspec.Meta(ge=0.0, le=1.0)] = 0.0
    qber_threshold: Annotated[float, msgspec.Meta(gt=0.0, le=0.5)] = 0.11
    """QBER above which the link's devices abort (0.11: BB84's usual bound)."""
    relay_failures: NonNegInt = 0
    """Relays over this link that failed recently (the reporter decides the window)."""
    up: bool = True

    def __post_init__(self) -> None:
        if self.a == self.b:
            raise ValueError(f"link state {self.a}~{self.b}: a link joins two different nodes")


class CostParams(msgspec.Struct, frozen=True, kw_only=True):
    """The parameters of ``link_cost``; the defaults are the relay's own defaults."""

    reserve_bits: NonNegInt = 65536
    """``R``: key a relay never takes from a link (``[relay] link_reserve_bits``)."""
    horizon_s: NonNegFloat = 10.0
    """``T``: key the link makes within this many seconds counts as available."""
    comfort_bits: Annotated[int, msgspec.Meta(gt=0)] = 262144
    """``C``: spendable key at which the key term is half its weight (``[relay]
    high_bits``, the level an end-to-end pool is filled to)."""
    key_weight: NonNegFloat = 4.0
    """``w_key``: extra cost, in hops, of a link with no spendable key."""
    qber_weight: NonNegFloat = 1.0
    """``w_qber``: extra cost, in hops, of a link at half its QBER threshold."""
    failure_weight: NonNegFloat = 1.0
    """``w_fail``: extra cost, in hops, of each recent relay failure."""
    max_failures: NonNegInt = 10
    """``n_max``: failures beyond this many add nothing more."""


DEFAULT_PARAMS = CostParams()


def link_cost(state: LinkState, sender: str, params: CostParams = DEFAULT_PARAMS) -> float | None:
    """The cost of a hop from ``sender`` over the link, or None when the link is down.

    ``sender`` is ``state.a`` or ``state.b``: the end whose owned key pads the hop.
    Raises ``ValueError`` for any other node.  The formula is in the module docstring.
    """
    if sender == state.a:
        owned = state.bits_a
    elif sender == state.b:
        owned = state.bits_b
    else:
        raise ValueError(f"{sender} is not an end of link {state.a}~{state.b}")
    if not state.up:
        return None
    fraction = min(state.qber / state.qber_threshold, QBER_FRACTION_CAP)
    rate = state.key_rate_bps if state.qber < state.qber_threshold else 0.0
    spendable = max(owned - params.reserve_bits, 0) + rate * params.horizon_s
    key = params.key_weight * params.comfort_bits / (params.comfort_bits + spendable)
    qber = params.qber_weight * fraction / (1.0 - fraction)
    failures = params.failure_weight * min(state.relay_failures, params.max_failures)
    cost = 1.0 + key + qber + failures
    assert math.isfinite(cost)
    return cost


def hop_key_bits(n_bits: int) -> int:
    """Link key one hop of a relay of an ``n_bits`` key spends: pad and MAC key, in bits."""
    if n_bits < 0:
        raise ValueError(f"a key of {n_bits} bits")
    return n_bits + HOP_OVERHEAD_BITS


def relay_key_bits(hops: int, n_bits: int) -> int:
    """Link key, in bits over all links, that relaying an ``n_bits`` key over ``hops`` hops
    spends.  A key split over several paths spends this for each share's path."""
    if hops < 0:
        raise ValueError(f"a route of {hops} hops")
    return hops * hop_key_bits(n_bits)
