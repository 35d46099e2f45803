"""The shipped topologies load, and a lab hands every node distinct ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from cli._lab import free_ports
from cli._topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(
    ("name", "nodes", "links"),
    [("pair", 2, 1), ("paper-3node", 3, 2), ("ring4", 4, 4), ("kreonet17", 17, 23)],
)
def test_example_topologies_load(name: str, nodes: int, links: int) -> None:
    topo = load_topology(EXAMPLES / f"{name}.toml")
    assert (len(topo.nodes), len(topo.links)) == (nodes, links)
    for node in topo.nodes:  # every node is reachable by at least one QKD link
        assert topo.neighbours(node)


def test_paper_network_has_no_link_between_its_ends() -> None:
    topo = load_topology(EXAMPLES / "paper-3node.toml")
    assert topo.neighbours("KME1") == ["KME2"] and topo.neighbours("KME3") == ["KME2"]


def test_ports_for_a_large_lab_are_all_distinct() -> None:
    ports = free_ports(3 * 17)
    assert len(set(ports)) == len(ports)
