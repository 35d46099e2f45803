"""Sharing link key: cases whose answer is known by hand, input checks and the figures."""

from __future__ import annotations

import math
import random

import pytest

from qkmsd.sharing import (
    POLICIES,
    Pair,
    SharingError,
    allocate,
    equal_shares,
    figures,
    jain_index,
    link_id,
    overhead_for,
    utilisation,
)


def _line(*nodes: str) -> tuple[str, ...]:
    return tuple(nodes)


# A line A-B-C-D whose middle link B-C three pairs share; A->B uses only A-B.
LINE = {("A", "B"): 1.0, ("B", "C"): 0.6, ("C", "D"): 1.0}
LINE_PAIRS = [
    Pair("A", "C", [_line("A", "B", "C")]),
    Pair("B", "D", [_line("B", "C", "D")]),
    Pair("A", "D", [_line("A", "B", "C", "D")]),
    Pair("A", "B", [_line("A", "B")]),
]


def test_line_max_min_shares_the_middle_link_equally_and_gives_the_rest_to_the_short_pair() -> None:
    result = allocate(LINE, LINE_PAIRS, overhead=1.25)
    # B-C: 1.25 * 3x = 0.6; A-B: 1.25 * (2x + y) = 1.
    assert result.rates[("A", "C")] == pytest.approx(0.16)
    assert result.rates[("B", "D")] == pytest.approx(0.16)
    assert result.rates[("A", "D")] == pytest.approx(0.16)
    assert result.rates[("A", "B")] == pytest.approx(0.48)
    assert result.link_loads[("B", "C")] == pytest.approx(0.6)
    assert result.link_loads[("A", "B")] == pytest.approx(1.0)
    assert result.link_loads[("C", "D")] == pytest.approx(0.4)
    assert result.path_rates[("A", "D")] == pytest.approx((0.16,))


def test_line_max_min_follows_the_weights() -> None:
    pairs = [*LINE_PAIRS[:2], Pair("A", "D", [_line("A", "B", "C", "D")], weight=2.0)]
    result = allocate(LINE, pairs, overhead=1.25)
    # B-C: 1.25 * (x + x + 2x) = 0.6.
    assert result.rates[("A", "C")] == pytest.approx(0.12)
    assert result.rates[("A", "D")] == pytest.approx(0.24)


# Two rings of four nodes joined by one slow link A1-B1.
BRIDGE = {
    **{link_id(f"A{i}", f"A{i % 4 + 1}"): 1.0 for i in range(1, 5)},
    **{link_id(f"B{i}", f"B{i % 4 + 1}"): 1.0 for i in range(1, 5)},
    ("A1", "B1"): 0.3,
}
BRIDGE_PAIRS = [
    Pair("A2", "B2", [_line("A2", "A1", "B1", "B2")]),
    Pair("A3", "B3", [_line("A3", "A2", "A1", "B1", "B2", "B3")]),
    Pair("A4", "B4", [_line("A4", "A1", "B1", "B4")]),
    Pair("A2", "A3", [_line("A2", "A3")]),
]


def test_bridge_max_min_splits_the_bridge_and_the_ring_pair_takes_what_is_left() -> None:
    result = allocate(BRIDGE, BRIDGE_PAIRS)
    for pair in BRIDGE_PAIRS[:3]:
        assert result.rates[pair.id] == pytest.approx(0.1)
    assert result.rates[("A2", "A3")] == pytest.approx(0.9)
    assert result.link_loads[("A1", "B1")] == pytest.approx(0.3)


def test_bridge_throughput_starves_the_long_pair() -> None:
    result = allocate(BRIDGE, BRIDGE_PAIRS, policy="throughput")
    assert sum(result.rates.values()) == pytest.approx(1.3)
    assert result.rates[("A3", "B3")] == pytest.approx(0.0, abs=1e-9)
    assert result.rates[("A2", "A3")] == pytest.approx(1.0)


def test_bridge_equal_shares_and_figures() -> None:
    shares = equal_shares(BRIDGE, BRIDGE_PAIRS)
    assert shares[("A2", "B2")] == pytest.approx(0.1)
    assert shares[("A2", "A3")] == pytest.approx(0.5)  # A2-A3 split with A3->B3
    throughput = allocate(BRIDGE, BRIDGE_PAIRS, policy="throughput")
    fig = figures(throughput.rates, throughput.link_loads, BRIDGE, BRIDGE_PAIRS)
    assert fig.worst_over_max_min == pytest.approx(0.0, abs=1e-8)
    assert fig.worst_max_min_pair == ("A3", "B3")
    fair = allocate(BRIDGE, BRIDGE_PAIRS)
    fig = figures(fair.rates, fair.link_loads, BRIDGE, BRIDGE_PAIRS)
    assert fig.worst_over_max_min == pytest.approx(1.0)
    assert fig.worst_over_equal_share == pytest.approx(1.0)
    assert fig.used_over_max_min == pytest.approx(1.0)
    assert fig.jain == pytest.approx(jain_index([0.1, 0.1, 0.1, 0.9]))


# A line A-B-C with its three pairs: max-min gives 1/2 each, proportional 2/3 to the
# one-hop pairs and 1/3 to A->C, throughput 1 to the one-hop pairs and none to A->C.
TRIANGLE_LINE = {("A", "B"): 1.0, ("B", "C"): 1.0}
TRIANGLE_PAIRS = [
    Pair("A", "B", [_line("A", "B")]),
    Pair("B", "C", [_line("B", "C")]),
    Pair("A", "C", [_line("A", "B", "C")]),
]


@pytest.mark.parametrize(
    ("policy", "short", "long"),
    [("max-min", 0.5, 0.5), ("proportional", 2 / 3, 1 / 3), ("throughput", 1.0, 0.0)],
)
def test_each_policy_on_a_line_of_three(policy: str, short: float, long: float) -> None:
    result = allocate(TRIANGLE_LINE, TRIANGLE_PAIRS, policy=policy)  # type: ignore[arg-type]
    assert result.rates[("A", "B")] == pytest.approx(short, abs=1e-7)
    assert result.rates[("B", "C")] == pytest.approx(short, abs=1e-7)
    assert result.rates[("A", "C")] == pytest.approx(long, abs=1e-7)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_demand_capped_pair_frees_key_for_the_others(policy: str) -> None:
    pairs = [*TRIANGLE_PAIRS[:2], Pair("A", "C", [_line("A", "B", "C")], demand=0.1)]
    result = allocate(TRIANGLE_LINE, pairs, policy=policy)  # type: ignore[arg-type]
    expected_long = 0.0 if policy == "throughput" else 0.1
    assert result.rates[("A", "C")] == pytest.approx(expected_long, abs=1e-7)
    assert result.rates[("A", "B")] == pytest.approx(1.0 - expected_long, abs=1e-7)
    assert result.rates[("B", "C")] == pytest.approx(1.0 - expected_long, abs=1e-7)


@pytest.mark.parametrize("policy", POLICIES)
def test_pairs_whose_demands_fit_get_them(policy: str) -> None:
    pairs = [
        Pair("A", "C", [_line("A", "B", "C")], demand=0.2),
        Pair("B", "D", [_line("B", "C", "D")], demand=0.1),
        Pair("A", "D", [_line("A", "B", "C", "D")], demand=0.05),
    ]
    result = allocate(LINE, pairs, policy=policy)  # type: ignore[arg-type]
    for pair in pairs:
        assert result.rates[pair.id] == pytest.approx(pair.demand, rel=1e-7)


# A ring A-B-C-D, side A-B-C at 1, side A-D-C at 0.5; A->C may use both sides.
RING = {("A", "B"): 1.0, ("B", "C"): 1.0, ("C", "D"): 0.5, ("A", "D"): 0.5}


@pytest.mark.parametrize("policy", ["max-min", "proportional"])
def test_a_multi_path_pair_splits_over_both_sides(policy: str) -> None:
    pairs = [
        Pair("A", "C", [_line("A", "B", "C"), _line("A", "D", "C")]),
        Pair("A", "B", [_line("A", "B")]),
    ]
    result = allocate(RING, pairs, policy=policy)  # type: ignore[arg-type]
    # Both at 0.75: A->C takes all of the slow side and a quarter of A-B.
    assert result.rates[("A", "C")] == pytest.approx(0.75, abs=1e-6)
    assert result.rates[("A", "B")] == pytest.approx(0.75, abs=1e-6)
    assert result.path_rates[("A", "C")] == pytest.approx((0.25, 0.5), abs=1e-6)


def test_a_shares_pair_spends_key_on_every_path() -> None:
    pairs = [
        Pair("A", "C", [_line("A", "B", "C"), _line("A", "D", "C")], shares=True),
        Pair("A", "B", [_line("A", "B")]),
    ]
    result = allocate(RING, pairs)
    assert result.rates[("A", "C")] == pytest.approx(0.5, abs=1e-7)
    assert result.rates[("A", "B")] == pytest.approx(0.5, abs=1e-7)
    assert result.path_rates[("A", "C")] == pytest.approx((0.5, 0.5), abs=1e-7)
    assert result.link_loads[("C", "D")] == pytest.approx(0.5, abs=1e-7)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_link_without_key_starves_only_its_pairs(policy: str) -> None:
    links = {**TRIANGLE_LINE, ("C", "D"): 0.0}
    pairs = [*TRIANGLE_PAIRS[:2], Pair("B", "D", [_line("B", "C", "D")])]
    result = allocate(links, pairs, policy=policy)  # type: ignore[arg-type]
    assert result.rates[("B", "D")] == 0.0
    assert result.rates[("A", "B")] == pytest.approx(1.0, abs=1e-7)
    assert result.rates[("B", "C")] == pytest.approx(1.0, abs=1e-7)


@pytest.mark.parametrize("policy", POLICIES)
def test_the_result_does_not_depend_on_the_input_order(policy: str) -> None:
    first = allocate(BRIDGE, BRIDGE_PAIRS, policy=policy)  # type: ignore[arg-type]
    shuffled_pairs = list(BRIDGE_PAIRS)
    random.Random(7).shuffle(shuffled_pairs)
    reversed_links = {(b, a): rate for (a, b), rate in reversed(BRIDGE.items())}
    second = allocate(reversed_links, shuffled_pairs, policy=policy)  # type: ignore[arg-type]
    assert first == second


def test_no_pairs_is_an_empty_allocation() -> None:
    result = allocate(LINE, [])
    assert result.rates == {}
    assert result.link_loads == {("A", "B"): 0.0, ("B", "C"): 0.0, ("C", "D"): 0.0}


def test_overhead_for_counts_the_mac_key_of_each_hop() -> None:
    assert overhead_for(8192) == pytest.approx(1 + 256 / 8192)
    assert overhead_for(256) == 2.0
    with pytest.raises(SharingError, match="key_bits"):
        overhead_for(0)


def test_jain_index_values() -> None:
    assert jain_index([1.0, 1.0, 1.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == 0.25
    assert jain_index([]) == 1.0
    assert jain_index([1.0, 3.0]) == pytest.approx(16 / 20)


def test_utilisation_is_load_over_rate() -> None:
    result = allocate(LINE, LINE_PAIRS)
    use = utilisation(result.link_loads, {**LINE, ("D", "E"): 0.0})
    assert use[("B", "C")] == pytest.approx(1.0)
    assert use[("D", "E")] == 0.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Pair("A", "A", [("A", "B")]), "same node"),
        (lambda: Pair("A", "C", []), "no path"),
        (lambda: Pair("A", "C", [("A", "B")]), "does not run from A to C"),
        (lambda: Pair("A", "C", [("A", "B", "A", "C")]), "visits a node twice"),
        (lambda: Pair("A", "C", [("A", "C")], demand=-1.0), "demand"),
        (lambda: Pair("A", "C", [("A", "C")], demand=math.nan), "demand"),
        (lambda: Pair("A", "C", [("A", "C")], weight=0.0), "weight"),
        (lambda: Pair("A", "C", [("A", "C"), ("A", "C")]), "same path twice"),
    ],
)
def test_a_bad_pair_is_refused_with_its_name(make: object, message: str) -> None:
    with pytest.raises(SharingError, match=message):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    ("links", "pairs", "kwargs", "message"),
    [
        (LINE, [Pair("A", "C", [("A", "C")])], {}, "A-C, which is not a known link"),
        (LINE, [Pair("A", "E", [("A", "B", "E")])], {}, "B-E, which is not a known link"),
        (LINE, LINE_PAIRS + LINE_PAIRS[:1], {}, "pair A->C: given twice"),
        ({("A", "B"): -1.0}, [], {}, "rate -1.0"),
        ({("A", "B"): math.inf}, [], {}, "rate inf"),
        ({("A", "A"): 1.0}, [], {}, "two different nodes"),
        ({("A", "B"): 1.0, ("B", "A"): 2.0}, [], {}, "given twice"),
        (LINE, LINE_PAIRS, {"overhead": 0.5}, "overhead"),
        (LINE, LINE_PAIRS, {"policy": "fastest"}, "policy 'fastest' unknown"),
    ],
)
def test_bad_input_is_refused_with_a_clear_error(
    links: dict[tuple[str, str], float], pairs: list[Pair], kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(SharingError, match=message):
        allocate(links, pairs, **kwargs)  # type: ignore[arg-type]


def test_figures_refuse_a_rate_for_an_unknown_pair() -> None:
    with pytest.raises(SharingError, match="not a given pair"):
        figures({("X", "Y"): 1.0}, {}, LINE, LINE_PAIRS)
