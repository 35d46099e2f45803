"""Who is refused at the TLS handshake, on the peer port and the ETSI 014 API alike.

Expired, not yet valid and revoked certificates, over real loopback handshakes with the
daemon's own contexts (``qkmsd.tls``). Certificates from another CA, of the wrong role and
for the wrong name are covered in ``test_tls.py`` (handshakes, ``expect_identity``) and
``tests/integration/test_etsi014.py`` (401 for node certificates and unattached SAEs).
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from cli._pki import init_ca, issue_node, issue_sae, revoke
from qkmsd.tls import TlsConfigError, api_context, load_crl, peer_context

from .test_tls import Holder, handshake, ssl_cause

# OpenSSL's X509_V_ERR_* codes, as ssl.SSLCertVerificationError.verify_code reports them.
NOT_YET_VALID = 9
EXPIRED = 10
REVOKED = 23


def resign(ca_dir: Path, holder: Holder, not_before: dt.datetime, not_after: dt.datetime) -> None:
    """Sign ``holder``'s certificate again with another validity (test-only: pki never
    issues a certificate that is not valid now)."""
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    cert = x509.load_pem_x509_certificate(holder.cert.read_bytes())
    builder = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(cert.issuer)
        .public_key(cert.public_key())  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    for extension in cert.extensions:
        builder = builder.add_extension(extension.value, extension.critical)
    signed = builder.sign(ca_key, hashes.SHA256())
    holder.cert.write_bytes(signed.public_bytes(serialization.Encoding.PEM))


@dataclass(frozen=True)
class Net:
    ca: Path
    crl: Path
    kme_a: Holder
    kme_b: Holder
    sae_a: Holder
    expired_kme_b: Holder
    future_kme_b: Holder
    revoked_kme_b: Holder
    expired_sae_a: Holder
    future_sae_a: Holder
    revoked_sae_a: Holder


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Net:
    d = tmp_path_factory.mktemp("pki")
    init_ca(d)
    now = dt.datetime.now(dt.UTC)
    past = (now - dt.timedelta(days=30), now - dt.timedelta(days=1))
    future = (now + dt.timedelta(days=1), now + dt.timedelta(days=30))

    def holder(kind: str, ident: str) -> Holder:
        files = (
            issue_node(d, ident, force=True) if kind == "node" else issue_sae(d, ident, force=True)
        )
        return Holder(files.cert, files.key)

    # Same names as the good ones, each in a directory of its own: the files of one name
    # are replaced on reissue, and these must stay.
    def variant(kind: str, ident: str, label: str) -> Holder:
        good = holder(kind, ident)
        copy = Holder(d / f"{label}.pem", d / f"{label}.key")
        copy.cert.write_bytes(good.cert.read_bytes())
        copy.key.write_bytes(good.key.read_bytes())
        return copy

    expired_kme_b = variant("node", "KME_B", "expired_kme_b")
    resign(d, expired_kme_b, *past)
    future_kme_b = variant("node", "KME_B", "future_kme_b")
    resign(d, future_kme_b, *future)
    expired_sae_a = variant("sae", "SAE_A", "expired_sae_a")
    resign(d, expired_sae_a, *past)
    future_sae_a = variant("sae", "SAE_A", "future_sae_a")
    resign(d, future_sae_a, *future)
    # Issuing KME_B and SAE_A once more revokes the previous ones as superseded.
    revoked_kme_b = variant("node", "KME_B", "revoked_kme_b")
    revoked_sae_a = variant("sae", "SAE_A", "revoked_sae_a")
    kme_b = holder("node", "KME_B")
    sae_a = holder("sae", "SAE_A")
    kme_a = holder("node", "KME_A")
    return Net(
        ca=d / "ca.pem",
        crl=d / "crl.pem",
        kme_a=kme_a,
        kme_b=kme_b,
        sae_a=sae_a,
        expired_kme_b=expired_kme_b,
        future_kme_b=future_kme_b,
        revoked_kme_b=revoked_kme_b,
        expired_sae_a=expired_sae_a,
        future_sae_a=future_sae_a,
        revoked_sae_a=revoked_sae_a,
    )


def node(net: Net, who: Holder, *, server: bool) -> ssl.SSLContext:
    return peer_context(net.ca, who.cert, who.key, server=server, crl=net.crl)


def sae_client(net: Net, who: Holder) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(net.ca))
    ctx.load_cert_chain(who.cert, who.key)
    return ctx


def verify_code(error: BaseException | None) -> int | None:
    cause = ssl_cause(error)
    return cause.verify_code if isinstance(cause, ssl.SSLCertVerificationError) else None


@pytest.mark.parametrize(
    ("label", "code"),
    [("expired_kme_b", EXPIRED), ("future_kme_b", NOT_YET_VALID), ("revoked_kme_b", REVOKED)],
)
async def test_a_node_dialing_with_a_bad_certificate_is_refused_by_the_acceptor(
    net: Net, label: str, code: int
) -> None:
    with trio.fail_after(10):
        server, client = await handshake(
            node(net, net.kme_a, server=True), node(net, getattr(net, label), server=False)
        )

    assert verify_code(server.error) == code
    assert server.identity is None
    assert not client.ok


@pytest.mark.parametrize(
    ("label", "code"),
    [("expired_kme_b", EXPIRED), ("future_kme_b", NOT_YET_VALID), ("revoked_kme_b", REVOKED)],
)
async def test_a_node_accepting_with_a_bad_certificate_is_refused_by_the_dialer(
    net: Net, label: str, code: int
) -> None:
    with trio.fail_after(10):
        server, client = await handshake(
            node(net, getattr(net, label), server=True), node(net, net.kme_a, server=False)
        )

    assert verify_code(client.error) == code
    assert client.identity is None


@pytest.mark.parametrize(
    ("label", "code"),
    [("expired_sae_a", EXPIRED), ("future_sae_a", NOT_YET_VALID), ("revoked_sae_a", REVOKED)],
)
async def test_an_sae_with_a_bad_certificate_is_refused_by_the_api(
    net: Net, label: str, code: int
) -> None:
    api = api_context(net.ca, net.kme_a.cert, net.kme_a.key, crl=net.crl)

    with trio.fail_after(10):
        server, client = await handshake(
            api, sae_client(net, getattr(net, label)), server_hostname="localhost"
        )

    assert verify_code(server.error) == code
    assert server.identity is None
    assert not client.ok


async def test_the_current_certificates_of_the_same_names_are_accepted(net: Net) -> None:
    api = api_context(net.ca, net.kme_a.cert, net.kme_a.key, crl=net.crl)

    with trio.fail_after(10):
        peer_server, peer_client = await handshake(
            node(net, net.kme_a, server=True), node(net, net.kme_b, server=False)
        )
        api_server, api_client = await handshake(
            api, sae_client(net, net.sae_a), server_hostname="localhost"
        )

    assert peer_server.ok and peer_client.ok and api_server.ok and api_client.ok


async def test_without_a_crl_a_revoked_certificate_still_passes(net: Net) -> None:
    # What [tls] crl buys: the same handshake as above, without it.
    plain = peer_context(net.ca, net.kme_a.cert, net.kme_a.key, server=True)

    with trio.fail_after(10):
        server, _ = await handshake(plain, node(net, net.revoked_kme_b, server=False))

    assert server.ok


# --- the CRL file ------------------------------------------------------------------------


def test_load_crl_gives_the_revoked_serials(net: Net) -> None:
    revocations = load_crl(net.ca, net.crl)

    for holder in (net.revoked_kme_b, net.revoked_sae_a):
        serial = x509.load_pem_x509_certificate(holder.cert.read_bytes()).serial_number
        assert serial in revocations.serials
    assert revocations.next_update > dt.datetime.now(dt.UTC)


def test_a_missing_crl_is_a_config_error_naming_it(net: Net, tmp_path: Path) -> None:
    missing = tmp_path / "crl.pem"
    with pytest.raises(TlsConfigError, match=f"cannot read CRL {missing}: .*pki crl"):
        load_crl(net.ca, missing)
    with pytest.raises(TlsConfigError, match=f"cannot load CRL {missing}"):
        peer_context(net.ca, net.kme_a.cert, net.kme_a.key, server=True, crl=missing)


def test_a_file_that_is_not_a_crl_is_a_config_error(net: Net) -> None:
    with pytest.raises(TlsConfigError, match="is not a PEM certificate revocation list"):
        load_crl(net.ca, net.ca)


def test_a_crl_of_another_ca_is_a_config_error(net: Net, tmp_path: Path) -> None:
    init_ca(tmp_path, common_name="someone else's CA")

    with pytest.raises(TlsConfigError, match="is not signed by the CA"):
        load_crl(net.ca, tmp_path / "crl.pem")


def test_a_crl_past_its_next_update_is_a_config_error(net: Net) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)

    with pytest.raises(TlsConfigError, match="expired on .*qkmsctl pki crl"):
        load_crl(net.ca, net.crl, now=later)


def test_revoking_a_name_after_the_fact_shows_in_a_fresh_crl(tmp_path: Path) -> None:
    init_ca(tmp_path)
    cert = x509.load_pem_x509_certificate(issue_node(tmp_path, "KME_C").cert.read_bytes())
    assert cert.serial_number not in load_crl(tmp_path / "ca.pem", tmp_path / "crl.pem").serials

    revoke(tmp_path, "KME_C")

    assert cert.serial_number in load_crl(tmp_path / "ca.pem", tmp_path / "crl.pem").serials
