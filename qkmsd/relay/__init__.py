"""Key relay: keys between nodes with no QKD link, one-time padded hop by hop."""

from ._agent import (
    RelayAgent,
    RelayFailed,
    RelayPoolStatistics,
    RelayRecord,
    RelayStatistics,
    SplitPaths,
)
from ._driver import RelayedKeys
from ._routes import Route, RoutingTable

__all__ = [
    "RelayAgent",
    "RelayFailed",
    "RelayPoolStatistics",
    "RelayRecord",
    "RelayStatistics",
    "RelayedKeys",
    "Route",
    "RoutingTable",
    "SplitPaths",
]
