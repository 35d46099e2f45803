"""The HTTP shell: keep-alive, pipelining, limits, time-outs, errors, and TLS identity."""

from __future__ import annotations

import logging
import ssl
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from qkmsd.http import (
    HandshakeStats,
    Limits,
    PeerInfo,
    Request,
    Response,
    StreamingResponse,
    serve_connection,
    serve_tcp_tls,
)
from qkmsd.tlsgroup import HelloReader, TlsContexts, negotiated_group

SECRET = bytes.fromhex("5ec7e75ec7e75ec7e75ec7e75ec7e75e")
ALICE = PeerInfo(common_name="SAE_A", role="sae")


async def echo(request: Request) -> Response:
    """Answers with what it saw, so tests can check what reached the handler."""
    if request.path == "/fail":
        raise RuntimeError(f"boom with key {SECRET.hex()}")
    if request.path == "/deny":
        return Response(401, b'{"message": "would leak if sent"}')
    peer = request.peer.common_name if request.peer else "-"
    text = f"{request.method} {request.target} {len(request.body)} {peer}"
    return Response(200, text.encode(), content_type="text/plain")


@dataclass
class Answer:
    status: int
    headers: dict[bytes, bytes]
    body: bytes


class Client:
    """The client end of a memory stream, speaking HTTP/1.1 through its own h11."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> Answer:
        await self.send_raw(self.encode(method, target, body, headers))
        return await self.answer()

    def encode(
        self, method: str, target: str, body: bytes = b"", headers: Sequence[tuple[str, str]] = ()
    ) -> bytes:
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        all_headers = [("host", "kme"), ("content-length", str(len(body))), *headers]
        data = self.conn.send(h11.Request(method=method, target=target, headers=all_headers))
        data += self.conn.send(h11.Data(data=body)) if body else b""
        return data + self.conn.send(h11.EndOfMessage())

    async def answer(self) -> Answer:
        head: h11.Response | None = None
        body = b""
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(bytes(await self.stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                return Answer(head.status_code, dict(head.headers), body)
            else:
                raise AssertionError(f"unexpected {event!r}")

    async def closed_by_server(self) -> bool:
        return await self.stream.receive_some(65536) == b""


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_connection(server_stream, echo, limits=Limits(), peer_identity=ALICE)
        )
        yield Client(client_stream)
        nursery.cancel_scope.cancel()


async def test_two_requests_share_one_keep_alive_connection(client: Client) -> None:
    first = await client.request("POST", "/api/v1/keys/B/enc_keys", b'{"number": 2}')
    second = await client.request("GET", "/api/v1/keys/B/status?x=1")
    assert (first.status, first.body) == (200, b"POST /api/v1/keys/B/enc_keys 13 SAE_A")
    assert (second.status, second.body) == (200, b"GET /api/v1/keys/B/status?x=1 0 SAE_A")


async def test_pipelined_requests_are_answered_in_order(client: Client) -> None:
    await client.send_raw(
        b"GET /one HTTP/1.1\r\nhost: kme\r\n\r\nGET /two HTTP/1.1\r\nhost: kme\r\n\r\n"
    )
    client.conn.send(h11.Request(method="GET", target="/one", headers=[("host", "kme")]))
    client.conn.send(h11.EndOfMessage())
    first = await client.answer()
    client.conn.start_next_cycle()
    second = await client.answer()
    assert [first.body, second.body] == [b"GET /one 0 SAE_A", b"GET /two 0 SAE_A"]


async def test_responses_are_not_cacheable_and_say_their_type(client: Client) -> None:
    answer = await client.request("GET", "/x")
    assert answer.headers[b"cache-control"] == b"no-store"
    assert answer.headers[b"content-type"] == b"text/plain"


async def test_401_is_sent_without_a_body(client: Client) -> None:
    answer = await client.request("GET", "/deny")
    assert (answer.status, answer.body, answer.headers[b"content-length"]) == (401, b"", b"0")
    assert b"content-type" not in answer.headers


async def test_handler_error_is_a_generic_500_and_the_connection_goes_on(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="qkms.http"):
        answer = await client.request("GET", "/fail")
    assert (answer.status, answer.body) == (500, b'{"message":"internal server error"}')
    assert (await client.request("GET", "/after")).status == 200
    failure = next(r for r in caplog.records if r.getMessage() == "http.handler_failed")
    assert failure.__dict__["error"] == "RuntimeError"
    everything = caplog.text + " ".join(str(r.__dict__) for r in caplog.records)
    assert SECRET.hex() not in everything


async def test_each_request_gets_one_log_line_with_its_fields(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="qkms.http"):
        await client.request("GET", "/api/v1/keys/B/status?secret=query")
    [line] = [r for r in caplog.records if r.getMessage() == "http.request"]
    fields = {k: line.__dict__[k] for k in ("method", "path", "status", "sae")}
    assert fields == {
        "method": "GET",
        "path": "/api/v1/keys/B/status",
        "status": 200,
        "sae": "SAE_A",
    }
    assert line.__dict__["duration_ms"] >= 0


async def test_content_length_over_the_limit_is_413_before_the_body_is_read(
    client: Client,
) -> None:
    await client.send_raw(
        b"POST /api/v1/keys/B/enc_keys HTTP/1.1\r\nhost: kme\r\ncontent-length: 10000000\r\n\r\n"
    )
    answer = await client.answer()
    assert answer.status == 413
    assert answer.headers[b"connection"] == b"close"
    assert await client.closed_by_server()


async def test_chunked_body_growing_over_the_limit_is_413() -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_connection(server_stream, echo, limits=Limits(max_body_bytes=100))
        )
        chunk = b"40\r\n" + b"x" * 64 + b"\r\n"
        await client.send_raw(
            b"POST /x HTTP/1.1\r\nhost: kme\r\ntransfer-encoding: chunked\r\n\r\n" + chunk * 2
        )
        assert (await client.answer()).status == 413
        assert await client.closed_by_server()


async def test_garbage_is_400_and_closes(client: Client) -> None:
    await client.send_raw(b"\x16\x03\x01 this is not HTTP\r\n\r\n")
    assert (await client.answer()).status == 400
    assert await client.closed_by_server()


async def test_oversized_head_is_431_and_closes(client: Client) -> None:
    await client.send_raw(b"GET /x HTTP/1.1\r\nhost: kme\r\nx-big: " + b"a" * 20000)
    assert (await client.answer()).status == 431
    assert await client.closed_by_server()


async def trickle(client: Client, data: bytes) -> None:
    """Send ``data`` one byte a second until done or the server hangs up."""
    try:
        for byte in data:
            await client.send_raw(bytes([byte]))
            await trio.sleep(1)
    except trio.BrokenResourceError:
        pass


async def test_slowloris_client_is_cut_off_after_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    limits = Limits(request_timeout=10.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_stream, echo, limits=limits))
        start = trio.current_time()
        await trickle(client, b"GET /api/v1/keys/B/status HTTP/1.1\r\nhost: kme\r\n\r\n")
        assert (await client.answer()).status == 408
        assert trio.current_time() - start == pytest.approx(10.0, abs=1.0)
        assert await client.closed_by_server()


async def test_slow_body_is_cut_off_too(autojump_clock: trio.testing.MockClock) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_stream, echo))
        await client.send_raw(b"POST /x HTTP/1.1\r\nhost: kme\r\ncontent-length: 100\r\n\r\n")
        await trickle(client, b"x" * 100)
        assert (await client.answer()).status == 408


async def test_idle_keep_alive_connection_is_closed(autojump_clock: trio.testing.MockClock) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_connection(server_stream, echo, limits=Limits(idle_timeout=30))
        )
        assert (await client.request("GET", "/x")).status == 200
        start = trio.current_time()
        assert await client.closed_by_server()
        assert trio.current_time() - start == pytest.approx(30.0)


async def test_client_asking_to_close_is_closed_after_the_answer(client: Client) -> None:
    answer = await client.request("GET", "/x", headers=[("connection", "close")])
    assert answer.status == 200
    assert await client.closed_by_server()


# --- over real TLS on loopback -----------------------------------------------------------


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


@pytest.fixture(name="pki")
def tls_files(pki: Path) -> Pki:
    """The shared network PKI (tests/conftest.py): KME_A serves, SAE_A is the client."""
    return Pki(
        pki / "ca.pem",
        pki / "nodes" / "KME_A.pem",
        pki / "nodes" / "KME_A.key",
        pki / "saes" / "SAE_A.pem",
        pki / "saes" / "SAE_A.key",
    )


def _server_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=pki.ca)
    ctx.load_cert_chain(pki.server_cert, pki.server_key)
    return ctx


def _client_context(pki: Pki, *, with_cert: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if with_cert:
        ctx.load_cert_chain(pki.client_cert, pki.client_key)
    return ctx


async def _tls_client(port: int, ctx: ssl.SSLContext) -> Client:
    stream = await trio.open_ssl_over_tcp_stream(
        "127.0.0.1", port, ssl_context=ctx, https_compatible=True
    )
    return Client(stream)


async def test_over_tls_the_handler_sees_the_client_certificate_identity(pki: Pki) -> None:
    seen: list[PeerInfo | None] = []

    async def who(request: Request) -> Response:
        seen.append(request.peer)
        return Response(200, b"{}")

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tcp_tls, who, _server_context(pki), "127.0.0.1", 0)
            client = await _tls_client(port, _client_context(pki))
            assert (await client.request("GET", "/a")).status == 200
            assert (await client.request("GET", "/b")).status == 200
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    assert seen[0] == seen[1]
    assert seen[0] is not None
    assert (seen[0].common_name, seen[0].role) == ("SAE_A", "sae")
    assert seen[0].fingerprint is not None and len(seen[0].fingerprint) == 64


async def test_over_tls_a_failing_handler_does_not_stop_the_server(pki: Pki) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tcp_tls, echo, _server_context(pki), "127.0.0.1", 0)
            first = await _tls_client(port, _client_context(pki))
            assert (await first.request("GET", "/fail")).status == 500
            await first.stream.aclose()
            second = await _tls_client(port, _client_context(pki))
            assert (await second.request("GET", "/ok")).body == b"GET /ok 0 SAE_A"
            await second.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_over_tls_a_client_without_certificate_is_refused(pki: Pki) -> None:
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tcp_tls, echo, _server_context(pki), "127.0.0.1", 0)
            # TLS 1.3: the server's refusal arrives after the client's handshake has ended.
            with pytest.raises((trio.BrokenResourceError, h11.RemoteProtocolError)):
                client = await _tls_client(port, _client_context(pki, with_cert=False))
                await client.request("GET", "/x")
            ok = await _tls_client(port, _client_context(pki))
            assert (await ok.request("GET", "/x")).status == 200
            await ok.stream.aclose()
            nursery.cancel_scope.cancel()


async def test_over_tls_a_silent_client_is_dropped_after_the_handshake_timeout(
    pki: Pki,
) -> None:
    limits = Limits(handshake_timeout=0.2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            serve = partial(serve_tcp_tls, limits=limits)
            port = await nursery.start(serve, echo, _server_context(pki), "127.0.0.1", 0)
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            assert await silent.receive_some(100) == b""
            await silent.aclose()
            nursery.cancel_scope.cancel()


async def test_handshakes_are_counted_by_version_and_group_and_failures_apart(pki: Pki) -> None:
    stats = HandshakeStats()
    limits = Limits(handshake_timeout=0.2)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            serve = partial(serve_tcp_tls, limits=limits, stats=stats)
            port = await nursery.start(serve, echo, partial(_server_context, pki), "127.0.0.1", 0)
            ok = await _tls_client(port, _client_context(pki))
            assert (await ok.request("GET", "/x")).status == 200
            await ok.stream.aclose()
            with pytest.raises((trio.BrokenResourceError, h11.RemoteProtocolError)):
                refused = await _tls_client(port, _client_context(pki, with_cert=False))
                await refused.request("GET", "/x")
            silent = await trio.open_tcp_stream("127.0.0.1", port)
            assert await silent.receive_some(100) == b""
            await silent.aclose()
            nursery.cancel_scope.cancel()

    snapshot = stats.snapshot()
    assert (snapshot.handshakes, snapshot.failed, snapshot.timed_out) == (1, 1, 1)
    assert snapshot.versions == {"TLSv1.3": 1}
    assert snapshot.groups == {DEFAULT_GROUP: 1}
    assert snapshot.last_group == DEFAULT_GROUP


# What a client of this OpenSSL with default settings agrees on with our server: from
# OpenSSL 3.5 on, both offer the ML-KEM hybrid first.
DEFAULT_GROUP = "X25519MLKEM768" if ssl.OPENSSL_VERSION_INFO >= (3, 5) else "x25519"


def _curve(name: str) -> Callable[[ssl.SSLContext], None]:
    return lambda ctx: ctx.set_ecdh_curve(name)


def _tls12(ctx: ssl.SSLContext) -> None:
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2


@pytest.mark.parametrize(
    ("client_setting", "version", "group"),
    [
        (None, "TLSv1.3", DEFAULT_GROUP),
        (_curve("prime256v1"), "TLSv1.3", "secp256r1"),
        (_curve("secp384r1"), "TLSv1.3", "secp384r1"),
        (_tls12, "TLSv1.2", "x25519"),  # read from the ECDHE ServerKeyExchange
    ],
    ids=["default", "P-256", "P-384", "TLS 1.2"],
)
async def test_the_group_each_handshake_agreed_on_is_named_on_any_python(
    pki: Pki,
    client_setting: Callable[[ssl.SSLContext], None] | None,
    version: str,
    group: str,
) -> None:
    stats = HandshakeStats()
    client_context = _client_context(pki)
    if client_setting is not None:
        client_setting(client_context)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            serve = partial(serve_tcp_tls, stats=stats)
            port = await nursery.start(serve, echo, partial(_server_context, pki), "127.0.0.1", 0)
            client = await _tls_client(port, client_context)
            assert (await client.request("GET", "/x")).status == 200
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    assert stats.snapshot().versions == {version: 1}
    assert stats.snapshot().groups == {group: 1}


async def test_given_one_context_the_group_is_named_only_where_python_reads_it(pki: Pki) -> None:
    stats = HandshakeStats()
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            serve = partial(serve_tcp_tls, stats=stats)
            port = await nursery.start(serve, echo, _server_context(pki), "127.0.0.1", 0)
            client = await _tls_client(port, _client_context(pki))
            assert (await client.request("GET", "/x")).status == 200
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    python_reads_it = hasattr(ssl.SSLObject, "group")
    assert stats.snapshot().last_group == (DEFAULT_GROUP if python_reads_it else "unknown")


@pytest.mark.skipif(hasattr(ssl.SSLObject, "group"), reason="Python reads the group itself")
async def test_after_its_handshake_a_connection_no_longer_calls_into_the_hello_reader(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # While a context is watched, OpenSSL calls the reader for every record: each request
    # would cost the server about 20 us more.  Connections leave the watched context.
    calls = 0
    message = HelloReader._message

    def counting(self: HelloReader, *args: Any) -> None:
        nonlocal calls
        calls += 1
        message(self, *args)

    monkeypatch.setattr(HelloReader, "_message", counting)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            make_context = partial(_server_context, pki)
            port = await nursery.start(serve_tcp_tls, echo, make_context, "127.0.0.1", 0)
            client = await _tls_client(port, _client_context(pki))
            assert (await client.request("GET", "/x")).status == 200
            during_handshake = calls
            for _ in range(20):
                assert (await client.request("GET", "/x")).status == 200
            await client.stream.aclose()
            nursery.cancel_scope.cancel()
    assert during_handshake > 0
    assert calls == during_handshake


async def test_a_client_names_the_group_of_its_handshakes_too(pki: Pki) -> None:
    def p384_client() -> ssl.SSLContext:
        ctx = _client_context(pki)
        ctx.set_ecdh_curve("secp384r1")
        return ctx

    contexts = TlsContexts(p384_client)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tcp_tls, echo, _server_context(pki), "127.0.0.1", 0)
            stream = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", port, ssl_context=contexts.handshake, https_compatible=True
            )
            await stream.do_handshake()
            assert contexts.after_handshake(stream) == "secp384r1"
            assert stream.context is not contexts.handshake or contexts.reader is None
            client = Client(stream)
            assert (await client.request("GET", "/x")).status == 200  # served on the twin
            await stream.aclose()
            nursery.cancel_scope.cancel()


class _GroupReporting:
    """An SSL object as Python 3.15 has it: ``group()`` names the negotiated group."""

    def __init__(self, group: str | None) -> None:
        self._group = group

    def group(self) -> str | None:
        return self._group


class _Stream:
    def __init__(self, ssl_object: object) -> None:
        self._ssl_object = ssl_object


@pytest.mark.parametrize(
    ("ssl_object", "expected"),
    [
        (_GroupReporting("X25519MLKEM768"), "X25519MLKEM768"),
        (_GroupReporting(None), None),  # no handshake yet
        (object(), None),  # Python before 3.15: no group()
    ],
)
def test_the_negotiated_group_is_read_where_python_offers_it(
    ssl_object: object, expected: str | None
) -> None:
    assert negotiated_group(_Stream(ssl_object)) == expected  # type: ignore[arg-type]


class _StuckStream:
    """A stream whose context cannot be changed."""

    @property
    def context(self) -> ssl.SSLContext:
        raise AssertionError("not read")

    @context.setter
    def context(self, value: ssl.SSLContext) -> None:
        raise TypeError("no")


@pytest.mark.skipif(hasattr(ssl.SSLObject, "group"), reason="Python reads the group itself")
def test_a_connection_that_cannot_leave_the_watched_context_is_served_all_the_same(
    pki: Pki,
) -> None:
    contexts = TlsContexts(partial(_server_context, pki))
    assert contexts.reader is not None
    contexts.after_handshake(_StuckStream())  # type: ignore[arg-type]


async def test_a_streaming_response_sends_each_chunk_as_it_is_produced_then_closes() -> None:
    produced = trio.Event()
    go_on = trio.Event()
    released: list[int] = []

    async def chunks() -> AsyncGenerator[bytes, None]:
        yield b"data: one\n\n"
        produced.set()
        await go_on.wait()
        yield b"data: two\n\n"

    async def handler(request: Request) -> StreamingResponse:
        return StreamingResponse(chunks, release=lambda: released.append(1))

    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve_connection, server_stream, handler)
        await client.send_raw(client.encode("GET", "/events"))
        events: list[object] = []
        while not any(isinstance(e, h11.Data) for e in events):
            event = client.conn.next_event()
            if event is h11.NEED_DATA:
                client.conn.receive_data(bytes(await client_stream.receive_some(65536)))
            else:
                events.append(event)
        head = events[0]
        assert isinstance(head, h11.Response) and head.status_code == 200
        assert (b"content-type", b"text/event-stream") in head.headers
        assert [e.data for e in events if isinstance(e, h11.Data)] == [b"data: one\n\n"]
        assert produced.is_set() and released == []
        go_on.set()
        while not isinstance(events[-1], h11.EndOfMessage):
            event = client.conn.next_event()
            if event is h11.NEED_DATA:
                client.conn.receive_data(bytes(await client_stream.receive_some(65536)))
            else:
                events.append(event)
    assert [e.data for e in events if isinstance(e, h11.Data)][1:] == [b"data: two\n\n"]
    assert released == [1]
    assert await client.closed_by_server()


async def test_a_stream_whose_producer_fails_or_oversends_ends_and_frees_its_slot(
    caplog: pytest.LogCaptureFixture,
) -> None:
    released: list[str] = []

    async def failing() -> AsyncGenerator[bytes, None]:
        yield b"ok\n\n"
        raise RuntimeError(f"boom {SECRET.hex()}")

    async def huge() -> AsyncGenerator[bytes, None]:
        yield b"x" * 2048

    for name, chunks in (("failing", failing), ("huge", huge)):

        async def handler(request: Request, chunks: Any = chunks, name: str = name) -> Any:
            return StreamingResponse(chunks, release=lambda: released.append(name))

        client_stream, server_stream = trio.testing.memory_stream_pair()
        with caplog.at_level(logging.INFO, logger="qkms.http"):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(
                    partial(
                        serve_connection,
                        server_stream,
                        handler,
                        limits=Limits(max_stream_chunk_bytes=1024),
                    )
                )
                await client_stream.send_all(b"GET /e HTTP/1.1\r\nhost: kme\r\n\r\n")
                data = b""
                while chunk := await client_stream.receive_some(65536):
                    data += chunk
        assert b"x" * 2048 not in data
    assert released == ["failing", "huge"]
    assert SECRET.hex() not in caplog.text
    assert "http.stream_failed" in caplog.text and "http.stream_chunk_too_large" in caplog.text
