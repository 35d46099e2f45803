"""The simulator: N real nodes (``qkmsd.app.Node``) in one trio run on a virtual clock.

Each node is the daemon's own wiring, run with ``listen=False`` (no sockets: the engine
joins every pair of peers by a ``Wire``'s stream pair through
``node.peers.serve_authenticated``), a virtual wall clock, simulated QKD links
(``SimLinkDriver``) and its key store inline on the event loop (``inline_store``: a store
call takes no virtual time, and no worker thread runs while the clock jumps).  Whatever
``Node`` runs (key manager, relay, supply, controller, state) runs here.

Sessions: one over each QKD link (its fibre: link faults act on it), and one between every
demand pair and every pair of controller-eligible nodes that are no neighbours (the IP
network: only node crashes end those).  A session that ends is opened again once both
nodes are up and its wire is up (``RECONNECT_S`` later, as a dialler would).

Run it with ``trio.run(..., clock=trio.testing.MockClock(autojump_threshold=0))``:
``simulate`` does so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import itertools
import logging
import math
import random
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import trio
import trio.testing

from cli._pki import init_ca, issue_node
from qkd_drivers import LinkEnd, PairedParams
from qkmsd.app import Node
from qkmsd.config import Config, ConfigError, config_from_mapping
from qkmsd.keystore import generate_master_key
from qkmsd.relay import RelayRecord

from ._demand import (
    REFUSED_PAUSE_S,
    Demand,
    Ledger,
    PairTally,
    dec_request,
    enc_request,
    keys_of,
    sae_of,
)
from ._faults import Fault
from ._report import Report, WindowMark, build_report
from ._topology import SimTopology
from ._wire import DOWN, SILENT, UP, SimLinkDriver, Wire

RECONNECT_S = 1.0
"""How long after a session ends its nodes try again (a dialler's first back-off)."""
POLL_S = 0.25
"""How often the engine reads the nodes' relays and controller role."""
REQUEST_TIMEOUT_S = 10.0
"""An SAE gives up on a request after this long (an HTTP client's time-out)."""
DRAIN_S = 12.0
"""After the run: demand stops, faults are mended, and relays under way get this long."""
NOWHERE = "127.0.0.1:1"  # never dialled: the nodes do not listen
GC_THRESHOLDS = (50_000, 20, 20)
"""The cyclic collector's thresholds while a run goes on (Python's: 700, 10, 10).

N nodes share one heap: a full collection walks every node's objects, and the objects
allocated (so the collections) grow with N too, so that at Python's thresholds the
collector's cost grows as N squared: at 200 nodes it took 20 of 57 CPU s of a 12-s run.
Young collections 70 times rarer make the older ones as much rarer; the nodes as started
are frozen out of the collections (``gc.freeze``) until the run ends.  Garbage cycles
(exceptions and their frames, mostly) wait longer to be freed: the same peak RSS there."""


@dataclasses.dataclass(frozen=True)
class SimSettings:
    """What a run does besides its topology."""

    seconds: float
    seed: int = 0
    faults: tuple[Fault, ...] = ()
    demand: Demand = Demand("closed")
    pairs: int | None = None
    """Demand pairs (ordered, drawn with the seed); ``None``: every ordered pair."""
    pair_list: tuple[tuple[str, str], ...] = ()
    """These ordered pairs ask for keys instead (``pairs`` is then ignored)."""
    key_bits: int = 256
    keys_per_request: int = 8
    heartbeat_s: float | None = None
    """``[sync] heartbeat_s`` of every node; ``None``: the daemon's default."""
    relay: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {
            "block_bits": 4096,
            "low_bits": 16384,
            "high_bits": 32768,
            "link_reserve_bits": 8192,
        }
    )
    state_dir: Path | None = None
    """Where the nodes keep their state; ``None``: a temporary directory."""
    lease_s: float | None = None
    """``[controller] lease_s`` of the eligible nodes; ``None``: the daemon's (2 s)."""
    drain_s: float = DRAIN_S
    """Virtual seconds after the demand ends, every fault mended, for relays to end."""
    sharing: str | None = None
    """``[controller] sharing`` of the eligible nodes (how the controller's budgets share
    link key: ``max-min``, ``proportional``, ``throughput``); ``None``: the daemon's."""
    warmup_s: float = 0.0
    """The report's rates and link key count from this virtual time to the end of the
    demand (``--warmup``); 0: the whole demand."""


class SimError(Exception):
    """A simulation that cannot run as asked; the message says why."""


@dataclasses.dataclass
class SimNode:
    name: str
    config: Config
    drivers: dict[str, SimLinkDriver]
    node: Node | None = None
    alive: bool = False
    scopes: set[trio.CancelScope] = dataclasses.field(default_factory=set)
    incarnations: list[Node] = dataclasses.field(default_factory=list)
    changed: trio.Event = dataclasses.field(default_factory=trio.Event)

    def note_change(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    async def guarded(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """``fn()`` under a scope that this node's crash cancels; None if it did."""
        with trio.CancelScope() as scope:
            self.scopes.add(scope)
            try:
                return await fn()
            finally:
                self.scopes.discard(scope)
        return None


@dataclasses.dataclass
class RelaySeen:
    pair: tuple[str, str]
    path: tuple[str, ...]
    state: str
    started_at: float
    ended_at: float | None
    node_alive: bool = True


class Network:
    """The nodes, wires and records of one run.  Build with ``Network.build``."""

    def __init__(self, topo: SimTopology, settings: SimSettings, home: Path) -> None:
        self.topo = topo
        self.settings = settings
        self.home = home
        self.wires: dict[frozenset[str], Wire] = {}
        self.link_counts: dict[str, dict[str, int]] = {}
        self.nodes: dict[str, SimNode] = {}
        self.pairs: list[tuple[str, str]] = []
        self.sessions: set[frozenset[str]] = set()
        self.tallies: dict[tuple[str, str], PairTally] = {}
        self.ledger = Ledger()
        self._records: dict[int, tuple[str, Node, list[RelayRecord]]] = {}
        """Source relay records by node incarnation, oldest first."""
        self.leaders: list[tuple[float, str | None]] = []
        self.fault_log: list[tuple[Fault, float, str]] = []
        self.epoch = time.time()
        self.wall_started = 0.0
        self.wall_s = 0.0
        self.virtual_s = 0.0
        self.cpu_s = 0.0
        """Virtual seconds run, the drain included."""
        self.demand_on = True
        self.window_marks: list[WindowMark] = []
        """Counts at the warm-up and at the end of the demand (``--warmup`` only)."""

    def clock(self) -> float:
        """The nodes' wall clock: virtual seconds since the run began, after ``epoch``."""
        return self.epoch + trio.current_time()

    # --- building ---------------------------------------------------------------------

    @classmethod
    def build(cls, topo: SimTopology, settings: SimSettings, home: Path) -> Network:
        net = cls(topo, settings, home)
        net._choose_pairs()
        links_of: dict[str, list[str]] = {n: [] for n in topo.nodes}
        for link in topo.links:
            net.wires[frozenset((link.a, link.b))] = Wire()
            net.link_counts[link.link_id] = {link.a: 0, link.b: 0}
            links_of[link.a].append(link.link_id)
            links_of[link.b].append(link.link_id)
        net.sessions = set(net.wires)
        electors = sorted(topo.electors)
        # Every node reports to the controller over a session with each eligible node.
        to_electors = ((n, e) for n in topo.nodes for e in electors if n != e)
        for a, b in itertools.chain(net.pairs, itertools.combinations(electors, 2), to_electors):
            key = frozenset((a, b))
            if key not in net.sessions:
                net.sessions.add(key)
                net.wires[key] = Wire()
        pki = home / "pki"
        init_ca(pki)
        issue_node(pki, "SIM")  # one certificate for every node: no TLS runs here
        master = home / "master.key"
        generate_master_key(master)
        peers_of: dict[str, set[str]] = {n: set() for n in topo.nodes}
        for key in net.sessions:
            a, b = sorted(key)
            peers_of[a].add(b)
            peers_of[b].add(a)
        for name in topo.nodes:
            cfg = net._config(name, peers_of[name], pki, master)
            net.nodes[name] = SimNode(name, cfg, {})
        return net

    def _choose_pairs(self) -> None:
        ordered = [(a, b) for a in self.topo.nodes for b in self.topo.nodes if a != b]
        want = self.settings.pairs
        if self.settings.pair_list:
            ordered = list(dict.fromkeys(self.settings.pair_list))
        elif want is not None and want < len(ordered):
            ordered = sorted(random.Random(self.settings.seed).sample(ordered, want))
        self.pairs = ordered
        self.tallies = {p: PairTally() for p in ordered}

    def _config(self, name: str, peers: set[str], pki: Path, master: Path) -> Config:
        topo, s = self.topo, self.settings
        state = self.home / "nodes" / name
        links: dict[str, Any] = {}
        for link in topo.links:
            if name in (link.a, link.b):
                links[link.link_id] = {
                    "peer": link.b if link.a == name else link.a,
                    "driver": "paired",
                    "params": self._link_params(link.link_id, link.rate_bps, link.block_bits),
                }
        sync: dict[str, Any] = {"timeout_s": 10.0}
        if s.heartbeat_s is not None:
            sync["heartbeat_s"] = s.heartbeat_s
            # The silence limit (four heartbeats by default) may not pass the sync time-out.
            sync["timeout_s"] = max(10.0, 4 * s.heartbeat_s)
        data: dict[str, Any] = {
            "node": {"id": name, "state_dir": str(state), "master_key_file": str(master)},
            "tls": {
                "ca": str(pki / "ca.pem"),
                "cert": str(pki / "nodes" / "SIM.pem"),
                "key": str(pki / "nodes" / "SIM.key"),
            },
            "listen": {"peer": "127.0.0.1:0", "admin_socket": str(state / "admin.sock")},
            "sync": sync,
            "peers": {p: {"address": NOWHERE} for p in sorted(peers)},
            "links": links,
            "saes": {sae_of(n): {"kme": n} for n in topo.nodes},
            "supply": {"default": {"key_size": s.key_bits}},
            "relay": {**s.relay, "topology": [[lk.a, lk.b] for lk in topo.links]},
        }
        if name in topo.electors:
            data["controller"] = {
                "eligible": True,
                "priority": topo.electors[name],
                "electors": {e: p for e, p in topo.electors.items() if e != name},
            }
            if s.sharing is not None:
                data["controller"]["sharing"] = s.sharing
            if s.lease_s is not None:
                data["controller"]["lease_s"] = s.lease_s
        elif topo.electors:  # reports to the controller, as in a lab: routes and budgets
            data["controller"] = {"electors": dict(topo.electors)}
        state.mkdir(parents=True, exist_ok=True)
        return config_from_mapping(data, source=state / "qkmsd.toml")

    def _link_params(self, link_id: str, rate: float, block_bits: int) -> dict[str, Any]:
        return {
            "seed": f"sim-{self.settings.seed}-{link_id}"[:256].ljust(16, "."),
            "rate_bps": rate,
            "block_bits": block_bits,
        }

    def _drivers(self, sim: SimNode) -> dict[str, SimLinkDriver]:
        drivers = {}
        for link_id, link in sim.config.links.items():
            params = link.params
            assert isinstance(params, PairedParams)
            counts = self.link_counts[link_id]
            name = sim.name

            def count(bits: int, counts: dict[str, int] = counts, name: str = name) -> None:
                counts[name] += bits

            wire = self.wires[frozenset((sim.name, link.peer))]
            drivers[link_id] = SimLinkDriver(
                LinkEnd(link_id, sim.name, link.peer), params, wire, count, self.clock
            )
        return drivers

    # --- running ----------------------------------------------------------------------

    async def run(self) -> Report:
        s = self.settings
        self.wall_started = time.perf_counter()
        cpu_started = time.process_time()
        async with trio.open_nursery() as nursery:
            for sim in self.nodes.values():
                await self.start_node(nursery, sim)
            gc.freeze()  # the nodes as started: out of every collection (see GC_THRESHOLDS)
            for key in self.sessions:
                nursery.start_soon(self._session, key)
            nursery.start_soon(self._watch)
            for fault in s.faults:
                nursery.start_soon(self._fault, nursery, fault)
            async with trio.open_nursery() as demand:
                for pair in self.pairs:
                    demand.start_soon(self._demand, pair)
                if s.warmup_s:
                    await trio.sleep_until(s.warmup_s)
                    self.window_marks.append(WindowMark.take(self))
                await trio.sleep_until(s.seconds)
                self.demand_on = False
                demand.cancel_scope.cancel()
            if s.warmup_s:
                self.window_marks.append(WindowMark.take(self))
            # Drain: mend every fault, and let relays under way end.
            for wire in self.wires.values():
                if wire.state != UP:
                    wire.set(UP)
            await trio.sleep(s.drain_s)
            self._read_relays()
            self.wall_s = time.perf_counter() - self.wall_started
            self.cpu_s = time.process_time() - cpu_started
            self.virtual_s = trio.current_time()
            report = build_report(self)
            nursery.cancel_scope.cancel()
        return report

    async def start_node(self, nursery: trio.Nursery, sim: SimNode) -> None:
        sim.drivers = self._drivers(sim)
        node = Node(
            sim.config,
            listen=False,
            clock=self.clock,
            drivers=sim.drivers,
            inline_store=True,
        )
        scope = await nursery.start(_run_node, node)
        sim.node = node
        sim.scopes.add(scope)
        sim.incarnations.append(node)
        sim.alive = True
        sim.note_change()

    def crash(self, sim: SimNode) -> None:
        sim.alive = False
        for scope in list(sim.scopes):
            scope.cancel()
        sim.scopes.clear()
        sim.note_change()

    async def _session(self, key: frozenset[str]) -> None:
        a, b = (self.nodes[n] for n in sorted(key))
        wire = self.wires[key]
        while True:
            while not (a.alive and b.alive):
                await (a.changed if not a.alive else b.changed).wait()
            await wire.wait_up()
            if not (a.alive and b.alive):
                continue
            end_a, end_b = wire.pair()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_serve, a, end_a, b.name)
                nursery.start_soon(_serve, b, end_b, a.name)
            await trio.sleep(RECONNECT_S)

    async def _watch(self) -> None:
        while True:
            self._read_relays()
            leader = None
            for sim in self.nodes.values():
                c = sim.node.controller if sim.alive and sim.node else None
                if c is not None and c.is_controller():
                    leader = sim.name
            if not self.leaders or self.leaders[-1][1] != leader:
                self.leaders.append((trio.current_time(), leader))
            await trio.sleep(POLL_S)

    def _read_relays(self) -> None:
        """Take the relay records each running node started since the last look.

        The relay agent keeps its recent records newest first and updates them in place,
        so the engine keeps the objects and reads their final state at the end.
        """
        for sim in self.nodes.values():
            node = sim.node
            if node is None or node.relay is None or not sim.alive:
                continue
            seen = self._records.setdefault(id(node), (sim.name, node, []))[2]
            newest = seen[-1] if seen else None
            fresh = []
            for record in node.relay.relays():
                if record is newest:
                    break
                if record.role == "source":
                    fresh.append(record)
            seen.extend(reversed(fresh))

    def relays_seen(self) -> list[RelaySeen]:
        """Every source relay read, as it stands now.  A restarted node's agent reloads its
        records (those under way at the crash as ``discarded``): the latest copy counts."""
        out: dict[tuple[str, str], RelaySeen] = {}
        for name, node, records in self._records.values():
            alive = self.nodes[name].alive and self.nodes[name].node is node
            for record in records:
                a, _, b = record.e2e_link_id.partition("~")
                out[(name, record.relay_id)] = RelaySeen(
                    (min(a, b), max(a, b)),
                    tuple(record.path),
                    record.state,
                    record.started_at - self.epoch,
                    None if record.ended_at is None else record.ended_at - self.epoch,
                    alive,
                )
        return list(out.values())

    async def _fault(self, nursery: trio.Nursery, fault: Fault) -> None:
        await trio.sleep_until(fault.at)
        detail = ""
        if fault.kind in ("link-down", "link-silent", "link-up"):
            wire = self._wire_of(fault.target)
            wire.set({"link-down": DOWN, "link-silent": SILENT, "link-up": UP}[fault.kind])
        elif fault.kind == "node-silent":
            detail = fault.target[0]
            for key, wire in self.wires.items():
                if detail in key:
                    wire.set(SILENT)
        else:
            name = fault.target[0] if fault.kind == "node-crash" else self._leader()
            if name is None:
                self.fault_log.append((fault, trio.current_time(), ""))
                return
            sim = self.nodes[name]
            detail = name
            if sim.alive:
                self.crash(sim)
            self.fault_log.append((fault, trio.current_time(), detail))
            if fault.restart_at is not None:
                await trio.sleep_until(fault.restart_at)
                if not sim.alive:
                    await self.start_node(nursery, sim)
            return
        self.fault_log.append((fault, trio.current_time(), detail))

    def _leader(self) -> str | None:
        return self.leaders[-1][1] if self.leaders else None

    def _wire_of(self, target: tuple[str, ...]) -> Wire:
        text = "-".join(target)
        for link in self.topo.links:
            if text in (f"{link.a}-{link.b}", f"{link.b}-{link.a}"):
                return self.wires[frozenset((link.a, link.b))]
        raise SimError(f"fault on {text!r}: no such link")

    async def _demand(self, pair: tuple[str, str]) -> None:
        s = self.settings
        master, slave = (self.nodes[n] for n in pair)
        tally = self.tallies[pair]
        bits = s.key_bits * s.keys_per_request
        rng = random.Random(f"{s.seed}:{pair}")
        paced = s.demand.kind == "paced"
        interval = bits / s.demand.bps if paced else 0.0
        # Spread the pairs' first requests over one interval (or one second).
        next_at = trio.current_time() + rng.uniform(0, interval or 1.0)
        while True:
            await trio.sleep_until(next_at)
            if paced:
                next_at += interval
            if not (master.alive and slave.alive):
                next_at = max(next_at, trio.current_time() + REFUSED_PAUSE_S)
                continue
            ok = await self._one_request(pair, master, slave, tally)
            if not paced:
                now = trio.current_time()
                next_at = now if ok else now + REFUSED_PAUSE_S

    async def _one_request(
        self, pair: tuple[str, str], master: SimNode, slave: SimNode, tally: PairTally
    ) -> bool:
        s = self.settings
        tally.requests += 1
        m_sae, s_sae = sae_of(master.name), sae_of(slave.name)
        front = master.node.supply if master.node else None
        if front is None:
            return False
        with trio.move_on_after(REQUEST_TIMEOUT_S) as timer:
            response = await master.guarded(
                lambda: front.handle(enc_request(m_sae, s_sae, s.keys_per_request, s.key_bits))
            )
        if timer.cancelled_caught or response is None:
            tally.timed_out += 1
            return False
        if response.status != 200:
            tally.refused += 1
            return False
        keys = keys_of(response)
        self.ledger.enc(pair, keys)
        back = slave.node.supply if slave.alive and slave.node else None
        got = None
        if back is not None:
            ids = [k for k, _ in keys]
            with trio.move_on_after(REQUEST_TIMEOUT_S):
                got = await slave.guarded(lambda: back.handle(dec_request(s_sae, m_sae, ids)))
        if got is None or got.status != 200:
            tally.fetch_failed += len(keys)
            return False
        good = self.ledger.dec(pair, keys_of(got))
        tally.keys_delivered += good
        tally.bits_delivered += good * s.key_bits
        tally.first_delivery_at.append(trio.current_time())
        return True


async def _run_node(node: Node, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            task_status.started(scope)


async def _serve(sim: SimNode, stream: trio.abc.Stream, peer: str) -> None:
    node = sim.node
    if node is None or node.peers is None:
        await stream.aclose()
        return
    peers = node.peers
    await sim.guarded(lambda: peers.serve_authenticated(stream, peer))


@contextlib.contextmanager
def _collector_tuned() -> Iterator[None]:
    """``GC_THRESHOLDS`` meanwhile; what ``Network.run`` freezes out of the collections
    (the nodes as started: ``gc.freeze``) is handed back to them at the end."""
    before = gc.get_threshold()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()


@contextlib.contextmanager
def _threads_inline() -> Iterator[None]:
    """``trio.to_thread.run_sync`` runs its function on the event loop meanwhile.

    On the virtual clock, time jumps whenever every task waits, also while a thread
    works: an agent's hop to a thread (the controller writes its vote that way) would
    see its time-outs fire.  Inline, the call takes no virtual time.
    """
    original = trio.to_thread.run_sync

    async def inline(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args)

    trio.to_thread.run_sync = inline  # type: ignore[assignment]
    try:
        yield
    finally:
        trio.to_thread.run_sync = original


def simulate(topo: SimTopology, settings: SimSettings) -> Report:
    """Run ``topo`` for ``settings.seconds`` virtual seconds; the report.

    Raises ``SimError`` if the run cannot be set up as asked.
    """
    for fault in settings.faults:
        if fault.kind in ("node-crash", "node-silent") and fault.target[0] not in topo.nodes:
            raise SimError(f"fault {fault.label()}: no node {fault.target[0]!r}")
        if fault.kind.startswith("link"):
            names = {f"{lk.a}-{lk.b}" for lk in topo.links} | {
                f"{lk.b}-{lk.a}" for lk in topo.links
            }
            if "-".join(fault.target) not in names:
                raise SimError(f"fault {fault.label()}: no link {'-'.join(fault.target)!r}")
    for a, b in settings.pair_list:
        if a == b or a not in topo.nodes or b not in topo.nodes:
            raise SimError(f"pair {a}-{b}: two distinct nodes of the topology expected")
    if settings.seconds <= 0 or not math.isfinite(settings.seconds):
        raise SimError("--seconds must be a positive number")
    if not 0 <= settings.drain_s <= 3600:
        raise SimError("--drain must be from 0 to 3600 seconds")
    if not 0 <= settings.warmup_s < settings.seconds:
        raise SimError("--warmup must be from 0 to less than --seconds")
    logging.getLogger("qkms").setLevel(logging.CRITICAL)
    logging.getLogger("qkd_drivers").setLevel(logging.CRITICAL)
    with contextlib.ExitStack() as stack:
        if settings.state_dir is None:
            home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="qkmssim-")))
        else:
            home = settings.state_dir
            home.mkdir(parents=True, exist_ok=True)
        try:
            net = Network.build(topo, settings, home)
        except ConfigError as exc:
            raise SimError(f"the nodes' configs: {exc}") from None
        stack.enter_context(_threads_inline())
        stack.enter_context(_collector_tuned())
        clock = trio.testing.MockClock(autojump_threshold=0)
        report: Report = trio.run(net.run, clock=clock)
        return report
