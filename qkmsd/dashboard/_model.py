"""What the dashboard shows, read from the agents and versioned.

``Dashboard.read`` reads the sources (concurrent readers share one read per
``READ_EVERY_S``); the version grows each time what the page shows changes.  A change is
*prompt* (peer up or down, an alarm raised, changed or cleared, a link's level band or
driver state, a relay's state, draining) or *minor* (bit counts, QBER): ``changes``
yields prompt ones at once and minor ones at most every ``MINOR_EVERY_S``.  ``poke``
wakes every waiter at once (the app calls it when a peer connects or goes): a
disconnection reaches the page without waiting for the next read.

Only ids, states, counts and levels are shown: never key material, key ids or block ids.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping, Sequence
from typing import Any

import msgspec
import trio

from ..log import get_logger
from ..profiles import ProfileStatus
from ..relay import RelayRecord
from ..state import AlarmView
from ..status import NodeStatus
from ._layout import Point, layout

log = get_logger("qkms.dashboard")

READ_EVERY_S = 0.2
"""Waiters read the sources this often (and at once when poked)."""
MINOR_EVERY_S = 2.0
"""A change in counts only is sent at most this often."""
HEARTBEAT_S = 15.0
"""An event stream with nothing new sends a comment this often (a gone client is noticed)."""
HOLD_S = 1.0
"""How long a long poll waits for a change before it answers with the same state."""
RECENT_RELAYS = 10
RECENT_FAILURES = 10

AdminMethod = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


class NodeView(msgspec.Struct, frozen=True):
    node_id: str
    role: str
    """``self``, ``peer`` (a session with this node) or ``remote`` (known from the
    topology only)."""
    up: bool | None
    """None: not known here (a remote node)."""
    state: str
    """The peer session's state (``connected``, ``disconnected``...); ``up`` for this node,
    ``unknown`` for a remote one."""
    x: float
    y: float
    """Where it is drawn, in the unit square (see ``_layout``)."""
    draining: bool = False
    controller: bool = False


class LinkView(msgspec.Struct, frozen=True):
    link_id: str
    peer: str
    kind: str
    """``qkd`` (a QKD link) or ``e2e`` (an end-to-end pool of relayed key)."""
    level: str
    """``empty`` (no owned ready key), ``low`` (below ``low_bits``) or ``normal``."""
    owned_ready_bits: int
    low_bits: int
    driver: str
    driver_state: str
    synchronised: bool
    qber: float | None
    qber_high: bool


class EdgeView(msgspec.Struct, frozen=True):
    """A QKD link between two other nodes, from the topology.  From a node's config its
    state is not known here (``unknown``); from the controller's topology it is the merged
    state of both ends' reports (``up``, ``down``, ``registered``, ``removed``) with the
    key each end may hand out."""

    a: str
    b: str
    state: str = "unknown"
    link_id: str = ""
    rate_bps: float | None = None
    qber: float | None = None
    ready_a: int | None = None
    """Ready key bits ``a`` owns on the link (None: not known here)."""
    ready_b: int | None = None


class AlarmItem(msgspec.Struct, frozen=True):
    code: str
    resource: str
    severity: str
    raised_at: float
    acknowledged: bool


class RelayItem(msgspec.Struct, frozen=True):
    relay_id: str
    e2e_link_id: str
    path: list[str]
    role: str
    state: str
    started_at: float = 0.0
    error: str = ""
    """Why it failed (an error message naming nodes and links, never key material)."""
    in_flight: bool = False
    """Under way: started or forwarded here, its end not yet known here."""


FAILED = frozenset({"failed", "discarded"})


class RelayTotals(msgspec.Struct, frozen=True):
    """This node's relays since it started: as source, confirmed and failed."""

    confirmed: int = 0
    failed: int = 0
    in_flight: int = 0
    """Relays under way now among the recent ones this node took part in."""


class SaeItem(msgspec.Struct, frozen=True):
    sae_id: str
    requests: int
    delivered: int
    """Keys handed to the SAE (a count)."""
    errors: int
    errors_by_status: dict[str, int] = {}
    """Requests answered with an error, by HTTP status."""


class ProfileItem(msgspec.Struct, frozen=True):
    """A key generation profile and its service in the current period (counts only)."""

    name: str
    active: bool
    node_pairs: list[str]
    sae_pairs: list[str]
    served: int
    """Keys served to the profile's pairs in the current period (a count)."""
    served_bits: int
    target_bits: int
    shortfall_bits: int


class PathItem(msgspec.Struct, frozen=True):
    nodes: list[str]
    cost: float


class RouteItem(msgspec.Struct, frozen=True):
    """The paths from ``source`` to ``destination`` (best first) and where they come from:
    ``controller`` (its routes), or this node's routing table (``manual``, ``computed``,
    or ``controller`` for paths the controller pushed here)."""

    source: str
    destination: str
    paths: list[PathItem]
    origin: str


class PoolItem(msgspec.Struct, frozen=True):
    """An end-to-end pool of relayed key between ``a`` and ``b``: the ready bits each end
    owns (None: not known here), its level as ``a`` sees it."""

    link_id: str
    a: str
    b: str
    ready_a: int | None
    ready_b: int | None
    up: bool | None
    hops: list[str] = []


class DashboardState(msgspec.Struct, frozen=True):
    """What the page shows (``/state.json``)."""

    version: int
    node_id: str
    draining: bool
    controller: str | None
    nodes: list[NodeView]
    links: list[LinkView]
    edges: list[EdgeView]
    alarms: list[AlarmItem]
    relays: list[RelayItem]
    saes: list[SaeItem]
    relay_failures: list[RelayItem] = []
    """The newest failed relays (``RECENT_FAILURES``)."""
    relays_in_flight: list[RelayItem] = []
    """Relays under way here, newest first (``RECENT_FAILURES`` at most)."""
    relay_totals: RelayTotals = RelayTotals()
    profiles: list[ProfileItem] = []
    routes: list[RouteItem] = []
    pools: list[PoolItem] = []
    view_of: str = "node"
    """``controller``: the whole network from the controller's topology (this node holds
    the role); ``node``: what this node and its peer sessions know."""

    def prompt(self) -> tuple[Any, ...]:
        """What must reach an open page at once when it changes."""
        return (
            self.draining,
            self.controller,
            [(n.node_id, n.up, n.state) for n in self.nodes],
            [(lk.link_id, lk.level, lk.driver_state, lk.qber_high) for lk in self.links],
            [(a.code, a.resource, a.severity, a.acknowledged) for a in self.alarms],
            [(r.relay_id, r.state) for r in self.relays],
            [r.relay_id for r in self.relays_in_flight],
            [(p.name, p.active) for p in self.profiles],
            [(e.a, e.b, e.state) for e in self.edges],
            [(r.source, r.destination, [p.nodes for p in r.paths]) for r in self.routes],
        )


@dataclasses.dataclass(frozen=True)
class NetworkTopology:
    """The whole network as some source knows it: node ids and the QKD links between them.

    ``app.py`` builds it from the controller's topology on the node that holds the role
    (``from_controller``: node and link states, end-to-end pools, routes) and from
    ``[relay] topology`` elsewhere (ids only).  ``coordinates`` place nodes (x east, y
    north; longitude and latitude work), from ``[dashboard] positions``.
    """

    nodes: frozenset[str] = frozenset()
    links: frozenset[tuple[str, str]] = frozenset()
    coordinates: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)
    from_controller: bool = False
    node_states: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Node id -> ``up``, ``lost``, ``silent``, ``registered`` or ``removed``."""
    link_states: Mapping[tuple[str, str], EdgeView] = dataclasses.field(default_factory=dict)
    """Sorted pair of ends -> the link's state (a ``EdgeView``)."""
    pools: Sequence[PoolItem] = ()
    routes: Sequence[RouteItem] = ()


@dataclasses.dataclass
class DashboardSources:
    """Where the dashboard reads from (handed in by ``app.py``).

    ``low_bits`` holds each end-to-end pool's low watermark by link id; other links use
    ``default_low_bits`` (the ``pool-low`` alarm's threshold).  ``admin`` is the node's
    admin method table: the page reads (``alarms``, ``node``, ``perf``) and operates
    (``alarm_ack``, ``alarm_clear``, ``node_drain``, ``node_undrain``) through the very
    methods ``qkmsctl`` calls.
    """

    node_status: Callable[[], Awaitable[NodeStatus]]
    alarms: Callable[[], list[AlarmView]] | None = None
    relays: Callable[[], list[RelayRecord]] | None = None
    low_bits: Mapping[str, int] = dataclasses.field(default_factory=dict)
    default_low_bits: int = 16384
    qber_max: float = 0.11
    topology: Callable[[], NetworkTopology] | None = None
    controller: Callable[[], str | None] | None = None
    draining: Callable[[], bool] | None = None
    saes: Callable[[], Mapping[str, Any]] | None = None
    """SAE id -> counters with ``requests``, ``keys`` and ``errors`` (by HTTP status)."""
    admin: Mapping[str, AdminMethod] = dataclasses.field(default_factory=dict)
    profiles: Callable[[], Sequence[ProfileStatus]] | None = None
    routes: Callable[[], Sequence[RouteItem]] | None = None
    """This node's routing table (used where the topology has no routes)."""
    relay_totals: Callable[[], tuple[int, int]] | None = None
    """Relays this node started: (confirmed, failed) since it started."""
    etsi015: Callable[[], Awaitable[dict[str, Any]]] | None = None
    """This node's ETSI GS QKD 015 ``qkd_node`` (served on the operator TLS listener)."""


def link_level(owned_ready_bits: int, low_bits: int) -> str:
    if owned_ready_bits <= 0:
        return "empty"
    return "low" if owned_ready_bits < low_bits else "normal"


class Dashboard:
    """The dashboard's state, versioned: the version grows each time what it shows changes."""

    def __init__(self, sources: DashboardSources) -> None:
        self.sources = sources
        self._version = 0
        self._last: DashboardState | None = None
        self._read_at = -1e9
        self._lock = trio.Lock()
        self._poked = trio.Event()
        self._positions: dict[str, Point] = {}
        self._laid_out: tuple[frozenset[str], frozenset[tuple[str, str]]] | None = None

    def poke(self) -> None:
        """Something changed (a peer came or went): waiters read the sources now."""
        self._poked.set()
        self._poked = trio.Event()
        self._read_at = -1e9

    async def read(self) -> DashboardState:
        """The current state: the sources are read unless another reader just did."""
        async with self._lock:
            if self._last is not None and trio.current_time() - self._read_at < READ_EVERY_S:
                return self._last
            state = await self._read()
            self._read_at = trio.current_time()
            last = self._last
            if last is None or msgspec.structs.replace(state, version=0) != (
                msgspec.structs.replace(last, version=0)
            ):
                self._version += 1
                self._last = msgspec.structs.replace(state, version=self._version)
            assert self._last is not None
            return self._last

    async def _pause(self) -> None:
        """Until the next read is due or a poke."""
        poked = self._poked
        with trio.move_on_after(READ_EVERY_S):
            await poked.wait()

    async def wait(self, after: int | None) -> DashboardState:
        """The state once its version is not ``after``, or after ``HOLD_S`` (long poll)."""
        state = await self.read()
        if after is None or state.version != after:
            return state
        with trio.move_on_after(HOLD_S):
            while state.version == after:
                await self._pause()
                state = await self.read()
        return state

    async def changes(self) -> AsyncGenerator[DashboardState | None, None]:
        """The state now, then each change as it comes (see the module docstring);
        ``None`` after ``HEARTBEAT_S`` without one.  Runs until the consumer stops."""
        state = await self.read()
        yield state
        sent, sent_at = state, trio.current_time()
        while True:
            await self._pause()
            state = await self.read()
            now = trio.current_time()
            if state.version != sent.version and (
                state.prompt() != sent.prompt() or now - sent_at >= MINOR_EVERY_S
            ):
                yield state
                sent, sent_at = state, now
            elif now - sent_at >= HEARTBEAT_S:
                yield None
                sent_at = now

    async def admin(self, method: str, params: dict[str, Any]) -> dict[str, Any] | None:
        """Call one of the node's admin methods; None if the node has no such method."""
        call = self.sources.admin.get(method)
        return None if call is None else await call(params)

    async def _read(self) -> DashboardState:
        s = self.sources
        status = await s.node_status()
        topology = s.topology() if s.topology is not None else NetworkTopology()
        controller = s.controller() if s.controller is not None else None
        draining = s.draining() if s.draining is not None else False
        peers = {p.node_id: p for p in status.peers}
        names = {status.node_id} | set(peers) | set(topology.nodes)
        names |= {link.peer for link in status.links}
        positions = await self._layout(names, topology)
        nodes = []
        for name in sorted(names):
            x, y = positions.get(name, (0.5, 0.5))
            up: bool | None
            if name == status.node_id:
                role, up, state = "self", True, "up"
            elif name in peers:
                role, state = "peer", peers[name].state
                up = state == "connected"
            elif name in topology.node_states:
                # Known from the controller's topology: reported, lost, or never heard of.
                role, state = "remote", topology.node_states[name]
                up = True if state == "up" else False if state in ("lost", "removed") else None
            else:
                role, up, state = "remote", None, "unknown"
            nodes.append(
                NodeView(
                    name,
                    role,
                    up,
                    state,
                    x,
                    y,
                    draining=draining and role == "self",
                    controller=name == controller,
                )
            )
        links = []
        for link in sorted(status.links, key=lambda link: link.link_id):
            low = s.low_bits.get(link.link_id, s.default_low_bits)
            links.append(
                LinkView(
                    link_id=link.link_id,
                    peer=link.peer,
                    kind="e2e" if link.e2e else "qkd",
                    level=link_level(link.owned_ready_bits, low),
                    owned_ready_bits=link.owned_ready_bits,
                    low_bits=low,
                    driver=link.driver,
                    driver_state=link.driver_state,
                    synchronised=link.synchronised,
                    qber=link.qber,
                    qber_high=link.qber is not None and link.qber > s.qber_max,
                )
            )
        ours = {tuple(sorted((status.node_id, lk.peer))) for lk in status.links if not lk.e2e}
        edges = [
            topology.link_states.get((a, b)) or EdgeView(a, b)
            for a, b in sorted(topology.links)
            if (a, b) not in ours
        ]
        alarms = [
            AlarmItem(a.code, a.resource, a.severity, a.raised_at, a.acknowledged)
            for a in (s.alarms() if s.alarms else [])
        ]
        records = sorted(s.relays() if s.relays else [], key=lambda r: r.started_at)
        relays = [_relay_item(r) for r in reversed(records[-RECENT_RELAYS:])]
        failures = [_relay_item(r) for r in reversed(records) if r.state in FAILED]
        confirmed, failed = s.relay_totals() if s.relay_totals else (0, 0)
        totals = RelayTotals(confirmed, failed, sum(_in_flight(r) for r in records))
        saes = [
            SaeItem(
                name,
                c.requests,
                c.keys,
                sum(c.errors.values()),
                {str(code): n for code, n in sorted(c.errors.items())},
            )
            for name, c in sorted((s.saes() if s.saes else {}).items())
        ]
        profiles = [
            ProfileItem(
                p.profile.name,
                p.active,
                list(p.profile.node_pairs),
                list(p.profile.sae_pairs),
                p.keys_served,
                p.bits_served,
                p.target_bits,
                p.shortfall_bits,
            )
            for p in sorted(s.profiles() if s.profiles else [], key=lambda p: p.profile.name)
        ]
        if topology.from_controller:
            routes = list(topology.routes)
        else:
            routes = list(s.routes()) if s.routes is not None else []
        pools = _pools(status.node_id, status.links, topology.pools)
        return DashboardState(
            0,
            status.node_id,
            draining,
            controller,
            nodes,
            links,
            edges,
            alarms,
            relays,
            saes,
            relay_failures=failures[:RECENT_FAILURES],
            relays_in_flight=[_relay_item(r) for r in reversed(records) if _in_flight(r)][
                :RECENT_FAILURES
            ],
            relay_totals=totals,
            profiles=profiles,
            routes=routes,
            pools=pools,
            view_of="controller" if topology.from_controller else "node",
        )

    async def _layout(self, names: set[str], topology: NetworkTopology) -> dict[str, Point]:
        edges = set(topology.links)
        key = (frozenset(names), frozenset(edges))
        if key != self._laid_out:
            # Hundreds of nodes take a while: off the event loop, once per topology.
            self._positions = await trio.to_thread.run_sync(
                layout, names, edges, topology.coordinates
            )
            self._laid_out = key
        return self._positions


def _in_flight(r: RelayRecord) -> bool:
    return r.ended_at is None and r.state in ("started", "forwarded")


def _relay_item(r: RelayRecord) -> RelayItem:
    return RelayItem(
        r.relay_id,
        r.e2e_link_id,
        list(r.path),
        r.role,
        r.state,
        r.started_at,
        r.error[:200],
        _in_flight(r),
    )


def _pools(me: str, links: Sequence[Any], known: Sequence[PoolItem]) -> list[PoolItem]:
    """End-to-end pools: this node's own (its end's count is exact), then the others the
    topology knows, one entry per pair of ends."""
    out: dict[tuple[str, str], PoolItem] = {}
    for link in links:
        if link.e2e:
            theirs = max(0, link.ready_bits - link.owned_ready_bits)
            up = bool(link.synchronised)
            out[_pair(me, link.peer)] = PoolItem(
                link.link_id, me, link.peer, link.owned_ready_bits, theirs, up
            )
    for pool in known:
        key = _pair(pool.a, pool.b)
        if key not in out:
            out[key] = pool
        elif not out[key].hops and pool.hops:
            out[key] = msgspec.structs.replace(out[key], hops=list(pool.hops))
    return [out[k] for k in sorted(out)]


def _pair(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)


def normalise_links(pairs: Sequence[Sequence[str]]) -> frozenset[tuple[str, str]]:
    """``[relay] topology`` pairs as sorted tuples."""
    out: set[tuple[str, str]] = set()
    for pair in pairs:
        a, b = sorted(pair)
        out.add((a, b))
    return frozenset(out)
