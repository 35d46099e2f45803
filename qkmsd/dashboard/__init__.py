"""The live dashboard: the network as this node sees it, drawn as an SVG graph (link
colour and width by available key), alarms with their history, links, pools and SAEs
plotted over the last hour, recent relays; live over server-sent events with a long-poll
fallback; operations (acknowledge or clear an alarm, drain or undrain the node) through
the admin methods ``qkmsctl`` uses.  Plain HTTP on loopback, HTTPS with operator
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
    "link_level",
    "normalise_links",
    "sse_event",
]
