"""What the HTTP shell hands a handler and takes back from it."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TypeAlias

__all__ = ["Handler", "Limits", "PeerInfo", "Request", "Response", "StreamingResponse"]


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who the client is, from its verified TLS certificate (see ``tls_peer``).

    ``common_name`` is the subject CN (an SAE's ID under ``qkmsctl pki``); ``role`` is the
    subject OU (``"sae"``, ``"node"``), or ``None`` when the certificate has none;
    ``fingerprint`` is the SHA-256 of the DER certificate, hex.
    """

    common_name: str
    role: str | None = None
    fingerprint: str | None = None


@dataclass(frozen=True, slots=True)
class Request:
    """One complete HTTP request: head and whole body.

    ``target`` is the request target as sent (e.g. ``/api/v1/keys/B%20b/enc_keys?number=2``);
    ``path`` and ``query`` are its two halves, still percent-encoded: routing decodes them.
    Header names are lower case; values are decoded as Latin-1.  ``peer`` is the caller's
    certificate identity, ``None`` if the connection has none.
    """

    method: str
    target: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes = field(repr=False)
    peer: PeerInfo | None

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(frozen=True, slots=True)
class Response:
    """A handler's answer.  A 401 is always sent without a body (ETSI GS QKD 014).

    ``headers`` are extra headers, e.g. ``(("allow", "GET, POST"),)`` for a 405; the shell
    sets Content-Type, Content-Length and ``Cache-Control: no-store`` itself.
    """

    status: int
    body: bytes = field(default=b"", repr=False)
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class StreamingResponse:
    """A 200 whose body is written as it is produced: server-sent events.

    The shell sends the head (no Content-Length: chunked), then pulls one chunk at a time
    from ``chunks()`` and writes it, under ``Limits.send_timeout``, before it pulls the
    next; so a connection never holds more than one chunk, and a producer that reads the
    latest state when pulled coalesces what a slow client missed.  A chunk over
    ``Limits.max_stream_chunk_bytes`` ends the stream.  The connection closes when the
    iterator ends or the client goes.  ``release``, if given, is called exactly once when
    the stream is over, however it ends (a cap on concurrent streams frees its slot).
    """

    chunks: Callable[[], AsyncGenerator[bytes, None]] = field(repr=False)
    content_type: str = "text/event-stream"
    headers: tuple[tuple[str, str], ...] = ()
    release: Callable[[], None] | None = field(default=None, repr=False)


Handler: TypeAlias = Callable[[Request], Awaitable[Response | StreamingResponse]]
"""``async def handler(request: Request) -> Response`` (or a ``StreamingResponse``)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection protocol limits of the shell.

    - ``max_header_bytes``: request line plus headers (h11's ``max_incomplete_event_size``);
      more gets 431 and the connection closes.
    - ``max_body_bytes``: a larger Content-Length gets 413 before the body is read; a
      chunked body that grows past it too.  Either way the connection closes.
    - ``request_timeout``: seconds from a request's first byte until its whole body has
      arrived; a client that trickles bytes is answered 408 and cut off.
    - ``idle_timeout``: seconds a keep-alive connection may wait for its next request.
    - ``handshake_timeout``: seconds for the TLS handshake (``serve_tcp_tls`` only).
    - ``send_timeout``: seconds to write a response (or one chunk of a streaming
      response) to a client that does not read.
    - ``max_stream_chunk_bytes``: the largest chunk a ``StreamingResponse`` may produce.
    """

    max_header_bytes: int = 16 * 1024
    max_body_bytes: int = 1024 * 1024
    request_timeout: float = 10.0
    idle_timeout: float = 60.0
    handshake_timeout: float = 10.0
    send_timeout: float = 10.0
    max_stream_chunk_bytes: int = 1024 * 1024
