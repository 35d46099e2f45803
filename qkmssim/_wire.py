"""What joins two simulated nodes: a byte stream pair that a link fault can cut or silence,
and the QKD link's key source on the virtual clock.

A ``Wire`` is the fibre between two nodes (or the IP path between distant ones).  Its
``state`` is ``up``, ``down`` (cut, and noticed: both ends' streams close, as a TCP reset
would) or ``silent`` (cut, unnoticed: bytes sent are lost and nothing closes, as when a
fibre is cut under a TCP session; only heartbeats can tell).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from typing import ClassVar

import trio

from qkd_drivers import Driver, DriverHealth, KeyBlock, LinkEnd, LinkState, PairedParams
from qkd_drivers import paired_block as _paired_block
from qkd_drivers._paired import clock_paced_ids

UP, DOWN, SILENT = "up", "down", "silent"


class Wire:
    """One link's state, and the streams that cross it."""

    def __init__(self) -> None:
        self.state = UP
        self._changed = trio.Event()
        self._ends: set[PipeEnd] = set()

    def set(self, state: str) -> None:
        self.state = state
        if state == DOWN:
            for end in list(self._ends):
                end.sever()
        self._changed.set()
        self._changed = trio.Event()

    async def wait_up(self) -> None:
        while self.state != UP:
            await self._changed.wait()

    def pair(self) -> tuple[PipeEnd, PipeEnd]:
        """Two connected stream ends over this wire."""
        a, b = PipeEnd(self), PipeEnd(self)
        a.other, b.other = b, a
        self._ends.update((a, b))
        return a, b


class PipeEnd(trio.abc.Stream):
    """One end of a stream over a ``Wire``: what is sent arrives at ``other`` while the
    wire is up, is lost while it is silent; a cut wire closes both ends.

    A reader waits parked on trio's low-level primitives (no ``Event`` per arrival: the
    simulator moves millions of frames).  ``send_all`` is a checkpoint only if cancelled
    (one scheduler turn per frame fewer)."""

    other: PipeEnd

    def __init__(self, wire: Wire) -> None:
        self._wire = wire
        self._buffer = bytearray()
        self._reader: trio.lowlevel.Task | None = None
        self._eof = False  # the other end closed (and we heard it)
        self._closed = False
        self._severed = False

    def _wake(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            trio.lowlevel.reschedule(reader)

    def sever(self) -> None:
        self._severed = True
        self._wake()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        # Cancellation is checked, but the task goes on without a turn of the scheduler
        # (a session's heartbeats alone make hundreds of thousands of sends a run): a
        # sender yields at its next wait, as every loop of the daemon's that sends has.
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._closed:
            raise trio.ClosedResourceError("closed")
        if self._severed or self.other._closed:
            raise trio.BrokenResourceError("the link is cut")
        if self._wire.state != UP:
            return  # lost on a silent link
        self.other._buffer += data
        self.other._wake()

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self._closed:
            raise trio.ClosedResourceError("closed")
        if self._reader is not None:
            raise trio.BusyResourceError("another task is reading")
        waited = False
        while not self._buffer and not self._eof and not self._severed:
            self._reader = trio.lowlevel.current_task()

            def abort(_: object) -> trio.lowlevel.Abort:
                self._reader = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
            waited = True
            if self._closed:
                raise trio.ClosedResourceError("closed")
        if self._severed and not self._buffer:
            raise trio.BrokenResourceError("the link is cut")
        if not waited:  # a checkpoint either way, not two
            await trio.lowlevel.checkpoint()
        n = len(self._buffer) if max_bytes is None else min(max_bytes, len(self._buffer))
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._wire._ends.discard(self)
            self._wake()
            if self._wire.state == UP:  # the close is news the other end gets
                self.other._eof = True
                self.other._wake()
        await trio.lowlevel.checkpoint()


@dataclasses.dataclass
class LinkCounter:
    """Key a simulated QKD link produced while both its nodes were up (bits)."""

    produced_bits: int = 0


class SimLinkDriver(Driver):
    """The paired driver on the virtual clock, silent while its wire is not up.

    Both ends derive block ``i`` from the link's seed (``paired_block``) when the virtual
    clock reaches slot ``i``; no block is made while the link is cut or silent (the fibre
    carries the quantum channel too).  ``count`` is called for each block this end makes;
    ``wall`` is the nodes' wall clock (a block's ``produced_at``).
    """

    kind: ClassVar[str] = "sim"
    Params: ClassVar[type[PairedParams]] = PairedParams
    params: PairedParams

    def __init__(
        self,
        link: LinkEnd,
        params: PairedParams,
        wire: Wire,
        count: Callable[[int], None],
        wall: Callable[[], float],
    ) -> None:
        super().__init__(link, params)
        self._wall = wall
        self._wire = wire
        self._count = count
        self._health = DriverHealth(LinkState.STOPPED)

    async def start(self) -> None:
        self._health = DriverHealth(LinkState.UP)

    async def stop(self) -> None:
        self._health = dataclasses.replace(self._health, state=LinkState.STOPPED)

    async def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        interval = self.params.block_bits / self.params.rate_bps
        async for next_id in clock_paced_ids(trio.current_time, interval, after=after):
            if self._wire.state != UP:
                continue
            key = _paired_block(
                self.params.seed, self.link.link_id, next_id, self.params.block_bits
            )
            now = self._wall()
            block = KeyBlock(
                self.link.link_id, next_id, key, self.params.qber, now, self.params.rate_bps
            )
            self._health = self._health.after_block(block, now)
            self._count(self.params.block_bits)
            yield block

    def health(self) -> DriverHealth:
        return self._health
