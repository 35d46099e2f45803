"""Peer sessions over memory streams: what the peer manager does after authentication."""

from __future__ import annotations

import dataclasses
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from protocol import (
    NEED_DATA,
    PEER_DECODER,
    Error,
    ErrorCode,
    FramedConnection,
    Hello,
    KeyAnnounce,
    PeerSession,
    Ping,
    Pong,
    RemoteProtocolError,
)
from qkmsd.errors import PeerConnectionLost
from qkmsd.peers import SILENT, PeerManager
from qkmsd.peers._manager import CLOCK_PING_HEARTBEATS, session_ending


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self.reasons: list[str] = []
        self.got = trio.Event()
        self.down_at = -1.0

    async def on_up(self, peer: str) -> None:
        self.events.append(("up", peer))

    async def on_down(self, peer: str, reason: str) -> None:
        self.down_at = trio.current_time()
        self.reasons.append(reason)
        self.events.append(("down", peer))

    async def on_announce(self, peer: str, message: KeyAnnounce) -> None:
        self.events.append(("announce", message))
        self.got.set()


def manager(node: str, peer: str, rec: Recorder, *, silence: float | None = None) -> PeerManager:
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
        silence=silence,
    )
    peers.on_message(KeyAnnounce, rec.on_announce)
    peers.on_connectivity(rec.on_up, rec.on_down)
    return peers


def connect(nursery: trio.Nursery, a: PeerManager, b: PeerManager) -> None:
    """Serve one session between ``a`` and ``b`` over an in-memory stream pair."""
    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(a.serve_authenticated, left, b.node_id)
    nursery.start_soon(b.serve_authenticated, right, a.node_id)


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
    async with trio.open_nursery() as nursery:
        connect(nursery, a, b)
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
    assert rec.reasons == [a.peers_status()[0].down_reason]


class Muted(trio.abc.Stream):
    """A connection whose far end falls silent on ``mute()``: nothing more arrives, what
    is sent vanishes, and nothing closes (a cut fibre, a dead host)."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.muted = trio.Event()
        self.last_delivered = trio.current_time()

    def mute(self) -> None:
        self.muted.set()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not self.muted.is_set():
            await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self.muted.is_set():
            await trio.sleep_forever()
        async with trio.open_nursery() as nursery:
            got: list[bytes | bytearray] = []

            async def read() -> None:
                got.append(await self.inner.receive_some(max_bytes))
                nursery.cancel_scope.cancel()

            nursery.start_soon(read)
            await self.muted.wait()
            nursery.cancel_scope.cancel()
        if got:
            self.last_delivered = trio.current_time()
            return got[0]
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_peer_that_falls_silent_is_down_after_the_limit_and_not_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = manager("KME_A", "KME_B", rec_a, silence=2.5)
    b = manager("KME_B", "KME_A", rec_b, silence=2.5)
    left, right = trio.testing.memory_stream_pair()
    muted = Muted(left)
    ended: list[float] = []
    done = trio.Event()

    async def serve_a() -> None:
        await a.serve_authenticated(muted, "KME_B")
        ended.append(trio.current_time())
        done.set()

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_a)
            nursery.start_soon(b.serve_authenticated, right, "KME_A")
            await trio.sleep(20)  # heartbeats keep the session alive meanwhile
            assert a.is_connected("KME_B") and rec_a.reasons == []
            muted.mute()
            await trio.sleep_until(muted.last_delivered + 2.4)
            assert a.is_connected("KME_B")  # not before the limit
            await done.wait()
            nursery.cancel_scope.cancel()
    # Silence is counted in ticks of a quarter of the limit: declared at the limit, or
    # at most one tick after it.
    assert 2.5 <= ended[0] - muted.last_delivered <= 2.5 + 2.5 / 4
    assert rec_a.events[-1] == ("down", "KME_B")
    assert rec_a.reasons[-1].startswith(SILENT)
    state = a.peers_status()[0]
    assert state.state == "disconnected" and state.down_reason.startswith(SILENT)
    assert state.down_since is not None


async def test_a_node_whose_own_loop_stalls_keeps_a_peer_that_kept_talking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = manager("KME_A", "KME_B", rec_a, silence=2.5)
    b = manager("KME_B", "KME_A", rec_b, silence=2.5)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            connect(nursery, a, b)
            await trio.sleep(5)
            # A stall of the whole process: the clock jumps 10 s with no task running.
            # The peer's bytes wait in the stream; silence is not counted against it.
            autojump_clock.jump(10)
            await trio.sleep(5)
            assert a.is_connected("KME_B") and b.is_connected("KME_A")
            nursery.cancel_scope.cancel()
    assert rec_a.reasons == [] or not rec_a.reasons[0].startswith(SILENT)


async def busy_loop(clock: trio.testing.MockClock, batch: float) -> None:
    """Make every scheduling batch of the whole loop take ``batch`` seconds: a process
    crowded with runnable tasks that still wakes its timers about on time."""
    while True:
        clock.jump(batch)
        await trio.lowlevel.checkpoint()


async def test_a_node_whose_loop_is_busy_keeps_a_peer_that_kept_talking(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = manager("KME_A", "KME_B", rec_a, silence=2.5)
    b = manager("KME_B", "KME_A", rec_b, silence=2.5)
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            connect(nursery, a, b)
            await trio.sleep(5)
            # Each batch takes a third of a second: every wake is on time to within a
            # batch, but a heartbeat needs several batches to be sent, read and answered.
            hog = trio.CancelScope()

            async def hogging() -> None:
                with hog:
                    await busy_loop(autojump_clock, 0.35)

            nursery.start_soon(hogging)
            await trio.sleep(60)
            hog.cancel()
            await trio.sleep(5)
            assert a.is_connected("KME_B") and b.is_connected("KME_A")
            nursery.cancel_scope.cancel()
    assert rec_a.reasons == [] or not rec_a.reasons[0].startswith(SILENT)
    assert rec_b.reasons == [] or not rec_b.reasons[0].startswith(SILENT)


async def test_a_busy_node_still_drops_a_peer_that_fell_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a = manager("KME_A", "KME_B", rec_a, silence=2.5)
    b = manager("KME_B", "KME_A", rec_b, silence=2.5)
    left, right = trio.testing.memory_stream_pair()
    muted = Muted(left)
    done = trio.Event()

    async def serve_a() -> None:
        await a.serve_authenticated(muted, "KME_B")
        done.set()

    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve_a)
            nursery.start_soon(b.serve_authenticated, right, "KME_A")
            await trio.sleep(5)
            nursery.start_soon(busy_loop, autojump_clock, 0.35)
            await trio.sleep(5)
            muted.mute()
            await done.wait()
            nursery.cancel_scope.cancel()
    # Later than on an idle loop (each look is credited at most half, the busy turns not
    # at all, and the session takes turns to end), but down: here, where every turn of
    # the loop takes a seventh of the limit, within six times the limit.
    assert 2.5 <= rec_a.down_at - muted.last_delivered <= 6 * 2.5
    assert rec_a.reasons[-1].startswith(SILENT)


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


# --- strangers with a live peer's name, and second sessions ------------------------------


async def open_healthy_pair(
    nursery: trio.Nursery, a: PeerManager, b: PeerManager
) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A session KME_A <-> KME_B, as a TLS handshake would have authenticated it."""
    left, right = trio.testing.memory_stream_pair()
    nursery.start_soon(a.serve_authenticated, left, "KME_B")
    nursery.start_soon(
        partial(
            b.serve_authenticated,
            right,
            "KME_A",
            tls_version="TLSv1.3",
            tls_group="x25519",
            serial=0xA1,
        )
    )
    await trio.sleep(0.1)
    assert a.is_connected("KME_B") and b.is_connected("KME_A")
    return left, right


async def stranger_sends_nothing(stream: trio.abc.Stream) -> None:
    await trio.sleep(3600)


async def stranger_hangs_up(stream: trio.abc.Stream) -> None:
    await stream.aclose()


async def stranger_sends_garbage(stream: trio.abc.Stream) -> None:
    await stream.send_all(b"\x00\x00\x00\x02\xc1\xc1")
    await read_frames(stream)


async def stranger_names_another_node(stream: trio.abc.Stream) -> None:
    await stream.send_all(PeerSession(local_node="KME_C", expected_peer="KME_B").hello())
    await read_frames(stream)


@pytest.mark.parametrize(
    "stranger",
    [
        stranger_sends_nothing,
        stranger_hangs_up,
        stranger_sends_garbage,
        stranger_names_another_node,
    ],
)
async def test_a_failed_stranger_with_a_live_peers_name_leaves_its_session_alone(
    autojump_clock: trio.testing.MockClock,
    stranger: Callable[[trio.abc.Stream], Awaitable[None]],
) -> None:
    rec_a, rec_b = Recorder(), Recorder()
    a, b = manager("KME_A", "KME_B", rec_a), manager("KME_B", "KME_A", rec_b)
    async with trio.open_nursery() as nursery:
        left, _ = await open_healthy_pair(nursery, a, b)
        before = b.peers_status()[0]
        ours, theirs = trio.testing.memory_stream_pair()
        nursery.start_soon(stranger, theirs)

        opened = await b.serve_authenticated(
            ours, "KME_A", tls_version="TLSv1.2", tls_group="secp384r1", serial=0xBAD
        )

        assert not opened
        after = b.peers_status()[0]
        assert after == dataclasses.replace(
            before, last_seen=after.last_seen, clock_offset_s=after.clock_offset_s
        )
        assert (after.state, after.last_error, after.tls_version, after.tls_group) == (
            "connected",
            "",
            "TLSv1.3",
            "x25519",
        )
        assert await a.send("KME_B", KeyAnnounce(link_id="L", block_ids=[7]))
        await rec_b.got.wait()
        # The healthy session's own end is what its last error and log say.
        await left.aclose()
        await trio.sleep(0.1)
        assert b.peers_status()[0].last_error == "KME_A closed the connection"
        nursery.cancel_scope.cancel()
    assert rec_b.events[0] == ("up", "KME_A")
    assert ("down", "KME_A") in rec_b.events


async def test_a_second_session_that_opens_replaces_the_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec_b = Recorder()
    a, b = manager("KME_A", "KME_B", Recorder()), manager("KME_B", "KME_A", rec_b)
    a2 = manager("KME_A", "KME_B", Recorder())  # KME_A after a restart
    async with trio.open_nursery() as nursery:
        first, _ = await open_healthy_pair(nursery, a, b)
        left, right = trio.testing.memory_stream_pair()
        nursery.start_soon(a2.serve_authenticated, left, "KME_B")
        nursery.start_soon(
            partial(
                b.serve_authenticated,
                right,
                "KME_A",
                tls_version="TLSv1.3",
                tls_group="X25519MLKEM768",
                serial=0xA2,
            )
        )
        await trio.sleep(0.1)

        state = b.peers_status()[0]
        assert (state.state, state.connects, state.last_error) == ("connected", 2, "")
        assert state.tls_group == "X25519MLKEM768"
        assert not a.is_connected("KME_B")  # b closed the older session
        assert await a2.send("KME_B", KeyAnnounce(link_id="L", block_ids=[1]))
        await rec_b.got.wait()
        # Agents hear "up" for the new session and no "down" in between: the peer
        # never went away.
        assert [e for e in rec_b.events if e[0] != "announce"] == [("up", "KME_A")] * 2
        nursery.cancel_scope.cancel()


async def test_close_revoked_ends_only_the_sessions_with_a_revoked_serial(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rec_b = Recorder()
    a, b = manager("KME_A", "KME_B", Recorder()), manager("KME_B", "KME_A", rec_b)
    async with trio.open_nursery() as nursery:
        await open_healthy_pair(nursery, a, b)

        assert b.close_revoked(frozenset({0xA0, 0xA2})) == []
        await trio.sleep(0.1)
        assert b.is_connected("KME_A")

        assert b.close_revoked(frozenset({0xA1})) == ["KME_A"]
        await trio.sleep(0.1)
        assert not b.is_connected("KME_A")
        assert b.peers_status()[0].last_error == "certificate revoked (serial a1)"
        assert rec_b.events[-1] == ("down", "KME_A")
        nursery.cancel_scope.cancel()


async def test_a_peer_s_clock_offset_is_measured_from_its_answers_to_heartbeats() -> None:
    """A peer whose clock runs 5 s ahead answers each ping with its own time: the offset
    shows, within the round trip's error."""
    rec = Recorder()
    a = manager("KME_A", "KME_B", rec)
    left, right = trio.testing.memory_stream_pair()
    b = PeerSession(local_node="KME_B", expected_peer="KME_A")
    await right.send_all(b.hello())

    async def answer_pings(skew: float) -> None:
        while data := await right.receive_some(65536):
            b.receive_data(bytes(data))
            while (event := b.next_event()) is not NEED_DATA:
                if isinstance(event, Ping) and event.sent_at is not None:
                    at = event.sent_at + skew
                    pong = Pong(nonce=event.nonce, echo=event.sent_at, at=at)
                    await right.send_all(b.send(pong))

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.serve_authenticated, left, "KME_B")
            nursery.start_soon(answer_pings, 5.0)
            while a.peers_status()[0].clock_offset_s is None:  # noqa: ASYNC110
                await trio.sleep(0.05)
            offset = a.peers_status()[0].clock_offset_s
            assert offset is not None and abs(offset - 5.0) < 0.5
            nursery.cancel_scope.cancel()


class Tapped(trio.abc.Stream):
    """A stream that counts the Pings sent through it."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.frames = FramedConnection(PEER_DECODER)
        self.pings = 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.frames.receive_data(bytes(data))
        while (event := self.frames.next_event()) is not NEED_DATA:
            self.pings += isinstance(event, Ping)
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_one_end_s_pings_and_the_other_s_answers_keep_an_idle_session_heard(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Both ends ping only when a heartbeat passed with nothing sent: on an idle session
    one end's pings (and the other's answers) keep both heard, and the other pings only
    every CLOCK_PING_HEARTBEATS heartbeats, for its clock sample."""
    rec_a, rec_b = Recorder(), Recorder()
    a, b = manager("KME_A", "KME_B", rec_a), manager("KME_B", "KME_A", rec_b)
    left, right = trio.testing.memory_stream_pair()
    tap_a, tap_b = Tapped(left), Tapped(right)
    with trio.fail_after(200):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(a.serve_authenticated, tap_a, "KME_B")
            nursery.start_soon(b.serve_authenticated, tap_b, "KME_A")
            await trio.sleep(100)  # a hundred heartbeats
            assert a.is_connected("KME_B") and b.is_connected("KME_A")
            assert a.peers_status()[0].clock_offset_s is not None
            assert b.peers_status()[0].clock_offset_s is not None
            nursery.cancel_scope.cancel()
    pings = sorted((tap_a.pings, tap_b.pings))
    assert pings[1] >= 90  # one end pings every heartbeat
    assert pings[0] <= 100 / CLOCK_PING_HEARTBEATS + 1  # the other for its clock only
    assert not [r for r in rec_a.reasons + rec_b.reasons if r.startswith(SILENT)]


def test_a_session_ended_by_two_errors_at_once_is_a_lost_connection_not_a_crash() -> None:
    # Found with the fault proxy: the reader and a heartbeat both saw one reset, the
    # session's nursery raised a group of two, and the peer manager (then the node) died.
    both = ExceptionGroup(
        "nursery",
        [
            PeerConnectionLost("receive from KME_B failed: EOF"),
            ExceptionGroup("inner", [PeerConnectionLost("send to KME_B failed: reset")]),
        ],
    )
    assert str(session_ending(both)) == "receive from KME_B failed: EOF"
    protocol = ExceptionGroup(
        "nursery",
        [trio.BrokenResourceError(), RemoteProtocolError(ErrorCode.BAD_FRAME, "garbage")],
    )
    assert isinstance(session_ending(protocol), RemoteProtocolError)
    # Anything else is a bug, and still propagates.
    assert session_ending(ExceptionGroup("n", [PeerConnectionLost("x"), KeyError("y")])) is None
    assert session_ending(ValueError("bug")) is None
