"""Runs key store calls on a worker thread, one at a time.

SQLite with ``synchronous=FULL`` fsyncs on every commit: that must not block
the event loop.  One call at a time keeps the store single-writer.  A call
that has started always finishes (it is not abandoned on cancellation), so a
transaction is never cut in half by a cancelled task.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import trio

T = TypeVar("T")


class StoreThread:
    def __init__(self) -> None:
        self._limiter = trio.CapacityLimiter(1)

    async def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await trio.to_thread.run_sync(
            functools.partial(fn, *args, **kwargs), limiter=self._limiter
        )
