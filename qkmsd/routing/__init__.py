"""Routing: the cost of a relay hop over a QKD link, and routes over the network.

A pure library (no trio, no I/O) that the controller and each node's routing table call:
``LinkState`` and ``link_cost`` price a hop, ``Topology`` holds the network and gives the
least-cost route with alternates and node-disjoint route sets, and ``relay_key_bits`` says
how much link key a relay over a route spends.  See docs/routing.md.
"""

from ._cost import (
    DEFAULT_PARAMS,
    HOP_OVERHEAD_BITS,
    MAC_KEY_BYTES,
    CostParams,
    LinkState,
    hop_key_bits,
    link_cost,
    relay_key_bits,
)
from ._graph import ALTERNATES, MAX_ARC_COST, Path, Topology

__all__ = [
    "ALTERNATES",
    "DEFAULT_PARAMS",
    "HOP_OVERHEAD_BITS",
    "MAC_KEY_BYTES",
    "MAX_ARC_COST",
    "CostParams",
    "LinkState",
    "Path",
    "Topology",
    "hop_key_bits",
    "link_cost",
    "relay_key_bits",
]
