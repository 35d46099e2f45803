"""A small HTTP/1.1 server shell (h11 on trio) for the ETSI 014 API (and, later, metrics and
the dashboard).

Why our own shell: an SAE's identity is its TLS client certificate, and the ASGI servers on
trio do not hand it to the application.  This one does (``Request.peer``), and keeps the
protocol rules in one place: keep-alive, bounded heads and bodies, request and idle
time-outs, 400 for malformed HTTP, 500 for a failing handler, one log line per request.

Use: ``port = await nursery.start(serve_tcp_tls, handler, ssl_context, "127.0.0.1", 0)``
with ``async def handler(request: Request) -> Response``; or, over any ``trio.abc.Stream``,
``await serve_connection(stream, handler, limits=Limits(), peer_identity=peer)``.
"""

from ._plain import serve_tcp_plain
from ._server import serve_connection
from ._tls import HandshakeStats, OpenConnections, TlsStatistics, serve_tcp_tls, tls_peer
from ._types import Handler, Limits, PeerInfo, Request, Response, StreamingResponse

__all__ = [
    "HandshakeStats",
    "Handler",
    "Limits",
    "OpenConnections",
    "PeerInfo",
    "Request",
    "Response",
    "StreamingResponse",
    "TlsStatistics",
    "serve_connection",
    "serve_tcp_plain",
    "serve_tcp_tls",
    "tls_peer",
]
