"""The relay benchmark's pure helpers: the line, the node configs, the figures."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import pytest

from . import load_benchmark


@pytest.fixture(scope="module")
def common() -> Any:
    return load_benchmark("_relay_common")


def test_each_relayed_bit_costs_its_share_of_512_overhead_bits_per_hop(common: Any) -> None:
    assert common.link_bits_per_relayed_bit(8192) == pytest.approx(8704 / 8192)
    # All of a link's key turned into hops of completed relays: efficiency 1.
    assert common.efficiency(8192.0, 8704.0, 8192) == pytest.approx(1.0)
    assert common.efficiency(4096.0, 8704.0, 8192) == pytest.approx(0.5)


def test_a_line_has_rising_ids_and_one_slower_middle_link(common: Any) -> None:
    line = common.make_line(4, 1000.0, bottleneck=0.5)
    assert line.nodes == ("KME_A", "KME_B", "KME_C", "KME_D", "KME_E")
    assert line.rates_bps == (1000.0, 1000.0, 500.0, 1000.0)
    assert line.bottleneck == 2 and line.hops == 4
    assert line.links[2] == "KME_C~KME_D" and line.e2e_link == "KME_A~KME_E"
    uniform = common.make_line(2, 1000.0)
    assert uniform.bottleneck == 0 and uniform.neighbours("KME_B") == ["KME_A", "KME_C"]
    # Higher ids listen first: each node dials only nodes already up.
    assert common.dial_order(uniform) == ["KME_C", "KME_B", "KME_A"]
    with pytest.raises(ValueError):
        common.make_line(0, 1000.0)
    with pytest.raises(ValueError):
        common.make_line(2, 1000.0, bottleneck=0.0)


def _config(common: Any, node: str) -> dict[str, Any]:
    line = common.make_line(2, 2000.0)
    text = common.node_toml(
        line,
        node,
        home=Path("/h") / node,
        pki=Path("/pki"),
        peer_addresses={"KME_C": "127.0.0.1:7003"},
        link_params={"block_bits": 4096},
        relay={"block_bits": 8192, "in_flight": 4},
        saes={"SAE_A": "KME_A", "SAE_C": "KME_C"},
    )
    return tomllib.loads(text)


def test_the_ends_keep_the_pool_and_talk_directly(common: Any) -> None:
    a = _config(common, "KME_A")
    assert set(a["peers"]) == {"KME_B", "KME_C"}
    assert a["peers"]["KME_C"]["address"] == "127.0.0.1:7003"
    assert a["peers"]["KME_B"]["address"] == "127.0.0.1:1"  # not up yet: never dialled
    assert set(a["relay"]["pools"]) == {"KME_C"}
    assert a["relay"]["topology"] == [["KME_A", "KME_B"], ["KME_B", "KME_C"]]
    assert a["links"]["KME_A~KME_B"]["params"]["rate_bps"] == 2000.0
    assert a["links"]["KME_A~KME_B"]["peer"] == "KME_B"


def test_the_middle_node_has_both_links_and_no_pool(common: Any) -> None:
    b = _config(common, "KME_B")
    assert set(b["links"]) == {"KME_A~KME_B", "KME_B~KME_C"}
    assert "pools" not in b["relay"]
    # The two links have different seeds, the same at both ends of each.
    c = _config(common, "KME_C")
    assert b["links"]["KME_B~KME_C"]["params"] == c["links"]["KME_B~KME_C"]["params"]
    assert (
        b["links"]["KME_A~KME_B"]["params"]["seed"] != b["links"]["KME_B~KME_C"]["params"]["seed"]
    )


def test_figures_helpers(common: Any) -> None:
    assert common.rate(10.0, 30.0, 4.0) == 5.0 and common.rate(0.0, 1.0, 0.0) == 0.0
    assert common.latency_bound_bps(4, 8192, 0.032) == pytest.approx(1_024_000)
    assert common.percentiles([]) == []
    assert common.percentiles([3.0, 1.0, 2.0], (0.5, 1.0)) == [2.0, 3.0]
    assert common.failure_kind("link L: 8704 bits asked, 0 owned ready bits available") == (
        "insufficient-key"
    )
    assert common.failure_kind("KME_B did not answer within 5 s") == "peer-timeout"
    assert common.failure_kind("something else") == "other"


def test_the_ring_has_two_sides_and_its_max_flow_is_their_bottlenecks_summed(common: Any) -> None:
    ring = common.make_ring(1000.0, slow=0.5)
    assert ring.nodes == ("KME_A", "KME_B", "KME_C", "KME_D")
    assert ring.ends == ("KME_A", "KME_C") and ring.e2e_link == "KME_A~KME_C"
    assert ring.links == ["KME_A~KME_B", "KME_B~KME_C", "KME_C~KME_D", "KME_A~KME_D"]
    assert ring.sides() == [("KME_A", "KME_B", "KME_C"), ("KME_A", "KME_D", "KME_C")]
    assert [ring.bottleneck_bps(s) for s in ring.sides()] == [1000.0, 500.0]
    assert common.max_flow_bps(ring.edges, "KME_A", "KME_C") == pytest.approx(1500.0)
    assert ring.neighbours("KME_A") == ["KME_D", "KME_B"]
    # A line's max-flow is its bottleneck.
    line = common.make_line(4, 1000.0, bottleneck=0.5)
    assert common.max_flow_bps(line.edges, *line.ends) == pytest.approx(500.0)
    with pytest.raises(ValueError):
        common.make_ring(1000.0, slow=1.5)


def test_a_ring_node_has_its_two_links_and_the_ends_the_pool_mode(common: Any) -> None:
    ring = common.make_ring(2000.0)

    def config(node: str) -> dict[str, Any]:
        text = common.node_toml(
            ring,
            node,
            home=Path("/h") / node,
            pki=Path("/pki"),
            peer_addresses={},
            link_params={"block_bits": 4096},
            relay={"block_bits": 8192, "link_reserve_bits": 0},
            saes={},
            pool={"paths": "disjoint"},
        )
        return tomllib.loads(text)

    a, b, d = config("KME_A"), config("KME_B"), config("KME_D")
    assert set(a["peers"]) == {"KME_B", "KME_C", "KME_D"}
    assert a["links"]["KME_A~KME_D"]["params"]["rate_bps"] == 1000.0
    assert a["links"]["KME_A~KME_D"]["params"] == d["links"]["KME_A~KME_D"]["params"]
    assert a["relay"]["pools"] == {"KME_C": {"paths": "disjoint"}}
    assert len(a["relay"]["topology"]) == 4 and a["relay"]["link_reserve_bits"] == 0
    assert set(b["peers"]) == {"KME_A", "KME_C"} and "pools" not in b["relay"]
    assert common.dial_order(ring) == ["KME_D", "KME_C", "KME_B", "KME_A"]
