"""Fault proxies in a lab: which sessions exist, the ``--fault`` options, and the dialling
node's config naming the proxy instead of its peer."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from cli import _labfaults
from cli._lab import node_config
from cli._labfaults import LabFaultError, parse_fault_options, session_pairs
from cli._topology import load_topology

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PAPER = load_topology(EXAMPLES / "paper-3node.toml")


def test_the_paper_lab_has_a_session_between_every_two_nodes() -> None:
    # QKD links KME1-KME2 and KME2-KME3, the relayed pool's KME1-KME3, all electors.
    assert session_pairs(PAPER) == [("KME1", "KME2"), ("KME1", "KME3"), ("KME2", "KME3")]


def test_fault_options_name_a_pair_in_either_order_or_all() -> None:
    pairs = session_pairs(PAPER)
    assert parse_fault_options(["KME2-KME1=drop:0.1"], pairs) == {("KME1", "KME2"): "drop:0.1"}
    everywhere = parse_fault_options(["all=none", "KME1-KME3=cut"], pairs)
    assert everywhere == {
        ("KME1", "KME2"): "none",
        ("KME1", "KME3"): "cut",
        ("KME2", "KME3"): "none",
    }


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("KME1-KME2", "expected PAIR=SPEC"),
        ("KME1-KME9=none", "not a pair of nodes with a peer session"),
        ("KME1-KME2=drop:3", "a probability is from 0 to 1"),
    ],
)
def test_a_bad_fault_option_is_refused_naming_it(option: str, message: str) -> None:
    with pytest.raises(LabFaultError, match=message):
        parse_fault_options([option], session_pairs(PAPER))


def test_the_dialling_node_reaches_its_peer_through_the_proxy(tmp_path: Path) -> None:
    ports = {n: {"peer": 7000 + 3 * i, "api": 7001 + 3 * i} for i, n in enumerate(PAPER.nodes)}
    seeds = {link.link_id: "ab" * 32 for link in PAPER.links}
    plan = _labfaults.plan(
        {("KME1", "KME2"): "delay:5ms"},
        {n: p["peer"] for n, p in ports.items()},
        [9100],
        session_pairs(PAPER),
    )
    assert plan["routes"]["KME1-KME2"]["target"] == "127.0.0.1:7003"  # KME2's peer port
    via = _labfaults.dial_addresses(plan)
    assert via == {("KME1", "KME2"): "127.0.0.1:9100"}
    cfg = {
        n: tomllib.loads(node_config(PAPER, n, lab=tmp_path, ports=ports, seeds=seeds, via=via))
        for n in ("KME1", "KME2")
    }
    assert cfg["KME1"]["peers"]["KME2"]["address"] == "127.0.0.1:9100"
    assert cfg["KME1"]["peers"]["KME3"]["address"] == "127.0.0.1:7006"  # not proxied
    assert cfg["KME2"]["peers"]["KME1"]["address"] == "127.0.0.1:7000"  # KME2 never dials it


def test_fault_commands_on_a_lab_without_a_proxy_say_how_to_get_one() -> None:
    with pytest.raises(LabFaultError, match="lab up --fault"):
        _labfaults.set_fault(None, "KME1", "KME2", "cut")
    with pytest.raises(LabFaultError, match="lab up --fault all=none"):
        _labfaults.partition(
            {"routes": {}, "sessions": ["KME1-KME2"], "control": "/nonexistent"}, ["KME1"], ["KME2"]
        )
