"""HTTPS: a TCP listener, a TLS handshake per connection, and the client's identity."""

from __future__ import annotations

import hashlib
import logging
import ssl
from functools import partial
from typing import Any, Final

import trio

from ._server import DEFAULT_LIMITS, serve_connection
from ._types import Handler, Limits, PeerInfo

__all__ = ["serve_tcp_tls", "tls_peer"]

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
    ssl_context: ssl.SSLContext,
    host: str,
    port: int,
    *,
    limits: Limits = DEFAULT_LIMITS,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve HTTPS on ``host``:``port`` until cancelled; ``task_status.started(bound_port)``.

    ``port`` 0 picks a free port; give a numeric ``host`` then, since a name with several
    addresses gets one listener (and one port) per address and only the first is reported.
    Each connection gets a TLS handshake (at most ``limits.handshake_timeout`` seconds),
    its client identity from ``tls_peer``, then ``serve_connection``.  A failing
    handshake or connection is logged and closed; it never stops the server.

    Raises ``OSError`` if it cannot listen.  Cancellation closes the listeners and every
    open connection.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound_port: int = listeners[0].socket.getsockname()[1]
    serve = partial(_serve_tls_connection, handler, ssl_context, limits)
    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, serve, listeners)
        logger.info("http.listening", extra={"host": host, "port": bound_port})
        task_status.started(bound_port)


async def _serve_tls_connection(
    handler: Handler,
    ssl_context: ssl.SSLContext,
    limits: Limits,
    tcp_stream: trio.SocketStream,
) -> None:
    client = _address(tcp_stream)
    ssl_stream = trio.SSLStream(tcp_stream, ssl_context, server_side=True, https_compatible=True)
    try:
        with trio.move_on_after(limits.handshake_timeout) as handshake:
            await ssl_stream.do_handshake()
        if handshake.cancelled_caught:
            logger.info("http.tls_handshake_timeout", extra={"client": client})
            await trio.aclose_forcefully(ssl_stream)
            return
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        logger.info("http.tls_handshake_failed", extra={"client": client, "reason": _reason(exc)})
        await trio.aclose_forcefully(ssl_stream)
        return
    try:
        await serve_connection(
            ssl_stream, handler, limits=limits, peer_identity=tls_peer(ssl_stream)
        )
    except Exception as exc:  # noqa: BLE001 - one bad connection must not stop the server
        logger.error(
            "http.connection_failed", extra={"client": client, "error": type(exc).__name__}
        )
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
