"""Linear programmes over routes: max-min fairness for pairs that split over several paths,
and the most delivered key.

Theory of operation (weighted max-min over routes, Nace and Pioro's iterated LPs): the
variables are the route rates ``y`` and a level ``t``.  Each *free* pair must get at least
``floor + weight * t``; each *fixed* pair keeps the rate it was fixed at.  One LP finds the
highest level ``t*``.  At ``t*`` some free pairs are *blocking*: none of them can get more
than ``floor + weight * t*`` without another pair going below its own share.  A second LP
finds which: it maximises the sum of bounded extras ``z`` that the candidates get above
``t*``; any candidate with ``z > 0`` is not blocking (the average of feasible points is
feasible, so the non-blocking pairs can all rise at once), and is dropped from the
candidates; when the LP finds no extra for any candidate, they all block and are fixed.
Most levels need no second LP: a free pair whose constraint has a
positive dual value in the level LP is at ``floor + weight * t*`` in every optimal
solution (complementary slackness), so it blocks; those are fixed at once, and the test
LPs run only when the solver reports no such pair.  Then the next level (the same ``t*``
again if some blocking pairs had a zero dual value), until every pair is fixed.  A pair's
demand is a limit of its own, like a private link.  A last LP picks, among the route
splits that give every pair its rate, the one spending least link key (short paths
first).

All LPs run on rates divided by the largest link rate, solved by HiGHS (scipy's
``linprog``): a well-kept solver, deterministic for the same input.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import scipy.sparse as sp

from ._model import Floats, Problem, SharingError

SOLVER_TOL = 1e-10
"""HiGHS's feasibility tolerances (scaled units), below ``FIX_TOL``."""
FIX_TOL = 1e-9
"""Slack (scaled units) allowed below a fixed rate, against the solver's rounding."""
DUAL_TOL = 1e-6
"""A pair's dual value above this fraction of the largest proves it blocking."""
EXTRA_TOL = 1e-7
"""An extra above this (scaled units) proves a pair is not blocking."""


class _Lp:
    """The constraint rows every LP over a problem shares, in scaled units."""

    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        finite = problem.capacity[problem.capacity > 0]
        self.scale = float(finite.max()) if finite.size else 1.0
        n_routes = len(problem.route_pair)
        self.a = sp.csr_matrix(
            (problem.ent_coef, (problem.ent_link, problem.ent_route)),
            shape=(len(problem.link_ids), n_routes),
        )
        self.s = sp.csr_matrix(
            (np.ones(n_routes), (problem.route_pair, np.arange(n_routes))),
            shape=(len(problem.pairs), n_routes),
        )
        self.cap = problem.capacity / self.scale
        self.demand = problem.demand / self.scale
        capped = np.flatnonzero(np.isfinite(self.demand))
        self.capped = capped
        self.extra_rows: list[tuple[Floats, float]] = []

    def base(self) -> tuple[sp.csr_matrix, Floats]:
        """Link rates, demands and any extra rows, over the route variables only."""
        rows = [self.a, self.s[self.capped]]
        rhs = [self.cap, self.demand[self.capped]]
        for coef, bound in self.extra_rows:
            rows.append(sp.csr_matrix(coef[np.newaxis, :]))
            rhs.append(np.array([bound]))
        return sp.vstack(rows, format="csr"), np.concatenate(rhs)

    def solve(
        self, cost: Floats, a_ub: sp.spmatrix, b_ub: Floats, bounds: list[tuple[float, float]]
    ) -> Floats:
        return self.solve_with_duals(cost, a_ub, b_ub, bounds)[0]

    def solve_with_duals(
        self, cost: Floats, a_ub: sp.spmatrix, b_ub: Floats, bounds: list[tuple[float, float]]
    ) -> tuple[Floats, Floats]:
        """The solution and the constraints' dual values (>= 0, one per row)."""
        result = scipy.optimize.linprog(
            cost,
            A_ub=a_ub,
            b_ub=b_ub,
            bounds=bounds,
            method="highs",
            options={
                "primal_feasibility_tolerance": SOLVER_TOL,
                "dual_feasibility_tolerance": SOLVER_TOL,
            },
        )
        if result.status != 0 or result.x is None:
            raise SharingError(f"sharing LP not solved: {result.message}")
        solution: Floats = result.x
        duals: Floats = -np.asarray(result.ineqlin.marginals, dtype=np.float64)
        return solution, duals


def max_min_routes(problem: Problem, floor: Floats | None = None, lp: _Lp | None = None) -> Floats:
    """Route rates by weighted max-min fairness (from ``floor``) with the iterated LPs."""
    lp = lp or _Lp(problem)
    n_pairs, n_routes = len(problem.pairs), len(problem.route_pair)
    base, base_rhs = lp.base()
    base = base.tocsr()
    f = np.zeros(n_pairs) if floor is None else floor / lp.scale
    w = problem.weight
    fixed = np.full(n_pairs, np.nan)
    fixed_mask = np.zeros(n_pairs, dtype=bool)
    s = lp.s

    while not fixed_mask.all():
        free = np.flatnonzero(~fixed_mask)
        done = np.flatnonzero(fixed_mask)
        # Level LP: variables y (routes), t.  -S_p y + w_p t <= -f_p for free pairs;
        # -S_p y <= -(fixed_p - tol) for fixed ones.
        rows = sp.vstack(
            [
                sp.hstack([base, sp.csr_matrix((base.shape[0], 1))]),
                sp.hstack([-s[free], sp.csr_matrix(w[free][:, np.newaxis])]),
                sp.hstack([-s[done], sp.csr_matrix((len(done), 1))]),
            ],
            format="csr",
        )
        rhs = np.concatenate([base_rhs, -f[free], -(fixed[done] - FIX_TOL)])
        cost = np.zeros(n_routes + 1)
        cost[-1] = -1.0
        solution, duals = lp.solve_with_duals(cost, rows, rhs, [(0.0, np.inf)] * (n_routes + 1))
        level = max(float(solution[-1]), 0.0)
        target = f + w * level

        # A pair whose row has a positive dual value is at its level in every optimal
        # solution (complementary slackness): it blocks, no test needed.
        pair_duals = duals[base.shape[0] : base.shape[0] + len(free)]
        blocking = pair_duals > DUAL_TOL * max(float(pair_duals.max(initial=0.0)), 1e-300)
        if blocking.any():
            fixed[free[blocking]] = target[free[blocking]]
            fixed_mask[free[blocking]] = True
            continue

        candidates = free
        while True:
            others = np.setdiff1d(free, candidates, assume_unique=True)
            n_c = len(candidates)
            rows = sp.vstack(
                [
                    sp.hstack([base, sp.csr_matrix((base.shape[0], n_c))]),
                    sp.hstack([-s[candidates], sp.identity(n_c, format="csr")]),
                    sp.hstack([-s[others], sp.csr_matrix((len(others), n_c))]),
                    sp.hstack([-s[done], sp.csr_matrix((len(done), n_c))]),
                ],
                format="csr",
            )
            rhs = np.concatenate(
                [
                    base_rhs,
                    -(target[candidates] - FIX_TOL),
                    -(target[others] - FIX_TOL),
                    -(fixed[done] - FIX_TOL),
                ]
            )
            cost = np.concatenate([np.zeros(n_routes), -np.ones(n_c)])
            bounds = [(0.0, np.inf)] * n_routes + [(0.0, 1.0)] * n_c
            extra = lp.solve(cost, rows, rhs, bounds)[n_routes:]
            rising = extra > EXTRA_TOL + FIX_TOL
            if not rising.any():
                break
            if rising.all():
                # Only rounding can say every candidate rises at the highest level: the
                # ones that rise least block.
                rising = extra > extra.min()
                if rising.all():
                    break
            candidates = candidates[~rising]
        fixed[candidates] = target[candidates]
        fixed_mask[candidates] = True

    return split_routes(problem, fixed * lp.scale, lp)


def split_routes(problem: Problem, rates: Floats, lp: _Lp | None = None) -> Floats:
    """Route rates giving each pair ``rates`` (to rounding) spending the least link key."""
    lp = lp or _Lp(problem)
    base, base_rhs = lp.base()
    n_routes = len(problem.route_pair)
    target = np.maximum(rates / lp.scale - FIX_TOL, 0.0)
    rows = sp.vstack([base, -lp.s], format="csr")
    rhs = np.concatenate([base_rhs, -target])
    cost = np.asarray(lp.a.sum(axis=0)).ravel()
    y = lp.solve(cost, rows, rhs, [(0.0, np.inf)] * n_routes)
    return repair(problem, np.maximum(y, 0.0) * lp.scale)


def max_throughput(problem: Problem) -> Floats:
    """Route rates delivering the most key: one LP, ties left to the solver's vertex
    (deterministic for the same input; the least link key spent among them is not
    sought)."""
    lp = _Lp(problem)
    base, base_rhs = lp.base()
    n_routes = len(problem.route_pair)
    y = lp.solve(-np.ones(n_routes), base, base_rhs, [(0.0, np.inf)] * n_routes)
    return repair(problem, np.maximum(y, 0.0) * lp.scale)


def repair(problem: Problem, y: Floats) -> Floats:
    """``y`` scaled down where rounding put a link above its rate or a pair above its
    demand, so that the result is feasible exactly."""
    loads = problem.link_loads(y)
    over = loads > problem.capacity
    if over.any():
        factor = np.ones(len(problem.link_ids))
        factor[over] = problem.capacity[over] / loads[over]
        route_factor = np.ones(len(y))
        np.minimum.at(route_factor, problem.ent_route, factor[problem.ent_link])
        y = y * route_factor
    rates = problem.pair_rates(y)
    high = rates > problem.demand
    if high.any():
        pair_factor = np.ones(len(problem.pairs))
        pair_factor[high] = problem.demand[high] / rates[high]
        y = y * pair_factor[problem.route_pair]
    return y
