"""The daemon's exceptions: one root, subclasses with meaning, each mapped once.

Every error the daemon raises on purpose derives from ``QkmsError``.  Each kind says,
once, as class attributes read by the edges, what it becomes where it leaves the daemon:

``wire_code``
    The ``protocol.ErrorCode`` a peer (``SupplyResult``) or an admin client (``Error``)
    is answered with, the message being ``str(exc)``.  ``INTERNAL``, the default, means
    the text stays in the log and the other side hears only ``internal``.
``http_status``
    The ETSI 014 status an SAE is answered with (``qkmsd.supply.error_response``); 401
    goes without a body.  ``None``, the default, means the error is not the SAE's
    business: the API server answers 500 and logs it.
``sae_message``
    The text an SAE is told instead of ``str(exc)``, where the spec mandates one.
``exit_code``
    ``qkmsd``'s exit status when the error stops it (``qkmsd.main``).

A new error subclasses the nearest kind (or ``QkmsError``) and overrides only what
differs; ``tests/qkmsd/test_errors.py`` lists every kind and its mapping, so a new class
must be added there too.
"""

from __future__ import annotations

from typing import ClassVar, Final

from protocol import ErrorCode

EXIT_OK: Final = 0
"""Clean stop after SIGTERM or SIGINT, a valid ``--check``, a master key written."""
EXIT_FAILURE: Final = 1
"""The node cannot start or the action was refused; one line on stderr says why."""
EXIT_CONFIG: Final = 2
"""The configuration is invalid (systemd's ``RestartPreventExitStatus=2``)."""
EXIT_INTERRUPTED: Final = 130
"""Stopped by a second Ctrl-C, as shells report it."""


class QkmsError(Exception):
    """Root of every error the daemon raises on purpose."""

    wire_code: ClassVar[ErrorCode] = ErrorCode.INTERNAL
    http_status: ClassVar[int | None] = None
    sae_message: ClassVar[str | None] = None
    exit_code: ClassVar[int] = EXIT_FAILURE


class StartupError(QkmsError):
    """The node cannot start: the message says what to fix."""


class PeerConnectionLost(QkmsError):
    """The transport to a peer broke or closed."""


class PeerUnavailable(QkmsError):
    """No session with the peer, or it ended before the peer answered a request."""
