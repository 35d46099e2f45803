"""The client's exceptions: one root, one subclass per way a call can fail."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "BadRequest",
    "Etsi014Error",
    "KeyUnwrapError",
    "RateLimited",
    "ServiceUnavailable",
    "TransportError",
    "Unauthorized",
    "UnexpectedResponse",
]


class Etsi014Error(Exception):
    """Root of every error raised by ``qkms_client``."""


class BadRequest(Etsi014Error):
    """400: the KME refused the request.  ``message`` and ``details`` are the KME's Error body,
    e.g. ``"one or more keys specified are not found on KME"``."""

    def __init__(self, message: str, details: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(f"KME refused the request: {message}")
        self.message = message
        self.details = tuple(details)


class Unauthorized(Etsi014Error):
    """401: this SAE (its client certificate) may not make this request, e.g. fetch keys
    that were not requested for it."""


class ServiceUnavailable(Etsi014Error):
    """503: the KME cannot serve now (e.g. not enough key, its peer unreachable)."""

    def __init__(self, message: str, details: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(f"KME cannot serve the request now: {message}")
        self.message = message
        self.details = tuple(details)


class UnexpectedResponse(Etsi014Error):
    """The KME answered something ETSI GS QKD 014 does not allow here (another status, a
    body that does not parse, keys that do not match the request).  ``status`` is the HTTP
    status, or ``None`` when the status was fine but the content was not."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class TransportError(Etsi014Error):
    """The KME could not be reached or the connection failed (TCP, TLS, HTTP framing)."""


class KeyUnwrapError(Etsi014Error):
    """PQC-wrapped keys could not be opened: no ``pqc_private_key`` was given, or the keys
    were not wrapped for it, or they were altered on the way."""


class RateLimited(ServiceUnavailable):
    """429: this SAE is over its rate limit at the KME; ``message`` says when to retry."""
