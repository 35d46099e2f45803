"""The controller role: electing it among the eligible nodes, its work under the lease
(topology from reports, routes pushed, registrations), and every node's side of it."""

from ._admin import ControllerAdmin
from ._agent import ControllerAgent, ControllerStatus
from ._alarms import NetworkAlarms
from ._etsi015 import etsi015_view, node_etsi015, qkms_uuid
from ._registry import Registry
from ._reporter import Reporter, ReporterStatus, ReportSources
from ._routing import ALTERNATES, allocate_budgets, compute_routes, link_cost
from ._service import ControllerService, NoController, RegistrationRefused, refusals
from ._topology import BadReport, LinkView, Topology

__all__ = [
    "allocate_budgets",
    "ALTERNATES",
    "BadReport",
    "ControllerAdmin",
    "ControllerAgent",
    "ControllerService",
    "ControllerStatus",
    "LinkView",
    "NetworkAlarms",
    "NoController",
    "RegistrationRefused",
    "Registry",
    "ReportSources",
    "Reporter",
    "ReporterStatus",
    "Topology",
    "compute_routes",
    "etsi015_view",
    "link_cost",
    "node_etsi015",
    "qkms_uuid",
    "refusals",
]
