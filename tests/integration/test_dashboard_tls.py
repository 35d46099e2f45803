"""The dashboard over mutual TLS on a real node: operator certificates view or operate by
their role, other certificates are refused, and operating needs the page's CSRF token."""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import msgspec
import trio

from cli._admin import AdminClient
from cli._pki import issue_operator
from qkmsd.app import Node, NodeInfo
from qkmsd.config import HostPort
from qkmsd.controller import qkms_uuid

from ..conftest import ConfigFactory


def _context(pki: Path, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if cert is not None and key is not None:
        ctx.load_cert_chain(cert, key)
    return ctx


async def _request(
    port: int, ctx: ssl.SSLContext, method: str, target: str, headers: str = ""
) -> tuple[str, str]:
    tcp = await trio.open_tcp_stream("127.0.0.1", port)
    stream = trio.SSLStream(tcp, ctx, server_hostname="127.0.0.1", https_compatible=True)
    async with stream:
        await stream.send_all(
            f"{method} {target} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\n"
            f"content-length: 0\r\n{headers}\r\n".encode()
        )
        data = b""
        while chunk := await stream.receive_some():
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    return head.split("\r\n")[0], body


def _token(page: str) -> str:
    match = re.search(r'name="csrf-token" content="([^"]+)"', page)
    assert match is not None
    return match.group(1)


async def test_operator_certificates_view_or_operate_and_others_are_refused(
    node_config: ConfigFactory, pki: Path
) -> None:
    ro = issue_operator(pki, "olga", read_only=True, force=True)
    rw = issue_operator(pki, "oscar", force=True)
    cfg = msgspec.structs.replace(
        node_config("KME_A"), dashboard_tls_listen=HostPort("127.0.0.1", 0)
    )
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            info: NodeInfo = await nursery.start(Node(cfg).run)
            port = info.dashboard_tls_port
            assert port
            viewer = _context(pki, ro.cert, ro.key)
            operator = _context(pki, rw.cert, rw.key)
            sae = _context(pki, pki / "saes" / "SAE_A.pem", pki / "saes" / "SAE_A.key")

            # Without a certificate the handshake fails (TLS 1.3: the client may only see the
            # connection end without an answer).
            try:
                line, _ = await _request(port, _context(pki, None, None), "GET", "/")
            except (trio.BrokenResourceError, ssl.SSLError):
                line = ""
            assert line == ""
            line, body = await _request(port, sae, "GET", "/state.json")
            assert " 403" in line, line
            assert "operator certificate" in body

            line, page = await _request(port, viewer, "GET", "/")
            assert " 200" in line and "olga" in page and "view only" in page
            line, _ = await _request(
                port, viewer, "POST", "/op/node_drain", f"x-csrf-token: {_token(page)}\r\n"
            )
            assert " 403" in line

            line, page = await _request(port, operator, "GET", "/")
            assert " 200" in line and "view and operate" in page
            line, body = await _request(port, operator, "POST", "/op/node_drain")
            assert " 403" in line and "CSRF" in body
            status = await trio.to_thread.run_sync(
                lambda: AdminClient(info.admin_socket).call("node")
            )
            assert status["draining"] is False
            line, body = await _request(
                port, operator, "POST", "/op/node_drain", f"x-csrf-token: {_token(page)}\r\n"
            )
            assert " 200" in line and "oscar" in body
            status = await trio.to_thread.run_sync(
                lambda: AdminClient(info.admin_socket).call("node")
            )
            assert status["draining"] is True
            nursery.cancel_scope.cancel()


async def test_the_etsi015_view_answers_operator_certificates_and_refuses_the_rest(
    node_config: ConfigFactory, pki: Path, rogue_pki: Path
) -> None:
    operator = issue_operator(pki, "oscar", force=True)
    rogue = issue_operator(rogue_pki, "oscar", force=True)
    # A QKD link to a peer that is not running: the link is listed, its status not ACTIVE.
    link = ("KME_B", "paired", {"rate_bps": 1e6, "block_bits": 32768, "seed": "d" * 32})
    cfg = msgspec.structs.replace(
        node_config("KME_A", peers={"KME_B": "127.0.0.1:1"}, links={"KME_A~KME_B": link}),
        dashboard_tls_listen=HostPort("127.0.0.1", 0),
    )
    path = "/restconf/data/etsi-qkd-sdn-node:qkd_node"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            info: NodeInfo = await nursery.start(Node(cfg).run)
            port = info.dashboard_tls_port
            assert port
            line, body = await _request(port, _context(pki, operator.cert, operator.key), "GET",
                                        path)  # fmt: skip
            assert " 200" in line, (line, body)
            node = msgspec.json.decode(body)["etsi-qkd-sdn-node:qkd_node"]
            assert node["qkdn_id"] == qkms_uuid("node", "KME_A")
            assert node["qkdn_status"] == "OPERATING"
            links = node["qkd_links"]["qkd_link"]
            assert [(lk["qkdl_id"], lk["qkdl_type"]) for lk in links] == [
                (qkms_uuid("link", "KME_A~KME_B"), "PHYS")
            ]
            sae = _context(pki, pki / "saes" / "SAE_A.pem", pki / "saes" / "SAE_A.key")
            line, body = await _request(port, sae, "GET", path)
            assert " 403" in line and "operator certificate" in body
            # No certificate, or an operator certificate of another CA: the handshake fails.
            for ctx in (_context(pki, None, None), _context(pki, rogue.cert, rogue.key)):
                try:
                    line, _ = await _request(port, ctx, "GET", path)
                except (trio.BrokenResourceError, ssl.SSLError):
                    line = ""
                assert line == ""
            nursery.cancel_scope.cancel()
