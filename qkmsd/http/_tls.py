"""HTTPS: a TCP listener, a TLS handshake per connection, and the client's identity."""

from __future__ import annotations

import collections
import hashlib
import logging
import ssl
from collections.abc import Callable
from functools import partial
from typing import Any, Final

import msgspec
import trio

from ..netguard import Admission, ConnectionGate, GateLimits, GateStatistics, wait_for_data
from ..tls import certificate_serial
from ..tlsgroup import TlsContexts
from ._server import DEFAULT_LIMITS, serve_connection
from ._types import Handler, Limits, PeerInfo

__all__ = ["HandshakeStats", "OpenConnections", "serve_tcp_tls", "tls_peer"]

_UNKNOWN: Final = "unknown"

logger: Final = logging.getLogger("qkms.http")


def tls_peer(stream: trio.SSLStream[Any]) -> PeerInfo | None:
    """The identity in the verified client certificate of ``stream``, after its handshake.

    ``None`` when the client sent no certificate, when it was not verified (the context
    did not require one), or when its subject does not name exactly one CN: such a
    client is anonymous, and the handler decides what it may do (ETSI 014: 401).
    The role is the subject's OU if it has exactly one, else ``None``.
    """
    cert = stream.getpeercert()
    if not cert:
        return None
    subject = cert.get("subject", ())
    common_names = _subject_values(subject, "commonName")
    if len(common_names) != 1 or not common_names[0]:
        return None
    roles = _subject_values(subject, "organizationalUnitName")
    der = stream.getpeercert(binary_form=True)
    return PeerInfo(
        common_name=common_names[0],
        role=roles[0] if len(roles) == 1 else None,
        fingerprint=hashlib.sha256(der).hexdigest() if der else None,
    )


class HandshakeStats:
    """The TLS handshakes of one listener since it started, for the node's status.

    Counts only: which versions and key exchange groups clients negotiated (``unknown``
    where the group could not be read), and how many handshakes failed or timed out.
    """

    def __init__(self) -> None:
        self.completed = 0
        self.failed = 0
        self.timed_out = 0
        self.versions: collections.Counter[str] = collections.Counter()
        self.groups: collections.Counter[str] = collections.Counter()
        self.last_group: str | None = None
        self.gate: ConnectionGate | None = None
        """The listener's connection gate, once ``serve_tcp_tls`` serves with these stats."""

    def record(self, stream: trio.SSLStream[Any], group: str | None) -> None:
        """Count the completed handshake of ``stream``, which agreed on ``group``."""
        self.completed += 1
        self.versions[stream.version() or _UNKNOWN] += 1
        self.last_group = group or _UNKNOWN
        self.groups[self.last_group] += 1

    def snapshot(self) -> TlsStatistics:
        return TlsStatistics(
            handshakes=self.completed,
            failed=self.failed,
            timed_out=self.timed_out,
            versions=dict(self.versions),
            groups=dict(self.groups),
            last_group=self.last_group,
            listener=self.gate.statistics() if self.gate is not None else None,
        )


class OpenConnections:
    """A listener's open connections, by the serial of their client certificate.

    ``close_revoked`` ends those a new CRL revokes: the contexts' CRL refuses new
    handshakes, this ends what was authenticated before.
    """

    def __init__(self) -> None:
        self._open: dict[trio.CancelScope, int] = {}

    def close_revoked(self, serials: frozenset[int]) -> int:
        """Close every connection whose client certificate has one of ``serials``; how many."""
        hit = [scope for scope, serial in self._open.items() if serial in serials]
        for scope in hit:
            scope.cancel()
        return len(hit)

    def add(self, scope: trio.CancelScope, serial: int) -> None:
        self._open[scope] = serial

    def discard(self, scope: trio.CancelScope) -> None:
        self._open.pop(scope, None)


class TlsStatistics(msgspec.Struct, frozen=True):
    """A listener's TLS handshakes since it started, and its connection gate."""

    handshakes: int
    failed: int
    timed_out: int
    versions: dict[str, int]
    """Completed handshakes by TLS version."""
    groups: dict[str, int]
    """Completed handshakes by key exchange group (``unknown`` where it could not be read)."""
    last_group: str | None
    listener: GateStatistics | None


def _subject_values(subject: object, attribute: str) -> list[str]:
    # getpeercert()'s subject: a tuple of RDNs, each a tuple of (name, value) pairs.
    values: list[str] = []
    if isinstance(subject, tuple):
        for rdn in subject:
            if isinstance(rdn, tuple):
                for pair in rdn:
                    if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == attribute:
                        values.append(str(pair[1]))
    return values


async def serve_tcp_tls(
    handler: Handler,
    ssl_context: ssl.SSLContext | Callable[[], ssl.SSLContext] | TlsContexts,
    host: str,
    port: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    stats: HandshakeStats | None = None,
    gate: GateLimits | None = None,
    connections: OpenConnections | None = None,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTPS on ``host``:``port`` until cancelled; ``task_status.started(bound_port)``.

    ``port`` 0 picks a free port; give a numeric ``host`` then, since a name with several
    addresses gets one listener (and one port) per address and only the first is reported.
    Connections pass a ``ConnectionGate`` with ``gate``'s caps (defaults: ``GateLimits()``):
    past a cap the oldest connection still in its handshake is shed.  Each admitted
    connection gets a TLS handshake, counted from accept, of at most
    ``limits.handshake_timeout`` seconds (TLS state is built only once the client has
    sent its first byte), its client identity from ``tls_peer``, then
    ``serve_connection``.  A failing handshake or connection is closed and counted (one
    aggregated log line per interval); it never stops the server.  ``stats``, if given,
    counts the handshakes.

    ``ssl_context`` is the server's context, or a function that makes one: given a
    function, the server calls it twice and can then name each handshake's key exchange
    group on Pythons before 3.15 as well (``TlsContexts``).  Given ``TlsContexts``, the
    server uses them, and whatever they ``adopt`` later (a reload) for new handshakes.
    ``connections``, if given, keeps the open connections for ``close_revoked``.

    Raises ``OSError`` if it cannot listen, and whatever the function raises.
    Cancellation closes the listeners and every open connection.
    """
    contexts = ssl_context if isinstance(ssl_context, TlsContexts) else TlsContexts(ssl_context)
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]
    connection_gate = ConnectionGate("api", gate or GateLimits())
    stats = stats or HandshakeStats()
    stats.gate = connection_gate
    serve = partial(
        _serve_tls_connection,
        handler,
        contexts,
        limits,
        stats,
        connection_gate,
        connections or OpenConnections(),
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(connection_gate.serve, listeners, serve)
        logger.info("http.listening", extra={"host": host, "port": bound_port})
        task_status.started(bound_port)


async def _serve_tls_connection(
    handler: Handler,
    contexts: TlsContexts,
    limits: Limits,
    stats: HandshakeStats,
    gate: ConnectionGate,
    connections: OpenConnections,
    tcp_stream: trio.SocketStream,
    admission: Admission,
) -> None:
    ssl_stream: trio.SSLStream[trio.SocketStream] | None = None
    with trio.move_on_at(admission.admitted_at + limits.handshake_timeout) as handshake:
        if not await wait_for_data(tcp_stream):
            stats.failed += 1
            gate.note_refused("closed_before_tls")
            return
        await admission.start_handshake()  # TLS state for a few strangers at a time
        ssl_stream = trio.SSLStream(
            tcp_stream, contexts.handshake, server_side=True, https_compatible=True
        )
        try:
            await ssl_stream.do_handshake()
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            stats.failed += 1
            gate.note_refused(f"tls_{_reason(exc)}")
            await trio.aclose_forcefully(ssl_stream)
            return
        finally:
            admission.end_handshake()
    if handshake.cancelled_caught or ssl_stream is None:
        stats.timed_out += 1
        gate.note_refused("handshake_timeout")
        await trio.aclose_forcefully(ssl_stream or tcp_stream)
        return
    stats.record(ssl_stream, contexts.after_handshake(ssl_stream))
    peer = tls_peer(ssl_stream)
    if peer is not None:
        admission.authenticated()  # an anonymous client stays sheddable
    serial = certificate_serial(ssl_stream)
    with trio.CancelScope() as scope:
        if serial is not None:
            connections.add(scope, serial)
        try:
            await serve_connection(ssl_stream, handler, limits=limits, peer_identity=peer)
        except Exception as exc:  # noqa: BLE001 - one bad connection must not stop the server
            logger.error(
                "http.connection_failed",
                extra={"client": _address(tcp_stream), "error": type(exc).__name__},
            )
            await trio.aclose_forcefully(ssl_stream)
        finally:
            connections.discard(scope)
    if scope.cancelled_caught:  # its certificate was revoked
        logger.warning("http.revoked_client_closed", extra={"client": _address(tcp_stream)})
        await trio.aclose_forcefully(ssl_stream)


def _address(stream: trio.SocketStream) -> str:
    try:
        host, port, *_ = stream.socket.getpeername()
    except (OSError, ValueError, TypeError):
        return "-"
    return f"{host}:{port}"


def _reason(exc: BaseException) -> str:
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLError) and cause.reason:
        return str(cause.reason)
    return type(cause if cause is not None else exc).__name__
