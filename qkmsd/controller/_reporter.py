"""Every node's side of the controller: whom to report to, reports, routes taken in.

Theory of operation
-------------------
Every node knows the eligible nodes (``[controller] electors``, each in ``[peers]``) and
keeps a peer session with each.  The controller announces itself on every session it has
(``ctl.announce {term}``) when it takes office and every report period after; a node
follows the announcer of the newest term among the eligible nodes.  It reports to the
node it follows (``ctl.report``) every ``report_s``, at once when it starts following a
new controller (which is how a new controller rebuilds its topology within one report
period), and when one of its peer sessions opens or closes (a link then goes up or down
for relaying).  A controller that answers ``not-controller``, or whose session closes,
is no longer followed until an announce names one again.

Route settings from the followed controller (``ctl.routes``) replace the last ones: the
paths of the settings with this node as source go to the relay's routing table (through
``install``, after manual routes and before the node's own computation), and their
node-disjoint sets to it through ``install_disjoint``.  When the
controller goes, the node keeps them until another pushes new ones.  For a destination
it relays to (``wanted``) with no manual or controller route, the node asks
(``ctl.route-ask``).  Budgets (``ctl.budgets``) are kept, shown, and handed to the relay
agent (``spend``), which paces its background relays by them (a token bucket per pool);
relays an SAE waits for are not paced.

Alarm events (``alarm_events``) go with the reports: when the node starts following a
controller, the newest of its history; then, after each acknowledged report, those that
came since.  A refused or unanswered report's events go again with the next.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec
import trio

from protocol import (
    MAX_ALARMS_PER_REPORT,
    MAX_REPORT_ITEMS,
    CtlAck,
    CtlAlarmEvent,
    CtlAnnounce,
    CtlBudget,
    CtlBudgets,
    CtlDemand,
    CtlEntry,
    CtlLink,
    CtlProfile,
    CtlProfileReply,
    CtlRegister,
    CtlRelayLoad,
    CtlReport,
    CtlRoute,
    CtlRouteAsk,
    CtlRouteReply,
    CtlRoutes,
    ErrorCode,
)

from ..errors import PeerUnavailable, QkmsError
from ..log import get_logger
from ._service import NoController, RegistrationRefused

RATE_WINDOW_S = 30.0
"""A link's key rate is reported over about this long."""

log = get_logger("qkms.controller")

RequestFn = Callable[[str, Any], Awaitable[Any]]


AlarmEvents = Callable[[int | None, int], Awaitable[list[tuple[int, CtlAlarmEvent]]]]


@dataclasses.dataclass(frozen=True)
class ReportSources:
    """Where a node's report comes from (``app.py`` hands in the agents' views)."""

    links: Callable[[], Awaitable[Sequence[Any]]]
    """The key manager's ``links_status()``: link_id, peer, driver_state, qber,
    ready_bits, owned_ready_bits, synchronised, e2e."""
    bits_in: Callable[[], dict[str, int]]
    """Key bits each link's driver delivered since the node started."""
    peers: Callable[[], list[str]]
    """Nodes with an open session."""
    demand: Callable[[], Sequence[Any]]
    """The ETSI 014 front's ``demand()``: master, slave, kme, asked_bits, served_bits."""
    relay: Callable[[], Any]
    """The relay agent's statistics."""
    hops: Callable[[str], list[str]]
    """The path relays to a node take now (empty if none)."""
    spent: Callable[[], dict[str, int]] = dict
    multipath: Callable[[str], bool] = lambda peer: False
    """Whether the pool with a node takes node-disjoint paths (split or spread)."""
    """Per QKD link, link key this node spent on relay hops since it started."""
    alarm_events: AlarmEvents | None = None
    """The state agent's history: ``(after, limit)`` gives ``(local id, event)`` pairs,
    oldest first, of the events after local id ``after`` (``None``: the newest
    ``limit``)."""


class ReporterStatus(msgspec.Struct, frozen=True):
    following: str | None
    """The controller this node reports to."""
    term: int
    reports_sent: int
    reports_refused: int
    last_refusal: str
    route_settings: int
    """Route settings last pushed here (this node on a path)."""
    routes_installed: list[str]
    """Destinations with controller paths in the routing table."""
    budgets: dict[str, float]
    """Per-pair relay budgets pushed here (bits/s)."""


class Reporter:
    """This node's side of the controller.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        electors: Sequence[str],
        report_s: float,
        sources: ReportSources,
        request: RequestFn,
        install: Callable[[dict[str, list[list[str]]]], None],
        install_disjoint: Callable[[dict[str, list[list[str]]]], None] = lambda sets: None,
        spend: Callable[[dict[str, float]], None] = lambda budgets: None,
        has_route: Callable[[str], bool],
        wanted: Callable[[], list[str]],
        software: str,
        location: str = "",
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.node_id = node_id
        self.electors = set(electors)
        self._report_s = report_s
        self._sources = sources
        self._request = request
        self._install = install
        self._install_disjoint = install_disjoint
        self._spend = spend
        self._has_route = has_route
        self._wanted = wanted
        self._software = software
        self._location = location
        self._clock = clock
        self.following: str | None = None
        self.term = 0
        self._heard_at = float("-inf")
        self._wake = trio.Event()
        self._seq = 0
        self._rate_samples: dict[str, collections.deque[tuple[float, int]]] = {}
        self._last_spent: dict[str, tuple[float, int]] = {}
        self._last_rates: dict[str, tuple[float, float]] = {}
        self._settings: list[CtlRoute] = []
        self._incoming: tuple[tuple[str, int], int, list[CtlRoute]] | None = None
        self.budgets: list[CtlBudget] = []
        self.reports_sent = 0
        self.reports_refused = 0
        self.last_refusal = ""
        self._alarms_after: int | None = None
        """The local id of the last alarm event the followed controller acknowledged
        (None: none yet, send the newest)."""
        self.alarm_events_sent = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Report every ``report_s`` (sooner on change) to the followed controller."""
        task_status.started()
        while True:
            with trio.move_on_after(self._report_s):
                await self._wake.wait()
            self._wake = trio.Event()
            if self.following is not None and self._clock() - self._heard_at > 3 * self._report_s:
                log.warning("controller.silent", controller=self.following)
                self.following = None
            if self.following is None:
                continue
            try:
                await self._report(self.following)
                await self._ask_routes(self.following)
            except PeerUnavailable:
                self.following = None
            except QkmsError as exc:  # the store cannot be read: its own alarm says why
                log.warning("controller.report_skipped", error=str(exc)[:200])

    def wake(self) -> None:
        self._wake.set()

    async def _report(self, controller: str) -> None:
        pending: list[tuple[int, CtlAlarmEvent]] = []
        if self._sources.alarm_events is not None:
            pending = await self._sources.alarm_events(self._alarms_after, MAX_ALARMS_PER_REPORT)
        report = await self.build_report(alarms=[event for _, event in pending])
        reply = None
        with trio.move_on_after(self._report_s):
            reply = await self._request(controller, report)
        if not isinstance(reply, CtlAck):
            return
        self.reports_sent += 1
        if reply.ok:
            self._heard_at = self._clock()
            if pending and controller == self.following:
                self._alarms_after = pending[-1][0]
                self.alarm_events_sent += len(pending)
            return
        self.reports_refused += 1
        self.last_refusal = f"{reply.code}: {reply.message}"
        if reply.code == ErrorCode.NOT_CONTROLLER:
            self.following = None
        else:
            log.warning("controller.report_refused", code=reply.code, error=reply.message[:300])

    async def build_report(
        self, alarms: Sequence[CtlAlarmEvent] = (), *, peek: bool = False
    ) -> CtlReport:
        """This node's report.  ``peek``: for a look (the ETSI 015 view), which changes
        nothing: the key rates are those of the last report (0 before one), the sequence
        number does not advance."""
        now = self._clock()
        src = self._sources
        bits_in = src.bits_in()
        spent = src.spent()
        links = []
        for status in await src.links():
            total = bits_in.get(status.link_id, 0)
            # The key rate over the last ``RATE_WINDOW_S`` (at least one period): a link
            # delivers key in blocks, and one period may see none while the next sees two.
            samples = self._rate_samples.setdefault(status.link_id, collections.deque())
            while samples and (samples[0][1] > total or now - samples[0][0] > RATE_WINDOW_S):
                samples.popleft()
            then = samples[0] if samples else None
            rate = 0.0
            if then is not None and now > then[0]:
                rate = max(0.0, (total - then[1]) / (now - then[0]))
            used = spent.get(status.link_id, 0)
            before = self._last_spent.get(status.link_id)
            spent_bps = 0.0
            if before is not None and now > before[0]:
                spent_bps = max(0.0, (used - before[1]) / (now - before[0]))
            if peek:
                rate, spent_bps = self._last_rates.get(status.link_id, (0.0, 0.0))
            else:
                samples.append((now, total))
                self._last_spent[status.link_id] = (now, used)
                self._last_rates[status.link_id] = (rate, spent_bps)
            qber = status.qber if status.qber is None or 0 <= status.qber <= 1 else None
            links.append(
                CtlLink(
                    link_id=status.link_id,
                    peer=status.peer,
                    up=bool(status.synchronised) and status.driver_state in ("up", "starting"),
                    virtual=bool(status.e2e),
                    device=str(status.driver_state)[:128],
                    ready_here=status.owned_ready_bits,
                    ready_there=max(0, status.ready_bits - status.owned_ready_bits),
                    rate_bps=rate,
                    qber=qber,
                    hops=src.hops(status.peer) if status.e2e else [],
                    spent_bps=spent_bps,
                    multipath=bool(status.e2e) and src.multipath(status.peer),
                )
            )
        relay = src.relay()
        if not peek:
            self._seq += 1
        return CtlReport(
            id=0,
            node=self.node_id,
            seq=self._seq,
            period_s=self._report_s,
            software=self._software,
            location=self._location,
            links=links[:MAX_REPORT_ITEMS],
            peers=sorted(src.peers())[:MAX_REPORT_ITEMS],
            demand=[
                CtlDemand(d.master, d.slave, d.kme, d.asked_bits, d.served_bits)
                for d in src.demand()
            ][:MAX_REPORT_ITEMS],
            relay=CtlRelayLoad(
                relays_confirmed=relay.relays_confirmed,
                relays_failed=relay.relays_failed,
                hops_forwarded=relay.hops_forwarded,
                bits_relayed=relay.bits_relayed,
                link_bits_spent=relay.link_bits_spent,
            ),
            alarms=list(alarms)[:MAX_ALARMS_PER_REPORT],
        )

    async def _ask_routes(self, controller: str) -> None:
        for destination in self._wanted():
            if self._has_route(destination) or destination == self.node_id:
                continue
            reply = None
            with trio.move_on_after(self._report_s):
                reply = await self._request(controller, CtlRouteAsk(id=0, destination=destination))
            if isinstance(reply, CtlRouteReply) and reply.ok and reply.routes:
                answered = {(r.source, r.destination) for r in reply.routes}
                kept = [r for r in self._settings if (r.source, r.destination) not in answered]
                self._take([*kept, *reply.routes])

    # --- from the controller ---------------------------------------------------------

    async def on_announce(self, peer: str, message: CtlAnnounce) -> None:
        if peer not in self.electors and peer != self.node_id:
            return
        if message.term < self.term:
            return
        self._heard_at = self._clock()
        if (peer, message.term) != (self.following, self.term):
            self.following, self.term = peer, message.term
            self._alarms_after = None  # a new controller: the newest alarm events first
            log.info("controller.following", controller=peer, term=message.term)
            self.wake()  # report to it at once

    async def on_routes(self, peer: str, message: CtlRoutes) -> None:
        if peer != self.following or message.term < self.term:
            return
        key = (peer, message.term)
        if message.part == 0:
            self._incoming = (key, 0, list(message.routes))
        elif self._incoming is not None and self._incoming[:2] == (key, message.part - 1):
            self._incoming = (key, message.part, self._incoming[2] + list(message.routes))
        else:
            self._incoming = None  # a part is missing: wait for the next whole set
            return
        if message.last:
            self._take(self._incoming[2])
            self._incoming = None

    async def on_budgets(self, peer: str, message: CtlBudgets) -> None:
        if peer != self.following or message.term < self.term:
            return
        self.budgets = list(message.budgets)
        self._spend({b.destination: b.bits_per_s for b in self.budgets})

    def _take(self, settings: list[CtlRoute]) -> None:
        self._settings = settings
        mine: dict[str, list[list[str]]] = {}
        disjoint: dict[str, list[list[str]]] = {}
        for route in settings:
            if route.source == self.node_id:
                paths = mine.setdefault(route.destination, [])
                paths += [list(p.nodes) for p in route.paths if list(p.nodes) not in paths]
                if route.disjoint:
                    disjoint[route.destination] = [list(p.nodes) for p in route.disjoint]
        self._install_disjoint(disjoint)
        self._install(mine)

    async def peer_up(self, peer: str) -> None:
        self.wake()

    async def peer_down(self, peer: str, reason: str = "") -> None:
        if peer == self.following:
            self.following = None
        self.wake()

    # --- registrations ---------------------------------------------------------------

    async def forward(self, entry: CtlEntry) -> str:
        """Send ``entry`` to the controller; the controller's name once it stored it.

        Raises ``NoController`` if none is known or it cannot be reached, and
        ``RegistrationRefused`` with the controller's reason.
        """
        controller = self.following
        if controller is None:
            raise NoController(
                f"{self.node_id} knows no controller now: is a majority of the eligible"
                f" nodes ({', '.join(sorted(self.electors)) or 'none configured'}) up?"
            )
        reply = None
        try:
            with trio.move_on_after(4 * self._report_s):
                reply = await self._request(controller, CtlRegister(id=0, entry=entry))
        except PeerUnavailable as exc:
            raise NoController(f"controller {controller}: {exc}") from None
        if not isinstance(reply, CtlAck):
            raise NoController(f"controller {controller} did not answer in time")
        if not reply.ok:
            if reply.code == ErrorCode.BAD_REGISTRATION:
                raise RegistrationRefused(reply.message)
            raise NoController(reply.message)
        return controller

    async def forward_profile(self, change: CtlProfile) -> CtlProfileReply:
        """Send a key profile change to the controller, which distributes it; its answer
        (each node's outcome).  Raises ``NoController`` if none is known, it cannot be
        reached, or it is no longer the controller."""
        controller = self.following
        if controller is None:
            raise NoController(
                f"{self.node_id} knows no controller now to distribute the profile: is a"
                f" majority of the eligible nodes ({', '.join(sorted(self.electors))}) up?"
                " Try again, or change this node only with --local"
            )
        reply = None
        try:
            with trio.move_on_after(8 * self._report_s):
                reply = await self._request(controller, change)
        except PeerUnavailable as exc:
            raise NoController(f"controller {controller}: {exc}") from None
        if not isinstance(reply, CtlProfileReply):
            raise NoController(f"controller {controller} did not answer in time")
        if not reply.ok and reply.code == ErrorCode.NOT_CONTROLLER:
            raise NoController(reply.message)
        return reply

    def status(self) -> ReporterStatus:
        installed = sorted({r.destination for r in self._settings if r.source == self.node_id})
        return ReporterStatus(
            following=self.following,
            term=self.term,
            reports_sent=self.reports_sent,
            reports_refused=self.reports_refused,
            last_refusal=self.last_refusal,
            route_settings=len(self._settings),
            routes_installed=installed,
            budgets={b.destination: b.bits_per_s for b in self.budgets},
        )
