"""The dashboard: what ``/state.json`` and the page carry, long polls, server-sent
events, operations with their CSRF token, who may do what, the layout."""

from __future__ import annotations

import json
import re
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from qkmsd.config import ConfigError, config_from_mapping
from qkmsd.dashboard import (
    Access,
    CsrfTokens,
    Dashboard,
    DashboardSources,
    NetworkTopology,
    StreamSlots,
    dashboard_handler,
    layout,
    link_level,
    sse_event,
)
from qkmsd.http import PeerInfo, serve_connection
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
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.history = [
            {"kind": "raised", "code": "peer-down", "resource": "KME_C", "severity": "major",
             "previous": "cleared", "value": 3.0, "at": 1.0, "by": "condition"},
            {"kind": "raised", "code": "pool-low", "resource": "KME_A~KME_B",
             "severity": "warning", "previous": "cleared", "value": 3.0, "at": 2.0,
             "by": "condition"},
        ]  # fmt: skip

    async def _admin(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.calls.append((method, params))
        if method == "alarms":
            return {"active": [], "history": self.history}
        return {"ok": True}

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
            topology=lambda: NetworkTopology(
                frozenset({"KME_A", "KME_B", "KME_C", "KME_D"}),
                frozenset({("KME_A", "KME_B"), ("KME_B", "KME_C"), ("KME_C", "KME_D")}),
            ),
            admin={
                m: (lambda p, m=m: self._admin(m, p))
                for m in ("alarms", "alarm_ack", "alarm_clear", "node_drain", "node_undrain")
            },
        )


async def _get(
    handler: Any,
    target: str,
    method: str = "GET",
    *,
    host: str = "127.0.0.1:8080",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    peer: PeerInfo | None = None,
) -> tuple[str, bytes]:
    client, server = trio.testing.memory_stream_pair()
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(serve_connection, server, handler, peer_identity=peer))
        await client.send_all(
            f"{method} {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n{extra}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
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
        ("KME_D", "remote", None),
    ]
    # Links between other nodes come from the topology, without a level.
    assert [(e["a"], e["b"], e["state"]) for e in state["edges"]] == [
        ("KME_B", "KME_C", "unknown"),
        ("KME_C", "KME_D", "unknown"),
    ]
    assert state["view_of"] == "node"
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
    assert "material" not in body.decode()


async def test_the_page_draws_nodes_with_their_state_and_links_with_their_level() -> None:
    handler = dashboard_handler(Dashboard(FakeNode().sources()))
    line, page = await _get(handler, "/")
    assert line.startswith("HTTP/1.1 200")
    text = page.decode()
    assert 'data-node="KME_B" data-role="peer" data-state="up"' in text
    assert 'data-node="KME_C" data-role="peer" data-state="down"' in text
    assert 'data-link="KME_A~KME_C" data-peer="KME_C" data-kind="e2e" data-level="low"' in text
    assert 'data-code="peer-down" data-resource="KME_C" data-severity="major"' in text
    assert 'data-node="KME_D" data-role="remote" data-state="unknown"' in text
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


async def _page_token(handler: Any, **kw: Any) -> str:
    page = (await _get(handler, "/", **kw))[1].decode()
    match = re.search(r'<meta name="csrf-token" content="([^"]+)">', page)
    assert match is not None
    return match.group(1)


def _operating(node: FakeNode) -> Any:
    return dashboard_handler(
        Dashboard(node.sources()), access=Access(tls=False, loopback_operations=True)
    )


async def test_an_acknowledge_with_the_page_token_calls_the_admin_method_naming_the_operator() -> (
    None
):
    node = FakeNode()
    handler = _operating(node)
    token = await _page_token(handler)
    line, body = await _get(
        handler,
        "/op/alarm_ack",
        "POST",
        headers={"x-csrf-token": token, "content-type": "application/json"},
        body=b'{"code": "peer-down", "resource": "KME_C"}',
    )
    assert line.startswith("HTTP/1.1 200"), body
    assert node.calls[-1] == (
        "alarm_ack",
        {"code": "peer-down", "resource": "KME_C", "by": "dashboard loopback"},
    )
    line, _ = await _get(handler, "/op/node_drain", "POST", headers={"x-csrf-token": token})
    assert line.startswith("HTTP/1.1 200") and node.calls[-1] == ("node_drain", {})


@pytest.mark.parametrize("token", [None, "forged-token"])
async def test_an_operation_without_the_page_token_is_403_and_changes_nothing(
    token: str | None,
) -> None:
    node = FakeNode()
    handler = _operating(node)
    await _page_token(handler)
    headers = {"x-csrf-token": token} if token else {}
    line, body = await _get(
        handler, "/op/alarm_clear", "POST", headers=headers,
        body=b'{"code": "peer-down", "resource": "KME_C"}',
    )  # fmt: skip
    assert line.startswith("HTTP/1.1 403") and b"CSRF" in body
    assert node.calls == []


async def test_the_loopback_page_is_read_only_unless_configured() -> None:
    node = FakeNode()
    handler = dashboard_handler(Dashboard(node.sources()))
    token = await _page_token(handler)
    page = (await _get(handler, "/"))[1].decode()
    assert 'data-op="alarm_ack"' not in page and "view only" in page
    line, _ = await _get(handler, "/op/node_drain", "POST", headers={"x-csrf-token": token})
    assert line.startswith("HTTP/1.1 403") and node.calls == []


async def test_a_loopback_request_naming_another_host_is_refused() -> None:
    handler = dashboard_handler(Dashboard(FakeNode().sources()))
    assert (await _get(handler, "/", host="evil.example"))[0].startswith("HTTP/1.1 403")
    assert (await _get(handler, "/", host="[::1]:80"))[0].startswith("HTTP/1.1 200")


async def test_over_tls_operator_certificates_view_or_operate_by_role() -> None:
    node = FakeNode()
    handler = dashboard_handler(Dashboard(node.sources()), access=Access(tls=True))
    viewer = PeerInfo("alice", "operator-ro", "ab" * 32)
    operator = PeerInfo("bob", "operator", "cd" * 32)
    for stranger in (None, PeerInfo("KME_B", "node"), PeerInfo("SAE_A", "sae")):
        assert (await _get(handler, "/state.json", peer=stranger))[0].startswith("HTTP/1.1 403")
    token = await _page_token(handler, peer=viewer)
    line, _ = await _get(
        handler, "/op/node_drain", "POST", headers={"x-csrf-token": token}, peer=viewer
    )
    assert line.startswith("HTTP/1.1 403") and node.calls == []
    # A token is bound to whom it was issued to.
    line, _ = await _get(
        handler, "/op/node_drain", "POST", headers={"x-csrf-token": token}, peer=operator
    )
    assert line.startswith("HTTP/1.1 403") and node.calls == []
    token = await _page_token(handler, peer=operator)
    line, _ = await _get(
        handler, "/op/node_drain", "POST", headers={"x-csrf-token": token}, peer=operator
    )
    assert line.startswith("HTTP/1.1 200") and node.calls == [("node_drain", {})]


async def test_the_alarm_history_is_filtered_by_severity_code_and_resource() -> None:
    handler = dashboard_handler(Dashboard(FakeNode().sources()))
    _, body = await _get(handler, "/history?severity=warning")
    assert b"pool-low" in body and b"peer-down" not in body
    _, body = await _get(handler, "/history?resource=KME_C")
    assert b"peer-down" in body and b"pool-low" not in body


class _Events:
    """The client end of an event stream: the head, then the chunked body's events."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.raw = b""
        self.body = b""
        self.head: bytes | None = None

    async def next(self) -> bytes:
        while True:
            if self.head is None and b"\r\n\r\n" in self.raw:
                self.head, _, self.raw = self.raw.partition(b"\r\n\r\n")
            while self.head is not None and b"\r\n" in self.raw:
                size_line, _, rest = self.raw.partition(b"\r\n")
                size = int(size_line, 16)
                if len(rest) < size + 2:
                    break
                self.body += rest[:size]
                self.raw = rest[size + 2 :]
            if b"\n\n" in self.body:
                event, _, self.body = self.body.partition(b"\n\n")
                return event
            self.raw += await self.stream.receive_some()


async def test_an_event_stream_sends_a_peer_going_down_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode()
    dashboard = Dashboard(node.sources())
    handler = dashboard_handler(dashboard)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, handler)
        await client.send_all(b"GET /events?format=json HTTP/1.1\r\nhost: localhost\r\n\r\n")
        events = _Events(client)
        retry, first = await events.next(), await events.next()
        assert events.head is not None and b"text/event-stream" in events.head
        assert retry == b"retry: 1000" and first.startswith(b"event: state\ndata: {")
        await trio.sleep(5)
        node.set_peer("KME_B", "disconnected")
        started = trio.current_time()
        dashboard.poke()
        event = await events.next()
        assert trio.current_time() - started < 0.05  # poked: no wait for the next read
        state = json.loads(event.split(b"data: ", 1)[1])
        assert {n["node_id"]: n["up"] for n in state["nodes"]}["KME_B"] is False
        nursery.cancel_scope.cancel()


async def test_event_streams_past_the_cap_get_503_and_a_closed_one_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = StreamSlots(1)
    handler = dashboard_handler(Dashboard(FakeNode().sources()), streams=slots)
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server, handler)
        await client.send_all(b"GET /events HTTP/1.1\r\nhost: localhost\r\n\r\n")
        events = _Events(client)
        await events.next()
        await events.next()
        assert slots.open == 1
        assert (await _get(handler, "/events"))[0].startswith("HTTP/1.1 503")
        await client.aclose()
        # The server notices at its next write (a heartbeat at the latest) and ends.
    assert slots.open == 0
    assert (await _get(handler, "/view"))[0].startswith("HTTP/1.1 200")


def test_an_event_puts_every_line_of_its_data_on_a_data_line() -> None:
    assert sse_event("view", "a\nb") == b"event: view\ndata: a\ndata: b\n\n"


def test_a_layout_is_stable_and_puts_north_up() -> None:
    nodes = [f"N{i}" for i in range(40)]
    edges = [(nodes[i], nodes[(i + 1) % 40]) for i in range(40)]
    first = layout(nodes, edges)
    assert first == layout(list(reversed(nodes)), list(reversed(edges)))
    assert all(0.0 <= x <= 1.0 and 0.0 <= y <= 1.0 for x, y in first.values())
    assert len({first[n] for n in nodes}) == 40
    placed = layout(["SEOUL", "BUSAN", "X"], [], {"SEOUL": (127.0, 37.6), "BUSAN": (129.1, 35.2)})
    assert placed["SEOUL"][1] < placed["BUSAN"][1]  # Seoul is further north: higher up
    assert placed["SEOUL"][0] < placed["BUSAN"][0]


async def test_tokens_are_bound_to_their_operator() -> None:
    tokens = CsrfTokens()
    from qkmsd.dashboard import Operator

    alice, bob = Operator("alice", True), Operator("bob", True)
    token = tokens.issue(alice)
    assert tokens.check(alice, token) is None
    assert tokens.check(bob, token) is not None
    assert tokens.check(alice, None) is not None


async def test_plots_draw_a_resource_s_series_from_the_perf_method() -> None:
    node = FakeNode()
    sources = node.sources()
    now = 1_000_000.0
    asked: list[dict[str, Any]] = []

    async def perf(params: dict[str, Any]) -> dict[str, Any]:
        asked.append(params)
        points = [{"at": now - 600 + 60 * i, "mean": float(i), "low": 0, "high": 0, "n": 1}
                  for i in range(10)]  # fmt: skip
        return {"series": {"link:KME_A~KME_B": {"key_rate_bps": points}}}

    sources.admin = {**sources.admin, "perf": perf}
    handler = dashboard_handler(Dashboard(sources))
    line, body = await _get(handler, "/plots?resource=link:KME_A~KME_B")
    assert line.startswith("HTTP/1.1 200")
    assert asked == [{"resource": "link:KME_A~KME_B", "since_s": 3600.0}]
    assert b'data-metric="key_rate_bps" data-points="10"' in body and b"<polyline" in body
    assert b'data-metric="qber" data-points="0"' in body  # no samples: said so, no plot
    assert (await _get(handler, "/plots?resource=keystore"))[0].startswith("HTTP/1.1 400")


# --- node pairs, the controller's view, profiles, relays, SAEs, ETSI 015 ---------------


def _ring_topology() -> Any:
    """A controller's view of the ring A-B-C-D-A with A's pool to C relayed over B, and
    routes A -> C computed."""
    from protocol import CtlPath, CtlRoute
    from qkmsd.dashboard import controller_topology

    from .controller.test_topology import ring

    topo = ring()
    routes = [
        CtlRoute("A", "C", [CtlPath(["A", "B", "C"], 2.0), CtlPath(["A", "D", "C"], 2.5)]),
    ]
    return controller_topology(topo, routes, 0.0, {})


def _as_node(node: FakeNode, me: str, peers: dict[str, str]) -> None:
    """Makes ``node`` report as ``me`` with sessions to ``peers`` (id -> state)."""
    template = node.status.peers[0]
    fields = {f: getattr(node.status, f) for f in node.status.__struct_fields__}
    node.status = NodeStatus(
        **{
            **fields,
            "node_id": me,
            "links": [],
            "peers": [
                PeerState(p, template.address, template.dials, state=s) for p, s in peers.items()
            ],
        }
    )


async def test_on_the_controller_the_whole_network_comes_from_its_topology() -> None:
    node = FakeNode()
    _as_node(node, "A", {"B": "connected", "D": "connected"})
    sources = node.sources()
    network = _ring_topology()
    sources.topology = lambda: network
    handler = dashboard_handler(Dashboard(sources))
    state = json.loads((await _get(handler, "/state.json"))[1])
    assert state["view_of"] == "controller"
    nodes = {n["node_id"]: (n["role"], n["state"], n["up"]) for n in state["nodes"]}
    assert nodes["C"] == ("remote", "up", True)  # it reported: known up, not "unknown"
    edges = {(e["a"], e["b"]): e for e in state["edges"]}
    assert edges[("B", "C")]["state"] == "up" and edges[("B", "C")]["link_id"] == "B~C"
    assert [(r["source"], r["destination"], r["origin"]) for r in state["routes"]] == [
        ("A", "C", "controller")
    ]
    assert [(p["a"], p["b"], p["hops"]) for p in state["pools"]] == [("A", "C", ["A", "B", "C"])]
    page = (await _get(handler, "/"))[1].decode()
    assert 'data-view-of="controller"' in page
    assert 'class="edge" data-a="B" data-b="C" data-state="up"' in page


async def test_a_node_pair_shows_its_current_route_its_alternates_and_its_pool() -> None:
    node = FakeNode()
    _as_node(node, "A", {"B": "connected", "D": "connected"})
    sources = node.sources()
    network = _ring_topology()
    sources.topology = lambda: network
    handler = dashboard_handler(Dashboard(sources))
    for a, b in (("A", "C"), ("C", "A")):
        line, body = await _get(handler, f"/pair?a={a}&b={b}")
        text = body.decode()
        assert line.startswith("HTTP/1.1 200")
        assert '<li class="path" data-rank="current" data-path="A B C">' in text
        assert '<li class="path" data-rank="alternate" data-path="A D C">' in text
        assert 'id="pair-pool" data-pool="A~C"' in text and "relayed over A → B → C" in text
    text = (await _get(handler, "/pair?a=B&b=D"))[1].decode()
    assert "no route is set" in text and 'data-pool=""' in text
    text = (await _get(handler, "/pair?a=A&b=nowhere"))[1].decode()
    assert "pick two different nodes" in text


async def test_elsewhere_a_pair_s_routes_come_from_this_node_s_routing_table() -> None:
    from qkmsd.dashboard import table_routes
    from qkmsd.relay import Route

    node = FakeNode()
    sources = node.sources()
    table = [
        Route("KME_C", ["KME_A", "KME_B", "KME_C"], "controller", 2, 1.0),
        Route("KME_C", ["KME_A", "KME_D", "KME_C"], "computed", 2, 1.0),
    ]
    sources.routes = lambda: table_routes("KME_A", table)
    handler = dashboard_handler(Dashboard(sources))
    text = (await _get(handler, "/pair?a=KME_C&b=KME_A"))[1].decode()
    assert "from KME_A to KME_C (controller)" in text
    assert 'data-rank="current" data-path="KME_A KME_B KME_C"' in text
    assert 'data-rank="alternate" data-path="KME_A KME_D KME_C"' in text
    assert "KME_A's routing table" in text
    # Its own end-to-end pool: the ready bits each end owns.
    assert 'data-pool="KME_A~KME_C"' in text and "4096 bit ready owned by KME_A" in text


def _profile(name: str, active: bool) -> Any:
    from qkmsd.profiles import Profile, ProfileStatus

    return ProfileStatus(
        Profile(name, node_pairs=["KME_A~KME_B"], active=active),
        active, 1.0 if active else None, 3, 768, 1000, 0, 0, 5,
    )  # fmt: skip


async def test_profiles_are_listed_and_activated_with_the_token_naming_the_operator() -> None:
    node = FakeNode()
    sources = node.sources()
    sources.profiles = lambda: [_profile("video", False), _profile("bulk", True)]
    sources.admin = {
        **sources.admin,
        **{m: (lambda p, m=m: node._admin(m, p)) for m in ("profile_activate",
                                                           "profile_deactivate")},
    }  # fmt: skip
    handler = dashboard_handler(
        Dashboard(sources), access=Access(tls=False, loopback_operations=True)
    )
    state = json.loads((await _get(handler, "/state.json"))[1])
    assert [(p["name"], p["active"], p["served"]) for p in state["profiles"]] == [
        ("bulk", True, 3),
        ("video", False, 3),
    ]
    page = (await _get(handler, "/"))[1].decode()
    assert 'data-op="profile_activate" data-name="video"' in page
    assert 'data-op="profile_deactivate" data-name="bulk"' in page
    token = await _page_token(handler)
    line, _ = await _get(handler, "/op/profile_activate", "POST", body=b'{"name": "video"}')
    assert line.startswith("HTTP/1.1 403") and node.calls == []
    line, body = await _get(
        handler, "/op/profile_activate", "POST", headers={"x-csrf-token": token},
        body=b'{"name": "video"}',
    )  # fmt: skip
    assert line.startswith("HTTP/1.1 200") and b"video by loopback" in body
    assert node.calls == [("profile_activate", {"name": "video"})]
    line, _ = await _get(handler, "/op/profile_deactivate", "POST", headers={"x-csrf-token": token})
    assert line.startswith("HTTP/1.1 400")  # no name
    read_only = dashboard_handler(Dashboard(sources))
    assert 'data-op="profile_activate"' not in (await _get(read_only, "/"))[1].decode()


async def test_relays_in_flight_and_recent_failures_and_sae_errors_by_status() -> None:
    from qkmsd.supply._front import SaeCounts

    node = FakeNode()
    sources = node.sources()
    flying = RelayRecord("r-20", "KME_A~KME_C", ["KME_A", "KME_B", "KME_C"], "source",
                         "forwarded", 4096, 3.0)  # fmt: skip
    failed = RelayRecord("r-19", "KME_A~KME_C", ["KME_A", "KME_B", "KME_C"], "source",
                         "failed", 4096, 2.0, 2.5, "KME_B: peer unreachable")  # fmt: skip
    sources.relays = lambda: [flying, failed, RELAY]
    sources.relay_totals = lambda: (7, 1)
    sources.saes = lambda: {"SAE_A": SaeCounts(requests=5, keys=8, errors={503: 2, 400: 1})}
    handler = dashboard_handler(Dashboard(sources))
    state = json.loads((await _get(handler, "/state.json"))[1])
    assert [r["relay_id"] for r in state["relay_failures"]] == ["r-19"]
    assert state["relay_failures"][0]["error"] == "KME_B: peer unreachable"
    assert state["relay_totals"] == {"confirmed": 7, "failed": 1, "in_flight": 1}
    assert state["saes"] == [
        {"sae_id": "SAE_A", "requests": 5, "delivered": 8, "errors": 3,
         "errors_by_status": {"400": 1, "503": 2}}
    ]  # fmt: skip
    view = (await _get(handler, "/view"))[1].decode()
    flight = view.split('id="relays-in-flight">')[1].split("</table>")[0]
    assert "r-20" in flight and "r-19" not in flight and "r-17" not in flight
    failures = view.split('id="relay-failures">')[1].split("</table>")[0]
    assert "r-19" in failures and "peer unreachable" in failures and "r-20" not in failures
    assert "<td>400: 1, 503: 2</td>" in view
    assert "7 confirmed, 1 failed; 1 in flight" in view


async def test_the_etsi015_view_is_served_to_operator_certificates_over_tls_only() -> None:
    node = FakeNode()
    sources = node.sources()

    async def etsi015() -> dict[str, Any]:
        return {"qkdn_id": "6b0c8a0e-0000-5000-8000-000000000000", "qkdn_status": "OPERATING"}

    sources.etsi015 = etsi015
    path = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
    tls = dashboard_handler(Dashboard(sources), access=Access(tls=True))
    for operator in (PeerInfo("olga", "operator-ro", "ab" * 32), PeerInfo("oscar", "operator")):
        line, body = await _get(tls, path, peer=operator)
        assert line.startswith("HTTP/1.1 200")
        assert json.loads(body)["etsi-qkd-sdn-node:qkd_node"]["qkdn_status"] == "OPERATING"
    line, body = await _get(tls, "/.well-known/host-meta", peer=PeerInfo("o", "operator"))
    assert line.startswith("HTTP/1.1 200") and b'rel="restconf" href="/restconf"' in body
    for stranger in (None, PeerInfo("SAE_A", "sae"), PeerInfo("KME_B", "node")):
        assert (await _get(tls, path, peer=stranger))[0].startswith("HTTP/1.1 403")
    line, _ = await _get(tls, path, "POST", peer=PeerInfo("oscar", "operator"))
    assert line.startswith("HTTP/1.1 405")
    plain = dashboard_handler(Dashboard(sources))
    line, body = await _get(plain, path)
    assert line.startswith("HTTP/1.1 403") and b"mutual TLS only" in body


def test_a_node_s_own_etsi015_node_comes_from_its_own_report() -> None:
    from protocol import CtlLink
    from qkmsd.controller import node_etsi015, qkms_uuid

    from .controller.test_topology import report

    links = [CtlLink("A~B", "B", True, ready_here=2048, rate_bps=900.0, qber=0.02),
             CtlLink("A~C", "C", True, virtual=True, hops=["A", "B", "C"])]  # fmt: skip
    node = node_etsi015(report("A", links), 10.0, 1.7e9)
    assert node["qkdn_id"] == qkms_uuid("node", "A") and node["qkdn_status"] == "OPERATING"
    kinds = {lk["qkdl_id"]: lk["qkdl_type"] for lk in node["qkd_links"]["qkd_link"]}
    assert kinds == {qkms_uuid("link", "A~B"): "PHYS", qkms_uuid("link", "A~C"): "VIRT"}
