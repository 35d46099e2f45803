"""TLS contexts and peer identity, over real loopback handshakes (trio, 127.0.0.1, port 0).

The PKI is built once per session with ``cli._pki``, the code operators use.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio

from cli._pki import init_ca, issue_node, issue_sae
from qkmsd.tls import (
    CertificateIdentityError,
    Identity,
    TlsConfigError,
    api_context,
    certificate_identity,
    expect_identity,
    hybrid_pq_groups_available,
    peer_context,
)


@dataclass(frozen=True)
class Holder:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path
    kme_a: Holder
    kme_b: Holder
    sae_a: Holder
    other_ca: Path
    rogue_kme_b: Holder
    """Calls itself KME_B, but was issued by ``other_ca``."""
    rogue_sae_a: Holder
    """Calls itself SAE_A, but was issued by ``other_ca``."""


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    ours = tmp_path_factory.mktemp("pki")
    theirs = tmp_path_factory.mktemp("other-pki")
    init_ca(ours)
    init_ca(theirs, common_name="someone else's CA")

    def holder(directory: Path, kind: str, ident: str) -> Holder:
        files = issue_node(directory, ident) if kind == "node" else issue_sae(directory, ident)
        return Holder(files.cert, files.key)

    return Pki(
        ca=ours / "ca.pem",
        kme_a=holder(ours, "node", "KME_A"),
        kme_b=holder(ours, "node", "KME_B"),
        sae_a=holder(ours, "sae", "SAE_A"),
        other_ca=theirs / "ca.pem",
        rogue_kme_b=holder(theirs, "node", "KME_B"),
        rogue_sae_a=holder(theirs, "sae", "SAE_A"),
    )


def peer(pki: Pki, who: Holder, *, server: bool, ca: Path | None = None) -> ssl.SSLContext:
    return peer_context(ca or pki.ca, who.cert, who.key, server=server)


@dataclass
class Side:
    """What one end of a handshake saw: the peer's identity, or the error that ended it."""

    identity: Identity | None = None
    error: BaseException | None = None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


async def handshake(
    server_ctx: ssl.SSLContext,
    client_ctx: ssl.SSLContext,
    *,
    server_hostname: str | None = None,
) -> tuple[Side, Side]:
    """Connect a client to a server over loopback TCP and exchange one message each way.

    The exchange matters: in TLS 1.3 the client finishes its handshake before the server
    has checked the client's certificate, so only a round trip shows the server's verdict.
    """
    server, client = Side(), Side()
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def serve() -> None:
        tcp = await listeners[0].accept()
        stream = trio.SSLStream(tcp, server_ctx, server_side=True)
        try:
            await stream.do_handshake()
            server.version = stream.version()
            server.identity = _identity_or_none(stream)
            await stream.send_all(b"hello")
            if await receive_exactly(stream, 6) != b"thanks":
                server.error = AssertionError("client did not answer")
        except trio.BrokenResourceError as exc:
            server.error = exc
        finally:
            await trio.aclose_forcefully(stream)

    async def connect() -> None:
        tcp = await trio.open_tcp_stream("127.0.0.1", port)
        stream = trio.SSLStream(tcp, client_ctx, server_hostname=server_hostname)
        try:
            await stream.do_handshake()
            client.version = stream.version()
            client.identity = _identity_or_none(stream)
            if await receive_exactly(stream, 5) != b"hello":
                client.error = AssertionError("server did not greet")
            else:
                await stream.send_all(b"thanks")
        except trio.BrokenResourceError as exc:
            client.error = exc
        finally:
            await trio.aclose_forcefully(stream)

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve)
            nursery.start_soon(connect)
    finally:
        for listener in listeners:
            await listener.aclose()
    return server, client


async def receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def _identity_or_none(stream: trio.SSLStream[trio.SocketStream]) -> Identity | None:
    try:
        return certificate_identity(stream)
    except CertificateIdentityError:
        return None


def ssl_cause(exc: BaseException | None) -> BaseException | None:
    # trio.SSLStream raises BrokenResourceError from the ssl.SSLError that broke it.
    return exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None


# --- node to node ---------------------------------------------------------------------


async def test_two_nodes_of_one_network_handshake_and_see_each_others_identity(
    pki: Pki,
) -> None:
    with trio.fail_after(10):
        server, client = await handshake(
            peer(pki, pki.kme_b, server=True), peer(pki, pki.kme_a, server=False)
        )

    assert server.ok and client.ok
    assert server.identity == Identity(common_name="KME_A", role="node")
    assert client.identity == Identity(common_name="KME_B", role="node")
    expect_identity(server.identity, common_name="KME_A", role="node")
    expect_identity(client.identity, common_name="KME_B", role="node")
    assert server.version == client.version == "TLSv1.3"


async def test_a_node_certified_by_another_ca_is_refused_by_the_server(pki: Pki) -> None:
    # The rogue trusts our CA, so the server's certificate is not the problem: the
    # handshake can only fail because the server rejects the rogue's certificate.
    rogue = peer(pki, pki.rogue_kme_b, server=False, ca=pki.ca)

    with trio.fail_after(10):
        server, client = await handshake(peer(pki, pki.kme_a, server=True), rogue)

    assert isinstance(server.error, trio.BrokenResourceError)
    assert isinstance(ssl_cause(server.error), ssl.SSLCertVerificationError)
    assert server.identity is None
    assert not client.ok


async def test_a_server_certified_by_another_ca_is_refused_by_the_client(pki: Pki) -> None:
    rogue = peer(pki, pki.rogue_kme_b, server=True, ca=pki.ca)

    with trio.fail_after(10):
        server, client = await handshake(rogue, peer(pki, pki.kme_a, server=False))

    assert isinstance(client.error, trio.BrokenResourceError)
    assert isinstance(ssl_cause(client.error), ssl.SSLCertVerificationError)
    assert not server.ok


async def test_an_sae_posing_as_a_node_passes_tls_but_not_expect_identity(pki: Pki) -> None:
    sae_as_peer = peer(pki, pki.sae_a, server=False)

    with trio.fail_after(10):
        server, _ = await handshake(peer(pki, pki.kme_b, server=True), sae_as_peer)

    assert server.ok and server.identity == Identity(common_name="SAE_A", role="sae")
    with pytest.raises(
        CertificateIdentityError,
        match=r"^peer certificate is for sae 'SAE_A', expected node 'KME_A'$",
    ):
        expect_identity(server.identity, common_name="KME_A", role="node")
    with pytest.raises(CertificateIdentityError, match="expected a node$"):
        expect_identity(server.identity, role="node")


async def test_an_sae_certificate_cannot_serve_the_peer_protocol(pki: Pki) -> None:
    # SAE certificates carry clientAuth only; OpenSSL checks serverAuth on the server's.
    with trio.fail_after(10):
        _, client = await handshake(
            peer(pki, pki.sae_a, server=True), peer(pki, pki.kme_a, server=False)
        )

    assert isinstance(ssl_cause(client.error), ssl.SSLCertVerificationError)


async def test_the_peer_protocol_refuses_tls_1_2(pki: Pki) -> None:
    old_client = peer(pki, pki.kme_a, server=False)
    old_client.minimum_version = ssl.TLSVersion.TLSv1_2
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2

    with trio.fail_after(10):
        server, client = await handshake(peer(pki, pki.kme_b, server=True), old_client)

    assert isinstance(ssl_cause(server.error), ssl.SSLError)
    assert not client.ok


def test_peer_contexts_require_certificates_and_tls_1_3_on_both_sides(pki: Pki) -> None:
    for server in (True, False):
        ctx = peer(pki, pki.kme_a, server=server)
        assert ctx.verify_mode == ssl.CERT_REQUIRED
        assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
        assert not ctx.check_hostname
        assert [c["subject"] for c in ctx.get_ca_certs()] == [
            ((("commonName", "qkms network CA"),), (("organizationName", "qkms"),))
        ]


# --- the ETSI 014 API -----------------------------------------------------------------


def sae_client(pki: Pki, sae: Holder | None) -> ssl.SSLContext:
    """An SAE the way an ordinary HTTPS client is set up: hostname checked, CA pinned."""
    ctx = ssl.create_default_context(cafile=str(pki.ca))
    if sae is not None:
        ctx.load_cert_chain(sae.cert, sae.key)
    return ctx


def api(pki: Pki) -> ssl.SSLContext:
    return api_context(pki.ca, pki.kme_a.cert, pki.kme_a.key)


async def test_the_api_accepts_an_sae_certificate_and_reads_its_identity(pki: Pki) -> None:
    with trio.fail_after(10):
        server, client = await handshake(
            api(pki), sae_client(pki, pki.sae_a), server_hostname="127.0.0.1"
        )

    assert server.ok and client.ok
    assert server.identity == Identity(common_name="SAE_A", role="sae")
    assert client.identity == Identity(common_name="KME_A", role="node")
    assert server.version == "TLSv1.3"


async def test_the_api_refuses_a_client_without_a_certificate(pki: Pki) -> None:
    with trio.fail_after(10):
        server, client = await handshake(
            api(pki), sae_client(pki, None), server_hostname="localhost"
        )

    assert isinstance(ssl_cause(server.error), ssl.SSLError)
    assert server.identity is None
    assert not client.ok


async def test_the_api_refuses_an_sae_certified_by_another_ca(pki: Pki) -> None:
    with trio.fail_after(10):
        server, client = await handshake(
            api(pki), sae_client(pki, pki.rogue_sae_a), server_hostname="localhost"
        )

    assert isinstance(ssl_cause(server.error), ssl.SSLCertVerificationError)
    assert not client.ok


async def test_the_api_still_serves_tls_1_2_clients(pki: Pki) -> None:
    old_client = sae_client(pki, pki.sae_a)
    old_client.maximum_version = ssl.TLSVersion.TLSv1_2

    with trio.fail_after(10):
        server, client = await handshake(api(pki), old_client, server_hostname="localhost")

    assert server.ok and client.ok
    assert server.version == "TLSv1.2"
    assert server.identity == Identity(common_name="SAE_A", role="sae")


def test_hybrid_pq_groups_are_reported_as_this_platform_offers_them() -> None:
    # OpenSSL 3.5 and newer have the group, and offer it first by default.
    offered = ssl.OPENSSL_VERSION_INFO >= (3, 5)

    assert hybrid_pq_groups_available() is offered


@pytest.mark.skipif(
    hasattr(ssl.SSLContext, "set_groups"), reason="this Python can ask OpenSSL directly"
)
@pytest.mark.parametrize(("version", "offered"), [((3, 0, 19), False), ((3, 5, 0), True)])
def test_without_set_groups_openssl_3_5_defaults_count_as_offering_the_hybrid_group(
    monkeypatch: pytest.MonkeyPatch, version: tuple[int, ...], offered: bool
) -> None:
    monkeypatch.setattr(ssl, "OPENSSL_VERSION_INFO", (*version, 0, 0))

    assert hybrid_pq_groups_available() is offered


# --- identities and configuration errors ----------------------------------------------


class FakeTls:
    """Stands in for an SSL object: just the ``getpeercert()`` a verified handshake gives."""

    def __init__(self, cert: dict[str, object] | None) -> None:
        self.cert = cert

    def getpeercert(self) -> dict[str, object] | None:
        return self.cert


@pytest.mark.parametrize(
    ("cert", "problem"),
    [
        (None, "no verified certificate"),
        ({}, "no verified certificate"),
        ({"subject": ((("commonName", "KME_A"),),)}, "0 OU"),
        ({"subject": ((("organizationalUnitName", "node"),),)}, "0 CN"),
        (
            {
                "subject": (
                    (("commonName", "KME_A"),),
                    (("commonName", "KME_B"),),
                    (("organizationalUnitName", "node"),),
                )
            },
            "2 CN",
        ),
    ],
)
def test_a_certificate_without_one_cn_and_one_ou_has_no_identity(
    cert: dict[str, object] | None, problem: str
) -> None:
    with pytest.raises(CertificateIdentityError, match=problem):
        certificate_identity(FakeTls(cert))


def test_expect_identity_accepts_the_expected_peer() -> None:
    expect_identity(Identity("KME_B", "node"), common_name="KME_B", role="node")
    expect_identity(Identity("KME_B", "node"), role="node")


def test_expect_identity_refuses_the_right_role_with_the_wrong_name() -> None:
    with pytest.raises(
        CertificateIdentityError,
        match="^peer certificate is for node 'KME_C', expected node 'KME_B'$",
    ):
        expect_identity(Identity("KME_C", "node"), common_name="KME_B", role="node")


def test_expect_identity_quotes_a_strange_role_instead_of_echoing_it() -> None:
    with pytest.raises(CertificateIdentityError) as info:
        expect_identity(Identity("x", "node\nFAKE LOG LINE"), role="node")

    assert "\n" not in str(info.value)


def test_a_key_that_does_not_match_the_certificate_is_a_config_error(pki: Pki) -> None:
    with pytest.raises(TlsConfigError, match="KME_A.pem with key .*KME_B.key") as info:
        peer_context(pki.ca, pki.kme_a.cert, pki.kme_b.key, server=True)

    assert "PRIVATE KEY" not in str(info.value)
    assert pki.kme_b.key.read_text() not in str(info.value)


def test_a_missing_ca_file_is_a_config_error_naming_it(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match=r"cannot load CA certificate .*nope\.pem"):
        api_context(tmp_path / "nope.pem", pki.kme_a.cert, pki.kme_a.key)
