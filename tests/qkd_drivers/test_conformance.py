"""Every driver passes the conformance suite: the paired driver, vendor-tcp and vendor-serial."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
import trio

from qkd_drivers import PairedDriver, PairedParams
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


FACTORIES: dict[str, DriverPairFactory] = {
    "paired": paired_pair,
    "vendor-tcp": emulated_tcp_pair,
    "vendor-serial": emulated_serial_pair,
}


@pytest.mark.parametrize("kind", sorted(FACTORIES))
async def test_driver_passes_the_conformance_suite(kind: str) -> None:
    with trio.fail_after(20):
        await check_driver(FACTORIES[kind])


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
