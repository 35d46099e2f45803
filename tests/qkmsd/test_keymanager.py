"""Link key synchronisation: a block is usable only when both ends hold it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from protocol import KeyConfirm, KeyDiscard
from qkd_drivers import KeyBlock
from qkmsd.keymanager import owns_block
from qkmsd.keystore import KeyState

from .fakes import LINK, End, ReferenceDriver, Wire, make_end


@pytest.fixture
async def pair(tmp_path: Path, nursery: trio.Nursery) -> AsyncIterator[tuple[End, End, Wire]]:
    wire = Wire()
    a = make_end("KME_A", "KME_B", tmp_path, wire, trio.current_time)
    b = make_end("KME_B", "KME_A", tmp_path, wire, trio.current_time)
    nursery.start_soon(wire.run)
    await nursery.start(a.manager.run)
    await nursery.start(b.manager.run)
    yield a, b, wire
    a.store.close()
    b.store.close()


def state(end: End, block_id: int) -> KeyState | None:
    return end.store.states(LINK, [block_id]).get(block_id)


async def test_block_held_by_both_ends_becomes_ready_at_both(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    await a.driver.emit(1, b"k" * 32)
    await trio.sleep(1)
    assert state(a, 1) is KeyState.RECEIVED
    await b.driver.emit(1, b"k" * 32)
    await trio.sleep(1)
    assert state(a, 1) is state(b, 1) is KeyState.READY
    assert a.store.read_block(LINK, 1) == b.store.read_block(LINK, 1)


async def test_block_only_one_end_holds_is_discarded_after_the_timeout(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    await a.driver.emit(5, b"x" * 32, at=trio.current_time())
    await trio.sleep(10)
    assert state(a, 5) is KeyState.RECEIVED
    await trio.sleep(30)
    assert state(a, 5) is KeyState.DISCARDED
    assert any(isinstance(m, KeyDiscard) and 5 in m.block_ids for _, m in wire.sent)
    # The straggler arriving late at B is refused too, never made ready.
    await b.driver.emit(5, b"x" * 32)
    await trio.sleep(2)
    assert state(b, 5) is KeyState.DISCARDED


async def test_time_while_the_peer_is_away_does_not_count(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await a.driver.emit(7, b"y" * 32)
    await b.driver.emit(7, b"y" * 32)
    await trio.sleep(300)  # ten time-outs, peer never connected
    assert state(a, 7) is state(b, 7) is KeyState.RECEIVED
    await wire.connect()
    await trio.sleep(1)
    assert state(a, 7) is state(b, 7) is KeyState.READY


async def test_a_confirm_lost_in_a_disconnect_is_recovered_on_reconnect(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await a.driver.emit(9, b"z" * 32)
    await wire.connect()
    await trio.sleep(1)  # A announced 9; B does not have it yet
    await wire.disconnect()
    await b.driver.emit(9, b"z" * 32)  # B knows A has it: ready at B, confirm lost
    await trio.sleep(1)
    assert (state(a, 9), state(b, 9)) == (KeyState.RECEIVED, KeyState.READY)
    await wire.connect()
    await trio.sleep(1)
    assert state(a, 9) is state(b, 9) is KeyState.READY


async def test_a_discard_lost_with_its_confirm_is_told_again_on_reconnect(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    # Found with the fault proxy: A made a block READY and its confirm was lost; B, never
    # confirmed, discarded it and that discard was lost too.  Neither re-announces a block
    # it does not hold as RECEIVED, so A's copy stayed READY at one end for good.
    a, b, wire = pair
    lost: list[Any] = []

    def dropping(send: Any, kind: type[Any]) -> Any:
        async def maybe(peer: str, message: Any) -> bool:
            if isinstance(message, kind):
                lost.append(message)
                return True  # sent, as far as the sender can tell, but never arrives
            return bool(await send(peer, message))

        return maybe

    await wire.connect()
    await b.driver.emit(11, b"w" * 32)
    await trio.sleep(1)  # A knows B holds 11
    send_a, send_b = a.manager._send, b.manager._send
    a.manager._send = dropping(send_a, KeyConfirm)
    b.manager._send = dropping(send_b, KeyDiscard)
    await a.driver.emit(11, b"w" * 32)
    await trio.sleep(60)
    assert (state(a, 11), state(b, 11)) == (KeyState.READY, KeyState.DISCARDED)
    assert {type(m) for m in lost} == {KeyConfirm, KeyDiscard}
    a.manager._send, b.manager._send = send_a, send_b
    await wire.disconnect()
    await wire.connect()
    await trio.sleep(1)
    assert state(a, 11) is state(b, 11) is KeyState.DISCARDED


async def test_pools_agree_after_a_stream_of_blocks(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    for i in range(100, 160):
        await a.driver.emit(i, bytes([i]) * 64)
        await trio.sleep(0.01)
        await b.driver.emit(i, bytes([i]) * 64)
    await trio.sleep(2)
    pa, pb = a.store.pool(LINK), b.store.pool(LINK)
    assert pa.ready_blocks == pb.ready_blocks == 60
    assert pa.ready_bits == pb.ready_bits == 60 * 512
    assert pa.owned_ready_bits + pb.owned_ready_bits == pa.ready_bits


def test_each_block_is_owned_by_exactly_one_end() -> None:
    for block_id in range(1000):
        assert owns_block("KME_A", "KME_B", block_id) != owns_block("KME_B", "KME_A", block_id)


async def test_announce_for_a_link_of_another_peer_changes_nothing(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    from protocol import KeyAnnounce

    a, _, wire = pair
    await a.driver.emit(3, b"q" * 32)
    await trio.sleep(1)
    await a.manager.on_announce("KME_C", KeyAnnounce(link_id=LINK, block_ids=[3]))
    assert state(a, 3) is KeyState.RECEIVED


async def test_driver_resumes_after_the_highest_stored_block(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, _ = pair
    assert a.driver.after_seen == [None]


async def test_a_driver_that_fetches_by_reference_gets_the_peers_references(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    device = {"key-id-1": b"r" * 32}
    wire = Wire()
    a = make_end("KME_A", "KME_B", tmp_path, wire, trio.current_time)
    b = make_end("KME_B", "KME_A", tmp_path, wire, trio.current_time)
    b.driver = ReferenceDriver(b.driver.link, device)
    b.manager._links[LINK].driver = b.driver
    nursery.start_soon(wire.run)
    await nursery.start(a.manager.run)
    await nursery.start(b.manager.run)
    await wire.connect()
    await a.driver._send.send(KeyBlock(LINK, 42, device["key-id-1"], 0.01, 0.0, ref="key-id-1"))
    await trio.sleep(2)
    assert b.driver.fetched == [(42, "key-id-1")]
    assert state(a, 42) is state(b, 42) is KeyState.READY
    a.store.close()
    b.store.close()


async def test_device_references_survive_a_restart_of_the_announcing_node(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    device = {"key-id-7": b"s" * 32}
    wire = Wire()
    a = make_end("KME_A", "KME_B", tmp_path, wire, trio.current_time)
    async with trio.open_nursery() as first_life:
        await first_life.start(a.manager.run)
        await a.driver._send.send(KeyBlock(LINK, 7, device["key-id-7"], 0.01, 0.0, ref="key-id-7"))
        await trio.sleep(1)  # stored while the peer is away, then the node restarts
        first_life.cancel_scope.cancel()
    a.store.close()
    wire = Wire()
    a = make_end("KME_A", "KME_B", tmp_path, wire, trio.current_time)
    b = make_end("KME_B", "KME_A", tmp_path, wire, trio.current_time)
    b.driver = ReferenceDriver(b.driver.link, device)
    b.manager._links[LINK].driver = b.driver
    nursery.start_soon(wire.run)
    await nursery.start(a.manager.run)
    await nursery.start(b.manager.run)
    await wire.connect()
    await trio.sleep(2)
    assert b.driver.fetched == [(7, "key-id-7")]
    assert state(a, 7) is state(b, 7) is KeyState.READY
    a.store.close()
    b.store.close()


async def test_a_peer_that_stalls_longer_than_the_timeout_then_answers_loses_no_block(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    await a.driver.emit(11, b"s" * 32)
    wire.stall()  # B's loop starves: A's announce waits, B answers nothing
    await trio.sleep(5)
    await b.driver.emit(11, b"s" * 32)  # B's driver catches up; its announce waits too
    await trio.sleep(45)  # half again the 30 s time-out, still connected
    assert state(a, 11) is state(b, 11) is KeyState.RECEIVED
    wire.resume()
    await trio.sleep(2)
    assert state(a, 11) is state(b, 11) is KeyState.READY
    assert a.store.read_block(LINK, 11) == b.store.read_block(LINK, 11)
    assert not any(isinstance(m, KeyDiscard) for _, m in wire.sent)


async def test_live_time_before_and_after_a_stall_adds_up_to_the_timeout(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, _, wire = pair
    await wire.connect()
    await a.driver.emit(13, b"t" * 32)  # B never gets this block
    await trio.sleep(20)
    wire.stall()
    await trio.sleep(60)
    wire.resume()
    # 20 s live before, at most the 2 s liveness window during the stall: not yet 30.
    await trio.sleep(5)
    assert state(a, 13) is KeyState.RECEIVED
    await trio.sleep(10)
    assert state(a, 13) is KeyState.DISCARDED
    assert any(isinstance(m, KeyDiscard) and 13 in m.block_ids for _, m in wire.sent)


async def test_a_held_link_keeps_new_blocks_out_of_the_pool_at_both_ends(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    await a.driver.emit(1, b"k" * 32)
    await b.driver.emit(1, b"k" * 32)
    await trio.sleep(1)
    a.manager.hold_link(LINK, "qber-high")
    await a.driver.emit(2, b"m" * 32)
    await b.driver.emit(2, b"m" * 32)
    await trio.sleep(1)
    assert state(a, 1) is state(b, 1) is KeyState.READY
    assert state(a, 2) is state(b, 2) is KeyState.DISCARDED
    [status] = await a.manager.links_status()
    assert status.held == ["qber-high"] and status.ready_blocks == 1
    assert status.bits_in == 2 * 32 * 8  # held blocks count: the driver delivered them


async def test_a_released_link_fills_its_pool_again(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    a.manager.hold_link(LINK, "qber-high")
    a.manager.hold_link(LINK, "link-down")
    a.manager.release_link(LINK, "qber-high")
    await a.driver.emit(1, b"k" * 32)
    await b.driver.emit(1, b"k" * 32)
    await trio.sleep(1)
    assert state(a, 1) is KeyState.DISCARDED
    a.manager.release_link(LINK, "link-down")
    a.manager.release_link(LINK, "link-down")
    await a.driver.emit(3, b"n" * 32)
    await b.driver.emit(3, b"n" * 32)
    await trio.sleep(1)
    assert state(a, 3) is state(b, 3) is KeyState.READY
    [status] = await a.manager.links_status()
    assert status.held == []


def test_holding_an_unknown_link_is_a_key_error(tmp_path: Path) -> None:
    wire = Wire()
    a = make_end("KME_A", "KME_B", tmp_path, wire, lambda: 0.0)
    with pytest.raises(KeyError):
        a.manager.hold_link("nope", "qber-high")
    a.store.close()


async def test_a_link_added_while_the_manager_runs_is_read_and_shown_at_once(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    # An end-to-end pool made on demand, added while links_status is walking the links.
    from qkd_drivers import LinkEnd

    from .fakes import ScriptedDriver

    a, _, _ = pair
    extra = ScriptedDriver(LinkEnd("KME_A~KME_C", "KME_A", "KME_C"))
    thread = a.manager._thread
    plain_call = thread.call
    inside, go_on = trio.Event(), trio.Event()

    async def held_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        inside.set()
        await go_on.wait()
        return await plain_call(fn, *args, **kwargs)

    statuses: list[list[str]] = []

    async def status() -> None:
        statuses.append([s.link_id for s in await a.manager.links_status()])

    async with trio.open_nursery() as nursery:
        thread.call = held_call  # type: ignore[method-assign]
        nursery.start_soon(status)
        await inside.wait()  # the walk is under way, waiting for the store
        thread.call = plain_call  # type: ignore[method-assign]
        await a.manager.add_link("KME_A~KME_C", "KME_C", extra)
        go_on.set()
    assert statuses == [[LINK]]  # the walk saw the links it started with, and did not fail
    assert [s.link_id for s in await a.manager.links_status()] == [LINK, "KME_A~KME_C"]
    await trio.sleep(1)
    assert extra.after_seen == [None]  # its driver is read


async def test_a_stopped_driver_delivers_nothing_until_every_stop_is_withdrawn(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    await trio.sleep(0.5)
    a.manager.stop_driver(LINK, "operator")
    a.manager.stop_driver(LINK, "qber-high")
    await trio.sleep(0.5)
    await a.driver.emit(11, b"s" * 32)
    await b.driver.emit(11, b"s" * 32)
    await trio.sleep(2)
    assert state(a, 11) is None  # not read while stopped
    [status] = await a.manager.links_status()
    assert status.stopped == ["operator", "qber-high"]
    a.manager.start_driver(LINK, "operator")
    await trio.sleep(2)
    assert state(a, 11) is None  # one stop left
    a.manager.start_driver(LINK, "qber-high")
    await trio.sleep(2)
    assert state(a, 11) is state(b, 11) is KeyState.READY
    assert len(a.driver.after_seen) == 2  # the driver was opened again, from the store's id


async def test_starting_a_driver_that_was_not_stopped_changes_nothing(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    await wire.connect()
    a.manager.start_driver(LINK, "operator")
    await a.driver.emit(12, b"t" * 32)
    await b.driver.emit(12, b"t" * 32)
    await trio.sleep(2)
    assert state(a, 12) is KeyState.READY and len(a.driver.after_seen) == 1
    with pytest.raises(KeyError):
        a.manager.stop_driver("KME_A~KME_Z", "operator")


async def test_a_block_past_the_maximum_age_expires_also_when_it_arrives_old(
    tmp_path: Path, nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # The sweep asks the store about expiry only when a block may be due; a block that
    # arrives already old (produced long before the sweep last looked) must still count.
    wire = Wire()
    a = make_end("KME_A", "KME_B", tmp_path, wire, trio.current_time, max_block_age=100.0)
    b = make_end("KME_B", "KME_A", tmp_path, wire, trio.current_time, max_block_age=100.0)
    nursery.start_soon(wire.run)
    await nursery.start(a.manager.run)
    await nursery.start(b.manager.run)
    await wire.connect()
    for end in (a, b):
        await end.driver.emit(1, b"n" * 32, at=trio.current_time())
    await trio.sleep(5)
    old = trio.current_time() - 99.0
    for end in (a, b):
        await end.driver.emit(2, b"o" * 32, at=old)
    await trio.sleep(5)
    assert (state(a, 1), state(a, 2)) == (KeyState.READY, KeyState.EXPIRED)
    await trio.sleep(100)
    assert state(a, 1) is state(b, 1) is KeyState.EXPIRED
    a.store.close()
    b.store.close()


async def test_the_sweep_asks_the_store_only_when_a_block_may_be_due(
    pair: tuple[End, End, Wire], autojump_clock: trio.testing.MockClock
) -> None:
    a, b, wire = pair
    asked: list[str] = []
    for name in ("expire", "unconfirmed"):
        real = getattr(a.store, name)

        def counting(*args: Any, _real: Any = real, _name: str = name, **kwargs: Any) -> Any:
            if _name == "expire" or "older_than" in kwargs:
                asked.append(_name)
            return _real(*args, **kwargs)

        setattr(a.store, name, counting)
    await wire.connect()
    for end in (a, b):
        await end.driver.emit(1, b"s" * 32, at=trio.current_time())
    await trio.sleep(90)  # 90 sweeps; the time-out is 30 s, the maximum age an hour
    assert state(a, 1) is KeyState.READY
    assert asked.count("expire") == 1  # the first look
    assert asked.count("unconfirmed") <= 3  # once per time-out at most
