"""Which store calls of the key supply may run on the event loop (``StoreThread.call_inline``):
a small fetch and a small reservation's recording; larger ones always go to the worker, so
that one request cannot hold up the others for long."""

from __future__ import annotations

import trio

from qkmsd.supply import INLINE_FETCH_MAX_KEYS, INLINE_RECORD_MAX_KEYS, KeyOrder

from .conftest import LinkEnds


async def cut_keys(ends: LinkEnds, number: int) -> list[str]:
    """``number`` keys for SAE_A -> SAE_B of a size no stock is kept for; their ids."""
    ends.thread_b.paths.clear()
    keys = await ends.source.new_keys(
        KeyOrder("SAE_A", ("SAE_B",), "KME_B", number, 64, ends.policy())
    )
    return [k.key_id for k in keys]


async def test_a_fetch_of_up_to_the_inline_limit_may_run_inline_a_larger_one_never(
    ends: LinkEnds,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        for number, path in (
            (INLINE_FETCH_MAX_KEYS, "inline"),
            (INLINE_FETCH_MAX_KEYS + 1, "worker"),
        ):
            ids = await cut_keys(ends, number)
            ends.thread_b.paths.clear()
            await ends.recorded_b.fetch(ids, master="SAE_A", requester="SAE_B")
            assert ends.thread_b.paths == [path], number
        nursery.cancel_scope.cancel()


async def test_a_reservation_of_up_to_the_inline_limit_may_be_recorded_inline_a_larger_one_never(
    ends: LinkEnds,
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(ends.source.run)
        await cut_keys(ends, INLINE_RECORD_MAX_KEYS)
        assert ends.thread_b.paths == ["inline"]
        await cut_keys(ends, INLINE_RECORD_MAX_KEYS + 1)
        assert ends.thread_b.paths == ["worker"]
        nursery.cancel_scope.cancel()
