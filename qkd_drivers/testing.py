"""Test helpers for QKD drivers: the conformance suite and emulated link pairs.

``check_driver(factory)`` is what any driver must pass.  ``factory()`` is an
async context manager that yields the two (not yet entered) drivers of one
link, ``(alice_end, bob_end)``; it may run whatever the drivers need (device
emulators, say) while it is open.  The suite calls it once per check.  Run the
suite under ``trio.fail_after``: a driver that never yields a block hangs it.

A failed check raises ``ConformanceError`` naming the driver kind and the rule.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager

import trio

from ._base import Driver, KeyBlock, LinkEnd, LinkState
from .vendor import (
    DeviceEmulator,
    VendorSerialDriver,
    VendorSerialParams,
    VendorTcpDriver,
    VendorTcpParams,
    seeded_source,
)

DriverPair = tuple[Driver, Driver]
DriverPairFactory = Callable[[], AbstractAsyncContextManager[DriverPair]]

#: How long a cancelled ``blocks()`` iteration may take to return.
PROMPT_CANCEL_SECONDS = 1.0


class ConformanceError(AssertionError):
    """A driver broke a rule of the driver interface."""


def _require(condition: bool, driver: Driver, rule: str) -> None:
    if not condition:
        raise ConformanceError(f"driver {type(driver).kind!r}: {rule}")


async def check_driver(factory: DriverPairFactory, *, blocks_per_end: int = 4) -> None:
    """Run every conformance check against drivers built by ``factory``.

    Raises ``ConformanceError`` at the first broken rule.
    """
    await check_lifecycle(factory)
    await check_agreement(factory, blocks_per_end=blocks_per_end)
    await check_resume_after(factory)
    await check_prompt_cancellation(factory)


async def _take(driver: Driver, n: int, *, after: int | None = None) -> list[KeyBlock]:
    got: list[KeyBlock] = []
    async for block in driver.blocks(after=after):
        got.append(block)
        if len(got) >= n:
            break
    return got


async def check_lifecycle(factory: DriverPairFactory) -> None:
    """Entering starts (health UP), leaving stops (health STOPPED or DOWN), repr hides keys."""
    async with factory() as (alice, bob):
        for end in (alice, bob):
            _require(
                end.health().state in (LinkState.STOPPED, LinkState.STARTING),
                end,
                f"health before start is {end.health().state.value}, not stopped/starting",
            )
        async with alice, bob:
            for end in (alice, bob):
                _require(
                    end.health().state is LinkState.UP,
                    end,
                    f"health after start is {end.health().state.value} "
                    f"({end.health().detail}), not up",
                )
            [block] = await _take(alice, 1)
            for text in (repr(block), str(block)):
                _require(
                    block.key.hex() not in text and repr(block.key) not in text,
                    alice,
                    "a KeyBlock's repr/str shows its key bytes",
                )
        for end in (alice, bob):
            _require(
                end.health().state in (LinkState.STOPPED, LinkState.DOWN),
                end,
                f"health after stop is {end.health().state.value}, not stopped/down",
            )


async def check_agreement(factory: DriverPairFactory, *, blocks_per_end: int = 4) -> None:
    """Both ends yield blocks of their link, ids strictly increasing, same id → same key."""
    async with factory() as (alice, bob):
        _require(
            alice.link.link_id == bob.link.link_id,
            alice,
            "the factory must build two ends of one link",
        )
        got: dict[int, list[KeyBlock]] = {}
        async with alice, bob:

            async def collect(index: int, end: Driver) -> None:
                got[index] = await _take(end, blocks_per_end)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(collect, 0, alice)
                nursery.start_soon(collect, 1, bob)
            for index, end in enumerate((alice, bob)):
                blocks = got[index]
                _require(len(blocks) == blocks_per_end, end, "blocks() ended early")
                _require(
                    all(b.link_id == end.link.link_id for b in blocks),
                    end,
                    "a block carries another link's id",
                )
                ids = [b.block_id for b in blocks]
                _require(
                    all(x < y for x, y in zip(ids, ids[1:], strict=False)),
                    end,
                    f"block ids do not strictly increase: {ids}",
                )
                _require(all(b.key for b in blocks), end, "a block has no key bytes")
                _require(
                    all(0.0 <= b.qber <= 1.0 and math.isfinite(b.produced_at) for b in blocks),
                    end,
                    "a block's qber or produced_at is out of range",
                )
                health = end.health()
                _require(
                    health.blocks_produced >= blocks_per_end and health.last_qber is not None,
                    end,
                    f"health does not count the blocks yielded ({health})",
                )
        keys_a = {b.block_id: b.key for b in got[0]}
        keys_b = {b.block_id: b.key for b in got[1]}
        common = keys_a.keys() & keys_b.keys()
        _require(
            bool(common),
            alice,
            f"the two ends yielded no common block id ({sorted(keys_a)} vs {sorted(keys_b)})",
        )
        differ = sorted(i for i in common if keys_a[i] != keys_b[i])
        _require(not differ, alice, f"the ends disagree on the keys of blocks {differ}")


async def check_resume_after(factory: DriverPairFactory) -> None:
    """``blocks(after=n)`` yields only ids above ``n``, the same blocks at both ends."""
    async with factory() as (alice, bob):
        async with alice, bob:
            first = await _take(alice, 2)
            after = first[-1].block_id + 2
            resumed: dict[int, KeyBlock] = {}

            async def resume(index: int, end: Driver) -> None:
                [resumed[index]] = await _take(end, 1, after=after)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(resume, 0, alice)
                nursery.start_soon(resume, 1, bob)
            for index, end in enumerate((alice, bob)):
                _require(
                    resumed[index].block_id > after,
                    end,
                    f"blocks(after={after}) yielded block {resumed[index].block_id}",
                )
            if resumed[0].block_id == resumed[1].block_id:
                _require(
                    resumed[0].key == resumed[1].key,
                    alice,
                    f"the ends disagree on resumed block {resumed[0].block_id}",
                )


async def check_prompt_cancellation(factory: DriverPairFactory) -> None:
    """Cancelling a ``blocks()`` iteration returns promptly; a new iteration still works."""
    async with factory() as (alice, bob):
        async with alice, bob:
            for end in (alice, bob):
                for wait in (0.0, 0.001, 0.05):
                    try:
                        with trio.fail_after(PROMPT_CANCEL_SECONDS):
                            with trio.move_on_after(wait):
                                async for _ in end.blocks():
                                    pass
                    except trio.TooSlowError:
                        raise ConformanceError(
                            f"driver {type(end).kind!r}: a cancelled blocks() iteration "
                            f"did not return within {PROMPT_CANCEL_SECONDS} s"
                        ) from None
                [block] = await _take(end, 1)
                _require(
                    block.link_id == end.link.link_id,
                    end,
                    "blocks() does not work after a cancelled iteration",
                )


# --- emulated link pairs -------------------------------------------------------------


def link_ends(link_id: str = "L1") -> tuple[LinkEnd, LinkEnd]:
    """The two ends of link ``link_id`` between nodes ``a`` and ``b``."""
    return LinkEnd(link_id, "a", "b"), LinkEnd(link_id, "b", "a")


def emulator_pair(
    *,
    link_id: str = "L1",
    seed: str = "conformance-seed-0123",
    block_bits: int = 256,
    interval: float = 0.02,
    status_interval: float = 1.0,
) -> tuple[DeviceEmulator, DeviceEmulator]:
    """Two emulators, one per end of ``link_id``, sharing ``seed``."""
    source = seeded_source(seed, link_id, block_bits=block_bits, skr=block_bits / interval)
    return (
        DeviceEmulator(
            device_id=f"{link_id}-alice",
            link_id=link_id,
            role="alice",
            source=source,
            interval=interval,
            status_interval=status_interval,
        ),
        DeviceEmulator(
            device_id=f"{link_id}-bob",
            link_id=link_id,
            role="bob",
            source=source,
            interval=interval,
            status_interval=status_interval,
        ),
    )


@contextlib.asynccontextmanager
async def emulated_tcp_pair(
    *, link_id: str = "L1", idle_timeout: float = 5.0, backoff_initial: float = 0.05
) -> AsyncIterator[DriverPair]:
    """Two ``vendor-tcp`` drivers, each talking to its own emulator on 127.0.0.1."""
    emulators = emulator_pair(link_id=link_id)
    async with trio.open_nursery() as nursery:
        drivers = []
        for end, emulator in zip(link_ends(link_id), emulators, strict=True):
            host, port = await nursery.start(emulator.run_tcp)
            params = VendorTcpParams(
                host=host,
                port=port,
                role=emulator.hello.role,
                idle_timeout=idle_timeout,
                backoff_initial=backoff_initial,
                backoff_max=1.0,
            )
            drivers.append(VendorTcpDriver(end, params))
        yield drivers[0], drivers[1]
        nursery.cancel_scope.cancel()


@contextlib.asynccontextmanager
async def emulated_serial_pair(
    *, link_id: str = "L1", idle_timeout: float = 5.0, backoff_initial: float = 0.05
) -> AsyncIterator[DriverPair]:
    """Two ``vendor-serial`` drivers, each on the pty of its own emulator."""
    emulators = emulator_pair(link_id=link_id)
    async with trio.open_nursery() as nursery:
        drivers = []
        for end, emulator in zip(link_ends(link_id), emulators, strict=True):
            path = await nursery.start(emulator.run_pty)
            params = VendorSerialParams(
                path=path,
                role=emulator.hello.role,
                idle_timeout=idle_timeout,
                backoff_initial=backoff_initial,
                backoff_max=1.0,
            )
            drivers.append(VendorSerialDriver(end, params))
        yield drivers[0], drivers[1]
        nursery.cancel_scope.cancel()
