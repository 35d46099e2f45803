"""Typed peer requests: ``PeerManager.request`` returns the reply to that request, and each
agent gets the messages it registered for."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from protocol import (
    FEATURE_BURN_ACK,
    KeyAnnounce,
    ReservedKey,
    SegmentRef,
    SupplyBurn,
    SupplyReserve,
    SupplyResult,
)
from qkmsd.errors import PeerUnavailable
from qkmsd.peers import PeerManager

KEY_ID = "00000000-0000-4000-8000-000000000001"


def reserve(master: str = "SAE_A") -> SupplyReserve:
    return SupplyReserve(
        id=0,
        link_id="A~B",
        master_sae=master,
        slave_saes=["SAE_B"],
        expires_at=1e9,
        keys=[ReservedKey(key_id=KEY_ID, segments=[SegmentRef(0, 0, 32)])],
    )


def manager(node: str, peer: str) -> PeerManager:
    unused = ssl.create_default_context()
    return PeerManager(
        node_id=node,
        peers={peer: "127.0.0.1:1"},
        listen_host="127.0.0.1",
        listen_port=0,
        server_context=unused,
        client_context=unused,
        heartbeat=1.0,
        reconnect_max=5.0,
    )


@contextlib.asynccontextmanager
async def joined(a: PeerManager, b: PeerManager) -> AsyncIterator[trio.Nursery]:
    """A and B in session over memory streams, until the block ends."""
    left, right = trio.testing.memory_stream_pair()
    opened = {"KME_A": trio.Event(), "KME_B": trio.Event()}

    async def up(peer: str) -> None:
        opened[peer].set()

    async def down(peer: str, reason: str) -> None:
        pass

    a.on_connectivity(up, down)
    b.on_connectivity(up, down)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(a.serve_authenticated, left, "KME_B")
        nursery.start_soon(b.serve_authenticated, right, "KME_A")
        for event in opened.values():
            await event.wait()
        yield nursery
        nursery.cancel_scope.cancel()


async def test_a_request_returns_the_reply_to_that_request(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = manager("KME_A", "KME_B"), manager("KME_B", "KME_A")
    seen: list[tuple[str, str]] = []

    async def answer(peer: str, message: SupplyReserve) -> SupplyResult:
        seen.append((peer, message.master_sae))
        # Later requests are answered first: replies must still find their callers.
        await trio.sleep(10 if message.master_sae == "SAE_1" else 1)
        return SupplyResult(id=0, ok=True, message=message.master_sae)

    b.on_request(SupplyReserve, answer)
    replies: dict[str, str] = {}

    async def ask(master: str) -> None:
        reply = await a.request("KME_B", reserve(master))
        assert isinstance(reply, SupplyResult)
        replies[master] = reply.message

    async with joined(a, b):
        async with trio.open_nursery() as callers:
            for master in ("SAE_1", "SAE_2", "SAE_3"):
                callers.start_soon(ask, master)
    assert replies == {"SAE_1": "SAE_1", "SAE_2": "SAE_2", "SAE_3": "SAE_3"}
    assert sorted(seen) == [("KME_A", "SAE_1"), ("KME_A", "SAE_2"), ("KME_A", "SAE_3")]


async def test_a_request_to_a_peer_without_a_session_is_refused_at_once() -> None:
    a = manager("KME_A", "KME_B")
    with pytest.raises(PeerUnavailable, match="KME_B is not connected"):
        await a.request("KME_B", reserve())


async def test_a_request_whose_session_ends_raises_instead_of_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = manager("KME_A", "KME_B"), manager("KME_B", "KME_A")
    asked = trio.Event()

    async def never(peer: str, message: SupplyReserve) -> SupplyResult:
        asked.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    b.on_request(SupplyReserve, never)
    async with joined(a, b) as nursery:
        outcome: list[BaseException] = []

        async def ask() -> None:
            try:
                await a.request("KME_B", reserve())
            except PeerUnavailable as exc:
                outcome.append(exc)

        async with trio.open_nursery() as callers:
            callers.start_soon(ask)
            await asked.wait()
            a._live["KME_B"].cancel_scope.cancel()  # the session breaks
        assert len(outcome) == 1
        assert "ended before it answered SupplyReserve" in str(outcome[0])
        nursery.cancel_scope.cancel()


async def test_a_late_reply_is_dropped_and_the_session_carries_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = manager("KME_A", "KME_B"), manager("KME_B", "KME_A")

    async def slow(peer: str, message: SupplyReserve) -> SupplyResult:
        await trio.sleep(5 if message.master_sae == "SAE_SLOW" else 0)
        return SupplyResult(id=0, ok=True, message=message.master_sae)

    b.on_request(SupplyReserve, slow)
    async with joined(a, b):
        with trio.move_on_after(1) as gave_up:  # the caller owns the time limit
            await a.request("KME_B", reserve("SAE_SLOW"))
        assert gave_up.cancelled_caught
        await trio.sleep(10)  # the slow reply arrives with no one waiting for it
        assert a.is_connected("KME_B")
        reply = await a.request("KME_B", reserve("SAE_FAST"))
        assert isinstance(reply, SupplyResult) and reply.message == "SAE_FAST"


async def test_a_burn_is_a_request_answered_and_one_without_an_id_gets_no_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The id-less form is what a node of an older version sends (it did not see the
    # feature in our hello): applied, never answered.
    a, b = manager("KME_A", "KME_B"), manager("KME_B", "KME_A")
    burnt: list[int | None] = []

    async def on_burn(peer: str, message: SupplyBurn) -> SupplyResult:
        burnt.append(message.id)
        return SupplyResult(id=0, ok=True)

    b.on_request(SupplyBurn, on_burn)
    async with joined(a, b):
        assert a.has_feature("KME_B", FEATURE_BURN_ACK)
        assert not a.has_feature("KME_C", FEATURE_BURN_ACK)
        burn = SupplyBurn(link_id="A~B", segments=[SegmentRef(0, 0, 8)])
        reply = await a.request("KME_B", burn)
        assert isinstance(reply, SupplyResult) and reply.ok
        assert await a.send("KME_B", burn)
        await trio.testing.wait_all_tasks_blocked()
        assert len(burnt) == 2 and burnt[0] is not None and burnt[1] is None
        assert a.is_connected("KME_B") and b.is_connected("KME_A")


async def test_a_request_handler_that_fails_sends_no_reply_and_keeps_the_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = manager("KME_A", "KME_B"), manager("KME_B", "KME_A")

    async def broken(peer: str, message: SupplyReserve) -> SupplyResult:
        if message.master_sae == "SAE_BUG":
            raise RuntimeError("a bug in an agent")
        return SupplyResult(id=0, ok=True)

    b.on_request(SupplyReserve, broken)
    async with joined(a, b):
        with trio.move_on_after(5) as gave_up:
            await a.request("KME_B", reserve("SAE_BUG"))
        assert gave_up.cancelled_caught
        assert a.is_connected("KME_B") and b.is_connected("KME_A")
        assert isinstance(await a.request("KME_B", reserve()), SupplyResult)


async def test_one_way_messages_reach_their_handler_in_order_while_requests_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    a, b = manager("KME_A", "KME_B"), manager("KME_B", "KME_A")
    announced: list[int] = []

    async def on_announce(peer: str, message: KeyAnnounce) -> None:
        announced.extend(message.block_ids)

    async def slow(peer: str, message: SupplyReserve) -> SupplyResult:
        await trio.sleep(100)
        return SupplyResult(id=0, ok=True)

    b.on_message(KeyAnnounce, on_announce)
    b.on_request(SupplyReserve, slow)
    async with joined(a, b):
        async with trio.open_nursery() as callers:
            callers.start_soon(a.request, "KME_B", reserve())
            for i in range(5):
                assert await a.send("KME_B", KeyAnnounce(link_id="A~B", block_ids=[i]))
            await trio.sleep(1)
            # A request being served does not hold up the messages behind it.
            assert announced == [0, 1, 2, 3, 4]
            callers.cancel_scope.cancel()


def test_each_message_type_has_one_owner() -> None:
    a = manager("KME_A", "KME_B")

    async def handler(peer: str, message: KeyAnnounce) -> None:
        pass

    async def answer(peer: str, message: SupplyReserve) -> SupplyResult:
        return SupplyResult(id=0, ok=True)

    a.on_message(KeyAnnounce, handler)
    with pytest.raises(ValueError, match="KeyAnnounce already has a handler"):
        a.on_message(KeyAnnounce, handler)
    with pytest.raises(TypeError, match="KeyAnnounce is not a request type"):
        a.on_request(KeyAnnounce, answer)  # type: ignore[type-var, arg-type]
    a.on_request(SupplyReserve, answer)
    with pytest.raises(ValueError, match="SupplyReserve already has a handler"):
        a.on_message(SupplyReserve, handler)  # type: ignore[arg-type]
