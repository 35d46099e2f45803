"""Metrics: the typed statistics of a node as Prometheus text, parsed back."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

from qkmsd.histogram import Histogram
from qkmsd.http import TlsStatistics, serve_connection
from qkmsd.keymanager import LinkStatus
from qkmsd.metrics import MetricsSources, Snapshot, metrics_handler, render
from qkmsd.peers import PeerState
from qkmsd.profiles import ProfileBook
from qkmsd.relay import RelayPoolStatistics, RelayStatistics
from qkmsd.state import AlarmView, StateStatistics
from qkmsd.status import ApiStatus, NodeStatus, SupplyStatistics
from qkmsd.storethread import StoreStatistics

LINK = LinkStatus(
    link_id="KME_A~KME_B",
    peer="KME_B",
    driver="paired",
    driver_state="up",
    driver_detail="",
    qber=0.021,
    ready_bits=81920,
    ready_keys=320,
    ready_blocks=10,
    owned_ready_bits=40960,
    unconfirmed_blocks=2,
    discarded_blocks=3,
    expired_blocks=0,
    newest_block_id=41,
    synchronised=True,
    held=["qber-high"],
)
_H = Histogram(buckets=(0.001, 0.01, 0.1))
for _v in (0.0005, 0.001, 0.004, 0.05, 3.0):
    _H.observe(_v)
LATENCY = _H.snapshot()
"""Two at or below 1 ms, one at or below 10 ms, one at or below 100 ms, one above."""

STATUS = NodeStatus(
    node_id="KME_A",
    version="0.1.0",
    pid=1,
    uptime_s=12.5,
    peer_listen="127.0.0.1:7001",
    peers=[
        PeerState("KME_B", "127.0.0.1:7002", True, state="connected", connects=2, refused=1),
        PeerState("KME_C", "127.0.0.1:7003", False),
    ],
    links=[LINK],
    store=StoreStatistics(batches=7, calls=30, inline=4),
    relay=RelayStatistics(1, 2, 3, 4, 5, 8192, 9000),
    api=ApiStatus(
        listen="127.0.0.1:8443",
        hybrid_pq_tls_groups=False,
        tls=TlsStatistics(5, 1, 0, {"TLSv1.3": 5}, {"x25519": 5}, "x25519", None),
        supply=SupplyStatistics(
            enc_keys=3,
            dec_keys=2,
            keys_out=9,
            refused=4,
            stock_keys_in=32,
            stock_keys_out=6,
            latency={"enc_keys": LATENCY},
        ),
    ),
)
ALARMS = StateStatistics(
    active={"indeterminate": 0, "warning": 0, "minor": 0, "major": 1, "critical": 0},
    raised=2,
    cleared=1,
    faults=5,
    looks=9,
)
POOLS = {
    "KME_A~KME_D": RelayPoolStatistics(
        relays_confirmed=4,
        relays_failed=1,
        bits_relayed=4 * 2048,
        latency_s_total=0.5,
        link_bits_spent=3 * 4 * 2304,
    )
}
CONTROLLER = {"reports": 120.0, "reports_refused": 2.0, "nodes_alive": 5.0, "alarm_events": 7.0}
FULL = Snapshot(
    STATUS,
    ALARMS,
    profiles=(),
    relay_pools=POOLS,
    controller_eligible=True,
    controller=CONTROLLER,
)
"""Every family a node can export (profiles: see their own test)."""
ACTIVE = (AlarmView("qber-high", "KME_A~KME_B", "major", 1.0, 1.0, 0.2, False, "stop-link"),)


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:  # type: ignore[type-arg]
    return found[(name, frozenset(labels.items()))]


def test_the_scrape_carries_every_agents_statistics() -> None:
    found = samples(render(Snapshot(STATUS, ALARMS, ACTIVE)).decode())
    link = {"link": "KME_A~KME_B", "peer": "KME_B"}
    assert value(found, "qkms_link_ready_bits", **link) == 81920
    assert value(found, "qkms_link_owned_ready_bits", **link) == 40960
    assert value(found, "qkms_link_unconfirmed_blocks", **link) == 2
    assert value(found, "qkms_link_discarded_blocks", **link) == 3
    assert value(found, "qkms_link_qber", **link) == 0.021
    assert value(found, "qkms_link_held", **link) == 1
    assert value(found, "qkms_link_driver_up", **link, driver="paired", state="up") == 1
    assert value(found, "qkms_peer_up", peer="KME_B") == 1
    assert value(found, "qkms_peer_up", peer="KME_C") == 0
    assert value(found, "qkms_peer_refused_total", peer="KME_B") == 1
    assert value(found, "qkms_peers_connected") == 1
    assert value(found, "qkms_etsi014_requests_total", call="enc_keys") == 3
    assert value(found, "qkms_etsi014_keys_total") == 9
    buckets = {
        le: value(found, "qkms_etsi014_request_seconds_bucket", call="enc_keys", le=le)
        for le in ("0.001", "0.01", "0.1", "+Inf")
    }
    assert buckets == {"0.001": 2, "0.01": 3, "0.1": 4, "+Inf": 5}
    assert value(found, "qkms_etsi014_request_seconds_count", call="enc_keys") == 5
    assert value(found, "qkms_etsi014_request_seconds_sum", call="enc_keys") == 3.0555
    assert value(found, "qkms_etsi014_refused_total") == 4
    assert value(found, "qkms_store_commits_total") == 7
    assert value(found, "qkms_store_inline_calls_total") == 4
    assert value(found, "qkms_relays_failed_total") == 2
    assert value(found, "qkms_relay_bits_total") == 8192
    assert value(found, "qkms_alarms_active", severity="major") == 1
    assert value(found, "qkms_alarms_raised_total") == 2
    assert (
        value(
            found,
            "qkms_alarm_active",
            code="qber-high",
            resource="KME_A~KME_B",
            severity="major",
            acknowledged="false",
        )
        == 1
    )


def test_only_counts_levels_states_and_qber_are_exported() -> None:
    """Every sample is a number labelled by ids, codes and states; none is a key, a key id
    or a block id (``newest_block_id`` is in the status, deliberately not here)."""
    found = samples(render(dataclasses.replace(FULL, active=ACTIVE)).decode())
    allowed_labels = {
        "node", "version", "peer", "link", "driver", "state", "call", "severity", "code",
        "resource", "acknowledged", "le", "pool",
    }  # fmt: skip
    for name, labels in found:
        assert name.startswith("qkms_")
        assert {k for k, _ in labels} <= allowed_labels, name
        assert "block_id" not in name and "key_id" not in name
    assert not any("newest" in name for name, _ in found)


def test_a_node_without_api_or_alarms_exports_the_rest() -> None:
    status = NodeStatus(
        **{**{f: getattr(STATUS, f) for f in STATUS.__struct_fields__}, "api": None}
    )
    found = samples(render(Snapshot(status)).decode())
    assert ("qkms_etsi014_keys_total", frozenset()) not in found
    assert not any(name.startswith("qkms_alarm") for name, _ in found)
    assert value(found, "qkms_uptime_seconds") == 12.5


async def _get(handler, target: str, method: str = "GET") -> bytes:  # type: ignore[no-untyped-def]
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, handler)
        await client.send_all(
            f"{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await client.receive_some():
            data += chunk
    return data


async def test_the_handler_serves_metrics_and_refuses_other_paths() -> None:
    async def node_status() -> NodeStatus:
        return STATUS

    handler = metrics_handler(MetricsSources(node_status, lambda: ALARMS, lambda: list(ACTIVE)))
    ok = await _get(handler, "/metrics")
    assert ok.startswith(b"HTTP/1.1 200") and b"version=0.0.4" in ok
    assert b'qkms_link_ready_bits{link="KME_A~KME_B",peer="KME_B"} 81920.0' in ok
    assert (await _get(handler, "/")).startswith(b"HTTP/1.1 404")
    assert (await _get(handler, "/metrics", "POST")).startswith(b"HTTP/1.1 405")


def test_each_key_profile_s_service_state_is_exported_under_its_name() -> None:
    book = ProfileBook(node_id="KME_A", sae_kme={}, path=None, clock=lambda: 100.0)
    book.add({"name": "gold", "node_pairs": ["KME_A~KME_B"], "priority": 5, "active": True})
    book.add({"name": "bulk", "node_pairs": ["KME_A~KME_C"], "share": 0.5})
    book.sample({"KME_B": 0})
    book.sample({"KME_B": 4096})
    found = samples(render(Snapshot(STATUS, profiles=tuple(book.statuses()))).decode())
    assert value(found, "qkms_profile_active", profile="gold") == 1
    assert value(found, "qkms_profile_active", profile="bulk") == 0
    assert value(found, "qkms_profile_priority", profile="gold") == 5
    assert value(found, "qkms_profile_period_generated_bits", profile="gold") == 4096
    assert value(found, "qkms_profile_served_keys_total", profile="gold") == 0
    assert {k for name, labels in found if name.startswith("qkms_profile") for k, _ in labels} == {
        "profile"
    }


def test_each_relay_pool_s_relays_latency_and_link_key_are_exported_under_its_link_id() -> None:
    found = samples(render(Snapshot(STATUS, relay_pools=POOLS)).decode())
    pool = {"pool": "KME_A~KME_D"}
    assert value(found, "qkms_relay_pool_relays_confirmed_total", **pool) == 4
    assert value(found, "qkms_relay_pool_relays_failed_total", **pool) == 1
    assert value(found, "qkms_relay_pool_bits_total", **pool) == 8192
    assert value(found, "qkms_relay_pool_latency_seconds_count", **pool) == 4
    assert value(found, "qkms_relay_pool_latency_seconds_sum", **pool) == 0.5
    assert value(found, "qkms_relay_pool_link_bits_spent_total", **pool) == 27648
    assert not any(name.startswith("qkms_controller") for name, _ in found)


def test_the_controller_s_counters_are_exported_only_while_this_node_holds_the_role() -> None:
    leading = samples(render(FULL).decode())
    assert value(leading, "qkms_controller_leading") == 1
    assert value(leading, "qkms_controller_reports_total") == 120
    assert value(leading, "qkms_controller_reports_refused_total") == 2
    assert value(leading, "qkms_controller_nodes_alive") == 5
    assert value(leading, "qkms_controller_alarm_events") == 7
    following = samples(render(dataclasses.replace(FULL, controller=None)).decode())
    assert {name for name, _ in following if name.startswith("qkms_controller")} == {
        "qkms_controller_leading"
    }
    assert value(following, "qkms_controller_leading") == 0
    ineligible = samples(render(dataclasses.replace(FULL, controller_eligible=False)).decode())
    assert not any(name.startswith("qkms_controller") for name, _ in ineligible)


async def test_the_handler_reads_relay_pools_and_the_controller_at_each_scrape() -> None:
    async def node_status() -> NodeStatus:
        return STATUS

    taken = [CONTROLLER, None]
    handler = metrics_handler(
        MetricsSources(node_status, relay_pools=lambda: POOLS, controller=lambda: taken.pop(0))
    )
    first = await _get(handler, "/metrics")
    assert b'qkms_relay_pool_bits_total{pool="KME_A~KME_D"} 8192.0' in first
    assert b"qkms_controller_leading 1.0" in first
    assert b"qkms_controller_reports_total 120.0" in first
    second = await _get(handler, "/metrics")
    assert b"qkms_controller_leading 0.0" in second
    assert b"qkms_controller_reports_total" not in second


def _documented() -> set[str]:
    """The metric names in docs/operations.md's table under "Prometheus metrics"."""
    doc = (Path(__file__).parents[2] / "docs" / "operations.md").read_text()
    section = doc.split("### Prometheus metrics", 1)[1].split("\n### ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `qkms_")]
    return {name for row in rows for name in re.findall(r"`(qkms_\w+)`", row.split("|")[1])}


def test_the_operations_guide_lists_every_exported_family_and_no_other() -> None:
    book = ProfileBook(node_id="KME_A", sae_kme={}, path=None, clock=lambda: 100.0)
    book.add({"name": "gold", "node_pairs": ["KME_A~KME_B"]})
    snapshot = dataclasses.replace(FULL, active=ACTIVE, profiles=tuple(book.statuses()))
    exported = {
        f"{family.name}_total" if family.type == "counter" else family.name
        for family in text_string_to_metric_families(render(snapshot).decode())
    }
    documented = _documented()
    assert exported - documented == set(), "exported, not in docs/operations.md"
    assert documented - exported == set(), "in docs/operations.md, not exported"
