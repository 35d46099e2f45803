"""The routing table: which paths a relay to each destination takes (paper Table 3 item 6).

A manual route from config (the intermediate nodes, in order) comes first; computed routes
follow: the shortest simple paths over the network's QKD links (``[relay] topology``), by
hop count, up to ``alternates`` of them.  A relay that fails on one path is retried on the
next.  The controller will later replace the computed part; the table's shape stays.

``qkmsd.routing`` computes the paths, every hop at cost 1 since this table has no link
states: its least-cost route and alternates (Yen's algorithm) and its node-disjoint route
sets.
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


class Route(msgspec.Struct, frozen=True):
    """One entry of the routing table, as ``qkmsctl routes`` shows it."""

    destination: str
    path: list[str]
    """Every node from this one to the destination."""
    source: str
    """``manual`` (from config) or ``computed``."""
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
        # As many as there are (at most one a link of this node), then the first ``limit``
        # whose first step is a QKD neighbour: a set of the most disjoint paths, least
        # hops in all, shortest first.
        most = max(1, len(self._graph.neighbours(self.node_id)))
        found = self._graph.disjoint_routes(self.node_id, destination, most)
        return [p.nodes for p in found if p.nodes[1] in self._neighbours][:limit]

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
        if self._alternates > 0:
            found = self._graph.routes(self.node_id, destination, self._alternates - 1)
            for path in found:
                if path.nodes not in {e.path for e in out}:
                    out.append(_Entry(path.nodes, "computed", now))
        return [e for e in out if _usable(e.path, self._neighbours)]


def _usable(path: tuple[str, ...], neighbours: frozenset[str]) -> bool:
    """A path a relay can take: first to a neighbour, no node twice, not too long."""
    return (
        2 <= len(path) <= MAX_RELAY_PATH and path[1] in neighbours and len(set(path)) == len(path)
    )
