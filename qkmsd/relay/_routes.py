"""The routing table: which paths a relay to each destination takes (paper Table 3 item 6).

A manual route from config (the intermediate nodes, in order) comes first; then the paths
the controller pushed (``set_controller``: its route settings with this node as source,
best first), kept when the controller goes until another pushes new ones; then this
node's own computation: the shortest simple paths over the network's QKD links
(``[relay] topology``), by hop count, up to ``alternates`` of them.  A relay that fails on
one path is retried on the next.

Node-disjoint path sets (for pools whose keys are split over, or spread across, them) come
from the controller likewise (``set_controller_disjoint``: computed with its key-aware link
costs), kept when it goes; a set with a path this node cannot use now (a link marked
down, a first hop that is not a neighbour) gives way to the node's own computation.

Two kinds of failure news reach the table.  A QKD neighbour whose peer session closed
(for instance, declared down for silence) has its link marked down (``link_down``) until
the session is back (``link_up``): no path through that link is offered, manual ones
included.  A path on which a relay failed further away (a link this node does not see,
a node that died beyond its neighbour) is held (``hold``) for ``HOLD_S``: offered after
every other path, and left out of node-disjoint splits while another path is there, so a
split pool sends its keys whole over the side that works.  A hold ends by itself, so the
path is tried again after a heal without any news from the far side, and at once when a
relay or a share gets through on it (``release``): with every path held, a split goes
over all of them, and the ones that worked must not stay held with the one that did not.

The QKD neighbours are those of the start, plus links registered while the node runs
(``add_neighbour``), less those removed (``remove_neighbour``).

``qkmsd.routing`` computes the paths, every hop at cost 1 since this table has no link
states: its least-cost route and alternates (Yen's algorithm) and its node-disjoint route
sets.  A link marked down is taken out of its graph until it is up again.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec

from protocol import MAX_RELAY_PATH

from ..routing import Topology

ALTERNATES = 3
"""Computed paths kept per destination."""
HOLD_S = 5.0
"""How long a path on which a relay failed beyond this node's links is tried last."""


class Route(msgspec.Struct, frozen=True):
    """One entry of the routing table, as ``qkmsctl routes`` shows it."""

    destination: str
    path: list[str]
    """Every node from this one to the destination."""
    source: str
    """``manual`` (from config), ``controller`` (pushed by it) or ``computed`` (here)."""
    cost: int
    """Hops: each spends link key equal to the relayed key plus a 32-byte MAC key."""
    age_s: float
    """Seconds since the entry was made."""
    held_s: float = 0.0
    """Seconds this path is still tried last, after a relay failed on it (0: not held)."""


@dataclasses.dataclass(frozen=True)
class _Entry:
    path: tuple[str, ...]
    source: str
    made_at: float


class RoutingTable:
    """Routes from ``node_id`` to distant nodes over the QKD links it knows."""

    def __init__(
        self,
        node_id: str,
        *,
        links: Iterable[Sequence[str]],
        manual: Mapping[str, Sequence[str]],
        neighbours: Iterable[str],
        alternates: int = ALTERNATES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node_id = node_id
        self._neighbours = frozenset(neighbours)
        self._graph = Topology()
        self._graph.add_node(node_id)
        for a, b in links:
            self._graph.set_cost(a, b, 1.0, 1.0)
        for n in self._neighbours:
            self._graph.set_cost(node_id, n, 1.0, 1.0)
        self._manual = {dst: tuple(via) for dst, via in manual.items()}
        self._alternates = alternates
        self._clock = clock
        self._entries: dict[str, list[_Entry]] = {}
        self._down: dict[frozenset[str], set[str]] = {}
        self._held: dict[tuple[str, ...], float] = {}
        self._controller: dict[str, list[_Entry]] = {}
        self._controller_disjoint: dict[str, list[tuple[str, ...]]] = {}

    def set_controller(self, routes: Mapping[str, Sequence[Sequence[str]]]) -> None:
        """Take the controller's paths (per destination, best first) in place of the last.

        Each path starts here.  Destinations missing from ``routes`` have no controller
        route any more (this node's own computation serves them).
        """
        now = self._clock()
        self._controller = {
            dst: [_Entry(tuple(p), "controller", now) for p in paths]
            for dst, paths in routes.items()
            if dst != self.node_id
        }
        self._entries.clear()

    def set_controller_disjoint(self, sets: Mapping[str, Sequence[Sequence[str]]]) -> None:
        """Take the controller's node-disjoint path sets (per destination, cheapest first)
        in place of the last; destinations missing from ``sets`` have none any more."""
        self._controller_disjoint = {
            dst: [tuple(p) for p in paths]
            for dst, paths in sets.items()
            if dst != self.node_id and paths
        }

    def pushed_disjoint(self, destination: str) -> list[tuple[str, ...]]:
        """The controller's node-disjoint set to ``destination`` (empty: none pushed)."""
        return list(self._controller_disjoint.get(destination, []))

    def has_route(self, destination: str) -> bool:
        """Whether a manual or controller route to ``destination`` is known here."""
        return destination in self._manual or bool(self._controller.get(destination))

    # --- neighbours ------------------------------------------------------------------

    def add_neighbour(self, peer: str) -> None:
        """A QKD link with ``peer`` added while the node runs (a device registered):
        computed paths may start over it from now on."""
        if peer == self.node_id or peer in self._neighbours:
            return
        self._neighbours = self._neighbours | {peer}
        self._graph.set_cost(self.node_id, peer, 1.0, 1.0)
        self._entries.clear()

    def remove_neighbour(self, peer: str) -> None:
        """The QKD link with ``peer`` removed while the node runs: no path starts over it,
        and its down marks and holds are forgotten (a link added again starts afresh)."""
        if peer not in self._neighbours:
            return
        self._neighbours = self._neighbours - {peer}
        link = frozenset((self.node_id, peer))
        self._graph.remove_link(self.node_id, peer)
        self._down.pop(link, None)
        for path in [p for p in self._held if link in _links(p)]:
            del self._held[path]
        self._entries.clear()

    # --- failure news ----------------------------------------------------------------

    def link_down(self, a: str, b: str, reason: str = "session") -> bool:
        """Offer no path over link ``a``-``b`` until every reason is withdrawn with
        ``link_up``; ``reason`` names why (``session``: the peer session closed; an alarm
        code whose action is ``route-down``).  True if the link was up."""
        link = frozenset((a, b))
        reasons = self._down.get(link)
        if reasons is not None:
            reasons.add(reason)
            return False
        if self._graph.cost(a, b) is None:
            return False
        self._down[link] = {reason}
        self._graph.remove_link(a, b)
        self._entries.clear()
        return True

    def link_up(self, a: str, b: str, reason: str = "session") -> bool:
        """Withdraw ``reason``; the link is used again once none is left, and paths over it
        lose their holds.  True if the link came up."""
        link = frozenset((a, b))
        for path in [p for p in self._held if link in _links(p)]:
            del self._held[path]
        reasons = self._down.get(link)
        if reasons is None or reason not in reasons:
            return False
        reasons.discard(reason)
        if reasons:
            return False
        del self._down[link]
        self._graph.set_cost(a, b, 1.0, 1.0)
        self._entries.clear()
        return True

    def hold(self, path: Sequence[str]) -> None:
        """Try ``path`` after every other one, and keep it out of splits, for ``HOLD_S``."""
        self._held[tuple(path)] = self._clock() + HOLD_S

    def release(self, path: Sequence[str]) -> None:
        """A relay (or a share of one) got through on ``path``: it is held no longer."""
        self._held.pop(tuple(path), None)

    def links_down(self) -> list[tuple[str, str]]:
        """The links marked down, each as a sorted pair."""
        return sorted(tuple(sorted(link)) for link in self._down)  # type: ignore[misc]

    def _held_for(self, path: tuple[str, ...], now: float) -> float:
        until = self._held.get(path)
        if until is None:
            return 0.0
        if until <= now:
            del self._held[path]
            return 0.0
        return until - now

    def _usable_now(self, path: tuple[str, ...]) -> bool:
        return not any(link in self._down for link in _links(path))

    # --- lookups ---------------------------------------------------------------------

    def paths(self, destination: str) -> list[tuple[str, ...]]:
        """Paths to ``destination`` in the order to try them: manual, then computed.

        Every path starts here and goes first to a QKD neighbour; empty if none is known.
        Paths over a link marked down are left out; held paths come last.
        """
        now = self._clock()
        paths = [e.path for e in self._table(destination)]
        return sorted(paths, key=lambda p: self._held_for(p, now) > 0)

    def disjoint_paths(self, destination: str, limit: int) -> list[tuple[str, ...]]:
        """Up to ``limit`` node-disjoint paths to ``destination``, cheapest first: the
        controller's set while every path of it is usable here, else computed here.

        No node but the two ends is on two of them, so no single intermediate node sees
        two shares of a key split over them.  Links marked down are left out of the
        graph; held paths are left out too, unless every path is held.
        """
        pushed = self._controller_disjoint.get(destination, [])
        if pushed and all(_usable(p, self._neighbours) and self._usable_now(p) for p in pushed):
            paths = pushed[:limit]
        else:
            # As many as there are (at most one a link of this node), then the first
            # ``limit`` whose first step is a QKD neighbour: a set of the most disjoint
            # paths, least hops in all, shortest first.
            most = max(1, len(self._graph.neighbours(self.node_id)))
            found = self._graph.disjoint_routes(self.node_id, destination, most)
            paths = [p.nodes for p in found if p.nodes[1] in self._neighbours][:limit]
        now = self._clock()
        fresh = [p for p in paths if not self._held_for(p, now)]
        return fresh or paths

    def routes(self, destinations: Iterable[str]) -> list[Route]:
        now = self._clock()
        return [
            Route(
                dst,
                list(e.path),
                e.source,
                len(e.path) - 1,
                round(now - e.made_at, 3),
                round(self._held_for(e.path, now), 3),
            )
            for dst in destinations
            for e in self._table(dst)
        ]

    def _table(self, destination: str) -> list[_Entry]:
        entries = self._entries.get(destination)
        if entries is None:
            entries = self._entries[destination] = self._compute(destination)
        return entries

    def _compute(self, destination: str) -> list[_Entry]:
        now = self._clock()
        out: list[_Entry] = []
        via = self._manual.get(destination)
        if via is not None:
            out.append(_Entry((self.node_id, *via, destination), "manual", now))
        for entry in self._controller.get(destination, []):
            if entry.path not in {e.path for e in out}:
                out.append(entry)
        if self._alternates > 0:
            found = self._graph.routes(self.node_id, destination, self._alternates - 1)
            for path in found:
                if path.nodes not in {e.path for e in out}:
                    out.append(_Entry(path.nodes, "computed", now))
        return [e for e in out if _usable(e.path, self._neighbours) and self._usable_now(e.path)]


def _links(path: Sequence[str]) -> set[frozenset[str]]:
    return {frozenset(pair) for pair in zip(path, path[1:], strict=False)}


def _usable(path: tuple[str, ...], neighbours: frozenset[str]) -> bool:
    """A path a relay can take: first to a neighbour, no node twice, not too long."""
    return (
        2 <= len(path) <= MAX_RELAY_PATH and path[1] in neighbours and len(set(path)) == len(path)
    )
