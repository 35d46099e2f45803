"""Keys for SAE pairs across a QKD link: cut from the link's pool, reserved at the neighbour.

Theory of operation
-------------------
For a slave attached to neighbour T, the keys are cut from the blocks of the link to T
that this node owns (exact pool bits, never stretched; ``KeyStore.cut_service_keys``),
then T is asked to consume the same bytes and record the keys for the slave
(``supply.reserve``, answered by ``supply.result`` once durable at T).  Only then are the
keys handed out.  If T refuses, is not connected or does not answer in time, the cut bits
are burnt, never offered again, and the request gets 503.

Burnt bytes (these, and relay hops' that got no answer) are told to T (``supply.burn``)
so that it consumes its copy too.  They are kept in the key store before the first
telling, and T answers once the burn is durable at its end: a burnt range is told at
once or when T is back, every ``BURN_RESEND_S`` while T is connected and has not
answered, and at every new session, until T acknowledges it; then it is dropped here and
from the store.  T skips bytes it used already, so telling twice costs nothing.  Memory
and the store keep at most ``BURNS_KEPT`` unacknowledged ranges per link; beyond that
the oldest are dropped, counted (``burns_dropped``) and logged as an error.  A T of an
older version (no ``FEATURE_BURN_ACK`` in its ``Hello``) gets the one-way notice it
knows: told once more ``BURN_RESEND_S`` later and again at every new session (the
latest ``BURNS_RETOLD``), never known to have arrived.

Bytes sent to T for a reservation (and by the relay agent for a hop) are noted in the
store with the cut itself, in the same transaction, and forgotten in a batch once T's
answer says it consumed them (``settle_segments``): a node killed before the answer
tells them as burnt after its restart (see ``KeyStore.kept_burns``).

A pair that asked once keeps a small stock (see ``._stock``): keys cut and reserved at T
ahead of demand, refilled in the background when half are gone and only from what the
pool holds beyond what the refill takes.  A request for the pair's default size with no
additional slaves is served from it with no round trip.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import trio

from protocol import (
    MAX_IDS_PER_MESSAGE,
    MAX_KEYS_PER_RESERVATION,
    ErrorCode,
    PeerReply,
    ReservedKey,
    SegmentRef,
    SupplyBurn,
    SupplyReserve,
    SupplyResult,
)

from ..config import SaeConfig, SupplyPolicy
from ..errors import PeerUnavailable
from ..keystore import BURNS_KEPT, CutKey, KeyStore, KeyStoreError, Segment
from ..log import get_logger
from ..storethread import StoreThread
from ..tokenbucket import BUDGET_BURST_S, TokenBucket
from ._errors import SupplyError, Unavailable
from ._ids import new_key_id
from ._recorded import RecordedKeys
from ._source import KeyOrder
from ._stock import PairStock

log = get_logger("qkms.supply")

RequestFn = Callable[[str, SupplyReserve | SupplyBurn], Awaitable[PeerReply]]
SendFn = Callable[[str, Any], Awaitable[bool]]

BURN_RESEND_S = 2.0
"""Burns the neighbour has not acknowledged are told again this often while it is
connected (and at each new session); bytes whose answer came are forgotten in the store
this often, in one batch.  To an older neighbour that does not acknowledge, a one-way
notice is sent once more this long after it was sent (also when the send itself seemed
to succeed, it may be lost with its session)."""
BURNS_RETOLD = BURNS_KEPT
"""To an older neighbour: burnt segments (the latest told) told again at every new
session: a notice and its resend can both be lost when sessions break every second or
so, and nothing else would ever settle those bytes at the neighbour."""
STOCK_RETRY_S = 1.0
"""A pair's stock is not refilled again within this many seconds of a failed refill."""
STOCK_MIN_VALIDITY_S = 60.0
"""Pairs whose keys are valid for less than this keep no stock."""


class StockStatistics(msgspec.Struct, frozen=True):
    """Keys that went through the per-pair stocks since the node started."""

    stock_keys_in: int
    """Keys cut and reserved at the neighbour ahead of demand."""
    stock_keys_out: int
    """Keys handed to masters from a stock."""
    burns_acked: int = 0
    """Burnt link key ranges the neighbours acknowledged (or refused for good)."""
    burns_dropped: int = 0
    """Unacknowledged burnt ranges dropped over ``BURNS_KEPT`` per link."""


class DirectLinkSource:
    """The key source for target KMEs that are QKD neighbours.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        saes: dict[str, SaeConfig],
        store: KeyStore,
        store_thread: StoreThread,
        recorded: RecordedKeys,
        request: RequestFn,
        send: SendFn,
        link_to: dict[str, str],
        reserve_timeout: float,
        is_up: Callable[[str], bool] = lambda peer: True,
        acks_burns: Callable[[str], bool] = lambda peer: False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``acks_burns(peer)``: the peer's session announced ``FEATURE_BURN_ACK``."""
        self.node_id = node_id
        self._saes = saes
        self._store = store
        self._thread = store_thread
        self._recorded = recorded
        self._request = request
        self._send = send
        self._is_up = is_up
        self._acks_burns = acks_burns
        self._link_to = link_to
        self._burnt: dict[str, list[Segment]] = {}
        """Per target KME: bytes burnt here that it has not acknowledged (or, if it does
        not acknowledge, not been told of yet), but for those in a notice being sent."""
        self._sent_once: dict[str, list[Segment]] = {}
        """Per older target KME: burnt bytes told once, to tell again (``BURN_RESEND_S``)."""
        self._told: dict[str, collections.deque[Segment]] = {}
        """Per older target KME: the latest burnt bytes told, told at each new session."""
        self._unsaved: dict[str, list[Segment]] = {}
        """Per target KME: burnt bytes not written to the store's kept burns yet."""
        self._keeping = trio.Lock()
        """Held while burns are written: a flush sends nothing another has not saved."""
        self._settled: dict[str, list[Segment]] = {}
        """Per link: bytes sent in flight that the neighbour consumed, to forget in the
        store (in a batch, every ``BURN_RESEND_S``)."""
        self._loaded: set[str] = set()
        """Target KMEs whose kept burns (from before a restart) were read back."""
        self._not_taken: set[str] = set()
        """Target KMEs whose last answer to a burn was a refusal to retry later."""
        self.burns_acked = 0
        """Burnt ranges the neighbours acknowledged (or refused for good)."""
        self.burns_dropped = 0
        """Unacknowledged burnt ranges dropped over ``BURNS_KEPT`` (memory or store)."""
        self._under_way = 0
        """Reservations and burn notices being sent now."""
        self._reserve_timeout = reserve_timeout
        self._clock = clock
        self._stocks: dict[tuple[str, str], PairStock] = {}
        self._nursery: trio.Nursery | None = None
        self.stock_keys_in = 0
        self.stock_keys_out = 0
        self._budgets: dict[str, TokenBucket] = {}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Hold the stock refills.  Until cancelled."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._resend_burns)
            task_status.started()
            await trio.sleep_forever()

    async def _resend_burns(self) -> None:
        while True:
            await trio.sleep(BURN_RESEND_S)
            await self._forget_settled()
            for target in list(self._link_to):
                if not self._is_up(target):
                    continue
                again = self._sent_once.pop(target, [])
                if again or self._burnt.get(target):  # unacknowledged, or a flush cut short
                    await self.flush_burnt(target, again=again)

    def set_budgets(self, budgets: Mapping[str, float]) -> None:
        """The controller's budgets per target KME (bits/s of key cut for it, stock refills
        included); a target not named is not limited.  A cut over its budget gets 503: the
        link's key is shared with the relays that cross it (docs/sharing.md)."""
        now = trio.current_time()  # a rate: trio's clock (virtual in a simulation)
        for target in set(self._budgets) | set(budgets):
            rate = budgets.get(target)
            bucket = self._budgets.get(target)
            if rate is None:
                self._budgets.pop(target, None)
            elif bucket is None:  # a new budget starts with its burst: no pair waits for it
                self._budgets[target] = TokenBucket(rate, now, full=True, burst_s=BUDGET_BURST_S)
            elif bucket.rate != rate:  # the tokens earned at the old rate are kept
                bucket.set_rate(rate, now)

    def budget(self, target_kme: str) -> float | None:
        bucket = self._budgets.get(target_kme)
        return bucket.rate if bucket else None

    def serves(self, target_kme: str) -> bool:
        return target_kme in self._link_to

    def statistics(self) -> StockStatistics:
        return StockStatistics(
            self.stock_keys_in, self.stock_keys_out, self.burns_acked, self.burns_dropped
        )

    async def available(
        self, master: str, slave: str, target_kme: str, policy: SupplyPolicy
    ) -> int:
        pool = await self._thread.call(self._store.pool, self._link_to[target_kme])
        stock = self._stocks.get((master, slave))
        return pool.owned_ready_bits // policy.key_size + (len(stock) if stock else 0)

    async def fetch(
        self, key_ids: Sequence[str], *, master: str, requester: str
    ) -> list[tuple[str, bytes]]:
        return await self._recorded.fetch(key_ids, master=master, requester=requester)

    async def new_keys(self, order: KeyOrder) -> list[CutKey]:
        policy = order.policy
        stocked = (
            _stock_target(policy) > 0
            and len(order.slaves) == 1
            and order.size_bits == policy.key_size
        )
        keys = self._take_stock(order) if stocked else None
        if keys is None:
            here = [s for s in order.slaves if self._saes[s].kme == self.node_id]
            there = [s for s in order.slaves if s not in here]
            keys = await self._cut_and_reserve(
                order.master,
                order.target_kme,
                [new_key_id() for _ in range(order.number)],
                order.size_bits,
                here,
                there,
                self._clock() + policy.key_validity_s,
            )
        if stocked:
            self._refill_soon(order.master, order.slave, order.target_kme, policy)
        return keys

    async def _cut_and_reserve(
        self,
        master: str,
        target_kme: str,
        key_ids: list[str],
        size: int,
        here: list[str],
        there: list[str],
        expires_at: float,
        keep: int = 0,
    ) -> list[CutKey]:
        self._under_way += 1
        try:
            return await self._cutting_and_reserving(
                master, target_kme, key_ids, size, here, there, expires_at, keep
            )
        finally:
            self._under_way -= 1

    async def _cutting_and_reserving(
        self,
        master: str,
        target_kme: str,
        key_ids: list[str],
        size: int,
        here: list[str],
        there: list[str],
        expires_at: float,
        keep: int,
    ) -> list[CutKey]:
        link_id = self._link_to[target_kme]
        if not self._is_up(target_kme):  # cut nothing that could only be burnt
            raise Unavailable(f"target KME {target_kme} is unreachable: not connected")
        bucket = self._budgets.get(target_kme)
        bits = len(key_ids) * size
        if bucket is not None and not bucket.has(bits, trio.current_time()):
            raise Unavailable(
                f"the keys for {target_kme} are at their budget of {bucket.rate:g} bit/s "
                "from the controller: try again shortly"
            )
        # Shielded: a cut committed at the store while its caller was cancelled would be
        # bytes spent here that nobody tells the neighbour about.
        with trio.CancelScope(shield=True):
            keys: list[CutKey] = await self._thread.call(
                self._store.cut_service_keys,
                link_id,
                [(k, size // 8) for k in key_ids],
                master_sae=master,
                local_slaves=here,
                expires_at=expires_at,
                slaves=[*here, *there],
                keep=keep,
                in_flight=True,  # told as burnt after a restart until its answer comes
            )
        if bucket is not None:  # taken once cut: a cut the pool could not give costs none
            bucket.take(bits)
        message = SupplyReserve(
            id=0,  # the peer manager gives the request its id
            link_id=link_id,
            master_sae=master,
            slave_saes=there,
            expires_at=expires_at,
            keys=[
                ReservedKey(
                    key_id=k.key_id,
                    segments=[SegmentRef(s.block_id, s.offset, s.length) for s in k.segments],
                )
                for k in keys
            ],
        )
        result = None
        try:
            with trio.move_on_after(self._reserve_timeout):
                result = await self._request(target_kme, message)
        except trio.Cancelled:
            # The caller gave up: the reservation may never have been sent.
            self.burn_segments(target_kme, [seg for key in keys for seg in key.segments])
            raise
        except PeerUnavailable as exc:
            await self._burn(target_kme, keys)
            raise Unavailable(f"target KME {target_kme} is unreachable: {exc}") from None
        if result is None:
            log.warning("supply.reserve_timeout", peer=target_kme, keys=len(keys))
            await self._burn(target_kme, keys)
            raise Unavailable(f"target KME {target_kme} did not confirm the keys in time")
        assert isinstance(result, SupplyResult)
        if not result.ok:
            log.warning("supply.reserve_refused", peer=target_kme, code=result.code)
            await self._burn(target_kme, keys)
            raise Unavailable(f"target KME {target_kme} refused the keys: {result.message}")
        self.settle_segments(target_kme, [seg for key in keys for seg in key.segments])
        return keys

    # --- burnt bytes: the neighbour consumes them too ------------------------------------

    async def _burn(self, target_kme: str, keys: list[CutKey]) -> None:
        """The cut bytes are spent here; tell the neighbour, now or when it is back."""
        self._note_burnt(target_kme, [seg for key in keys for seg in key.segments], new=True)
        await self.flush_burnt(target_kme)

    def burn_segments(self, target_kme: str, segments: Sequence[Segment]) -> None:
        """Bytes of the link with ``target_kme`` spent here that it may never have consumed
        (keys it never recorded, a relay hop that got no answer): it consumes them too, so
        that a block used up here is used up there.  Bytes it did consume are skipped at
        its end.  Does not wait: a task of this source's sends the notice, now or when the
        neighbour is back, so that a cancelled caller can still call this."""
        self._note_burnt(target_kme, segments, new=True)
        if self._nursery is not None:
            with contextlib.suppress(RuntimeError):  # the node is stopping: nobody to tell
                self._nursery.start_soon(self.flush_burnt, target_kme)

    def settle_segments(self, target_kme: str, segments: Sequence[Segment]) -> None:
        """Bytes sent to ``target_kme`` in flight (cut with ``in_flight``: a reservation,
        a relay hop) that it answered for, having consumed them: their rows in the store
        are forgotten in the next batch.  Does not wait."""
        link_id = self._link_to.get(target_kme)
        if link_id is not None and segments:
            self._settled.setdefault(link_id, []).extend(segments)

    async def _forget_settled(self) -> None:
        settled, self._settled = self._settled, {}
        for link_id, segments in settled.items():
            try:
                with trio.CancelScope(shield=True):
                    await self._thread.call(self._store.forget_in_flight, link_id, segments)
            except (KeyStoreError, trio.ClosedResourceError) as exc:
                # Left in the store: told as burnt after a restart, skipped by the neighbour.
                log.warning("supply.settled_not_forgotten", link=link_id, error=str(exc)[:200])

    def _note_burnt(
        self, target_kme: str, segments: Sequence[Segment], *, new: bool = False
    ) -> None:
        """Burnt bytes to tell ``target_kme`` of; ``new`` ones are kept in the store too."""
        if target_kme not in self._link_to or not segments:
            return
        if new:
            self._unsaved.setdefault(target_kme, []).extend(segments)
        pending = _merged([*self._burnt.get(target_kme, []), *segments])
        if len(pending) > BURNS_KEPT:  # the oldest (lowest block ids) go: see the docstring
            dropped = len(pending) - BURNS_KEPT
            del pending[:dropped]
            self._dropped(target_kme, dropped)
        self._burnt[target_kme] = pending

    def _dropped(self, target_kme: str, ranges: int) -> None:
        self.burns_dropped += ranges
        log.error(
            "supply.burns_dropped",
            peer=target_kme,
            ranges=ranges,
            kept=BURNS_KEPT,
            hint="the neighbour has not acknowledged them; its copies of those bytes stay"
            " READY until their blocks expire",
        )

    async def flush_burnt(self, target_kme: str, *, again: Sequence[Segment] = ()) -> None:
        """Tell the neighbour the bytes burnt here that it has not acknowledged (or, to an
        older neighbour, not heard of; and ``again``, told once already).  Kept in the key
        store first, so that a restarted node tells them again at its first session, and
        kept for the next session while the neighbour is away.

        Bytes taken for a notice stay pending until its answer (or, to an older
        neighbour, its send) has returned: a flush cut short (its caller cancelled, a
        request that gave up or a session that was replaced) leaves them for the next
        flush instead of dropping them."""
        link_id = self._link_to.get(target_kme)
        if link_id is None:
            return
        await self._keep_burns(target_kme, link_id)
        if self._acks_burns(target_kme):
            self._note_burnt(target_kme, again)
            await self._tell_burns(target_kme, link_id)
            return
        batches = [(list(again), True)] if again else []
        attempts = 0
        while True:
            if batches:
                chunk_all, resent = batches.pop()
            else:
                pending = self._burnt.get(target_kme)
                if not pending:
                    return
                chunk_all, resent = pending[:MAX_IDS_PER_MESSAGE], False
                del pending[: len(chunk_all)]  # taken now: a concurrent flush sends the rest
            for start in range(0, len(chunk_all), MAX_IDS_PER_MESSAGE):
                chunk = chunk_all[start : start + MAX_IDS_PER_MESSAGE]
                refs = [SegmentRef(s.block_id, s.offset, s.length) for s in chunk]
                self._under_way += 1
                try:
                    sent = await self._send(target_kme, SupplyBurn(link_id=link_id, segments=refs))
                except BaseException:
                    self._note_burnt(target_kme, chunk_all[start:])  # not told: keep it
                    raise
                finally:
                    self._under_way -= 1
                if sent:
                    if not resent:
                        self._sent_once.setdefault(target_kme, []).extend(chunk)
                    self._told.setdefault(
                        target_kme, collections.deque(maxlen=BURNS_RETOLD)
                    ).extend(chunk)
                    continue
                self._note_burnt(target_kme, chunk_all[start:])  # for the next session
                attempts += 1
                # A newer session may have opened while this send failed on the old one:
                # its peer_up has flushed already, so try again on it now.
                if attempts > 3 or not self._is_up(target_kme):
                    return
                break

    async def _tell_burns(self, target_kme: str, link_id: str) -> None:
        """Tell the pending burns as requests; drop each range once answered."""
        while pending := self._burnt.get(target_kme):
            chunk = pending[:MAX_IDS_PER_MESSAGE]
            del pending[: len(chunk)]  # taken now: a concurrent flush tells the rest
            refs = [SegmentRef(s.block_id, s.offset, s.length) for s in chunk]
            result = None
            self._under_way += 1
            try:
                with trio.move_on_after(self._reserve_timeout):
                    result = await self._request(
                        target_kme, SupplyBurn(link_id=link_id, segments=refs)
                    )
            except PeerUnavailable:
                result = None
            except BaseException:
                self._note_burnt(target_kme, chunk)  # not acknowledged: keep it
                raise
            finally:
                self._under_way -= 1
            if result is None:  # no answer: told again in BURN_RESEND_S or next session
                self._note_burnt(target_kme, chunk)
                return
            assert isinstance(result, SupplyResult)
            if not result.ok and result.code != ErrorCode.SEGMENT_REFUSED:
                # Its store failed, or it does not know the link (yet): told again later,
                # said once until it takes one (no line every BURN_RESEND_S).
                if target_kme not in self._not_taken:
                    self._not_taken.add(target_kme)
                    log.warning("supply.burn_not_taken", peer=target_kme, code=result.code)
                self._note_burnt(target_kme, chunk)
                return
            self._not_taken.discard(target_kme)
            if not result.ok:  # ranges no burn can apply to: telling again would not help
                log.error("supply.burn_refused", peer=target_kme, error=result.message[:200])
            self.burns_acked += len(chunk)
            try:
                with trio.CancelScope(shield=True):
                    await self._thread.call(self._store.forget_burns, link_id, chunk)
            except (KeyStoreError, trio.ClosedResourceError) as exc:
                # Left in the store: told again after a restart, skipped by the neighbour.
                log.warning("supply.acked_burns_kept", peer=target_kme, error=str(exc)[:200])

    def unsettled(self) -> int:
        """Reservations and burn notices being sent now, and burnt ranges waiting to be
        told: until there are none, the neighbours' copies of link key cut or burnt here
        may not be consumed yet."""
        return self._under_way + sum(len(pending) for pending in self._burnt.values())

    async def _keep_burns(self, target_kme: str, link_id: str) -> None:
        async with self._keeping:
            unsaved = self._unsaved.pop(target_kme, None)
            if not unsaved:
                return
            try:
                with trio.CancelScope(shield=True):  # a cancelled flush still keeps them
                    dropped = await self._thread.call(self._store.keep_burns, link_id, unsaved)
            except KeyStoreError as exc:  # told all the same, only not after a restart
                log.error("supply.burns_not_kept", peer=target_kme, error=str(exc)[:200])
                return
            except trio.ClosedResourceError:  # the node is stopping: its store has closed
                log.warning("supply.burns_not_kept", peer=target_kme, error="the node is stopping")
                return
        if dropped:  # as in memory (``_note_burnt``, counted there), or told to an older peer
            log.debug("supply.kept_burns_trimmed", peer=target_kme, ranges=dropped)

    async def peer_up(self, peer: str) -> None:
        # What was sent as the last sessions broke may never have arrived: send what the
        # neighbour has not acknowledged (to an older one, the latest burns told again;
        # it skips bytes it consumed already), and at the first session after a restart
        # what the store kept.
        link_id = self._link_to.get(peer)
        if link_id is not None and peer not in self._loaded:
            try:
                kept = await self._thread.call(self._store.kept_burns, link_id)
            except (KeyStoreError, trio.ClosedResourceError) as exc:  # tried at the next
                log.error("supply.kept_burns_unread", peer=peer, error=str(exc)[:200])
            else:
                self._note_burnt(peer, kept)
                self._loaded.add(peer)
        self._note_burnt(peer, [*self._sent_once.pop(peer, []), *self._told.pop(peer, ())])
        if self._nursery is None:
            await self.flush_burnt(peer)
            return
        # Sent from a task of this source's: the session's start does not wait behind up
        # to 4,096 ranges before its reader runs, and a session replaced meanwhile does
        # not cut the flush short.
        with contextlib.suppress(RuntimeError):  # the node is stopping: nobody to tell
            self._nursery.start_soon(self.flush_burnt, peer)

    async def peer_down(self, peer: str, reason: str = "") -> None:
        pass

    # --- the per-pair stock (see ._stock) ----------------------------------------------

    def _stock(self, master: str, slave: str, policy: SupplyPolicy) -> PairStock:
        stock = self._stocks.get((master, slave))
        if stock is None:
            stock = self._stocks[(master, slave)] = PairStock(_stock_target(policy))
        return stock

    def _take_stock(self, order: KeyOrder) -> list[CutKey] | None:
        stock = self._stock(order.master, order.slave, order.policy)
        keys = stock.take(order.number, now=self._clock(), size_bits=order.size_bits)
        if keys is not None:
            self.stock_keys_out += order.number
        return keys

    def _refill_soon(self, master: str, slave: str, target_kme: str, policy: SupplyPolicy) -> None:
        """Start topping the pair's stock up in the background, if it runs low."""
        assert self._nursery is not None, "run() first"
        stock = self._stock(master, slave, policy)
        if stock.wanted(self._clock(), retry_after=STOCK_RETRY_S):
            stock.refilling = True
            self._nursery.start_soon(self._refill, master, slave, target_kme, stock, policy)

    async def _refill(
        self, master: str, slave: str, target_kme: str, stock: PairStock, policy: SupplyPolicy
    ) -> None:
        try:
            while (want := stock.shortfall(self._clock())) > 0:
                number = min(want, MAX_KEYS_PER_RESERVATION)
                expires_at = self._clock() + policy.key_validity_s
                try:
                    keys = await self._cut_and_reserve(
                        master,
                        target_kme,
                        [new_key_id() for _ in range(number)],
                        policy.key_size,
                        [],
                        [slave],
                        expires_at,
                        # A stock takes from surplus only: at least as much stays in the
                        # pool for requests it does not cover (other pairs, other sizes).
                        keep=number * policy.key_size // 8,
                    )
                except (SupplyError, KeyStoreError) as exc:  # short pool, peer away or full
                    # Retried while requests come (at most once a second): say it once.
                    first = stock.failed_at == float("-inf")
                    stock.failed_at = self._clock()
                    (log.info if first else log.debug)(
                        "supply.stock_refill_failed",
                        master=master,
                        slave=slave,
                        reason=str(exc)[:200],
                    )
                    return
                stock.add(keys, expires_at=expires_at, validity_s=policy.key_validity_s)
                stock.failed_at = float("-inf")
                self.stock_keys_in += number
        finally:
            stock.refilling = False


def _stock_target(policy: SupplyPolicy) -> int:
    if policy.key_validity_s < STOCK_MIN_VALIDITY_S:
        return 0  # stocked keys would go stale (half their validity) before they are used
    # Stocked keys count against the slave's max_stored_keys: leave it room.
    return min(policy.stock_keys, policy.max_stored_keys // 2)


def _merged(segments: list[Segment]) -> list[Segment]:
    """``segments`` sorted, without repeats, with back-to-back ranges of one block joined."""
    out: list[Segment] = []
    for seg in sorted(set(segments), key=lambda s: (s.block_id, s.offset, s.length)):
        last = out[-1] if out else None
        if (
            last is not None
            and last.block_id == seg.block_id
            and last.offset + last.length == seg.offset
        ):
            out[-1] = Segment(last.block_id, last.offset, last.length + seg.length)
        else:
            out.append(seg)
    return out
