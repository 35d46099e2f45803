"""The state agent: looks at the other agents' statistics every ``[alarms] interval_s``,
feeds the alarm table, logs and records what changed, and takes each code's action.

It imports no other agent: ``qkmsd/app.py`` hands it callables (``Sources``) that return
the agents' typed statistics, read here through the small protocols below.  Each look
turns readings into measured values per (code, resource):

============== ============ ===========================================================
code           resource     value
============== ============ ===========================================================
peer-down      peer id      seconds the peer has been without a session (from the moment
                            the session closed, as the peer manager tells; else from the
                            first look that sees it so); 0 during the first
                            ``STARTUP_GRACE_S`` after the agent starts while the peer has
                            not been reached since
link-down      link id      seconds the driver has been seen ``down`` or ``stopped``
qber-high      link id      the QBER of the link's last block
pool-low       link id      ready bits
pool-empty     link id      ETSI 014 refusals since the last look, while the link has no
                            ready key this end may hand out (0 otherwise)
store-error    keystore     1 if a store read (the probe, or the links' levels) failed or
                            the probe took over 30 s, else 0
disk-low       state_dir    free MiB in the state directory's file system
cert-expiring  cert:node,   days until the certificate's notAfter (read once, at start)
               cert:ca
relay-failures relay        relays failed in the last 60 s
clock-skew     peer id      | the peer's clock - ours | in seconds, from its last answered
                            ping (connected peers only)
key-rate-low   link id      bits/s stored from the link's driver over the last
                            ``key_rate_period_s`` (only once a whole period is seen)
controller-    controller   seconds this node has known no controller (0 at the first
lost                        look that sees it so)
============== ============ ===========================================================

Both raise once the value passes ``down_grace_s`` (a session that closes and comes straight
back raises nothing).  So that this takes well under two seconds at the default periods,
the agent does not wait for its next look: a session closing, or a look that sees a peer
or driver newly down, brings a look forward to ``down_grace_s`` later.

Faults (one-off): ``peer-refused`` when a peer's refusal count rose since the last look,
``blocks-discarded`` when a link's discarded blocks did.  The first look only takes the
counts' baselines.
"""

from __future__ import annotations

import collections
import dataclasses
import shutil
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Protocol

import msgspec
import trio
from cryptography import x509

from ..admin import AdminParamsError
from ..config import AlarmsSection
from ..disruptions import CODES, Action, Kind, Severity
from ..log import get_logger
from ._history import AlarmHistory, AlarmHistoryError
from ._table import AlarmEvent, AlarmTable, EventKind, Rule

log = get_logger("qkms.alarms")

STORE_PROBE_TIMEOUT_S = 30.0
RELAY_WINDOW_S = 60.0
HISTORY_SHOWN = 50
"""History events the ``alarms`` admin method returns by default."""
_MIB = 1 << 20
PAST_GRACE_S = 0.05
"""A look brought forward for a new ``down`` comes this long after the grace has run out
(a value exactly at the threshold does not cross it)."""
STARTUP_GRACE_S = 10.0
"""For this long after the agent starts, a peer that has had no session since is not
alarmed (it may not have been dialled yet); one still down then is alarmed at once.  A
peer lost after it was reached is alarmed as usual."""


class LinkReading(Protocol):
    """What the state agent reads of a link (``KeyManager.links_status()`` items)."""

    @property
    def link_id(self) -> str: ...
    @property
    def driver_state(self) -> str: ...
    @property
    def driver_detail(self) -> str: ...
    @property
    def qber(self) -> float | None: ...
    @property
    def ready_bits(self) -> int: ...
    @property
    def owned_ready_bits(self) -> int: ...
    @property
    def discarded_blocks(self) -> int: ...
    @property
    def e2e(self) -> bool: ...
    @property
    def bits_in(self) -> int: ...


class PeerReading(Protocol):
    """What the state agent reads of a peer (``PeerManager.peers_status()`` items)."""

    @property
    def node_id(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def refused(self) -> int: ...
    @property
    def clock_offset_s(self) -> float | None: ...


@dataclasses.dataclass
class Sources:
    """The readings and the hooks the state agent gets from ``app.py``; None: not there."""

    links: Callable[[], Awaitable[Sequence[LinkReading]]] | None = None
    peers: Callable[[], Sequence[PeerReading]] | None = None
    refused: Callable[[], int] | None = None
    """ETSI 014 requests refused so far (the front's ``refused`` count)."""
    relay_failures: Callable[[], int] | None = None
    """Relays failed so far (the relay agent's ``relays_failed``)."""
    store_probe: Callable[[], Awaitable[object]] | None = None
    """A cheap key store read through the store thread; raises if the store fails."""
    state_dir: Path | None = None
    certificates: dict[str, Path] = dataclasses.field(default_factory=dict)
    """Certificate files by resource name (``cert:node``, ``cert:ca``)."""
    hold_link: Callable[[str, str], None] | None = None
    release_link: Callable[[str, str], None] | None = None
    stop_driver: Callable[[str, str], None] | None = None
    start_driver: Callable[[str, str], None] | None = None
    route_down: Callable[[str, str], None] | None = None
    route_up: Callable[[str, str], None] | None = None
    controller: Callable[[], str | None] | None = None
    """The controller this node follows, None while it knows none; None here: the node
    takes no part in the election."""


class AlarmView(msgspec.Struct, frozen=True):
    """An active alarm as the admin socket shows it."""

    code: str
    resource: str
    severity: str
    raised_at: float
    changed_at: float
    value: float | None
    acknowledged: bool
    action: str


class EventView(msgspec.Struct, frozen=True):
    kind: str
    code: str
    resource: str
    severity: str
    previous: str
    value: float | None
    at: float
    by: str


class StateStatistics(msgspec.Struct, frozen=True):
    active: dict[str, int]
    """Active alarms by severity (every severity but ``cleared``, zeros included)."""
    raised: int
    cleared: int
    faults: int
    looks: int


class AlarmKeyParams(msgspec.Struct, forbid_unknown_fields=True):
    code: Annotated[str, msgspec.Meta(max_length=64)]
    resource: Annotated[str, msgspec.Meta(max_length=256)]
    by: Annotated[str, msgspec.Meta(min_length=1, max_length=128)] = "operator"
    """Who acts, as the history records it (the dashboard names its operator)."""


class AlarmsParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: Annotated[int, msgspec.Meta(ge=0, le=10_000)] = HISTORY_SHOWN
    since: float | None = None
    """Only history events at or after this Unix time."""


class StateAgent:
    """Detects disruptions and keeps the node's alarms.  See the module docstring."""

    def __init__(
        self,
        *,
        settings: AlarmsSection,
        sources: Sources,
        history_path: Path | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._sources = sources
        self._history_path = history_path
        self._history: AlarmHistory | None = None
        self._clock = clock
        self._actions = {code: settings.action(code) for code in CODES}
        self._table = AlarmTable(_rules(settings), hold_down_s=settings.hold_down_s)
        self._not_after: dict[str, float] = {}
        self._down_since: dict[tuple[str, str], float] = {}
        self._baselines: dict[tuple[str, str], int] = {}
        self._refused_seen: int | None = None
        self._relay_samples: collections.deque[tuple[float, int]] = collections.deque()
        self._rate_samples: dict[str, collections.deque[tuple[float, int]]] = {}
        self._counts = collections.Counter[str]()
        self._looks = 0
        self._details: dict[tuple[str, str], str] = {}
        self._next_look = float("inf")
        self._wake = trio.Event()
        self._started_at: float | None = None
        self._peers_seen_up: set[str] = set()

    # --- service -------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Open the history, restore the alarms active at the last stop, then look every
        ``interval_s`` until cancelled.  A history that cannot be opened is logged and
        done without; it never stops the node.  On cancellation the history is closed."""
        await self.start()
        try:
            task_status.started()
            self._next_look = trio.current_time() + self._settings.interval_s
            while True:
                with trio.move_on_at(self._next_look):
                    await self._wake.wait()  # set when a look is brought forward
                self._wake = trio.Event()
                if trio.current_time() >= self._next_look:
                    self._next_look = trio.current_time() + self._settings.interval_s
                    await self.look()
        finally:
            if self._history is not None:
                self._history.close()
                self._history = None

    def poke(self) -> None:
        """Look now rather than at the next interval."""
        self.look_soon(0.0)

    async def poke_peer(self, peer: str, reason: str = "") -> None:
        """``poke`` as a peer connectivity callback."""
        self.poke()

    async def start(self) -> None:
        """Read the certificates' expiry, open the history and restore active alarms."""
        self._started_at = self._clock()
        for resource, path in self._sources.certificates.items():
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except (OSError, ValueError) as exc:
                log.warning("alarms.cert_unreadable", resource=resource, error=type(exc).__name__)
                continue
            self._not_after[resource] = cert.not_valid_after_utc.timestamp()
        if self._history_path is None:
            return
        path, settings = self._history_path, self._settings

        def open_history() -> AlarmHistory:
            return AlarmHistory.open(
                path, max_age_s=settings.history_days * 86400, max_rows=settings.history_max
            )

        try:
            history = open_history()
            self._history = history
            restored = history.still_active()
        except AlarmHistoryError as exc:
            log.error("alarms.history_unavailable", error=str(exc))
            if self._history is not None:
                self._history.close()
            self._history = None
            return
        for alarm in restored:
            if alarm.code not in CODES or self._actions[alarm.code] is Action.NONE:
                continue
            self._table.restore(alarm)
            self._act(alarm.code, alarm.resource, held=True)
            log.info(
                "alarm.restored",
                code=alarm.code,
                resource=alarm.resource,
                severity=str(alarm.severity),
            )

    async def look(self) -> list[AlarmEvent]:
        """Read every source once, feed the table, and handle the events.  Returns them."""
        now = self._clock()
        readings = await self._readings(now)
        events: list[AlarmEvent] = []
        for code, resource, value in readings:
            row = CODES[code]
            if self._actions[code] is Action.NONE:
                continue
            if row.kind is Kind.FAULT:
                events.append(self._table.fault(code, resource, value, row.severity, now))
            else:
                events.extend(self._table.observe(code, resource, value, now))
        self._looks += 1
        await self._handle(events)
        return events

    def look_soon(self, delay: float) -> None:
        """Bring the next look forward to ``delay`` seconds from now (if it is later)."""
        at = trio.current_time() + delay
        if at < self._next_look:
            self._next_look = at
            self._wake.set()

    async def peer_up(self, peer: str) -> None:
        """The peer manager's word that a session opened (``on_connectivity``)."""
        self._down_since.pop(("peer", peer), None)

    async def peer_down(self, peer: str, reason: str = "") -> None:
        """The peer manager's word that a session closed: count from now, look soon."""
        if reason:
            self._details[("peer-down", peer)] = reason[:200]
        self._down_since.setdefault(("peer", peer), self._clock())
        self.look_soon(self._settings.down_grace_s + PAST_GRACE_S)

    # --- operators -----------------------------------------------------------------

    def alarms(self) -> list[AlarmView]:
        return [
            AlarmView(
                code=a.code,
                resource=a.resource,
                severity=str(a.severity),
                raised_at=a.raised_at,
                changed_at=a.changed_at,
                value=a.value,
                acknowledged=a.acknowledged_at is not None,
                action=str(self._actions[a.code]),
            )
            for a in self._table.active()
        ]

    async def history(
        self, limit: int = HISTORY_SHOWN, since: float | None = None
    ) -> list[EventView]:
        """The newest ``limit`` events of the history (at or after ``since``, a Unix time),
        newest first ([] without one)."""
        if self._history is None or limit == 0:
            return []
        try:
            events = self._history.recent(limit, since)
        except AlarmHistoryError as exc:
            log.error("alarms.history_failed", error=str(exc))
            return []
        return [_event_view(e) for e in events]

    async def events_after(self, after_id: int | None, limit: int) -> list[tuple[int, EventView]]:
        """History events with their local ids, oldest first: those after ``after_id``, or
        the newest ``limit`` if it is None ([] without a history).  What the node reports
        to the controller."""
        if self._history is None or limit == 0:
            return []
        try:
            found = self._history.after(after_id, limit)
        except AlarmHistoryError as exc:
            log.error("alarms.history_failed", error=str(exc))
            return []
        return [(row_id, _event_view(e)) for row_id, e in found]

    async def ack(self, code: str, resource: str, *, by: str = "operator") -> bool:
        """Acknowledge an active alarm; False if there is none."""
        if self._table.get(code, resource) is None:
            return False
        await self._handle(self._table.ack(code, resource, self._clock(), by=by))
        return True

    async def clear(self, code: str, resource: str, *, by: str = "operator") -> bool:
        """Clear an active alarm by hand (its action ends); False if there is none."""
        if self._table.get(code, resource) is None:
            return False
        await self._handle(self._table.clear(code, resource, self._clock(), by=by))
        return True

    def statistics(self) -> StateStatistics:
        active = {str(s): 0 for s in Severity if s is not Severity.CLEARED}
        for alarm in self._table.active():
            active[str(alarm.severity)] += 1
        return StateStatistics(
            active=active,
            raised=self._counts[EventKind.RAISED],
            cleared=self._counts[EventKind.CLEARED],
            faults=self._counts[EventKind.FAULT],
            looks=self._looks,
        )

    def admin_methods(self) -> dict[str, Any]:
        """``alarms``, ``alarm_ack`` and ``alarm_clear`` for the admin endpoint."""
        return {
            "alarms": self._admin_alarms,
            "alarm_ack": self._admin_ack,
            "alarm_clear": self._admin_clear,
        }

    async def _admin_alarms(self, params: dict[str, Any]) -> dict[str, Any]:
        try:
            p = msgspec.convert(params, AlarmsParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"alarms: {exc}") from None
        result: dict[str, Any] = msgspec.to_builtins(
            {"active": self.alarms(), "history": await self.history(p.limit, p.since)}
        )
        return result

    async def _admin_ack(self, params: dict[str, Any]) -> dict[str, Any]:
        p = self._key_params("alarm_ack", params)
        if not await self.ack(p.code, p.resource, by=p.by):
            raise self._no_such_alarm("alarm_ack", p)
        return {"acknowledged": True}

    async def _admin_clear(self, params: dict[str, Any]) -> dict[str, Any]:
        p = self._key_params("alarm_clear", params)
        if not await self.clear(p.code, p.resource, by=p.by):
            raise self._no_such_alarm("alarm_clear", p)
        return {"cleared": True}

    def _key_params(self, method: str, params: dict[str, Any]) -> AlarmKeyParams:
        try:
            return msgspec.convert(params, AlarmKeyParams)
        except msgspec.ValidationError as exc:
            raise AdminParamsError(f"{method}: {exc}") from None

    def _no_such_alarm(self, method: str, p: AlarmKeyParams) -> AdminParamsError:
        active = ", ".join(f"{a.code} {a.resource}" for a in self._table.active()) or "none"
        return AdminParamsError(
            f"{method}: no active alarm {p.code} on {p.resource!r} (active: {active})"
        )

    # --- readings ------------------------------------------------------------------

    async def _readings(self, now: float) -> list[tuple[str, str, float]]:
        src = self._sources
        out: list[tuple[str, str, float]] = []
        if src.peers is not None:
            for peer in src.peers():
                up = peer.state == "connected"
                down = self._down_for("peer", peer.node_id, up, now)
                if up:
                    self._peers_seen_up.add(peer.node_id)
                elif (
                    peer.node_id not in self._peers_seen_up
                    and self._started_at is not None
                    and now - self._started_at < STARTUP_GRACE_S
                ):
                    down = 0.0  # not reached since the start yet: no alarm storm at a start
                out.append(("peer-down", peer.node_id, down))
                out.extend(self._rose("peer-refused", peer.node_id, peer.refused))
                if up and peer.clock_offset_s is not None:
                    out.append(("clock-skew", peer.node_id, abs(peer.clock_offset_s)))
        refusals = 0
        if src.refused is not None:
            total = src.refused()
            refusals = total - self._refused_seen if self._refused_seen is not None else 0
            self._refused_seen = total
        links: Sequence[LinkReading] = []
        links_failed = False
        if src.links is not None:
            try:
                links = await src.links()
            except Exception as exc:  # the links' levels come from the key store
                log.debug("alarms.links_unreadable", error=type(exc).__name__)
                links_failed = True
        if links:
            for link in links:
                lid = link.link_id
                if not link.e2e:
                    up = link.driver_state not in ("down", "stopped")
                    self._details[("link-down", lid)] = link.driver_detail[:200]
                    out.append(("link-down", lid, self._down_for("link", lid, up, now)))
                if link.qber is not None:
                    out.append(("qber-high", lid, link.qber))
                out.append(("pool-low", lid, float(link.ready_bits)))
                if src.refused is not None:
                    empty = link.owned_ready_bits == 0
                    out.append(("pool-empty", lid, float(refusals) if empty else 0.0))
                out.extend(self._rose("blocks-discarded", lid, link.discarded_blocks))
                if not link.e2e and self._settings.key_rate_min_bps > 0:
                    rate = self._key_rate(lid, link.bits_in, now)
                    if rate is not None:
                        out.append(("key-rate-low", lid, rate))
        if src.store_probe is not None:
            failed = await self._probe_store(src.store_probe)
            out.append(("store-error", "keystore", max(failed, float(links_failed))))
        if src.state_dir is not None and self._settings.disk_free_min_mib > 0:
            try:
                free = shutil.disk_usage(src.state_dir).free / _MIB
            except OSError:
                free = 0.0
            out.append(("disk-low", "state_dir", round(free, 1)))
        for resource, not_after in self._not_after.items():
            out.append(("cert-expiring", resource, round((not_after - now) / 86400, 3)))
        if src.relay_failures is not None:
            out.append(
                ("relay-failures", "relay", float(self._relay_rate(src.relay_failures(), now)))
            )
        if src.controller is not None:
            known = src.controller() is not None
            out.append(
                ("controller-lost", "controller", self._down_for("controller", "", known, now))
            )
        return out

    def _key_rate(self, link_id: str, bits_in: int, now: float) -> float | None:
        """Bits/s over the last ``key_rate_period_s``; None until a whole period is seen."""
        samples = self._rate_samples.setdefault(link_id, collections.deque())
        samples.append((now, bits_in))
        period = self._settings.key_rate_period_s
        while len(samples) > 1 and samples[1][0] <= now - period:
            samples.popleft()
        then, bits_then = samples[0]
        if now - then < period or bits_in < bits_then:
            return None
        return round((bits_in - bits_then) / (now - then), 3)

    def _down_for(self, kind: str, resource: str, up: bool, now: float) -> float:
        key = (kind, resource)
        if up:
            self._down_since.pop(key, None)
            return 0.0
        if key not in self._down_since:
            self._down_since[key] = now
            if kind != "controller":
                self.look_soon(self._settings.down_grace_s + PAST_GRACE_S)
        return round(now - self._down_since[key], 3)

    def _rose(self, code: str, resource: str, count: int) -> list[tuple[str, str, float]]:
        before = self._baselines.get((code, resource))
        self._baselines[(code, resource)] = count
        if before is None or count <= before:
            return []
        return [(code, resource, float(count - before))]

    def _relay_rate(self, failed: int, now: float) -> int:
        samples = self._relay_samples
        samples.append((now, failed))
        while len(samples) > 1 and samples[1][0] <= now - RELAY_WINDOW_S:
            samples.popleft()
        return failed - samples[0][1]

    async def _probe_store(self, probe: Callable[[], Awaitable[object]]) -> float:
        with trio.move_on_after(STORE_PROBE_TIMEOUT_S):
            try:
                await probe()
            except Exception as exc:  # whatever the store raises is the alarm
                log.debug("alarms.store_probe_failed", error=type(exc).__name__)
                return 1.0
            return 0.0
        return 1.0

    # --- events --------------------------------------------------------------------

    async def _handle(self, events: list[AlarmEvent]) -> None:
        for event in events:
            self._counts[event.kind] += 1
            _log_event(event, self._details.get((event.code, event.resource), ""))
            if event.kind is EventKind.RAISED:
                self._act(event.code, event.resource, held=True)
            elif event.kind is EventKind.CLEARED:
                self._act(event.code, event.resource, held=False)
        if events and self._history is not None:
            try:
                self._history.record(events)
            except AlarmHistoryError as exc:
                log.error("alarms.history_failed", error=str(exc))

    def _act(self, code: str, resource: str, *, held: bool) -> None:
        action = self._actions[code]
        if action is Action.STOP_LINK:
            hook = self._sources.hold_link if held else self._sources.release_link
        elif action is Action.STOP_DRIVER:
            hook = self._sources.stop_driver if held else self._sources.start_driver
        elif action is Action.ROUTE_DOWN:
            hook = self._sources.route_down if held else self._sources.route_up
        else:
            return
        if hook is None:
            return
        try:
            hook(resource, code)
        except KeyError:
            log.warning("alarms.unknown_link", code=code, link=resource)


def _rules(settings: AlarmsSection) -> dict[str, Rule]:
    def one(code: str, threshold: float, *, above: bool = True) -> Rule:
        return Rule(((threshold, CODES[code].severity),), above=above)

    return {
        "peer-down": one("peer-down", settings.down_grace_s),
        "link-down": one("link-down", settings.down_grace_s),
        "qber-high": Rule(
            ((settings.qber_max, CODES["qber-high"].severity),),
            latched=settings.qber_clear == "operator",
        ),
        "pool-low": one("pool-low", settings.pool_low_bits, above=False),
        "pool-empty": one("pool-empty", 0.0),
        "store-error": one("store-error", 0.5),
        "disk-low": one("disk-low", settings.disk_free_min_mib, above=False),
        "cert-expiring": Rule(
            ((settings.cert_warn_days, CODES["cert-expiring"].severity), (0.0, Severity.CRITICAL)),
            above=False,
        ),
        "relay-failures": one("relay-failures", settings.relay_failures_per_min),
        "key-rate-low": one("key-rate-low", settings.key_rate_min_bps, above=False),
        "controller-lost": one("controller-lost", settings.controller_lost_s),
        "clock-skew": one("clock-skew", settings.clock_skew_max_s),
    }


def _log_event(event: AlarmEvent, detail: str) -> None:
    fields: dict[str, Any] = {
        "code": event.code,
        "resource": event.resource,
        "severity": str(event.severity),
    }
    if event.kind is EventKind.CHANGED or event.kind is EventKind.CLEARED:
        fields["previous"] = str(event.previous)
    if event.value is not None:
        fields["value"] = event.value
    if event.by != "condition":
        fields["by"] = event.by
    if detail and event.kind is EventKind.RAISED:
        fields["detail"] = detail
    name = f"alarm.{event.kind.value}" if event.kind is not EventKind.FAULT else "fault"
    if event.kind in (EventKind.RAISED, EventKind.FAULT) or (
        event.kind is EventKind.CHANGED and event.severity > event.previous
    ):
        log.warning(name, **fields)
    else:
        log.info(name, **fields)


def _event_view(event: AlarmEvent) -> EventView:
    return EventView(
        kind=str(event.kind),
        code=event.code,
        resource=event.resource,
        severity=str(event.severity),
        previous=str(event.previous),
        value=event.value,
        at=event.at,
        by=event.by,
    )
