"""The key relay agent: keys between nodes with no QKD link, one-time padded hop by hop.

Theory of operation
-------------------
To add a key to the end-to-end pool it shares with distant node D, source S draws a fresh
random key K from the OS CSPRNG, ``block_bits`` long plus a 32-byte confirmation key.  For
each hop X -> Y of the path, X allocates from the blocks of link X~Y it owns (the pool
primitive) a pad as long as K and a 32-byte one-time MAC key, and sends Y ``K xor pad``
with a Poly1305 tag over the whole hop message under the MAC key (Wegman-Carter: the pad
makes the hop information-theoretically secret, the one-time MAC information-theoretically
authentic).  Y consumes exactly the named bytes of its copy of X~Y (refusing any overlap
with bytes used before), checks the tag, recovers K, and either keeps it (Y = D) or
forwards it the same way on its own outgoing link.  Link key spent on a hop is spent for
good, whatever happens to the relay afterwards; when X gets no success answer, Y may or
may not have consumed it, so X has Y burn the same bytes (``supply.burn``, now or when Y
is back; Y skips bytes it used), and no block of X~Y stays READY at Y's end only.

D hands K (without the confirmation key) to the driver of the end-to-end pool and answers
with a Poly1305 tag over the relay id under the confirmation key: only a node holding
exactly K can make it, so S cannot be led to keep a K that D lacks.  The answer travels
back along the path; S checks it and hands K to its own end's driver.  Both ends' key
managers store K as RECEIVED, and link key synchronisation over the direct S-D session
makes it READY only when both hold it, discarding it at both ends otherwise: a relayed
key is READY at both ends or at neither.  The confirmation key is never stored.

Each end of a pool relays for itself: a hop X -> Y pads with blocks of X~Y that X owns
(half of the link, by the ownership rule), so each end relays toward the other with its
own halves of the links, and a relayed block's id has the parity that makes it the
relaying end's to allocate.

Failures steer the routes (``RoutingTable``): a neighbour whose session closed
(``peer_down``, from the peer manager; a silent peer is declared down within
``[sync] silence_s``) takes its link out of every path until ``peer_up``; a path on which
a relay found a node out of reach is held, tried last and kept out of splits for a while.
A split relay that loses a share so is tried again at once without that path: a
``"disjoint"`` pool then sends the key whole over the side that still works, so its SAEs
keep getting keys.

Each end keeps its own ready share of the pool between ``low_bits`` and ``high_bits`` with
up to ``in_flight`` relays at once; a relay that fails on a path is retried on the next
route.  Pools compete for the key of the links they start on: a pool's priority
(``priority_of`` its peer, from the active key profiles) orders them.  While a pool of
higher priority whose paths start on one of the same links is below its low watermark, a
pool of lower priority starts no relay, in the background or for a request: when link
key is short, the higher-priority pool gets it first.  Pools of equal priority (0.0 for
all without profiles) do not hold each other back.  A pool whose relay found this node's first link
short (nothing spent) does not pause: it relays again as that link's key allows.

Block ids are microseconds since the epoch, above every id the pool holds, of the
relaying end's parity: an id is never reused for another key, also after a restart, and
the two ends never make the same one.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from collections.abc import Awaitable, Callable, Mapping

import msgspec
import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.poly1305 import Poly1305

from protocol import (
    MAX_RELAY_SHARES,
    RELAY_CONFIRM_KEY_BYTES,
    ErrorCode,
    PeerReply,
    RelayHop,
    RelayResult,
    SegmentRef,
    relay_confirm_data,
    relay_hop_auth_data,
)
from qkd_drivers import KeyBlock

from ..config import RelayPoolConfig, RelaySection
from ..errors import PeerUnavailable, QkmsError
from ..keystore import Allocation, InsufficientKey, KeyStore, KeyStoreError, Segment
from ..log import get_logger
from ..storethread import StoreThread
from ..tokenbucket import BUDGET_BURST_S, TokenBucket
from ._driver import RelayedKeys
from ._routes import Route, RoutingTable

log = get_logger("qkms.relay")

RequestFn = Callable[[str, RelayHop], Awaitable[PeerReply]]
BurnFn = Callable[[str, list[Segment]], None]
MAC_KEY_BYTES = 32
RECENT_RELAYS = 256
"""Relays kept in memory for ``qkmsctl relays``."""
POLL_S = 0.5
"""How often a full pool's level is looked at again."""
RETRY_MAX_S = 10.0
SHORT_RETRY_S = 0.25
"""How often a pool whose relay found this node's first link short looks at its key."""
BUDGET_MIN_WAIT_S = 0.01
"""A pool waiting for its budget looks again no sooner than this."""
HELD_S = 0.1
"""How often a pool held back by a higher-priority one looks again."""
JOURNAL_S = 0.2
"""How often changed relay records are written to the key store's journal."""


class RelayRecord(msgspec.Struct):
    """One relay as this node saw it (``qkmsctl relays``)."""

    relay_id: str
    e2e_link_id: str
    path: list[str]
    role: str
    """``source``, ``intermediate`` or ``destination``."""
    state: str
    """``started``, ``forwarded``, ``received``, ``confirmed``, ``failed``, or ``discarded``
    (under way when the node stopped)."""
    bits: int
    started_at: float
    ended_at: float | None = None
    error: str = ""


class RelayStatistics(msgspec.Struct, frozen=True):
    relays_confirmed: int
    """Relays this node started that the destination confirmed."""
    relays_failed: int
    """Relays this node started that failed on every route tried."""
    hops_forwarded: int
    hops_received: int
    hops_refused: int
    bits_relayed: int
    """End-to-end key bits this node started and had confirmed."""
    link_bits_spent: int
    """Link key this node spent on hops it sent: pads and MAC keys."""


class SplitPaths(msgspec.Struct, frozen=True):
    """A multi-path pool's node-disjoint paths to its far end, as the node would use them."""

    destination: str
    paths: list[list[str]]
    source: str
    """``controller`` (its pushed set) or ``computed`` (this node's own graph)."""


class RelayPoolStatistics(msgspec.Struct, frozen=True):
    """One end-to-end pool's relays since the node started (``qkmsctl perf relay``)."""

    relays_confirmed: int = 0
    """Relays this node started into the pool that the destination confirmed."""
    relays_failed: int = 0
    bits_relayed: int = 0
    latency_s_total: float = 0.0
    """Start-to-confirm time summed over the confirmed relays."""
    link_bits_spent: int = 0
    """Link key this node spent on the pool's hops (as source or intermediate)."""


class RelayFailed(QkmsError):
    """A relay did not complete; ``code`` says why (a wire error code).

    ``here_short``: this node's own link had too little key for the hop, so nothing was
    spent."""

    def __init__(self, code: str, message: str, *, here_short: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.here_short = here_short


@dataclasses.dataclass
class _Pool:
    config: RelayPoolConfig
    driver: RelayedKeys
    parity: int
    """The parity of the block ids this end makes: the ids it owns (lower node id: even)."""
    seeded: bool = False
    in_flight: int = 0
    next_id: int = 0
    retry_at: float = float("-inf")
    retry_s: float = 1.0
    turn: int = 0
    short: bool = False
    """Below its low watermark at the last look (ready bits, relays under way aside)."""
    last_code: str = ""
    """Why its last background relay failed ("" if it did not)."""
    link_short: bool = False
    """A relay found this node's first link short, and it has not had key for
    ``in_flight`` relays since: relay only as the link's key allows."""
    budget: TokenBucket | None = None
    """The controller's budget for this pool's relays (bits/s of relayed key, a bucket
    ``BUDGET_BURST_S`` deep); None: no budget, relay as the watermarks ask."""


@dataclasses.dataclass
class _Counts:
    relays_confirmed: int = 0
    relays_failed: int = 0
    hops_forwarded: int = 0
    hops_received: int = 0
    hops_refused: int = 0
    bits_relayed: int = 0
    link_bits_spent: int = 0


class RelayAgent:
    """Relays keys into this node's end-to-end pools.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        store: KeyStore,
        store_thread: StoreThread,
        request: RequestFn,
        link_to: Mapping[str, str],
        pools: Mapping[str, RelayPoolConfig],
        drivers: Mapping[str, RelayedKeys],
        routes: RoutingTable,
        settings: RelaySection,
        is_up: Callable[[str], bool] = lambda peer: True,
        make_pool: Callable[[str], Awaitable[str | None]] | None = None,
        burn: BurnFn | None = None,
        settled: BurnFn | None = None,
        clock: Callable[[], float] = time.time,
        priority_of: Callable[[str], float] = lambda peer: 0.0,
    ) -> None:
        """``burn(neighbour, segments)`` has the neighbour consume link key this node spent
        on a hop it may never have received (see ``_forward``).  With ``settled`` too, a
        hop's link key is noted in the store as in flight when it is allocated (told as
        burnt after a restart, see ``KeyStore.kept_burns``) and ``settled(neighbour,
        segments)`` is called once the neighbour answered that it consumed it.
        ``priority_of(peer)``: the priority of the pool with ``peer`` when pools compete
        for link key (higher first); read at each relay decision."""
        self.node_id = node_id
        self._burn = burn
        self._settled = settled
        self._priority_of = priority_of
        self._store = store
        self._thread = store_thread
        self._request = request
        self._link_to = dict(link_to)
        self._pools = {
            link_id: _Pool(pool, drivers[link_id], parity=0 if node_id < pool.peer else 1)
            for link_id, pool in pools.items()
        }
        self._by_peer = {p.config.peer: p for p in self._pools.values()}
        self._routes = routes
        self._settings = settings
        self._is_up = is_up
        self._make_pool = make_pool
        self._nursery: trio.Nursery | None = None
        self._clock = clock
        self._recent: collections.deque[RelayRecord] = collections.deque(maxlen=RECENT_RELAYS)
        self._dirty: dict[str, RelayRecord] = {}
        self._dirtied = trio.Event()
        self._counts = _Counts()
        self._spent: dict[str, int] = {}
        self._per_pool: dict[str, dict[str, float]] = {}
        self._seen: dict[str, collections.OrderedDict[int, None]] = {}
        self._shares: dict[tuple[str, int], tuple[dict[int, bytes], float]] = {}
        self._hops_under_way = 0
        self._budgeted = False
        """A controller's budgets are in force (a set came, even an empty one): the link
        reserve is not kept, the allocation shares each link among all who draw on it."""

    # --- services ------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep this end's share of every pool between its watermarks.  Until cancelled.

        First settles the journal: relays under way when the node last stopped are
        ``discarded`` (link key synchronisation settles their keys, if any end stored one).
        """
        abandoned = await self._thread.call(
            self._store.abandon_open_relays, "interrupted: the node stopped"
        )
        if abandoned:
            log.warning("relay.abandoned_at_start", count=abandoned)
        for row in reversed(await self._thread.call(self._store.recent_relays, RECENT_RELAYS)):
            self._recent.appendleft(msgspec.convert(row, RelayRecord))
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._journal_writer)
            for pool in self._pools.values():
                nursery.start_soon(self._keep_filled, pool)
            task_status.started()

    async def peer_up(self, peer: str) -> None:
        """The session with ``peer`` opened: paths over our link with it are usable again."""
        if self._routes.link_up(self.node_id, peer):
            log.info("relay.link_up", peer=peer)

    async def peer_down(self, peer: str, reason: str = "") -> None:
        """The session with ``peer`` closed: no new relay takes our link with it."""
        if self._routes.link_down(self.node_id, peer):
            log.info("relay.link_down", peer=peer, reason=reason)

    def route_down(self, link_id: str, reason: str) -> None:
        """Route around QKD link ``link_id`` (``A~B``) for ``reason`` (an alarm code whose
        action is ``route-down``) until ``route_up``.  Raises ``KeyError`` if the link is
        not one of this node's."""
        a, b = self._link_ends(link_id)
        if self._routes.link_down(a, b, reason):
            log.info("relay.link_down", link=link_id, reason=reason)

    def route_up(self, link_id: str, reason: str) -> None:
        a, b = self._link_ends(link_id)
        if self._routes.link_up(a, b, reason):
            log.info("relay.link_up", link=link_id, reason=reason)

    def add_link(self, peer: str, link_id: str) -> None:
        """A QKD link with ``peer`` registered while the node runs: relays take it from now
        on (paths start over it, hops from ``peer`` on ``link_id`` are taken).  Without a
        session with ``peer`` the link is marked down until ``peer_up``."""
        self._link_to[peer] = link_id
        self._routes.add_neighbour(peer)
        if not self._is_up(peer):
            self._routes.link_down(self.node_id, peer)
        log.info("relay.link_added", peer=peer, link=link_id)

    def remove_link(self, peer: str, link_id: str) -> None:
        """QKD link ``link_id`` with ``peer`` removed while the node runs: no relay takes it
        any more.  Nothing if it is not the link this node uses with ``peer``."""
        if self._link_to.get(peer) != link_id:
            return
        del self._link_to[peer]
        self._routes.remove_neighbour(peer)
        log.info("relay.link_removed", peer=peer, link=link_id)

    def _link_ends(self, link_id: str) -> tuple[str, str]:
        a, sep, b = link_id.partition("~")
        if not sep or self.node_id not in (a, b):
            raise KeyError(link_id)
        return a, b

    def add_pool(self, config: RelayPoolConfig, driver: RelayedKeys) -> None:
        """Keep a pool made while the node runs (for SAE pairs that asked for keys)."""
        if config.link_id in self._pools:
            return
        pool = _Pool(config, driver, parity=0 if self.node_id < config.peer else 1)
        self._pools[config.link_id] = pool
        self._by_peer[config.peer] = pool
        if self._nursery is not None:
            self._nursery.start_soon(self._keep_filled, pool)

    async def _journal_writer(self) -> None:
        """Write changed relay records to the journal, a batch ``JOURNAL_S`` after the
        first change (asleep while nothing changes)."""
        while True:
            await self._dirtied.wait()
            await trio.sleep(JOURNAL_S)
            self._dirtied = trio.Event()
            if self._dirty:
                batch, self._dirty = list(self._dirty.values()), {}
                rows = [msgspec.structs.asdict(r) for r in batch]
                try:
                    await self._thread.call(self._store.journal_relays, rows)
                except KeyStoreError as exc:
                    log.error("relay.journal_failed", error=str(exc)[:200])

    def _note(self, record: RelayRecord) -> None:
        self._dirty[record.relay_id] = record
        self._dirtied.set()

    async def _keep_filled(self, pool: _Pool) -> None:
        s = self._settings
        slots = trio.Semaphore(s.in_flight)
        filling = False
        async with trio.open_nursery() as nursery:
            while True:
                low, high = pool.config.low_bits, pool.config.high_bits
                ready = await self._pool_bits(pool)
                pool.short = ready < low and high > 0
                level = ready + pool.in_flight * s.block_bits
                if level >= (high if filling else low) or high == 0:
                    filling = False
                    await trio.sleep(POLL_S)
                    continue
                filling = True
                if self._held_back(pool):
                    await trio.sleep(HELD_S)
                    continue
                if pool.link_short and not await self._link_back(pool, pool.in_flight):
                    await trio.sleep(SHORT_RETRY_S)
                    continue
                wait = pool.retry_at - self._clock()
                if wait > 0:
                    await trio.sleep(wait)
                    continue
                wait = self._budget_wait(pool, s.block_bits)
                if wait > 0:
                    await trio.sleep(wait)
                    continue
                await slots.acquire()
                pool.in_flight += 1
                nursery.start_soon(self._background_relay, pool, slots)

    def _budget_wait(self, pool: _Pool, bits: int) -> float:
        """Seconds until the pool's budget allows a relay of ``bits`` (0: now, and the bits
        are taken).  A token bucket at the budget's rate, ``BUDGET_BURST_S`` deep."""
        bucket = pool.budget
        if bucket is None:
            return 0.0
        wait = bucket.wait(bits, trio.current_time())  # a rate: trio's monotonic clock
        if wait == 0.0:
            bucket.take(bits)
            return 0.0
        return min(POLL_S, max(BUDGET_MIN_WAIT_S, wait))

    def set_budgets(self, budgets: Mapping[str, float]) -> None:
        """The controller's per-destination budgets for relays (bits/s), background relays
        and those an SAE waits for (``top_up``) alike; pools whose destination is not named
        keep relaying as their watermarks ask.  From the first set on, a hop forwarded for
        another node's relay keeps no link reserve (``link_reserve``): the controller's
        allocation, which counts the keys cut for QKD neighbours too, shares each link, and
        a reserve there would only make relays a source's budget admitted fail on their
        way, after the key of the hops before was spent."""
        self._budgeted = True
        now = trio.current_time()  # virtual in a simulation
        for pool in self._pools.values():
            budget = budgets.get(pool.config.peer)
            bucket = pool.budget
            if budget == (bucket.rate if bucket is not None else None):
                continue
            log.debug("relay.budget", pool=pool.config.link_id, bits_per_s=budget)
            if budget is None:
                pool.budget = None
            elif bucket is None:  # a new budget starts empty: relays earn their key first
                pool.budget = TokenBucket(
                    budget,
                    now,
                    full=False,
                    burst_s=BUDGET_BURST_S,
                    draw=self._settings.block_bits,
                )
            else:  # a new rate from now on: the tokens earned so far are kept
                bucket.set_rate(budget, now)

    def _refund(self, pool: _Pool) -> None:
        """A relay that spent no link key (this node's first link was short) gives its
        budget back: the pool's share is spent on relays, not on attempts."""
        if pool.budget is not None:
            pool.budget.give(self._settings.block_bits)

    def link_reserve(self, *, first_hop: bool = True) -> int:
        """Bits a relay leaves on a link it pads from: ``link_reserve_bits``; under the
        controller's budgets only on the relay's first hop, at its source (a hop forwarded
        for another node's relay, admitted by that node's budget, takes from it)."""
        if self._budgeted and not first_hop:
            return 0
        return self._settings.link_reserve_bits

    async def _background_relay(self, pool: _Pool, slots: trio.Semaphore) -> None:
        try:
            await self.relay(pool.config.link_id)
            pool.retry_s, pool.last_code = 1.0, ""
        except Exception as exc:  # a background relay never takes the node down
            pool.last_code = exc.code if isinstance(exc, RelayFailed) else ErrorCode.INTERNAL
            if not isinstance(exc, RelayFailed):
                log.error("relay.background_failed", pool=pool.config.link_id, exc_info=True)
            if isinstance(exc, RelayFailed) and exc.here_short:
                # Our first link is short and nothing was spent: no pause, the pool waits
                # for key on the link instead (a pool that paused long would let key pile
                # up while pools of lower priority are held back).
                pool.link_short = True
                self._refund(pool)
            # Relays that fail together (a link out of key, a node down) count as one
            # failure: the pause doubles only when a relay started after it fails too.
            elif self._clock() >= pool.retry_at:
                pool.retry_at = self._clock() + pool.retry_s
                pool.retry_s = min(2 * pool.retry_s, RETRY_MAX_S)
        finally:
            pool.in_flight -= 1
            slots.release()

    async def top_up(self, destination: str, bits: int) -> None:
        """Relay until this end owns ``bits`` more ready key in the pool with ``destination``.

        For a request that found the pool short.  Relays run ``in_flight`` at a time;
        each relayed block is this end's to allocate (its id's parity), and becomes READY
        once link key synchronisation has run.  Raises
        ``RelayFailed`` with the reason after three relays in a row fail; the caller
        owns the time limit.
        """
        pool = self._by_peer.get(destination)
        if pool is None:
            raise RelayFailed(ErrorCode.UNKNOWN_LINK, f"no end-to-end pool with {destination}")
        link_id = pool.config.link_id
        target = await self._owned_bits(link_id) + bits
        failures: list[RelayFailed] = []
        short: RelayFailed | None = None
        slots = trio.Semaphore(self._settings.in_flight)

        async def one() -> None:
            try:
                await self.relay(link_id)
                failures.clear()
            except RelayFailed as exc:
                failures.append(exc)
                if exc.here_short:
                    pool.link_short = True
                    self._refund(pool)
            finally:
                slots.release()

        async with trio.open_nursery() as nursery:
            while (owned := await self._owned_bits(link_id)) < target:
                if len(failures) >= 3:
                    break
                # What this end relays is its own to allocate; count the relays under way.
                under_way = self._settings.in_flight - slots.value
                if self._held_back(pool):
                    await trio.sleep(HELD_S)
                elif owned + under_way * self._settings.block_bits < target and slots.value:
                    if pool.link_short and not await self._link_back(pool, 0):
                        if not under_way:
                            # The first link ran short and still is: no relay that could
                            # only fail here; the request is told at once, as after three
                            # failed relays (its SAE asks again).
                            short = RelayFailed(
                                ErrorCode.INSUFFICIENT_KEY,
                                f"the first link to {destination} is short of key",
                                here_short=True,
                            )
                            break
                        await trio.sleep(SHORT_RETRY_S)
                        continue
                    wait = self._budget_wait(pool, self._settings.block_bits)
                    if wait > 0:  # the pool's budget covers the relays SAEs wait for too
                        await trio.sleep(wait)
                        continue
                    await slots.acquire()
                    nursery.start_soon(one)
                else:
                    await trio.sleep(0.02)  # synchronisation makes the relayed keys ready
            nursery.cancel_scope.cancel()
        if len(failures) >= 3:  # raised out here: inside the nursery it would be a group
            raise failures[-1]
        if short is not None:
            raise short

    def _held_back(self, pool: _Pool) -> bool:
        """Whether a pool of higher priority on one of this pool's first links is short.

        A short pool pausing after failures holds others back only if it failed for want
        of link key: one whose destination is out of reach must not starve the rest."""
        mine = self._priority_of(pool.config.peer)
        now = self._clock()
        rivals = [
            p
            for p in self._pools.values()
            if p is not pool
            and p.short
            and (p.link_short or p.retry_at <= now or p.last_code == ErrorCode.INSUFFICIENT_KEY)
            and self._priority_of(p.config.peer) > mine
        ]
        if not rivals:
            return False
        links = self._first_links(pool)
        return any(links & self._first_links(p) for p in rivals)

    async def _link_back(self, pool: _Pool, under_way: int) -> bool:
        """For a pool whose first link ran short: whether one more relay may start.  Each
        relay once the link has key for it and for the ``under_way`` ones (a short link
        costs no burst of failed relays, background and SAE-driven alike), until it has key
        for ``in_flight`` relays again, which ends the short state."""
        if await self._first_link_ready(pool, self._settings.in_flight):
            pool.link_short = False
            return True
        return await self._first_link_ready(pool, under_way + 1)

    async def _first_link_ready(self, pool: _Pool, relays: int) -> bool:
        """Whether one of the links the pool's paths start on has key for ``relays``
        relays now (above its reserve)."""
        s = self._settings
        one = s.block_bits + 8 * (RELAY_CONFIRM_KEY_BYTES + MAC_KEY_BYTES)
        need = relays * one + self.link_reserve()
        for neighbour in self._first_links(pool):
            link_id = self._link_to.get(neighbour)
            if link_id is not None and await self._owned_bits(link_id) >= need:
                return True
        return False

    def _first_links(self, pool: _Pool) -> set[str]:
        """The neighbours (so the links) the pool's paths start on."""
        return {p[1] for p in self._routes.paths(pool.config.peer) if len(p) > 1}

    def priorities(self) -> dict[str, float]:
        """Each pool's priority now, by link id."""
        return {
            link_id: self._priority_of(p.config.peer) for link_id, p in sorted(self._pools.items())
        }

    async def _owned_bits(self, link_id: str) -> int:
        return await self._thread.call(self._store.owned_ready_bits, link_id)

    async def _pool_bits(self, pool: _Pool) -> int:
        return await self._owned_bits(pool.config.link_id)

    # --- the source ------------------------------------------------------------------

    async def relay(self, e2e_link_id: str, *, bits: int | None = None) -> RelayRecord:
        """Relay one key of ``bits`` (default ``block_bits``) into pool ``e2e_link_id``.

        Tries each route in turn.  Returns the record of the relay that the destination
        confirmed; raises ``RelayFailed`` (with the last route's reason) if none did.
        Cancellation abandons the relay: the destination's copy, if any, is discarded by
        link key synchronisation, never made READY alone.
        """
        pool = self._pools[e2e_link_id]
        size = (bits or self._settings.block_bits) // 8
        counts = self._pool_counts(e2e_link_id)
        started = self._clock()
        try:
            if pool.config.paths > 1:
                record = await self._relay_split(pool, size)
            else:
                record = await self._relay_whole(pool, size, self._routes.paths(pool.config.peer))
        except RelayFailed:
            counts["relays_failed"] += 1
            raise
        counts["relays_confirmed"] += 1
        counts["bits_relayed"] += size * 8
        counts["latency_s_total"] += max(0.0, self._clock() - started)
        return record

    def _pool_counts(self, e2e_link_id: str) -> dict[str, float]:
        counts = self._per_pool.get(e2e_link_id)
        if counts is None:
            counts = self._per_pool[e2e_link_id] = dict.fromkeys(
                RelayPoolStatistics.__struct_fields__, 0
            )
        return counts

    async def _relay_whole(
        self, pool: _Pool, size: int, paths: list[tuple[str, ...]]
    ) -> RelayRecord:
        """One key, whole, over the first of ``paths`` that works."""
        if pool.config.spread:
            # The node-disjoint paths in turn, then the rest: relays over different paths
            # draw on different links, up to the max-flow between the two ends.
            disjoint = self._routes.disjoint_paths(pool.config.peer, MAX_RELAY_SHARES)
            if disjoint:
                pool.turn = (pool.turn + 1) % len(disjoint)
                first = disjoint[pool.turn :] + disjoint[: pool.turn]
                paths = first + [p for p in paths if p not in first]
        if not paths:
            self._counts.relays_failed += 1
            raise RelayFailed(ErrorCode.WRONG_PATH, f"no route to {pool.config.peer}")
        failure = RelayFailed(ErrorCode.WRONG_PATH, "no route tried")
        for path in paths:
            try:
                record = await self._relay_on(pool, list(path), size)
            except RelayFailed as exc:
                failure = exc
                if exc.code in UNREACHABLE:
                    self._routes.hold(path)
            else:
                self._routes.release(path)
                return record
        self._counts.relays_failed += 1
        raise failure

    async def _relay_split(self, pool: _Pool, size: int, *, again: bool = True) -> RelayRecord:
        """One key as XOR shares over node-disjoint paths, kept only if every share lands.

        If a share fails because a node on its path is out of reach, that path is held and
        the key is tried once more at once (a fresh key: the shares already sent are
        dropped at the destination)."""
        found = self._routes.disjoint_paths(pool.config.peer, pool.config.paths)
        paths = [p for p in found if self._is_up(p[1])]
        required = max(2, pool.config.paths_required)
        if len(paths) < required:
            if pool.config.paths_required <= 1 and paths:
                # "disjoint": as many paths as are up; with one, the key goes whole.
                return await self._relay_whole(pool, size, [p for p in paths])
            self._counts.relays_failed += 1
            raise RelayFailed(
                ErrorCode.WRONG_PATH,
                f"{len(paths)} node-disjoint path(s) up to {pool.config.peer} of"
                f" {len(found)}; this pool splits each key over {required}",
            )
        block_id = await self._block_id(pool)
        shares = [os.urandom(size + RELAY_CONFIRM_KEY_BYTES) for _ in paths[1:]]
        key = os.urandom(size)
        last = key + bytes(RELAY_CONFIRM_KEY_BYTES)
        for share in shares:
            last = _xor(last, share)
        # The key is the XOR of the shares (its last 32 bytes ignored); the last share
        # makes it so.  Each share alone is uniformly random.
        shares.append(last)
        records: list[RelayRecord | RelayFailed] = [RelayFailed("", "")] * len(paths)

        async def one(i: int) -> None:
            try:
                records[i] = await self._relay_on(
                    pool,
                    list(paths[i]),
                    size,
                    block_id=block_id,
                    share=(i, len(paths)),
                    payload=shares[i],
                )
            except RelayFailed as exc:
                records[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(len(paths)):
                nursery.start_soon(one, i)
        for path, outcome in zip(paths, records, strict=True):
            if isinstance(outcome, RelayRecord):
                self._routes.release(path)
        failed = [r for r in records if isinstance(r, RelayFailed)]
        if failed:
            lost = [p for p, r in zip(paths, records, strict=True) if _unreachable(r)]
            for path in lost:
                self._routes.hold(path)
            if again and lost:
                log.info("relay.split_retry", pool=pool.config.link_id, error=str(failed[0]))
                return await self._relay_split(pool, size, again=False)
            self._counts.relays_failed += 1
            raise failed[0]
        await pool.driver.deliver(KeyBlock(pool.config.link_id, block_id, key, 0.0, self._clock()))
        self._counts.relays_confirmed += 1
        self._counts.bits_relayed += size * 8
        first = records[0]
        assert isinstance(first, RelayRecord)
        log.info("relay.confirmed", relay=first.relay_id, shares=len(paths), bits=size * 8)
        return first

    async def _relay_on(
        self,
        pool: _Pool,
        path: list[str],
        size: int,
        *,
        block_id: int | None = None,
        share: tuple[int, int] = (0, 1),
        payload: bytes | None = None,
    ) -> RelayRecord:
        """Relay ``payload`` (default: a fresh key) over ``path``; keep it when the destination
        confirms, unless it is one share of a split key (the caller keeps the whole)."""
        self._hops_under_way += 1
        try:
            return await self._relaying_on(
                pool, path, size, block_id=block_id, share=share, payload=payload
            )
        finally:
            self._hops_under_way -= 1

    async def _relaying_on(
        self,
        pool: _Pool,
        path: list[str],
        size: int,
        *,
        block_id: int | None,
        share: tuple[int, int],
        payload: bytes | None,
    ) -> RelayRecord:
        split = payload is not None
        if block_id is None:
            block_id = await self._block_id(pool)
        relay_id = f"{pool.config.link_id}/{block_id}"
        if split:
            relay_id += f"#{share[0]}"
        record = self._record(relay_id, pool.config.link_id, path, "source", size * 8)
        key = payload if payload is not None else os.urandom(size + RELAY_CONFIRM_KEY_BYTES)
        try:
            hop = await self._seal_hop(
                RelayHop(
                    id=0,
                    relay_id=relay_id,
                    e2e_link_id=pool.config.link_id,
                    block_id=block_id,
                    path=path,
                    hop=1,
                    link_id="-",
                    pad=[SegmentRef(0, 0, 1)],
                    mac_key=[SegmentRef(0, 0, 1)],
                    ciphertext=key,
                    tag=bytes(16),
                    share=share[0],
                    shares=share[1],
                ),
                key,
            )
            record.state = "forwarded"
            self._note(record)
            result = await self._forward(hop)
            if not result.ok:
                raise RelayFailed(result.code, result.message)
            try:
                Poly1305.verify_tag(
                    key[-RELAY_CONFIRM_KEY_BYTES:], relay_confirm_data(relay_id), result.confirm
                )
            except InvalidSignature:
                raise RelayFailed(
                    ErrorCode.BAD_TAG, f"{path[-1]}'s confirmation does not match the key sent"
                ) from None
        except RelayFailed as exc:
            self._fail(record, exc)
            raise
        except trio.Cancelled:
            # Abandoned by its caller (a request that stopped waiting): the destination's
            # copy, if any, never becomes READY alone; the record says the relay is over.
            record.state, record.ended_at = "failed", self._clock()
            record.error = "abandoned: its caller stopped waiting"
            self._note(record)
            raise
        record.state, record.ended_at = "confirmed", self._clock()
        self._note(record)
        if split:
            return record
        await pool.driver.deliver(
            KeyBlock(pool.config.link_id, block_id, key[:size], 0.0, self._clock())
        )
        self._counts.relays_confirmed += 1
        self._counts.bits_relayed += size * 8
        log.info("relay.confirmed", relay=relay_id, path="-".join(path), bits=size * 8)
        return record

    async def _block_id(self, pool: _Pool) -> int:
        # Microseconds since the epoch, above every id the pool holds (tombstones too), of
        # this end's parity: the two ends never make the same id, and an id is never
        # reused for another key, also after a restart with the clock stepped back.
        if not pool.seeded:
            held = await self._thread.call(self._store.max_block_id, pool.config.link_id)
            pool.next_id, pool.seeded = max(pool.next_id, held or 0), True
        candidate = max(pool.next_id + 1, time.time_ns() // 1000)
        pool.next_id = candidate + (candidate % 2 != pool.parity)
        return pool.next_id

    # --- hops ------------------------------------------------------------------------

    async def _seal_hop(self, hop: RelayHop, key: bytes) -> RelayHop:
        """``hop`` for the link to ``path[hop.hop]``, padded and tagged with fresh link key."""
        nxt = hop.path[hop.hop]
        link_id = self._link_to.get(nxt)
        if link_id is None:
            raise RelayFailed(
                ErrorCode.NOT_A_NEIGHBOUR, f"{nxt} is not a neighbour of {self.node_id}"
            )
        try:
            # Shielded: an allocation committed while its caller was cancelled would be link
            # key spent here that nobody could tell the next node to burn.
            with trio.CancelScope(shield=True):
                pad, mac = await self._thread.call(
                    self._store.allocate_link_key,
                    link_id,
                    [len(key), MAC_KEY_BYTES],
                    keep=self.link_reserve(first_hop=hop.hop == 1) // 8,
                    in_flight=self._burn is not None and self._settled is not None,
                )
        except InsufficientKey as exc:
            raise RelayFailed(ErrorCode.INSUFFICIENT_KEY, str(exc), here_short=True) from None
        except KeyStoreError as exc:
            raise RelayFailed(ErrorCode.STORE_ERROR, str(exc)) from None
        self._counts.link_bits_spent += (len(key) + MAC_KEY_BYTES) * 8
        self._spent[link_id] = self._spent.get(link_id, 0) + (len(key) + MAC_KEY_BYTES) * 8
        self._pool_counts(hop.e2e_link_id)["link_bits_spent"] += (len(key) + MAC_KEY_BYTES) * 8
        sealed = msgspec.structs.replace(
            hop,
            link_id=link_id,
            pad=_refs(pad),
            mac_key=_refs(mac),
            ciphertext=_xor(key, pad.material),
            tag=bytes(16),
        )
        tag = Poly1305.generate_tag(mac.material, relay_hop_auth_data(sealed))
        return msgspec.structs.replace(sealed, tag=tag)

    async def _forward(self, hop: RelayHop) -> RelayResult:
        """Send ``hop`` on and return the answer.  Unless the answer is a success, the
        next node may or may not have consumed the hop's link key (the session broke, the
        answer was lost, a later hop failed): it is told to burn the same bytes, which it
        skips if it consumed them, so that no link block stays READY at its end only."""
        nxt = hop.path[hop.hop]
        result: PeerReply | None = None
        try:
            with trio.move_on_after(self._settings.timeout_s):
                result = await self._request(nxt, hop)
        except trio.Cancelled:  # the caller gave up: the hop may never have been sent
            self._burn_hop(hop)
            raise
        except PeerUnavailable as exc:
            self._burn_hop(hop)
            raise RelayFailed(ErrorCode.PEER_UNREACHABLE, str(exc)) from None
        if result is None:
            self._burn_hop(hop)
            raise RelayFailed(
                ErrorCode.PEER_TIMEOUT,
                f"{nxt} did not answer within {self._settings.timeout_s:g} s",
            )
        assert isinstance(result, RelayResult)
        self._counts.hops_forwarded += 1
        if not result.ok:
            self._burn_hop(hop)
        elif self._settled is not None:  # it consumed them: no longer in flight
            self._settled(nxt, [*_segments(hop.pad), *_segments(hop.mac_key)])
        return result

    def _burn_hop(self, hop: RelayHop) -> None:
        if self._burn is not None:
            self._burn(hop.path[hop.hop], [*_segments(hop.pad), *_segments(hop.mac_key)])

    async def handle_hop(self, peer: str, hop: RelayHop) -> RelayResult:
        """Receive one hop from ``peer``: keep the key here or pass it on.  Never raises."""
        self._hops_under_way += 1
        try:
            return await self._handle_hop(peer, hop)
        finally:
            self._hops_under_way -= 1

    async def _handle_hop(self, peer: str, hop: RelayHop) -> RelayResult:
        role = "destination" if hop.hop == len(hop.path) - 1 else "intermediate"
        record = self._record(hop.relay_id, hop.e2e_link_id, list(hop.path), role, 0)
        try:
            key = await self._open_hop(peer, hop)
            record.bits = (len(key) - RELAY_CONFIRM_KEY_BYTES) * 8
            self._counts.hops_received += 1
            if role == "destination":
                confirm = await self._keep(hop, key)
                record.state, record.ended_at = "received", self._clock()
                self._note(record)
                return RelayResult(id=hop.id, ok=True, confirm=confirm)
            nxt = hop.path[hop.hop + 1]
            if not self._is_up(nxt):
                # Said before any key of the onward link is taken: the source then holds
                # this path and goes round.  Were the link short of key too (no key comes
                # over a dead session), "short of key" would leave the path in use, and a
                # split pool would spend the other side's key on shares that never pair.
                raise RelayFailed(ErrorCode.PEER_UNREACHABLE, f"no session with {nxt}")
            onward = await self._seal_hop(msgspec.structs.replace(hop, hop=hop.hop + 1), key)
            record.state = "forwarded"
            self._note(record)
            result = await self._forward(onward)
            record.state = "confirmed" if result.ok else "failed"
            record.ended_at, record.error = self._clock(), result.message
            self._note(record)
            return msgspec.structs.replace(result, id=hop.id)
        except RelayFailed as exc:
            self._counts.hops_refused += 1
            self._fail(record, exc)
            return RelayResult(
                id=hop.id, ok=False, code=exc.code, message=f"{self.node_id}: {exc}"[:1000]
            )

    async def _open_hop(self, peer: str, hop: RelayHop) -> bytes:
        """Consume the hop's link key, check its tag, return the key it carries."""
        if hop.path[hop.hop] != self.node_id or hop.path[hop.hop - 1] != peer:
            raise RelayFailed(
                ErrorCode.WRONG_PATH,
                f"hop {hop.hop} of {'-'.join(hop.path)} is not from {peer} to {self.node_id}",
            )
        if self._link_to.get(peer) != hop.link_id:
            raise RelayFailed(ErrorCode.UNKNOWN_LINK, f"{hop.link_id} is not our link with {peer}")
        try:
            pad, mac = await self._thread.call(
                self._store.consume_link_key,
                hop.link_id,
                [_segments(hop.pad), _segments(hop.mac_key)],
            )
        except KeyStoreError as exc:  # SegmentRefused above all: bytes used or unknown
            raise RelayFailed(str(exc.wire_code), str(exc)) from None
        # The link key is spent now, whatever the checks below say.
        if len(pad) != len(hop.ciphertext) or len(mac) != MAC_KEY_BYTES:
            raise RelayFailed(ErrorCode.BAD_TAG, "pad or MAC key of the wrong length")
        try:
            Poly1305.verify_tag(mac, relay_hop_auth_data(hop), hop.tag)
        except InvalidSignature:
            raise RelayFailed(ErrorCode.BAD_TAG, f"hop from {peer} fails authentication") from None
        return _xor(hop.ciphertext, pad)

    async def _keep(self, hop: RelayHop, key: bytes) -> bytes:
        """At the destination: hand the key to the pool's driver (for a split key, once
        every share is here); the confirmation tag of what arrived."""
        source = hop.path[0]
        pool = self._by_peer.get(source)
        if pool is None and self._make_pool is not None:
            await self._make_pool(source)  # the source's SAEs asked: keep a pool with it
            pool = self._by_peer.get(source)
        if pool is None or pool.config.link_id != hop.e2e_link_id:
            raise RelayFailed(
                ErrorCode.UNKNOWN_LINK,
                f"no end-to-end pool {hop.e2e_link_id} with {source} here",
            )
        seen = self._seen.setdefault(hop.e2e_link_id, collections.OrderedDict())
        known = await self._thread.call(self._store.states, hop.e2e_link_id, [hop.block_id])
        if hop.block_id in seen or known:
            raise RelayFailed(
                ErrorCode.DUPLICATE_BLOCK, f"block {hop.block_id} of {hop.e2e_link_id} exists"
            )
        confirm = Poly1305.generate_tag(
            key[-RELAY_CONFIRM_KEY_BYTES:], relay_confirm_data(hop.relay_id)
        )
        whole = key
        if hop.shares > 1:
            self._drop_stale_shares()
            parts = self._shares.setdefault((hop.e2e_link_id, hop.block_id), ({}, self._clock()))[0]
            if hop.share in parts:
                raise RelayFailed(ErrorCode.DUPLICATE_BLOCK, f"share {hop.share} arrived twice")
            parts[hop.share] = key
            if len(parts) < hop.shares:
                return confirm  # the key is kept once the last share is here
            del self._shares[(hop.e2e_link_id, hop.block_id)]
            whole = parts[0]
            for i in range(1, hop.shares):
                whole = _xor(whole, parts[i])
        seen[hop.block_id] = None
        while len(seen) > 4096:
            seen.popitem(last=False)
        size = len(key) - RELAY_CONFIRM_KEY_BYTES
        block = KeyBlock(hop.e2e_link_id, hop.block_id, whole[:size], 0.0, self._clock())
        await pool.driver.deliver(block)
        return confirm

    def _drop_stale_shares(self) -> None:
        """Forget split keys whose other shares never came: that key is lost at both ends."""
        cutoff = self._clock() - 2 * self._settings.timeout_s
        for entry in [e for e, (_, at) in self._shares.items() if at < cutoff]:
            del self._shares[entry]

    # --- records and status --------------------------------------------------------

    def _record(
        self, relay_id: str, link_id: str, path: list[str], role: str, bits: int
    ) -> RelayRecord:
        record = RelayRecord(relay_id, link_id, path, role, "started", bits, self._clock())
        self._recent.appendleft(record)
        self._note(record)
        return record

    def _fail(self, record: RelayRecord, exc: RelayFailed) -> None:
        record.state, record.ended_at, record.error = "failed", self._clock(), str(exc)[:300]
        self._note(record)
        log.warning(
            "relay.failed",
            relay=record.relay_id,
            role=record.role,
            code=exc.code,
            error=str(exc)[:300],
        )

    def hops_under_way(self) -> int:
        """Relays this node is sending or hops it is handling now: until they end, link
        key they spent at one end may not be consumed (or burnt) at the other yet."""
        return self._hops_under_way

    def relays(self) -> list[RelayRecord]:
        """Recent relays, newest first."""
        return list(self._recent)

    def routes(self) -> list[Route]:
        return self._routes.routes(sorted(p.config.peer for p in self._pools.values()))

    def split_paths(self) -> list[SplitPaths]:
        """For each pool that splits or spreads its keys, the node-disjoint paths it would
        use now, and whether they are the controller's set."""
        out = []
        for pool in sorted(self._pools.values(), key=lambda p: p.config.peer):
            if pool.config.paths <= 1 and not pool.config.spread:
                continue
            peer = pool.config.peer
            limit = MAX_RELAY_SHARES if pool.config.spread else pool.config.paths
            paths = self._routes.disjoint_paths(peer, limit)
            pushed = self._routes.pushed_disjoint(peer)
            source = "controller" if paths and set(paths) <= set(pushed) else "computed"
            out.append(SplitPaths(peer, [list(p) for p in paths], source))
        return out

    @property
    def block_bits(self) -> int:
        """Key carried by one relay."""
        return self._settings.block_bits

    def pool_of(self, destination: str) -> str | None:
        """The end-to-end pool's link id with ``destination``, if this node keeps one."""
        pool = self._by_peer.get(destination)
        return pool.config.link_id if pool is not None else None

    def statistics(self) -> RelayStatistics:
        return RelayStatistics(**dataclasses.asdict(self._counts))

    def pool_statistics(self) -> dict[str, RelayPoolStatistics]:
        """Per end-to-end pool (by link id): its relays and the link key spent on them."""
        return {
            link_id: RelayPoolStatistics(
                relays_confirmed=int(c["relays_confirmed"]),
                relays_failed=int(c["relays_failed"]),
                bits_relayed=int(c["bits_relayed"]),
                latency_s_total=float(c["latency_s_total"]),
                link_bits_spent=int(c["link_bits_spent"]),
            )
            for link_id, c in sorted(self._per_pool.items())
        }

    def link_spend(self) -> dict[str, int]:
        """Per QKD link, the link key this node spent on hops it sent (pads and MAC keys)."""
        return dict(self._spent)


UNREACHABLE = frozenset({ErrorCode.PEER_UNREACHABLE, ErrorCode.PEER_TIMEOUT})
"""Relay failures that say a node on the path is out of reach: the path is held.  A link
short of key is not: the relay is retried on the same path when key has come."""


def _unreachable(outcome: RelayRecord | RelayFailed) -> bool:
    return isinstance(outcome, RelayFailed) and outcome.code in UNREACHABLE


def _xor(a: bytes, b: bytes) -> bytes:
    return (int.from_bytes(a, "big") ^ int.from_bytes(b, "big")).to_bytes(len(a), "big")


def _refs(allocation: Allocation) -> list[SegmentRef]:
    return [SegmentRef(s.block_id, s.offset, s.length) for s in allocation.segments]


def _segments(refs: list[SegmentRef]) -> tuple[Segment, ...]:
    return tuple(Segment(r.block_id, r.offset, r.length) for r in refs)
