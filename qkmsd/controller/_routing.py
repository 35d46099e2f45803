"""Routes the controller computes over the reported topology, and what a link costs.

``link_cost`` weighs one QKD link from its ends' reports with ``qkmsd.routing``'s cost of
a hop (scarce key, QBER near its threshold; see docs/controller.md "Route cost"): each hop
costs at least 1 (a hop spends link key equal to the relayed key plus its one-time MAC
key), more as the key its sender owns runs short or its QBER climbs.  The controller's
graph is undirected, so a link costs the dearer of its two directions.  ``compute_routes``
finds, per ordered node pair, up to ``alternates`` least-cost simple paths
(``qkmsd.routing``'s Yen search over rustworkx's Dijkstra, checked against networkx's
``shortest_simple_paths`` in its tests), each with its cost, and a set of node-disjoint
paths of least total cost (``disjoint_set``: ``qkmsd.routing``'s minimum-cost flow over
the same costs) for the pairs whose pools split
keys over, or spread them across, disjoint paths (``multipath``: the pairs whose source's
report marks its pool so).

``allocate_budgets`` shares each direction of each link among the node pairs that draw on
it, relayed pairs on their first route and pairs of QKD neighbours on their link
(``qkmsd.sharing``, max-min by default, up to each pair's measured demand), and gives each
node its per-destination budgets (docs/sharing.md, "Budgets in the network").
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from collections.abc import Set as AbstractSet

import networkx as nx

from protocol import MAX_RELAY_PATH, MAX_RELAY_SHARES, CtlBudget, CtlPath, CtlRoute

from .. import routing, sharing
from ..routing import MAX_ARC_COST, LinkState
from ..routing import link_cost as routing_cost
from ._topology import LinkView, Topology

RELAY_KEY_BITS = 8192
"""The key a relay carries (the per-hop overhead is counted against it) when the caller
does not say (``allocate_budgets(relay_bits=...)``: the node's ``[relay] block_bits``)."""
MAC_KEY_BITS = 256

ALTERNATES = 3
"""Paths computed per node pair: the best and two alternates."""


def link_cost(link: LinkView) -> float:
    """The cost of relaying over ``link``: the dearer of its two directions' hop costs
    (``qkmsd.routing.link_cost``) from what its ends reported; 1 before any report."""
    if not link.ends:
        return 1.0
    state = LinkState(
        a=link.a,
        b=link.b,
        bits_a=link.ready_bits(link.a),
        bits_b=link.ready_bits(link.b),
        key_rate_bps=link.rate_bps,
        qber=min(link.qber or 0.0, 1.0),
        up=link.up,
    )
    costs = [routing_cost(state, end) for end in (link.a, link.b)]
    usable = [c for c in costs if c is not None]
    return max(usable) if len(usable) == 2 else MAX_ARC_COST


def allocate_budgets(
    topology: Topology,
    routes: list[CtlRoute],
    now: float,
    *,
    policy: sharing.Policy = "max-min",
    relay_bits: int = RELAY_KEY_BITS,
) -> dict[str, list[CtlBudget]]:
    """Per live node, the budget (bits/s of key) of each destination it draws link key for:
    every ordered pair that relays (its best route) and every SAE pair across a QKD link
    (its link), sharing each direction of each up link under ``policy`` (``qkmsd.sharing``:
    max-min by default) up to the pairs' demand (``pair_demand``).  Every live node gets an entry,
    empty if it has no budget: a node that got a set knows budgets are in force.

    A direction X->Y of link X~Y is half its rate: X pads hops and cuts neighbours' keys
    from the blocks it owns.  A relayed pair spends the MAC and confirmation keys of a
    relay of ``relay_bits`` on each hop (the nodes' ``[relay] block_bits``: counted for a
    larger relay, the relayed pairs' budgets come out too large for their links, and the
    neighbour pairs' too small), a pair of neighbours one link bit per key bit.  Demand
    (``pair_demand``) is what the pair's SAEs asked for over the last report period with
    some headroom, so that key a pair leaves unused is shared among the pairs that want
    more (work conservation)."""
    arcs: dict[tuple[str, str], float] = {}
    for view in topology.links(now):
        if view.up and not view.removed:
            arcs[(view.a, view.b)] = arcs[(view.b, view.a)] = view.rate_bps / 2
    paths: dict[tuple[str, str], tuple[str, ...]] = {}
    for route in routes:
        if route.paths:
            paths[(route.source, route.destination)] = tuple(route.paths[0].nodes)
    for pair in neighbour_pairs(topology, now):
        paths.setdefault(pair, pair)
    demand = pair_demand(topology, now)
    relay_overhead = sharing.overhead_for(relay_bits, per_hop_bits=2 * MAC_KEY_BITS)
    pairs = []
    for (source, destination), nodes in sorted(paths.items()):
        if len(nodes) >= 2 and all(hop in arcs for hop in itertools.pairwise(nodes)):
            pairs.append(
                sharing.Pair(
                    source,
                    destination,
                    (nodes,),
                    demand=demand.get((source, destination), DEMAND_FLOOR_BPS),
                    overhead=1.0 if len(nodes) == 2 else relay_overhead,
                )
            )
    budgets: dict[str, list[CtlBudget]] = {
        n: [] for n in topology.node_ids() if topology.alive(n, now)
    }
    if not pairs:
        return budgets
    shared = sharing.allocate_directed(arcs, pairs, policy=policy, overhead=relay_overhead)
    for (source, destination), rate in sorted(shared.rates.items()):
        # A share of nothing (a link whose rate is not measured yet, or one that makes no
        # key) is no budget: a pool paced at 0 would starve on a stale report, while its
        # relays over a link that really has no key fail on their own.
        if rate > 0:
            budgets.setdefault(source, []).append(CtlBudget(destination, round(float(rate), 3)))
    return budgets


DEMAND_FLOOR_BPS = 256.0
"""The demand counted for a pair whose SAEs asked for nothing over the last period (an end
of an end-to-end pool whose applications are all at the other end): a trickle that keeps
its stock filling until demand shows in a report."""
DEMAND_HEADROOM = 1.1
"""A pair served all it asked for counts as demanding what it got times this: room to
grow, while a pair asking steadily below its fair share leaves the rest to others."""


def neighbour_pairs(topology: Topology, now: float) -> list[tuple[str, str]]:
    """Ordered pairs (master's node, slave's node) of SAE pairs across a QKD link: their
    keys are cut straight from the link's key, which relays cross too."""
    pairs: set[tuple[str, str]] = set()
    for node, view in topology.nodes.items():
        if not topology.alive(node, now):
            continue
        neighbours = {link.peer for link in view.links.values() if not link.virtual}
        pairs.update((node, d.kme) for d in view.demand if d.kme in neighbours)
    return sorted(pairs)


def pair_demand(topology: Topology, now: float) -> dict[tuple[str, str], float]:
    """Per ordered node pair with SAE demand, the demand counted for it (bits/s): unbounded
    if one of its SAE pairs was refused key over the last report period (it wants more
    than it gets) or has no period measured yet; else what it was served times
    ``DEMAND_HEADROOM``, at least ``DEMAND_FLOOR_BPS``.  A pair asking for less than its
    share so leaves the rest to pairs that want more; its budget grows again at its first
    refusal.  A window shorter than half the node's report period (a report sent on a
    change), or one in which the pair asked for nothing (idle, or waiting on a request
    that takes longer than the period), tells nothing: unbounded."""
    out: dict[tuple[str, str], float] = {}
    for node, view in topology.nodes.items():
        if not topology.alive(node, now):
            continue
        for d in view.demand:
            window = view.windows.get((d.master, d.slave, d.kme))
            span = window.end - window.start if window is not None else 0.0
            if (
                window is None
                or span < view.period_s / 2  # a report sent on a change: too short to tell
                or window.asked_bits == 0  # idle, or waiting on one long request
                or window.asked_bits > window.served_bits
            ):
                rate = math.inf
            else:
                rate = window.served_bits / span * DEMAND_HEADROOM
            key = (node, d.kme)
            out[key] = out.get(key, 0.0) + rate
    return {key: max(rate, DEMAND_FLOOR_BPS) for key, rate in out.items()}


def compute_routes(
    graph: nx.Graph[str],
    pairs: Iterable[tuple[str, str]],
    *,
    alternates: int = ALTERNATES,
    multipath: AbstractSet[tuple[str, str]] | None = None,
    disjoint: int = MAX_RELAY_SHARES,
) -> list[CtlRoute]:
    """For each ``(source, destination)``, its least-cost paths over ``graph`` (edge
    attribute ``cost``), best first; pairs with no path get no route.  Pairs in
    ``multipath`` (every pair if None) get a node-disjoint set of up to ``disjoint`` paths
    too (``disjoint_set``)."""
    routes = []
    wanted = (lambda pair: True) if multipath is None else multipath.__contains__
    net = _routing_graph(graph)
    for source, destination in pairs:
        if source not in graph or destination not in graph or source == destination:
            continue
        paths: list[CtlPath] = []
        for path in net.routes(source, destination, alternates - 1) if alternates else ():
            if len(path.nodes) > MAX_RELAY_PATH:
                break
            cost = sum(graph.edges[u, v]["cost"] for u, v in itertools.pairwise(path.nodes))
            paths.append(CtlPath(list(path.nodes), float(cost)))
        if paths:
            sets = []
            if disjoint > 0 and wanted((source, destination)):
                sets = disjoint_set(net, source, destination, disjoint)
            routes.append(CtlRoute(source, destination, paths, disjoint=sets))
    return routes


def disjoint_set(graph: routing.Topology, source: str, destination: str, n: int) -> list[CtlPath]:
    """Up to ``n`` paths from ``source`` to ``destination`` that share no node but the two
    ends: as many as the graph has, of least total cost among all such sets
    (``qkmsd.routing``'s minimum-cost flow), cheapest first.  A path longer than a relay
    may go is left out."""
    return [
        CtlPath(list(path.nodes), float(path.cost))
        for path in graph.disjoint_routes(source, destination, n)
        if len(path.nodes) <= MAX_RELAY_PATH
    ]


def _routing_graph(graph: nx.Graph[str]) -> routing.Topology:
    """``graph`` (edge attribute ``cost``, the same both ways) as ``qkmsd.routing`` holds it."""
    out = routing.Topology()
    for node in graph.nodes:
        out.add_node(node)
    for u, v, data in graph.edges(data=True):
        cost = min(max(float(data["cost"]), 1e-9), MAX_ARC_COST)
        out.set_cost(u, v, cost, cost)
    return out
