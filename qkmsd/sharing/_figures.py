"""Figures that say how fairly and how fully an allocation (computed or measured) shares
the links: Jain's index, the worst pair against its equal share and against its max-min
fair rate, and how much link key is put to use."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping

import numpy as np

from ._allocate import allocate
from ._model import LinkId, Pair, PairId, SharingError, build_problem, link_id


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index ``(sum x)^2 / (n * sum x^2)``: 1 when all are equal, 1/n when
    one value has everything.  All zero (or no values) counts as equal: 1."""
    x = np.asarray(list(values), dtype=np.float64)
    square = float(np.sum(x * x))
    if x.size == 0 or square == 0.0:
        return 1.0
    return float(np.sum(x)) ** 2 / (x.size * square)


def equal_shares(
    links: Mapping[tuple[str, str], float], pairs: Iterable[Pair], *, overhead: float = 1.0
) -> dict[PairId, float]:
    """Each pair's equal share of the links, delivered bits/s.

    Every link's key is divided among the routes that cross it, in proportion to their
    pair's weight times the link key they spend per delivered bit; a route gets the
    smallest of its slices along its way, and a pair the sum over its routes (a ``shares``
    pair has one route, all its paths), at most its demand.  Together the equal shares
    are a feasible allocation, and under weighted max-min fairness on single-path routes
    no pair gets less than its equal share.
    """
    problem = build_problem(links, pairs, overhead)
    n_routes = len(problem.route_pair)
    route_weight = problem.weight[problem.route_pair]
    crowd = np.bincount(
        problem.ent_link,
        weights=problem.ent_coef * route_weight[problem.ent_route],
        minlength=len(problem.link_ids),
    )
    slice_per_weight = np.where(crowd > 0, problem.capacity / np.where(crowd > 0, crowd, 1.0), 0)
    route_share = np.full(n_routes, np.inf)
    np.minimum.at(route_share, problem.ent_route, slice_per_weight[problem.ent_link])
    route_share *= route_weight
    shares = np.minimum(problem.pair_rates(route_share), problem.demand)
    return {pair.id: float(shares[p]) for p, pair in enumerate(problem.pairs)}


def utilisation(
    link_loads: Mapping[LinkId, float], links: Mapping[tuple[str, str], float]
) -> dict[LinkId, float]:
    """Each link's load over its rate (0 for a link of rate 0)."""
    rates = {link_id(a, b): rate for (a, b), rate in links.items()}
    return {
        key: (link_loads.get(key, 0.0) / rate if rate > 0 else 0.0)
        for key, rate in sorted(rates.items())
    }


@dataclasses.dataclass(frozen=True)
class SharingFigures:
    """How fairly and fully an allocation shares the links (``docs/sharing.md``).

    Ratios over no pair (every reference 0) are ``None``.
    """

    pairs: int
    jain: float
    """Jain's index over the pairs' rates divided by their weights."""
    worst_over_equal_share: float | None
    """Smallest rate / equal share, over pairs with an equal share above 0."""
    worst_equal_share_pair: PairId | None
    worst_over_max_min: float | None
    """Smallest rate / max-min fair rate, over pairs whose max-min fair rate is above 0."""
    worst_max_min_pair: PairId | None
    link_key_used: float
    """Link key spent, bits/s, summed over links."""
    max_min_link_key_used: float
    """The same for the weighted max-min allocation on the same routes."""
    used_over_max_min: float | None
    """``link_key_used / max_min_link_key_used``."""
    link_utilisation: float
    """``link_key_used`` over the sum of the link rates (0 if they sum to 0)."""


def _worst(
    rates: Mapping[PairId, float], reference: Mapping[PairId, float]
) -> tuple[float | None, PairId | None]:
    worst: tuple[float, PairId] | None = None
    for key in sorted(reference):
        if reference[key] > 0:
            ratio = rates.get(key, 0.0) / reference[key]
            if worst is None or ratio < worst[0]:
                worst = (ratio, key)
    return (None, None) if worst is None else worst


def figures(
    rates: Mapping[PairId, float],
    link_loads: Mapping[LinkId, float],
    links: Mapping[tuple[str, str], float],
    pairs: Iterable[Pair],
    *,
    overhead: float = 1.0,
    max_min: Mapping[PairId, float] | None = None,
    max_min_link_loads: Mapping[LinkId, float] | None = None,
) -> SharingFigures:
    """The figures of an allocation: ``rates`` per pair (missing pairs count as 0) and the
    link key it spends per link, computed by ``allocate`` or measured.

    ``max_min`` and ``max_min_link_loads`` are the weighted max-min allocation of the same
    input (computed here when not given).  Raises ``SharingError`` for a rate of a pair
    not in ``pairs`` or bad input.
    """
    pair_list = list(pairs)
    known = {pair.id: pair for pair in pair_list}
    for key, rate in rates.items():
        if key not in known:
            raise SharingError(f"figures: a rate for {key[0]}->{key[1]}, not a given pair")
        if not (math.isfinite(rate) and rate >= 0):
            raise SharingError(f"figures: rate {rate} of {key[0]}->{key[1]} must be >= 0")
    if max_min is None or max_min_link_loads is None:
        reference = allocate(links, pair_list, policy="max-min", overhead=overhead)
        max_min, max_min_link_loads = reference.rates, reference.link_loads
    shares = equal_shares(links, pair_list, overhead=overhead)
    worst_equal, worst_equal_pair = _worst(rates, shares)
    worst_mm, worst_mm_pair = _worst(rates, max_min)
    used = float(sum(link_loads.values()))
    mm_used = float(sum(max_min_link_loads.values()))
    total_rate = float(sum({link_id(a, b): r for (a, b), r in links.items()}.values()))
    return SharingFigures(
        pairs=len(known),
        jain=jain_index(rates.get(key, 0.0) / pair.weight for key, pair in sorted(known.items())),
        worst_over_equal_share=worst_equal,
        worst_equal_share_pair=worst_equal_pair,
        worst_over_max_min=worst_mm,
        worst_max_min_pair=worst_mm_pair,
        link_key_used=used,
        max_min_link_key_used=mm_used,
        used_over_max_min=used / mm_used if mm_used > 0 else None,
        link_utilisation=used / total_rate if total_rate > 0 else 0.0,
    )
