"""The node's routing table (manual, then computed routes) and what a route's relay spends."""

from __future__ import annotations

from qkmsd.relay import RoutingTable
from qkmsd.routing import relay_key_bits

from .conftest import SETTINGS, A, B, C, Net, link_id

D, E, X = "KME_D", "KME_E", "KME_X"


def table(
    links: list[tuple[str, str]], *, manual: dict[str, list[str]] | None = None
) -> RoutingTable:
    neighbours = [b if a == A else a for a, b in links if A in (a, b)]
    return RoutingTable(
        A,
        links=links,
        manual=manual or {},
        neighbours=neighbours,
        clock=lambda: 100.0,
    )


def test_a_line_has_one_computed_route_costed_in_hops() -> None:
    t = table([(A, B), (B, C), (C, D)])
    assert t.paths(D) == [(A, B, C, D)]
    [route] = t.routes([D])
    assert (route.path, route.source, route.cost, route.age_s) == ([A, B, C, D], "computed", 3, 0)


def test_a_manual_route_comes_first_and_is_not_repeated_among_the_computed() -> None:
    ring = [(A, B), (B, C), (C, D), (D, E), (E, A)]
    t = table(ring, manual={C: [E, D]})
    assert t.paths(C) == [(A, E, D, C), (A, B, C)]
    assert [r.source for r in t.routes([C])] == ["manual", "computed"]


def test_computed_routes_are_the_shortest_few_by_hops() -> None:
    mesh = [(A, B), (A, C), (A, D), (B, C), (B, D), (C, D), (B, E), (C, E), (D, E)]
    t = table(mesh)
    paths = t.paths(E)
    assert len(paths) == 3
    assert sorted(paths) == [(A, B, E), (A, C, E), (A, D, E)]
    assert table(mesh).paths(A) == []


def test_a_route_whose_first_step_is_no_qkd_neighbour_is_dropped() -> None:
    # The topology says A~X, but A has no QKD link to X.
    t = RoutingTable(A, links=[(A, X), (X, C), (A, B), (B, D), (D, C)], manual={}, neighbours=[B])
    assert t.paths(C) == [(A, B, D, C)]
    assert t.disjoint_paths(C, 4) == [(A, B, D, C)]


def test_unknown_or_unreachable_destinations_have_no_routes() -> None:
    t = table([(A, B), (C, D)])
    assert t.paths(C) == t.paths("KME_Q") == t.paths(A) == []
    assert t.disjoint_paths(C, 2) == t.disjoint_paths("KME_Q", 2) == []


def test_disjoint_paths_share_no_middle_node_shortest_first() -> None:
    ring = [(A, B), (B, C), (C, D), (D, E), (E, A)]
    t = table(ring)
    assert t.disjoint_paths(C, 8) == [(A, B, C), (A, E, D, C)]
    assert t.disjoint_paths(C, 1) == [(A, B, C)]
    # A chord B~D: two paths of two hops to D, equal ties in node order.
    t = table([*ring, (B, D)])
    assert t.disjoint_paths(D, 8) == [(A, B, D), (A, E, D)]


def test_the_controller_s_disjoint_set_comes_before_the_node_s_own_while_it_is_usable() -> None:
    # By hops the node would take A-B-D and A-E-D; the controller (which sees key) says
    # A-B-C-D and A-E-D.
    ring = [(A, B), (B, C), (C, D), (D, E), (E, A), (B, D)]
    t = table(ring)
    assert t.disjoint_paths(D, 8) == [(A, B, D), (A, E, D)]
    t.set_controller_disjoint({D: [[A, E, D], [A, B, C, D]], C: []})
    assert t.disjoint_paths(D, 8) == [(A, E, D), (A, B, C, D)]
    assert t.disjoint_paths(D, 1) == [(A, E, D)]
    assert t.disjoint_paths(C, 8) == [(A, B, C), (A, E, D, C)]  # none pushed: its own
    t.link_down(C, D)  # a path of the pushed set is cut: the node computes its own
    assert t.disjoint_paths(D, 8) == [(A, B, D), (A, E, D)]
    t.link_up(C, D)
    assert t.disjoint_paths(D, 8) == [(A, E, D), (A, B, C, D)]
    t.set_controller_disjoint({})  # a new push without a set for D
    assert t.disjoint_paths(D, 8) == [(A, B, D), (A, E, D)]


async def test_a_relay_spends_what_routing_says_its_route_costs_in_link_key(line3: Net) -> None:
    [route] = line3[A].agent.routes()
    owned_before = {(x, y): line3.owned_ready_bytes(x, y) for x, y in [(A, B), (B, C)]}

    await line3[A].agent.relay(link_id(A, C))

    spent = sum(owned_before[x, y] - line3.owned_ready_bytes(x, y) for x, y in owned_before) * 8
    assert spent == relay_key_bits(route.cost, SETTINGS.block_bits)
    assert (
        line3[A].agent.statistics().link_bits_spent + line3[B].agent.statistics().link_bits_spent
        == spent
    )
    # Per pool too (``qkmsctl perf relay``): the relay, its key, and each node's hop.
    pool = link_id(A, C)
    mine = line3[A].agent.pool_statistics()[pool]
    assert (mine.relays_confirmed, mine.relays_failed) == (1, 0)
    assert mine.bits_relayed == SETTINGS.block_bits and mine.latency_s_total >= 0
    theirs = line3[B].agent.pool_statistics()[pool]
    assert mine.link_bits_spent + theirs.link_bits_spent == spent
    assert theirs.relays_confirmed == 0  # B only forwarded it


def test_a_link_down_for_two_reasons_comes_back_only_when_both_are_withdrawn() -> None:
    table = RoutingTable(
        "A",
        links=[("A", "B"), ("B", "C"), ("A", "D"), ("D", "C")],
        manual={},
        neighbours=["B", "D"],
    )
    assert table.link_down("A", "B", "qber-high")
    assert not table.link_down("A", "B")  # the session closed too: still down, one more reason
    assert all(p[1] == "D" for p in table.paths("C"))
    assert not table.link_up("A", "B")  # the session is back; the alarm is not cleared
    assert all(p[1] == "D" for p in table.paths("C"))
    assert table.link_up("A", "B", "qber-high")
    assert {p[1] for p in table.paths("C")} == {"B", "D"}
