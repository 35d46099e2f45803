"""The clients' sans-IO HTTP exchange: what goes on the wire, and how answers are read."""

from __future__ import annotations

import h11
import pytest

from qkms_client import UnexpectedResponse
from qkms_client._http import Exchange, KmeClosed
from qkms_client._results import MAX_RESPONSE_BYTES, Endpoint, HttpCall

KME = Endpoint("kme-a.example", 8443, "")
POST = HttpCall("POST", "/api/v1/keys/SAE_B/enc_keys", b'{"number":1}')


def exchange(call: HttpCall = POST, endpoint: Endpoint = KME) -> Exchange:
    return Exchange(h11.Connection(h11.CLIENT), call, endpoint)


def feed(ex: Exchange, *chunks: bytes) -> bool:
    for chunk in chunks:
        ex.receive(chunk)
    return ex.complete()


def test_the_request_is_head_and_body_in_one_write() -> None:
    ex = exchange()
    head, _, body = ex.request.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0] == b"POST /api/v1/keys/SAE_B/enc_keys HTTP/1.1"
    lines = set(head.split(b"\r\n")[1:])
    assert {
        b"host: kme-a.example:8443",
        b"accept: application/json",
        b"content-length: 12",
        b"content-type: application/json",
    } <= lines
    assert body == b'{"number":1}'


@pytest.mark.parametrize(
    ("endpoint", "host"),
    [
        (Endpoint("kme-a.example", 443, ""), b"host: kme-a.example\r\n"),
        (Endpoint("::1", 8443, ""), b"host: [::1]:8443\r\n"),
    ],
)
def test_the_host_header_names_the_port_unless_it_is_443(endpoint: Endpoint, host: bytes) -> None:
    assert host in exchange(endpoint=endpoint).request


def test_a_get_has_no_body_and_no_content_type() -> None:
    ex = exchange(HttpCall("GET", "/api/v1/keys/SAE_B/status"))
    assert ex.request.endswith(b"\r\n\r\n")
    assert b"content-length: 0" in ex.request
    assert b"content-type" not in ex.request


def test_a_response_may_arrive_a_byte_at_a_time() -> None:
    ex = exchange()
    raw = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    for i in range(len(raw) - 1):
        assert not feed(ex, raw[i : i + 1])
    assert feed(ex, raw[-1:])
    assert ex.result() == (200, b"{}")
    assert ex.reusable()


def test_chunked_and_informational_responses_are_read() -> None:
    ex = exchange()
    assert feed(
        ex,
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n",
        b'3\r\n{"m\r\n',
        b'7\r\nessage"\r\n3\r\n:1}\r\n0\r\n\r\n',
    )
    assert ex.result() == (503, b'{"message":1}')


def test_a_close_delimited_body_ends_at_eof_and_the_connection_is_not_reused() -> None:
    ex = exchange()
    assert not feed(ex, b"HTTP/1.1 200 OK\r\n\r\n{}")
    assert feed(ex, b"")
    assert ex.result() == (200, b"{}")
    assert not ex.reusable()


def test_connection_close_is_honoured() -> None:
    ex = exchange()
    assert feed(ex, b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
    assert not ex.reusable()


@pytest.mark.parametrize(
    "received",
    [b"", b"HTTP/1.1 200 OK\r\ncontent", b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}"],
)
def test_eof_before_the_answer_is_complete_is_kme_closed(received: bytes) -> None:
    ex = exchange()
    with pytest.raises(KmeClosed, match="before the answer was complete"):
        feed(ex, received, b"")


def test_an_answer_over_the_size_limit_is_refused() -> None:
    ex = exchange()
    size = MAX_RESPONSE_BYTES + 1
    with pytest.raises(UnexpectedResponse, match="larger than"):
        feed(ex, b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n" % size, b"x" * size)


def test_bytes_that_are_not_http_are_a_protocol_error() -> None:
    ex = exchange()
    with pytest.raises(h11.ProtocolError):
        feed(ex, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
