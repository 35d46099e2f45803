"""Weighted progressive filling for pairs with one route each, vectorised with numpy.

Theory of operation: every pair still *active* grows at the speed of its weight.  Each
round finds the first event, a link running out of key or an active pair reaching its
demand, moves every active pair up to it at once, and freezes the pairs that reached their
demand and every pair crossing a link now saturated.  Each round saturates a link or
satisfies a pair, so there are at most (links + pairs) rounds, each linear in the
(route, link) entries still active.  Started from zero this is weighted max-min
fairness; started from a feasible floor it hands out what the floor left unused, fairly.
"""

from __future__ import annotations

import numpy as np

from ._model import Floats, Problem

REL_TOL = 1e-10
"""A link with less than this fraction of its rate left is saturated; a pair this close
to its demand has reached it."""


def saturated(problem: Problem, loads: Floats) -> np.ndarray:
    """Links whose load is at their rate (within ``REL_TOL``)."""
    cap = problem.capacity
    mask: np.ndarray = cap - loads <= REL_TOL * cap + 1e-300
    return mask


def progressive_filling(problem: Problem, floor: Floats | None = None) -> Floats:
    """Route rates (one route per pair) by weighted progressive filling from ``floor``."""
    assert problem.single_route
    n_pairs = len(problem.pairs)
    weight, demand, cap = problem.weight, problem.demand, problem.capacity
    x = np.zeros(n_pairs) if floor is None else np.minimum(floor.astype(np.float64), demand)
    resid = np.maximum(cap - problem.link_loads(x), 0.0)
    dem_tol = REL_TOL * np.where(np.isfinite(demand), demand, 0.0)

    frozen = demand - x <= dem_tol
    sat = resid <= REL_TOL * cap
    frozen[problem.ent_route[sat[problem.ent_link]]] = True
    keep = ~frozen[problem.ent_route]
    e_link, e_pair = problem.ent_link[keep], problem.ent_route[keep]
    e_speed = problem.ent_coef[keep] * weight[e_pair]
    active = np.flatnonzero(~frozen)

    while active.size:
        speed = np.bincount(e_link, weights=e_speed, minlength=len(cap))
        used = np.flatnonzero(speed > 0)
        ratio = resid[used] / speed[used]
        first_link = int(np.argmin(ratio))
        gap = (demand[active] - x[active]) / weight[active]
        first_pair = int(np.argmin(gap))
        dt = min(float(ratio[first_link]), float(gap[first_pair]))
        x[active] += weight[active] * dt
        resid = np.maximum(resid - speed * dt, 0.0)
        sat = np.zeros(len(cap), dtype=bool)
        sat[used[resid[used] <= REL_TOL * cap[used]]] = True
        done = np.zeros(n_pairs, dtype=bool)
        done[active[demand[active] - x[active] <= dem_tol[active]]] = True
        done[e_pair[sat[e_link]]] = True
        if not done[active].any():
            # Rounding left the first event short of its threshold: take it as exact
            # arithmetic would have.
            if gap[first_pair] <= ratio[first_link]:
                done[active[first_pair]] = True
                x[active[first_pair]] = demand[active[first_pair]]
            else:
                done[e_pair[e_link == used[first_link]]] = True
                resid[used[first_link]] = 0.0
        x = np.where(done & (demand - x <= dem_tol), demand, x)
        keep = ~done[e_pair]
        e_link, e_pair, e_speed = e_link[keep], e_pair[keep], e_speed[keep]
        active = active[~done[active]]
    return x
