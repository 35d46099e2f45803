"""Routes over hand-made networks: lines, rings, down and empty links, disjoint sets."""

from __future__ import annotations

import pytest

from qkmsd.routing import LinkState, Path, Topology

FULL = 4_000_000


def unit(links: list[tuple[str, str]]) -> Topology:
    t = Topology()
    for a, b in links:
        t.set_cost(a, b, 1.0, 1.0)
    return t


def link(a: str, b: str, **changes: object) -> LinkState:
    fields: dict[str, object] = {"bits_a": FULL, "bits_b": FULL, "key_rate_bps": 10_000.0}
    fields.update(changes)
    return LinkState(a=a, b=b, **fields)  # type: ignore[arg-type]


def nodes(paths: list[Path]) -> list[tuple[str, ...]]:
    return [p.nodes for p in paths]


def test_a_line_has_one_route_whose_cost_is_its_hops() -> None:
    t = unit([("A", "B"), ("B", "C"), ("C", "D")])
    [route] = t.routes("A", "D")
    assert route == Path(("A", "B", "C", "D"), 3.0)
    assert route.hops == 3
    assert nodes(t.routes("D", "A")) == [("D", "C", "B", "A")]


def test_a_ring_gives_both_ways_round_shorter_first() -> None:
    t = unit([("A", "B"), ("B", "C"), ("C", "D"), ("D", "E"), ("E", "A")])
    assert nodes(t.routes("A", "C")) == [("A", "B", "C"), ("A", "E", "D", "C")]
    assert [p.cost for p in t.routes("A", "C")] == [2.0, 3.0]


def test_alternates_come_in_cost_order_and_stop_at_the_count_asked() -> None:
    # A full mesh of 5: 1 direct route, 3 of two hops, 6 of three hops, ...
    names = "ABCDE"
    t = unit([(a, b) for i, a in enumerate(names) for b in names[i + 1 :]])
    routes = t.routes("A", "B")
    assert len(routes) == 4
    assert [p.hops for p in routes] == [1, 2, 2, 2]
    assert len(t.routes("A", "B", alternates=6)) == 7
    assert [p.hops for p in t.routes("A", "B", alternates=6)] == [1, 2, 2, 2, 3, 3, 3]
    assert nodes(t.routes("A", "B", alternates=0)) == [("A", "B")]
    for p in t.routes("A", "B", alternates=100):
        assert len(set(p.nodes)) == len(p.nodes)
    assert len(t.routes("A", "B", alternates=100)) == 1 + 3 + 6 + 6


def test_a_down_link_is_not_used() -> None:
    t = Topology()
    t.set_links([link("A", "B"), link("B", "C"), link("A", "D"), link("D", "C")])
    assert nodes(t.routes("A", "C"))[0] in {("A", "B", "C"), ("A", "D", "C")}
    t.set_link(link("B", "C", up=False))
    assert nodes(t.routes("A", "C")) == [("A", "D", "C")]
    assert t.cost("B", "C") is None and t.cost("C", "B") is None
    t.set_link(link("A", "D", up=False))
    assert t.routes("A", "C") == []


def test_an_emptier_link_is_avoided_when_a_route_as_short_has_key() -> None:
    t = Topology()
    t.set_links([link("A", "B"), link("B", "C"), link("A", "D"), link("D", "C", bits_a=0)])
    # Both routes have two hops; D~C is short of key only on D's side.
    assert t.cost("D", "C") > t.cost("C", "D")  # type: ignore[operator]
    assert nodes(t.routes("A", "C")) == [("A", "B", "C"), ("A", "D", "C")]
    # The other way round, each hop pads with the full side of its link: a tie.
    back = t.routes("C", "A")
    assert len(back) == 2 and back[0].cost == back[1].cost


def test_a_much_cheaper_longer_route_beats_a_short_starved_one() -> None:
    t = Topology()
    starved = dict(bits_a=0, bits_b=0, key_rate_bps=0.0, relay_failures=5)
    t.set_links([link("A", "C", **starved), link("A", "B"), link("B", "C")])
    assert nodes(t.routes("A", "C")) == [("A", "B", "C"), ("A", "C")]


def test_changing_a_link_changes_the_routes_after_they_were_computed() -> None:
    t = unit([("A", "B"), ("B", "C"), ("A", "D"), ("D", "C")])
    t.set_cost("A", "B", 5.0, 5.0)
    assert nodes(t.routes("A", "C"))[0] == ("A", "D", "C")
    t.set_cost("A", "B", 1.0, 1.0)
    t.set_cost("D", "C", 5.0, 5.0)
    assert nodes(t.routes("A", "C"))[0] == ("A", "B", "C")
    t.remove_link("A", "B")
    assert nodes(t.routes("A", "C")) == [("A", "D", "C")]
    assert t.distances_to("C") == {"C": 0.0, "B": 1.0, "D": 5.0, "A": 6.0}


def test_costs_are_per_direction() -> None:
    t = Topology()
    t.set_cost("A", "B", 1.0, None)
    assert nodes(t.routes("A", "B")) == [("A", "B")]
    assert t.routes("B", "A") == []


def test_unknown_same_or_unjoined_nodes_have_no_routes() -> None:
    t = unit([("A", "B")])
    t.add_node("Z")
    assert t.routes("A", "A") == t.routes("A", "Q") == t.routes("Q", "A") == []
    assert t.routes("A", "Z") == [] and t.disjoint_routes("A", "Z", 2) == []
    assert t.disjoint_routes("A", "A", 2) == t.disjoint_routes("Q", "A", 2) == []


def test_bad_costs_and_counts_are_refused() -> None:
    t = Topology()
    for bad in (0.0, -1.0, float("nan"), float("inf"), 1e7):
        with pytest.raises(ValueError, match="hop cost"):
            t.set_cost("A", "B", bad, 1.0)
    with pytest.raises(ValueError, match="two different nodes"):
        t.set_cost("A", "A", 1.0, 1.0)
    with pytest.raises(ValueError, match="alternates"):
        t.routes("A", "B", alternates=-1)
    with pytest.raises(ValueError, match="n must be"):
        t.disjoint_routes("A", "B", 0)


def test_a_ring_has_two_node_disjoint_routes() -> None:
    t = unit([("A", "B"), ("B", "C"), ("C", "D"), ("D", "E"), ("E", "A")])
    assert nodes(t.disjoint_routes("A", "C", 4)) == [("A", "B", "C"), ("A", "E", "D", "C")]
    assert nodes(t.disjoint_routes("A", "C", 1)) == [("A", "B", "C")]


def test_disjoint_routes_give_up_the_shortest_route_when_two_need_it() -> None:
    # The least-cost route A-B-C-D takes B and C, which each of two disjoint routes needs
    # one of: taking it first and then a second route avoiding it finds none.
    t = Topology()
    for a, b, c in [("A", "B", 1), ("B", "C", 1), ("C", "D", 1), ("A", "Y", 2), ("Y", "C", 2)]:
        t.set_cost(a, b, c, c)
    for a, b, c in [("B", "X", 2), ("X", "D", 2)]:
        t.set_cost(a, b, c, c)
    assert nodes(t.routes("A", "D", alternates=0)) == [("A", "B", "C", "D")]
    found = t.disjoint_routes("A", "D", 2)
    assert nodes(found) == [("A", "B", "X", "D"), ("A", "Y", "C", "D")]
    assert [p.cost for p in found] == [5.0, 5.0]
    assert nodes(t.disjoint_routes("A", "D", 8)) == nodes(found)
    # With a third way round (cost 7.5), the least-cost pair still reroutes the first
    # route (5 + 5) rather than keep it and add the third (3 + 7.5).
    t.set_cost("A", "P", 2.5, 2.5)
    t.set_cost("P", "Q", 2.5, 2.5)
    t.set_cost("Q", "D", 2.5, 2.5)
    assert nodes(t.disjoint_routes("A", "D", 2)) == nodes(found)
    assert len(t.disjoint_routes("A", "D", 3)) == 3


def test_a_route_prices_its_relays_in_link_key() -> None:
    t = unit([("A", "B"), ("B", "C")])
    [route] = t.routes("A", "C")
    assert route.key_bits(8192) == 2 * (8192 + 512)
