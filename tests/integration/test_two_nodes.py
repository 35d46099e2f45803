"""Two real nodes in one trio run, joined over mutual TLS on 127.0.0.1."""

from __future__ import annotations

import socket
import ssl
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import trio

from cli._admin import AdminClient
from qkmsd.app import Node, NodeInfo
from qkmsd.config import Config
from qkmsd.keystore import KeyState, KeyStore, load_master_key
from qkmsd.tls import HYBRID_PQ_GROUP, hybrid_pq_groups_available

from ..conftest import ConfigFactory

LINK = "KME_A~KME_B"
# Peer links keep OpenSSL's default groups: from OpenSSL 3.5 the hybrid one comes first.
DEFAULT_GROUP = HYBRID_PQ_GROUP if hybrid_pq_groups_available() else "x25519"
FAST = {"rate_bps": 65536.0, "block_bits": 1024, "seed": "integration-test-seed-0001"}


async def wait_for(predicate: Callable[[], Any]) -> None:
    """Poll a condition on another process's view (the admin socket): no event to wait on."""
    with trio.fail_after(20):
        while not await predicate():  # noqa: ASYNC110
            await trio.sleep(0.05)


def admin(info: NodeInfo, method: str) -> dict[str, Any]:
    return AdminClient(info.admin_socket).call(method)


async def admin_async(info: NodeInfo, method: str) -> dict[str, Any]:
    return await trio.to_thread.run_sync(admin, info, method)


async def start_pair(
    nursery: trio.Nursery, node_config: ConfigFactory, *, a_ca: Path | None = None
) -> tuple[Config, NodeInfo, Config, NodeInfo]:
    cfg_b = node_config(
        "KME_B", peers={"KME_A": "127.0.0.1:1"}, links={LINK: ("KME_A", "paired", FAST)}
    )
    info_b: NodeInfo = await nursery.start(Node(cfg_b).run)
    cfg_a = node_config(
        "KME_A",
        peers={"KME_B": f"127.0.0.1:{info_b.peer_port}"},
        links={LINK: ("KME_B", "paired", FAST)},
        ca_dir=a_ca,
    )
    info_a: NodeInfo = await nursery.start(Node(cfg_a).run)
    return cfg_a, info_a, cfg_b, info_b


def ready_blocks(cfg: Config) -> dict[int, bytes]:
    with KeyStore.open(cfg.keystore_path, load_master_key(cfg.master_key_file)) as store:
        top = store.max_block_id(LINK) or 0
        states = store.states(LINK, range(max(0, top - 5000), top + 1))
        return {i: store.read_block(LINK, i) for i, s in states.items() if s is KeyState.READY}


async def same_check_values(*infos: NodeInfo) -> bool:
    """Both ends report the same ready ids and key check value for a settled window."""
    newest = min([(await admin_async(i, "links"))["links"][0]["newest_block_id"] for i in infos])
    window = {"link_id": LINK, "first": newest - 200, "last": newest - 20}

    def check(info: NodeInfo) -> dict[str, Any]:
        return AdminClient(info.admin_socket).call("check", **window)

    results = [await trio.to_thread.run_sync(check, i) for i in infos]
    return len(results[0]["ready_ids"]) > 0 and all(r == results[0] for r in results)


async def test_two_nodes_fill_identical_synchronised_pools(node_config: ConfigFactory) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            cfg_a, info_a, cfg_b, info_b = await start_pair(nursery, node_config)

            async def both_have_blocks() -> bool:
                links = [(await admin_async(i, "links"))["links"][0] for i in (info_a, info_b)]
                return all(link["ready_blocks"] >= 8 for link in links)

            await wait_for(both_have_blocks)
            status = await admin_async(info_a, "status")
            assert status["node_id"] == "KME_A"
            assert [p["state"] for p in status["peers"]] == ["connected"]
            # KME_A dialled (a TLS client), KME_B accepted: both name the same handshake.
            for info in (info_a, info_b):
                (link,) = (await admin_async(info, "peers"))["peers"]
                assert (link["tls_version"], link["tls_group"]) == ("TLSv1.3", DEFAULT_GROUP)
            await wait_for(lambda: same_check_values(info_a, info_b))
            nursery.cancel_scope.cancel()
    a, b = ready_blocks(cfg_a), ready_blocks(cfg_b)
    common = a.keys() & b.keys()
    assert len(common) >= 8
    assert all(a[i] == b[i] for i in common)
    # A block ready at one end only is one whose confirm was in flight when the nodes
    # stopped: only the newest blocks can be in that state.
    assert all(i > max(common) for i in a.keys() ^ b.keys())


async def test_peer_with_a_certificate_from_another_ca_is_refused(
    node_config: ConfigFactory, rogue_pki: Path
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            _, info_a, _, info_b = await start_pair(nursery, node_config, a_ca=rogue_pki)
            await trio.sleep(1.5)
            b_peers = (await admin_async(info_b, "peers"))["peers"]
            a_peers = (await admin_async(info_a, "peers"))["peers"]
            assert b_peers[0]["state"] == "disconnected" and b_peers[0]["connects"] == 0
            assert a_peers[0]["state"] != "connected"
            assert "TLS handshake failed" in a_peers[0]["last_error"]
            links = (await admin_async(info_b, "links"))["links"]
            assert links[0]["ready_blocks"] == 0
            nursery.cancel_scope.cancel()


def _tls_client(pki: Path, node: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.load_verify_locations(pki / "ca.pem")
    ctx.load_cert_chain(pki / "nodes" / f"{node}.pem", pki / "nodes" / f"{node}.key")
    return ctx


def _send_and_leave(port: int, ctx: ssl.SSLContext, payload: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(payload)


def _exchange_raw(port: int, ctx: ssl.SSLContext, payload: bytes) -> list[Any]:
    """Send raw bytes after TLS; collect the frames the node answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with ctx.wrap_socket(raw) as tls:
            tls.sendall(payload)
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    return _unframe(data)


async def test_garbage_on_the_peer_port_gets_an_error_and_the_node_carries_on(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            _, info_a, _, info_b = await start_pair(nursery, node_config)
            ctx = _tls_client(pki, "KME_A")
            payloads = [
                b"\x00\x00\x00\x05garbage!!",  # a frame that is not msgpack
                struct.pack(">I", 64 << 20),  # oversized
                b"\x00\x00\x00\x10trunc",  # truncated, then closed by us
                msgpack.packb({"type": "ping", "nonce": 1}, use_bin_type=True),  # unframed
            ]
            for payload in payloads[:2]:
                frames = await trio.to_thread.run_sync(
                    _exchange_raw, info_b.peer_port, ctx, payload
                )
                assert frames[0]["type"] == "hello"
                assert frames[-1]["type"] == "error"
            for payload in payloads[2:]:
                await trio.to_thread.run_sync(_send_and_leave, info_b.peer_port, ctx, payload)
            # The real peer is still connected and keys keep flowing.
            before = (await admin_async(info_b, "links"))["links"][0]["ready_blocks"]

            async def more_keys() -> bool:
                link = (await admin_async(info_b, "links"))["links"][0]
                return bool(link["ready_blocks"] > before + 3)

            await wait_for(more_keys)
            peers = (await admin_async(info_b, "peers"))["peers"]
            assert peers[0]["state"] == "connected"
            nursery.cancel_scope.cancel()


def _admin_raw(path: Path, payload: bytes) -> list[Any]:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        sock.sendall(payload)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return _unframe(data)


def _unframe(data: bytes) -> list[Any]:
    """The msgpack frames (4-byte length, then the body) in ``data``, whole ones only."""
    frames: list[Any] = []
    while len(data) >= 4:
        (n,) = struct.unpack(">I", data[:4])
        frames.append(msgpack.unpackb(data[4 : 4 + n]))
        data = data[4 + n :]
    return frames


def _frame(obj: Any) -> bytes:
    body = msgpack.packb(obj)
    return struct.pack(">I", len(body)) + body


async def test_admin_socket_survives_hostile_clients(node_config: ConfigFactory) -> None:
    cfg = node_config("KME_A")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            info: NodeInfo = await nursery.start(Node(cfg).run)
            assert oct(info.admin_socket.stat().st_mode & 0o777) == "0o600"
            cases = {
                "garbage": struct.pack(">I", 3) + b"\xc1\xc1\xc1",
                "oversized": struct.pack(">I", 1 << 30),
                "not a map": _frame([1, 2, 3]),
                "wrong types": _frame({"type": "request", "id": "x", "method": 5}),
            }
            for name, payload in cases.items():
                frames = await trio.to_thread.run_sync(_admin_raw, info.admin_socket, payload)
                assert frames and frames[-1]["type"] == "error", name
            # Truncated: the client goes away mid-frame; nothing to answer.
            await trio.to_thread.run_sync(_admin_raw, info.admin_socket, b"\x00\x00\x01\x00abc")
            # An unknown method is an error that names the known ones; the connection stays usable.
            frames = await trio.to_thread.run_sync(
                _admin_raw,
                info.admin_socket,
                _frame({"type": "request", "id": 1, "method": "nope"})
                + _frame({"type": "request", "id": 2, "method": "status"}),
            )
            assert frames[0] == {
                "type": "error",
                "id": 1,
                "code": "unknown-request",
                "message": "unknown method 'nope' (known: alarm_ack, alarm_clear, alarms,"
                " check, controller, device_register, device_remove, device_restart,"
                " device_start, device_stop, devices, links, network_alarms,"
                " node, node_drain, node_undrain, peers, perf, policy, policy_reload, policy_set,"
                " policy_unset, profile, profile_activate, profile_add, profile_deactivate,"
                " profile_remove, profile_set, profiles, register, relay_test, relays, routes,"
                " status, topology)",
            }
            assert frames[1]["type"] == "response" and frames[1]["id"] == 2
            assert (await admin_async(info, "status"))["node_id"] == "KME_A"
            nursery.cancel_scope.cancel()
