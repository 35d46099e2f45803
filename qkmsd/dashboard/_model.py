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
    """A QKD link between two other nodes, from the topology: drawn, its state unknown."""

    a: str
    b: str


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


class SaeItem(msgspec.Struct, frozen=True):
    sae_id: str
    requests: int
    delivered: int
    """Keys handed to the SAE (a count)."""
    errors: int


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

    def prompt(self) -> tuple[Any, ...]:
        """What must reach an open page at once when it changes."""
        return (
            self.draining,
            self.controller,
            [(n.node_id, n.up, n.state) for n in self.nodes],
            [(lk.link_id, lk.level, lk.driver_state, lk.qber_high) for lk in self.links],
            [(a.code, a.resource, a.severity, a.acknowledged) for a in self.alarms],
            [(r.relay_id, r.state) for r in self.relays],
        )


@dataclasses.dataclass(frozen=True)
class NetworkTopology:
    """The whole network as some source knows it: node ids and the QKD links between them.

    Today ``app.py`` builds it from ``[relay] topology``; a controller's topology view
    plugs in the same way (``DashboardSources.topology``).  ``coordinates`` place nodes
    (x east, y north; longitude and latitude work), from ``[dashboard] positions``.
    """

    nodes: frozenset[str] = frozenset()
    links: frozenset[tuple[str, str]] = frozenset()
    coordinates: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=dict)


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
            if name == status.node_id:
                role, up, state = "self", True, "up"
            elif name in peers:
                role, state = "peer", peers[name].state
                up = state == "connected"
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
        edges = [EdgeView(a, b) for a, b in sorted(topology.links) if (a, b) not in ours]
        alarms = [
            AlarmItem(a.code, a.resource, a.severity, a.raised_at, a.acknowledged)
            for a in (s.alarms() if s.alarms else [])
        ]
        records = s.relays() if s.relays else []
        recent = sorted(records, key=lambda r: r.started_at)[-RECENT_RELAYS:]
        relays = [
            RelayItem(r.relay_id, r.e2e_link_id, list(r.path), r.role, r.state)
            for r in reversed(recent)
        ]
        saes = [
            SaeItem(name, c.requests, c.keys, sum(c.errors.values()))
            for name, c in sorted((s.saes() if s.saes else {}).items())
        ]
        return DashboardState(
            0, status.node_id, draining, controller, nodes, links, edges, alarms, relays, saes
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


def normalise_links(pairs: Sequence[Sequence[str]]) -> frozenset[tuple[str, str]]:
    """``[relay] topology`` pairs as sorted tuples."""
    out: set[tuple[str, str]] = set()
    for pair in pairs:
        a, b = sorted(pair)
        out.add((a, b))
    return frozenset(out)
