"""Peer sessions over memory streams: what the peer manager does after authentication."""

from __future__ import annotations

import ssl
from typing import Any

import trio
import trio.testing

from protocol import (
    NEED_DATA,
    PEER_DECODER,
    Error,
    FramedConnection,
    Hello,
    KeyAnnounce,
    PeerSession,
)
from qkmsd.peers import PeerManager


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.got = trio.Event()

    async def on_up(self, peer: str) -> None:
        self.events.append(("up", peer))

    async def on_down(self, peer: str) -> None:
        self.events.append(("down", peer))

    async def on_announce(self, peer: str, message: KeyAnnounce) -> None:
        self.events.append(("announce", message))
        self.got.set()


def manager(node: str, peer: str, rec: Recorder) -> PeerManager:
    unused = ssl.create_default_context()
    peers = PeerManager(
        node_id=node,
        peers={peer: "127.0.0.1:1"},
        listen_host="127.0.0.1",
        listen_port=0,
        server_context=unused,
        client_context=unused,
        heartbeat=1.0,
        reconnect_max=5.0,
    )
    peers.on_message(KeyAnnounce, rec.on_announce)
    peers.on_connectivity(rec.on_up, rec.on_down)
    return peers


async def read_frames(stream: trio.abc.Stream) -> list[Any]:
    conn = FramedConnection(PEER_DECODER)
    out: list[Any] = []
    while data := await stream.receive_some(65536):
        conn.receive_data(data)
        while (event := conn.next_event()) is not NEED_DATA:
            out.append(event)
    return out


async def test_session_opens_and_carries_messages_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a, b = manager("KME_A", "KME_B", rec_a), manager("KME_B", "KME_A", rec_b)
    left, right = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.serve_authenticated, left, "KME_B")
        nursery.start_soon(b.serve_authenticated, right, "KME_A")
        await trio.sleep(0.1)
        assert a.is_connected("KME_B") and b.is_connected("KME_A")
        for i in range(3):
            assert await a.send("KME_B", KeyAnnounce(link_id="L", block_ids=[i]))
        await trio.sleep(0.1)
        assert [e for e in rec_b.events if e[0] == "announce"] == [
            ("announce", KeyAnnounce(link_id="L", block_ids=[i])) for i in range(3)
        ]
        await trio.sleep(30)  # heartbeats keep an idle session alive
        assert a.is_connected("KME_B")
        nursery.cancel_scope.cancel()
    assert rec_a.events[0] == ("up", "KME_B")


async def test_a_silent_peer_is_dropped_after_three_heartbeats(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec = Recorder()
    a = manager("KME_A", "KME_B", rec)
    left, right = trio.testing.memory_stream_pair()
    silent_b = PeerSession(local_node="KME_B", expected_peer="KME_A")
    await right.send_all(silent_b.hello())
    with trio.fail_after(60):
        opened = await a.serve_authenticated(left, "KME_B")
    assert opened
    assert rec.events == [("up", "KME_B"), ("down", "KME_B")]
    assert "silent" in a.peers_status()[0].last_error


async def test_hello_naming_another_node_is_refused_before_anything_happens() -> None:
    rec = Recorder()
    a = manager("KME_A", "KME_B", rec)
    left, right = trio.testing.memory_stream_pair()
    mallory = PeerSession(local_node="KME_C", expected_peer="KME_A")
    await right.send_all(mallory.hello() + mallory.hello())
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.serve_authenticated, left, "KME_B")
            frames = await read_frames(right)
    assert isinstance(frames[0], Hello)
    assert isinstance(frames[-1], Error) and frames[-1].code == "wrong-peer"
    assert rec.events == []


async def test_garbage_before_hello_gets_an_error_frame_and_no_session() -> None:
    rec = Recorder()
    a = manager("KME_A", "KME_B", rec)
    left, right = trio.testing.memory_stream_pair()
    await right.send_all(b"\x00\x00\x00\x02\xc1\xc1")
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.serve_authenticated, left, "KME_B")
            frames = await read_frames(right)
    assert isinstance(frames[-1], Error) and frames[-1].code == "bad-frame"
    assert rec.events == []
    assert not a.is_connected("KME_B")


async def test_send_to_a_peer_without_a_session_reports_false() -> None:
    a = manager("KME_A", "KME_B", Recorder())
    assert not await a.send("KME_B", KeyAnnounce(link_id="L", block_ids=[1]))
