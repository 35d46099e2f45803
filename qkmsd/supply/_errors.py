"""Key supply errors and the one table that turns them into ETSI 014 answers."""

from __future__ import annotations

from typing import Any

from protocol import etsi014

from ..errors import QkmsError
from ..http import Response
from ..keystore import InsufficientKey, NotAuthorised, ServiceKeyNotFound


class SupplyError(QkmsError):
    """A request the key supply agent cannot serve; the message goes to the SAE."""

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class BadRequest(SupplyError):
    """The request is malformed or outside the pair's policy (400)."""


class Unauthorised(SupplyError):
    """The caller may not do this (401, sent without a body)."""


class Unavailable(SupplyError):
    """Not enough key, the target KME is unreachable, or a rate limit (503)."""


_STATUS: dict[type[Exception], int] = {
    BadRequest: 400,
    Unauthorised: 401,
    Unavailable: 503,
    NotAuthorised: 401,
    ServiceKeyNotFound: 400,
    InsufficientKey: 503,
}


def error_response(exc: Exception) -> Response:
    """The ETSI 014 answer for ``exc`` (one of the types in the table above)."""
    if isinstance(exc, etsi014.ApiRequestError):
        allow = (("allow", ", ".join(exc.allowed)),) if exc.allowed else ()
        return Response(exc.http_status, etsi014.error_body(exc.message), headers=allow)
    status = next(code for cls, code in _STATUS.items() if isinstance(exc, cls))
    if status == 401:
        return Response(401)
    if isinstance(exc, ServiceKeyNotFound):
        return Response(400, etsi014.error_body(etsi014.MSG_KEYS_NOT_FOUND))
    if isinstance(exc, SupplyError):
        return Response(status, etsi014.error_body(exc.message, exc.details))
    return Response(status, etsi014.error_body(str(exc)))


HANDLED: tuple[type[Exception], ...] = (etsi014.ApiRequestError, *_STATUS)
