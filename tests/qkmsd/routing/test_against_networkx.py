"""Routes on random small networks agree with networkx (Yen, min-cost flow) as the oracle."""

from __future__ import annotations

import itertools
import math

import networkx as nx
from hypothesis import given, settings
from hypothesis import strategies as st

from qkmsd.routing import Path, Topology


@st.composite
def networks(draw: st.DrawFn, *, integer: bool = False) -> tuple[Topology, nx.DiGraph[str]]:
    """A random network of 2-9 nodes: each link's two directions get their own cost, or
    one direction none (gone), and sometimes both directions the same cost (ties)."""
    n = draw(st.integers(2, 9))
    names = [f"n{i}" for i in range(n)]
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i + 1 :]]
    links = draw(st.lists(st.sampled_from(pairs), unique=True, max_size=len(pairs)))
    cost = st.integers(1, 6).map(float) if integer else st.floats(0.5, 30.0)
    topology = Topology()
    graph: nx.DiGraph[str] = nx.DiGraph()
    for name in names:
        topology.add_node(name)
        graph.add_node(name)
    for a, b in links:
        ab = draw(st.one_of(st.none(), cost)) if draw(st.booleans()) else draw(cost)
        ba = ab if ab is not None and draw(st.booleans()) else draw(st.one_of(st.none(), cost))
        topology.set_cost(a, b, ab, ba)
        for u, v, c in ((a, b, ab), (b, a, ba)):
            if c is not None:
                graph.add_edge(u, v, weight=c)
    return topology, graph


def check_path(p: Path, src: str, dst: str, graph: nx.DiGraph[str]) -> None:
    assert p.nodes[0] == src and p.nodes[-1] == dst
    assert len(set(p.nodes)) == len(p.nodes)
    assert all(graph.has_edge(u, v) for u, v in itertools.pairwise(p.nodes))
    assert math.isclose(p.cost, nx.path_weight(graph, list(p.nodes), "weight"), rel_tol=1e-9)


@settings(max_examples=300, deadline=None)
@given(networks(), st.integers(0, 6), st.data())
def test_the_k_routes_cost_what_networkx_s_first_k_paths_cost(
    net: tuple[Topology, nx.DiGraph[str]], alternates: int, data: st.DataObject
) -> None:
    topology, graph = net
    names = sorted(graph.nodes)
    src, dst = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))
    ours = topology.routes(src, dst, alternates)
    if src == dst or not nx.has_path(graph, src, dst):
        assert ours == []
        return
    theirs = list(
        itertools.islice(nx.shortest_simple_paths(graph, src, dst, "weight"), alternates + 1)
    )
    assert len(ours) == len(theirs)
    assert len({p.nodes for p in ours}) == len(ours)
    for p in ours:
        check_path(p, src, dst, graph)
    assert [p.cost for p in ours] == sorted(p.cost for p in ours)
    expected = sorted(nx.path_weight(graph, p, "weight") for p in theirs)
    assert all(
        math.isclose(a, b, rel_tol=1e-9)
        for a, b in zip([p.cost for p in ours], expected, strict=True)
    )
    # Asked again (distances now cached), the same answer.
    assert topology.routes(src, dst, alternates) == ours


def split(graph: nx.DiGraph[str], src: str, dst: str) -> nx.DiGraph[tuple[str, str]]:
    """Each node an in-node and an out-node joined by an arc of capacity 1."""
    out: nx.DiGraph[tuple[str, str]] = nx.DiGraph()
    for v in graph.nodes:
        out.add_edge((v, "in"), (v, "out"), capacity=1 if v not in (src, dst) else 99, weight=0)
    for u, v, c in graph.edges.data("weight", default=1.0):
        out.add_edge((u, "out"), (v, "in"), capacity=1, weight=int(c))
    return out


@settings(max_examples=300, deadline=None)
@given(networks(integer=True), st.integers(1, 5), st.data())
def test_disjoint_routes_are_node_disjoint_as_many_as_can_be_and_of_least_total_cost(
    net: tuple[Topology, nx.DiGraph[str]], n: int, data: st.DataObject
) -> None:
    topology, graph = net
    names = sorted(graph.nodes)
    src, dst = data.draw(st.sampled_from(names)), data.draw(st.sampled_from(names))
    ours = topology.disjoint_routes(src, dst, n)
    if src == dst:
        assert ours == []
        return
    for p in ours:
        check_path(p, src, dst, graph)
    inner = [v for p in ours for v in p.nodes[1:-1]]
    assert len(inner) == len(set(inner)), "an intermediate node on two routes"
    assert len({p.nodes for p in ours}) == len(ours)
    assert [(p.cost, p.nodes) for p in ours] == sorted((p.cost, p.nodes) for p in ours)
    # As many as networkx's maximum flow allows, up to n, and no cheaper set of as many.
    flow_graph = split(graph, src, dst)
    most = int(nx.maximum_flow_value(flow_graph, (src, "out"), (dst, "in")))
    assert len(ours) == min(n, most)
    if ours:
        flow_graph.nodes[(src, "out")]["demand"] = -len(ours)
        flow_graph.nodes[(dst, "in")]["demand"] = len(ours)
        least = nx.min_cost_flow_cost(flow_graph)
        assert sum(p.cost for p in ours) == least
