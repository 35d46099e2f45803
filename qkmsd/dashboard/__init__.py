"""The live dashboard: the network as this node sees it, drawn as an SVG graph (link
colour and width by available key), alarms with their history, links, pools and SAEs
plotted over the last hour, recent relays; live over server-sent events with a long-poll
fallback; a node pair's routes and end-to-end pool; operations (acknowledge or clear an
alarm, activate or deactivate a key profile, drain or undrain the node) through the admin
methods ``qkmsctl`` uses.  On the node holding the controller role the whole network comes
from the controller's topology.  The operator TLS listener also serves this node's ETSI GS
QKD 015 view at a RESTCONF path.  Plain HTTP on loopback, HTTPS with operator
certificates elsewhere (see ``_access``)."""

from ._access import OPERATOR, OPERATOR_RO, Access, CsrfTokens, Operator
from ._http import LIMITS, MAX_STREAMS, OPERATIONS, StreamSlots, dashboard_handler, sse_event
from ._layout import layout
from ._model import (
    Dashboard,
    DashboardSources,
    DashboardState,
    NetworkTopology,
    link_level,
    normalise_links,
)
from ._sources import controller_topology, etsi015_source, table_routes, whole_network

__all__ = [
    "LIMITS",
    "MAX_STREAMS",
    "OPERATIONS",
    "OPERATOR",
    "OPERATOR_RO",
    "Access",
    "CsrfTokens",
    "Dashboard",
    "DashboardSources",
    "DashboardState",
    "NetworkTopology",
    "Operator",
    "StreamSlots",
    "dashboard_handler",
    "layout",
    "controller_topology",
    "etsi015_source",
    "link_level",
    "normalise_links",
    "sse_event",
    "table_routes",
    "whole_network",
]
