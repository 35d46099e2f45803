"""ETSI GS QKD 014 key delivery: throughput and latency of two real qkmsd daemons.

A lab pair (``cli._lab.Lab``: KME_A and KME_B as subprocesses, one simulated QKD link fast
enough that key never runs short) serves N SAE pairs: SAE_M<i> on KME_A is the master,
SAE_S<i> on KME_B the slave.  One round trip is ``enc_keys`` at KME_A then ``dec_keys`` at
KME_B with the IDs, both over mutual TLS on kept-alive connections, 256-bit keys, and a
check that both ends got the same bytes.  For 1, 8 and 64 concurrent pairs, batched (64 keys a
request) and single-key, with three load generators (trio + ``TrioEtsi014Client``; one
thread per pair with the blocking ``Etsi014Client``; one thread per pair with libcurl, as an
SAE written in C), closed loop (each pair starts its next round trip when the last one
ends: saturation) and, for the single-key target, paced (open loop: 500 round trips/s over
8 pairs on a fixed timetable, latency counted from the planned start), it reports:

- keys/s delivered to both ends and round trips/s,
- p50 / p99 latency of the full round trip,
- CPU used by the load generator and by each daemon (cores: CPU seconds per second).

The paced load runs in ``--windows`` windows per generator, the generators' order reversed
each window, and a summary says in how many windows each generator saw the p99 target met:
the machine's speed drifts by about 25 % from one minute to the next, so one window is
one sample, not a verdict.

Run::

    .venv/bin/python benchmarks/etsi014_bench.py            # about 4 minutes
    .venv/bin/python benchmarks/etsi014_bench.py --seconds 3 --pairs 8 --generators trio
    .venv/bin/python benchmarks/etsi014_bench.py --pairs '' --batches '' --windows 10   # paced only

It prints a table and writes ``benchmarks/results/etsi014.json``.  The load generator runs on
the same machine as the daemons and competes with them for CPU: the figures are the whole
system's, which is what an operator running SAEs next to their KME sees.
"""

# ruff: noqa: E501

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cli._lab import Lab  # noqa: E402
from cli._topology import Topology, topology_from_mapping  # noqa: E402
from qkms_client import (  # noqa: E402
    Etsi014Client,
    Etsi014Error,
    ServiceUnavailable,
    TransportError,
    TrioEtsi014Client,
)

RESULTS = ROOT / "benchmarks" / "results" / "etsi014.json"
KEY_BITS = 256
BATCH = 64
# The simulated link only has to stay ahead of what the SAEs take: 5 Mbit/s is about 20,000
# 256-bit keys a second, four times the fastest batched delivery measured, and already more
# than deployed QKD links give.  A faster link would only add the cost of taking key in
# (reported as "daemons at rest") to every figure.
RATE_BPS = 5e6
BLOCK_BITS = 1 << 20
TARGET_BATCHED_KEYS_PER_S = 2000.0
TARGET_SINGLE_RT_PER_S = 500.0
TARGET_SINGLE_P99_MS = 20.0
TARGET_SINGLE_PAIRS = 8
# A paced window "held" its rate if it delivered at least this share of the planned round trips.
RATE_HELD = 0.99
# Which servers a row measured: qkmsd, or (``--control``) etsi014_null_kms's null KMEs.
QKMSD = "qkmsd"
NULL_KMS = "null"


def topology(pairs: int, rate_bps: float) -> Topology:
    saes: dict[str, Any] = {}
    for i in range(pairs):
        saes[f"SAE_M{i}"] = {"kme": "KME_A"}
        saes[f"SAE_S{i}"] = {"kme": "KME_B"}
    return topology_from_mapping(
        {
            "name": "etsi014-bench",
            "description": "KME_A and KME_B, one fast simulated link, N SAE pairs",
            "defaults": {
                "driver": "paired",
                "params": {"rate_bps": rate_bps, "block_bits": BLOCK_BITS},
            },
            "nodes": {"KME_A": {"controller": True, "priority": 100}, "KME_B": {}},
            "links": [{"a": "KME_A", "b": "KME_B"}],
            "saes": saes,
        },
        label="etsi014 benchmark topology",
    )


@dataclass
class Pair:
    master: str
    slave: str
    a_url: str
    b_url: str
    ca: str
    m_cert: str
    m_key: str
    s_cert: str
    s_key: str


def pairs_of(manifest: dict[str, Any], n: int) -> list[Pair]:
    saes = manifest["saes"]
    return [
        Pair(
            master=f"SAE_M{i}",
            slave=f"SAE_S{i}",
            a_url=manifest["kmes"]["KME_A"]["url"],
            b_url=manifest["kmes"]["KME_B"]["url"],
            ca=manifest["ca"],
            m_cert=saes[f"SAE_M{i}"]["cert"],
            m_key=saes[f"SAE_M{i}"]["key"],
            s_cert=saes[f"SAE_S{i}"]["cert"],
            s_key=saes[f"SAE_S{i}"]["key"],
        )
        for i in range(n)
    ]


@dataclass
class AccessLog:
    """A daemon's log file, read for the access-log lines (``http.request``) of one window.

    ``duration_ms`` in those lines is the time inside the daemon from the request's first
    bytes read to its answer ready to send: the rest of a round trip's latency is sending,
    the network, the client, and the wait before the daemon reads the request at all.
    """

    path: Path
    offset: int = 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size

    def durations(self, endpoint: str) -> list[float]:
        """``duration_ms`` of the 200 answers to ``endpoint`` logged since ``mark``."""
        with self.path.open("rb") as f:
            f.seek(self.offset)
            data = f.read()
        out = []
        suffix = f"/{endpoint} ".encode()
        for line in data.splitlines():
            if b"event=http.request" in line and suffix in line and b" status=200 " in line:
                _, _, rest = line.partition(b" duration_ms=")
                if rest:
                    out.append(float(rest.split(b" ", 1)[0]))
        return out


# The request each daemon serves in a round trip: its in-daemon time is reported per row.
ENDPOINTS = {"KME_A": "enc_keys", "KME_B": "dec_keys"}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    keys: int = 0
    errors: dict[str, int] = field(default_factory=dict)

    warm_up_retries: dict[str, int] = field(default_factory=dict)
    pairs_not_started: int = 0
    # CPU seconds (this process, and each daemon) within the timed window only.
    cpu: dict[str, float] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    logs: dict[str, AccessLog] = field(default_factory=dict)
    # Seconds each daemon's threads spent waiting, runnable, for a core (within the window).
    cpu_wait: dict[str, float | None] = field(default_factory=dict)
    # Milliseconds inside each daemon for the request it serves in a round trip.
    in_daemon: dict[str, list[float]] = field(default_factory=dict)

    def start_window(self) -> None:
        self.cpu = {"load_generator": self_cpu_seconds()}
        self.cpu |= {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.cpu_wait = self._cpu_waits()
        for log in self.logs.values():
            log.mark()

    def end_window(self) -> None:
        now = {"load_generator": self_cpu_seconds()}
        now |= {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.cpu = {n: now[n] - self.cpu[n] for n in now}
        self.cpu_wait = {n: _minus(w, self.cpu_wait.get(n)) for n, w in self._cpu_waits().items()}
        self.in_daemon = {n: log.durations(ENDPOINTS[n]) for n, log in self.logs.items()}

    def _cpu_waits(self) -> dict[str, float | None]:
        # The daemons only: the generators' threads end with the window, and their counts
        # with them.
        return {n: cpu_wait_seconds(p) for n, p in self.pids.items()}

    def error(self, exc: Exception) -> None:
        name = type(exc).__name__
        self.errors[name] = self.errors.get(name, 0) + 1

    def warm_up_retry(self, exc: Exception) -> None:
        name = type(exc).__name__
        self.warm_up_retries[name] = self.warm_up_retries.get(name, 0) + 1


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


class Mismatch(Exception):
    """The slave got other bytes than the master: a bug, never a benchmark figure."""


def _check(sent: Any, got: Any) -> None:
    if {k.key_id: k.key for k in sent} != {k.key_id: k.key for k in got}:
        raise Mismatch("slave and master keys differ")


# --- load generator 1: trio tasks, TrioEtsi014Client ------------------------------------------

WARM_UP_ATTEMPTS = 50
RETRYABLE = (ServiceUnavailable, TransportError)


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
            tally.start_window()
            started = time.perf_counter()
            window[:] = [started, started + seconds]
            go.set()
        elapsed = time.perf_counter() - started
        tally.end_window()

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
        tally.start_window()
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
    tally.end_window()
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


# --- measurement helpers ----------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process (all its threads), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_wait_seconds(pid: int, proc: Path = Path("/proc")) -> float | None:
    """How long the threads of a process have waited, runnable, for a core (Linux schedstat).

    The sum over its live threads of the second field of ``task/*/schedstat`` (run-queue
    wait in ns); ``None`` where the kernel does not keep it.
    """
    total = 0
    try:
        tasks = list((proc / str(pid) / "task").iterdir())
    except OSError:
        return None
    for task in tasks:
        try:
            total += int((task / "schedstat").read_text().split()[1])
        except (OSError, IndexError, ValueError):
            continue  # a thread that ended meanwhile
    return total / 1e9


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def wait_for_key(pair: Pair, keys: int) -> None:
    with Etsi014Client(pair.a_url, ca=pair.ca, cert=pair.m_cert, key=pair.m_key) as client:
        deadline = time.monotonic() + 60
        while client.status(pair.slave).stored_key_count < keys:
            if time.monotonic() > deadline:
                raise SystemExit("no key after 60 s: is the lab link up? see the lab's logs")
            time.sleep(0.1)


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "openssl": ssl.OPENSSL_VERSION,
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        # Anything else running on the machine skews the figures: compare with nproc.
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def code_version(tree: Path) -> dict[str, Any]:
    """The commit of the code tree measured, and whether it had uncommitted changes."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(tree), *args], capture_output=True, text=True, timeout=10
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def filesystem_of(path: Path) -> str:
    """The mount's file system type (fsync cost depends on it)."""
    best, kind = "", "?"
    try:
        for line in Path("/proc/mounts").read_text().splitlines():
            _, mount, fstype, *_ = line.split()
            if str(path).startswith(mount) and len(mount) > len(best):
                best, kind = mount, fstype
    except OSError:
        pass
    return kind


# --- the run ----------------------------------------------------------------------------------


def check_alive(lab: Lab, manifest: dict[str, Any]) -> None:
    """Stop the benchmark if a daemon died: its figures would be meaningless."""
    for node, kme in manifest["kmes"].items():
        try:
            state = Path(f"/proc/{kme['pid']}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            state = "gone"
        if state in ("Z", "gone"):
            tail = Path(kme["log"]).read_text(errors="replace").splitlines()[-30:]
            raise SystemExit(f"{node} died during the benchmark; its log ends:\n" + "\n".join(tail))


def scenario(
    lab_pids: dict[str, int],
    generator: str,
    pairs: list[Pair],
    batch: int,
    seconds: float,
    rate: float | None = None,
    logs: dict[str, Path] | None = None,
) -> dict[str, Any]:
    """One timed window; with the daemons' ``logs``, their in-daemon request times too."""
    tally = Tally(pids=lab_pids, logs={n: AccessLog(p) for n, p in (logs or {}).items()})
    elapsed = GENERATORS[generator](pairs, batch, seconds, tally, rate)
    trips = len(tally.latencies)
    return {
        "generator": generator,
        "paced_round_trips_per_s": rate,
        "pairs": len(pairs),
        "keys_per_request": batch,
        "seconds": round(elapsed, 3),
        "round_trips": trips,
        "round_trips_per_s": trips / elapsed,
        "keys_per_s": tally.keys / elapsed,
        "p50_ms": percentile(tally.latencies, 0.50) * 1000,
        "p99_ms": percentile(tally.latencies, 0.99) * 1000,
        "mean_ms": (statistics.fmean(tally.latencies) * 1000) if trips else float("nan"),
        "errors": tally.errors,
        "warm_up_retries": tally.warm_up_retries,
        "pairs_not_started": tally.pairs_not_started,
        "load_generator_cpu_ms_per_round_trip": (
            tally.cpu["load_generator"] * 1000 / trips if trips else float("nan")
        ),
        "cpu_cores": {n: round(v / elapsed, 3) for n, v in tally.cpu.items()},
        # A daemon's threads runnable but waiting for one of the cores, in ms per second of
        # the window: how much of the tail is queueing for the machine.
        "cpu_wait_ms_per_s": {
            n: None if w is None else round(w * 1000 / elapsed, 1)
            for n, w in tally.cpu_wait.items()
        },
        # Every latency of the window, for the summary's p99 over all windows of a paced load;
        # left out of the JSON (see ``for_json``).
        "_latencies_ms": sorted(x * 1000 for x in tally.latencies),
        "in_daemon_ms": {
            f"{n} {ENDPOINTS[n]}": {
                "p50": percentile(d, 0.50),
                "p99": percentile(d, 0.99),
                "requests": len(d),
            }
            for n, d in tally.in_daemon.items()
        },
    }


def verdict(row: dict[str, Any]) -> str:
    if row.get("kms") == NULL_KMS:
        return "control"  # the HTTP stack alone: a measure of the machine, not a result
    if row["keys_per_request"] > 1:
        ok = row["keys_per_s"] >= TARGET_BATCHED_KEYS_PER_S
        return f"{'met' if ok else 'MISSED'} (>= {TARGET_BATCHED_KEYS_PER_S:,.0f} keys/s)"
    if row["pairs"] != TARGET_SINGLE_PAIRS:
        return ""
    rate = row["paced_round_trips_per_s"]
    if rate is None:  # saturation: both halves of the target, at whatever rate 8 pairs reach
        ok = (
            row["round_trips_per_s"] >= TARGET_SINGLE_RT_PER_S
            and row["p99_ms"] < TARGET_SINGLE_P99_MS
        )
        return (
            f"{'met' if ok else 'MISSED'} (>= {TARGET_SINGLE_RT_PER_S:,.0f} rt/s with "
            f"p99 < {TARGET_SINGLE_P99_MS:g} ms, at saturation)"
        )
    if rate < TARGET_SINGLE_RT_PER_S:
        return ""  # a lighter load than the target's (a sweep of rates): nothing to judge
    ok = row["round_trips_per_s"] >= RATE_HELD * rate and row["p99_ms"] < TARGET_SINGLE_P99_MS
    return (
        f"{'met' if ok else 'MISSED'} ({TARGET_SINGLE_RT_PER_S:,.0f} rt/s held, "
        f"p99 < {TARGET_SINGLE_P99_MS:g} ms)"
    )


def paced_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per generator and paced load: how many windows held the latency target."""
    groups: dict[tuple[str, str, int, float], list[dict[str, Any]]] = {}
    for r in rows:
        if r["paced_round_trips_per_s"] is not None:
            key = (r.get("kms", QKMSD), r["generator"], r["pairs"], r["paced_round_trips_per_s"])
            groups.setdefault(key, []).append(r)
    out = []
    for (kms, generator, pairs, rate), group in groups.items():
        p99 = sorted(r["p99_ms"] for r in group)
        held = [r for r in group if r["round_trips_per_s"] >= RATE_HELD * rate]
        out.append(
            {
                "kms": kms,
                "generator": generator,
                "pairs": pairs,
                "paced_round_trips_per_s": rate,
                "windows": len(group),
                "windows_rate_held": len(held),
                "windows_p99_under_target": sum(r["p99_ms"] < TARGET_SINGLE_P99_MS for r in held),
                "p99_ms_min_median_max": [p99[0], statistics.median(p99), p99[-1]],
                # The p99 of every round trip of every window held, as one measurement.
                "p99_ms_all_windows": _pooled_p99(held),
                "generator_cpu_ms_per_round_trip_median": statistics.median(
                    r["load_generator_cpu_ms_per_round_trip"] for r in group
                ),
            }
        )
    return out


def _pooled_p99(rows: list[dict[str, Any]]) -> float | None:
    if not rows or any("_latencies_ms" not in r for r in rows):
        return None
    return percentile([x for r in rows for x in r["_latencies_ms"]], 0.99)


def for_json(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows without their raw latencies (thousands a row)."""
    return [{k: v for k, v in r.items() if k != "_latencies_ms"} for r in rows]


def summary_lines(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for s in summary:
        low, mid, high = s["p99_ms_min_median_max"]
        pooled = s.get("p99_ms_all_windows")
        who = s["generator"] + (" against null KMEs" if s.get("kms") == NULL_KMS else "")
        lines.append(
            f"{who:<8} {s['pairs']} pairs at {s['paced_round_trips_per_s']:g}/s: "
            f"p99 < {TARGET_SINGLE_P99_MS:g} ms in {s['windows_p99_under_target']} of "
            f"{s['windows']} windows (p99 {low:.1f} / {mid:.1f} / {high:.1f} ms min / median / max"
            + ("" if pooled is None else f"; {pooled:.1f} ms over all their round trips")
            + f"; generator {s['generator_cpu_ms_per_round_trip_median']:.2f} ms CPU per round trip)"
        )
    return lines


def control_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How qkmsd's paced windows fared against the machine's speed at the time.

    With ``--control`` each paced window of qkmsd has a twin against the null KMEs, run
    right before or after it.  Per generator and load: qkmsd's windows under the target,
    all and split at the median of their twins' p99 (the machine's faster and slower
    half of the run), and the rank correlation of the two p99s.
    """
    twins: dict[tuple[str, int, float], tuple[list[float], list[float]]] = {}
    for r in rows:
        if r["paced_round_trips_per_s"] is None:
            continue
        key = (r["generator"], r["pairs"], r["paced_round_trips_per_s"])
        ours, null = twins.setdefault(key, ([], []))
        (null if r.get("kms") == NULL_KMS else ours).append(r["p99_ms"])
    out = []
    for (generator, pairs, rate), (ours, null) in twins.items():
        n = min(len(ours), len(null))
        if n == 0:
            continue
        # Twins in run order; sorted, the machine's fastest windows come first.
        pairs_p99 = sorted(zip(null[:n], ours[:n], strict=True))
        faster, slower = pairs_p99[: (n + 1) // 2], pairs_p99[(n + 1) // 2 :]
        out.append(
            {
                "generator": generator,
                "pairs": pairs,
                "paced_round_trips_per_s": rate,
                "twins": n,
                "under_target": _under_target(pairs_p99),
                "faster_half": {"windows": len(faster), "under_target": _under_target(faster)},
                "slower_half": {"windows": len(slower), "under_target": _under_target(slower)},
                "null_p99_median_ms": statistics.median(x for x, _ in pairs_p99),
                "rank_correlation": _rank_correlation(pairs_p99),
            }
        )
    return out


def _under_target(twins: list[tuple[float, float]]) -> int:
    """How many of the (null p99, qkmsd p99) twins have qkmsd under the target."""
    return sum(ours < TARGET_SINGLE_P99_MS for _, ours in twins)


def _ranks(values: list[float]) -> list[int]:
    ranks = [0] * len(values)
    for rank, i in enumerate(sorted(range(len(values)), key=values.__getitem__)):
        ranks[i] = rank
    return ranks


def _rank_correlation(pairs: list[tuple[float, float]]) -> float | None:
    """Spearman's rho of the pairs (no ties expected in measured latencies)."""
    n = len(pairs)
    if n < 3:
        return None
    a, b = _ranks([x for x, _ in pairs]), _ranks([y for _, y in pairs])
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / (n * (n * n - 1))


def control_lines(summary: list[dict[str, Any]]) -> list[str]:
    lines = []
    for c in summary:
        rho = c["rank_correlation"]
        lines.append(
            f"{c['generator']:<8} {c['pairs']} pairs at {c['paced_round_trips_per_s']:g}/s, "
            f"against the null KMEs' twin windows (median p99 {c['null_p99_median_ms']:.1f} ms): "
            f"under {TARGET_SINGLE_P99_MS:g} ms in {c['under_target']} of {c['twins']}; "
            f"{c['faster_half']['under_target']} of {c['faster_half']['windows']} in the "
            f"machine's faster half, {c['slower_half']['under_target']} of "
            f"{c['slower_half']['windows']} in its slower half"
            + ("" if rho is None else f"; rank correlation {rho:.2f}")
        )
    return lines


def _in_daemon_p99(row: dict[str, Any], node: str) -> str:
    entry = row.get("in_daemon_ms", {}).get(f"{node} {ENDPOINTS[node]}")
    return "-" if not entry or not entry["requests"] else f"{entry['p99']:.1f}"


def _wait_cell(row: dict[str, Any]) -> str:
    waits = row.get("cpu_wait_ms_per_s", {})
    a, b = waits.get("KME_A"), waits.get("KME_B")
    return "-" if a is None or b is None else f"{a:.0f}/{b:.0f}"


def print_table(rows: list[dict[str, Any]]) -> None:
    head = (
        f"{'generator':<8} {'load':>7} {'pairs':>5} {'keys/req':>8} {'rt/s':>8} {'keys/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'err':>4} {'gen ms/rt':>9} {'cpu A':>6} {'cpu B':>6} "
        f"{'A enc p99':>9} {'B dec p99':>9} {'A/B wait':>9}  target"
    )
    print(head)
    print("-" * len(head))
    for r in rows:
        cpu = r["cpu_cores"]
        load = (
            "closed"
            if r["paced_round_trips_per_s"] is None
            else f"{r['paced_round_trips_per_s']:g}/s"
        )
        print(
            f"{r['generator']:<8} {load:>7} {r['pairs']:>5} {r['keys_per_request']:>8} "
            f"{r['round_trips_per_s']:>8.1f} {r['keys_per_s']:>9.1f} {r['p50_ms']:>7.2f} "
            f"{r['p99_ms']:>7.2f} {sum(r['errors'].values()):>4} "
            f"{r['load_generator_cpu_ms_per_round_trip']:>9.2f} "
            f"{cpu['KME_A']:>6.2f} {cpu['KME_B']:>6.2f} "
            f"{_in_daemon_p99(r, 'KME_A'):>9} {_in_daemon_p99(r, 'KME_B'):>9} "
            f"{_wait_cell(r):>9}  {verdict(r)}"
        )


class Control:
    """The null KMEs of ``etsi014_null_kms.py``, for twin windows (``--control``)."""

    def __init__(self, directory: Path) -> None:
        import etsi014_null_kms as null  # it imports this module: load it only when asked

        self._directory = directory
        self.pids, self.pairs, self._procs = null.start_pair(directory)

    @classmethod
    def start(cls) -> Control:
        return cls(Path(tempfile.mkdtemp(prefix="qkms-etsi014-control-")))

    def window(
        self, generator: str, count: int, seconds: float, rate: float | None
    ) -> dict[str, Any]:
        logs = {n: self._directory / f"{n}.log" for n in self.pids}
        row = scenario(self.pids, generator, self.pairs[:count], 1, seconds, rate, logs=logs)
        row["kms"] = NULL_KMS
        return row

    def stop(self) -> None:
        for proc in self._procs:
            proc.terminate()
        for proc in self._procs:
            proc.wait(timeout=10)
        shutil.rmtree(self._directory, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per scenario (default 5)")
    parser.add_argument(
        "--pairs",
        default="1,8,64",
        help="concurrent SAE pairs (default 1,8,64; '' for paced runs only)",
    )
    parser.add_argument(
        "--generators", default="trio,threads,curl", help="trio, threads and/or curl"
    )
    parser.add_argument("--batches", default=f"{BATCH},1", help=f"keys per request ({BATCH},1)")
    parser.add_argument(
        "--paced",
        default=f"{TARGET_SINGLE_PAIRS}:{TARGET_SINGLE_RT_PER_S:g}",
        help="single-key runs at a fixed rate, PAIRS:ROUND_TRIPS_PER_S,... ('' for none)",
    )
    parser.add_argument(
        "--windows",
        type=int,
        default=3,
        help="paced runs: windows of --seconds per generator, generators alternating (default 3)",
    )
    parser.add_argument(
        "--control",
        action="store_true",
        help="paced runs: give each window a twin against null KMEs (etsi014_null_kms.py, "
        "the HTTP stack alone), right before or after it: the machine's speed at that time",
    )
    parser.add_argument("--rate-bps", type=float, default=RATE_BPS, help="simulated link rate")
    parser.add_argument("--dir", type=Path, help="lab directory (default: a fresh temp dir)")
    parser.add_argument("--keep", action="store_true", help="leave the lab running at the end")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    counts = [int(x) for x in args.pairs.split(",") if x]
    batches = [int(x) for x in args.batches.split(",") if x]
    generators = args.generators.split(",")
    paced = [
        (int(n), float(r)) for n, r in (item.split(":") for item in args.paced.split(",") if item)
    ]
    counts_needed = counts + [n for n, _ in paced]

    info = machine()  # before the lab starts: the load average says what else is running
    directory = args.dir or Path(tempfile.mkdtemp(prefix="qkms-etsi014-bench-"))
    lab = Lab(directory)
    print(f"lab in {directory} ({filesystem_of(directory.resolve())}); starting KME_A, KME_B")
    manifest = lab.up(topology(max(counts_needed), args.rate_bps))
    rows: list[dict[str, Any]] = []
    control: Control | None = None
    try:
        if args.control and paced:
            control = Control.start()
        pids = {n: int(k["pid"]) for n, k in manifest["kmes"].items()}
        logs = {n: Path(k["log"]) for n, k in manifest["kmes"].items()}
        all_pairs = pairs_of(manifest, max(counts_needed))
        wait_for_key(all_pairs[0], 4 * BATCH)
        idle0 = {n: cpu_seconds(p) for n, p in pids.items()}
        time.sleep(2.0)
        idle = {n: (cpu_seconds(p) - idle0[n]) / 2.0 for n, p in pids.items()}
        print(
            f"daemons at rest (link producing {args.rate_bps / 1e6:g} Mbit/s): "
            + ", ".join(f"{n} {v:.2f} cores" for n, v in idle.items())
        )
        runs: list[tuple[int, int, str, float | None, str]] = [
            (b, n, g, None, QKMSD) for b in batches for n in counts for g in generators
        ]
        # Paced rows come in windows, the generators' order reversed each window, so that
        # the machine's drift (about 25 % minute to minute) falls on every generator alike;
        # a control twin runs right after a window, then right before the next one.
        for n, pace in paced:
            for w in range(args.windows):
                for g in generators if w % 2 == 0 else generators[::-1]:
                    kinds = [QKMSD, NULL_KMS] if control is not None else [QKMSD]
                    runs += [(1, n, g, pace, k) for k in (kinds if w % 2 == 0 else kinds[::-1])]
        for batch, count, generator, rate, kms in runs:
            if kms == NULL_KMS and control is not None:
                row = control.window(generator, count, args.seconds, rate)
            else:
                row = scenario(
                    pids, generator, all_pairs[:count], batch, args.seconds, rate, logs=logs
                )
            check_alive(lab, manifest)
            rows.append(row)
            load = "closed loop" if rate is None else f"paced at {rate:g} rt/s"
            print(
                f"  {generator + (' (null)' if kms == NULL_KMS else ''):<7} "
                f"{count:>2} pair(s) x {batch:>2} keys, {load}: "
                f"{row['keys_per_s']:9.1f} keys/s, {row['round_trips_per_s']:7.1f} rt/s, "
                f"p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms"
                + (
                    f" ({row['pairs_not_started']} pair(s) could not start)"
                    if row["pairs_not_started"]
                    else ""
                ),
                flush=True,
            )
    finally:
        if control is not None:
            control.stop()
        if not args.keep:
            lab.down()
            if args.dir is None:  # our temp dir: its key stores hold hundreds of MB
                shutil.rmtree(directory, ignore_errors=True)
    print()
    print_table(rows)
    summary = paced_summary(rows)
    for line in summary_lines(summary):
        print(line)
    controls = control_summary(rows) if control is not None else []
    for line in control_lines(controls):
        print(line)
    result = {
        "benchmark": "etsi014",
        "description": "enc_keys at KME_A + dec_keys at KME_B per round trip, mutual TLS, keep-alive",
        "machine": info,
        "code": code_version(ROOT),
        "lab": {
            "directory_fs": filesystem_of(directory.resolve()),
            "link": {"driver": "paired", "rate_bps": args.rate_bps, "block_bits": BLOCK_BITS},
            "key_bits": KEY_BITS,
            "daemons_at_rest_cpu_cores": idle,
        },
        "targets": {
            "batched_keys_per_s": TARGET_BATCHED_KEYS_PER_S,
            "single_key_round_trips_per_s_at_8_pairs": TARGET_SINGLE_RT_PER_S,
            "single_key_p99_ms_at_8_pairs": TARGET_SINGLE_P99_MS,
        },
        "rows": [{**r, "target": verdict(r)} for r in for_json(rows)],
        "paced_summary": summary,
        **({"control_summary": controls} if control is not None else {}),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.output}")
    if args.keep:
        print(f"lab still running: qkmsctl lab down --dir {directory}")


if __name__ == "__main__":
    main()
