"""The deterministic paired driver: a stand-in QKD link for tests and the lab.

Both ends derive identical blocks from a shared seed, so a link works with no
physics at all.  Block ``i`` of link ``L`` is SHAKE-256(seed ‖ L ‖ i).  Block
ids follow the wall clock (``i = floor(t / interval)``), so the two ends, like
two real devices, produce the same block at about the same time, and a node
that is down misses the blocks produced meanwhile.

This driver is not QKD: anyone holding the seed holds every key.  It exists so
that the key management layer can be exercised end to end; the physics engine
is ``bb84sim``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, ClassVar

import msgspec
import trio

from ._base import Driver, DriverHealth, KeyBlock, LinkEnd, LinkState


class PairedParams(msgspec.Struct, forbid_unknown_fields=True):
    seed: Annotated[str, msgspec.Meta(min_length=16, max_length=256)]
    rate_bps: Annotated[float, msgspec.Meta(gt=0, le=1e9)] = 8192.0
    block_bits: Annotated[int, msgspec.Meta(ge=64, le=1 << 20, multiple_of=64)] = 8192
    qber: Annotated[float, msgspec.Meta(ge=0, le=0.5)] = 0.02


def paired_block(seed: str, link_id: str, block_id: int, block_bits: int) -> bytes:
    """The key bytes of block ``block_id``: the same at both ends."""
    material = hashlib.shake_256(f"qkms-paired\0{seed}\0{link_id}\0{block_id}".encode())
    return material.digest(block_bits // 8)


async def clock_paced_ids(
    clock: Callable[[], float], interval: float, *, after: int | None
) -> AsyncIterator[int]:
    """Block ids that follow the clock: id ``i`` is due at ``(i + 1) * interval``.

    Both ends of a simulated link compute the same ids at about the same time, as two real
    devices would.  Starts at the current slot, or after ``after``.  After a stall it skips
    what the "device" produced meanwhile, as a real pair would.
    """
    next_id = int(clock() / interval)
    if after is not None:
        next_id = max(next_id, after + 1)
    while True:
        due = (next_id + 1) * interval
        await trio.sleep(max(0.0, due - clock()))
        next_id = max(next_id, int(clock() / interval) - 1)
        yield next_id
        next_id += 1


class PairedDriver(Driver):
    kind: ClassVar[str] = "paired"
    Params: ClassVar[type[msgspec.Struct]] = PairedParams
    params: PairedParams

    def __init__(
        self, link: LinkEnd, params: PairedParams, *, clock: Callable[[], float] = time.time
    ) -> None:
        super().__init__(link, params)
        self._clock = clock
        self._health = DriverHealth(LinkState.STOPPED)

    @property
    def interval(self) -> float:
        return self.params.block_bits / self.params.rate_bps

    async def start(self) -> None:
        self._health = DriverHealth(LinkState.UP)

    async def stop(self) -> None:
        self._health = dataclasses.replace(self._health, state=LinkState.STOPPED)

    async def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        async for next_id in clock_paced_ids(self._clock, self.interval, after=after):
            key = paired_block(self.params.seed, self.link.link_id, next_id, self.params.block_bits)
            now = self._clock()
            block = KeyBlock(
                link_id=self.link.link_id,
                block_id=next_id,
                key=key,
                qber=self.params.qber,
                produced_at=now,
                secret_key_rate=self.params.rate_bps,
            )
            self._health = self._health.after_block(block, now)
            yield block

    def health(self) -> DriverHealth:
        return self._health
