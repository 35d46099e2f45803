"""HTTP/1.1 over any ``trio.abc.Stream``: h11 plus keep-alive, limits and time-outs.

Theory of operation: one connection is a loop of request cycles.  Each cycle waits for the
first byte of a request (``idle_timeout``), then reads the head and the whole body under
``request_timeout`` (a client trickling bytes is cut off with 408), calls the handler with
no time limit of ours (the handler owns its own), and writes the response under
``send_timeout``.  Bytes h11 cannot parse get 400 (431 for an oversized head), a body over
``max_body_bytes`` gets 413 before it is read; each of those closes the connection, once
what the client was still sending has been read and dropped (for 3 s and 8 MiB at most,
until the client pauses for 0.5 s): closing on unread bytes would reset the connection
before the client read the answer.
A handler may answer with a ``StreamingResponse`` (server-sent events): the shell then
writes its chunks as they come, each under ``send_timeout``, and closes the connection
when the stream ends.  A handler that raises gets a generic 500; its exception's message
is never sent or logged, since it might quote key material, only its type and where it
was raised.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable
from contextlib import aclosing
from typing import Final

import h11
import trio

from ._types import Handler, Limits, PeerInfo, Request, Response, StreamingResponse

DEFAULT_LIMITS: Final = Limits()

__all__ = ["serve_connection"]

logger: Final = logging.getLogger("qkms.http")

_RECEIVE_SIZE: Final = 64 * 1024
_MAX_LOGGED_PATH: Final = 200
_REASONS: Final = {
    400: b"Bad Request",
    401: b"Unauthorized",
    404: b"Not Found",
    405: b"Method Not Allowed",
    408: b"Request Timeout",
    413: b"Content Too Large",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
    503: b"Service Unavailable",
}
# Sent raw, bypassing h11: a request that timed out may not even have a complete head.
_TIMEOUT_BODY: Final = b'{"message":"request took too long"}'
_TIMEOUT_RESPONSE: Final = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
    b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)
_INTERNAL_ERROR_BODY: Final = b'{"message":"internal server error"}'
# After an answer that closes the connection: what the client still sends is drained.
_LINGER_S: Final = 3.0
_LINGER_PAUSE_S: Final = 0.5
_LINGER_BYTES: Final = 8 << 20


def _json_error(message: str) -> bytes:
    return json.dumps({"message": message}).encode()


class _Shell:
    def __init__(
        self,
        stream: trio.abc.Stream,
        handler: Handler,
        limits: Limits,
        peer: PeerInfo | None,
    ) -> None:
        self._stream = stream
        self._handler = handler
        self._limits = limits
        self._peer = peer
        self._conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes)
        self._scope = trio.CancelScope()
        self._phase = "idle"
        self._started = 0.0
        self._fed = 0  # bytes given to h11 since this request began

    async def run(self) -> None:
        # One cancel scope for the connection's life; each phase moves its deadline (cheaper
        # per request than a scope per phase, and the request rate is what we pay it at).
        with trio.CancelScope() as self._scope:
            await self._cycles()
        if self._scope.cancelled_caught and self._phase == "reading":
            self._log("-", "-", 408, self._started)
            with trio.move_on_after(self._limits.send_timeout):
                await self._stream.send_all(_TIMEOUT_RESPONSE)

    def _enter(self, phase: str, timeout: float) -> None:
        self._phase = phase
        self._scope.deadline = trio.current_time() + timeout

    async def _cycles(self) -> None:
        limits = self._limits
        while True:
            self._enter("idle", limits.idle_timeout)
            if not await self._wait_for_request():
                return
            self._enter("reading", limits.request_timeout)
            self._started = trio.current_time()
            received = await self._read_request()
            if received is None:
                return
            if isinstance(received, Response):
                # A protocol error or an oversized body: answer and close.
                self._log("-", "-", received.status, self._started)
                if await self._send_response(received, method="-", close=True):
                    await self._linger()
                return
            self._enter("handling", math.inf)  # the handler keeps its own time limits
            response = await self._call_handler(received)
            status = 200 if isinstance(response, StreamingResponse) else response.status
            self._log(received.method, received.path, status, self._started)
            if isinstance(response, StreamingResponse):
                await self._send_stream(response, method=received.method)
                return
            if not await self._send_response(response, method=received.method, close=False):
                return
            if self._conn.our_state is not h11.DONE or self._conn.their_state is not h11.DONE:
                return
            self._conn.start_next_cycle()

    async def _linger(self) -> None:
        """Read and drop what the client is still sending (the rest of a refused body)
        until it pauses, for a moment and a few megabytes at most, so that it reads our
        answer: closing with its bytes unread would reset the connection under it."""
        self._enter("lingering", _LINGER_S)
        drained = 0
        while drained < _LINGER_BYTES:
            with trio.move_on_after(_LINGER_PAUSE_S):
                data = await self._stream.receive_some(_RECEIVE_SIZE)
                if not data:
                    return
                drained += len(data)
                continue
            return  # the client paused: it is waiting for the answer it has

    async def _wait_for_request(self) -> bool:
        """Wait for the next request's first byte; False at EOF."""
        buffered, closed = self._conn.trailing_data
        self._fed = len(buffered)
        if buffered:
            return True
        if closed:
            return False
        return bool(await self._receive())

    async def _receive(self) -> bytes:
        data = bytes(await self._stream.receive_some(_RECEIVE_SIZE))
        self._fed += len(data)
        self._conn.receive_data(data)
        return data

    async def _read_request(self) -> Request | Response | None:
        """The whole request; or the error response to send before closing; or None (EOF)."""
        try:
            event = await self._next_event()
            if isinstance(event, h11.ConnectionClosed):
                return None
            if not isinstance(event, h11.Request):
                return Response(400, _json_error("unexpected HTTP event"))
            head = event
            # h11 bounds only a head still incomplete: one that arrived whole in a single
            # read (up to _RECEIVE_SIZE) would pass.  What it consumed is the head's size.
            if self._fed - len(self._conn.trailing_data[0]) > self._limits.max_header_bytes:
                return Response(431, _json_error("request head too large"))
            if _content_length(head.headers) > self._limits.max_body_bytes:
                return Response(413, _json_error("request body too large"))
            body = bytearray()
            while True:
                event = await self._next_event()
                if isinstance(event, h11.Data):
                    body += event.data
                    if len(body) > self._limits.max_body_bytes:
                        return Response(413, _json_error("request body too large"))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    return None
                else:
                    return Response(400, _json_error("unexpected HTTP event"))
        except h11.RemoteProtocolError as exc:
            status = exc.error_status_hint if exc.error_status_hint in _REASONS else 400
            message = "request head too large" if status == 431 else "malformed HTTP request"
            return Response(status, _json_error(message))
        try:
            target = head.target.decode("ascii")
        except UnicodeDecodeError:
            return Response(400, _json_error("request target is not ASCII"))
        path, _, query = target.partition("?")
        return Request(
            method=head.method.decode("ascii"),
            target=target,
            path=path,
            query=query,
            headers=tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in head.headers),
            body=bytes(body),
            peer=self._peer,
        )

    async def _next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self._conn.next_event()
            if event is h11.PAUSED or isinstance(event, h11.Event):
                return event
            if self._conn.they_are_waiting_for_100_continue:
                await self._stream.send_all(
                    self._conn.send(h11.InformationalResponse(status_code=100, headers=[]))
                )
            await self._receive()

    async def _call_handler(self, request: Request) -> Response | StreamingResponse:
        try:
            response = await self._handler(request)
        except Exception as exc:  # noqa: BLE001 - any handler bug becomes a 500, never a crash
            logger.error(
                "http.handler_failed",
                extra={
                    "path": _loggable(request.path),
                    "error": type(exc).__name__,
                    "where": _origin(exc),
                },
            )
            return Response(500, _INTERNAL_ERROR_BODY)
        if isinstance(response, StreamingResponse):
            return response
        if not isinstance(response, Response) or not 100 <= response.status <= 599:
            logger.error(
                "http.handler_failed",
                extra={"path": _loggable(request.path), "error": "not a Response"},
            )
            return Response(500, _INTERNAL_ERROR_BODY)
        return response

    async def _send_response(self, response: Response, *, method: str, close: bool) -> bool:
        """Send ``response``; False if the connection must end now."""
        body = b"" if response.status == 401 or method == "HEAD" else response.body
        headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
        if response.status != 401 and response.body:
            headers.append((b"content-type", response.content_type.encode("latin-1")))
        headers.append(
            (b"content-length", b"%d" % (0 if response.status == 401 else len(response.body)))
        )
        headers.append((b"cache-control", b"no-store"))
        if close:
            headers.append((b"connection", b"close"))
        try:
            data = self._conn.send(
                h11.Response(
                    status_code=response.status,
                    headers=headers,
                    reason=_REASONS.get(response.status, b""),
                )
            )
            if body:
                data += self._conn.send(h11.Data(data=body))
            data += self._conn.send(h11.EndOfMessage())
        except h11.LocalProtocolError:
            # e.g. a status h11 refuses; never leave a client hanging on half an answer.
            logger.error("http.bad_response", extra={"status": response.status})
            return False
        await self._send_bytes(data)
        return True

    async def _send_stream(self, response: StreamingResponse, *, method: str) -> None:
        """Send the head, then each chunk as the producer yields it; then close."""
        try:
            headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response.headers]
            headers += [
                (b"content-type", response.content_type.encode("latin-1")),
                (b"cache-control", b"no-store"),
                (b"connection", b"close"),
            ]
            # No Content-Length: h11 sends the body chunked (HTTP/1.1) or until close (1.0).
            await self._send_bytes(
                self._conn.send(h11.Response(status_code=200, headers=headers, reason=b"OK"))
            )
            if method != "HEAD":
                if not await self._send_chunks(response):
                    return
            await self._send_bytes(self._conn.send(h11.EndOfMessage()))
        finally:
            if response.release is not None:
                response.release()

    async def _send_chunks(self, response: StreamingResponse) -> bool:
        """The body of a stream; False if it must end without a proper end of message."""
        async with aclosing(response.chunks()) as chunks:
            self._enter("streaming", math.inf)  # the producer waits for news
            while True:
                try:
                    chunk = await anext(chunks)
                except StopAsyncIteration:
                    return True
                except Exception as exc:  # noqa: BLE001 - a producer bug ends its stream only
                    logger.error(
                        "http.stream_failed",
                        extra={"error": type(exc).__name__, "where": _origin(exc)},
                    )
                    return False
                if len(chunk) > self._limits.max_stream_chunk_bytes:
                    logger.error("http.stream_chunk_too_large", extra={"bytes": len(chunk)})
                    return False
                if chunk:
                    await self._send_bytes(self._conn.send(h11.Data(data=chunk)))
                self._enter("streaming", math.inf)

    async def _send_bytes(self, data: bytes) -> None:
        self._enter("sending", self._limits.send_timeout)  # past it, the connection ends
        await self._stream.send_all(data)

    def _log(self, method: str, path: str, status: int, started: float) -> None:
        logger.info(
            "http.request",
            extra={
                "method": method,
                "path": _loggable(path),
                "status": status,
                "sae": self._peer.common_name if self._peer is not None else "-",
                "duration_ms": round((trio.current_time() - started) * 1000, 1),
            },
        )


def _content_length(headers: Iterable[tuple[bytes, bytes]]) -> int:
    # h11 has already checked that Content-Length, if present, is one decimal number.
    for name, value in headers:
        if name == b"content-length":
            return int(value)
    return 0


def _loggable(path: str) -> str:
    return path[:_MAX_LOGGED_PATH]


def _origin(exc: BaseException) -> str:
    tb = exc.__traceback__
    if tb is None:
        return "-"
    while tb.tb_next is not None:
        tb = tb.tb_next
    return f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}"


async def serve_connection(
    stream: trio.abc.Stream,
    handler: Handler,
    *,
    limits: Limits = DEFAULT_LIMITS,
    peer_identity: PeerInfo | None = None,
) -> None:
    """Serve HTTP/1.1 requests arriving on ``stream`` until it ends, then close it.

    Each complete request goes to ``await handler(request)``, which answers with a
    ``Response``; ``peer_identity`` is passed along as ``request.peer``.  Requests on one
    connection are answered in order (keep-alive and pipelining).  The connection ends when
    the client closes it or asks to, after ``limits.idle_timeout`` without a request, or
    after an answer that closes it (400, 408, 413, 431).  A broken stream ends it quietly.

    Raises nothing of its own.  On cancellation the stream is closed and ``Cancelled``
    propagates; a handler in progress is cancelled with it.
    """
    try:
        await _Shell(stream, handler, limits, peer_identity).run()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        logger.debug("http.connection_lost")
    finally:
        with trio.move_on_after(limits.send_timeout, shield=True):
            try:
                await stream.aclose()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
