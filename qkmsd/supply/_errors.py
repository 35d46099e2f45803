"""Key supply errors, and the one function that turns errors into ETSI 014 answers.

The status each kind is answered with is its ``http_status`` (see ``qkmsd.errors``);
``HANDLED`` lists the kinds the agent answers, the rest reach the server as a 500.
"""

from __future__ import annotations

from typing import Any

from protocol import etsi014

from ..errors import QkmsError
from ..http import Response
from ..keystore import InsufficientKey, NotAuthorised, ServiceKeyNotFound, StoreUnavailable


class SupplyError(QkmsError):
    """A request the key supply agent cannot serve; the message goes to the SAE."""

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(SupplyError):
    """The request is malformed or outside the pair's policy (400)."""

    http_status = 400


class Unauthorised(SupplyError):
    """The caller may not do this (401, sent without a body)."""

    http_status = 401


class Unavailable(SupplyError):
    """Not enough key, the target KME is unreachable, or a rate limit (503)."""

    http_status = 503


class RateLimited(SupplyError):
    """The SAE is over its ``[saes.X.limits]`` rate (429, with ``Retry-After``)."""

    http_status = 429

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


HANDLED: tuple[type[Exception], ...] = (
    etsi014.ApiRequestError,
    BadRequest,
    Unauthorised,
    Unavailable,
    RateLimited,
    NotAuthorised,
    ServiceKeyNotFound,
    InsufficientKey,
    StoreUnavailable,
)
"""What the agent answers an SAE with: each has an ``http_status`` (a test checks)."""


def error_response(exc: Exception) -> Response:
    """The ETSI 014 answer for ``exc``, one of ``HANDLED``."""
    if isinstance(exc, etsi014.ApiRequestError):
        allow = (("allow", ", ".join(exc.allowed)),) if exc.allowed else ()
        return Response(exc.http_status, etsi014.error_body(exc.message), headers=allow)
    if not isinstance(exc, QkmsError) or exc.http_status is None:
        raise TypeError(f"{type(exc).__name__} has no ETSI 014 answer") from exc
    if exc.http_status == 401:
        return Response(401)
    details = exc.details if isinstance(exc, SupplyError) else None
    body = etsi014.error_body(exc.sae_message or str(exc), details)
    if isinstance(exc, RateLimited):
        return Response(exc.http_status, body, headers=(("retry-after", str(exc.retry_after)),))
    return Response(exc.http_status, body)
