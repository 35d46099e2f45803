"""The controller's soft state from reports, its routes, its registry and its 015 view."""

from __future__ import annotations

import itertools
import random
import uuid
from pathlib import Path
from typing import Any

import msgspec
import networkx as nx
import pytest

from protocol import CtlDemand, CtlEntry, CtlLink, CtlRelayLoad, CtlReport
from qkmsd.controller import (
    BadReport,
    Registry,
    Topology,
    allocate_budgets,
    compute_routes,
    etsi015_view,
    link_cost,
    qkms_uuid,
)

RING = [("A", "B"), ("B", "C"), ("C", "D"), ("A", "D")]


def report(node: str, links: list[CtlLink], **kwargs: Any) -> CtlReport:
    fields: dict[str, Any] = dict(
        id=0,
        node=node,
        seq=1,
        period_s=1.0,
        software="0.1.0",
        links=links,
        peers=[],
        demand=[],
        relay=CtlRelayLoad(),
    )
    return CtlReport(**(fields | kwargs))


def qkd(a: str, b: str, node: str, *, up: bool = True, **kwargs: Any) -> CtlLink:
    peer = b if node == a else a
    return CtlLink(f"{a}~{b}", peer, up, **kwargs)


def ring(now: float = 0.0, **down: bool) -> Topology:
    topo = Topology(lost_after=3.0)
    for node in "ABCD":
        links = [qkd(a, b, node, up=not down.get(f"{a}{b}")) for a, b in RING if node in (a, b)]
        if node == "A":
            links.append(CtlLink("A~C", "C", True, virtual=True, hops=["A", "B", "C"]))
        topo.apply_report(node, report(node, links), now)
    return topo


def test_a_link_is_up_only_if_every_end_that_reported_says_so() -> None:
    topo = ring()
    topo.apply_report("B", report("B", [qkd("A", "B", "B", up=False), qkd("B", "C", "B")]), 0.0)
    states = {link.link_id: link.state for link in topo.links(0.0)}
    assert states == {"A~B": "down", "B~C": "up", "C~D": "up", "A~D": "up"}
    assert not topo.graph(link_cost, 0.0).has_edge("A", "B")


def test_a_node_that_stops_reporting_is_lost_and_its_links_leave_the_graph() -> None:
    topo = ring(now=0.0)
    for node in "ABC":  # D goes quiet
        topo.apply_report(node, report(node, [*topo.nodes[node].links.values()]), 2.5)
    assert topo.node_state("D", 3.5) == "lost"
    graph = topo.graph(link_cost, 3.5)
    assert "D" not in graph and sorted(graph.edges) == [("A", "B"), ("B", "C")]


def test_routes_go_both_ways_round_a_ring_with_their_cost() -> None:
    topo = ring()
    routes = compute_routes(topo.graph(link_cost, 0.0), topo.demand_pairs(0.0))
    assert [(r.source, r.destination) for r in routes] == [("A", "C")]
    (one, other) = sorted((p.nodes, p.cost) for p in routes[0].paths)
    assert (one[0], other[0]) == (["A", "B", "C"], ["A", "D", "C"])
    assert one[1] == other[1] >= 2.0  # two hops each, both sides alike
    cut = ring(AB=True)
    (route,) = compute_routes(cut.graph(link_cost, 0.0), cut.demand_pairs(0.0))
    assert [p.nodes for p in route.paths] == [["A", "D", "C"]]


def test_demand_to_a_distant_kme_makes_a_pair_and_to_a_neighbour_does_not() -> None:
    topo = ring()
    demand = [CtlDemand("S1", "S2", "C", 8, 8), CtlDemand("S1", "S3", "B", 8, 8)]
    links = [qkd("A", "B", "A"), qkd("A", "D", "A")]
    topo.apply_report("A", report("A", links, demand=demand), 0.0)
    assert topo.demand_pairs(0.0) == [("A", "C")]


def test_a_registered_link_is_routable_and_a_removed_one_is_not() -> None:
    topo = ring()
    topo.set_registry([CtlEntry("link", "A~C", a="A", b="C")])
    (route,) = compute_routes(topo.graph(link_cost, 0.0), [("A", "C")])
    assert route.paths[0].nodes == ["A", "C"]
    topo.set_registry([CtlEntry("link", "A~B", a="A", b="B", removed=True)])
    assert not topo.graph(link_cost, 0.0).has_edge("A", "B")
    assert {link.link_id: link.state for link in topo.links(0.0)}["A~B"] == "removed"


@pytest.mark.parametrize(
    ("sender", "message", "words"),
    [
        ("A", report("B", []), "names node B"),
        ("A", report("A", [qkd("A", "B", "A"), qkd("A", "B", "A")]), "reported twice"),
        ("A", report("A", [CtlLink("A~A", "A", True)]), "joins A to itself"),
        ("A", report("A", [qkd("A", "B", "A", qber=0.7)]), "QBER 0.7"),
        ("A", report("A", [qkd("A", "B", "A", rate_bps=5e12)]), "impossible"),
        ("A", report("A", [CtlLink("B~C", "D", True)]), "joins B and C, not A and D"),
        ("A", report("A", [CtlLink("A~B", "B", True, virtual=True)]), "is a QKD link"),
        ("A", report("A", [CtlLink("A~C", "C", True, virtual=True, hops=["B", "C"])]), "path"),
        ("A", report("A", [], peers=["A"]), "names itself"),
        ("E", report("E", []), "E is removed"),
        ("E", report("E", [CtlLink("X~Y", "C", True)]), "joins X and Y"),
    ],
)
def test_a_bad_report_is_refused_whole_and_changes_nothing(
    sender: str, message: CtlReport, words: str
) -> None:
    topo = ring()
    topo.set_registry(
        [CtlEntry("node", "E", removed=sender == "E" and not message.links),
         CtlEntry("link", "X~Y", a="X", b="Y")]
    )  # fmt: skip
    before = msgspec.json.encode({n: v.links for n, v in topo.nodes.items()})
    with pytest.raises(BadReport, match=words):
        topo.apply_report(sender, message, 1.0)
    assert msgspec.json.encode({n: v.links for n, v in topo.nodes.items()}) == before
    assert all(v.reported_at == 0.0 for v in topo.nodes.values())


def test_the_registry_keeps_the_newest_version_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    registry = Registry(path)
    node = CtlEntry("node", "X", location="Seoul")
    assert registry.adopt((2, 1), [node])
    assert not registry.adopt((1, 9), [])  # an older term's version: ignored
    assert registry.adopt((2, 2), registry.with_entry(CtlEntry("link", "A~X", a="A", b="X")))
    again = Registry(path)
    again.load()
    assert again.version == (2, 2)
    assert [(e.kind, e.name) for e in again.listing()] == [("link", "A~X"), ("node", "X")]


def test_the_etsi015_view_names_nodes_links_and_applications_as_015_does() -> None:
    topo = Topology(lost_after=3.0)
    demand = [CtlDemand("SAE_A", "SAE_C", "C", 0, 0)]
    a_links = [
        qkd("A", "B", "A", rate_bps=8000.0, qber=0.02, ready_here=4096, device="up", spent_bps=500),
        CtlLink("A~C", "C", True, virtual=True, rate_bps=1000.0, hops=["A", "B", "C"]),
    ]
    topo.apply_report("A", report("A", a_links, demand=demand, location="lab"), 0.0, 100.0)
    demand = [CtlDemand("SAE_A", "SAE_C", "C", 4096, 2048)]
    topo.apply_report("A", report("A", a_links, demand=demand, location="lab"), 1.0, 102.0)
    topo.set_registry([CtlEntry("node", "X")])
    view = etsi015_view(topo, 1.0)
    nodes = {view["qkms_names"][n["qkd_node"]["qkdn_id"]]: n["qkd_node"] for n in view["nodes"]}
    assert {n: v["qkdn_status"] for n, v in nodes.items()} == {
        "A": "OPERATING",
        "B": "FAILURE",  # known from A's link, never heard from
        "X": "NEW",
    }
    a = nodes["A"]
    assert a["qkdn_version"] == "0.1.0" and a["qkdn_location_id"] == "lab"
    assert a["qkdn_capabilities"]["key_relay_mode_enable"] is True
    links = {view["qkms_names"][x["qkdl_id"]]: x for x in a["qkd_links"]["qkd_link"]}
    phys, virt = links["A~B"], links["A~C"]
    assert phys["qkdl_type"] == "PHYS" and phys["qkdl_status"] == "ACTIVE"
    assert phys["qkdl_performance"]["skr"] == 8000
    assert phys["qkdl_performance"]["eskr"] == 7500  # less what relays spent on it
    assert phys["qkdl_performance"]["phys_perf"] == [{"perf_type": "QBER", "value": 0.02}]
    assert virt["qkdl_type"] == "VIRT" and virt["virt_next_hop"] == [qkms_uuid("node", "B")]
    (app,) = a["qkd_applications"]["qkd_app"]
    assert app["app_type"] == "CLIENT" and app["server_app_id"] == "SAE_A"
    assert app["backing_qkdl_id"] == [virt["qkdl_id"]] and virt["qkdl_applications"] == [
        app["app_id"]
    ]
    (window,) = app["app_statistics"]["statistics"]
    assert window["consumed_bits"] == 2048 and window["end_time"].endswith("Z")
    assert virt["qkdl_performance"]["expected_consumption"] == 2048  # 4096 bits over 2 s
    assert uuid.UUID(a["qkdn_id"]).version == 5


def plenty(a: str, b: str, node: str, bits: int = 1 << 22, rate: float = 65536.0) -> CtlLink:
    return qkd(a, b, node, ready_here=bits, ready_there=bits, rate_bps=rate)


def test_a_link_short_of_key_costs_more_and_routes_go_round_it() -> None:
    topo = Topology(lost_after=3.0)
    for node in "ABCD":
        links = []
        for a, b in RING:
            if node in (a, b):
                short = (a, b) == ("A", "B")
                links.append(
                    plenty(a, b, node, bits=0 if short else 1 << 22, rate=0.0 if short else 65536.0)
                )
        if node == "A":
            links.append(CtlLink("A~C", "C", True, virtual=True, hops=["A", "B", "C"]))
        topo.apply_report(node, report(node, links), 0.0)
    costs = {view.link_id: link_cost(view) for view in topo.links(0.0)}
    assert costs["A~B"] > 2 * costs["B~C"] and 1.0 <= costs["B~C"] < 1.5
    (route,) = compute_routes(topo.graph(link_cost, 0.0), topo.demand_pairs(0.0))
    assert route.paths[0].nodes == ["A", "D", "C"]  # round the starved link


def line_with_demand(asked: dict[str, tuple[int, int]]) -> Topology:
    """A line A-B-C (every link at 8 kbit/s) whose nodes report SAE demand twice, 2 s
    apart: ``asked[node] = (asked bits, served bits)`` over those 2 s, A to C and to B, B
    to C."""
    topo = Topology(lost_after=30.0)
    line = [("A", "B"), ("B", "C")]
    wants = {"A": ["C", "B"], "B": ["C"], "C": []}
    for wall in (0.0, 2.0):
        for node in "ABC":
            links = [plenty(a, b, node, rate=8192.0) for a, b in line if node in (a, b)]
            got = asked.get(node, (1 << 20, 0)) if wall else (0, 0)
            demand = [CtlDemand(f"SAE_{node}", f"SAE_{k}", k, *got) for k in wants[node]]
            topo.apply_report(node, report(node, links, demand=demand), wall, wall)
    return topo


def budget_rates(topo: Topology, **kwargs: Any) -> dict[tuple[str, str], float]:
    routes = compute_routes(topo.graph(link_cost, 2.0), topo.demand_pairs(2.0))
    budgets = allocate_budgets(topo, routes, 2.0, **kwargs)
    return {(src, b.destination): b.bits_per_s for src, bs in budgets.items() for b in bs}


def test_budgets_share_each_direction_of_a_link_among_relays_and_neighbour_pairs() -> None:
    """A->C relays over A->B and B->C; A->B and B->C are neighbour pairs whose keys are cut
    from the same halves (each end spends the blocks it owns: 4 kbit/s per direction).
    Every pair wants more than it gets, so max-min gives all three the same rate x, with
    x (1 + overhead) = 4096 on both halves; the neighbour pairs' budgets count no MAC key."""
    rate = budget_rates(line_with_demand({}))
    overhead = 1 + 512 / 8192
    x = 4096 / (1 + overhead)
    assert rate == pytest.approx({("A", "C"): x, ("A", "B"): x, ("B", "C"): x}, rel=1e-3)
    total = sum(budget_rates(line_with_demand({}), policy="throughput").values())
    assert total >= sum(rate.values()) - 1e-6


def test_budgets_count_the_mac_overhead_of_the_relay_size_the_nodes_use() -> None:
    """With 4,096-bit relays each relayed bit costs 1 + 512/4096 link bits per hop, not the
    8,192-bit relay's 1 + 512/8192: counted for the larger relay, A->C's budget would
    overrun the halves it crosses."""
    rate = budget_rates(line_with_demand({}), relay_bits=4096)
    x = 4096 / (2 + 512 / 4096)
    assert rate == pytest.approx({("A", "C"): x, ("A", "B"): x, ("B", "C"): x}, rel=1e-3)
    assert rate[("A", "C")] * (1 + 512 / 4096) + rate[("A", "B")] <= 4096 * (1 + 1e-9)


def test_a_pair_served_all_it_asked_for_is_budgeted_its_demand_not_a_share() -> None:
    """B asked for 1 kbit/s to C and got it all: its budget is that plus 10 %, below its
    share; A->C and A->B are held by A->B's half and keep theirs."""
    rate = budget_rates(line_with_demand({"B": (2048, 2048)}))
    x = 4096 / (2 + 512 / 8192)
    assert rate[("B", "C")] == pytest.approx(1024 * 1.1, rel=1e-3)
    assert rate[("A", "C")] == pytest.approx(x, rel=1e-3)
    assert rate[("A", "B")] == pytest.approx(x, rel=1e-3)
    # Refused once (asked more than it got): it wants more, so it is unbounded again.
    again = budget_rates(line_with_demand({"B": (4096, 2048)}))
    assert again[("B", "C")] == pytest.approx(x, rel=1e-3)


def test_every_live_node_gets_a_budget_set_even_an_empty_one() -> None:
    topo = line_with_demand({})
    routes = compute_routes(topo.graph(link_cost, 2.0), topo.demand_pairs(2.0))
    budgets = allocate_budgets(topo, routes, 2.0)
    assert budgets["C"] == [] and {b.destination for b in budgets["A"]} == {"B", "C"}


def test_a_ring_of_four_gets_both_sides_as_its_node_disjoint_set() -> None:
    topo = ring()
    (route,) = compute_routes(topo.graph(link_cost, 0.0), topo.demand_pairs(0.0))
    assert sorted(p.nodes for p in route.disjoint) == [["A", "B", "C"], ["A", "D", "C"]]
    cut = ring(AB=True)
    (route,) = compute_routes(cut.graph(link_cost, 0.0), cut.demand_pairs(0.0))
    assert [p.nodes for p in route.disjoint] == [["A", "D", "C"]]
    assert compute_routes(topo.graph(link_cost, 0.0), [("A", "C")], disjoint=0)[0].disjoint == []


def test_only_pairs_whose_pool_takes_disjoint_paths_get_a_disjoint_set() -> None:
    topo = ring()
    assert topo.multipath_pairs(0.0) == []
    graph, pairs = topo.graph(link_cost, 0.0), [("A", "C"), ("C", "A")]
    plain = compute_routes(graph, pairs, multipath=set(topo.multipath_pairs(0.0)))
    assert [r.disjoint for r in plain] == [[], []]
    links = [qkd(a, b, "C") for a, b in RING if "C" in (a, b)]
    links.append(CtlLink("A~C", "A", True, virtual=True, hops=["C", "D", "A"], multipath=True))
    topo.apply_report("C", report("C", links), 0.0)
    assert topo.multipath_pairs(0.0) == [("C", "A")]
    routes = compute_routes(graph, pairs, multipath=set(topo.multipath_pairs(0.0)))
    assert [len(r.disjoint) for r in routes] == [0, 2]


def test_the_disjoint_set_goes_round_a_link_short_of_key() -> None:
    # S has two neighbours, so two disjoint paths at most: S-A-D and S-B-D by hops, but
    # with A~D dry the set S-A-X-D, S-B-D costs less in all.
    links = [("S", "A"), ("S", "B"), ("A", "D"), ("B", "D"), ("A", "X"), ("X", "D")]

    def network(dry: tuple[str, str] | None) -> Topology:
        topo = Topology(lost_after=3.0)
        for node in "SABDX":
            mine = [
                plenty(a, b, node, bits=0, rate=0.0) if (a, b) == dry else plenty(a, b, node)
                for a, b in links
                if node in (a, b)
            ]
            topo.apply_report(node, report(node, mine), 0.0)
        return topo

    def disjoint(topo: Topology) -> list[list[str]]:
        (route,) = compute_routes(topo.graph(link_cost, 0.0), [("S", "D")])
        return sorted(p.nodes for p in route.disjoint)

    assert disjoint(network(None)) == [["S", "A", "D"], ["S", "B", "D"]]
    assert disjoint(network(("A", "D"))) == [["S", "A", "X", "D"], ["S", "B", "D"]]


def whole_key(topo: Topology, now: float) -> object:
    """What the controller's routes depend on, over the whole network."""
    return (
        [(link.link_id, link.up, link.removed) for link in topo.links(now)],
        topo.demand_pairs(now),
        topo.multipath_pairs(now),
        [n for n in topo.node_ids() if topo.alive(n, now)],
    )


def test_a_report_changes_its_senders_key_exactly_when_it_changes_the_whole_networks() -> None:
    topo = ring()
    topo.set_registry([CtlEntry("link", "B~D", a="B", b="D")])
    far = [CtlDemand("S1", "S2", "C", 8, 8)]
    single = CtlLink("A~C", "C", True, virtual=True, hops=["A", "B", "C"])
    pool = CtlLink("A~C", "C", True, virtual=True, hops=["A", "B", "C"], multipath=True)
    steps: list[tuple[str, list[CtlLink], list[CtlDemand], float]] = [
        ("A", [qkd("A", "B", "A"), qkd("A", "D", "A"), single], [], 1.0),  # the same
        ("B", [qkd("A", "B", "B", up=False), qkd("B", "C", "B")], [], 1.0),  # a link down
        ("B", [qkd("A", "B", "B", up=False), qkd("B", "C", "B")], [], 1.5),  # unchanged
        ("A", [qkd("A", "B", "A"), qkd("A", "D", "A")], far, 2.0),  # the same pair
        ("A", [qkd("A", "B", "A"), qkd("A", "D", "A"), pool], far, 2.0),  # a multipath pool
        ("B", [qkd("A", "B", "B"), qkd("B", "C", "B"), qkd("B", "D", "B")], [], 2.0),
        ("D", [qkd("C", "D", "D"), qkd("A", "D", "D")], [], 9.0),  # D was lost: back
        ("C", [qkd("B", "C", "C")], [], 9.0),  # C drops a link it reported
        ("E", [CtlLink("C~E", "C", True)], [], 9.0),  # a new node and link
    ]
    changes = []
    for node, links, demand, now in steps:
        whole, own = whole_key(topo, now), topo.node_key(node, now)
        topo.apply_report(node, report(node, links, demand=demand), now)
        changed = whole_key(topo, now) != whole
        assert changed == (topo.node_key(node, now) != own), (node, links, demand, now)
        changes.append(changed)
    assert changes == [False, True, False, False, True, True, True, True, True]


@pytest.mark.parametrize("seed", range(40))
def test_the_controllers_routes_cost_what_networkxs_least_cost_paths_cost(seed: int) -> None:
    """Up to three paths a pair, best first, each simple and at the cost of networkx's
    path of the same rank (``shortest_simple_paths``; ties may list other paths of the
    same cost), on graphs with and without a path."""
    rng = random.Random(seed)
    graph: nx.Graph[str] = nx.gnp_random_graph(rng.randint(2, 14), rng.uniform(0.15, 0.6), seed)
    graph = nx.relabel_nodes(graph, {n: f"N{n:02d}" for n in graph})
    for u, v in graph.edges:
        graph.edges[u, v]["cost"] = rng.choice([1, 2, 3]) if seed % 2 else rng.uniform(1, 4)
    nodes = sorted(graph)
    pairs = list(itertools.permutations(nodes[:6], 2))
    got = {(r.source, r.destination): r.paths for r in compute_routes(graph, pairs, disjoint=0)}
    for source, target in pairs:
        try:
            found = nx.shortest_simple_paths(graph, source, target, "cost")
            want = [nx.path_weight(graph, p, "cost") for p in itertools.islice(found, 3)]
        except nx.NetworkXNoPath:
            want = []
        paths = got.get((source, target), [])
        assert [p.cost for p in paths] == pytest.approx(want), (source, target)
        for p in paths:
            assert len(set(p.nodes)) == len(p.nodes) and (p.nodes[0], p.nodes[-1]) == (
                source,
                target,
            )
            assert p.cost == pytest.approx(nx.path_weight(graph, p.nodes, "cost"))
