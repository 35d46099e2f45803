"""One HTTP/1.1 request and its response on an h11 client connection, without I/O.

Both clients drive it the same way: send ``exchange.request`` (head and body in one write,
so that the KME gets the request in one TLS record and one TCP segment rather than two),
then feed received bytes to ``exchange.receive`` until it reports the response complete::

    exchange = Exchange(conn, call, endpoint)
    send_all(exchange.request)
    while not exchange.complete():
        exchange.receive(receive_some())
    status, body = exchange.result()

h11 parses the response (Content-Length, chunked or close-delimited bodies, 1xx
responses, keep-alive rules); a response that breaks HTTP/1.1 raises ``h11.ProtocolError``.
"""

from __future__ import annotations

import h11

from ._results import MAX_RESPONSE_BYTES, Endpoint, HttpCall, too_large

__all__ = ["Exchange", "KmeClosed", "RECEIVE_SIZE"]

RECEIVE_SIZE = 64 * 1024
"""Bytes asked of the transport per read."""


_CLOSED_EARLY = "KME closed the connection before the answer was complete"


class KmeClosed(Exception):
    """The KME closed the connection before the response was complete."""


class Exchange:
    """A request on ``conn`` (an ``h11.Connection(h11.CLIENT)`` ready for one) and its response.

    ``receive(b"")`` means the transport reached EOF.  ``complete()`` raises ``KmeClosed``
    if that happened before the response was whole, ``UnexpectedResponse`` for a body
    over ``MAX_RESPONSE_BYTES``, and ``h11.ProtocolError`` for a response h11 cannot
    accept.
    """

    def __init__(self, conn: h11.Connection, call: HttpCall, endpoint: Endpoint) -> None:
        self._conn = conn
        self.status: int | None = None
        self.body = bytearray()
        self._done = False
        self._eof = False
        headers = [
            ("host", _host_header(endpoint)),
            ("accept", "application/json"),
            ("content-length", str(len(call.body or b""))),
        ]
        if call.body is not None:
            headers.append(("content-type", "application/json"))
        data = conn.send(h11.Request(method=call.method, target=call.path, headers=headers))
        if call.body:
            data += conn.send(h11.Data(data=call.body))
        data += conn.send(h11.EndOfMessage())
        self.request: bytes = data

    def receive(self, data: bytes) -> None:
        self._eof = self._eof or not data
        self._conn.receive_data(data)

    def complete(self) -> bool:
        """Process what was received; True once the whole response is in."""
        while not self._done:
            try:
                event = self._conn.next_event()
            except h11.RemoteProtocolError:
                if self._eof:
                    raise KmeClosed(_CLOSED_EARLY) from None
                raise
            if event is h11.NEED_DATA:
                return False
            if isinstance(event, h11.Response):
                self.status = event.status_code
            elif isinstance(event, h11.Data):
                self.body += event.data
                if len(self.body) > MAX_RESPONSE_BYTES:
                    raise too_large()
            elif isinstance(event, h11.EndOfMessage):
                self._done = True
            elif isinstance(event, h11.ConnectionClosed):
                raise KmeClosed(_CLOSED_EARLY)
            # InformationalResponse (1xx): keep reading.
        return True

    def result(self) -> tuple[int, bytes]:
        """After ``complete()``: the response's status and body."""
        assert self.status is not None  # h11 gives the head before EndOfMessage
        return self.status, bytes(self.body)

    def reusable(self) -> bool:
        """After ``complete()``: whether the connection may carry the next request.

        If so, the h11 connection has been readied for it.
        """
        conn = self._conn
        if self._eof:
            return False
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
            return True
        return False


def _host_header(endpoint: Endpoint) -> str:
    host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
    return host if endpoint.port == 443 else f"{host}:{endpoint.port}"
