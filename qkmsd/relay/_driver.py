"""The key source of an end-to-end pool: relayed keys, handed to the key manager.

An end-to-end pool between two distant nodes is a link like a QKD link, only its blocks
come from relays, not from a device.  Each end's relay agent hands a relayed key to this
driver once it holds it (the destination when the last hop arrives, the source once the
destination confirmed); the key manager stores it as RECEIVED and the link key
synchronisation makes it READY only when both ends hold it, exactly as for a QKD link.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import ClassVar

import msgspec
import trio

from qkd_drivers import Driver, DriverHealth, KeyBlock, LinkEnd, LinkState


class _NoParams(msgspec.Struct, frozen=True):
    pass


class RelayedKeys(Driver):
    """The driver of one end-to-end pool's end.  ``deliver`` a block, ``blocks`` yields it."""

    kind: ClassVar[str] = "relay"
    Params: ClassVar[type[msgspec.Struct]] = _NoParams
    end_to_end: ClassVar[bool] = True

    def __init__(self, link: LinkEnd) -> None:
        super().__init__(link, _NoParams())
        self._send, self._receive = trio.open_memory_channel[KeyBlock](256)
        self._health = DriverHealth(LinkState.UP, detail="relayed")

    async def deliver(self, block: KeyBlock) -> None:
        """Hand over one relayed key; waits while the key manager is behind."""
        await self._send.send(block)
        self._health = self._health.after_block(block, time.time(), detail="relayed")

    async def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        while True:
            yield await self._receive.receive()

    def health(self) -> DriverHealth:
        return self._health
