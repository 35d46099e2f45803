"""The controller's work under its lease: topology from reports, routes pushed, registrations.

Theory of operation
-------------------
Every eligible node runs this service; it acts only while its election agent says the
node holds the role (``is_controller``), and checks again before each thing it sends, so
a node whose lease ran out stops acting at once.  On taking office it starts from an
empty topology (soft state), gathers the registry from a majority of the eligible nodes
(``_registry.py``), and announces itself (``ctl.announce``) on every peer session; the
nodes answer with their reports at once, so the topology is rebuilt within one report
period.  Then, every report period and whenever a report changes the routing graph (a
link up or down, a node come or lost, a pair with new demand), it computes routes for
every ordered pair that relays (``compute_routes`` with ``link_cost``; a node-disjoint set
too for the pairs whose pool takes disjoint paths) and pushes to each
node on a route the whole set of route settings it is on (``ctl.routes``, Table 4 item 1).
A node's pushed set is sent again only when it changes, or after its session dropped.

Per-pair relay budgets (``ctl.budgets``) are pushed by the same loop once an allocator
is given (``allocate``); without one, none are sent.

Every report's alarm events go into the network's alarm history (``_alarms.py``).  A key
profile change made on any node comes here (``ctl.profile``) and is sent on to every node
that reports (``ctl.profile-apply``), each of which keeps it only if the profile concerns it.

Safety of keys never depends on any of it: a route is a suggestion the relay agent tries
in order; every relay stays atomic whatever the route.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
import trio

from protocol import (
    MAX_REPORT_ITEMS,
    CtlAck,
    CtlAnnounce,
    CtlBudget,
    CtlBudgets,
    CtlEntry,
    CtlProfile,
    CtlProfileApply,
    CtlProfileOutcome,
    CtlProfileReply,
    CtlRegister,
    CtlRegistry,
    CtlRegistryReply,
    CtlReport,
    CtlRoute,
    CtlRouteAsk,
    CtlRouteReply,
    CtlRoutes,
    ErrorCode,
    to_wire,
)

from ..errors import PeerUnavailable, QkmsError
from ..log import get_logger
from ._alarms import NetworkAlarms
from ._registry import Registry
from ._routing import compute_routes, link_cost
from ._topology import BadReport, LinkCost, Topology

log = get_logger("qkms.controller")

SendFn = Callable[[str, Any], Awaitable[bool]]
RequestFn = Callable[[str, Any], Awaitable[Any]]
Allocate = Callable[[Topology, list[CtlRoute], float], dict[str, list[CtlBudget]]]


class NoController(QkmsError):
    """No controller is known, or this node is not it (yet): try again shortly."""

    wire_code = ErrorCode.NO_CONTROLLER


class RegistrationRefused(QkmsError):
    """A registration is invalid, or a majority of the eligible nodes did not store it."""

    wire_code = ErrorCode.BAD_REGISTRATION


class ControllerService:
    """The controller's work.  See the module docstring."""

    def __init__(
        self,
        *,
        node_id: str,
        electors: dict[str, int],
        is_controller: Callable[[], bool],
        term: Callable[[], int],
        leader: Callable[[], str | None],
        send: SendFn,
        request: RequestFn,
        connected: Callable[[], list[str]],
        registry: Registry,
        report_s: float,
        link_cost: LinkCost = link_cost,
        allocate: Allocate | None = None,
        clock: Callable[[], float] = trio.current_time,
        wall: Callable[[], float] = time.time,
        alarms: NetworkAlarms | None = None,
    ) -> None:
        self.node_id = node_id
        self.alarms = alarms or NetworkAlarms(max_age_s=7 * 86400, max_events=20_000, clock=wall)
        """The network's alarm history, from the reports."""
        self.reports_taken = 0
        self.reports_refused = 0
        self.electors = dict(electors)
        self._is_controller = is_controller
        self._term = term
        self._leader = leader
        self._send = send
        self._request = request
        self._connected = connected
        self.registry = registry
        self._report_s = report_s
        self.link_cost = link_cost
        self.allocate = allocate
        self._clock = clock
        self._wall = wall
        self.topology = Topology(lost_after=3 * report_s)
        self._leading = False
        self._registry_ready = False
        self._gathering = False
        self._announce_due = False
        self._wake = trio.Event()
        self._signature: object = None
        self._routes: list[CtlRoute] = []
        self._pushed: dict[str, list[CtlRoute]] = {}
        self._budgets_pushed: dict[str, list[CtlBudget]] = {}
        self._asked: set[tuple[str, str]] = set()
        self._register_lock = trio.Lock()
        self.route_pushes = 0
        self.periods_in_office = 0
        """Report periods this node has held the role for (its loop's quiet rounds)."""

    # --- the loop --------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Load the stored registry, then work while this node holds the role.  Until
        cancelled."""
        await trio.to_thread.run_sync(self.registry.load)
        async with trio.open_nursery() as nursery:
            task_status.started()
            while True:
                with trio.move_on_after(self._report_s) as waited:
                    await self._wake.wait()
                self._wake = trio.Event()
                if not self._is_controller():
                    if self._leading:
                        self._leave_office()
                    continue
                if not self._leading:
                    self._take_office()
                elif waited.cancelled_caught:
                    self.periods_in_office += 1
                    self._announce_due = True
                if not self._registry_ready and not self._gathering:
                    # In the background: an eligible node that is down must not hold up
                    # the announce, and with it the rebuilding of the topology.
                    self._gathering = True
                    nursery.start_soon(self._gather_registry)
                if self._announce_due:
                    self._announce_due = False
                    await self._announce()
                if self._rebuilt():
                    await self._refresh()

    @property
    def leading(self) -> bool:
        """Whether this node acts as controller now."""
        return self._leading and self._is_controller()

    def now(self) -> float:
        return self._clock()

    def wake(self) -> None:
        """Look again now (the election changed, or a report changed the graph)."""
        self._wake.set()

    def _rebuilt(self) -> bool:
        """Whether the topology is whole enough to push routes from: every node named in
        it has reported, or a report period has gone by (a silent node is then lost).
        Until then, nodes keep the routes the last controller pushed."""
        if self.periods_in_office >= 1:
            return True
        now = self._clock()
        return all(
            self.topology.alive(n, now) or self.topology.node_state(n, now) == "removed"
            for n in self.topology.node_ids()
        )

    def _take_office(self) -> None:
        self._announce_due = True
        self._leading = True
        self.topology = Topology(lost_after=3 * self._report_s)
        self.topology.set_registry(self.registry.listing())
        self._registry_ready = False
        self._signature, self._routes = None, []
        self._pushed, self._budgets_pushed, self._asked = {}, {}, set()
        self.periods_in_office = 0
        log.info("controller.took_office", term=self._term())

    def _leave_office(self) -> None:
        self._leading = False
        self._registry_ready = False
        log.info("controller.left_office")

    async def _announce(self) -> None:
        message = CtlAnnounce(term=self._term())
        for peer in [self.node_id, *self._connected()]:
            if not self._is_controller():
                return
            await self._send(peer, message)

    async def peer_down(self, peer: str, reason: str = "") -> None:
        """A session closed: what we pushed there may be lost; push it again later."""
        self._pushed.pop(peer, None)
        self._budgets_pushed.pop(peer, None)

    async def peer_up(self, peer: str) -> None:
        if self._leading:
            self._announce_due = True
            self.wake()  # announce to it now

    # --- routes ----------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Compute routes if the graph or the pairs changed; push what changed per node."""
        now = self._clock()
        graph = self.topology.graph(self.link_cost, now)
        pairs = sorted(set(self.topology.demand_pairs(now)) | self._asked)
        multipath = self.topology.multipath_pairs(now)
        signature = (
            sorted(graph.nodes),
            sorted(
                (min(u, v), max(u, v), round(d["cost"], 9)) for u, v, d in graph.edges(data=True)
            ),
            pairs,
            multipath,
        )
        if signature != self._signature:
            self._signature = signature
            self._routes = compute_routes(graph, pairs, multipath=set(multipath))
        per_node: dict[str, list[CtlRoute]] = {
            n: [] for n in graph.nodes if n == self.node_id or self.topology.alive(n, now)
        }
        for route in self._routes:
            on = {n for p in [*route.paths, *route.disjoint] for n in p.nodes}
            for n in on:
                per_node.setdefault(n, []).append(route)
        for node, routes in per_node.items():
            if self._pushed.get(node) == routes:
                continue
            parts = _parts(routes)
            for i, part in enumerate(parts):
                if not self._is_controller():
                    return
                message = CtlRoutes(
                    term=self._term(), routes=part, part=i, last=i == len(parts) - 1
                )
                if not await self._send(node, message):
                    break
            else:
                self._pushed[node] = routes
                self.route_pushes += 1
        if self.allocate is not None:
            await self._push_budgets(self.allocate(self.topology, self._routes, self._clock()))

    async def _push_budgets(self, budgets: dict[str, list[CtlBudget]]) -> None:
        for node, mine in budgets.items():
            if self._budgets_pushed.get(node) == mine or not self._is_controller():
                continue
            if await self._send(node, CtlBudgets(term=self._term(), budgets=mine)):
                self._budgets_pushed[node] = mine

    def routes(self) -> list[CtlRoute]:
        """The routes computed last."""
        return list(self._routes)

    # --- what nodes ask --------------------------------------------------------------

    def _not_controller(self) -> tuple[str, str, str | None]:
        leader = self._leader()
        where = f"; {leader} is" if leader and leader != self.node_id else ""
        return ErrorCode.NOT_CONTROLLER, f"{self.node_id} is not the controller{where}", leader

    async def handle_report(self, peer: str, report: CtlReport) -> CtlAck:
        """A node's report.  Never raises: a refusal is an answer."""
        if not self.leading:
            code, message, leader = self._not_controller()
            return CtlAck(id=report.id, ok=False, code=code, message=message, controller=leader)
        before = self._graph_key(peer)
        try:
            self.topology.apply_report(peer, report, self._clock(), self._wall())
        except BadReport as exc:
            self.reports_refused += 1
            log.warning("controller.report_refused", peer=peer, error=str(exc)[:300])
            return CtlAck(
                id=report.id,
                ok=False,
                code=ErrorCode.BAD_REPORT,
                message=str(exc)[:1000],
                controller=self.node_id,
                term=self._term(),
            )
        self.reports_taken += 1
        self.alarms.add(peer, report.alarms)
        if self._graph_key(peer) != before:
            self.wake()
        return CtlAck(id=report.id, ok=True, controller=self.node_id, term=self._term())

    def _graph_key(self, node: str) -> object:
        """What of the routing graph and the relaying pairs ``node``'s report can change:
        whether it is alive, the links it is an end of, and the pairs it relays from.  A
        report touches nothing else (``Topology.apply_report`` keeps only the sender's
        view, and a QKD link it names must have it as an end), so this changes with a
        report exactly when the whole network's graph key would, in O(its links) rather
        than O(all links) per report; nodes that fall silent meanwhile are found by the
        loop's own refresh every report period."""
        now = self._clock()
        return self.topology.node_key(node, now)

    async def handle_route_ask(self, peer: str, ask: CtlRouteAsk) -> CtlRouteReply:
        """A node with no route to ``ask.destination``: its routes now, and from now on in
        every push."""
        if not self.leading:
            code, message, _ = self._not_controller()
            return CtlRouteReply(id=ask.id, ok=False, code=code, message=message)
        self._asked.add((peer, ask.destination))
        graph = self.topology.graph(self.link_cost, self._clock())
        multipath = set(self.topology.multipath_pairs(self._clock()))
        routes = compute_routes(graph, [(peer, ask.destination)], multipath=multipath)
        self.wake()
        return CtlRouteReply(id=ask.id, ok=True, routes=routes)

    # --- registrations ---------------------------------------------------------------

    async def handle_register(self, peer: str, message: CtlRegister) -> CtlAck:
        """A registration forwarded by another node.  Never raises."""
        try:
            await self.register(message.entry)
        except (NoController, RegistrationRefused) as exc:
            return CtlAck(id=message.id, ok=False, code=str(exc.wire_code), message=str(exc))
        return CtlAck(id=message.id, ok=True, controller=self.node_id, term=self._term())

    async def register(self, entry: CtlEntry) -> None:
        """Add or take out a node or link, stored by a majority of the eligible nodes.

        Raises ``NoController`` if this node is not the controller (or has not gathered
        the registry yet), ``RegistrationRefused`` if the entry is invalid or fewer than
        a majority stored it.
        """
        if not self.leading:
            raise NoController(self._not_controller()[1])
        if not self._registry_ready:
            raise NoController(
                f"{self.node_id} has just become controller and is still gathering the"
                " registry from the eligible nodes: try again in a moment"
            )
        if entry.kind == "link":
            assert entry.a is not None and entry.b is not None
            for end in (entry.a, entry.b):
                if not entry.removed and self.topology.node_state(end, self._clock()) == "removed":
                    raise RegistrationRefused(f"link {entry.name}: node {end} is removed")
        async with self._register_lock:
            term = self._term()
            old = self.registry.version
            version = (term, old[1] + 1 if old[0] == term else 1)
            entries = self.registry.with_entry(entry)
            await trio.to_thread.run_sync(self.registry.adopt, version, entries)
            stored = 1 + await self._replicate(version, entries)
            self.topology.set_registry(self.registry.listing())
            self.wake()
            needed = len(self.electors) // 2 + 1
            if stored < needed:
                raise RegistrationRefused(
                    f"{entry.kind} {entry.name}: stored by {stored} of {len(self.electors)}"
                    f" eligible nodes, a majority is {needed}; not acknowledged, try again"
                )
        log.info(
            "controller.registered",
            kind=entry.kind,
            name=entry.name,
            removed=entry.removed,
            version=f"{version[0]}.{version[1]}",
        )

    async def _replicate(self, version: tuple[int, int], entries: list[CtlEntry]) -> int:
        """Send the registry to the other eligible nodes; how many hold ``version`` now."""
        replies = await self._ask_electors(CtlRegistry(id=0, version=version, entries=entries))
        return sum(1 for r in replies if tuple(r.version) >= version)

    async def _gather_registry(self) -> None:
        """On taking office: adopt the newest registry a majority holds."""
        try:
            await self._gather()
        finally:
            self._gathering = False

    async def _gather(self) -> None:
        mine = self.registry
        replies = await self._ask_electors(
            CtlRegistry(id=0, version=mine.version, entries=mine.listing())
        )
        if 1 + len(replies) < len(self.electors) // 2 + 1:
            return  # not yet: try again next round
        newest = max(replies, key=lambda r: tuple(r.version), default=None)
        if newest is not None and tuple(newest.version) > mine.version:
            await trio.to_thread.run_sync(
                mine.adopt, _version(newest.version), list(newest.entries)
            )
            await self._ask_electors(
                CtlRegistry(id=0, version=mine.version, entries=mine.listing())
            )
        if self.leading:
            self.topology.set_registry(mine.listing())
            self._registry_ready = True

    async def _ask_electors(self, message: CtlRegistry) -> list[CtlRegistryReply]:
        replies: list[CtlRegistryReply] = []

        async def one(peer: str) -> None:
            try:
                with trio.move_on_after(self._report_s):
                    reply = await self._request(peer, message)
                    if isinstance(reply, CtlRegistryReply) and reply.ok:
                        replies.append(reply)
            except PeerUnavailable:
                pass

        async with trio.open_nursery() as nursery:
            for peer in self.electors:
                if peer != self.node_id:
                    nursery.start_soon(one, peer)
        return replies

    async def handle_registry(self, peer: str, message: CtlRegistry) -> CtlRegistryReply:
        """The controller's registry: store it if newer; answer with what we hold."""
        mine = self.registry
        if peer in self.electors:
            await trio.to_thread.run_sync(
                mine.adopt, _version(message.version), list(message.entries)
            )
            if self._leading:
                self.topology.set_registry(mine.listing())
        return CtlRegistryReply(
            id=message.id, ok=peer in self.electors, version=mine.version, entries=mine.listing()
        )

    # --- key profiles ----------------------------------------------------------------

    async def handle_profile(self, peer: str, message: CtlProfile) -> CtlProfileReply:
        """A profile change forwarded by a node.  Never raises: a refusal is an answer."""
        try:
            return await self.distribute_profile(message)
        except NoController as exc:
            return CtlProfileReply(
                id=message.id, ok=False, code=ErrorCode.NOT_CONTROLLER, message=str(exc)
            )

    async def distribute_profile(self, change: CtlProfile) -> CtlProfileReply:
        """Send ``change`` to every node that reports (this one included); each keeps it
        if the profile concerns it.  A ``set`` that makes the profile concern nodes that
        did not hold it sends them the whole profile (``put``).  ``ok`` is false if no
        node applied it; the outcomes say why.  Raises ``NoController`` if this node is
        not the controller."""
        if not self.leading:
            raise NoController(self._not_controller()[1])
        now = self._clock()
        nodes = sorted(
            {self.node_id, *(n for n in self.topology.node_ids() if self.topology.alive(n, now))}
        )
        away = [
            n
            for n in self.topology.node_ids()
            if n not in nodes and self.topology.node_state(n, now) != "removed"
        ]
        outcomes, profile = await self._apply_profile(nodes, change.op, change.name, change.fields)
        if change.op == "set" and profile:
            skipped = [n for n, o in outcomes.items() if o.result == "skipped"]
            second, _ = await self._apply_profile(skipped, "put", change.name, profile)
            outcomes.update({n: o for n, o in second.items() if o.result != "skipped"})
        listed = [outcomes[n] for n in sorted(outcomes)]
        listed += [
            CtlProfileOutcome(n, "unreachable", "not reporting to the controller now")
            for n in sorted(away)
        ]
        done = any(o.result in ("applied", "removed") for o in listed)
        message = ""
        if not done:
            refused = [f"{o.node}: {o.message}" for o in listed if o.result == "refused"]
            if refused:
                message = "; ".join(refused)
            elif change.op in ("add", "put"):
                message = (
                    f"profile {change.name!r} concerns none of the nodes reporting to"
                    f" {self.node_id} ({', '.join(nodes)}): name their node pairs (A~B) or"
                    " SAE pairs of their SAEs"
                )
            else:
                message = f"no node reporting to {self.node_id} holds profile {change.name!r}"
        log.info(
            "controller.profile",
            op=change.op,
            profile=change.name,
            applied=",".join(o.node for o in listed if o.result in ("applied", "removed")) or "-",
        )
        return CtlProfileReply(
            id=change.id,
            ok=done,
            code="" if done else ErrorCode.BAD_MESSAGE,
            message=message[:1024],
            controller=self.node_id,
            outcomes=listed,
            profile=profile,
        )

    async def _apply_profile(
        self, nodes: list[str], op: Any, name: str, fields: dict[str, Any]
    ) -> tuple[dict[str, CtlProfileOutcome], dict[str, Any]]:
        outcomes: dict[str, CtlProfileOutcome] = {}
        profile: dict[str, Any] = {}
        message = CtlProfileApply(id=0, term=self._term(), op=op, name=name, fields=fields)

        async def one(node: str) -> None:
            nonlocal profile
            reply = None
            try:
                with trio.move_on_after(4 * self._report_s):
                    reply = await self._request(node, message)
            except PeerUnavailable as exc:
                outcomes[node] = CtlProfileOutcome(node, "unreachable", str(exc)[:1024])
                return
            if not isinstance(reply, CtlProfileReply) or not reply.outcomes:
                outcomes[node] = CtlProfileOutcome(node, "unreachable", "no answer in time")
                return
            if not reply.ok:
                outcomes[node] = CtlProfileOutcome(node, "refused", reply.message)
                return
            outcomes[node] = msgspec.structs.replace(reply.outcomes[0], node=node)
            if reply.profile:
                profile = dict(reply.profile)

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(one, node)
        return outcomes, profile

    def statistics(self) -> dict[str, float] | None:
        """The controller's own counters while this node holds the role, else None."""
        if not self.leading:
            return None
        now = self._clock()
        return {
            "reports": float(self.reports_taken),
            "reports_refused": float(self.reports_refused),
            "nodes_alive": float(
                sum(1 for n in self.topology.node_ids() if self.topology.alive(n, now))
            ),
            "alarm_events": float(len(self.alarms)),
        }

    # --- views -----------------------------------------------------------------------

    def topology_view(self) -> dict[str, Any]:
        """The topology as ``qkmsctl topology`` shows it (raises ``NoController`` on a
        node that is not the controller)."""
        if not self.leading:
            raise NoController(self._not_controller()[1] + ": ask the controller")
        return topology_view(self.topology, self._routes, self._clock(), self.node_id, self._term())


ROUTES_SHOWN = 1000
"""Route settings in a ``topology`` answer (the rest are counted): an admin frame is 1 MiB."""


def topology_view(
    topology: Topology, routes: list[CtlRoute], now: float, controller: str, term: int
) -> dict[str, Any]:
    nodes = []
    for node in topology.node_ids():
        view = topology.nodes.get(node)
        entry = topology.registry.get(("node", node))
        nodes.append(
            {
                "node_id": node,
                "state": topology.node_state(node, now),
                "software": view.software if view else "",
                "location": (view.location if view and view.location else "")
                or (entry.location if entry else ""),
                "report_age_s": round(now - view.reported_at, 3)
                if view and view.reported_at is not None
                else None,
                "peers": list(view.peers) if view else [],
                "registered": entry is not None,
                "demand": [
                    {
                        "master": d.master,
                        "slave": d.slave,
                        "kme": d.kme,
                        "asked_bits": d.asked_bits,
                        "served_bits": d.served_bits,
                    }
                    for d in (view.demand if view else [])
                ],
                "relay": {
                    "relays_confirmed": view.relay.relays_confirmed,
                    "relays_failed": view.relay.relays_failed,
                    "hops_forwarded": view.relay.hops_forwarded,
                    "bits_relayed": view.relay.bits_relayed,
                    "link_bits_spent": view.relay.link_bits_spent,
                }
                if view
                else None,
            }
        )
    links = []
    for link in topology.links(now):
        links.append(
            {
                "link_id": link.link_id,
                "a": link.a,
                "b": link.b,
                "kind": "qkd",
                "state": link.state,
                "registered": link.registered,
                "rate_bps": round(link.rate_bps, 3),
                "relay_spent_bps": round(link.spent_bps, 3),
                "qber": link.qber,
                "ready_bits": {n: link.ready_bits(n) for n in (link.a, link.b)},
                "device": {n: e.device for n, e in sorted(link.ends.items())},
            }
        )
    for node, pool in topology.virtual_links():
        links.append(
            {
                "link_id": pool.link_id,
                "a": node,
                "b": pool.peer,
                "kind": "virtual",
                "state": "up" if pool.up else "down",
                "registered": False,
                "rate_bps": round(pool.rate_bps, 3),
                "qber": None,
                "ready_bits": {node: pool.ready_here, pool.peer: pool.ready_there},
                "device": {},
                "hops": list(pool.hops),
            }
        )
    return {
        "controller": controller,
        "term": term,
        "nodes": nodes,
        "links": links,
        "routes": [
            {
                "source": r.source,
                "destination": r.destination,
                "paths": [{"nodes": list(p.nodes), "cost": p.cost} for p in r.paths],
            }
            for r in routes[:ROUTES_SHOWN]
        ],
        "routes_total": len(routes),
    }


PUSH_PART_BYTES = 256 * 1024
"""Route settings per ``ctl.routes`` message, in encoded bytes: well under a frame."""


def _parts(routes: list[CtlRoute]) -> list[list[CtlRoute]]:
    """``routes`` cut into messages of at most ``PUSH_PART_BYTES`` (and item) each."""
    parts: list[list[CtlRoute]] = [[]]
    size = 0
    for route in routes:
        n = len(to_wire(route))
        if parts[-1] and (size + n > PUSH_PART_BYTES or len(parts[-1]) >= MAX_REPORT_ITEMS):
            parts.append([])
            size = 0
        parts[-1].append(route)
        size += n
    return parts


def _version(version: tuple[int, int]) -> tuple[int, int]:
    return (int(version[0]), int(version[1]))


def refusals(node_id: str) -> dict[type[Any], Callable[[str, Any], Awaitable[Any]]]:
    """Handlers for a node that is not eligible: every controller request is refused."""
    message = f"{node_id} is not eligible for the controller role"

    async def ack(peer: str, request: Any) -> CtlAck:
        return CtlAck(id=request.id, ok=False, code=ErrorCode.NOT_CONTROLLER, message=message)

    async def route(peer: str, request: CtlRouteAsk) -> CtlRouteReply:
        return CtlRouteReply(
            id=request.id, ok=False, code=ErrorCode.NOT_CONTROLLER, message=message
        )

    async def registry(peer: str, request: CtlRegistry) -> CtlRegistryReply:
        return CtlRegistryReply(id=request.id, ok=False, version=(0, 0), entries=[])

    async def profile(peer: str, request: CtlProfile) -> CtlProfileReply:
        return CtlProfileReply(
            id=request.id, ok=False, code=ErrorCode.NOT_CONTROLLER, message=message
        )

    return {
        CtlReport: ack,
        CtlRegister: ack,
        CtlRouteAsk: route,
        CtlRegistry: registry,
        CtlProfile: profile,
    }
