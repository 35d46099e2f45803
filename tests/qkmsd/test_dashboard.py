"""The dashboard: what ``/state.json`` and the page carry, long polls, loopback only."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

from qkmsd.config import ConfigError, config_from_mapping
from qkmsd.dashboard import Dashboard, DashboardSources, dashboard_handler, link_level
from qkmsd.http import serve_connection
from qkmsd.keymanager import LinkStatus
from qkmsd.peers import PeerState
from qkmsd.relay import RelayRecord
from qkmsd.state import AlarmView
from qkmsd.status import NodeStatus

from .test_config import SOURCE, base
from .test_metrics import LINK, STATUS

E2E = LinkStatus(
    **{
        **{f: getattr(LINK, f) for f in LINK.__struct_fields__},
        "link_id": "KME_A~KME_C",
        "peer": "KME_C",
        "driver": "relay",
        "owned_ready_bits": 4096,
        "e2e": True,
    }
)
ALARM = AlarmView("peer-down", "KME_C", "major", 1.0, 1.0, None, False, "none")
RELAY = RelayRecord(
    "r-17", "KME_A~KME_C", ["KME_A", "KME_B", "KME_C"], "source", "confirmed", 4096, 1.0
)


class FakeNode:
    def __init__(self) -> None:
        self.status = NodeStatus(
            **{**{f: getattr(STATUS, f) for f in STATUS.__struct_fields__}, "links": [LINK, E2E]}
        )
        self.active = [ALARM]

    async def node_status(self) -> NodeStatus:
        return self.status

    def set_peer(self, node_id: str, state: str) -> None:
        peers = [
            PeerState(p.node_id, p.address, p.dials, state=state) if p.node_id == node_id else p
            for p in self.status.peers
        ]
        fields = {f: getattr(self.status, f) for f in self.status.__struct_fields__}
        self.status = NodeStatus(**{**fields, "peers": peers})

    def sources(self) -> DashboardSources:
        return DashboardSources(
            self.node_status,
            alarms=lambda: list(self.active),
            relays=lambda: [RELAY],
            low_bits={"KME_A~KME_C": 8192},
            default_low_bits=16384,
        )


async def _get(handler: Any, target: str, method: str = "GET") -> tuple[str, bytes]:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, handler)
        await client.send_all(
            f"{method} {target} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n".encode()
        )
        data = b""
        while chunk := await client.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode().split("\r\n")[0], body


def test_a_link_is_empty_low_or_normal_by_owned_ready_bits_against_its_low_watermark() -> None:
    assert link_level(0, 16384) == "empty"
    assert link_level(100, 16384) == "low"
    assert link_level(16384, 16384) == "normal"


async def test_state_json_carries_nodes_links_alarms_relays_and_no_key_material() -> None:
    handler = dashboard_handler(Dashboard(FakeNode().sources()))
    line, body = await _get(handler, "/state.json")
    assert line.startswith("HTTP/1.1 200")
    state = json.loads(body)
    assert state["node_id"] == "KME_A"
    assert [(n["node_id"], n["role"], n["up"]) for n in state["nodes"]] == [
        ("KME_A", "self", True),
        ("KME_B", "peer", True),
        ("KME_C", "peer", False),
    ]
    links = {link["link_id"]: link for link in state["links"]}
    assert links["KME_A~KME_B"]["kind"] == "qkd" and links["KME_A~KME_B"]["level"] == "normal"
    assert links["KME_A~KME_C"]["kind"] == "e2e" and links["KME_A~KME_C"]["level"] == "low"
    assert links["KME_A~KME_C"]["low_bits"] == 8192
    assert state["alarms"] == [
        {"code": "peer-down", "resource": "KME_C", "severity": "major", "raised_at": 1.0,
         "acknowledged": False}
    ]  # fmt: skip
    assert state["relays"][0]["path"] == ["KME_A", "KME_B", "KME_C"]

    def keys_of(value: Any) -> set[str]:
        if isinstance(value, dict):
            return set(value) | {k for v in value.values() for k in keys_of(v)}
        if isinstance(value, list):
            return {k for v in value for k in keys_of(v)}
        return set()

    fields = keys_of(state)
    assert not {f for f in fields if "key" in f or "block" in f or "newest" in f}, fields


async def test_the_page_draws_nodes_with_their_state_and_links_with_their_level() -> None:
    handler = dashboard_handler(Dashboard(FakeNode().sources()))
    line, page = await _get(handler, "/")
    assert line.startswith("HTTP/1.1 200")
    text = page.decode()
    assert 'data-node="KME_B" data-role="peer" data-state="up"' in text
    assert 'data-node="KME_C" data-role="peer" data-state="down"' in text
    assert 'data-link="KME_A~KME_C" data-peer="KME_C" data-kind="e2e" data-level="low"' in text
    assert 'data-code="peer-down" data-severity="major"' in text
    assert "<script>" in text and "http" not in text.split("<script>")[1]  # no CDN
    assert (await _get(handler, "/nope"))[0].startswith("HTTP/1.1 404")
    assert (await _get(handler, "/state.json", "POST"))[0].startswith("HTTP/1.1 405")


async def test_a_long_poll_answers_as_soon_as_a_peer_goes_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    handler = dashboard_handler(Dashboard(node.sources()))
    version = json.loads((await _get(handler, "/state.json"))[1])["version"]

    async def peer_goes_down() -> None:
        await trio.sleep(0.5)
        node.set_peer("KME_B", "disconnected")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(peer_goes_down)
        started = trio.current_time()
        state = json.loads((await _get(handler, f"/state.json?after={version}"))[1])
    assert 0.5 <= trio.current_time() - started < 1.0
    assert state["version"] == version + 1
    assert {n["node_id"]: n["up"] for n in state["nodes"]}["KME_B"] is False


async def test_an_unchanged_state_is_sent_again_after_the_hold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    handler = dashboard_handler(Dashboard(FakeNode().sources()))
    version = json.loads((await _get(handler, "/state.json"))[1])["version"]
    started = trio.current_time()
    line, body = await _get(handler, f"/view?after={version}")
    assert line.startswith("HTTP/1.1 200") and f'data-version="{version}"'.encode() in body
    assert trio.current_time() - started == pytest.approx(1.0, abs=0.25)


@pytest.mark.parametrize(
    "address", ["0.0.0.0:8080", "192.0.2.1:8080", "[::]:8080", "kme.example:80"]
)
def test_a_dashboard_off_loopback_is_refused_naming_the_later_step(address: str) -> None:
    data = base()
    data["listen"] = {**data["listen"], "dashboard": address}
    with pytest.raises(ConfigError) as info:
        config_from_mapping(data, source=SOURCE)
    message = str(info.value)
    assert "[listen] dashboard:" in message and "not a loopback address" in message
    assert "operator TLS" in message


@pytest.mark.parametrize("address", ["127.0.0.1:0", "[::1]:8080", "localhost:8080"])
def test_a_loopback_dashboard_address_is_accepted(address: str) -> None:
    data = base()
    data["listen"] = {**data["listen"], "dashboard": address}
    assert config_from_mapping(data, source=SOURCE).dashboard_listen is not None
