"""Peer links: mutual-TLS sessions with neighbouring nodes."""

from ._manager import PeerManager, PeerState

__all__ = ["PeerManager", "PeerState"]
