"""The routing table: which paths a relay to each destination takes (paper Table 3 item 6).

A manual route from config (the intermediate nodes, in order) comes first; then the paths
the controller pushed (``set_controller``: its route settings with this node as source,
best first), kept when the controller goes until another pushes new ones; then this
node's own computation: the shortest simple paths over the network's QKD links
(``[relay] topology``), by hop count, up to ``alternates`` of them.  A relay that fails on
one path is retried on the next.

networkx computes the paths (``shortest_simple_paths``, Yen's algorithm): a well-kept
library rather than graph code of our own.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

import msgspec
import networkx as nx

from protocol import MAX_RELAY_PATH

ALTERNATES = 3
"""Computed paths kept per destination."""


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
        self._graph: nx.Graph[str] = nx.Graph()
        self._graph.add_node(node_id)
        self._graph.add_edges_from((a, b) for a, b in links)
        self._graph.add_edges_from((node_id, n) for n in neighbours)
        self._neighbours = frozenset(neighbours)
        self._manual = {dst: tuple(via) for dst, via in manual.items()}
        self._alternates = alternates
        self._clock = clock
        self._entries: dict[str, list[_Entry]] = {}
        self._controller: dict[str, list[_Entry]] = {}

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

    def has_route(self, destination: str) -> bool:
        """Whether a manual or controller route to ``destination`` is known here."""
        return destination in self._manual or bool(self._controller.get(destination))

    def paths(self, destination: str) -> list[tuple[str, ...]]:
        """Paths to ``destination`` in the order to try them: manual, then computed.

        Every path starts here and goes first to a QKD neighbour; empty if none is known.
        """
        return [e.path for e in self._table(destination)]

    def disjoint_paths(self, destination: str, limit: int) -> list[tuple[str, ...]]:
        """Up to ``limit`` node-disjoint paths to ``destination`` (computed, shortest first).

        No node but the two ends is on two of them, so no single intermediate node sees
        two shares of a key split over them.
        """
        if destination not in self._graph or destination == self.node_id:
            return []
        try:
            found = nx.node_disjoint_paths(self._graph, self.node_id, destination)
            paths = sorted((tuple(p) for p in found), key=lambda p: (len(p), p))
        except nx.NetworkXNoPath:
            return []
        return [p for p in paths if p[1] in self._neighbours][:limit]

    def routes(self, destinations: Iterable[str]) -> list[Route]:
        now = self._clock()
        return [
            Route(dst, list(e.path), e.source, len(e.path) - 1, round(now - e.made_at, 3))
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
        if destination in self._graph and destination != self.node_id:
            try:
                found = nx.shortest_simple_paths(self._graph, self.node_id, destination)
                for path in itertools.islice(found, self._alternates):
                    if tuple(path) not in {e.path for e in out}:
                        out.append(_Entry(tuple(path), "computed", now))
            except nx.NetworkXNoPath:
                pass
        return [e for e in out if _usable(e.path, self._neighbours)]


def _usable(path: tuple[str, ...], neighbours: frozenset[str]) -> bool:
    """A path a relay can take: first to a neighbour, no node twice, not too long."""
    return (
        2 <= len(path) <= MAX_RELAY_PATH and path[1] in neighbours and len(set(path)) == len(path)
    )
