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
