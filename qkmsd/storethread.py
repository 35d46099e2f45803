"""Runs key store calls on a worker thread, with group commit.

SQLite with ``synchronous=FULL`` fsyncs on every commit: that must not block the
event loop, and one fsync per request would cap a node at the disk's fsync rate.
So calls queue up; one worker takes everything queued, runs it on a thread inside
one store transaction (``KeyStore.batch``: each call under its own savepoint),
commits once, and only then hands each caller its result.  Under load, many
concurrent requests share one fsync; alone, a call costs what it did before.

A call that has started always finishes (it is not abandoned on cancellation), so
a transaction is never cut in half by a cancelled task; the caller's own wait is
cancellable.

The worker is one long-lived thread of our own rather than ``trio.to_thread``:
handing a batch to it and back costs half as much CPU (no thread cache, no renaming
the thread per job), and a node makes a hand-off for every key request.
"""

from __future__ import annotations

import dataclasses
import functools
import queue
import threading
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import trio

T = TypeVar("T")

MAX_BATCH = 256


class Batchable(Protocol):
    def batch(self) -> Any: ...


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
    """

    def __init__(self, store: Batchable | None = None) -> None:
        self._store = store
        self._limiter = trio.CapacityLimiter(1)
        self._send, self._recv = trio.open_memory_channel[_Call](10_000)
        self.batches = 0
        self.calls = 0

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        bound = functools.partial(fn, *args, **kwargs)
        if self._store is None:
            return await trio.to_thread.run_sync(bound, limiter=self._limiter)
        item = _Call(bound)
        await self._send.send(item)
        await item.done.wait()
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Drain the queue in batches until cancelled."""
        jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        worker = threading.Thread(target=_serve_jobs, args=(jobs,), name="qkmsd-store", daemon=True)
        worker.start()
        try:
            task_status.started()
            async with self._recv:
                while True:
                    items = [await self._recv.receive()]
                    while len(items) < MAX_BATCH:
                        try:
                            items.append(self._recv.receive_nowait())
                        except trio.WouldBlock:
                            break
                    await self._run_batch(items, jobs)
        finally:
            jobs.put(None)  # the worker ends; no batch is in flight (they are awaited shielded)

    async def _run_batch(
        self, items: list[_Call], jobs: queue.SimpleQueue[Callable[[], None] | None]
    ) -> None:
        assert self._store is not None
        store = self._store
        token = trio.lowlevel.current_trio_token()
        finished = trio.Event()
        failure: list[Exception] = []

        def work() -> None:
            try:
                with store.batch():
                    for item in items:
                        try:
                            item.result = item.fn()
                        except Exception as exc:  # delivered to that caller only
                            item.error = exc
            except Exception as exc:  # the commit itself failed: nobody's change is durable
                failure.append(exc)
            token.run_sync_soon(finished.set)

        jobs.put(work)
        with trio.CancelScope(shield=True):
            await finished.wait()
        if failure:
            for item in items:
                item.error, item.result = failure[0], None
        self.batches += 1
        self.calls += len(items)
        for item in items:
            item.done.set()

    def statistics(self) -> dict[str, Any]:
        return {"batches": self.batches, "calls": self.calls}


def _serve_jobs(jobs: queue.SimpleQueue[Callable[[], None] | None]) -> None:
    while (job := jobs.get()) is not None:
        job()
