"""Lab node configs: QKD neighbours are peers, SAE-bearing nodes without a QKD link between
them are peers too and keep an end-to-end relay pool, and every node knows the topology."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli._lab import LAB_RELAY, node_config, relay_partners
from cli._labdevices import plan
from cli._topology import Topology, TopologyError, load_topology, topology_from_mapping
from cli.main import qkmsctl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def configs(topo: Topology, lab: Path) -> dict[str, dict[str, Any]]:
    """Every node's config as the lab writes it, parsed back."""
    ports = {n: {"peer": 7000 + 3 * i, "api": 7001 + 3 * i} for i, n in enumerate(topo.nodes)}
    seeds = {link.link_id: "ab" * 32 for link in topo.links}
    return {
        node: tomllib.loads(node_config(topo, node, lab=lab, ports=ports, seeds=seeds))
        for node in topo.nodes
    }


def test_paper_network_ends_are_peers_with_a_pool_and_the_middle_has_none(
    tmp_path: Path,
) -> None:
    cfg = configs(load_topology(EXAMPLES / "paper-3node.toml"), tmp_path)
    assert set(cfg["KME1"]["peers"]) == {"KME2", "KME3"}
    assert set(cfg["KME3"]["peers"]) == {"KME1", "KME2"}
    assert set(cfg["KME2"]["peers"]) == {"KME1", "KME3"}  # its QKD neighbours only
    assert cfg["KME1"]["relay"]["pools"] == {"KME3": {}}
    assert cfg["KME3"]["relay"]["pools"] == {"KME1": {}}
    assert "pools" not in cfg["KME2"]["relay"]
    # The direct session of a pool reaches the far end's peer port.
    assert cfg["KME1"]["peers"]["KME3"]["address"] == cfg["KME3"]["listen"]["peer"]
    assert cfg["KME3"]["peers"]["KME1"]["address"] == cfg["KME1"]["listen"]["peer"]
    # A pool is not a QKD link: no [links] entry joins the ends.
    assert set(cfg["KME1"]["links"]) == {"KME1~KME2"}


def test_every_node_knows_the_whole_topology_and_the_lab_relay_settings(
    tmp_path: Path,
) -> None:
    cfg = configs(load_topology(EXAMPLES / "paper-3node.toml"), tmp_path)
    for node in ("KME1", "KME2", "KME3"):
        relay = cfg[node]["relay"]
        assert relay["topology"] == [["KME1", "KME2"], ["KME2", "KME3"]]
        assert {k: relay[k] for k in LAB_RELAY} == LAB_RELAY


def test_ring_opposite_nodes_with_saes_share_a_pool_split_over_both_sides(
    tmp_path: Path,
) -> None:
    topo = load_topology(EXAMPLES / "ring4.toml")  # [relay] paths = "disjoint"
    cfg = configs(topo, tmp_path)
    assert cfg["KME_1"]["relay"]["pools"] == {"KME_3": {"paths": "disjoint"}}
    assert cfg["KME_3"]["relay"]["pools"] == {"KME_1": {"paths": "disjoint"}}
    assert set(cfg["KME_1"]["peers"]) == {"KME_2", "KME_3", "KME_4"}
    for node in ("KME_2", "KME_4"):  # no SAEs: neighbours and eligible nodes, no pools
        assert "pools" not in cfg[node]["relay"]
    assert set(cfg["KME_2"]["peers"]) == {"KME_1", "KME_3", "KME_4"}  # KME_4 reports to it
    assert set(cfg["KME_4"]["peers"]) == {"KME_1", "KME_2", "KME_3"}
    assert len(cfg["KME_4"]["relay"]["topology"]) == 4


def test_pools_join_every_pair_of_sae_bearing_nodes_without_a_qkd_link() -> None:
    topo = load_topology(EXAMPLES / "kreonet17.toml")
    centres = ["KME_BUSAN", "KME_DAEJEON", "KME_GWANGJU", "KME_SEOUL"]
    for node in centres:
        assert relay_partners(topo, node) == [c for c in centres if c != node]
    assert relay_partners(topo, "KME_DAEGU") == []
    # Neighbours with SAEs share a QKD link already: no pool.
    assert relay_partners(load_topology(EXAMPLES / "pair.toml"), "KME_A") == []


@pytest.mark.parametrize("example", ["paper-3node", "ring4", "kreonet17"])
def test_config_check_accepts_every_generated_config(example: str, tmp_path: Path) -> None:
    topo = load_topology(EXAMPLES / f"{example}.toml")
    ports = {n: {"peer": 7000 + 3 * i, "api": 7001 + 3 * i} for i, n in enumerate(topo.nodes)}
    seeds = {link.link_id: "ab" * 32 for link in topo.links}
    # Three nodes are enough: an end of pools, and (in kreonet17) one without.
    for node in list(topo.nodes)[:3]:
        path = tmp_path / f"{node}.toml"
        path.write_text(node_config(topo, node, lab=tmp_path, ports=ports, seeds=seeds))
        result = CliRunner().invoke(qkmsctl, ["config", "check", str(path)])
        assert result.exit_code == 0, result.output
        assert f"(node {node}," in result.output


def test_eligible_nodes_elect_among_themselves_over_direct_sessions(tmp_path: Path) -> None:
    topo = load_topology(EXAMPLES / "ring4.toml")  # KME_1..3 eligible, KME_4 not
    cfg = configs(topo, tmp_path)
    assert cfg["KME_1"]["controller"]["electors"] == {"KME_2": 50, "KME_3": 50}
    assert "KME_3" in cfg["KME_1"]["peers"] and "KME_1" in cfg["KME_3"]["peers"]
    # A node that is not eligible knows the eligible nodes and has a session with each:
    # it reports to the one that holds the role.
    assert cfg["KME_4"]["controller"] == {
        "eligible": False,
        "priority": 0,
        "electors": {"KME_1": 100, "KME_2": 50, "KME_3": 50},
    }
    assert {"KME_1", "KME_2", "KME_3"} <= set(cfg["KME_4"]["peers"])
    assert "KME_4" in cfg["KME_2"]["peers"]


DEVICE_TOPOLOGY = """
name = "devices"
[nodes.KME_A]
[nodes.KME_B]
[[links]]
a = "KME_A"
b = "KME_B"
driver = "vendor-tcp"
device = { rate_bps = 4096.0 }
"""


def test_a_vendor_tcp_link_end_dials_its_own_emulator_with_its_role(tmp_path: Path) -> None:
    topo = topology_from_mapping(tomllib.loads(DEVICE_TOPOLOGY), label="t")
    devices = plan(
        [("KME_A~KME_B", "KME_A", "KME_B", "vendor-tcp")],
        [9001, 9002],
        {"KME_A~KME_B": dict(topo.links[0].device)},
    )
    ports = {n: {"peer": 7000 + 3 * i, "api": 7001 + 3 * i} for i, n in enumerate(topo.nodes)}
    seeds = {"KME_A~KME_B": "ab" * 32}
    params = {
        node: tomllib.loads(
            node_config(topo, node, lab=tmp_path, ports=ports, seeds=seeds, devices=devices)
        )["links"]["KME_A~KME_B"]["params"]
        for node in topo.nodes
    }
    assert params["KME_A"] == {
        "backoff_initial": 0.1,
        "backoff_max": 1.0,
        "host": "127.0.0.1",
        "port": 9001,
        "role": "alice",
    }
    assert params["KME_B"]["port"] == 9002 and params["KME_B"]["role"] == "bob"
    assert devices["KME_A~KME_B"]["KME_A"]["options"] == {"rate_bps": 4096.0}


@pytest.mark.parametrize(
    ("link", "message"),
    [
        ('driver = "vendor-tcp"\ndevice = { speed = 1 }', "device: unknown option(s) speed"),
        ('driver = "paired"\ndevice = { qber = 0.1 }', "only vendor-tcp links run device"),
    ],
)
def test_a_link_device_table_is_checked(link: str, message: str) -> None:
    text = DEVICE_TOPOLOGY.replace('driver = "vendor-tcp"\ndevice = { rate_bps = 4096.0 }', link)
    with pytest.raises(TopologyError, match=message.replace("(", r"\(").replace(")", r"\)")):
        topology_from_mapping(tomllib.loads(text), label="t")
