"""Revocation in running nodes: a CRL loaded at start, and again on reload (SIGHUP)."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from cli._pki import init_ca, issue_node, issue_sae, revoke
from qkmsd.app import Node, NodeInfo
from qkmsd.errors import StartupError
from qkmsd.tls import TlsConfigError

from ..conftest import ConfigFactory

LINK = "KME_A~KME_B"
FAST = {"rate_bps": 65536.0, "block_bits": 1024, "seed": "revocation-test-seed-00001"}


@pytest.fixture
def own_pki(tmp_path: Path) -> Path:
    """A PKI of this test's own: revoking in it touches no other test."""
    d = tmp_path / "pki"
    init_ca(d)
    for node in ("KME_A", "KME_B"):
        issue_node(d, node)
    issue_sae(d, "SAE_A")
    return d


async def wait_until(predicate: Callable[[], bool]) -> None:
    while not predicate():  # noqa: ASYNC110 - the nodes' state has no event to wait on
        await trio.sleep(0.05)


async def test_reload_with_a_crl_revoking_a_peer_closes_its_session_and_refuses_it(
    node_config: ConfigFactory, own_pki: Path
) -> None:
    crl = own_pki / "crl.pem"
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            cfg_b = node_config(
                "KME_B",
                peers={"KME_A": "127.0.0.1:1"},
                links={LINK: ("KME_A", "paired", FAST)},
                ca_dir=own_pki,
                crl=crl,
                api=True,
                saes={"SAE_A": {"kme": "KME_B"}},
            )
            node_b = Node(cfg_b)
            info_b: NodeInfo = await nursery.start(node_b.run)
            cfg_a = node_config(
                "KME_A",
                peers={"KME_B": f"127.0.0.1:{info_b.peer_port}"},
                links={LINK: ("KME_B", "paired", FAST)},
                ca_dir=own_pki,
                crl=crl,
            )
            node_a = Node(cfg_a)
            await nursery.start(node_a.run)
            assert node_a.peers is not None and node_b.peers is not None
            peers_a, peers_b = node_a.peers, node_b.peers
            await wait_until(lambda: peers_b.is_connected("KME_A"))

            # An SAE's API connection, open and answered.
            assert info_b.api_port is not None
            sae_ctx = _sae_context(own_pki, "SAE_A")
            api = await trio.open_ssl_over_tcp_stream(
                "127.0.0.1", info_b.api_port, ssl_context=sae_ctx, https_compatible=True
            )
            await api.send_all(b"GET /api/v1/keys/SAE_A/status HTTP/1.1\r\nHost: kme\r\n\r\n")
            assert (await api.receive_some(65536)).startswith(b"HTTP/1.1 ")

            def refused_tls() -> int:
                return peers_b.statistics().listener.totals.get("refused_tls", 0)

            refused_before = refused_tls()
            revoke(own_pki, "KME_A")
            revoke(own_pki, "SAE_A")
            revocations = node_b.reload()

            assert revocations is not None and len(revocations.serials) == 2
            await wait_until(lambda: not peers_b.is_connected("KME_A"))
            (state,) = peers_b.peers_status()
            assert state.last_error.startswith("certificate revoked (serial ")
            # KME_A dials again, and KME_B now refuses it in the handshake.
            await wait_until(lambda: refused_tls() > refused_before)
            assert peers_a.peers_status()[0].state != "connected"
            assert not peers_b.is_connected("KME_A")
            # The SAE's connection was closed too, and a new one is refused.
            with pytest.raises(trio.BrokenResourceError):
                while await api.receive_some(65536):
                    pass
                raise trio.BrokenResourceError  # a clean EOF is a close as well
            with pytest.raises(trio.BrokenResourceError):
                again = await trio.open_ssl_over_tcp_stream(
                    "127.0.0.1", info_b.api_port, ssl_context=sae_ctx
                )
                await again.send_all(b"GET / HTTP/1.1\r\nHost: kme\r\n\r\n")
                await again.receive_some(65536)
            nursery.cancel_scope.cancel()


def _sae_context(pki: Path, sae: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(pki / "saes" / f"{sae}.pem", pki / "saes" / f"{sae}.key")
    return ctx


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read CRL"),
        (b"not a crl\n", "is not a PEM certificate revocation list"),
    ],
)
async def test_a_missing_or_invalid_crl_stops_the_node_at_start_naming_it(
    node_config: ConfigFactory, own_pki: Path, tmp_path: Path, content: bytes | None, message: str
) -> None:
    crl = tmp_path / "given-crl.pem"
    if content is not None:
        crl.write_bytes(content)
    cfg = node_config("KME_A", ca_dir=own_pki, crl=crl)

    with trio.fail_after(10), pytest.raises(StartupError) as caught:
        await Node(cfg).run()
    assert str(crl) in str(caught.value) and message in str(caught.value)


async def test_a_failed_reload_keeps_the_node_as_it_was(
    node_config: ConfigFactory, own_pki: Path
) -> None:
    crl = own_pki / "crl.pem"
    cfg = node_config("KME_A", ca_dir=own_pki, crl=crl)
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            node = Node(cfg)
            await nursery.start(node.run)
            before = node.revocations
            crl.write_bytes(b"garbage\n")

            with pytest.raises(TlsConfigError, match="is not a PEM certificate revocation list"):
                node.reload()

            assert node.revocations == before
            nursery.cancel_scope.cancel()
