"""The controller's view of the network: soft state rebuilt from node reports.

Theory of operation
-------------------
Every node reports its QKD links, its end-to-end pools, its peer sessions, its SAE pairs'
demand and its relay load (``CtlReport``).  The controller keeps each node's last report
and nothing else it could not get again: a new controller has the same view once every
node has reported to it, which the nodes do as soon as it announces itself.  On top of
the reports lie the operator's registrations (``CtlEntry``: nodes and links added or
taken out at runtime), which are not soft: they are replicated to the eligible nodes.

Two topologies come out of it (paper Table 4 items 8-9):

- the **QKD network**: nodes and QKD links, each link merged from both ends' reports
  (up only if every end that reported says so), plus links registered by the operator;
- the **QKMS network**: nodes, their peer sessions, and the end-to-end pools as virtual
  links with the path (previous and next hops) their relays take.

A node whose reports stop for ``lost_after`` seconds is lost: its links leave the routing
graph until it reports again.  A report is checked whole before anything of it is kept
(``BadReport`` says what is wrong); a refused report changes nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import networkx as nx

from protocol import CtlDemand, CtlEntry, CtlLink, CtlRelayLoad, CtlReport, ErrorCode

from ..errors import QkmsError

MAX_QBER = 0.5
"""Above this, a QBER is no measurement of a working link: the report is refused."""
MAX_LINK_RATE_BPS = 1e12
"""A key rate above this (1 Tbit/s) is beyond any QKD device: the report is refused."""


class BadReport(QkmsError):
    """A node's report is inconsistent or impossible; nothing of it was kept."""

    wire_code = ErrorCode.BAD_REPORT


@dataclasses.dataclass
class NodeView:
    """What the controller knows of one node."""

    node_id: str
    reported_at: float | None = None
    seq: int = 0
    period_s: float = 0.0
    software: str = ""
    location: str = ""
    links: dict[str, CtlLink] = dataclasses.field(default_factory=dict)
    peers: list[str] = dataclasses.field(default_factory=list)
    demand: list[CtlDemand] = dataclasses.field(default_factory=list)
    relay: CtlRelayLoad = dataclasses.field(default_factory=CtlRelayLoad)
    reported_wall: float | None = None
    windows: dict[tuple[str, str, str], Window] = dataclasses.field(default_factory=dict)
    """Per SAE pair (master, slave, slave's KME): its key over the last report period."""


@dataclasses.dataclass(frozen=True)
class Window:
    """One SAE pair's key between two reports (wall-clock times)."""

    start: float
    end: float
    asked_bits: int
    served_bits: int

    @property
    def asked_bps(self) -> float:
        return self.asked_bits / (self.end - self.start) if self.end > self.start else 0.0


@dataclasses.dataclass(frozen=True)
class LinkView:
    """One QKD link as the controller sees it: both ends' reports merged.

    This is what ``link_cost`` weighs.
    """

    link_id: str
    a: str
    b: str
    ends: dict[str, CtlLink]
    """The last report of each end that reported the link."""
    registered: bool
    removed: bool
    up: bool

    @property
    def state(self) -> str:
        if self.removed:
            return "removed"
        if not self.ends:
            return "registered"
        return "up" if self.up else "down"

    @property
    def rate_bps(self) -> float:
        """The link's key rate: what its ends measured, the lower if they differ."""
        rates = [e.rate_bps for e in self.ends.values()]
        return min(rates) if rates else 0.0

    @property
    def spent_bps(self) -> float:
        """Link key both ends spent on relay hops over their last report periods."""
        return sum(e.spent_bps for e in self.ends.values())

    @property
    def qber(self) -> float | None:
        values = [e.qber for e in self.ends.values() if e.qber is not None]
        return max(values) if values else None

    def ready_bits(self, owner: str) -> int:
        """Ready key on the link that ``owner`` may allocate (from either end's report)."""
        mine = self.ends.get(owner)
        if mine is not None:
            return mine.ready_here
        other = self.ends.get(self.b if owner == self.a else self.a)
        return other.ready_there if other is not None else 0


LinkCost = Callable[[LinkView], float]


class Topology:
    """The controller's soft state.  See the module docstring."""

    def __init__(self, *, lost_after: float) -> None:
        self.lost_after = lost_after
        self.nodes: dict[str, NodeView] = {}
        self._links_ends: dict[str, tuple[str, str]] = {}
        """Every link id ever seen and its two ends (sorted): a link id names one link."""
        self.registry: dict[tuple[str, str], CtlEntry] = {}

    # --- input -----------------------------------------------------------------------

    def apply_report(
        self, sender: str, report: CtlReport, now: float, wall: float | None = None
    ) -> None:
        """Keep ``report`` from node ``sender`` (``now`` on the controller's clock, ``wall``
        the time of day).  Raises ``BadReport``; then nothing changed."""
        self._check(sender, report)
        view = self.nodes.get(sender) or NodeView(sender)
        if wall is not None:
            before = {(d.master, d.slave, d.kme): d for d in view.demand}
            start = view.reported_wall if view.reported_wall is not None else wall
            windows = {}
            for d in report.demand:
                key = (d.master, d.slave, d.kme)
                old = before.get(key)
                windows[key] = Window(
                    start,
                    wall,
                    max(0, d.asked_bits - (old.asked_bits if old else 0)),
                    max(0, d.served_bits - (old.served_bits if old else 0)),
                )
            view.windows, view.reported_wall = windows, wall
        view.reported_at, view.seq, view.period_s = now, report.seq, report.period_s
        view.software, view.location = report.software, report.location
        view.links = {link.link_id: link for link in report.links}
        view.peers = sorted(set(report.peers))
        view.demand = list(report.demand)
        view.relay = report.relay
        self.nodes[sender] = view
        for link in report.links:
            if not link.virtual:
                self._links_ends.setdefault(link.link_id, _ends(sender, link.peer))

    def _check(self, sender: str, report: CtlReport) -> None:
        def bad(message: str) -> BadReport:
            return BadReport(f"report from {sender}: {message}")

        if report.node != sender:
            raise bad(f"it names node {report.node}; a node reports only for itself")
        entry = self.registry.get(("node", sender))
        if entry is not None and entry.removed:
            raise bad(
                f"{sender} is removed from the network (qkmsctl node add {sender} takes it back)"
            )
        seen: set[str] = set()
        for link in report.links:
            where = f"link {link.link_id}"
            if link.link_id in seen:
                raise bad(f"{where} is reported twice")
            seen.add(link.link_id)
            if link.peer == sender:
                raise bad(f"{where} joins {sender} to itself")
            if link.qber is not None and link.qber > MAX_QBER:
                raise bad(f"{where}: QBER {link.qber:g} above {MAX_QBER} is not a working link")
            if link.rate_bps > MAX_LINK_RATE_BPS:
                raise bad(f"{where}: key rate {link.rate_bps:g} bit/s is impossible")
            if link.hops and (link.hops[0] != sender or link.hops[-1] != link.peer):
                raise bad(f"{where}: its path must go from {sender} to {link.peer}")
            known = self._links_ends.get(link.link_id)
            if link.virtual:
                if known is not None:
                    raise bad(f"{where} is a QKD link of {known[0]} and {known[1]}")
                continue
            registered = self.registry.get(("link", link.link_id))
            if known is None and registered is not None:
                known = _ends(registered.a or "", registered.b or "")
            if known is not None and known != _ends(sender, link.peer):
                raise bad(f"{where} joins {known[0]} and {known[1]}, not {sender} and {link.peer}")
        if sender in report.peers:
            raise bad(f"{sender} names itself among its peers")

    def set_registry(self, entries: Iterable[CtlEntry]) -> None:
        """The operator's registrations, in place of the last ones."""
        self.registry = {(e.kind, e.name): e for e in entries}

    def forget(self, node: str) -> None:
        self.nodes.pop(node, None)

    # --- views -----------------------------------------------------------------------

    def alive(self, node: str, now: float) -> bool:
        """Reported within ``lost_after`` and not removed by the operator."""
        view = self.nodes.get(node)
        entry = self.registry.get(("node", node))
        if entry is not None and entry.removed:
            return False
        return (
            view is not None
            and view.reported_at is not None
            and now - view.reported_at <= self.lost_after
        )

    def node_state(self, node: str, now: float) -> str:
        entry = self.registry.get(("node", node))
        if entry is not None and entry.removed:
            return "removed"
        if node not in self.nodes:
            # Never reported here: registered by the operator, or known only as the far
            # end of another node's link.
            return "registered" if entry is not None else "silent"
        return "up" if self.alive(node, now) else "lost"

    def node_ids(self) -> list[str]:
        named = {n for n in self.nodes}
        named |= {e.name for e in self.registry.values() if e.kind == "node"}
        for a, b in self._links_ends.values():
            named |= {a, b}
        return sorted(named)

    def links(self, now: float) -> list[LinkView]:
        """Every QKD link: reported by an end, or registered."""
        ids = set(self._links_ends)
        ids |= {e.name for e in self.registry.values() if e.kind == "link"}
        return self._links(sorted(ids), now)

    def _links(self, ids: list[str], now: float) -> list[LinkView]:
        out = []
        for link_id in ids:
            entry = self.registry.get(("link", link_id))
            a, b = self._links_ends.get(link_id) or _ends(
                (entry.a if entry else None) or "", (entry.b if entry else None) or ""
            )
            ends = {
                n: self.nodes[n].links[link_id]
                for n in (a, b)
                if n in self.nodes and link_id in self.nodes[n].links and self.alive(n, now)
            }
            removed = bool(entry and entry.removed)
            up = bool(ends) and all(e.up for e in ends.values())
            out.append(
                LinkView(link_id, a, b, ends, registered=entry is not None, removed=removed, up=up)
            )
        return out

    def node_key(self, node: str, now: float) -> object:
        """The parts of ``links``, ``demand_pairs``, ``multipath_pairs`` and the live
        nodes that ``node``'s own report can change: its liveness, the state of the QKD
        links it is an end of, and the pairs it relays from (see ``apply_report``)."""
        ids = {lid for lid, ends in self._links_ends.items() if node in ends}
        ids |= {
            e.name
            for e in self.registry.values()
            if e.kind == "link" and node in (e.a, e.b) and e.name not in self._links_ends
        }
        links = [(v.link_id, v.up, v.removed) for v in self._links(sorted(ids), now)]
        view = self.nodes.get(node)
        pairs: list[tuple[str, str]] = []
        multipath: list[tuple[str, str]] = []
        alive = self.alive(node, now)
        if view is not None and alive:
            pairs = sorted(p for p in self._demand_pairs_of(node, view))
            multipath = sorted(
                (node, link.peer) for link in view.links.values() if link.virtual and link.multipath
            )
        return (alive, links, pairs, multipath)

    def virtual_links(self) -> list[tuple[str, CtlLink]]:
        """Every end-to-end pool as its ends reported it: ``(reporting node, link)``."""
        return [
            (node, link)
            for node, view in sorted(self.nodes.items())
            for link in view.links.values()
            if link.virtual
        ]

    def graph(self, link_cost: LinkCost, now: float) -> nx.Graph[str]:
        """The routing graph: live nodes, and the up QKD links between them, weighted.

        A registered link no end has reported yet counts as up (the operator says it is
        there); a removed link or node is left out whatever its reports say.
        """
        graph: nx.Graph[str] = nx.Graph()
        graph.add_nodes_from(n for n in self.node_ids() if self.alive(n, now))
        for link in self.links(now):
            if link.removed or not (self.alive(link.a, now) and self.alive(link.b, now)):
                continue
            if link.up or (link.registered and not link.ends):
                graph.add_edge(link.a, link.b, cost=link_cost(link), link_id=link.link_id)
        return graph

    def multipath_pairs(self, now: float) -> list[tuple[str, str]]:
        """Ordered pairs (source, destination) whose pool at the source takes node-disjoint
        paths (its report marks the virtual link ``multipath``)."""
        return sorted(
            (node, link.peer)
            for node, view in self.nodes.items()
            if self.alive(node, now)
            for link in view.links.values()
            if link.virtual and link.multipath
        )

    def demand_pairs(self, now: float) -> list[tuple[str, str]]:
        """Ordered pairs (source, destination) that relay: every end of an end-to-end pool,
        and every SAE pair whose slave's KME is not a QKD neighbour of its master's."""
        pairs: set[tuple[str, str]] = set()
        for node, view in self.nodes.items():
            if self.alive(node, now):
                pairs |= self._demand_pairs_of(node, view)
        return sorted(pairs)

    @staticmethod
    def _demand_pairs_of(node: str, view: NodeView) -> set[tuple[str, str]]:
        pairs: set[tuple[str, str]] = set()
        neighbours = {link.peer for link in view.links.values() if not link.virtual}
        for link in view.links.values():
            if link.virtual:
                pairs.add((node, link.peer))
        for d in view.demand:
            if d.kme != node and d.kme not in neighbours:
                pairs.add((node, d.kme))
        return pairs


def _ends(a: str, b: str) -> tuple[str, str]:
    return (a, b) if a <= b else (b, a)
