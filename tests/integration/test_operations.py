"""Operations on real nodes: Prometheus metrics over HTTP, alarms over the admin socket,
performance history and its push to a collector."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import msgspec
import trio
from prometheus_client.parser import text_string_to_metric_families

from cli._admin import AdminClient
from qkmsd.app import Node, NodeInfo
from qkmsd.config import AlarmsSection, HostPort, PerfSection
from qkmsd.http import Request, Response, serve_tcp_tls
from qkmsd.perf import PerfReport

from ..conftest import ConfigFactory
from .test_two_nodes import FAST, LINK, wait_for

ALARMS = AlarmsSection(interval_s=0.2, hold_down_s=0.5, pool_low_bits=0, disk_free_min_mib=0)


async def scrape(port: int) -> dict[str, float]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head
    return {
        s.name + repr(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }


def call(info: NodeInfo, method: str, **params: Any) -> dict[str, Any]:
    return AdminClient(info.admin_socket).call(method, **params)


async def test_metrics_and_alarms_of_a_running_pair(node_config: ConfigFactory) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cfg_b = node_config(
                "KME_B", peers={"KME_A": "127.0.0.1:1"}, links={LINK: ("KME_A", "paired", FAST)}
            )
            b_scope = trio.CancelScope()

            async def run_b(*, task_status: trio.TaskStatus[NodeInfo]) -> None:
                with b_scope:
                    await Node(cfg_b).run(task_status=task_status)

            info_b: NodeInfo = await nursery.start(run_b)
            cfg_a = node_config(
                "KME_A",
                peers={"KME_B": f"127.0.0.1:{info_b.peer_port}"},
                links={LINK: ("KME_B", "paired", FAST)},
            )
            cfg_a = msgspec.structs.replace(
                cfg_a, metrics_listen=HostPort("127.0.0.1", 0), alarms=ALARMS
            )
            info_a: NodeInfo = await nursery.start(Node(cfg_a).run)
            assert info_a.metrics_port

            async def pool_filling() -> bool:
                found = await scrape(info_a.metrics_port or 0)
                key = f"qkms_link_ready_bits{[('link', LINK), ('peer', 'KME_B')]!r}"
                return found.get(key, 0) > 0

            await wait_for(pool_filling)
            found = await scrape(info_a.metrics_port)
            assert found["qkms_peer_up[('peer', 'KME_B')]"] == 1
            assert found["qkms_alarms_active[('severity', 'major')]"] == 0

            b_scope.cancel()  # KME_B stops: its peer goes down at KME_A

            async def peer_down_raised() -> bool:
                active = (await trio.to_thread.run_sync(call, info_a, "alarms"))["active"]
                return any(a["code"] == "peer-down" for a in active)

            await wait_for(peer_down_raised)
            answer = await trio.to_thread.run_sync(
                lambda: call(info_a, "alarm_ack", code="peer-down", resource="KME_B")
            )
            assert answer == {"acknowledged": True}
            alarms = await trio.to_thread.run_sync(call, info_a, "alarms")
            mine = [e["kind"] for e in alarms["history"] if e["code"] == "peer-down"]
            assert mine[:2] == ["acknowledged", "raised"]
            found = await scrape(info_a.metrics_port)
            assert found["qkms_alarms_active[('severity', 'major')]"] >= 1
            assert cfg_a.alarm_history_path.exists()
            nursery.cancel_scope.cancel()


async def test_a_running_node_keeps_its_link_s_key_rate_and_pushes_it_to_a_collector(
    node_config: ConfigFactory, pki: Path
) -> None:
    reports: list[PerfReport] = []
    pushed = trio.Event()

    async def collector(request: Request) -> Response:
        reports.append(msgspec.json.decode(request.body, type=PerfReport))
        if any(s.metric == "key_rate_bps" and s.value > 0 for r in reports for s in r.samples):
            pushed.set()
        return Response(204, b"")

    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.verify_mode = ssl.CERT_REQUIRED
    server.load_verify_locations(cafile=pki / "ca.pem")
    server.load_cert_chain(pki / "nodes" / "KME_C.pem", pki / "nodes" / "KME_C.key")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_tcp_tls, collector, server, "127.0.0.1", 0)
            cfg_b = node_config(
                "KME_B", peers={"KME_A": "127.0.0.1:1"}, links={LINK: ("KME_A", "paired", FAST)}
            )
            info_b: NodeInfo = await nursery.start(Node(cfg_b).run)
            cfg_a = node_config(
                "KME_A",
                peers={"KME_B": f"127.0.0.1:{info_b.peer_port}"},
                links={LINK: ("KME_B", "paired", FAST)},
            )
            perf = PerfSection(
                interval_s=0.2, report_s=1.0, report_url=f"https://127.0.0.1:{port}/samples"
            )
            info_a: NodeInfo = await nursery.start(
                Node(msgspec.structs.replace(cfg_a, perf=perf)).run
            )
            await pushed.wait()
            assert {r.node for r in reports} == {"KME_A"}

            async def rate_kept() -> bool:
                answer = await trio.to_thread.run_sync(
                    lambda: call(info_a, "perf", resource=LINK, since_s=60)
                )
                rates = answer["series"]["link:" + LINK].get("key_rate_bps", [])
                return any(p["mean"] > 0 for p in rates)

            await wait_for(rate_kept)
            assert cfg_a.perf_history_path.exists()
            nursery.cancel_scope.cancel()
