"""Sharing link key among node pairs: relay budgets from link rates, routes and demands.

A pure library (no trio, no I/O): the controller calls ``allocate`` with the links' key
rates and the pairs' routes, demands and weights, and pushes the per-pair budgets to the
source nodes; the simulator reports ``figures``.  ``docs/sharing.md`` defines the policies.
"""

from ._allocate import allocate, allocate_directed
from ._figures import SharingFigures, equal_shares, figures, jain_index, utilisation
from ._model import (
    MAC_KEY_BITS,
    POLICIES,
    Allocation,
    LinkId,
    Pair,
    PairId,
    Policy,
    SharingError,
    link_id,
    overhead_for,
)

__all__ = [
    "MAC_KEY_BITS",
    "POLICIES",
    "Allocation",
    "LinkId",
    "Pair",
    "PairId",
    "Policy",
    "SharingError",
    "SharingFigures",
    "allocate",
    "allocate_directed",
    "equal_shares",
    "figures",
    "jain_index",
    "link_id",
    "overhead_for",
    "utilisation",
]
