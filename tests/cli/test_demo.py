"""``qkmsctl demo``: which network and which nodes it shows, and how it words what it saw.

The demo itself runs real daemons: tests/system/test_demo.py.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli._errors import CliError
from cli._topology import load_topology, topology_from_mapping
from cli.demo import (
    DEMO_TOPOLOGY,
    Ends,
    check_line,
    farthest_ends,
    first_sae,
    hold_for_viewer,
    hop_link_id,
    hop_links,
    relay_trace,
    same_check,
    trace_line,
)
from cli.main import qkmsctl

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_the_embedded_network_is_the_paper_s_three_node_line() -> None:
    embedded = topology_from_mapping(tomllib.loads(DEMO_TOPOLOGY), label="embedded")
    paper = load_topology(EXAMPLES / "paper-3node.toml")
    assert embedded == paper


@pytest.mark.parametrize(
    ("example", "ends", "saes"),
    [
        ("paper-3node", ("KME1", "KME3"), ("SAE1", "SAE3")),
        ("ring4", ("KME_1", "KME_3"), ("SAE_1", "SAE_3")),
        # 464 km by the shortest fibre path, the longest between two centres with SAEs.
        ("kreonet17", ("KME_BUSAN", "KME_SEOUL"), ("SAE_BUSAN", "SAE_SEOUL")),
    ],
)
def test_the_demo_relays_between_the_farthest_sae_bearing_nodes(
    example: str, ends: tuple[str, str], saes: tuple[str, str]
) -> None:
    topo = load_topology(EXAMPLES / f"{example}.toml")
    chosen = farthest_ends(topo, label=example)
    assert chosen == Ends(*ends) and chosen.source < chosen.destination
    assert (first_sae(topo, chosen.source), first_sae(topo, chosen.destination)) == saes


def test_a_network_where_every_sae_node_pair_shares_a_link_has_nothing_to_relay() -> None:
    with pytest.raises(CliError, match="nothing needs relay"):
        farthest_ends(load_topology(EXAMPLES / "pair.toml"), label="pair.toml")


def test_demo_on_such_a_network_stops_before_starting_anything(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        qkmsctl, ["demo", "--topology", str(EXAMPLES / "pair.toml"), "--dir", str(tmp_path)]
    )
    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: topology {EXAMPLES / 'pair.toml'}: no two nodes")
    assert not (tmp_path / "lab.json").exists()


def test_keep_needs_a_directory() -> None:
    result = CliRunner().invoke(qkmsctl, ["demo", "--keep"])
    assert result.exit_code == 2 and "--keep needs --dir" in result.stderr


def test_hops_are_named_by_their_link_ids() -> None:
    assert hop_links(["KME1", "KME2", "KME3"]) == ["KME1~KME2", "KME2~KME3"]
    assert hop_links(["KME_SEOUL", "KME_SUWON", "KME_CHEONAN"]) == [
        "KME_SEOUL~KME_SUWON",
        "KME_CHEONAN~KME_SUWON",
    ]


def record(node_role: str, state: str, **extra: object) -> dict[str, object]:
    return {
        "relay_id": "r-7",
        "e2e_link_id": "KME1~KME3",
        "path": ["KME1", "KME2", "KME3"],
        "role": node_role,
        "state": state,
        "bits": 4096,
        "started_at": 100.0,
        "ended_at": 100.012,
        "error": "",
        **extra,
    }


def test_a_relay_is_traced_node_by_node_along_its_path() -> None:
    other = record("source", "confirmed", relay_id="r-8")
    trace = relay_trace(
        {
            "KME1": [other, record("source", "confirmed")],
            "KME2": [record("intermediate", "forwarded", ended_at=None)],
            "KME3": [other],
        },
        "r-7",
    )
    lines = [trace_line(node, rec) for node, rec in trace]
    assert lines == [
        "  KME1: source       confirmed after 12 ms, 4096 bits of key",
        "  KME2: intermediate forwarded, 4096 bits of key",
        "  KME3: no record of it",
    ]


def test_checks_agree_only_on_the_same_ids_and_key_check_value() -> None:
    a = {"link_id": "KME1~KME3", "ready_ids": [4, 5, 6], "kcv": "a1b2c3"}
    assert same_check([a, dict(a)])
    assert not same_check([a, {**a, "kcv": "000000"}])
    assert not same_check([a, {**a, "ready_ids": [4, 5]}])
    empty = {**a, "ready_ids": [], "kcv": "000000"}
    assert not same_check([empty, dict(empty)])  # nothing to compare is no evidence
    assert check_line("KME1", a) == "  KME1: 3 ready blocks, ids 4..6, KCV a1b2c3"
    assert check_line("KME3", {**a, "ready_ids": []}) == "  KME3: no ready blocks in the window"


def test_a_relay_test_hop_is_named_by_its_link_id() -> None:
    nodes = {"KME-1", "KME-2", "KME1"}
    assert hop_link_id({"hop": "KME-2-KME-1", "bytes": 1}, nodes) == "KME-1~KME-2"
    assert hop_link_id({"link_id": "KME-1~KME-2", "bytes": 1}, nodes) == "KME-1~KME-2"
    assert hop_link_id({"hop": "X-Y", "bytes": 1}, nodes) == "X-Y"


def test_at_a_terminal_the_demo_waits_for_enter_with_the_dashboard_url(
    capsys: pytest.CaptureFixture[str],
) -> None:
    waited: list[bool] = []
    hold_for_viewer("http://127.0.0.1:1/", interactive=True, wait=lambda: waited.append(True))
    out = capsys.readouterr().out
    assert waited == [True]
    assert "http://127.0.0.1:1/" in out and "Press Enter" in out


def test_without_a_terminal_the_demo_does_not_wait(capsys: pytest.CaptureFixture[str]) -> None:
    def never() -> None:
        raise AssertionError("waited without a terminal")

    hold_for_viewer("http://127.0.0.1:1/", interactive=False, wait=never)
    assert "not waiting" in capsys.readouterr().out
