"""Group commit: concurrent store calls share a transaction, each keeps its own result."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from qkmsd.keystore import KeyState, KeyStore, KeyStoreError, NewBlock, ServiceKeyNotFound
from qkmsd.storethread import INLINE_BACKOFF_S, INLINE_SLOW_S, WORKER_SLOW_COMMIT_S, StoreThread

LINK = "A~B"


def block(i: int, link: str = LINK) -> NewBlock:
    return NewBlock(link, i, os.urandom(32), 0.01, 1.0, True)


async def test_concurrent_calls_share_commits_and_get_their_own_results(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store)
        results: dict[int, list[int]] = {}

        async def add(i: int) -> None:
            results[i] = await thread.call(store.add_blocks, [block(i)])

        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            async with trio.open_nursery() as callers:
                for i in range(60):
                    callers.start_soon(add, i)
            nursery.cancel_scope.cancel()
        assert results == {i: [i] for i in range(60)}
        assert thread.calls == 60
        assert thread.batches < 60
        assert store.states(LINK, range(60)) == {i: KeyState.RECEIVED for i in range(60)}


async def test_a_failing_call_undoes_only_itself(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        store.add_blocks([block(1)])
        store.mark_ready(LINK, [1])
        thread = StoreThread(store)
        outcome: dict[str, object] = {}

        async def good() -> None:
            outcome["good"] = await thread.call(store.add_blocks, [block(2)])

        async def bad() -> None:
            with pytest.raises(KeyStoreError):
                # A duplicate key id inside one call fails after writing part of it.
                await thread.call(
                    store.cut_service_keys,
                    LINK,
                    [("00000000-0000-0000-0000-000000000001", 8)] * 2,
                    master_sae="S",
                    local_slaves=["T"],
                    expires_at=1e12,
                )
            outcome["bad"] = "raised"

        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            async with trio.open_nursery() as callers:
                callers.start_soon(bad)
                callers.start_soon(good)
            nursery.cancel_scope.cancel()
        assert outcome == {"good": [2], "bad": "raised"}
        # The failed cut consumed nothing: the block is untouched.
        assert store.pool(LINK).ready_bits == 256


async def test_a_call_after_the_thread_stopped_fails_at_once(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            assert await thread.call(store.add_blocks, [block(1)]) == [1]
            nursery.cancel_scope.cancel()
        with trio.fail_after(5), pytest.raises(trio.ClosedResourceError):
            await thread.call(store.add_blocks, [block(2)])
        assert store.states(LINK, [1, 2]) == {1: KeyState.RECEIVED}


async def test_work_handed_over_before_the_end_is_done_before_run_returns(
    tmp_path: Path,
) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            async with trio.open_nursery() as callers:
                for i in range(40):
                    callers.start_soon(thread.call, store.add_blocks, [block(i)])
                await trio.testing.wait_all_tasks_blocked()  # every call handed over
                nursery.cancel_scope.cancel()
        # The callers gave up waiting, but what they handed over was done, and done before
        # run() returned: the worker has exited, so nothing writes afterwards (the daemon
        # closes the store next).
        assert store.states(LINK, range(40)) == {i: KeyState.RECEIVED for i in range(40)}
        assert "qkmsd-store" not in [t.name for t in threading.enumerate()]


# -- call_inline: small calls on the event loop while the worker is idle -----------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def where(store: KeyStore, i: int) -> int:
    """Add block ``i``; return the id of the thread that did."""
    store.add_blocks([block(i)])
    return threading.get_ident()


async def test_an_inline_call_runs_on_the_event_loop_when_the_worker_is_idle(
    tmp_path: Path,
) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            assert await thread.call_inline(where, store, 1) == threading.get_ident()
            assert await thread.call(where, store, 2) != threading.get_ident()
            nursery.cancel_scope.cancel()
        assert (thread.inline, thread.calls) == (1, 1)
        assert store.states(LINK, [1, 2]) == {1: KeyState.RECEIVED, 2: KeyState.RECEIVED}


async def test_an_inline_fetch_is_committed_before_it_returns(tmp_path: Path) -> None:
    # No key reuse: "delivered" is on disk before the key goes out, inline as on the worker.
    key_id = str(uuid.uuid4())
    path = tmp_path / "k.db"
    with KeyStore.open(path, os.urandom(32)) as store:
        store.add_blocks([block(1)])
        store.mark_ready(LINK, [1])
        store.cut_service_keys(
            LINK, [(key_id, 8)], master_sae="S", local_slaves=["T"], expires_at=1e12
        )
        thread = StoreThread(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            [(got, _)] = await thread.call_inline(
                store.fetch_service_keys, [key_id], master_sae="S", requester="T"
            )
            assert (got, thread.inline) == (key_id, 1)
            other = sqlite3.connect(path)  # what a restarted node would read
            try:
                row = other.execute(
                    "SELECT state, material FROM service_keys WHERE key_id = ?", (key_id,)
                ).fetchone()
            finally:
                other.close()
            assert row == ("erased", None)
            with pytest.raises(ServiceKeyNotFound):
                await thread.call_inline(
                    store.fetch_service_keys, [key_id], master_sae="S", requester="T"
                )
            nursery.cancel_scope.cancel()


async def test_an_inline_call_waits_for_the_worker_while_a_batch_runs(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store)
        entered, gate = threading.Event(), threading.Event()

        def slow() -> None:
            entered.set()
            gate.wait(5)

        got: list[int] = []
        done = trio.Event()

        async def inline_call() -> None:
            got.append(await thread.call_inline(where, store, 1))
            done.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            nursery.start_soon(thread.call, slow)
            await trio.to_thread.run_sync(entered.wait)
            nursery.start_soon(inline_call)
            await trio.testing.wait_all_tasks_blocked()
            assert got == []  # queued behind the batch, not run beside it
            gate.set()
            with trio.fail_after(5):
                await done.wait()
            nursery.cancel_scope.cancel()
        assert got[0] != threading.get_ident()
        assert thread.inline == 0


async def test_a_slow_inline_call_sends_the_next_calls_to_the_worker_for_a_while(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the inline calls' (fake) times are under test: a worker commit slow on the real
    # clock of a loaded machine would restart the pause too (its own test is below).
    monkeypatch.setattr("qkmsd.storethread.WORKER_SLOW_COMMIT_S", float("inf"))
    clock = Clock()

    def slow_disk(i: int) -> int:
        clock.now += 2 * INLINE_SLOW_S
        return where(store, i)

    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store, clock=clock)
        loop = threading.get_ident()
        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            assert await thread.call_inline(slow_disk, 1) == loop
            assert await thread.call_inline(where, store, 2) != loop
            clock.now += INLINE_BACKOFF_S
            assert await thread.call_inline(where, store, 3) == loop
            nursery.cancel_scope.cancel()


async def test_a_call_may_set_its_own_limit_for_slow(tmp_path: Path) -> None:
    clock = Clock()

    def busy(i: int) -> int:  # slower than a fetch may be, within its own limit
        clock.now += 2 * INLINE_SLOW_S
        return where(store, i)

    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store, clock=clock)
        loop = threading.get_ident()
        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            assert await thread.call_inline(busy, 1, slow_after=3 * INLINE_SLOW_S) == loop
            assert await thread.call_inline(where, store, 2) == loop  # inlining stays on
            assert await thread.call_inline(busy, 3, slow_after=INLINE_SLOW_S) == loop
            assert await thread.call_inline(where, store, 4) != loop  # past its limit: off
            nursery.cancel_scope.cancel()


async def test_an_inline_call_that_fails_raises_to_its_caller_only(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        thread = StoreThread(store)
        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            with pytest.raises(ServiceKeyNotFound):
                await thread.call_inline(
                    store.fetch_service_keys, [str(uuid.uuid4())], master_sae="S", requester="T"
                )
            assert await thread.call_inline(store.add_blocks, [block(1)]) == [1]
            nursery.cancel_scope.cancel()
        with trio.fail_after(5), pytest.raises(trio.ClosedResourceError):
            await thread.call_inline(store.add_blocks, [block(2)])
        assert store.states(LINK, [1, 2]) == {1: KeyState.RECEIVED}


class FakeStore:
    """Just what StoreThread needs of a store, with a commit that takes ``commit_s`` and
    maintenance after it (a WAL truncation) that takes ``after_commit_s``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.commit_s = 0.0
        self.after_commit_s = 0.0
        self.last_commit_s = 0.0

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        with self.lock:
            yield
            time.sleep(self.commit_s)
            self.last_commit_s = self.commit_s
            time.sleep(self.after_commit_s)

    @contextlib.contextmanager
    def try_hold(self) -> Iterator[bool]:
        held = self.lock.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                self.lock.release()


@contextlib.asynccontextmanager
async def running(store: FakeStore, clock: Clock) -> AsyncIterator[StoreThread]:
    """A StoreThread over ``store`` with ``clock``, its worker running until the block ends."""
    thread = StoreThread(store, clock=clock)
    async with trio.open_nursery() as nursery:
        await nursery.start(thread.run)
        yield thread
        nursery.cancel_scope.cancel()


def on_loop() -> int:
    """Which thread ran the call: the event loop's, or the worker's."""
    return threading.get_ident()


async def test_a_slow_commit_on_the_worker_turns_inlining_off_too() -> None:
    store, clock = FakeStore(), Clock()
    loop = threading.get_ident()
    async with running(store, clock) as thread:
        store.commit_s = 2 * WORKER_SLOW_COMMIT_S  # a disk that stalls
        await thread.call(on_loop)
        store.commit_s = 0.0
        assert await thread.call_inline(on_loop) != loop
        clock.now += INLINE_BACKOFF_S
        assert await thread.call_inline(on_loop) == loop


async def test_a_slow_wal_truncation_after_a_quick_commit_leaves_inlining_on() -> None:
    store, clock = FakeStore(), Clock()
    loop = threading.get_ident()
    async with running(store, clock) as thread:
        store.after_commit_s = 2 * WORKER_SLOW_COMMIT_S
        await thread.call(on_loop)
        assert await thread.call_inline(on_loop) == loop


async def test_slow_commits_on_the_worker_restart_the_pause_without_lengthening_it() -> None:
    # A stall of the machine makes every batch slow for a moment; once it is over, calls
    # go back on the event loop a pause later, not a minute later.
    store, clock = FakeStore(), Clock()
    loop = threading.get_ident()
    async with running(store, clock) as thread:
        store.commit_s = 2 * WORKER_SLOW_COMMIT_S
        for _ in range(8):  # enough to reach the longest pause if each one doubled it
            clock.now += 0.1
            await thread.call(on_loop)
        last = clock.now
        store.commit_s = 0.0
        clock.now = last + INLINE_BACKOFF_S / 2
        assert await thread.call_inline(on_loop) != loop  # restarted by the last
        clock.now = last + INLINE_BACKOFF_S * 1.01
        assert await thread.call_inline(on_loop) == loop


async def test_the_pause_doubles_while_inline_calls_stay_slow() -> None:
    store, clock = FakeStore(), Clock()
    loop = threading.get_ident()

    def slow() -> int:
        clock.now += 2 * INLINE_SLOW_S
        return threading.get_ident()

    async with running(store, clock) as thread:
        assert await thread.call_inline(slow) == loop  # pause 1 s
        clock.now += INLINE_BACKOFF_S
        assert await thread.call_inline(slow) == loop  # slow again: pause 2 s
        clock.now += INLINE_BACKOFF_S
        assert await thread.call_inline(on_loop) != loop
        clock.now += INLINE_BACKOFF_S
        assert await thread.call_inline(on_loop) == loop  # fast: back to 1 s
        assert await thread.call_inline(slow) == loop
        clock.now += INLINE_BACKOFF_S
        assert await thread.call_inline(on_loop) == loop


async def test_inline_mode_runs_every_call_on_the_event_loop_as_its_own_transaction(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """The simulator's mode: no worker thread, so a virtual clock never jumps during a call."""
    master = os.urandom(32)
    with KeyStore.open(tmp_path / "k.db", master, durable=False) as store:
        thread = StoreThread(store, inline=True)
        loop_thread = threading.get_ident()
        ran_on: list[int] = []

        def add(i: int) -> list[int]:
            ran_on.append(threading.get_ident())
            return store.add_blocks([block(i)])

        async with trio.open_nursery() as nursery:
            await nursery.start(thread.run)
            before = trio.current_time()
            assert await thread.call(add, 1) == [1]
            assert await thread.call_inline(add, 2) == [2]
            with pytest.raises(KeyStoreError):
                await thread.call(store.add_blocks, [block(3, link="bad link id!")])
            assert await thread.call(add, 4) == [4]
            assert trio.current_time() == before
            nursery.cancel_scope.cancel()
        assert ran_on == [loop_thread] * 3
        assert thread.statistics().inline == 3  # the failed call counts in none
        with pytest.raises(trio.ClosedResourceError):
            await thread.call(add, 5)
    with KeyStore.open(tmp_path / "k.db", master) as again:
        assert again.max_block_id(LINK) == 4
