"""The ETSI 014 benchmark's harness: servers, what they did, and one timed window as a row.

- ``Servers``: two KMEs (KME_A, KME_B) and N SAE pairs that can reach them.
  ``start_lab`` starts two real qkmsd daemons (``cli._lab.Lab``, one simulated link fast
  enough that key never runs short); ``_etsi014_null.start_null`` starts two null KMEs
  (the same HTTPS stack, no key management).  Both give a ``Servers``, so every load runs
  against either.
- ``run_window``: one timed window of a load generator (``_etsi014_load``) against
  ``Servers``, as a result row: the client side's round trips, keys and latencies; the CPU
  of the generator and of each server process; and for qkmsd what each node counted in its
  admin ``status`` over the window (requests, keys out, store commits).  Nothing is read
  from a log file.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import resource
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
for _path in (str(HERE.parent), str(HERE)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from _etsi014_load import GENERATORS, KEY_BITS, Pair, Tally  # noqa: E402
from _etsi014_stats import QKMSD, percentile  # noqa: E402

from cli._admin import AdminClient, AdminError  # noqa: E402
from cli._lab import Lab  # noqa: E402
from cli._topology import Topology, topology_from_mapping  # noqa: E402
from qkms_client import Etsi014Client  # noqa: E402

BATCH = 64
# The simulated link only has to stay ahead of what the SAEs take: 5 Mbit/s is about 20,000
# 256-bit keys a second, four times the fastest batched delivery measured, and already more
# than deployed QKD links give.  A faster link would only add the cost of taking key in
# (reported as "daemons at rest") to every figure.
RATE_BPS = 5e6
BLOCK_BITS = 1 << 20

__all__ = [
    "BATCH",
    "BLOCK_BITS",
    "GENERATORS",
    "KEY_BITS",
    "RATE_BPS",
    "Measure",
    "Pair",
    "Servers",
    "code_version",
    "counter_deltas",
    "counters_of",
    "cpu_seconds",
    "cpu_wait_seconds",
    "filesystem_of",
    "machine",
    "process_alive",
    "run_window",
    "start_lab",
    "topology",
]


# --- servers and SAE pairs --------------------------------------------------------------------


@dataclass
class Servers:
    """Two running KMEs (KME_A, KME_B) and the SAE pairs that can reach them.

    ``admin`` holds each node's admin socket where the servers have one (qkmsd), for the
    counters of ``run_window``; ``check`` raises ``SystemExit`` if a server died;
    ``stop`` stops both.
    """

    kms: str
    pids: dict[str, int]
    pairs: list[Pair]
    admin: dict[str, Path]
    check: Callable[[], None]
    stop: Callable[[], None]
    # The lab directory, for the JSON (qkmsd only).
    directory: Path | None = None


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


def start_lab(directory: Path, pairs: int, rate_bps: float = RATE_BPS) -> Servers:
    """A lab pair of qkmsd daemons in ``directory``, with key in stock for the first pair.

    Raises ``cli._lab.LabError`` if a daemon does not start, ``SystemExit`` if no key comes.
    """
    lab = Lab(directory)
    manifest = lab.up(topology(pairs, rate_bps))
    try:
        all_pairs = pairs_of(manifest, pairs)
        wait_for_key(all_pairs[0], 4 * BATCH)
    except BaseException:
        lab.down()
        raise

    def stop() -> None:
        lab.down()

    return Servers(
        kms=QKMSD,
        pids={n: int(k["pid"]) for n, k in manifest["kmes"].items()},
        pairs=all_pairs,
        admin={n: Path(k["admin_socket"]) for n, k in manifest["kmes"].items()},
        check=lambda: check_alive(manifest),
        stop=stop,
        directory=lab.dir,
    )


def wait_for_key(pair: Pair, keys: int) -> None:
    with Etsi014Client(pair.a_url, ca=pair.ca, cert=pair.m_cert, key=pair.m_key) as client:
        deadline = time.monotonic() + 60
        while client.status(pair.slave).stored_key_count < keys:
            if time.monotonic() > deadline:
                raise SystemExit("no key after 60 s: is the lab link up? see the lab's logs")
            time.sleep(0.1)


def check_alive(manifest: dict[str, Any]) -> None:
    """Stop the benchmark if a daemon died: its figures would be meaningless."""
    for node, kme in manifest["kmes"].items():
        if not process_alive(int(kme["pid"])):
            tail = Path(kme["log"]).read_text(errors="replace").splitlines()[-30:]
            raise SystemExit(f"{node} died during the benchmark; its log ends:\n" + "\n".join(tail))


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# --- the nodes' own counters (admin ``status``) -----------------------------------------------

# Counters of the admin ``status`` answer, by where they sit in it.
_SUPPLY = ("enc_keys", "dec_keys", "keys_out", "refused", "stock_keys_in", "stock_keys_out")
_STORE = ("batches", "calls", "inline")


def counters_of(status: dict[str, Any]) -> dict[str, int]:
    """The counters of one admin ``status`` answer that a window's figures use, flat.

    ``store`` {batches, calls, inline} as ``store_*``, ``api.supply`` as they are, and
    ``api.tls.handshakes``.  A counter the answer lacks (a node without the API) is 0.
    """
    store = status.get("store") or {}
    api = status.get("api") or {}
    supply = api.get("supply") or {}
    tls = api.get("tls") or {}
    out = {f"store_{k}": int(store.get(k, 0)) for k in _STORE}
    out |= {k: int(supply.get(k, 0)) for k in _SUPPLY}
    out["tls_handshakes"] = int(tls.get("handshakes", 0))
    return out


def counter_deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """How much each counter grew between two ``counters_of`` readings."""
    return {k: after[k] - before.get(k, 0) for k in after}


def read_counters(admin: dict[str, Path]) -> dict[str, dict[str, int]]:
    out = {}
    for node, socket in admin.items():
        try:
            out[node] = counters_of(AdminClient(socket, timeout=5.0).call("status"))
        except AdminError as exc:
            raise SystemExit(f"{node}: admin status failed: {exc}") from None
    return out


# --- what the servers did in a window ---------------------------------------------------------


@dataclass
class Measure:
    """CPU, CPU wait and admin counters of each server, and this process's CPU, over a window.

    ``start`` and ``end`` are a ``Tally``'s ``on_start`` and ``on_end``.
    """

    pids: dict[str, int]
    admin: dict[str, Path]
    # Within the window: CPU seconds (this process, and each server), seconds each server's
    # threads spent runnable waiting for a core, each node's counters.
    cpu: dict[str, float] = field(default_factory=dict)
    cpu_wait: dict[str, float | None] = field(default_factory=dict)
    counters: dict[str, dict[str, int]] = field(default_factory=dict)

    def start(self) -> None:
        self.counters = read_counters(self.admin)
        self.cpu = {"load_generator": self_cpu_seconds()}
        self.cpu |= {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.cpu_wait = {n: cpu_wait_seconds(p) for n, p in self.pids.items()}

    def end(self) -> None:
        now = {"load_generator": self_cpu_seconds()}
        now |= {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.cpu = {n: now[n] - self.cpu[n] for n in now}
        # The servers only: the generators' threads end with the window, their counts too.
        self.cpu_wait = {
            n: _minus(cpu_wait_seconds(p), self.cpu_wait.get(n)) for n, p in self.pids.items()
        }
        after = read_counters(self.admin)
        self.counters = {n: counter_deltas(self.counters[n], c) for n, c in after.items()}


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


# --- one window -------------------------------------------------------------------------------


def run_window(
    servers: Servers,
    generator: str,
    pairs: int,
    batch: int,
    seconds: float,
    rate: float | None = None,
) -> dict[str, Any]:
    """One timed window of ``generator`` with the first ``pairs`` SAE pairs: a result row.

    Raises ``Mismatch`` if an SAE pair got different keys, ``SystemExit`` if a server died
    or a node's admin socket does not answer.
    """
    measure = Measure(servers.pids, servers.admin)
    tally = Tally(on_start=measure.start, on_end=measure.end)
    elapsed = GENERATORS[generator](servers.pairs[:pairs], batch, seconds, tally, rate)
    servers.check()
    trips = len(tally.latencies)
    return {
        "kms": servers.kms,
        "generator": generator,
        "paced_round_trips_per_s": rate,
        "pairs": pairs,
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
            measure.cpu["load_generator"] * 1000 / trips if trips else float("nan")
        ),
        "cpu_cores": {n: round(v / elapsed, 3) for n, v in measure.cpu.items()},
        # A server's threads runnable but waiting for one of the cores, in ms per second of
        # the window: how much of the tail is queueing for the machine.
        "cpu_wait_ms_per_s": {
            n: None if w is None else round(w * 1000 / elapsed, 1)
            for n, w in measure.cpu_wait.items()
        },
        # What each node counted over the window (its admin status), qkmsd only: requests
        # served and refused, keys out, store commits (batches) and the calls they carried.
        "server": measure.counters,
        # Every latency of the window, for the summary's p99 over all windows of a paced load;
        # left out of the JSON (see ``for_json``).
        "_latencies_ms": sorted(x * 1000 for x in tally.latencies),
    }


# --- the machine and the code -----------------------------------------------------------------


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
