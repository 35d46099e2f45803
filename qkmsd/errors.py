"""The daemon's exceptions: one root, subclasses with meaning."""

from __future__ import annotations


class QkmsError(Exception):
    """Root of every error the daemon raises on purpose."""


class StartupError(QkmsError):
    """The node cannot start: the message says what to fix."""


class PeerConnectionLost(QkmsError):
    """The transport to a peer broke or closed."""


class PeerUnavailable(QkmsError):
    """No session with the peer, or it ended before the peer answered a request."""
