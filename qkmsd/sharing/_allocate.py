"""``allocate``: one call from links, pairs and a policy to per-pair relay budgets."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from ._filling import progressive_filling
from ._lp import max_min_routes, max_throughput
from ._model import (
    POLICIES,
    Allocation,
    Pair,
    Policy,
    SharingError,
    build_problem,
    to_allocation,
)
from ._proportional import proportional_routes


def allocate(
    links: Mapping[tuple[str, str], float],
    pairs: Iterable[Pair],
    *,
    policy: Policy = "max-min",
    overhead: float = 1.0,
) -> Allocation:
    """Share the links' key rates among the pairs under ``policy``.

    ``links`` maps each QKD link (its two node ids, either order) to the key it produces,
    bits/s.  ``overhead`` is the link key each hop spends per delivered bit
    (``overhead_for(key_bits)``).  Policies (``docs/sharing.md`` defines them):

    - ``max-min``: weighted max-min fairness over the routes given;
    - ``proportional``: the most sum of ``weight * log(rate)``;
    - ``throughput``: the most delivered key, ties broken by weighted max-min fairness.

    Every policy respects each pair's demand and no link's load exceeds its rate; key no
    pair can use under its policy's optimum is handed out to pairs that want more
    (work-conserving).  The result depends only on the input's content, not its order.
    Raises ``SharingError`` for an unknown policy or bad input (the message names it), or
    if a solver fails.
    """
    if policy not in POLICIES:
        raise SharingError(f"policy {policy!r} unknown (known: {', '.join(POLICIES)})")
    problem = build_problem(links, pairs, overhead)
    if not problem.pairs:
        y = np.zeros(0)
    elif policy == "max-min":
        y = progressive_filling(problem) if problem.single_route else max_min_routes(problem)
    elif policy == "proportional":
        y = proportional_routes(problem)
    else:
        y = max_throughput(problem)
    return to_allocation(problem, policy, y)


ARC_SEPARATOR = "\x00"
"""Joins an arc's two node ids into the name of the point that stands for it (no node id
holds it)."""


def allocate_directed(
    arcs: Mapping[tuple[str, str], float],
    pairs: Iterable[Pair],
    *,
    policy: Policy = "max-min",
    overhead: float = 1.0,
) -> Allocation:
    """``allocate`` over directed arcs: each direction of a link is a resource of its own.

    A relay hop from X to Y pads with the blocks of link X~Y that X owns, and a key X cuts
    for a neighbour Y comes from the same blocks: each end spends its own half of the link.
    ``arcs`` maps ``(X, Y)`` to the key X may spend on the link towards Y (bits/s); a link
    given one way only (``(A, B)`` with no ``(B, A)``) is taken as two arcs of half its
    rate each.  ``link_loads`` of the result are keyed by arc.

    Done by standing a point for every arc between its two nodes: a path ``X, Y`` crosses
    ``X``-``X>Y`` and ``X>Y``-``Y``, two links of the arc's rate that only that arc uses.
    """
    rates: dict[tuple[str, str], float] = {}
    for (a, b), rate in arcs.items():
        if (b, a) in arcs:
            rates[(a, b)] = rate
        else:
            rates[(a, b)] = rates[(b, a)] = rate / 2
    for a, b in rates:
        if ARC_SEPARATOR in a or ARC_SEPARATOR in b:
            raise SharingError(f"link {a!r}-{b!r}: a node id holds a NUL character")
    links: dict[tuple[str, str], float] = {}
    for (a, b), rate in rates.items():
        mid = a + ARC_SEPARATOR + b
        links[(a, mid)] = rate
        links[(mid, b)] = rate
    split: list[Pair] = []
    for pair in pairs:
        paths = []
        for path in pair.paths:
            stretched = [path[0]]
            for x, y in zip(path, path[1:], strict=False):
                stretched += [x + ARC_SEPARATOR + y, y]
            paths.append(tuple(stretched))
        split.append(
            Pair(
                pair.source,
                pair.destination,
                tuple(paths),
                demand=pair.demand,
                weight=pair.weight,
                shares=pair.shares,
                overhead=pair.overhead,
            )
        )
    result = allocate(links, split, policy=policy, overhead=overhead)
    loads: dict[tuple[str, str], float] = {}
    for (a, b), load in result.link_loads.items():
        for end, other in ((a, b), (b, a)):
            x, sep, y = end.partition(ARC_SEPARATOR)
            if sep and other == y:  # the link from the arc's point to its head
                loads[(x, y)] = load
    return Allocation(
        policy=result.policy,
        overhead=result.overhead,
        rates=result.rates,
        path_rates=result.path_rates,
        link_loads=loads,
    )
