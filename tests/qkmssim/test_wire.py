"""A simulated link's streams: bytes cross while it is up, vanish while it is silent (and
nothing closes), and a cut closes both ends."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from qkmssim._wire import DOWN, SILENT, UP, Wire


async def test_bytes_cross_an_up_wire_and_a_close_reaches_the_other_end() -> None:
    wire = Wire()
    a, b = wire.pair()
    await a.send_all(b"hello")
    assert await b.receive_some(3) == b"hel"
    assert await b.receive_some() == b"lo"
    await a.aclose()
    assert await b.receive_some() == b""


async def test_a_silent_wire_loses_bytes_and_closes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    a, b = wire.pair()
    wire.set(SILENT)
    await a.send_all(b"lost")
    await a.aclose()  # the close is lost too
    with trio.move_on_after(60) as waited:
        await b.receive_some()
    assert waited.cancelled_caught
    wire.set(UP)
    c, d = wire.pair()
    await c.send_all(b"again")
    assert await d.receive_some() == b"again"


async def test_a_cut_wire_breaks_both_ends() -> None:
    wire = Wire()
    a, b = wire.pair()
    async with trio.open_nursery() as nursery:

        async def reader() -> None:
            with pytest.raises(trio.BrokenResourceError):
                await b.receive_some()

        nursery.start_soon(reader)
        await trio.testing.wait_all_tasks_blocked()
        wire.set(DOWN)
    with pytest.raises(trio.BrokenResourceError):
        await a.send_all(b"x")


async def test_wait_up_returns_once_the_wire_is_mended(
    autojump_clock: trio.testing.MockClock,
) -> None:
    wire = Wire()
    wire.set(DOWN)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(wire.wait_up)
        await trio.sleep(5)
        wire.set(UP)
    assert trio.current_time() == 5
