"""The inputs and output of a sharing problem, checked once, and their array form.

A *pair* is an ordered pair of nodes that relays key (the source relays, the budget is
pushed to it).  It uses one or more *paths*; a path is the sequence of node ids a relay
crosses, and crosses every link between consecutive nodes.  A pair with several paths
either splits its key among them (``shares=False``: each key goes over one path, the
budget per path is the solver's choice) or sends every key as XOR shares over all of them
at once (``shares=True``: each delivered bit spends key on every path).

Internally a *route* is one variable of the solvers: one path of a splitting pair, or the
union of all paths of a sharing pair.  Each route crosses links with a coefficient: link
key spent per delivered bit, the overhead times the number of times the route crosses the
link.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from qkmsd.errors import QkmsError

PairId = tuple[str, str]
"""``(source, destination)`` node ids."""
LinkId = tuple[str, str]
"""A QKD link: its two node ids, in sorted order (links are unordered)."""
Policy = Literal["max-min", "proportional", "throughput"]

POLICIES: Final[tuple[Policy, ...]] = ("max-min", "proportional", "throughput")
"""The sharing policies, the default first."""

MAC_KEY_BITS: Final = 256
"""Link key a relay hop spends on its one-time Poly1305 key, whatever the key's size."""

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]


class SharingError(QkmsError):
    """A sharing problem that cannot be solved as given: the message names the bad input."""


def link_id(a: str, b: str) -> LinkId:
    """The id of the link between nodes ``a`` and ``b``, whichever way it is named."""
    return (a, b) if a <= b else (b, a)


def overhead_for(key_bits: int, per_hop_bits: int = MAC_KEY_BITS) -> float:
    """Link key spent on each hop per delivered bit, for relays of ``key_bits`` bits.

    A relay of N bits spends N bits of pad plus ``per_hop_bits`` of MAC key on every link it
    crosses: ``1 + per_hop_bits / key_bits``.  Raises ``SharingError`` for a size below 1.
    """
    if key_bits < 1 or per_hop_bits < 0:
        raise SharingError(
            f"overhead: key_bits {key_bits} and per_hop_bits {per_hop_bits} must be >= 1 and >= 0"
        )
    return 1.0 + per_hop_bits / key_bits


@dataclasses.dataclass(frozen=True)
class Pair:
    """A node pair that relays key, its paths, its demand and its weight.

    ``demand`` is in delivered bits/s (``math.inf``: as much as it can get, a closed loop);
    ``weight`` is its key profile's priority, a share weight (twice the weight, twice the
    share where two pairs compete).  Raises ``SharingError`` for a path that does not run
    from ``source`` to ``destination`` without visiting a node twice, a negative or NaN
    demand, or a weight that is not a positive finite number.
    """

    source: str
    destination: str
    paths: tuple[tuple[str, ...], ...]
    demand: float = math.inf
    weight: float = 1.0
    shares: bool = False
    """Every key as XOR shares over all paths at once, rather than each over one path."""
    overhead: float | None = None
    """Link key this pair spends on each hop per delivered bit; ``None``: the allocation's
    (a key cut for a QKD neighbour spends 1 bit per bit, a relay also its MAC key)."""

    def __post_init__(self) -> None:
        paths = tuple(tuple(path) for path in self.paths)
        object.__setattr__(self, "paths", paths)
        name = f"pair {self.source}->{self.destination}"
        if self.source == self.destination:
            raise SharingError(f"{name}: source and destination are the same node")
        if not paths:
            raise SharingError(f"{name}: no path")
        if len(set(paths)) != len(paths):
            raise SharingError(f"{name}: the same path twice")
        for path in paths:
            if len(path) < 2 or path[0] != self.source or path[-1] != self.destination:
                raise SharingError(
                    f"{name}: path {'-'.join(path)} does not run from "
                    f"{self.source} to {self.destination}"
                )
            if len(set(path)) != len(path):
                raise SharingError(f"{name}: path {'-'.join(path)} visits a node twice")
        if math.isnan(self.demand) or self.demand < 0:
            raise SharingError(f"{name}: demand {self.demand} must be >= 0 (inf: unbounded)")
        if not (math.isfinite(self.weight) and self.weight > 0):
            raise SharingError(f"{name}: weight {self.weight} must be a positive number")
        if self.overhead is not None and not (
            math.isfinite(self.overhead) and self.overhead >= 1.0
        ):
            raise SharingError(f"{name}: overhead {self.overhead} must be a finite number >= 1")

    @property
    def id(self) -> PairId:
        return (self.source, self.destination)

    def links(self, path: Sequence[str]) -> list[LinkId]:
        """The links ``path`` crosses, in order."""
        return [link_id(a, b) for a, b in zip(path, path[1:], strict=False)]


@dataclasses.dataclass(frozen=True)
class Allocation:
    """What a policy gives each pair, each path and what it spends on each link.

    ``rates``: delivered key per pair (bits/s), the pair's relay budget.  ``path_rates``:
    per pair, one rate per path in the order of ``Pair.paths`` (for a ``shares`` pair every
    path carries the pair's whole rate).  ``link_loads``: link key spent per link (bits/s,
    overhead included), every link of the input present.
    """

    policy: Policy
    overhead: float
    rates: Mapping[PairId, float]
    path_rates: Mapping[PairId, tuple[float, ...]]
    link_loads: Mapping[LinkId, float]


@dataclasses.dataclass
class Problem:
    """A checked problem as arrays, pairs and links in sorted order (so results are the
    same for the same input, whatever order it came in)."""

    pairs: list[Pair]
    link_ids: list[LinkId]
    capacity: Floats  # (L,) link key bits/s
    weight: Floats  # (P,)
    demand: Floats  # (P,) inf: unbounded
    route_pair: Ints  # (J,) the pair of each route; a pair's routes are consecutive
    pair_first_route: Ints  # (P,) index of the pair's first route
    ent_link: Ints  # (E,) one entry per (route, link) crossed
    ent_route: Ints  # (E,)
    ent_coef: Floats  # (E,) link key per delivered bit on the route
    overhead: float

    @property
    def single_route(self) -> bool:
        """Every pair has one route: route index == pair index."""
        return len(self.route_pair) == len(self.pairs)

    def link_loads(self, route_rates: Floats) -> Floats:
        loads = np.bincount(
            self.ent_link,
            weights=self.ent_coef * route_rates[self.ent_route],
            minlength=len(self.link_ids),
        )
        return np.asarray(loads, dtype=np.float64)

    def pair_rates(self, route_rates: Floats) -> Floats:
        rates = np.bincount(self.route_pair, weights=route_rates, minlength=len(self.pairs))
        return np.asarray(rates, dtype=np.float64)


def build_problem(
    links: Mapping[tuple[str, str], float], pairs: Iterable[Pair], overhead: float
) -> Problem:
    """Check the input and put it in array form; raises ``SharingError`` naming the fault."""
    if not (math.isfinite(overhead) and overhead >= 1.0):
        raise SharingError(f"overhead {overhead} must be a finite number >= 1")
    rates: dict[LinkId, float] = {}
    for (a, b), rate in links.items():
        key = link_id(a, b)
        if a == b:
            raise SharingError(f"link {a}-{b}: a link joins two different nodes")
        if not (math.isfinite(rate) and rate >= 0):
            raise SharingError(f"link {a}-{b}: rate {rate} must be a finite number >= 0")
        if key in rates and rates[key] != rate:
            raise SharingError(f"link {a}-{b}: given twice with rates {rates[key]} and {rate}")
        rates[key] = float(rate)
    link_ids = sorted(rates)

    by_id: dict[PairId, Pair] = {}
    for pair in pairs:
        if pair.id in by_id:
            raise SharingError(f"pair {pair.source}->{pair.destination}: given twice")
        by_id[pair.id] = pair
    ordered = [by_id[key] for key in sorted(by_id)]

    node_index: dict[str, int] = {}
    for a, b in link_ids:
        node_index.setdefault(a, len(node_index))
        node_index.setdefault(b, len(node_index))
    n_nodes = max(len(node_index), 1)
    link_keys = np.array(
        [
            min(node_index[a], node_index[b]) * n_nodes + max(node_index[a], node_index[b])
            for a, b in link_ids
        ],
        dtype=np.int64,
    )
    link_order = np.argsort(link_keys)
    sorted_keys = link_keys[link_order]

    # One entry per hop: the route it belongs to and its two nodes (-1: a node no link has).
    route_pair: list[int] = []
    first: list[int] = []
    hop_nodes: list[int] = []
    hop_ends: list[int] = []  # index into hop_nodes of each route's last node, exclusive
    for p, pair in enumerate(ordered):
        first.append(len(route_pair))
        if not pair.shares:
            for path in pair.paths:
                route_pair.append(p)
                hop_nodes.extend(node_index.get(node, -1) for node in path)
                hop_ends.append(len(hop_nodes))
        else:
            route_pair.append(p)
            for path in pair.paths:
                hop_nodes.extend(node_index.get(node, -1) for node in path)
                hop_ends.append(len(hop_nodes))
    nodes = np.array(hop_nodes, dtype=np.int64)
    ends = np.array(hop_ends, dtype=np.int64)
    # Segment (path) of each node position; a hop joins positions i and i+1 of one segment.
    segment = np.repeat(np.arange(len(ends)), np.diff(np.concatenate([[0], ends])))
    same = segment[:-1] == segment[1:] if len(nodes) > 1 else np.zeros(0, dtype=bool)
    u, v = nodes[:-1][same], nodes[1:][same]
    seg_of_hop = segment[:-1][same]
    seg_route = _segment_routes(ordered)
    route_of_hop = seg_route[seg_of_hop]
    key = np.minimum(u, v) * n_nodes + np.maximum(u, v)
    pos = np.searchsorted(sorted_keys, key)
    pos = np.minimum(pos, max(len(sorted_keys) - 1, 0))
    found = (u >= 0) & (v >= 0) & (len(sorted_keys) > 0)
    if len(sorted_keys):
        found &= sorted_keys[pos] == key
    if not found.all():
        pair = ordered[route_pair[int(route_of_hop[np.flatnonzero(~found)[0]])]]
        a_name, b_name = next(
            (x, y)
            for path in pair.paths
            for x, y in zip(path, path[1:], strict=False)
            if link_id(x, y) not in rates
        )
        raise SharingError(
            f"pair {pair.source}->{pair.destination}: a path crosses {a_name}-{b_name}, "
            "which is not a known link"
        )
    hop_link = link_order[pos] if len(sorted_keys) else np.zeros(0, dtype=np.int64)
    # Entries: (route, link) with the count of hops, in route then link order.
    flat = route_of_hop * max(len(link_ids), 1) + hop_link
    flat_unique, counts = np.unique(flat, return_counts=True)
    ent_route = flat_unique // max(len(link_ids), 1)
    ent_link = flat_unique % max(len(link_ids), 1)
    route_overhead = np.array(
        [overhead if ordered[r].overhead is None else ordered[r].overhead for r in route_pair],
        dtype=np.float64,
    )
    return Problem(
        pairs=ordered,
        link_ids=link_ids,
        capacity=np.array([rates[key] for key in link_ids], dtype=np.float64),
        weight=np.array([pair.weight for pair in ordered], dtype=np.float64),
        demand=np.array([pair.demand for pair in ordered], dtype=np.float64),
        route_pair=np.array(route_pair, dtype=np.int64),
        pair_first_route=np.array(first, dtype=np.int64),
        ent_link=ent_link.astype(np.int64),
        ent_route=ent_route.astype(np.int64),
        ent_coef=route_overhead[ent_route] * counts.astype(np.float64),
        overhead=overhead,
    )


def _segment_routes(pairs: list[Pair]) -> Ints:
    """The route of each path, paths in input order (a ``shares`` pair's paths share one)."""
    routes: list[int] = []
    route = 0
    for pair in pairs:
        if pair.shares:
            routes.extend([route] * len(pair.paths))
            route += 1
        else:
            routes.extend(range(route, route + len(pair.paths)))
            route += len(pair.paths)
    return np.array(routes, dtype=np.int64)


def to_allocation(problem: Problem, policy: Policy, route_rates: Floats) -> Allocation:
    """The allocation of ``route_rates`` in the caller's terms (pair, path and link ids)."""
    rates = problem.pair_rates(route_rates)
    loads = problem.link_loads(route_rates)
    path_rates: dict[PairId, tuple[float, ...]] = {}
    for p, pair in enumerate(problem.pairs):
        j = int(problem.pair_first_route[p])
        if pair.shares:
            path_rates[pair.id] = (float(rates[p]),) * len(pair.paths)
        else:
            path_rates[pair.id] = tuple(float(r) for r in route_rates[j : j + len(pair.paths)])
    return Allocation(
        policy=policy,
        overhead=problem.overhead,
        rates={pair.id: float(rates[p]) for p, pair in enumerate(problem.pairs)},
        path_rates=path_rates,
        link_loads={key: float(loads[i]) for i, key in enumerate(problem.link_ids)},
    )
