"""A whole qkms network in one process: real nodes on a virtual clock (``python -m qkmssim``).

See docs/simulator.md.
"""

from ._demand import Demand, DemandSpecError, parse_demand
from ._engine import Network, SimError, SimSettings, simulate
from ._faults import Fault, FaultSpecError, parse_fault
from ._report import Report, maxmin_fair_rates, render, to_json
from ._topology import FAMILIES, SimTopology, SimTopologyError, family_topology, load

__all__ = [
    "FAMILIES",
    "Demand",
    "DemandSpecError",
    "Fault",
    "FaultSpecError",
    "Network",
    "Report",
    "SimError",
    "SimSettings",
    "SimTopology",
    "SimTopologyError",
    "family_topology",
    "load",
    "maxmin_fair_rates",
    "parse_demand",
    "parse_fault",
    "render",
    "simulate",
    "to_json",
]
