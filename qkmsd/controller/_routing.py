"""Routes the controller computes over the reported topology, and what a link costs.

``link_cost`` weighs one QKD link from its ends' reports; today every up link costs one
(hop count: each hop spends link key equal to the relayed key plus a one-time MAC key).
It is the one place a key-aware cost goes.  ``compute_routes`` finds, per ordered node
pair, up to ``alternates`` least-cost simple paths with networkx
(``shortest_simple_paths``, Yen's algorithm), each with its cost.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import networkx as nx

from protocol import MAX_RELAY_PATH, CtlPath, CtlRoute

from ._topology import LinkView

ALTERNATES = 3
"""Paths computed per node pair: the best and two alternates."""


def link_cost(link: LinkView) -> float:
    """The cost of relaying over ``link``: 1 for every up link (hop count)."""
    return 1.0


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
