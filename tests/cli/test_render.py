"""The status page operators read: peers, links, and the ETSI 014 API's counters."""

from __future__ import annotations

from typing import Any

from cli._render import node_status


def status(**extra: Any) -> dict[str, Any]:
    return {
        "node_id": "KME_A",
        "pid": 42,
        "uptime_s": 12.0,
        "peer_listen": "127.0.0.1:7001",
        "peers": [],
        "links": [],
        **extra,
    }


def test_a_node_with_the_api_shows_its_address_and_supply_counters() -> None:
    supply = {
        "enc_keys": 5,
        "dec_keys": 4,
        "keys_out": 9,
        "refused": 1,
        "stock_keys_in": 64,
        "stock_keys_out": 3,
    }
    page = node_status(status(api={"listen": "127.0.0.1:8443", "supply": supply}))
    assert page.splitlines()[-1] == (
        "ETSI 014 API 127.0.0.1:8443  enc_keys 5  dec_keys 4  keys out 9  refused 1  "
        "stocked 64 (handed out 3)"
    )


def test_a_node_without_the_api_has_no_api_line() -> None:
    assert "ETSI 014" not in node_status(status(api=None))


def test_the_api_s_tls_handshakes_show_versions_and_negotiated_groups() -> None:
    tls = {
        "handshakes": 12,
        "failed": 1,
        "timed_out": 0,
        "versions": {"TLSv1.3": 11, "TLSv1.2": 1},
        "groups": {"X25519MLKEM768": 10, "x25519": 2},
        "last_group": "X25519MLKEM768",
    }
    api = {"listen": "127.0.0.1:8443", "supply": {}, "tls": tls, "hybrid_pq_tls_groups": True}
    assert node_status(status(api=api)).splitlines()[-1] == (
        "TLS handshakes 12 (failed 1, timed out 0)  versions TLSv1.2 1, TLSv1.3 11  "
        "groups X25519MLKEM768 10, x25519 2  hybrid PQ group offered: yes"
    )


def peer(**extra: Any) -> dict[str, Any]:
    return {
        "node_id": "KME_B",
        "state": "connected",
        "connected_since": None,
        "last_seen": None,
        "connects": 1,
        "last_error": "",
        **extra,
    }


def test_each_peer_shows_the_tls_version_and_group_of_its_last_handshake() -> None:
    page = node_status(status(peers=[peer(tls_version="TLSv1.3", tls_group="X25519MLKEM768")]))
    header, _, row = page.splitlines()[2:5]
    assert "tls" in header.split()
    assert "TLSv1.3 X25519MLKEM768" in row


def test_a_peer_never_handshaken_with_shows_no_tls() -> None:
    never = peer(state="disconnected", connects=0, tls_version=None, tls_group=None)
    row = node_status(status(peers=[never])).splitlines()[4]
    assert row.split()[:2] == ["KME_B", "disconnected"] and "TLSv" not in row


def test_the_store_line_shows_how_many_calls_share_a_commit() -> None:
    page = node_status(status(store={"batches": 40, "calls": 100, "inline": 7}))
    assert page.splitlines()[-1] == (
        "key store: 40 commits on the store thread carrying 100 calls (2.5 per commit), "
        "7 calls inline"
    )
    assert "key store" not in node_status(status())
