"""Sharing link key on random graphs, routes, demands and weights: what every policy
promises, and what makes each policy the one it claims to be."""

from __future__ import annotations

import math
from dataclasses import dataclass

import networkx as nx
import numpy as np
import pytest
import scipy.optimize
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from qkmsd.sharing import POLICIES, Allocation, Pair, allocate, equal_shares, link_id
from qkmsd.sharing._filling import progressive_filling
from qkmsd.sharing._lp import max_min_routes
from qkmsd.sharing._model import build_problem

TOL = 1e-6


@dataclass
class Case:
    links: dict[tuple[str, str], float]
    pairs: list[Pair]
    overhead: float


@st.composite
def cases(draw: st.DrawFn, multi_path: bool = False, zero_links: bool = False) -> Case:
    n = draw(st.integers(3, 7))
    names = [f"N{i}" for i in range(n)]
    # A random spanning tree plus random extra links: connected.
    graph = nx.Graph()
    graph.add_nodes_from(names)
    for i in range(1, n):
        graph.add_edge(names[i], names[draw(st.integers(0, i - 1))])
    for a, b in draw(st.lists(st.tuples(st.sampled_from(names), st.sampled_from(names)))):
        if a != b:
            graph.add_edge(a, b)
    low = 0.0 if zero_links else 0.05
    rate = st.one_of(st.just(1.0), st.floats(low, 10.0))
    links = {link_id(a, b): draw(rate) for a, b in sorted(graph.edges)}
    ordered = [(a, b) for a in names for b in names if a != b]
    chosen = draw(st.lists(st.sampled_from(ordered), min_size=1, max_size=12, unique=True))
    pairs = []
    for src, dst in chosen:
        simple = nx.shortest_simple_paths(graph, src, dst)
        count = draw(st.integers(1, 3)) if multi_path else 1
        skip = 0 if multi_path else draw(st.integers(0, 2))
        paths = []
        for index, path in enumerate(simple):
            if index >= skip:
                paths.append(tuple(path))
            if len(paths) == count or index >= skip + 5:
                break
        if not paths:
            paths = [tuple(nx.shortest_path(graph, src, dst))]
        demand = draw(st.one_of(st.just(math.inf), st.floats(0.0, 3.0)))
        weight = draw(st.sampled_from([1.0, 1.0, 2.0, 0.5, 3.0]))
        shares = multi_path and len(paths) > 1 and draw(st.booleans())
        pairs.append(Pair(src, dst, paths, demand=demand, weight=weight, shares=shares))
    overhead = draw(st.sampled_from([1.0, 1.03125, 1.25]))
    return Case(links, pairs, overhead)


def _route_links(pair: Pair) -> list[list[tuple[str, str]]]:
    """Each route's links: every path, or all paths as one for a shares pair."""
    routes = [pair.links(path) for path in pair.paths]
    return [[key for route in routes for key in route]] if pair.shares else routes


def _saturated(case: Case, result: Allocation) -> set[tuple[str, str]]:
    return {
        key
        for key, rate in case.links.items()
        if result.link_loads[key] >= rate - TOL * max(rate, 1.0)
    }


def check_feasible_and_work_conserving(case: Case, result: Allocation) -> None:
    for key, rate in case.links.items():
        assert result.link_loads[key] <= rate * (1 + 1e-9) + 1e-12, key
    # Link loads are what the path rates spend.
    loads = dict.fromkeys(case.links, 0.0)
    for pair in case.pairs:
        rate = result.rates[pair.id]
        assert 0.0 <= rate <= pair.demand * (1 + 1e-9) + 1e-12, pair.id
        paths = result.path_rates[pair.id]
        if pair.shares:
            assert paths == pytest.approx((rate,) * len(pair.paths))
            spent = [(path, rate) for path in pair.paths]
        else:
            assert sum(paths) == pytest.approx(rate, abs=1e-12)
            spent = list(zip(pair.paths, paths, strict=True))
        for path, path_rate in spent:
            for key in pair.links(path):
                loads[key] += case.overhead * path_rate
    for key in case.links:
        assert result.link_loads[key] == pytest.approx(loads[key], rel=1e-9, abs=1e-12)
    # Work-conserving: a pair below its demand has no route with slack on every link.
    saturated = _saturated(case, result)
    for pair in case.pairs:
        if result.rates[pair.id] < pair.demand - TOL * max(pair.demand, 1.0):
            for route in _route_links(pair):
                assert saturated & set(route), (pair.id, route)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(zero_links=True), st.sampled_from(POLICIES))
def test_every_policy_is_feasible_and_work_conserving(case: Case, policy: str) -> None:
    result = allocate(case.links, case.pairs, policy=policy, overhead=case.overhead)  # type: ignore[arg-type]
    check_feasible_and_work_conserving(case, result)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(multi_path=True), st.sampled_from(POLICIES))
def test_every_policy_is_feasible_and_work_conserving_over_several_paths(
    case: Case, policy: str
) -> None:
    result = allocate(case.links, case.pairs, policy=policy, overhead=case.overhead)  # type: ignore[arg-type]
    check_feasible_and_work_conserving(case, result)


@settings(max_examples=150, deadline=None)
@given(cases(zero_links=True))
def test_max_min_every_pair_below_demand_is_largest_on_a_saturated_link(case: Case) -> None:
    """The bottleneck characterisation of weighted max-min fairness (single paths): no
    pair can be raised without lowering one whose weighted rate is no higher."""
    result = allocate(case.links, case.pairs, overhead=case.overhead)
    saturated = _saturated(case, result)
    on_link: dict[tuple[str, str], list[Pair]] = {}
    for pair in case.pairs:
        for key in pair.links(pair.paths[0]):
            on_link.setdefault(key, []).append(pair)
    shares = equal_shares(case.links, case.pairs, overhead=case.overhead)
    for pair in case.pairs:
        rate = result.rates[pair.id]
        assert rate >= shares[pair.id] * (1 - 1e-9) - 1e-12, (
            pair,
            rate,
            shares[pair.id],
            case.links,
        )
        if rate >= pair.demand - TOL * max(pair.demand, 1.0):
            continue
        level = rate / pair.weight
        bottlenecks = [
            key
            for key in pair.links(pair.paths[0])
            if key in saturated
            and all(
                result.rates[o.id] / o.weight <= level * (1 + 1e-7) + 1e-12 for o in on_link[key]
            )
        ]
        assert bottlenecks, pair.id


def _lp_rows(case: Case, pair_rates_of: list[Pair]) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Link rows over the route variables (as a test writes them, not the library)."""
    keys = sorted(case.links)
    index = {key: i for i, key in enumerate(keys)}
    columns: list[list[tuple[str, str]]] = []
    owner: list[int] = []
    for p, pair in enumerate(pair_rates_of):
        for route in _route_links(pair):
            columns.append(route)
            owner.append(p)
    a = np.zeros((len(keys), len(columns)))
    for j, route in enumerate(columns):
        for key in route:
            a[index[key], j] += case.overhead
    return a, np.array([case.links[k] for k in keys]), owner


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(cases(), cases(multi_path=True)))
def test_proportional_no_feasible_move_raises_the_sum_of_weighted_log_rates(case: Case) -> None:
    """Optimality of proportional fairness: for every feasible x', the sum over pairs of
    w * (x' - x) / x is at most 0 (checked by an LP over x').  A pair already at its demand
    within the tolerance every test here uses (``TOL`` of a unit rate) counts as at it:
    the relative gain of a rounding error on a tiny demand says nothing about fairness."""
    result = allocate(case.links, case.pairs, policy="proportional", overhead=case.overhead)
    live = [p for p in case.pairs if result.rates[p.id] > 1e-9]
    if not live:
        return
    a, cap, owner = _lp_rows(case, live)
    gain = np.array([live[p].weight / result.rates[live[p].id] for p in owner])
    n_pairs = len(live)
    s = np.zeros((n_pairs, len(owner)))
    for j, p in enumerate(owner):
        s[p, j] = 1.0
    demand = np.array(
        [
            result.rates[p.id]
            if result.rates[p.id] >= p.demand - TOL * max(p.demand, 1.0)
            else p.demand
            for p in live
        ]
    )
    finite = np.isfinite(demand)
    a_ub = np.vstack([a, s[finite]])
    b_ub = np.concatenate([cap, demand[finite]])
    lp = scipy.optimize.linprog(-gain, A_ub=a_ub, b_ub=b_ub, method="highs")
    assert lp.status == 0
    best = -lp.fun - sum(p.weight for p in live)
    assert best <= 1e-5 * sum(p.weight for p in live), best


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(cases(), cases(multi_path=True)))
def test_throughput_delivers_the_most_key(case: Case) -> None:
    result = allocate(case.links, case.pairs, policy="throughput", overhead=case.overhead)
    a, cap, owner = _lp_rows(case, case.pairs)
    s = np.zeros((len(case.pairs), len(owner)))
    for j, p in enumerate(owner):
        s[p, j] = 1.0
    demand = np.array([p.demand for p in case.pairs])
    finite = np.isfinite(demand)
    lp = scipy.optimize.linprog(
        -np.ones(len(owner)),
        A_ub=np.vstack([a, s[finite]]),
        b_ub=np.concatenate([cap, demand[finite]]),
        method="highs",
    )
    assert lp.status == 0
    delivered = sum(result.rates.values())
    assert delivered >= -lp.fun * (1 - 1e-7) - 1e-9
    fair = allocate(case.links, case.pairs, overhead=case.overhead)
    assert delivered >= sum(fair.rates.values()) * (1 - 1e-7) - 1e-9


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(zero_links=True))
def test_max_min_by_linear_programmes_agrees_with_progressive_filling(case: Case) -> None:
    """The LP method (used for pairs with several paths) on single-path inputs gives the
    rates progressive filling gives, the bottleneck property having checked those."""
    problem = build_problem(case.links, case.pairs, case.overhead)
    by_lp = problem.pair_rates(max_min_routes(problem))
    by_filling = problem.pair_rates(progressive_filling(problem))
    assert by_lp == pytest.approx(by_filling, rel=1e-6, abs=1e-6 * max(case.links.values()))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(multi_path=True))
def test_max_min_over_several_paths_raises_no_pair_without_lowering_a_poorer_one(
    case: Case,
) -> None:
    """The definition, checked by an LP per pair: the most pair p can get while every pair
    whose weighted rate is no higher than p's keeps its rate is p's rate."""
    result = allocate(case.links, case.pairs, overhead=case.overhead)
    a, cap, owner = _lp_rows(case, case.pairs)
    s = np.zeros((len(case.pairs), len(owner)))
    for j, p in enumerate(owner):
        s[p, j] = 1.0
    demand = np.array([p.demand for p in case.pairs])
    finite = np.isfinite(demand)
    rates = np.array([result.rates[p.id] for p in case.pairs])
    level = rates / np.array([p.weight for p in case.pairs])
    scale = max(case.links.values())
    for p in range(len(case.pairs)):
        poorer = (level <= level[p] + 1e-7 * scale) & (np.arange(len(case.pairs)) != p)
        lp = scipy.optimize.linprog(
            -s[p],
            A_ub=np.vstack([a, s[finite], -s[poorer]]),
            b_ub=np.concatenate([cap, demand[finite], -(rates[poorer] - 1e-7 * scale)]),
            method="highs",
        )
        assert lp.status == 0
        assert -lp.fun <= rates[p] + 1e-5 * scale, (case.pairs[p].id, -lp.fun, rates[p])
