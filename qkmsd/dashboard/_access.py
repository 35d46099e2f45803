"""Who may look at the dashboard and who may operate from it.

Two listeners serve the same page:

- ``[listen] dashboard``: plain HTTP on loopback.  Anyone with a shell on the node can
  reach it, so it is read-only unless ``[dashboard] loopback_operations = true``; its
  operator is then logged as ``loopback``.  A request whose ``Host`` is not a loopback
  name is refused (a web page elsewhere cannot use DNS rebinding to read it).
- ``[listen] dashboard_tls``: HTTPS with a client certificate from the network CA whose
  OU is ``operator`` (view and operate) or ``operator-ro`` (view only), issued by
  ``qkmsctl pki operator NAME [--read-only]``; the operator is logged by the
  certificate's CN and fingerprint.  Node and SAE certificates are refused (403).

State-changing requests (POST) must carry the page's CSRF token in ``x-csrf-token``: a
random token issued with each page, bound to the operator it was issued to, kept in
memory (at most ``MAX_TOKENS``, each for ``TOKEN_TTL_S``).  Another site's form or script
cannot read it, nor set the header without a CORS preflight that is never granted.
"""

from __future__ import annotations

import collections
import dataclasses
import secrets

import trio

from ..http import Request

MAX_TOKENS = 1024
TOKEN_TTL_S = 12 * 3600.0
OPERATOR = "operator"
OPERATOR_RO = "operator-ro"
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]"})


@dataclasses.dataclass(frozen=True)
class Operator:
    """Who is asking and what they may do."""

    name: str
    """``loopback``, or ``CN (sha256 prefix)`` of an operator certificate."""
    can_operate: bool


@dataclasses.dataclass(frozen=True)
class Denied:
    """The request is refused: ``status`` and a message for the client."""

    status: int
    message: str


@dataclasses.dataclass(frozen=True)
class Access:
    """How one listener decides who is asking: ``tls`` or loopback plain HTTP."""

    tls: bool
    loopback_operations: bool = False

    def operator(self, request: Request) -> Operator | Denied:
        """Who asks; ``Denied`` (403) for a caller without a view permission."""
        if not self.tls:
            if _host_name(request.header("host") or "") not in _LOOPBACK_HOSTS:
                return Denied(403, "the loopback dashboard answers to 127.0.0.1 or localhost only")
            return Operator("loopback", self.loopback_operations)
        peer = request.peer
        if peer is None or peer.role not in (OPERATOR, OPERATOR_RO):
            who = f"{peer.role} certificate" if peer is not None and peer.role else "no role"
            return Denied(403, f"an operator certificate is needed ({who}): qkmsctl pki operator")
        fingerprint = (peer.fingerprint or "")[:16]
        return Operator(f"{peer.common_name} ({fingerprint})", peer.role == OPERATOR)


class CsrfTokens:
    """Tokens issued with pages, each bound to the operator it was issued to."""

    def __init__(self) -> None:
        self._tokens: collections.OrderedDict[str, tuple[str, float]] = collections.OrderedDict()

    def issue(self, operator: Operator) -> str:
        token = secrets.token_urlsafe(24)
        self._tokens[token] = (operator.name, trio.current_time())
        while len(self._tokens) > MAX_TOKENS:
            self._tokens.popitem(last=False)
        return token

    def check(self, operator: Operator, token: str | None) -> Denied | None:
        """``Denied`` (403) unless ``token`` was issued to ``operator`` and is fresh."""
        if not token:
            return Denied(403, "missing CSRF token: operate from the dashboard page")
        entry = self._tokens.get(token)
        if entry is not None:
            name, issued = entry
            if name == operator.name and trio.current_time() - issued <= TOKEN_TTL_S:
                return None
        return Denied(403, "unknown or expired CSRF token: reload the dashboard page")


def _host_name(value: str) -> str:
    """The host of a ``Host`` header, without its port (``[::1]`` keeps its brackets)."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1]
    return value.split(":", 1)[0]
