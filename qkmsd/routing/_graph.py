"""The topology (nodes, directed hop costs) and the routes over it.

Theory of operation
-------------------
Each QKD link is two arcs, one per direction, since a hop X -> Y pads with the key X owns
and the two ends' halves differ.  The arcs live in a rustworkx ``PyDiGraph`` (and its
reverse); the shortest-path searches are rustworkx's, in Rust.

**Best route and alternates** (``routes``): Yen's algorithm for the k shortest simple
paths, with Lawler's refinement (a new path only spurs from the node where it left the path
it was found from).  Each spur search is rustworkx's A* towards the destination, guided by
the exact distance to the destination in the whole graph: one Dijkstra from the
destination over the reversed arcs, kept per destination until the topology changes.  The
graph Yen searches in has fewer arcs and nodes than the whole graph, so that distance never
overestimates, and it is exact wherever the spur path can follow the shortest path: A*
then walks straight to the destination and only explores where the removed nodes force a
detour.  Yen removes the nodes of the root path and the arcs earlier paths took from the
spur node; here they are not removed but priced out of reach: the estimate of a removed
node and the cost of a removed arc are set to ``_BLOCK`` (more than any route costs), so
A* expands them only when no path avoids them, and such a result is discarded.

**Node-disjoint paths** (``disjoint_routes``): a minimum-cost flow of up to n units from
source to destination in the node-split graph (each node an in-node and an out-node joined
by one arc of capacity 1), by successive shortest paths (Suurballe and Tarjan) with node
potentials, each search a rustworkx Dijkstra on the residual graph: the n paths together
cost as little as any n node-disjoint paths can.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator

import msgspec
import rustworkx as rx

from ._cost import DEFAULT_PARAMS, CostParams, LinkState, link_cost, relay_key_bits

ALTERNATES = 3
"""Routes after the best one that ``routes`` gives by default: 4 in all."""

MAX_ARC_COST = 1e6
"""Largest hop cost ``set_cost`` accepts."""

_BLOCK = 1e15
"""The estimate of a removed node and the cost of a removed arc in a spur search:
more than any route costs (at most ``MAX_ARC_COST`` a hop, fewer than 1e8 hops)."""


class Path(msgspec.Struct, frozen=True):
    """A route: the nodes from source to destination, and the sum of its hop costs."""

    nodes: tuple[str, ...]
    cost: float

    @property
    def hops(self) -> int:
        return len(self.nodes) - 1

    def key_bits(self, n_bits: int) -> int:
        """Link key, in bits over all its links, that relaying an ``n_bits`` key spends."""
        return relay_key_bits(self.hops, n_bits)


class Topology:
    """Nodes and the cost of a hop over each QKD link, each way; routes between nodes.

    Not thread-safe.  Changes clear the cached distances, so routes always reflect the
    latest costs.
    """

    def __init__(self, params: CostParams = DEFAULT_PARAMS) -> None:
        self.params = params
        self._index: dict[str, int] = {}
        self._names: list[str] = []
        self._fwd: rx.PyDiGraph[int, float] = rx.PyDiGraph(multigraph=False)
        self._rev: rx.PyDiGraph[int, float] = rx.PyDiGraph(multigraph=False)
        self._arcs: dict[tuple[int, int], tuple[int, int, float]] = {}
        """(u, v) -> (arc index in ``_fwd``, arc index in ``_rev``, cost)."""
        self._to: dict[int, list[float]] = {}
        """Destination -> distance of every node to it (``_BLOCK`` when unreachable)."""

    # --- building ------------------------------------------------------------------

    def add_node(self, name: str) -> None:
        """Add a node with no links (adding one already there does nothing)."""
        self._node(name)

    def set_link(self, state: LinkState) -> None:
        """Add or replace a link from its state; a link that is down gets no arcs."""
        self.set_cost(
            state.a,
            state.b,
            link_cost(state, state.a, self.params),
            link_cost(state, state.b, self.params),
        )

    def set_links(self, states: Iterable[LinkState]) -> None:
        for state in states:
            self.set_link(state)

    def set_cost(self, a: str, b: str, cost_ab: float | None, cost_ba: float | None) -> None:
        """Set the cost of the hop a -> b and of b -> a; None removes that arc.

        Raises ``ValueError`` for a == b or a cost that is not in (0, ``MAX_ARC_COST``].
        """
        if a == b:
            raise ValueError(f"link {a}~{b}: a link joins two different nodes")
        for cost in (cost_ab, cost_ba):
            if cost is not None and not 0.0 < cost <= MAX_ARC_COST:
                raise ValueError(f"link {a}~{b}: hop cost {cost} not in (0, {MAX_ARC_COST:g}]")
        u, v = self._node(a), self._node(b)
        self._set_arc(u, v, cost_ab)
        self._set_arc(v, u, cost_ba)

    def remove_link(self, a: str, b: str) -> None:
        """Remove both arcs between a and b (if any); the nodes stay."""
        if a in self._index and b in self._index:
            u, v = self._index[a], self._index[b]
            self._set_arc(u, v, None)
            self._set_arc(v, u, None)

    def cost(self, a: str, b: str) -> float | None:
        """The cost of the hop a -> b, or None if there is no usable link."""
        arc = self._arcs.get((self._index.get(a, -1), self._index.get(b, -1)))
        return None if arc is None else arc[2]

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def nodes(self) -> list[str]:
        return list(self._names)

    def neighbours(self, name: str) -> list[str]:
        """The nodes ``name`` has a usable hop to."""
        if name not in self._index:
            return []
        return [self._names[v] for v in self._fwd.successor_indices(self._index[name])]

    def _node(self, name: str) -> int:
        index = self._index.get(name)
        if index is None:
            index = self._index[name] = len(self._names)
            self._names.append(name)
            self._fwd.add_node(index)
            self._rev.add_node(index)
            self._to.clear()
        return index

    def _set_arc(self, u: int, v: int, cost: float | None) -> None:
        arc = self._arcs.get((u, v))
        if arc is not None and cost is not None:
            if arc[2] == cost:
                return
            self._fwd.update_edge_by_index(arc[0], cost)
            self._rev.update_edge_by_index(arc[1], cost)
            self._arcs[u, v] = (arc[0], arc[1], cost)
        elif arc is not None:
            self._fwd.remove_edge_from_index(arc[0])
            self._rev.remove_edge_from_index(arc[1])
            del self._arcs[u, v]
        elif cost is not None:
            self._arcs[u, v] = (
                self._fwd.add_edge(u, v, cost),
                self._rev.add_edge(v, u, cost),
                cost,
            )
        else:
            return
        self._to.clear()

    # --- routes --------------------------------------------------------------------

    def routes(self, source: str, destination: str, alternates: int = ALTERNATES) -> list[Path]:
        """The least-cost route from ``source`` to ``destination`` and up to ``alternates``
        more, in cost order (equal costs in the order of their node names): simple paths,
        each different.

        Empty when either node is unknown, they are the same, or no route joins them.
        """
        if alternates < 0:
            raise ValueError(f"alternates must be >= 0, not {alternates}")
        found = [self._path(p) for p in self._yen(source, destination, alternates + 1)]
        return sorted(found, key=lambda p: (p.cost, p.nodes))

    def disjoint_routes(self, source: str, destination: str, n: int) -> list[Path]:
        """Up to ``n`` routes that share no node but the two ends, least total cost first
        among all such sets, listed cheapest first.

        Fewer when the network has fewer (as many as it has); empty when either node is
        unknown, they are the same, or no route joins them.
        """
        if n < 1:
            raise ValueError(f"n must be >= 1, not {n}")
        s, d = self._index.get(source), self._index.get(destination)
        if s is None or d is None or s == d:
            return []
        found = [self._path(p) for p in _disjoint(self._arcs, len(self._names), s, d, n)]
        return sorted(found, key=lambda p: (p.cost, p.nodes))

    def distances_to(self, destination: str) -> dict[str, float]:
        """The cost of the least-cost route to ``destination`` from every node that has one
        (the destination itself at 0)."""
        if destination not in self._index:
            return {}
        to = self._distances(self._index[destination])
        return {self._names[v]: c for v, c in enumerate(to) if c < _BLOCK}

    def _path(self, nodes: tuple[int, ...]) -> Path:
        return Path(tuple(self._names[v] for v in nodes), self._cost_of(nodes))

    def _cost_of(self, nodes: tuple[int, ...]) -> float:
        arcs = self._arcs
        return math.fsum(arcs[u, v][2] for u, v in zip(nodes, nodes[1:], strict=False))

    def _distances(self, d: int) -> list[float]:
        to = self._to.get(d)
        if to is None:
            to = [_BLOCK] * len(self._names)
            for v, c in rx.digraph_dijkstra_shortest_path_lengths(self._rev, d, float).items():
                to[v] = c
            to[d] = 0.0
            self._to[d] = to
        return to

    def _yen(self, source: str, destination: str, k: int) -> list[tuple[int, ...]]:
        s, d = self._index.get(source), self._index.get(destination)
        if s is None or d is None or s == d:
            return []
        to = self._distances(d)
        if to[s] >= _BLOCK:
            return []
        best = self._spur(s, d, to, (), [])
        assert best is not None
        found = [best]
        departs = [0]
        seen = {best}
        candidates: list[tuple[float, tuple[int, ...], int]] = []
        while len(found) < k:
            last, depart = found[-1], departs[-1]
            for i in range(depart, len(last) - 1):
                root = last[: i + 1]
                taken = [p[i + 1] for p in found if p[: i + 1] == root]
                spur = self._spur(last[i], d, to, root[:-1], taken)
                if spur is None:
                    continue
                path = root[:-1] + spur
                if path not in seen:
                    seen.add(path)
                    heapq.heappush(candidates, (self._cost_of(path), path, i))
            if not candidates:
                break
            _, path, depart = heapq.heappop(candidates)
            found.append(path)
            departs.append(depart)
        return found

    def _spur(
        self,
        spur: int,
        d: int,
        to: list[float],
        removed: tuple[int, ...],
        taken: list[int],
    ) -> tuple[int, ...] | None:
        """The least-cost path from ``spur`` to ``d`` avoiding the ``removed`` nodes and the
        arcs from ``spur`` to the ``taken`` nodes, or None."""
        kept = [to[v] for v in removed]
        for v in removed:
            to[v] = _BLOCK
        for v in taken:
            self._fwd.update_edge_by_index(self._arcs[spur, v][0], _BLOCK)
        try:
            found = tuple(
                rx.digraph_astar_shortest_path(self._fwd, spur, d.__eq__, float, to.__getitem__)
            )
        except rx.NoPathFound:
            return None
        finally:
            for v, c in zip(removed, kept, strict=True):
                to[v] = c
            for v in taken:
                self._fwd.update_edge_by_index(self._arcs[spur, v][0], self._arcs[spur, v][2])
        if len(found) < 2 or found[-1] != d:
            return None
        if found[1] in taken or (removed and not set(found).isdisjoint(removed)):
            return None
        return found


# --- node-disjoint paths -----------------------------------------------------------------


def _disjoint(
    arcs: dict[tuple[int, int], tuple[int, int, float]], count: int, s: int, d: int, n: int
) -> Iterator[tuple[int, ...]]:
    """Up to ``n`` node-disjoint paths s -> d of least total cost (successive shortest
    paths with potentials on the node-split graph; node v is in-node 2v, out-node 2v+1)."""
    residual: rx.PyDiGraph[int, tuple[int, int, float]] = rx.PyDiGraph(multigraph=False)
    residual.add_nodes_from(range(2 * count))
    index: dict[tuple[int, int], int] = {}

    def add(u: int, v: int, cost: float) -> None:
        index[u, v] = residual.add_edge(u, v, (u, v, cost))

    initial: list[tuple[int, int, tuple[int, int, float]]] = [
        (2 * v, 2 * v + 1, (2 * v, 2 * v + 1, 0.0)) for v in range(count) if v != s and v != d
    ]
    initial += [
        (2 * u + 1, 2 * v, (2 * u + 1, 2 * v, cost))
        for (u, v), (_, _, cost) in arcs.items()
        if v != s and u != d
    ]
    for (u, v, _), e in zip(initial, residual.add_edges_from(initial), strict=True):
        index[u, v] = e
    source, sink = 2 * s + 1, 2 * d
    potential = [0.0] * (2 * count)

    def reduced(arc: tuple[int, int, float]) -> float:
        # Never below 0: rounding may leave -1e-16 on an arc of a shortest path.
        return max(0.0, arc[2] + potential[arc[0]] - potential[arc[1]])

    flow: set[tuple[int, int]] = set()
    for _ in range(n):
        dist = rx.digraph_dijkstra_shortest_path_lengths(residual, source, reduced)
        if sink not in dist:
            break
        path = rx.digraph_dijkstra_shortest_paths(residual, source, sink, reduced)[sink]
        for v, c in dist.items():
            potential[v] += c
        for u, v in zip(path, path[1:], strict=False):
            _, _, cost = residual.get_edge_data_by_index(index[u, v])
            residual.remove_edge_from_index(index.pop((u, v)))
            add(v, u, -cost)
            if (v, u) in flow:
                flow.remove((v, u))
            else:
                flow.add((u, v))
    succ: dict[int, list[int]] = {}
    for u, v in flow:
        succ.setdefault(u, []).append(v)
    for first in succ.get(source, []):
        nodes = [s]
        at = first
        while at != sink:
            nodes.append(at // 2)
            (at,) = succ[at + 1]  # in-node -> out-node carries the flow; then one arc on
        nodes.append(d)
        yield tuple(nodes)
