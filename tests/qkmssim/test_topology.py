"""The simulator's network families are built as specified, the same for the same seed."""

from __future__ import annotations

import math
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkmssim import SimTopologyError, family_topology, load
from qkmssim._topology import FAMILY_LINK_KM, R0_BPS, RGG_RANGE_KM, rate_at

ROOT = Path(__file__).parents[2]
seeds = st.integers(min_value=0, max_value=2**32)


def degrees(g: nx.Graph[str]) -> list[int]:
    return sorted(d for _, d in g.degree())


@given(n=st.integers(min_value=2, max_value=60))
def test_a_star_is_one_hub_linked_to_every_other_node(n: int) -> None:
    g = family_topology("star", n).graph()
    assert g.number_of_nodes() == n and g.number_of_edges() == n - 1
    assert degrees(g)[-1] == n - 1 and nx.is_tree(g)


@given(n=st.integers(min_value=3, max_value=60))
def test_a_ring_is_one_cycle_through_every_node(n: int) -> None:
    g = family_topology("ring", n).graph()
    assert g.number_of_edges() == n and set(degrees(g)) == {2} and nx.is_connected(g)


@given(n=st.integers(min_value=6, max_value=60))
def test_a_bridge_is_two_rings_joined_by_one_link(n: int) -> None:
    g = family_topology("bridge", n).graph()
    bridges = list(nx.bridges(g))
    assert len(bridges) == 1
    g.remove_edge(*bridges[0])
    parts = list(nx.connected_components(g))
    assert len(parts) == 2
    for part in parts:
        ring = g.subgraph(part)
        assert set(degrees(ring)) == {2} and ring.number_of_edges() == len(part)


@given(n=st.integers(min_value=4, max_value=81))
def test_a_grid_links_each_node_to_its_right_and_lower_neighbours(n: int) -> None:
    topo = family_topology("grid", n)
    g = topo.graph()
    cols = math.ceil(math.sqrt(n))
    assert nx.is_connected(g) and max(degrees(g)) <= 4
    for link in topo.links:
        i, j = sorted(int(x[1:]) for x in (link.a, link.b))
        assert j - i in (1, cols) and (j - i != 1 or i // cols == j // cols)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(min_value=2, max_value=80), seed=seeds)
def test_random_is_a_spanning_tree_plus_extra_links(n: int, seed: int) -> None:
    topo = family_topology("random", n, seed=seed)
    g = topo.graph()
    assert nx.is_connected(g)
    assert g.number_of_edges() == n - 1 + min(n // 2, (n - 1) * (n - 2) // 2)
    assert family_topology("random", n, seed=seed) == topo


@settings(max_examples=20, deadline=None)
@given(n=st.integers(min_value=2, max_value=120), seed=seeds)
def test_rgg_links_only_nodes_within_range_at_the_distance_rate(n: int, seed: int) -> None:
    topo = family_topology("rgg", n, seed=seed)
    assert nx.is_connected(topo.graph())
    for link in topo.links:
        assert 0 <= link.km <= RGG_RANGE_KM
        assert link.rate_bps == pytest.approx(R0_BPS * 10 ** (-0.02 * link.km))
    assert family_topology("rgg", n, seed=seed) == topo


def test_rgg_of_200_nodes_is_connected_with_about_six_neighbours_each() -> None:
    g = family_topology("rgg", 200, seed=1).graph()
    mean = 2 * g.number_of_edges() / 200
    assert nx.is_connected(g) and 3 < mean < 9


def test_family_links_have_the_family_length_rate() -> None:
    for link in family_topology("ring", 5).links:
        assert link.km == FAMILY_LINK_KM and link.rate_bps == rate_at(FAMILY_LINK_KM)


def test_each_family_has_its_best_connected_nodes_as_electors() -> None:
    topo = family_topology("star", 5)
    assert max(topo.electors, key=lambda n: topo.electors[n]) == "N0"
    assert len(topo.electors) == 3


def test_kreonet17_loads_with_its_eligible_nodes() -> None:
    topo = load(str(ROOT / "examples" / "kreonet17.toml"))
    assert len(topo.nodes) == 17 and len(topo.links) == 23
    assert topo.electors["KME_DAEJEON"] == 100 and nx.is_connected(topo.graph())


@pytest.mark.parametrize(
    "spec", ["star:1", "ring:x", "mesh:4", "no/such/file.toml", "bridge:5", "grid:5000"]
)
def test_a_bad_topology_is_a_clear_error(spec: str) -> None:
    with pytest.raises(SimTopologyError, match=spec.split(":")[0].split("/")[0]):
        load(spec)
