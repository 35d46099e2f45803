"""The loopback fault proxy: its spec language and what each fault does to a byte stream."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import trio

from cli.faultproxy import (
    FaultProxy,
    FaultSpec,
    FaultSpecError,
    Route,
    control_request,
    main,
    parse_spec,
    serve,
)

TIME_LIMIT_S = 10


def test_spec_terms_parse_into_fields() -> None:
    spec = parse_spec("delay:50ms, drop:0.01,dup:0.5,reorder:1,truncate@4k,cut@2s,seed:7")
    assert spec.delay_s == pytest.approx(0.05)
    assert (spec.drop, spec.duplicate, spec.reorder) == (0.01, 0.5, 1.0)
    assert spec.truncate_at == 4096 and spec.cut_at_s == 2.0 and spec.seed == 7
    assert parse_spec("cutevery:1.5s").cut_every_s == 1.5
    assert parse_spec("cut").partition and not parse_spec("none").partition
    assert parse_spec("pass") == FaultSpec(text="pass")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty fault spec"),
        ("drop:2", "a probability is from 0 to 1"),
        ("delay:fast", "a duration is like 50ms"),
        ("truncate@-1", "a size is like 4096"),
        ("cutevery:0", "the period must be above 0"),
        ("explode", "not understood"),
        ("seed:x", "the seed is a whole number"),
        ("delay:2h", "a duration is like"),
    ],
)
def test_a_bad_spec_is_refused_naming_the_term(text: str, message: str) -> None:
    with pytest.raises(FaultSpecError, match=message):
        parse_spec(text)


def test_the_proxy_refuses_an_address_off_loopback() -> None:
    with pytest.raises(FaultSpecError, match="not a loopback address"):
        FaultProxy(("192.0.2.1", 9))


async def _echo(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        async for data in stream:
            await stream.send_all(data)


class Sink:
    """A server that keeps what it receives, for faults seen in one direction."""

    def __init__(self) -> None:
        self.received = b""
        self.closed = trio.Event()

    async def __call__(self, stream: trio.SocketStream) -> None:
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async for data in stream:
                self.received += data
        self.closed.set()


@contextlib.asynccontextmanager
async def proxied(
    spec: str, server: Callable[[trio.SocketStream], Awaitable[None]] = _echo
) -> AsyncIterator[tuple[FaultProxy, trio.SocketStream]]:
    """An echo server behind a proxy with ``spec``, and a client connected through it."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, server, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        proxy = FaultProxy(("127.0.0.1", port), parse_spec(spec))
        await nursery.start(proxy.run)
        assert proxy.port is not None
        client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
        async with client:
            yield proxy, client
        nursery.cancel_scope.cancel()


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


async def wait_for(condition: Callable[[], bool]) -> None:
    while True:
        if condition():
            return
        await trio.sleep(0.005)


async def test_bytes_pass_untouched_without_faults() -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("none") as (proxy, client):
            payload = bytes(range(256)) * 64
            await client.send_all(payload)
            assert await receive_exactly(client, len(payload)) == payload
            assert proxy.stats.faults() == 0 and proxy.stats.connections == 1


async def test_delay_keeps_order_and_content() -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("delay:20ms") as (proxy, client):
            for i in range(5):
                await client.send_all(b"%d;" % i)
            assert await receive_exactly(client, 10) == b"0;1;2;3;4;"
            assert proxy.stats.delayed > 0


async def test_drop_loses_chunks() -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("drop:1") as (proxy, client):
            await client.send_all(b"lost")
            await wait_for(lambda: proxy.stats.dropped >= 1)
            proxy.set_spec(parse_spec("none"))
            await client.send_all(b"kept")
            assert await receive_exactly(client, 4) == b"kept"


async def test_duplicate_sends_a_chunk_twice() -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("dup:1") as (proxy, client):
            await client.send_all(b"ab")
            # Twice to the echo server, each echo twice back.
            assert await receive_exactly(client, 8) == b"abababab"
            assert proxy.stats.duplicated >= 2


async def test_reorder_swaps_a_chunk_with_the_next() -> None:
    sink = Sink()
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("reorder:1", sink) as (proxy, client):
            await client.send_all(b"first;")
            await wait_for(lambda: proxy.stats.chunks >= 1)
            await client.send_all(b"second;")
            await wait_for(lambda: len(sink.received) >= 13)
            assert sink.received == b"second;first;"
            assert proxy.stats.reordered == 1


async def test_truncate_forwards_a_prefix_then_closes() -> None:
    sink = Sink()
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("truncate@5", sink) as (proxy, client):
            await client.send_all(b"0123456789")
            await sink.closed.wait()
            assert sink.received == b"01234"
            assert proxy.stats.truncated == 1
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive_some(10) == b""


async def test_cut_at_closes_the_open_connection() -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("cut@10ms") as (proxy, client):
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive_some(10) == b""
            assert proxy.stats.cuts == 1


async def test_cutevery_cuts_again_and_again() -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("cutevery:10ms") as (proxy, client):
            with contextlib.suppress(trio.BrokenResourceError):
                await client.receive_some(10)
            assert proxy.port is not None
            again = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            with contextlib.suppress(trio.BrokenResourceError):
                assert await again.receive_some(10) == b""
            await again.aclose()
            assert proxy.stats.cuts >= 2


async def test_a_partition_closes_open_and_new_connections_until_healed() -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with proxied("none") as (proxy, client):
            proxy.set_spec(parse_spec("cut"))
            with contextlib.suppress(trio.BrokenResourceError):
                assert await client.receive_some(10) == b""
            assert proxy.port is not None
            refused = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            with contextlib.suppress(trio.BrokenResourceError):
                assert await refused.receive_some(10) == b""
            await refused.aclose()
            assert proxy.stats.refused == 1
            proxy.set_spec(parse_spec("none"))
            healed = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            await healed.send_all(b"back")
            assert await receive_exactly(healed, 4) == b"back"
            await healed.aclose()


async def test_the_control_socket_changes_a_route_and_reports_counts(tmp_path: Path) -> None:
    control = tmp_path / "faults.sock"
    with trio.fail_after(TIME_LIMIT_S):
        async with trio.open_nursery() as nursery:
            routes = [Route("A-B", ("127.0.0.1", 0), ("127.0.0.1", 1), FaultSpec())]
            proxies = await nursery.start(serve, routes, control)
            stream = await trio.open_unix_socket(str(control))
            await stream.send_all(b'{"route": "A-B", "spec": "drop:0.5,seed:3"}\n')
            reply = json.loads(await stream.receive_some(65536))
            await stream.aclose()
            assert reply["ok"] and reply["routes"]["A-B"]["spec"] == "drop:0.5,seed:3"
            assert proxies["A-B"].spec.drop == 0.5
            nursery.cancel_scope.cancel()
    stats = control_request(proxies, b'{"stats": true}')
    assert stats["routes"]["A-B"]["connections"] == 0
    for bad, error in [
        (b"not json", "Expecting value"),
        (b'{"route": "A-C", "spec": "none"}', "no fault proxy on A-C"),
        (b'{"route": "A-B", "spec": "drop:7"}', "a probability is from 0 to 1"),
        (b"[]", "a request is a JSON object"),
    ]:
        answer = control_request(proxies, bad)
        assert not answer["ok"] and error in answer["error"]


def test_the_program_refuses_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--route", "A-B=10.0.0.1:1>127.0.0.1:2"]) == 2
    assert "expected a loopback HOST:PORT" in capsys.readouterr().err
    assert main(["--route", "A-B=127.0.0.1:1>127.0.0.1:2", "--spec", "A-B=drop:9"]) == 2
    assert "a probability is from 0 to 1" in capsys.readouterr().err
    assert main([]) == 2
    assert "no --route given" in capsys.readouterr().err
