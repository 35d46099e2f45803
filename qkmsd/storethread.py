"""Runs key store calls on a worker thread, with group commit.

SQLite with ``synchronous=FULL`` fsyncs on every commit: that must not block the
event loop, and one fsync per request would cap a node at the disk's fsync rate.
So calls queue up; the worker takes everything queued, runs it inside one store
transaction (``KeyStore.batch``: each call under its own savepoint), commits once,
and only then hands each caller its result.  Under load, many concurrent requests
share one fsync; alone, a call costs what it did before.

A caller hands its call straight to the worker's queue and is woken once by the
worker: no task of ours in between, since every task a call passes through costs it
a pass of the scheduler, a millisecond or more when the event loop is busy.

A call that has started always finishes (it is not abandoned on cancellation), so
a transaction is never cut in half by a cancelled task; the caller's own wait is
cancellable.  When ``run`` ends, the worker finishes what it was handed first.

The worker is one long-lived thread of our own rather than ``trio.to_thread``:
handing a batch to it and back costs less CPU (no thread cache, no renaming the
thread per job), and a node makes a hand-off for every key request.

Small calls that answer a request (a ``dec_keys`` fetch, the recording of a peer's
reservation) may skip the hand-off: ``call_inline`` runs them on the event loop itself,
commit and fsync included, when the worker is idle and such calls have been quick.  A
hand-off costs two thread wake-ups, each a wait for a core on a busy machine, and a wait
behind whatever batch the worker is running; with an idle store and a fast disk the
inline call is cheaper.  On a slow disk an inline call would stall every request, so
calls go to the worker for ``INLINE_BACKOFF_S`` after an inline call slower than its
limit (``INLINE_SLOW_S`` unless the caller gives another) or a worker commit slower than
``WORKER_SLOW_COMMIT_S``.  The first inline call after the pause is the probe: if it is
slow too, the next pause is twice as long (up to ``INLINE_BACKOFF_MAX_S``), so a disk
that stays slow is not probed from the event loop every second; if it is quick, pauses
are back to ``INLINE_BACKOFF_S``.  A slow worker commit restarts the pause but does not
lengthen it: a burst of slow batches (a stall of the machine) says the worker was slow,
not that a probe on the event loop would be, and must not keep calls off the event loop
for a minute.  Only the commit counts (``last_commit_s``), not the WAL truncation that
follows one batch a minute.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

import msgspec
import trio

T = TypeVar("T")

MAX_BATCH = 256
INLINE_SLOW_S = 0.005
"""An inline call slower than this (a slow disk, a stalled machine) turns inlining off..."""
INLINE_BACKOFF_S = 1.0
"""...for this long; then the next idle call is tried inline again..."""
INLINE_BACKOFF_MAX_S = 64.0
"""...and if that one is slow too, for twice as long, up to this."""
WORKER_SLOW_COMMIT_S = 0.02
"""A worker commit slower than this (the disk, not a busy core) also turns inlining off."""


class Batchable(Protocol):
    last_commit_s: float
    """How long the last ``batch``'s commit took, without the maintenance after it."""

    def batch(self) -> Any: ...

    def try_hold(self) -> AbstractContextManager[bool]: ...


@dataclasses.dataclass
class _Call:
    fn: Callable[[], Any]
    done: trio.Event = dataclasses.field(default_factory=trio.Event)
    result: Any = None
    error: BaseException | None = None


class StoreThread:
    """``await thread.call(store.method, *args)``: the method runs on a worker thread.

    Start ``run`` in a nursery first.  Without a store (``StoreThread()``), calls run
    one at a time with no batching: for tests and tools.

    ``inline=True`` (the simulator only, ``qkmssim``): no worker thread; every call runs
    on the event loop as its own transaction, after a checkpoint.  On a virtual clock
    (``trio.testing.MockClock`` with autojump) time jumps whenever every task waits, also
    while a worker thread is busy, so a hand-off to a thread would see its time-outs fire
    spuriously; run inline, a store call takes no virtual time at all.
    """

    def __init__(
        self,
        store: Batchable | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        inline: bool = False,
    ) -> None:
        self._store = store
        self._inline_only = inline and store is not None
        self._clock = clock
        self._limiter = trio.CapacityLimiter(1)
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopped = False
        self._inline_after = float("-inf")
        self._backoff = INLINE_BACKOFF_S
        self.batches = 0
        self.calls = 0
        self.inline = 0

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        bound = functools.partial(fn, *args, **kwargs)
        if self._inline_only:
            return await self._call_here(bound)
        if self._store is None:
            return await trio.to_thread.run_sync(bound, limiter=self._limiter)
        assert self._token is not None, "run() first"
        await trio.lowlevel.checkpoint_if_cancelled()
        if self._stopped:
            raise trio.ClosedResourceError("the store thread has stopped")
        item = _Call(bound)
        # Straight to the worker: each task in between would cost the caller a pass of the
        # scheduler, a millisecond or more when the event loop is busy.
        self._queue.put(item)
        await item.done.wait()
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    async def call_inline(
        self,
        fn: Callable[..., T],
        *args: Any,
        slow_after: float = INLINE_SLOW_S,
        **kwargs: Any,
    ) -> T:
        """Like ``call``, but run on the event loop itself when the worker is idle.

        For small calls only: the event loop waits for the call, its commit and fsync.
        The call is its own transaction, durable when this returns, as with ``call``.
        It is a cancellation point, but it does not yield to other tasks when it runs
        inline.  Falls back to ``call`` while a batch is running, and for a while after a
        slow store call (see the module's docstring).  An inline call counts as slow past
        ``slow_after`` seconds (ours, not passed to ``fn``): a call that does more than a
        commit's worth of work gives a limit of its own.
        """
        store = self._store
        if self._inline_only:
            return await self._call_here(functools.partial(fn, *args, **kwargs))
        if store is None or self._stopped or self._clock() < self._inline_after:
            return await self.call(fn, *args, **kwargs)
        await trio.lowlevel.checkpoint_if_cancelled()
        with store.try_hold() as held:
            if held:
                started = self._clock()
                try:
                    result: T = fn(*args, **kwargs)
                finally:
                    self.inline += 1
                    if self._clock() - started > slow_after:
                        self._slow_inline()
                    else:
                        self._backoff = INLINE_BACKOFF_S
                return result
        return await self.call(fn, *args, **kwargs)

    async def _call_here(self, bound: Callable[[], T]) -> T:
        """``inline`` mode: the call on the event loop, as ``call_inline`` makes it: each
        write of the store's in a transaction of its own, a read in none (no empty
        ``BEGIN``/``COMMIT`` around a call that only reads, most of a simulation's)."""
        assert self._store is not None
        await trio.lowlevel.checkpoint()
        if self._stopped:
            raise trio.ClosedResourceError("the store thread has stopped")
        result = bound()
        self.inline += 1
        return result

    def _slow_inline(self) -> None:
        """A slow inline call: no inlining for a while, and twice as long the next time."""
        self._inline_after = self._clock() + self._backoff
        self._backoff = min(2 * self._backoff, INLINE_BACKOFF_MAX_S)

    def _slow_worker_commit(self) -> None:
        """A slow commit on the worker: no inlining for the current pause, from now."""
        self._inline_after = max(self._inline_after, self._clock() + self._backoff)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the worker until cancelled; then let it finish what was handed to it."""
        self._token = trio.lowlevel.current_trio_token()
        if self._inline_only:
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._stopped = True
        worker = threading.Thread(target=self._serve, name="qkmsd-store", daemon=True)
        worker.start()
        try:
            task_status.started()
            await trio.sleep_forever()
        finally:
            self._stopped = True  # later calls fail at once instead of waiting for ever
            self._queue.put(None)
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(worker.join)

    def _serve(self) -> None:
        """The worker: everything queued while a batch ran becomes the next batch."""
        while (first := self._queue.get()) is not None:
            items = [first]
            stop = False
            while len(items) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                items.append(item)
            self._run_batch(items)
            if stop:
                return

    def _run_batch(self, items: list[_Call]) -> None:
        assert self._store is not None and self._token is not None
        slow = False
        try:
            with self._store.batch():
                for item in items:
                    try:
                        item.result = item.fn()
                    except Exception as exc:  # delivered to that caller only
                        item.error = exc
            # The commit alone: a WAL truncation after it is maintenance, not a slow disk.
            slow = self._store.last_commit_s > WORKER_SLOW_COMMIT_S
        except Exception as exc:  # the commit itself failed: nobody's change is durable
            for item in items:
                item.error, item.result = exc, None
        try:
            self._token.run_sync_soon(self._finished, items, slow)
        except trio.RunFinishedError:
            pass  # the daemon is gone; so are the callers

    def _finished(self, items: list[_Call], slow_commit: bool) -> None:
        self.batches += 1
        self.calls += len(items)
        if slow_commit:
            self._slow_worker_commit()
        for item in items:
            item.done.set()

    def statistics(self) -> StoreStatistics:
        """Batches committed, the calls they carried, and the calls run inline."""
        return StoreStatistics(batches=self.batches, calls=self.calls, inline=self.inline)


class StoreStatistics(msgspec.Struct, frozen=True):
    """What the store thread has done since the node started."""

    batches: int
    """Worker transactions committed."""
    calls: int
    """Store calls those transactions carried."""
    inline: int
    """Store calls run on the event loop instead (``call_inline``)."""
