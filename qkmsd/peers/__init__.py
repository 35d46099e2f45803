"""Peer links: mutual-TLS sessions with neighbouring nodes."""

from ._manager import REQUESTS_IN_FLIGHT, SILENT, PeerManager, PeerState, PeerStatistics

__all__ = ["REQUESTS_IN_FLIGHT", "SILENT", "PeerManager", "PeerState", "PeerStatistics"]
