"""Proportional fairness: the route rates that maximise the sum of weight * log(pair rate).

Theory of operation: a log-barrier interior-point method over the route rates ``y``.  For
a barrier weight ``mu`` it maximises, by Newton's method,

    sum_p w_p log(x_p) + mu * (sum_j log y_j + sum_l log(c_l - load_l) + sum_p log(d_p - x_p))

(``x = S y`` the pair rates, the last sum over pairs with a finite demand), then lowers
``mu`` tenfold and starts again from there, until ``mu`` times the number of barrier terms
(a bound on how far the objective is from its optimum) is negligible.  The Hessian is
block-diagonal per pair (a diagonal plus one rank-one term per pair) plus ``A^T D A``
over the links, so each Newton step solves one dense system with one row per link (the
Woodbury identity), whatever the number of pairs.

The result is then made feasible exactly (routes through a link over its rate scaled
down) and whatever key it leaves unused, a sliver set by the last ``mu``, is handed out by
weighted max-min filling from it.  Routes through a link of rate 0 get nothing; a pair
with no other route, or no demand, gets 0 and is left out of the sum.  (Rates and demands
below ``TINY`` of the largest link rate count as 0 in the sum: the filling that follows
gives those pairs what is left.)
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from ._filling import progressive_filling
from ._lp import max_min_routes, repair
from ._model import Floats, Problem, SharingError

MU_START = 1.0
"""The first barrier weight, per unit of pair weight (rates are in units of the largest
link rate)."""
MU_STEP = 0.1
"""Each outer step multiplies the barrier weight by this."""
GAP = 1e-9
"""Stop once the objective is within this fraction of the sum of weights of its optimum."""
TINY = 1e-9
"""Link rates and demands below this fraction of the largest link rate sit out the barrier
method."""
NEWTON_STEPS = 60
"""Newton steps allowed for one barrier weight."""


def _live(problem: Problem) -> tuple[np.ndarray, np.ndarray]:
    """Routes through no link of rate (near) 0, and pairs with a demand and such a route.

    Rates and demands below ``TINY`` of the largest rate are left out of the barrier
    method (their logarithms would swamp it); the filling that follows gives such pairs
    what they can still have.
    """
    floor = TINY * float(problem.capacity.max(initial=0.0))
    dead = np.zeros(len(problem.route_pair), dtype=bool)
    dead[problem.ent_route[problem.capacity[problem.ent_link] <= floor]] = True
    has_route = np.bincount(problem.route_pair, weights=~dead, minlength=len(problem.pairs)) > 0
    live_pair = has_route & (problem.demand > floor)
    return ~dead & live_pair[problem.route_pair], live_pair


def proportional_routes(problem: Problem) -> Floats:
    """Route rates, proportionally fair on the routes given, then filled."""
    live_route, live_pair = _live(problem)
    y = np.zeros(len(problem.route_pair))
    if live_route.any():
        y[live_route] = _interior_point(problem, live_route, live_pair)
    y = repair(problem, y)
    if problem.single_route:
        return progressive_filling(problem, floor=y)
    return max_min_routes(problem, floor=problem.pair_rates(y))


def _interior_point(problem: Problem, live_route: np.ndarray, live_pair: np.ndarray) -> Floats:
    """The barrier method on the live routes; their rates, unscaled."""
    scale = float(problem.capacity.max())
    routes = np.flatnonzero(live_route)
    pair_new = np.cumsum(live_pair) - 1
    rp = pair_new[problem.route_pair[routes]]  # live pair of each live route
    n_pairs, n_routes = int(live_pair.sum()), len(routes)
    route_new = np.full(len(problem.route_pair), -1)
    route_new[routes] = np.arange(n_routes)
    keep = live_route[problem.ent_route]
    used_links = np.unique(problem.ent_link[keep])
    link_new = np.full(len(problem.link_ids), -1)
    link_new[used_links] = np.arange(len(used_links))
    a = sp.csr_matrix(
        (
            problem.ent_coef[keep],
            (link_new[problem.ent_link[keep]], route_new[problem.ent_route[keep]]),
        ),
        shape=(len(used_links), n_routes),
    )
    at = a.T.tocsr()
    cap = problem.capacity[used_links] / scale
    w = problem.weight[live_pair]
    demand = problem.demand[live_pair] / scale
    capped = np.isfinite(demand)
    single = n_routes == n_pairs
    s_t = sp.csr_matrix((np.ones(n_routes), (np.arange(n_routes), rp)), shape=(n_routes, n_pairs))
    n_links = len(cap)
    if single:
        # Every (link, link) pair two entries of one route make: M = A diag(b) A^T is
        # one weighted bincount over them, cheaper than a sparse product each step.
        e_route = route_new[problem.ent_route[keep]]
        e_link = link_new[problem.ent_link[keep]]
        e_coef = problem.ent_coef[keep]
        order = np.argsort(e_route, kind="stable")
        e_route, e_link, e_coef = e_route[order], e_link[order], e_coef[order]
        per_route = np.bincount(e_route, minlength=n_routes)
        start = np.concatenate([[0], np.cumsum(per_route)[:-1]])
        reps = per_route[e_route]
        left = np.repeat(np.arange(len(e_route)), reps)
        offset = np.arange(len(left)) - np.repeat(np.cumsum(reps) - reps, reps)
        right = start[e_route[left]] + offset
        gram_cell = e_link[left] * n_links + e_link[right]
        by_cell = np.argsort(gram_cell, kind="stable")
        gram_coef = (e_coef[left] * e_coef[right])[by_cell]
        gram_route = e_route[left][by_cell]
        cells, cell_start = np.unique(gram_cell[by_cell], return_index=True)

    def pair_sum(v: Floats) -> Floats:
        return np.asarray(np.bincount(rp, weights=v, minlength=n_pairs), dtype=np.float64)

    def objective(y: Floats, mu: float) -> float:
        x = pair_sum(y)
        slack = cap - a @ y
        room = demand[capped] - x[capped]
        if y.min() <= 0 or slack.min() <= 0 or (room.size and room.min() <= 0):
            return -np.inf
        barrier = np.log(y).sum() + np.log(slack).sum() + np.log(room).sum()
        return float(w @ np.log(x) + mu * barrier)

    # A strictly feasible start: half of each route's equal share (every link's rate split
    # among the routes crossing it in proportion to weight), within half of each demand.
    route_w = w[rp]
    crowd = np.asarray(a @ route_w).ravel()
    share = np.full(n_routes, np.inf)
    np.minimum.at(share, a.tocoo().col, (cap / crowd)[a.tocoo().row])
    y = 0.5 * share * route_w
    if capped.any():
        over = np.where(capped, pair_sum(y) / (0.5 * np.where(capped, demand, 1.0)), 0.0)
        y = y / np.maximum(over, 1.0)[rp]

    n_terms = n_routes + len(cap) + int(capped.sum())
    mu = MU_START * float(w.mean())
    mu_end = GAP * float(w.sum()) / n_terms
    while True:
        for _ in range(NEWTON_STEPS):
            x = pair_sum(y)
            slack = cap - a @ y
            room = np.where(capped, demand - x, np.inf)
            grad = (w / x - mu / room)[rp] + mu / y - at @ (mu / slack)
            d_y = mu / y**2
            d_x = w / x**2 + mu / room**2
            d_s = mu / slack**2
            inv_dy = 1.0 / d_y
            if single:
                # B is diagonal: no rank-one terms left to subtract.
                inv_b = 1.0 / (d_y + d_x[rp])
                gamma = np.zeros(n_pairs)
                flat = np.zeros(n_links * n_links)
                flat[cells] = np.add.reduceat(gram_coef * inv_b[gram_route], cell_start)
                m = flat.reshape(n_links, n_links)
            else:
                inv_b = inv_dy
                kappa = pair_sum(inv_dy)
                gamma = d_x / (1.0 + d_x * kappa)
                ad = a.multiply(inv_dy[np.newaxis, :]).tocsr()
                u = (ad @ s_t).tocsr()
                m = (ad @ at).toarray() - (u.multiply(gamma[np.newaxis, :]) @ u.T).toarray()

            def b_inv(v: Floats, inv_b: Floats = inv_b, gamma: Floats = gamma) -> Floats:
                t = inv_b * v
                result: Floats = t - inv_b * (gamma * pair_sum(t))[rp]
                return result

            m[np.diag_indices_from(m)] += 1.0 / d_s
            try:
                factor = scipy.linalg.cho_factor(m, check_finite=False)
            except scipy.linalg.LinAlgError:
                factor = None
            bg = b_inv(grad)
            if factor is not None:
                step = bg - b_inv(at @ scipy.linalg.cho_solve(factor, a @ bg, check_finite=False))
            else:
                step = bg - b_inv(at @ np.linalg.lstsq(m, a @ bg, rcond=None)[0])
            decrement = float(grad @ step)
            if not np.isfinite(decrement):
                raise SharingError("proportional: the interior-point step is not finite")
            # Intermediate stages need only be near their centre (within a fraction of
            # their own gap, mu per barrier term); the last one is polished.
            enough = 1e-12 * float(w.sum()) if mu <= mu_end else 1e-2 * mu * n_terms
            if decrement < enough:
                break
            # Largest step that keeps every barrier's argument positive.
            limit = np.inf
            for value, change in (
                (y, step),
                (slack, -(a @ step)),
                (room[capped], -pair_sum(step)[capped]),
            ):
                falling = change < 0
                if falling.any():
                    limit = min(limit, float(np.min(-value[falling] / change[falling])))
            alpha = min(1.0, 0.99 * limit)
            base = objective(y, mu)
            while alpha > 1e-12 and objective(y + alpha * step, mu) < base + 0.01 * alpha * (
                decrement
            ):
                alpha *= 0.5
            if alpha <= 1e-12:
                break
            y = y + alpha * step
        if mu <= mu_end:
            break
        mu = max(mu * MU_STEP, mu_end)
    rates: Floats = y * scale
    return rates
