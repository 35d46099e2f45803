"""The ETSI 014 benchmark's load: SAE pairs making round trips, on a schedule, in one window.

A **round trip** is ``enc_keys`` by the master SAE at KME_A, then ``dec_keys`` by the slave
SAE at KME_B with the IDs, over mutual TLS on kept-alive connections, 256-bit keys, with a
check that both ends got the same bytes (``Mismatch`` otherwise: a bug, never a figure).
Three generators (``GENERATORS``), each ``run(pairs, batch, seconds, tally, rate)`` and
returning the window's length in seconds:

- ``trio``: trio tasks with ``TrioEtsi014Client``;
- ``threads``: one thread per pair with the blocking ``Etsi014Client``;
- ``curl``: one thread per pair with libcurl, as an SAE written in C.

Every pair first makes one round trip outside the window (TLS handshakes, first-request
costs), then all start together.  The client side only: what the servers did in the
window is measured by whoever passes ``Tally.on_start`` and ``Tally.on_end``.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from qkms_client import (
    Etsi014Client,
    Etsi014Error,
    ServiceUnavailable,
    TransportError,
    TrioEtsi014Client,
)

KEY_BITS = 256
WARM_UP_ATTEMPTS = 50
RETRYABLE = (ServiceUnavailable, TransportError)


@dataclass(frozen=True)
class Pair:
    """One master SAE at KME_A and its slave SAE at KME_B, with their TLS files."""

    master: str
    slave: str
    a_url: str
    b_url: str
    ca: str
    m_cert: str
    m_key: str
    s_cert: str
    s_key: str


def _nothing() -> None:
    pass


@dataclass
class Tally:
    """What one window's round trips gave, client side.

    ``on_start`` runs once every pair is warm, right before the window opens;
    ``on_end`` once every round trip of the window has ended.
    """

    on_start: Callable[[], None] = _nothing
    on_end: Callable[[], None] = _nothing
    latencies: list[float] = field(default_factory=list)
    keys: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    warm_up_retries: dict[str, int] = field(default_factory=dict)
    pairs_not_started: int = 0

    def error(self, exc: Exception) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def warm_up_retry(self, exc: Exception) -> None:
        name = type(exc).__name__
        self.warm_up_retries[name] = self.warm_up_retries.get(name, 0) + 1


class Mismatch(Exception):
    """The slave got other bytes than the master: a bug, never a benchmark figure."""


def _check(sent: Any, got: Any) -> None:
    if {k.key_id: k.key for k in sent} != {k.key_id: k.key for k in got}:
        raise Mismatch("slave and master keys differ")


@dataclass
class Schedule:
    """When one pair starts its round trips within the timed window.

    Closed loop (``rate`` None): each starts as soon as the one before ends, so the
    figures are the system's saturation throughput and the latency at saturation.
    Paced (open loop, ``rate`` round trips/s over all pairs): pair ``index`` of ``pairs``
    starts one every ``pairs / rate`` s, the pairs evenly staggered, on a timetable fixed
    in advance.  Latency counts from the planned start, so a round trip that starts late
    because the system fell behind is charged for the wait (no coordinated omission).
    """

    rate: float | None
    index: int
    pairs: int
    start: float
    stop: float
    count: int = 0

    def next_start(self) -> float | None:
        """The next planned start (perf_counter time), or None once the window is over."""
        if self.rate is None:
            now = time.perf_counter()
            return now if now < self.stop else None
        interval = self.pairs / self.rate
        planned = self.start + (self.count + self.index / self.pairs) * interval
        self.count += 1
        return planned if planned < self.stop else None


# --- load generator 1: trio tasks, TrioEtsi014Client ------------------------------------------


def run_trio(
    pairs: list[Pair], batch: int, seconds: float, tally: Tally, rate: float | None
) -> float:
    elapsed = 0.0

    async def pair_task(
        i: int, p: Pair, warm: trio.Semaphore, go: trio.Event, window: list[float]
    ) -> None:
        a = TrioEtsi014Client(p.a_url, ca=p.ca, cert=p.m_cert, key=p.m_key)
        b = TrioEtsi014Client(p.b_url, ca=p.ca, cert=p.s_cert, key=p.s_key)
        async with a, b:

            async def round_trip() -> None:
                keys = await a.get_key(p.slave, number=batch, size=KEY_BITS)
                got = await b.get_key_with_ids(p.master, [k.key_id for k in keys])
                _check(keys, got)

            # TLS handshakes and first-request costs stay out of the figures.
            ready = False
            for _ in range(WARM_UP_ATTEMPTS):
                try:
                    await round_trip()
                    ready = True
                    break
                except RETRYABLE as exc:
                    tally.warm_up_retry(exc)
                    await trio.sleep(0.2)
            warm.release()
            await go.wait()
            if not ready:
                tally.pairs_not_started += 1
                return
            schedule = Schedule(rate, i, len(pairs), window[0], window[1])
            while (t0 := schedule.next_start()) is not None:
                await trio.sleep(max(0.0, t0 - time.perf_counter()))
                try:
                    await round_trip()
                except Etsi014Error as exc:
                    tally.error(exc)
                    if isinstance(exc, ServiceUnavailable) and rate is None:
                        await trio.sleep(0.01)
                    continue
                tally.latencies.append(time.perf_counter() - t0)
                tally.keys += batch

    async def main() -> None:
        nonlocal elapsed
        warm = trio.Semaphore(0, max_value=len(pairs))
        go = trio.Event()
        window = [0.0, 0.0]
        async with trio.open_nursery() as nursery:
            for i, p in enumerate(pairs):
                nursery.start_soon(pair_task, i, p, warm, go, window)
            for _ in pairs:
                await warm.acquire()
            tally.on_start()
            started = time.perf_counter()
            window[:] = [started, started + seconds]
            go.set()
        elapsed = time.perf_counter() - started
        tally.on_end()

    trio.run(main)
    return elapsed


# --- load generators 2 and 3: one thread per pair, blocking clients --------------------------


class _QkmsPair:
    """A round trip with ``Etsi014Client`` (Python: ssl + h11)."""

    def __init__(self, p: Pair, batch: int) -> None:
        self._p, self._batch = p, batch
        self._a = Etsi014Client(p.a_url, ca=p.ca, cert=p.m_cert, key=p.m_key)
        self._b = Etsi014Client(p.b_url, ca=p.ca, cert=p.s_cert, key=p.s_key)

    def round_trip(self) -> None:
        keys = self._a.get_key(self._p.slave, number=self._batch, size=KEY_BITS)
        got = self._b.get_key_with_ids(self._p.master, [k.key_id for k in keys])
        _check(keys, got)

    def close(self) -> None:
        self._a.close()
        self._b.close()


class _CurlPair:
    """A round trip with libcurl (pycurl): an SAE written in C, as routers, VPN gateways
    and encryptors are.  One easy handle per KME keeps its TLS connection alive; libcurl
    runs each request without the GIL, so Python's share is building bodies and reading
    the JSON."""

    def __init__(self, p: Pair, batch: int) -> None:
        import pycurl

        self._pycurl = pycurl
        self._batch = batch
        self._enc = (
            f"{p.a_url}/api/v1/keys/{p.slave}/enc_keys",
            json.dumps({"number": batch, "size": KEY_BITS}).encode(),
        )
        self._dec_url = f"{p.b_url}/api/v1/keys/{p.master}/dec_keys"
        self._a = self._handle(p.ca, p.m_cert, p.m_key)
        self._b = self._handle(p.ca, p.s_cert, p.s_key)

    def _handle(self, ca: str, cert: str, key: str) -> Any:
        pycurl = self._pycurl
        c = pycurl.Curl()
        c.setopt(pycurl.CAINFO, ca)
        c.setopt(pycurl.SSLCERT, cert)
        c.setopt(pycurl.SSLKEY, key)
        c.setopt(pycurl.HTTP_VERSION, pycurl.CURL_HTTP_VERSION_1_1)
        c.setopt(pycurl.HTTPHEADER, ["Content-Type: application/json", "Accept: application/json"])
        c.setopt(pycurl.TIMEOUT, 30)
        return c

    def _post(self, c: Any, url: str, body: bytes) -> Any:
        chunks: list[bytes] = []
        c.setopt(self._pycurl.URL, url)
        c.setopt(self._pycurl.POSTFIELDS, body)
        c.setopt(self._pycurl.WRITEFUNCTION, chunks.append)
        try:
            c.perform()
        except self._pycurl.error as exc:
            raise TransportError(f"libcurl: {exc.args[-1]}") from None
        status = c.getinfo(self._pycurl.RESPONSE_CODE)
        try:
            answer = json.loads(b"".join(chunks) or b"{}")  # a 401 has no body
        except ValueError:
            raise Etsi014Error(f"HTTP {status} with a body that is not JSON") from None
        if status == 503:
            raise ServiceUnavailable(answer.get("message", ""))
        if status != 200:
            raise Etsi014Error(f"HTTP {status}: {answer.get('message', '')}")
        return answer

    def round_trip(self) -> None:
        sent = self._post(self._a, *self._enc)["keys"]
        if len(sent) != self._batch:
            raise Etsi014Error(f"asked for {self._batch} keys, KME delivered {len(sent)}")
        ids = [{"key_ID": k["key_ID"]} for k in sent]
        got = self._post(self._b, self._dec_url, json.dumps({"key_IDs": ids}).encode())["keys"]
        if {k["key_ID"]: k["key"] for k in sent} != {k["key_ID"]: k["key"] for k in got}:
            raise Mismatch("slave and master keys differ")

    def close(self) -> None:
        self._a.close()
        self._b.close()


def _run_blocking(
    open_pair: Callable[[Pair, int], _QkmsPair | _CurlPair],
    pairs: list[Pair],
    batch: int,
    seconds: float,
    tally: Tally,
    rate: float | None,
) -> float:
    lock = threading.Lock()
    barrier = threading.Barrier(len(pairs) + 1)
    window = [0.0, 0.0]
    crashed: list[BaseException] = []

    def worker(i: int, p: Pair) -> None:
        try:
            run_pair(i, p)
        except BaseException as exc:  # a Mismatch, a bug: stop everyone, report it
            crashed.append(exc)
            barrier.abort()

    def run_pair(i: int, p: Pair) -> None:
        latencies: list[float] = []
        keys_done = 0
        errors: list[Exception] = []
        retries: list[Exception] = []
        client = open_pair(p, batch)
        try:
            ready = False
            for _ in range(WARM_UP_ATTEMPTS):
                try:
                    client.round_trip()
                    ready = True
                    break
                except RETRYABLE as exc:
                    retries.append(exc)
                    time.sleep(0.2)
            barrier.wait()
            barrier.wait()  # the main thread set ``window`` in between
            schedule = Schedule(rate, i, len(pairs), window[0], window[1])
            while ready and (t0 := schedule.next_start()) is not None:
                time.sleep(max(0.0, t0 - time.perf_counter()))
                try:
                    client.round_trip()
                except Etsi014Error as exc:
                    errors.append(exc)
                    if isinstance(exc, ServiceUnavailable) and rate is None:
                        time.sleep(0.01)
                    continue
                latencies.append(time.perf_counter() - t0)
                keys_done += batch
        finally:
            client.close()
        with lock:
            tally.latencies += latencies
            tally.keys += keys_done
            tally.pairs_not_started += not ready
            for error in errors:
                tally.error(error)
            for retry in retries:
                tally.warm_up_retry(retry)

    threads = [
        threading.Thread(target=worker, args=(i, p), daemon=True) for i, p in enumerate(pairs)
    ]
    for t in threads:
        t.start()
    started = time.perf_counter()
    try:
        barrier.wait()
        tally.on_start()
        started = time.perf_counter()
        window[:] = [started, started + seconds]
        barrier.wait()
    except threading.BrokenBarrierError:
        pass  # a worker crashed before the window: its error is raised below
    for t in threads:
        t.join()
    if crashed:
        raise crashed[0]
    elapsed = time.perf_counter() - started
    tally.on_end()
    return elapsed


def run_threads(
    pairs: list[Pair], batch: int, seconds: float, tally: Tally, rate: float | None
) -> float:
    return _run_blocking(_QkmsPair, pairs, batch, seconds, tally, rate)


def run_curl(
    pairs: list[Pair], batch: int, seconds: float, tally: Tally, rate: float | None
) -> float:
    return _run_blocking(_CurlPair, pairs, batch, seconds, tally, rate)


GENERATORS: dict[str, Callable[[list[Pair], int, float, Tally, float | None], float]] = {
    "trio": run_trio,
    "threads": run_threads,
    "curl": run_curl,
}
