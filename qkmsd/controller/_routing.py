"""Routes the controller computes over the reported topology, and what a link costs.

``link_cost`` weighs one QKD link from its ends' reports with ``qkmsd.routing``'s cost of
a hop (scarce key, QBER near its threshold; see docs/controller.md "Route cost"): each hop
costs at least 1 (a hop spends link key equal to the relayed key plus its one-time MAC
key), more as the key its sender owns runs short or its QBER climbs.  The controller's
graph is undirected, so a link costs the dearer of its two directions.  ``compute_routes``
finds, per ordered node pair, up to ``alternates`` least-cost simple paths with networkx
(``shortest_simple_paths``, Yen's algorithm), each with its cost.

``allocate_budgets`` shares each link's key rate among the node pairs whose first route
crosses it (``qkmsd.sharing``, max-min by default) and gives each source node its
per-destination relay budgets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import networkx as nx

from protocol import MAX_RELAY_PATH, CtlBudget, CtlPath, CtlRoute

from .. import sharing
from ..routing import MAX_ARC_COST, LinkState
from ..routing import link_cost as routing_cost
from ._topology import LinkView, Topology

RELAY_KEY_BITS = 8192
"""The key a background relay carries (the per-hop overhead is counted against it)."""
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
    topology: Topology, routes: list[CtlRoute], now: float, *, policy: sharing.Policy = "max-min"
) -> dict[str, list[CtlBudget]]:
    """Per source node, the relay budget (bits/s of delivered key) of each destination it
    has a route to: each link's key rate shared among the pairs whose best route crosses
    it, under ``policy`` (``qkmsd.sharing``: max-min by default, work-conserving)."""
    rates = {
        sharing.link_id(view.a, view.b): view.rate_bps
        for view in topology.links(now)
        if view.up and not view.removed
    }
    pairs = []
    for route in routes:
        nodes = tuple(route.paths[0].nodes) if route.paths else ()
        hops = [sharing.link_id(a, b) for a, b in itertools.pairwise(nodes)]
        if len(nodes) >= 2 and all(h in rates for h in hops):
            pairs.append(sharing.Pair(route.source, route.destination, (nodes,)))
    if not pairs:
        return {}
    overhead = sharing.overhead_for(RELAY_KEY_BITS, per_hop_bits=2 * MAC_KEY_BITS)
    shared = sharing.allocate(rates, pairs, policy=policy, overhead=overhead)
    budgets: dict[str, list[CtlBudget]] = {}
    for (source, destination), rate in sorted(shared.rates.items()):
        # A share of nothing (a link whose rate is not measured yet, or one that makes no
        # key) is no budget: a pool paced at 0 would starve on a stale report, while its
        # relays over a link that really has no key fail on their own.
        if rate > 0:
            budgets.setdefault(source, []).append(CtlBudget(destination, round(float(rate), 3)))
    return budgets


def compute_routes(
    graph: nx.Graph[str], pairs: Iterable[tuple[str, str]], *, alternates: int = ALTERNATES
) -> list[CtlRoute]:
    """For each ``(source, destination)``, its least-cost paths over ``graph`` (edge
    attribute ``cost``), best first; pairs with no path get no route."""
    routes = []
    for source, destination in pairs:
        if source not in graph or destination not in graph or source == destination:
            continue
        paths: list[CtlPath] = []
        try:
            found = nx.shortest_simple_paths(graph, source, destination, weight="cost")
            for nodes in itertools.islice(found, alternates):
                if len(nodes) > MAX_RELAY_PATH:
                    break
                cost = sum(graph.edges[u, v]["cost"] for u, v in itertools.pairwise(nodes))
                paths.append(CtlPath(list(nodes), float(cost)))
        except nx.NetworkXNoPath:
            pass
        if paths:
            routes.append(CtlRoute(source, destination, paths))
    return routes
