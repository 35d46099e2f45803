"""The netns lab's plan: namespaces, veth pairs, addresses and the ``ip`` commands.

Plain data, no root: the commands are checked, not run (``tests/system/test_lab_netns.py``
runs them where namespaces can be made).
"""

from __future__ import annotations

import ipaddress
import json
import tomllib
from pathlib import Path

import pytest

from cli import _netns
from cli._lab import Lab, LabError, node_config, talking_pairs
from cli._topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def paper_plan(lab: Path) -> _netns.NetnsPlan:
    topo = load_topology(EXAMPLES / "paper-3node.toml")
    return _netns.plan(lab, list(topo.nodes), talking_pairs(topo))


def test_every_pair_that_talks_gets_a_veth_pair_and_no_other_pair_does() -> None:
    topo = load_topology(EXAMPLES / "ring4.toml")
    pairs = talking_pairs(topo)
    # The ring's links, the pool between the SAE nodes, the eligible nodes' elections, and
    # KME_4's reports to whichever eligible node holds the controller role.
    assert ("KME_1", "KME_3") in pairs and ("KME_1", "KME_2") in pairs
    assert ("KME_2", "KME_4") in pairs  # no link, no pool: KME_4 reports to KME_2 if it leads
    assert len(pairs) == 6
    plan = _netns.plan(Path("/tmp/lab"), list(topo.nodes), pairs)
    assert sorted((v.a, v.b) for v in plan.veths) == pairs


def test_namespaces_are_named_per_lab_so_two_labs_never_clash(tmp_path: Path) -> None:
    one, two = paper_plan(tmp_path / "one"), paper_plan(tmp_path / "two")
    assert one.prefix != two.prefix
    assert all(ns.startswith(one.prefix) for ns in one.namespaces.values())
    assert len(set(one.namespaces.values())) == 3
    assert paper_plan(tmp_path / "one") == one  # the same directory: the same names


def test_each_pair_has_its_own_private_30_and_device_names_fit_and_are_unique() -> None:
    plan = paper_plan(Path("/tmp/lab"))
    nets = set()
    for v in plan.veths:
        net = ipaddress.ip_network(f"{v.addr_a}/30", strict=False)
        assert ipaddress.ip_address(v.addr_b) in net and v.addr_a != v.addr_b
        assert net.subnet_of(_netns.NET) and net.is_private
        nets.add(net)
        assert len(v.dev_a) <= 15 and len(v.dev_b) <= 15
    assert len(nets) == len(plan.veths)
    for node in plan.namespaces:
        here = [v.dev_a if v.a == node else v.dev_b for v in plan.veths if node in (v.a, v.b)]
        assert len(here) == len(set(here))


def test_a_node_dials_a_peer_at_the_peers_end_of_their_pair(tmp_path: Path) -> None:
    topo = load_topology(EXAMPLES / "paper-3node.toml")
    plan = paper_plan(tmp_path)
    ports = {n: {"peer": 7000 + 3 * i, "api": 7001 + 3 * i} for i, n in enumerate(topo.nodes)}
    seeds = {link.link_id: "ab" * 32 for link in topo.links}
    cfg = tomllib.loads(
        node_config(topo, "KME1", lab=tmp_path, ports=ports, seeds=seeds, netns=plan)
    )
    veth = plan.veth("KME1", "KME2")
    kme2 = veth.addr_b if veth.b == "KME2" else veth.addr_a
    assert cfg["peers"]["KME2"]["address"] == f"{kme2}:{ports['KME2']['peer']}"
    assert cfg["listen"]["peer"] == f"0.0.0.0:{ports['KME1']['peer']}"
    assert cfg["listen"]["api"].startswith("127.0.0.1:")  # the namespace's own loopback


def test_up_commands_touch_only_the_labs_namespaces() -> None:
    plan = paper_plan(Path("/tmp/lab"))
    commands = plan.up_commands()
    for command in commands:
        assert command[0] == "ip"
        if command[1:3] == ["netns", "add"]:
            assert command[3].startswith(plan.prefix)
        else:
            # Every link and address command runs inside one of the lab's namespaces.
            assert command[1] == "-n" and command[2] in plan.namespaces.values(), command
    adds = [c for c in commands if "addr" in c]
    assert len(adds) == 2 * len(plan.veths)


def test_cut_sets_both_ends_of_that_pair_down_and_heal_sets_them_up() -> None:
    plan = paper_plan(Path("/tmp/lab"))
    veth = plan.veth("KME2", "KME1")
    ns1, ns2 = plan.namespaces["KME1"], plan.namespaces["KME2"]
    dev1 = veth.dev_a if veth.a == "KME1" else veth.dev_b
    dev2 = veth.dev_b if veth.a == "KME1" else veth.dev_a
    assert sorted(plan.cut_commands("KME1", "KME2")) == sorted(
        [
            ["ip", "-n", ns1, "link", "set", dev1, "down"],
            ["ip", "-n", ns2, "link", "set", dev2, "down"],
        ]
    )
    assert [c[-1] for c in plan.heal_commands("KME1", "KME2")] == ["up", "up"]


def test_a_pair_that_never_talks_cannot_be_cut() -> None:
    nodes = ["KME_1", "KME_2", "KME_3"]
    plan = _netns.plan(Path("/tmp/lab"), nodes, [("KME_1", "KME_2"), ("KME_2", "KME_3")])
    with pytest.raises(_netns.NetnsError, match="KME_1 and KME_3 have no link"):
        plan.cut_commands("KME_1", "KME_3")


def test_the_plan_survives_lab_json() -> None:
    plan = paper_plan(Path("/tmp/lab"))
    assert _netns.NetnsPlan.from_json(json.loads(json.dumps(plan.to_json()))) == plan


def test_without_namespaces_the_lab_says_why_and_runs_on_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_netns, "unavailable", lambda: "`ip netns add` fails (not root)")
    said: list[str] = []
    topo = load_topology(EXAMPLES / "paper-3node.toml")
    assert Lab(tmp_path)._netns_plan(topo, said.append) is None
    assert said == [
        "--netns: `ip netns add` fails (not root); the lab runs on loopback instead (no cut/heal)"
    ]


def test_cut_on_a_loopback_lab_is_refused_with_the_fix(tmp_path: Path) -> None:
    kme = {"pid": None, "config": "x", "admin_socket": "x", "log": "x"}
    manifest = {"kmes": {"KME1": kme, "KME2": kme}, "netns": None}
    (tmp_path / "lab.json").write_text(json.dumps(manifest))
    with pytest.raises(LabError, match="--netns"):
        Lab(tmp_path).cut("KME1", "KME2")
