"""One HTTP/1.1 request over TLS (h11 on trio): what the node needs to push JSON to a
collector.

Why our own: the daemon already speaks HTTP through h11, and a single POST with the node's
client certificate does not earn a second HTTP stack (httpx would bring anyio and httpcore
for one call).  No redirects, no keep-alive, no proxies: one connection per request, closed
after the answer.
"""

from __future__ import annotations

import ssl
from urllib.parse import urlsplit

import h11
import trio

from ..errors import QkmsError

MAX_ANSWER = 64 * 1024
"""Bytes of an answer read at most (the body is drained and dropped)."""


class HttpClientError(QkmsError):
    """The request could not be made or was not answered; the message says why.  The
    caller, which knows what it was sending, translates it into its own error."""


async def post(url: str, body: bytes, *, ssl_context: ssl.SSLContext, content_type: str) -> int:
    """POST ``body`` to the ``https://`` ``url``; returns the answer's status code.

    The caller owns the time limit.  Raises ``HttpClientError`` on a bad URL, a connection
    or TLS failure, or a malformed answer.
    """
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise HttpClientError(f"not an https:// URL: {url!r}")
    host, port = parts.hostname, parts.port or 443
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    conn = h11.Connection(h11.CLIENT)
    try:
        tcp = await trio.open_tcp_stream(host, port)
        stream = trio.SSLStream(tcp, ssl_context, server_hostname=host)
        try:
            head = h11.Request(
                method="POST",
                target=target,
                headers=[
                    ("Host", parts.netloc),
                    ("Content-Type", content_type),
                    ("Content-Length", str(len(body))),
                    ("Connection", "close"),
                ],
            )
            await stream.send_all(conn.send(head) + conn.send(h11.Data(data=body)))
            await stream.send_all(conn.send(h11.EndOfMessage()))
            read = 0
            status = None
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await stream.receive_some(16384)
                    read += len(data)
                    if read > MAX_ANSWER:
                        raise HttpClientError("answer too long")
                    conn.receive_data(bytes(data))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                    break
            if status is None:
                raise HttpClientError("connection closed before an answer")
            return status
        finally:
            await stream.aclose()
    except (OSError, trio.BrokenResourceError, ssl.SSLError, h11.ProtocolError) as exc:
        # trio wraps a TLS failure in BrokenResourceError: name the TLS error itself.
        reason = exc.__cause__ if exc.__cause__ is not None else exc
        raise HttpClientError(f"{url}: {type(reason).__name__}: {reason}") from None
