"""The performance agent: samples the node every ``[perf] interval_s`` into its history,
pushes the samples to a collector if one is configured, and answers ``qkmsctl perf``.

It imports no other agent: ``qkmsd/app.py`` hands it callables (``PerfSources``) that
return the agents' statistics, read here through the small protocols below.  Counters
become rates by their rise since the last look (nothing is written at the first look of
a counter, which only takes its baseline; a counter that falls, as after a restart of its
owner, starts again from there).

============ =================== ========================================================
resource     metric              value
============ =================== ========================================================
link:<id>    key_rate_bps        key bits stored from the QKD link's driver per second
             qber                the QBER of the link's last block
             discarded_blocks    blocks discarded since the last look
             available           1 if the driver is up, else 0 (a bucket's mean is the
                                 link's availability over the bucket)
pool:<id>    level_bits          ready key bits (QKD links and end-to-end pools)
             inflow_bps          bits stored per second
             outflow_bps         bits that left the pool per second (served, spent on
                                 relays, discarded, expired): inflow less the level's rise
sae:<name>   requests_per_s      ETSI 014 requests from the SAE
             keys_per_s          keys handed to it
             bits_per_s          key bits handed to it
             errors_<status>     requests answered with that HTTP status, per second
relay        bits_per_s          end-to-end key bits relayed (started here, confirmed)
             link_bits_spent_ps  link key spent on the hops this node sent, per second
             confirmed, failed   relays started here confirmed / failed since the last look
relay:<pool> bits_per_s          the pool's throughput: key bits relayed into it per
                                 second (started here, confirmed)
             latency_s           mean start-to-confirm time of the pool's relays confirmed
                                 since the last look (none without one)
             link_bits_spent_ps  link key this node spent on the pool's hops per second
                                 (as source or intermediate: pads and MAC keys)
             confirmed, failed   the pool's relays confirmed / failed since the last look
controller   reports_per_s       node reports taken per second (only while this node holds
                                 the controller role; its CPU and memory are ``node``'s)
             reports_refused     reports refused since the last look
             nodes_alive         nodes that reported within three report periods
             alarm_events        alarm events kept in the network's alarm history
node         cpu_percent         the daemon's CPU time over wall time (100 = one core)
             rss_bytes           resident memory
             open_fds            open file descriptors
             store_bytes         size of the key store's files
============ =================== ========================================================
"""

from __future__ import annotations

import dataclasses
import os
import resource
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

import msgspec
import trio

from ..admin import AdminParamsError
from ..config import PerfSection
from ..log import get_logger
from ._history import PerfHistory, PerfHistoryError, Point, Sample
from ._push import Pusher, PushError

log = get_logger("qkms.perf")

PUSH_BATCH = 5000
"""Samples per push request at most."""


class LinkReading(Protocol):
    """What the agent reads of a link (``KeyManager.links_status()`` items)."""

    @property
    def link_id(self) -> str: ...
    @property
    def e2e(self) -> bool: ...
    @property
    def driver_state(self) -> str: ...
    @property
    def qber(self) -> float | None: ...
    @property
    def ready_bits(self) -> int: ...
    @property
    def discarded_blocks(self) -> int: ...
    @property
    def bits_in(self) -> int: ...


class SaeReading(Protocol):
    """What the agent reads of an SAE (the ETSI 014 front's per-SAE counts)."""

    @property
    def requests(self) -> int: ...
    @property
    def keys(self) -> int: ...
    @property
    def bits(self) -> int: ...
    @property
    def errors(self) -> Mapping[int, int]: ...


class RelayPoolReading(Protocol):
    """One end-to-end pool's relay counters (``RelayAgent.pool_statistics()`` values)."""

    @property
    def relays_confirmed(self) -> int: ...
    @property
    def relays_failed(self) -> int: ...
    @property
    def bits_relayed(self) -> int: ...
    @property
    def latency_s_total(self) -> float: ...
    @property
    def link_bits_spent(self) -> int: ...


class RelayReading(Protocol):
    @property
    def relays_confirmed(self) -> int: ...
    @property
    def relays_failed(self) -> int: ...
    @property
    def bits_relayed(self) -> int: ...
    @property
    def link_bits_spent(self) -> int: ...


@dataclasses.dataclass
class PerfSources:
    """The readings the agent gets from ``app.py``; None: not there."""

    links: Callable[[], Awaitable[Sequence[LinkReading]]] | None = None
    saes: Callable[[], Mapping[str, SaeReading]] | None = None
    relay: Callable[[], RelayReading] | None = None
    relay_pools: Callable[[], Mapping[str, RelayPoolReading]] | None = None
    controller: Callable[[], Mapping[str, float] | None] | None = None
    """The controller's own counters while this node holds the role (None otherwise):
    ``reports`` and ``reports_refused`` (counters), ``nodes_alive``, ``alarm_events``."""
    store_files: Sequence[Path] = ()
    """The key store's files (the database and its journal), for ``store_bytes``."""


class PerfParams(msgspec.Struct, forbid_unknown_fields=True):
    resource: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    """``node``, ``relay`` (the node's relays and every ``relay:<pool>``), ``controller``,
    ``link:<id>``, ``pool:<id>``, ``relay:<pool>``, ``sae:<name>``, or a bare id (the link,
    pool, relayed pool or SAE of that name); None: every resource."""
    since_s: Annotated[float, msgspec.Meta(gt=0, le=400 * 86400)] = 3600.0


class PerfStatistics(msgspec.Struct, frozen=True):
    looks: int
    samples: int
    pushed: int
    push_failures: int


class PerfAgent:
    """Samples the node and keeps its performance history.  See the module docstring."""

    def __init__(
        self,
        *,
        settings: PerfSection,
        sources: PerfSources,
        history_path: Path | None,
        pusher: Pusher | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = trio.current_time,
    ) -> None:
        self._settings = settings
        self._sources = sources
        self._history_path = history_path
        self._history: PerfHistory | None = None
        self._pusher = pusher
        self._clock = clock
        self._monotonic = monotonic
        self._last: dict[tuple[str, str], tuple[float, float]] = {}
        """(resource, counter) -> (monotonic time, value) at the last look."""
        self._looks = 0
        self._samples = 0
        self._pushed = 0
        self._push_failures = 0
        self._failing = False
        self._pushed_up_to = 0.0
        self._push_due = 0.0

    # --- service ---------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the history, then look every ``interval_s`` until cancelled.  A history that
        cannot be opened is logged and done without (samples are still pushed)."""
        self.open()
        try:
            task_status.started()
            while True:
                await trio.sleep(self._settings.interval_s)
                await self.look()
        finally:
            if self._history is not None:
                self._history.close()
                self._history = None

    def open(self) -> None:
        if self._history_path is None:
            return
        s = self._settings
        try:
            self._history = PerfHistory.open(
                self._history_path, keep_s=(s.raw_keep_s, s.minute_keep_s, s.hour_keep_s)
            )
        except PerfHistoryError as exc:
            log.error("perf.history_unavailable", error=str(exc))
            self._history = None
        # Push only what is measured from now on: a restarted node does not resend.
        self._pushed_up_to = self._clock()

    async def look(self) -> list[Sample]:
        """Read every source once and record the samples.  Returns them."""
        now, mono = self._clock(), self._monotonic()
        samples = [Sample(now, res, metric, value) for res, metric, value in await self._read(mono)]
        self._looks += 1
        self._samples += len(samples)
        if self._history is not None and samples:
            try:
                self._history.add(samples, now=now)
            except PerfHistoryError as exc:
                log.error("perf.history_failed", error=str(exc))
        if self._pusher is not None and mono >= self._push_due:
            self._push_due = mono + self._settings.report_s
            await self._push(samples)
        return samples

    # --- operators -------------------------------------------------------------------

    def admin_methods(self) -> dict[str, Any]:
        return {"perf": self._admin_perf}

    async def _admin_perf(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            p = msgspec.convert(params, PerfParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"perf: {exc}") from None
        if self._history is None:
            raise AdminParamsError("perf: this node keeps no performance history")
        now = self._clock()
        since = now - p.since_s
        found = self._history.series(since=since, now=now)
        tier = self._history.tier_for(since, now)
        if p.resource == "relay":  # the node's relays and every pool's
            found = {k: v for k, v in found.items() if k == "relay" or k.startswith("relay:")}
        elif p.resource is not None:
            wanted = _resolve(p.resource, found)
            if wanted is None:
                known = ", ".join(sorted(found)) or "none yet"
                raise AdminParamsError(f"perf: no samples of {p.resource!r} (have: {known})")
            found = {wanted: found[wanted]}
        return {
            "now": now,
            "since": since,
            "bucket_s": (0.0, 300.0, 3600.0)[tier] or self._settings.interval_s,
            "series": msgspec.to_builtins(found),
        }

    def statistics(self) -> PerfStatistics:
        return PerfStatistics(self._looks, self._samples, self._pushed, self._push_failures)

    # --- readings --------------------------------------------------------------------

    async def _read(self, mono: float) -> list[tuple[str, str, float]]:
        src = self._sources
        out: list[tuple[str, str, float]] = []
        if src.links is not None:
            try:
                links = await src.links()
            except Exception as exc:  # the levels come from the key store; the alarm says why
                log.debug("perf.links_unreadable", error=type(exc).__name__)
                links = []
            for link in links:
                pool = f"pool:{link.link_id}"
                inflow = self._rate(pool, "bits_in", link.bits_in, mono)
                level_rise = self._rate(pool, "level", link.ready_bits, mono, counter=False)
                out.append((pool, "level_bits", float(link.ready_bits)))
                if inflow is not None:
                    out.append((pool, "inflow_bps", inflow))
                    if level_rise is not None:
                        out.append((pool, "outflow_bps", max(0.0, inflow - level_rise)))
                if link.e2e:
                    continue
                res = f"link:{link.link_id}"
                if inflow is not None:
                    out.append((res, "key_rate_bps", inflow))
                if link.qber is not None:
                    out.append((res, "qber", link.qber))
                out.append((res, "available", 1.0 if link.driver_state == "up" else 0.0))
                lost = self._rise(res, "discarded", link.discarded_blocks, mono)
                if lost is not None:
                    out.append((res, "discarded_blocks", lost))
        if src.saes is not None:
            for name, sae in sorted(src.saes().items()):
                res = f"sae:{name}"
                seen = self._last.get((res, "requests_per_s"))
                for metric, count in (
                    ("requests_per_s", sae.requests),
                    ("keys_per_s", sae.keys),
                    ("bits_per_s", sae.bits),
                ):
                    rate = self._rate(res, metric, count, mono)
                    if rate is not None:
                        out.append((res, metric, rate))
                for status, count in sorted(sae.errors.items()):
                    # A status first seen counts from zero at the SAE's previous look.
                    since = None if seen is None else seen[0]
                    rate = self._rate(res, f"errors_{status}", count, mono, zero_at=since)
                    if rate is not None:
                        out.append((res, f"errors_{status}", rate))
        if src.relay is not None:
            r = src.relay()
            for metric, count in (
                ("bits_per_s", r.bits_relayed),
                ("link_bits_spent_ps", r.link_bits_spent),
            ):
                rate = self._rate("relay", metric, count, mono)
                if rate is not None:
                    out.append(("relay", metric, rate))
            for metric, count in (("confirmed", r.relays_confirmed), ("failed", r.relays_failed)):
                rise = self._rise("relay", metric, count, mono)
                if rise is not None:
                    out.append(("relay", metric, rise))
        if src.relay_pools is not None:
            for pool, p in sorted(src.relay_pools().items()):
                out.extend(self._relay_pool(f"relay:{pool}", p, mono))
        if src.controller is not None:
            counts = src.controller()
            if counts is not None:
                rate = self._rate("controller", "reports", counts.get("reports", 0.0), mono)
                if rate is not None:
                    out.append(("controller", "reports_per_s", rate))
                refused = counts.get("reports_refused", 0.0)
                rise = self._rise("controller", "reports_refused", refused, mono)
                if rise is not None:
                    out.append(("controller", "reports_refused", rise))
                for gauge in ("nodes_alive", "alarm_events"):
                    if gauge in counts:
                        out.append(("controller", gauge, float(counts[gauge])))
        out.extend(self._node(mono))
        return out

    def _relay_pool(
        self, res: str, p: RelayPoolReading, mono: float
    ) -> list[tuple[str, str, float]]:
        out: list[tuple[str, str, float]] = []
        for metric, count in (
            ("bits_per_s", p.bits_relayed),
            ("link_bits_spent_ps", p.link_bits_spent),
        ):
            rate = self._rate(res, metric, count, mono)
            if rate is not None:
                out.append((res, metric, rate))
        confirmed = self._rise(res, "confirmed", p.relays_confirmed, mono)
        latency = self._rise(res, "latency", p.latency_s_total, mono)
        if confirmed is not None:
            out.append((res, "confirmed", confirmed))
            if confirmed > 0 and latency is not None:
                out.append((res, "latency_s", round(latency / confirmed, 6)))
        failed = self._rise(res, "failed", p.relays_failed, mono)
        if failed is not None:
            out.append((res, "failed", failed))
        return out

    def _node(self, mono: float) -> list[tuple[str, str, float]]:
        out: list[tuple[str, str, float]] = []
        usage = resource.getrusage(resource.RUSAGE_SELF)
        cpu = self._rate("node", "cpu", usage.ru_utime + usage.ru_stime, mono)
        if cpu is not None:
            out.append(("node", "cpu_percent", round(100.0 * cpu, 2)))
        rss = _rss_bytes()
        if rss is not None:
            out.append(("node", "rss_bytes", float(rss)))
        fds = _open_fds()
        if fds is not None:
            out.append(("node", "open_fds", float(fds)))
        if self._sources.store_files:
            size = 0
            for path in self._sources.store_files:
                try:
                    size += path.stat().st_size
                except OSError:
                    continue
            out.append(("node", "store_bytes", float(size)))
        return out

    def _rate(
        self,
        res: str,
        name: str,
        value: float,
        mono: float,
        *,
        counter: bool = True,
        zero_at: float | None = None,
    ) -> float | None:
        """Per second since the last look; None at the first look (or a counter's reset)
        unless ``zero_at`` says when the counter was known to be zero."""
        key = (res, name)
        last = self._last.get(key)
        if last is None and zero_at is not None:
            last = (zero_at, 0.0)
        self._last[key] = (mono, value)
        if last is None or mono <= last[0] or (counter and value < last[1]):
            return None
        return round((value - last[1]) / (mono - last[0]), 3)

    def _rise(self, res: str, name: str, value: float, mono: float) -> float | None:
        key = (res, name)
        last = self._last.get(key)
        self._last[key] = (mono, value)
        if last is None or value < last[1]:
            return None
        return value - last[1]

    # --- pushing ---------------------------------------------------------------------

    async def _push(self, latest: list[Sample]) -> None:
        assert self._pusher is not None
        if self._history is not None:
            batch = self._history.since(self._pushed_up_to, PUSH_BATCH)
        else:
            batch = latest
        if not batch:
            return
        try:
            with trio.move_on_after(self._settings.push_timeout_s) as scope:
                await self._pusher.push(batch)
            if scope.cancelled_caught:
                raise PushError(f"no answer within {self._settings.push_timeout_s} s")
        except PushError as exc:
            self._push_failures += 1
            if not self._failing:  # once per failure streak, not a line per interval
                log.warning("perf.push_failed", url=self._pusher.url, error=str(exc))
            self._failing = True
            return
        if self._failing:
            log.info("perf.push_resumed", url=self._pusher.url)
        self._failing = False
        self._pushed += len(batch)
        self._pushed_up_to = batch[-1].at


def _resolve(name: str, found: Mapping[str, object]) -> str | None:
    if name in found:
        return name
    for prefix in ("link:", "pool:", "relay:", "sae:"):
        if prefix + name in found:
            return prefix + name
    return None


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE")


def _open_fds() -> int | None:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return None


__all__ = ["PerfAgent", "PerfParams", "PerfSources", "PerfStatistics", "Point"]
