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
"""

from __future__ import annotations

import dataclasses
import functools
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
        task_status.started()
        async with self._recv:
            while True:
                items = [await self._recv.receive()]
                while len(items) < MAX_BATCH:
                    try:
                        items.append(self._recv.receive_nowait())
                    except trio.WouldBlock:
                        break
                await self._run_batch(items)

    async def _run_batch(self, items: list[_Call]) -> None:
        assert self._store is not None
        store = self._store

        def work() -> None:
            with store.batch():
                for item in items:
                    try:
                        item.result = item.fn()
                    except Exception as exc:  # delivered to that caller only
                        item.error = exc

        try:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(work, limiter=self._limiter)
        except Exception as exc:  # the commit itself failed: nobody's change is durable
            for item in items:
                item.error, item.result = exc, None
        self.batches += 1
        self.calls += len(items)
        for item in items:
            item.done.set()

    def statistics(self) -> dict[str, Any]:
        return {"batches": self.batches, "calls": self.calls}
