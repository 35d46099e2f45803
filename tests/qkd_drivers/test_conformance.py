"""Every driver passes the conformance suite: the paired driver, vendor-tcp and vendor-serial."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from qkd_drivers import Bb84SimDriver, Bb84SimParams, PairedDriver, PairedParams
from qkd_drivers.testing import (
    ConformanceError,
    DriverPair,
    DriverPairFactory,
    check_driver,
    emulated_serial_pair,
    emulated_tcp_pair,
    link_ends,
)


@contextlib.asynccontextmanager
async def paired_pair() -> AsyncIterator[DriverPair]:
    params = PairedParams(seed="conformance-seed-0123", rate_bps=256 * 50, block_bits=256)
    alice, bob = link_ends()
    yield PairedDriver(alice, params), PairedDriver(bob, params)


@contextlib.asynccontextmanager
async def bb84sim_pair() -> AsyncIterator[DriverPair]:
    # The smallest blocks that still yield finite key, at a pace this machine keeps up with.
    params = Bb84SimParams(
        seed="conformance-seed-0123", distance_km=50.0, block_bits=1 << 20, pulse_rate_hz=1e9
    )
    alice, bob = link_ends()
    yield Bb84SimDriver(alice, params), Bb84SimDriver(bob, params)


FACTORIES: dict[str, DriverPairFactory] = {
    "paired": paired_pair,
    "vendor-tcp": emulated_tcp_pair,
    "vendor-serial": emulated_serial_pair,
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_driver_passes_the_conformance_suite(kind: str) -> None:
    with trio.fail_after(20):
        await check_driver(FACTORIES[kind])


@pytest.mark.soak
async def test_bb84sim_passes_the_conformance_suite() -> None:
    # Each finite-key block is seconds of post-processing: a soak, not a unit test.
    with trio.fail_after(600):
        await check_driver(bb84sim_pair)


@contextlib.asynccontextmanager
async def two_different_seeds() -> AsyncIterator[DriverPair]:
    alice, bob = link_ends()
    yield (
        PairedDriver(alice, PairedParams(seed="a" * 16, rate_bps=256 * 50, block_bits=256)),
        PairedDriver(bob, PairedParams(seed="b" * 16, rate_bps=256 * 50, block_bits=256)),
    )


async def test_the_suite_catches_ends_that_disagree_on_keys() -> None:
    with trio.fail_after(10), pytest.raises(ConformanceError, match="disagree"):
        await check_driver(two_different_seeds)
