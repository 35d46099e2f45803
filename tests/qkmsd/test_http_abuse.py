"""The HTTP shell under abuse: sizes over the limits, slow clients, pipelined garbage.

Each abuse gets a 4xx or a closed connection within the shell's time-outs (driven by a
MockClock), and the shell holds no more than its limits.  The same abuse against a live
node over TLS, and its memory under a long flood, is in
``tests/integration/test_http_abuse_live.py``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import h11
import pytest
import trio
import trio.testing

from qkmsd.http import Limits, Request, Response, serve_connection

from .test_http import Answer, Client, echo

LIMITS = Limits(
    max_header_bytes=16 * 1024,
    max_body_bytes=1024 * 1024,
    request_timeout=10.0,
    idle_timeout=60.0,
    send_timeout=10.0,
)
HEAD = b"POST /api/v1/keys/B/enc_keys HTTP/1.1\r\nhost: kme\r\n"


async def read_answers(stream: trio.abc.Stream, count: int) -> list[Answer]:
    """``count`` answers to pipelined requests, each parsed by an h11 client of its own."""
    answers: list[Answer] = []
    leftover = b""
    while len(answers) < count:
        conn = h11.Connection(h11.CLIENT)
        conn.send(h11.Request(method="GET", target="/", headers=[("host", "kme")]))
        conn.send(h11.EndOfMessage())
        if leftover:  # (b"" would tell h11 the stream ended)
            conn.receive_data(leftover)
        head, body = None, b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(bytes(await stream.receive_some(65536)))
            elif isinstance(event, h11.Response):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                answers.append(Answer(head.status_code, dict(head.headers), body))
                leftover = conn.trailing_data[0]
                break
    return answers


class Recorder:
    """A handler that counts what reached it and how big the bodies were."""

    def __init__(self) -> None:
        self.bodies: list[int] = []

    async def __call__(self, request: Request) -> Response:
        self.bodies.append(len(request.body))
        return await echo(request)


@pytest.fixture
async def served() -> AsyncIterator[tuple[Client, Recorder]]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    handler = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_stream, handler, limits=LIMITS))
        yield Client(client_stream), handler
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(
    ("length", "status"),
    [
        (b"1000000000", 413),
        (b"18446744073709551616", 413),
        (b"00000000001048577", 413),
        (b"9" * 40, 400),  # more digits than h11 reads as a length
    ],
)
async def test_a_huge_content_length_is_refused_before_any_body_and_closes(
    served: tuple[Client, Recorder], length: bytes, status: int
) -> None:
    client, handler = served
    await client.send_raw(HEAD + b"content-length: " + length + b"\r\n\r\n" + b"x" * 100)
    assert (await client.answer()).status == status
    assert await client.closed_by_server()
    assert handler.bodies == []


async def test_a_content_length_of_thousands_of_digits_is_400_and_closes(
    served: tuple[Client, Recorder],
) -> None:
    client, handler = served
    await client.send_raw(HEAD + b"content-length: " + b"9" * 5000 + b"\r\n\r\n")
    assert (await client.answer()).status == 400
    assert await client.closed_by_server()
    assert handler.bodies == []


async def test_a_chunk_announcing_a_gigabyte_is_413_once_the_limit_is_passed(
    served: tuple[Client, Recorder],
) -> None:
    client, handler = served
    await client.send_raw(HEAD + b"transfer-encoding: chunked\r\n\r\n" + b"3b9aca00\r\n")
    sent = 0
    with trio.move_on_after(5):  # memory streams: no real time passes
        while sent <= LIMITS.max_body_bytes + 65536:
            await client.send_raw(b"x" * 65536)
            sent += 65536
    assert (await client.answer()).status == 413
    assert handler.bodies == []


async def test_many_small_headers_over_the_head_limit_are_431(
    served: tuple[Client, Recorder],
) -> None:
    client, handler = served
    headers = b"".join(b"x-h%d: v\r\n" % i for i in range(3000))
    await client.send_raw(b"GET /x HTTP/1.1\r\nhost: kme\r\n" + headers + b"\r\n")
    assert (await client.answer()).status == 431
    assert await client.closed_by_server()
    assert handler.bodies == []


async def test_a_request_line_over_the_head_limit_is_431(served: tuple[Client, Recorder]) -> None:
    client, _ = served
    await client.send_raw(b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nhost: kme\r\n\r\n")
    assert (await client.answer()).status == 431
    assert await client.closed_by_server()


async def test_pipelined_garbage_after_a_good_request_answers_it_then_400_and_close(
    served: tuple[Client, Recorder],
) -> None:
    client, handler = served
    good = client.encode("GET", "/api/v1/keys/B/status")
    await client.send_raw(good + b"\x00\xff garbage \r\n\r\n" + good)
    answers = await read_answers(client.stream, 2)
    assert [a.status for a in answers] == [200, 400]
    assert await client.closed_by_server()
    assert len(handler.bodies) == 1  # the request behind the garbage is never served


async def test_a_hundred_pipelined_requests_are_answered_in_order(
    served: tuple[Client, Recorder],
) -> None:
    client, handler = served
    # The client side's h11 would refuse to encode a second request before the first
    # answer, so the requests are written by hand after the first.
    await client.send_raw(
        b"".join(b"GET /r%d HTTP/1.1\r\nhost: kme\r\n\r\n" % i for i in range(100))
    )
    answers = await read_answers(client.stream, 100)
    assert [a.body.split()[1] for a in answers] == [b"/r%d" % i for i in range(100)]
    assert len(handler.bodies) == 100


async def test_a_head_over_the_limit_is_431_even_when_it_arrives_in_one_read(
    served: tuple[Client, Recorder],
) -> None:
    # h11 bounds only a head it is still waiting for the end of; this one is whole.
    client, handler = served
    head = b"GET /x HTTP/1.1\r\nhost: kme\r\nx-big: " + b"a" * 17000 + b"\r\n\r\n"
    assert len(head) < 64 * 1024  # one read of the shell
    await client.send_raw(head)
    assert (await client.answer()).status == 431
    assert await client.closed_by_server()
    assert handler.bodies == []


async def test_a_head_just_under_the_limit_is_served(served: tuple[Client, Recorder]) -> None:
    client, _ = served
    head = b"GET /x HTTP/1.1\r\nhost: kme\r\nx-big: " + b"a" * 16000 + b"\r\n\r\n"
    assert len(head) <= LIMITS.max_header_bytes
    await client.send_raw(head)
    assert (await client.answer()).status == 200


async def test_one_byte_a_second_is_408_at_the_request_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    limits = Limits(request_timeout=3.0)
    handler = Recorder()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(lambda: serve_connection(server_stream, handler, limits=limits))
        start = trio.current_time()
        request = HEAD + b"content-length: 5\r\n\r\nhello"
        try:
            for byte in request:
                await client.send_raw(bytes([byte]))
                await trio.sleep(1)
        except trio.BrokenResourceError:
            pass
        assert (await client.answer()).status == 408
        assert await client.closed_by_server()
        assert trio.current_time() - start <= limits.request_timeout + 1.5
        assert handler.bodies == []


async def test_a_client_that_never_reads_its_answers_is_dropped_at_the_send_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A bounded pipe: the server's writes block once the client stops reading.
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    limits = Limits(send_timeout=5.0)

    async def big(request: Request) -> Response:
        return Response(200, b"k" * 100_000)

    done = trio.Event()

    async def serve() -> None:
        await serve_connection(server_stream, big, limits=limits)
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client_stream.send_all(b"GET /x HTTP/1.1\r\nhost: kme\r\n\r\n")
        start = trio.current_time()
        await done.wait()  # never reading: the server gives up on its own
        assert trio.current_time() - start <= limits.send_timeout + 1


async def test_a_connection_that_sends_nothing_is_closed_at_the_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    client = Client(client_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            lambda: serve_connection(server_stream, echo, limits=Limits(idle_timeout=7.0))
        )
        start = trio.current_time()
        assert await client.closed_by_server()
        assert trio.current_time() - start == pytest.approx(7.0)
