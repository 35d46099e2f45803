"""The key management agent: QKD blocks in, link key synchronisation, pools.

Theory of operation
-------------------
Each QKD link has a driver at both ends that yields the same blocks under the
same ids.  A block enters the key store as RECEIVED and becomes READY only
when both ends hold it:

* When a block arrives from our driver, we store it and announce its id to the
  peer (``KeyAnnounce``, batched).  If the peer already announced that id, we
  mark it READY and confirm at once.
* When the peer announces ids: those we hold as RECEIVED become READY and we
  confirm them (``KeyConfirm``); those already READY or used are confirmed
  again (the peer may have missed our confirm); those we discarded are answered
  with ``KeyDiscard``; unknown ids are remembered until our driver catches up
  (for a time-out at most, and the newest ``MAX_PEER_ANNOUNCED`` only).
* A confirm moves RECEIVED to READY.  A discard discards.
* A block still RECEIVED after ``sync.timeout_s`` of *live* connected time is
  discarded at our end and the peer is told.  Time while the peer is away does
  not count: a restarting peer gets the whole time-out to answer.  Nor does time
  while the peer is connected but silent (``peer_heard``: nothing received from it,
  heartbeats included, for more than ``liveness_window``): a peer whose event loop
  is starved for a while cannot confirm, and its blocks must wait for it rather
  than be discarded on a wall-clock deadline.  So a block is discarded only when the
  peer was demonstrably answering, yet did not confirm it, for the whole time-out.
* On (re)connection both ends re-announce every RECEIVED block, tell again the latest
  ids they discarded, and repeat the discards of blocks whose time-out ran out (within
  ``max_block_age``, from the store, so a crash does not forget them): a confirm that
  crossed such a discard made the block ready at the peer, and a discard lost with the
  session or in a crash would leave it ready there alone.

Allocation never collides: each block is owned by exactly one end, by a rule
both compute from the block id (the lower node id owns the even ids), and an
end allocates only from blocks it owns.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, Protocol

import msgspec
import trio

from protocol import MAX_IDS_PER_MESSAGE, KeyAnnounce, KeyConfirm, KeyDiscard
from qkd_drivers import Driver, KeyBlock

from ..keystore import KeyState, KeyStore, KeyStoreError, NewBlock
from ..log import get_logger
from ..storethread import StoreThread

log = get_logger("qkms.keys")

SendFn = Callable[[str, Any], Awaitable[bool]]

CHECKPOINT_INTERVAL_S = 60.0
DISCARDS_RESENT = 4096
"""Discarded ids per link told to the peer again at each new session (the latest)."""
MAX_CHECK_IDS = 10_000
"""Ready block ids one ``check`` covers at most (the lowest of the window)."""
MAX_PEER_ANNOUNCED = 16_384
"""Ids the peer announced that our driver has not delivered yet, remembered per link."""
MAX_REPEATED_DISCARDS = 16_384
"""Blocks discarded for want of a confirm, told to the peer again at each connection."""
_UNCONFIRMED = "unconfirmed"


def owns_block(local_node: str, peer_node: str, block_id: int) -> bool:
    """Whether this end may allocate from ``block_id`` (the other end computes the converse)."""
    parity = 0 if local_node < peer_node else 1
    return block_id % 2 == parity


class LinkStatus(msgspec.Struct, frozen=True):
    """One link as ``qkmsctl status`` and ``links`` show it: driver, QBER, pool levels."""

    link_id: str
    peer: str
    driver: str
    driver_state: str
    driver_detail: str
    qber: float | None
    ready_bits: int
    ready_keys: int
    """Ready bits in keys of the node's default ``policy.key_size``."""
    ready_blocks: int
    owned_ready_bits: int
    """Ready bits in blocks this end may allocate from."""
    unconfirmed_blocks: int
    discarded_blocks: int
    expired_blocks: int
    newest_block_id: int | None
    synchronised: bool
    """Whether a session with the peer is open (synchronisation running)."""
    e2e: bool = False
    """An end-to-end pool (relayed key), not a QKD link."""
    held: list[str] = []
    """Why the link's new blocks are kept out of its pool (``hold_link``), if they are."""
    stopped: list[str] = []
    """Why the link's driver is stopped (``stop_driver``: an operator, an alarm)."""
    bits_in: int = 0
    """Key bits stored from the driver since the node started (the link's key rate is its
    rise over time)."""


class DriverView(msgspec.Struct, frozen=True):
    """A QKD link's driver, without touching the store."""

    link_id: str
    stopped: list[str]


class LinkStatistics(msgspec.Struct, frozen=True):
    blocks_in: int
    """Blocks stored from the driver since the node started."""
    bits_in: int
    """Key bits in those blocks."""
    waiting_for_driver: int
    """Ids the peer announced that our driver has not delivered yet."""


class LinkSettings(Protocol):
    link_id: str
    peer: str


@dataclasses.dataclass
class _Link:
    link_id: str
    peer: str
    driver: Driver
    to_announce: set[int] = dataclasses.field(default_factory=set)
    refs: dict[int, str] = dataclasses.field(default_factory=dict)
    peer_has: dict[int, float] = dataclasses.field(default_factory=dict)
    connected_since: float | None = None
    blocks_in: int = 0
    bits_in: int = 0
    last_error: str = ""
    held: set[str] = dataclasses.field(default_factory=set)
    stopped: set[str] = dataclasses.field(default_factory=set)
    """Why the link's driver is stopped (``stop_driver``); it runs while this is empty."""
    reader: trio.CancelScope | None = None
    reader_done: trio.Event | None = None
    """Set when the task reading the driver has ended (a restart waits for it)."""
    # The live clock: seconds of connected time while the peer was heard from.
    live_s: float = 0.0
    ticked_at: float | None = None
    heard_at: float | None = None
    # (wall time, live clock then), oldest first; one entry per live clock value, the
    # latest wall time that had it.  Maps a live-time cut-off to a received-at cut-off.
    marks: collections.deque[tuple[float, float]] = dataclasses.field(
        default_factory=collections.deque
    )
    # Ids this end discarded and told the peer, most recent last: told again at every new
    # session, since a discard sent as a session broke may never have arrived, and the
    # peer may hold the block READY (its confirm was lost) with nothing else to settle it.
    discarded: collections.deque[int] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=DISCARDS_RESENT)
    )
    # What the sweep last learnt, so that it asks the store only when something may be due
    # (-inf: nothing known yet).  No RECEIVED block was received before ``unconfirmed_floor``,
    # and no RECEIVED or READY block was produced before ``expiry_floor``;
    # ``produced_floor`` is the oldest block added since the sweep's last look at expiry.
    unconfirmed_floor: float = -math.inf
    expiry_floor: float = -math.inf
    produced_floor: float = math.inf


class KeyManager:
    """Owns the link pools of one node.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        store: KeyStore,
        store_thread: StoreThread,
        drivers: dict[str, tuple[str, Driver]],
        send: SendFn,
        sync_timeout: float,
        announce_interval: float,
        max_block_age: float,
        key_size: int,
        clock: Callable[[], float] = time.time,
        peer_heard: Callable[[str], float | None] | None = None,
        liveness_window: float = 10.0,
        max_peer_announced: int = MAX_PEER_ANNOUNCED,
    ) -> None:
        """``peer_heard(peer)`` is when anything last arrived from ``peer`` (``clock``
        time); without it, all connected time counts as live.  Time more than
        ``liveness_window`` after the peer was last heard does not count.
        ``max_peer_announced`` bounds, per link, the ids the peer announced that our
        driver has not delivered yet (the oldest are forgotten first).
        """
        self.node_id = node_id
        self._store = store
        self._thread = store_thread
        self._send = send
        self._links = {
            link_id: _Link(link_id, peer, driver) for link_id, (peer, driver) in drivers.items()
        }
        self._sync_timeout = sync_timeout
        self._announce_interval = announce_interval
        self._max_block_age = max_block_age
        self._key_size = key_size
        self._clock = clock
        self._peer_heard = peer_heard
        self._liveness_window = liveness_window
        self._max_peer_announced = max_peer_announced
        self._wake_announcer = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._up: set[str] = set()

    # --- services ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Read every driver, announce, sweep.  Runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for link in self._links.values():
                if not link.stopped:
                    nursery.start_soon(self._read_driver, link)
            nursery.start_soon(self._announcer)
            nursery.start_soon(self._sweeper)
            task_status.started()

    async def _read_driver(self, link: _Link) -> None:
        previous = link.reader_done
        done = link.reader_done = trio.Event()
        try:
            if previous is not None:
                await previous.wait()  # the driver is closed before it is opened again
            if link.stopped:
                return
            with trio.CancelScope() as link.reader:
                await self._read_driver_until_stopped(link)
        finally:
            done.set()

    async def _read_driver_until_stopped(self, link: _Link) -> None:
        backoff = 1.0
        while True:
            try:
                after = await self._thread.call(self._store.max_block_id, link.link_id)
                async with link.driver as driver:
                    log.info("driver.started", link=link.link_id, driver=driver.kind)
                    async for block in driver.blocks(after=after):
                        await self._accept_block(link, block)
                        backoff = 1.0
            except Exception as exc:  # a failing device must not take the node down
                link.last_error = f"{type(exc).__name__}: {exc}"
                log.error(
                    "driver.failed", link=link.link_id, error=link.last_error, retry_s=backoff
                )
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 60.0)

    async def _accept_block(self, link: _Link, block: KeyBlock) -> None:
        if block.link_id != link.link_id:
            log.warning("block.wrong_link", link=link.link_id, got=block.link_id)
            return
        new = NewBlock(
            link_id=link.link_id,
            block_id=block.block_id,
            key=block.key,
            qber=block.qber,
            produced_at=block.produced_at,
            owned=owns_block(self.node_id, link.peer, block.block_id),
            ref=block.ref,
        )
        added = await self._thread.call(self._store.add_blocks, [new])
        if not added:
            log.warning("block.duplicate", link=link.link_id, block=block.block_id)
            return
        link.blocks_in += 1
        link.bits_in += len(block.key) * 8
        link.produced_floor = min(link.produced_floor, block.produced_at)
        link.expiry_floor = min(link.expiry_floor, block.produced_at)
        if link.held:
            # Stored, then discarded at once: the id is spent (a tombstone) and the peer,
            # told, discards its copy too, so the block is ready at neither end.
            link.peer_has.pop(block.block_id, None)
            reason = f"held:{min(link.held)}"[:64]
            gone = await self._thread.call(self._store.discard, link.link_id, added, reason)
            await self._send_ids(link, KeyDiscard, gone, reason="held")
            return
        if link.peer_has.pop(block.block_id, None) is not None:
            ready = await self._thread.call(self._store.mark_ready, link.link_id, added)
            await self._send_ids(link, KeyConfirm, ready)
        else:
            link.to_announce.add(block.block_id)
            if block.ref is not None:
                link.refs[block.block_id] = block.ref
            self._wake_announcer.set()

    async def _announcer(self) -> None:
        while True:
            await self._wake_announcer.wait()
            self._wake_announcer = trio.Event()
            await trio.sleep(self._announce_interval)  # batch what arrives meanwhile
            for link in list(self._links.values()):  # links may be added meanwhile
                if link.to_announce and link.connected_since is not None:
                    ids = sorted(link.to_announce)
                    link.to_announce.clear()
                    await self._announce(link, ids)

    async def _sweeper(self) -> None:
        last_checkpoint = self._clock()
        failing = False
        while True:
            await trio.sleep(min(1.0, self._sync_timeout / 4))
            try:
                await self.sweep()
                if self._clock() - last_checkpoint >= CHECKPOINT_INTERVAL_S:
                    # Erased material is gone from the WAL only once it is checkpointed.
                    await self._thread.call(self._store.checkpoint)
                    last_checkpoint = self._clock()
            except KeyStoreError as exc:  # a full or read-only disk: try again, say it once
                if not failing:
                    log.error("blocks.sweep_failed", error=str(exc)[:300])
                failing = True
            else:
                if failing:
                    log.info("blocks.sweep_resumed")
                failing = False

    async def sweep(self) -> None:
        """Discard blocks the peer never confirmed and expire blocks too old to use."""
        now = self._clock()
        for link in list(self._links.values()):  # links may be added meanwhile
            cutoff = now - self._sync_timeout
            for block_id, seen in list(link.peer_has.items()):
                if seen < cutoff:
                    del link.peer_has[block_id]
            self._tick(link, now)
            received_before = self._unconfirmed_cutoff(link)
            if received_before is not None and received_before > link.unconfirmed_floor:
                stale = await self._thread.call(
                    self._store.unconfirmed, link.link_id, older_than=received_before
                )
                if stale:
                    gone = await self._thread.call(
                        self._store.discard, link.link_id, stale, _UNCONFIRMED
                    )
                    log.warning("blocks.unconfirmed_discarded", link=link.link_id, count=len(gone))
                    link.to_announce.difference_update(gone)
                    await self._send_ids(link, KeyDiscard, gone, reason=_UNCONFIRMED)
                # A block added from now on is received after ``now``.
                oldest = await self._thread.call(self._store.oldest_unconfirmed, link.link_id)
                link.unconfirmed_floor = now if oldest is None else min(oldest, now)
            produced_before = now - self._max_block_age
            if produced_before > link.expiry_floor:
                link.produced_floor = math.inf
                expired = await self._thread.call(
                    self._store.expire, link.link_id, produced_before=produced_before
                )
                if expired:
                    log.info("blocks.expired", link=link.link_id, count=len(expired))
                    await self._send_ids(link, KeyDiscard, expired, reason="expired")
                oldest = await self._thread.call(self._store.oldest_unexpired, link.link_id)
                link.expiry_floor = min(math.inf if oldest is None else oldest, link.produced_floor)

    # --- holds ----------------------------------------------------------------------

    def hold_link(self, link_id: str, reason: str) -> None:
        """Keep ``link_id``'s new blocks out of its pool until every hold is released.

        While a link is held, each block its driver delivers is stored and discarded at
        once, and the peer is told to discard it too: it becomes ready at neither end.
        Blocks already in the pool stay.  ``reason`` (e.g. an alarm code) names the hold;
        holding twice for one reason is one hold.  Raises ``KeyError`` for an unknown link.
        """
        link = self._links[link_id]
        if reason not in link.held:
            link.held.add(reason)
            log.warning("link.held", link=link_id, reason=reason)

    def release_link(self, link_id: str, reason: str) -> None:
        """Release the hold ``reason`` on ``link_id`` (no-op if it has none).  Raises
        ``KeyError`` for an unknown link."""
        link = self._links[link_id]
        if reason in link.held:
            link.held.discard(reason)
            log.info("link.released", link=link_id, reason=reason, holds=len(link.held))

    # --- drivers --------------------------------------------------------------------

    def stop_driver(self, link_id: str, reason: str) -> None:
        """Stop ``link_id``'s driver (the device session closes) until every stop reason
        is withdrawn; ``reason`` names the stop (``operator``, an alarm code).  Blocks
        already stored stay; synchronisation of them goes on.  Raises ``KeyError`` for an
        unknown link."""
        link = self._links[link_id]
        if reason in link.stopped:
            return
        link.stopped.add(reason)
        if len(link.stopped) == 1:
            log.warning("driver.stopping", link=link_id, reason=reason)
            if link.reader is not None:
                link.reader.cancel()

    def qkd_links(self) -> list[DriverView]:
        """The QKD links (not end-to-end pools) and why each driver is stopped, if it is."""
        return [
            DriverView(link.link_id, sorted(link.stopped))
            for link in list(self._links.values())
            if not link.driver.end_to_end
        ]

    def start_driver(self, link_id: str, reason: str) -> None:
        """Withdraw the stop ``reason``; the driver starts again once none is left (no-op
        without that stop).  Raises ``KeyError`` for an unknown link."""
        link = self._links[link_id]
        if reason not in link.stopped:
            return
        link.stopped.discard(reason)
        if not link.stopped and self._nursery is not None:
            log.info("driver.starting", link=link_id, reason=reason)
            self._nursery.start_soon(self._read_driver, link)

    # --- peer events ---------------------------------------------------------------

    async def peer_up(self, peer: str) -> None:
        """The session with ``peer`` opened: re-announce everything still unconfirmed."""
        self._up.add(peer)
        for link in self._links_of(peer):
            await self._link_up(link)

    async def _link_up(self, link: _Link) -> None:
        now = self._clock()
        self._tick(link, now)
        link.connected_since = now
        # A new session: every block waits a whole time-out of live time from now.
        link.marks.clear()
        link.marks.append((now, link.live_s))
        link.to_announce.clear()
        pending = await self._thread.call(self._store.unconfirmed, link.link_id)
        link.refs.update(await self._thread.call(self._store.unconfirmed_refs, link.link_id))
        await self._announce(link, pending)
        if link.discarded:
            again = sorted(set(link.discarded))
            await self._send_ids(link, KeyDiscard, again, reason="discarded")
        # A block we discarded when its time-out ran out may have become ready at the peer
        # meanwhile (its confirm crossing our discard), and our discard may have been lost
        # with the session or a crash: tell the peer again, or it keeps that block ready
        # alone until it expires.  Blocks ready at the peer live at most max_block_age.
        gone = await self._thread.call(
            self._store.discarded_since,
            link.link_id,
            reason=_UNCONFIRMED,
            since=now - self._max_block_age,
            limit=MAX_REPEATED_DISCARDS,
        )
        await self._send_ids(link, KeyDiscard, gone, reason=_UNCONFIRMED)

    async def add_link(self, link_id: str, peer: str, driver: Driver) -> None:
        """Take on a link made while the node runs (an end-to-end pool made on demand):
        read its driver and synchronise it like the links the node started with."""
        if link_id in self._links:
            return
        assert self._nursery is not None, "run() first"
        link = self._links[link_id] = _Link(link_id, peer, driver)
        self._nursery.start_soon(self._read_driver, link)
        if peer in self._up:
            await self._link_up(link)

    async def remove_link(self, link_id: str) -> None:
        """Stop ``link_id``'s driver, wait until its device session is closed, and forget
        the link (a device removed while the node runs).  Its stored blocks stay in the
        store.  Raises ``KeyError`` for an unknown link."""
        link = self._links[link_id]
        link.stopped.add("removed")
        if link.reader is not None:
            link.reader.cancel()
        if link.reader_done is not None:
            await link.reader_done.wait()
        self._links.pop(link_id, None)
        log.info("link.removed", link=link_id)

    async def peer_down(self, peer: str, reason: str = "") -> None:
        self._up.discard(peer)
        for link in self._links_of(peer):
            self._tick(link, self._clock())
            link.connected_since = None

    # --- the live clock -------------------------------------------------------------

    def _tick(self, link: _Link, now: float) -> None:
        """Advance ``link``'s live clock to ``now``."""
        start = link.ticked_at if link.ticked_at is not None else now
        link.ticked_at = now
        if link.connected_since is not None and now > start:
            start = max(start, link.connected_since)
            if self._peer_heard is None:
                link.live_s += max(0.0, now - start)
            else:
                heard = self._peer_heard(link.peer)
                marks = {m for m in (link.heard_at, heard) if m is not None}
                link.heard_at = heard
                link.live_s += _covered(start, now, marks, self._liveness_window)
        if link.marks and link.marks[-1][1] == link.live_s:
            link.marks[-1] = (now, link.live_s)
        else:
            link.marks.append((now, link.live_s))

    def _unconfirmed_cutoff(self, link: _Link) -> float | None:
        """Blocks received before this time have waited a whole time-out of live time."""
        if link.connected_since is None or not link.marks:
            return None
        target = link.live_s - self._sync_timeout
        marks = link.marks
        if marks[0][1] > target:
            return None
        while len(marks) >= 2 and marks[1][1] <= target:
            marks.popleft()
        return marks[0][0]

    async def on_announce(self, peer: str, message: KeyAnnounce) -> None:
        link = self._link_for(peer, message.link_id)
        if link is None:
            return
        ids = sorted(set(message.block_ids))
        states, moved = await self._thread.call(_settle, self._store, link.link_id, ids)
        now = self._clock()
        for block_id in ids:
            if block_id not in states:
                link.peer_has.pop(block_id, None)  # to the end: oldest go first
                link.peer_has[block_id] = now
        _forget_oldest(link.peer_has, self._max_peer_announced)
        if message.refs and link.driver.fetches_by_reference:
            wanted = [(i, r) for i, r in zip(message.block_ids, message.refs, strict=True)]
            await link.driver.fetch([(i, r) for i, r in wanted if i not in states])
        confirm = moved + [i for i in ids if states.get(i) in _HELD_BY_US]
        for block_id in confirm:
            link.refs.pop(block_id, None)
        refuse = [i for i in ids if states.get(i) in _DROPPED]
        link.to_announce.difference_update(confirm)
        await self._send_ids(link, KeyConfirm, sorted(confirm))
        await self._send_ids(link, KeyDiscard, refuse, reason="discarded")

    async def on_confirm(self, peer: str, message: KeyConfirm) -> None:
        link = self._link_for(peer, message.link_id)
        if link is None:
            return
        ids = sorted(set(message.block_ids))
        states, _ = await self._thread.call(_settle, self._store, link.link_id, ids)
        link.to_announce.difference_update(ids)
        for block_id in ids:
            link.refs.pop(block_id, None)
        refuse = [i for i in ids if states.get(i) in _DROPPED]
        await self._send_ids(link, KeyDiscard, refuse, reason="discarded")

    async def on_discard(self, peer: str, message: KeyDiscard) -> None:
        link = self._link_for(peer, message.link_id)
        if link is None:
            return
        ids = sorted(set(message.block_ids))
        for block_id in ids:
            link.peer_has.pop(block_id, None)
            link.refs.pop(block_id, None)
        link.to_announce.difference_update(ids)
        gone = await self._thread.call(
            self._store.discard, link.link_id, ids, f"peer:{message.reason}"[:64]
        )
        if gone:
            log.warning("blocks.discarded_by_peer", link=link.link_id, count=len(gone))

    # --- monitoring ----------------------------------------------------------------

    async def links_status(self) -> list[LinkStatus]:
        out = []
        links = list(self._links.values())  # links may be added meanwhile
        levels = await self._thread.call(self._store.pools, [link.link_id for link in links])
        for link in links:
            pool, newest = levels[link.link_id]
            health = link.driver.health()
            out.append(
                LinkStatus(
                    link_id=link.link_id,
                    peer=link.peer,
                    driver=link.driver.kind,
                    driver_state=str(health.state),
                    driver_detail=health.detail or link.last_error,
                    qber=health.last_qber,
                    ready_bits=pool.ready_bits,
                    ready_keys=pool.ready_bits // self._key_size,
                    ready_blocks=pool.ready_blocks,
                    owned_ready_bits=pool.owned_ready_bits,
                    unconfirmed_blocks=pool.received_blocks,
                    discarded_blocks=pool.discarded_blocks,
                    expired_blocks=pool.expired_blocks,
                    newest_block_id=newest,
                    synchronised=link.connected_since is not None,
                    e2e=link.driver.end_to_end,
                    held=sorted(link.held),
                    stopped=sorted(link.stopped),
                    bits_in=link.bits_in,
                )
            )
        return out

    async def check(self, link_id: str, first: int, last: int) -> dict[str, Any]:
        """Which blocks in ``[first, last]`` are READY here, and their key check value.

        The key check value (KCV) is the usual key-management fingerprint: 24 bits of a
        keyed BLAKE2b over the READY blocks' bytes in id order.  Two ends that print the
        same ids and KCV hold the same key; 24 bits reveal nothing usable about it.
        """
        if link_id not in self._links:
            raise KeyError(link_id)
        return await self._thread.call(_check_blocks, self._store, link_id, first, last)

    def bits_in_by_peer(self) -> dict[str, int]:
        """Key bits stored into the pools since the node started, summed by peer (read
        from memory, no store call)."""
        out: dict[str, int] = {}
        for link in self._links.values():
            out[link.peer] = out.get(link.peer, 0) + link.bits_in
        return out

    def statistics(self) -> dict[str, LinkStatistics]:
        return {
            link.link_id: LinkStatistics(
                blocks_in=link.blocks_in,
                bits_in=link.bits_in,
                waiting_for_driver=len(link.peer_has),
            )
            for link in self._links.values()
        }

    # --- helpers -------------------------------------------------------------------

    def _links_of(self, peer: str) -> Iterable[_Link]:
        return [link for link in self._links.values() if link.peer == peer]

    def _link_for(self, peer: str, link_id: str) -> _Link | None:
        link = self._links.get(link_id)
        if link is None or link.peer != peer:
            log.warning("peer.unknown_link", peer=peer, link=link_id)
            return None
        return link

    async def _announce(self, link: _Link, ids: Sequence[int]) -> None:
        """Announce ``ids``, with their device references when the driver gave any."""
        if not any(i in link.refs for i in ids):
            await self._send_ids(link, KeyAnnounce, ids)
            return
        known = [i for i in ids if i in link.refs]
        await self._send_ids(link, KeyAnnounce, [i for i in ids if i not in link.refs])
        for start in range(0, len(known), MAX_IDS_PER_MESSAGE):
            chunk = known[start : start + MAX_IDS_PER_MESSAGE]
            refs = [link.refs[i] for i in chunk]
            await self._send(
                link.peer, KeyAnnounce(link_id=link.link_id, block_ids=chunk, refs=refs)
            )

    async def _send_ids(
        self, link: _Link, kind: type[Any], ids: Sequence[int], **extra: str
    ) -> None:
        if kind is KeyDiscard:
            link.discarded.extend(ids)
        for start in range(0, len(ids), MAX_IDS_PER_MESSAGE):
            chunk = list(ids[start : start + MAX_IDS_PER_MESSAGE])
            await self._send(link.peer, kind(link_id=link.link_id, block_ids=chunk, **extra))


def _forget_oldest(peer_has: dict[int, float], limit: int) -> None:
    """Keep the ``limit`` newest announced ids.  A peer may announce ids our driver never
    delivers (a lost block, or a lie): remembered for a whole time-out each, they would
    pile up without bound.  Forgetting one costs no key: when our driver delivers the
    block we announce it instead, and the peer confirms."""
    excess = len(peer_has) - limit
    if excess > 0:
        for block_id in list(itertools.islice(peer_has, excess)):
            del peer_has[block_id]
        log.debug("peer.announced_forgotten", count=excess)


def _covered(start: float, end: float, marks: set[float], window: float) -> float:
    """How much of ``[start, end]`` lies within ``window`` after one of ``marks``."""
    spans = sorted((max(start, m), min(end, m + window)) for m in marks)
    total, reach = 0.0, start
    for lo, hi in spans:
        lo = max(lo, reach)
        if hi > lo:
            total += hi - lo
            reach = hi
    return total


def _settle(store: KeyStore, link_id: str, ids: list[int]) -> tuple[dict[int, KeyState], list[int]]:
    """The states of ``ids`` here, and which of them moved RECEIVED -> READY now.

    Both ends hold these blocks: those we had only received become ready.  One store call
    (one transaction, one hand-off to the store thread) for the lookup and the move.
    """
    states = store.states(link_id, ids)
    received = [i for i in ids if states.get(i) is KeyState.RECEIVED]
    return states, store.mark_ready(link_id, received) if received else []


def _check_blocks(store: KeyStore, link_id: str, first: int, last: int) -> dict[str, Any]:
    ready = store.ready_ids(link_id, first, last, limit=MAX_CHECK_IDS)
    kcv = hashlib.blake2b(digest_size=3, key=b"qkms-key-check-value")
    for block_id in ready:
        kcv.update(store.read_block(link_id, block_id))
    return {"link_id": link_id, "ready_ids": ready, "kcv": kcv.hexdigest()}


_HELD_BY_US = frozenset({KeyState.READY, KeyState.RESERVED, KeyState.DELIVERED, KeyState.ERASED})
_DROPPED = frozenset({KeyState.DISCARDED, KeyState.EXPIRED})
