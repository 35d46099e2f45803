"""Pushing samples to a collector: JSON over mutual TLS, the collector checked against the
network CA."""

from __future__ import annotations

import ssl
from pathlib import Path

import msgspec
import pytest
import trio

from qkmsd.http import Request, Response, serve_tcp_tls
from qkmsd.perf import PerfReport, Pusher, PushError, Sample
from qkmsd.tls import collector_context

SAMPLES = [Sample(1.0, "node", "open_fds", 12.0), Sample(1.0, "link:A~B", "qber", 0.02)]


def collector_server(pki: Path) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_verify_locations(cafile=pki / "ca.pem")
    ctx.load_cert_chain(pki / "nodes" / "KME_C.pem", pki / "nodes" / "KME_C.key")
    return ctx


def node_client(pki: Path) -> ssl.SSLContext:
    return collector_context(
        pki / "ca.pem", pki / "nodes" / "KME_A.pem", pki / "nodes" / "KME_A.key"
    )


async def test_a_pusher_posts_the_samples_as_json_with_the_nodes_certificate(
    nursery: trio.Nursery, pki: Path
) -> None:
    got: list[tuple[str | None, PerfReport]] = []

    async def collector(request: Request) -> Response:
        who = request.peer.common_name if request.peer is not None else None
        got.append((who, msgspec.json.decode(request.body, type=PerfReport)))
        return Response(204, b"")

    port = await nursery.start(serve_tcp_tls, collector, collector_server(pki), "127.0.0.1", 0)
    pusher = Pusher(
        f"https://127.0.0.1:{port}/samples", node_id="KME_A", ssl_context=node_client(pki)
    )
    await pusher.push(SAMPLES)
    [(who, report)] = got
    assert who == "KME_A" and report.node == "KME_A" and list(report.samples) == SAMPLES


async def test_a_collector_that_refuses_is_a_push_error_with_its_status(
    nursery: trio.Nursery, pki: Path
) -> None:
    async def collector(request: Request) -> Response:
        return Response(503, b"busy")

    port = await nursery.start(serve_tcp_tls, collector, collector_server(pki), "127.0.0.1", 0)
    pusher = Pusher(f"https://127.0.0.1:{port}/", node_id="KME_A", ssl_context=node_client(pki))
    with pytest.raises(PushError, match="answered 503"):
        await pusher.push(SAMPLES)


async def test_a_collector_with_a_certificate_from_another_ca_is_refused(
    nursery: trio.Nursery, pki: Path, rogue_pki: Path
) -> None:
    async def collector(request: Request) -> Response:
        raise AssertionError("no request may arrive")

    port = await nursery.start(
        serve_tcp_tls, collector, collector_server(rogue_pki), "127.0.0.1", 0
    )
    pusher = Pusher(f"https://127.0.0.1:{port}/", node_id="KME_A", ssl_context=node_client(pki))
    with pytest.raises(PushError, match="SSL"):
        await pusher.push(SAMPLES)


async def test_nothing_listening_is_a_push_error(pki: Path) -> None:
    with trio.socket.socket() as sock:
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    pusher = Pusher(f"https://127.0.0.1:{port}/", node_id="KME_A", ssl_context=node_client(pki))
    with pytest.raises(PushError, match="127.0.0.1"):
        await pusher.push(SAMPLES)
