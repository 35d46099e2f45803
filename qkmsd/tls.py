"""TLS for the daemon: contexts for the peer links and the ETSI 014 API, and peer identity.

Trust model: the network CA (``qkmsctl pki init``) is the only trust anchor. Every
certificate it issues names its holder in the CN and its role in the OU (``node`` or
``sae``). Chain verification says "someone in this network"; *which* one is our check, not
OpenSSL's hostname check: after the handshake, ``certificate_identity`` reads (CN, OU) and
``expect_identity`` compares them with the peer or SAE the connection is supposed to be.

Revocation: with a CRL (``[tls] crl``, written by ``qkmsctl pki revoke``), OpenSSL also
checks the leaf certificate against it (``VERIFY_CRL_CHECK_LEAF``), so a revoked node or
SAE is refused in the handshake; ``load_crl`` checks the file first (signed by the CA, not
past its next update) and gives the revoked serials, which the node uses on reload to
close connections opened before the revocation.

OpenSSL's default verify purpose also helps: a server verifying a client checks the
clientAuth EKU, a client verifying a server checks serverAuth. So an SAE certificate
(clientAuth only) can never pose as a node's *server* side; as a client it passes the chain
check and is caught by ``expect_identity``.
"""

from __future__ import annotations

import datetime as dt
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from protocol import ErrorCode

from .errors import QkmsError

__all__ = [
    "HYBRID_PQ_GROUP",
    "CertificateIdentityError",
    "Identity",
    "PeerCertificateSource",
    "Revocations",
    "TlsConfigError",
    "TlsError",
    "api_context",
    "certificate_identity",
    "certificate_serial",
    "expect_identity",
    "hybrid_pq_groups_available",
    "load_crl",
    "peer_context",
]

HYBRID_PQ_GROUP = "X25519MLKEM768"
"""The ML-KEM-768 + X25519 hybrid key exchange group (OpenSSL >= 3.5 name)."""

# Hybrid first, then the classical groups for clients that do not offer it.
_API_GROUPS = f"{HYBRID_PQ_GROUP}:X25519:secp256r1:secp384r1"
# TLS 1.2 on the API only: forward-secret, AEAD, ECDSA (our certificates are P-256).
_TLS12_CIPHERS = (
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305"
)


class TlsError(QkmsError):
    """Root of the TLS helpers' errors."""


class TlsConfigError(TlsError):
    """A CA, certificate or key file cannot be loaded; the message names the files."""


class CertificateIdentityError(TlsError):
    """The peer's certificate does not say, or does not say the expected, who it is."""

    wire_code = ErrorCode.WRONG_PEER


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a verified peer certificate says its holder is."""

    common_name: str
    role: str
    """The certificate's OU: ``"node"`` or ``"sae"`` for certificates from ``qkmsctl pki``."""


@dataclass(frozen=True, slots=True)
class Revocations:
    """What a CRL says: the serial numbers it revokes, and when it must be replaced."""

    serials: frozenset[int]
    next_update: dt.datetime


class PeerCertificateSource(Protocol):
    """Anything with ``getpeercert()``: ``ssl.SSLObject``, ``ssl.SSLSocket``, ``trio.SSLStream``."""

    def getpeercert(self) -> Mapping[str, object] | None: ...


def load_crl(ca: Path, crl: Path, *, now: dt.datetime | None = None) -> Revocations:
    """Read the CRL ``crl`` and check it is ``ca``'s and current.

    Raises ``TlsConfigError`` naming the file and the fix if it cannot be read, is not a
    PEM CRL, is not signed by ``ca``, or is past its next update (OpenSSL would then refuse
    every handshake).
    """
    now = now or dt.datetime.now(dt.UTC)
    try:
        data = crl.read_bytes()
    except OSError as exc:
        raise TlsConfigError(
            f"cannot read CRL {crl}: {exc.strerror or exc}; copy the network's crl.pem "
            "(qkmsctl pki revoke, pki crl) or remove [tls] crl"
        ) from None
    try:
        parsed = x509.load_pem_x509_crl(data)
    except ValueError:
        raise TlsConfigError(
            f"CRL {crl} is not a PEM certificate revocation list: copy the network's "
            "crl.pem (qkmsctl pki crl)"
        ) from None
    try:
        issuer = x509.load_pem_x509_certificate(ca.read_bytes())
    except (OSError, ValueError):
        raise TlsConfigError(
            f"cannot load CA certificate {ca} to check CRL {crl}: "
            "point to the network's ca.pem (qkmsctl pki init)"
        ) from None
    key = issuer.public_key()
    if (
        parsed.issuer != issuer.subject
        or not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey)
        or not parsed.is_signature_valid(key)
    ):
        raise TlsConfigError(
            f"CRL {crl} is not signed by the CA {ca}: copy the crl.pem of this network's PKI"
        )
    next_update = parsed.next_update_utc
    if next_update is None or next_update <= now:
        when = f"on {next_update:%Y-%m-%d %H:%M} UTC" if next_update else "(no next update)"
        raise TlsConfigError(
            f"CRL {crl} expired {when}: every handshake would fail; sign a new one with "
            "`qkmsctl pki crl` and copy it here"
        )
    return Revocations(frozenset(r.serial_number for r in parsed), next_update)


def certificate_serial(ssl_object: PeerCertificateSource) -> int | None:
    """The serial number of the verified certificate the peer presented, or ``None``."""
    cert = ssl_object.getpeercert()
    serial = cert.get("serialNumber") if cert else None
    try:
        return int(str(serial), 16) if serial is not None else None
    except ValueError:
        return None


def peer_context(
    ca: Path, cert: Path, key: Path, *, server: bool, crl: Path | None = None
) -> ssl.SSLContext:
    """A context for the node-to-node peer protocol: mutual TLS 1.3, ``ca`` as sole anchor.

    Both sides require and verify the other's certificate. Hostname checking is off because
    the identity check is ours (``certificate_identity`` + ``expect_identity``), so a client
    needs no ``server_hostname``. With ``crl``, a revoked peer certificate is refused.

    Raises ``TlsConfigError`` if a file cannot be loaded or the key does not match the
    certificate.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.check_hostname = False  # must precede verify_mode on a client context
    ctx.verify_mode = ssl.CERT_REQUIRED
    # Our own PKI issues RFC 5280-conformant certificates, so the strict checks cost nothing.
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    _load(ctx, ca, cert, key, crl)
    return ctx


def api_context(ca: Path, cert: Path, key: Path, *, crl: Path | None = None) -> ssl.SSLContext:
    """The server context of the ETSI 014 API: TLS 1.2 or 1.3, client certificate required.

    TLS 1.3 is chosen whenever the client offers it. The SAE's identity is its client
    certificate, verified against ``ca`` (and ``crl``, if given: a revoked one is refused).
    Where OpenSSL offers the ML-KEM hybrid group (see ``hybrid_pq_groups_available``), it
    is put first in the key exchange groups; otherwise OpenSSL's default groups stay.

    Raises ``TlsConfigError`` as ``peer_context`` does.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.set_ciphers(_TLS12_CIPHERS)
    # getattr: set_groups is newer than the Python this project's type checks target.
    set_groups = getattr(ctx, "set_groups", None)
    if set_groups is not None and hybrid_pq_groups_available():
        set_groups(_API_GROUPS)
    _load(ctx, ca, cert, key, crl)
    return ctx


def collector_context(ca: Path, cert: Path, key: Path) -> ssl.SSLContext:
    """A client context for pushing to a collector (``[perf] report_url``): the node shows
    its certificate; the collector's is verified against ``ca`` and the URL's host name.

    Raises ``TlsConfigError`` as ``peer_context`` does.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # host name checked, certificate required
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load(ctx, ca, cert, key, None)
    return ctx


def hybrid_pq_groups_available() -> bool:
    """Whether this Python and OpenSSL offer ``X25519MLKEM768`` in TLS key exchange.

    With ``ssl.SSLContext.get_groups``/``set_groups`` (Python 3.15 and newer), whether
    OpenSSL has the group (3.5 and newer, or a provider offering it); ``api_context``
    then puts it first. Without them, OpenSSL's default groups apply, and from OpenSSL 3.5
    on those offer the hybrid group first. False otherwise: then TLS key exchange is
    classical only, and post-quantum protection of delivered keys rests on the SAE's
    registered hybrid key.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    get_groups = getattr(ctx, "get_groups", None)
    if get_groups is not None:
        try:
            return HYBRID_PQ_GROUP in get_groups()
        except (ssl.SSLError, NotImplementedError):
            pass
    set_groups = getattr(ctx, "set_groups", None)
    if set_groups is None:
        return ssl.OPENSSL_VERSION_INFO >= (3, 5)
    try:
        set_groups(HYBRID_PQ_GROUP)
    except (ssl.SSLError, ValueError, NotImplementedError):
        return False
    return True


def certificate_identity(ssl_object: PeerCertificateSource) -> Identity:
    """The (CN, OU) of the verified certificate the peer presented.

    Takes an ``ssl.SSLObject``, ``ssl.SSLSocket`` or ``trio.SSLStream`` after its
    handshake. Raises ``CertificateIdentityError`` if there is no verified certificate or
    its subject has no single CN and single OU.
    """
    cert = ssl_object.getpeercert()
    if not cert:
        # None: no handshake or no certificate; {}: a certificate that was not verified.
        raise CertificateIdentityError("peer presented no verified certificate")
    subject = cert.get("subject", ())
    common_names = _subject_values(subject, "commonName")
    roles = _subject_values(subject, "organizationalUnitName")
    if len(common_names) != 1 or len(roles) != 1:
        raise CertificateIdentityError(
            "peer certificate subject must have exactly one CN and one OU "
            f"(has {len(common_names)} CN, {len(roles)} OU): issue it with `qkmsctl pki issue`"
        )
    return Identity(common_name=common_names[0], role=roles[0])


def expect_identity(identity: Identity, *, common_name: str | None = None, role: str) -> None:
    """Check that a peer is the expected one: ``role``, and ``common_name`` unless None.

    Raises ``CertificateIdentityError``, e.g. "peer certificate is for sae 'SAE_A',
    expected node 'KME_B'".
    """
    if identity.role == role and common_name in (None, identity.common_name):
        return
    expected = f"{_show_role(role)} {common_name!r}" if common_name is not None else f"a {role}"
    raise CertificateIdentityError(
        f"peer certificate is for {_show_role(identity.role)} {identity.common_name!r}, "
        f"expected {expected}"
    )


def _load(ctx: ssl.SSLContext, ca: Path, cert: Path, key: Path, crl: Path | None) -> None:
    try:
        ctx.load_verify_locations(cafile=ca)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load CA certificate {ca}: {_reason(exc)}; "
            "point to the network's ca.pem (qkmsctl pki init)"
        ) from None
    try:
        ctx.load_cert_chain(certfile=cert, keyfile=key)
    except (OSError, ssl.SSLError) as exc:
        # Only OpenSSL's reason is kept: never anything that might quote the key file.
        raise TlsConfigError(
            f"cannot load certificate {cert} with key {key}: {_reason(exc)}; "
            "check both paths and that the key is the certificate's (qkmsctl pki issue)"
        ) from None
    if crl is None:
        return
    try:
        ctx.load_verify_locations(cafile=crl)
    except (OSError, ssl.SSLError) as exc:
        raise TlsConfigError(
            f"cannot load CRL {crl}: {_reason(exc)}; copy the network's crl.pem "
            "(qkmsctl pki crl) or remove [tls] crl"
        ) from None
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF


def _reason(exc: OSError | ssl.SSLError) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return exc.strerror or type(exc).__name__


def _subject_values(subject: object, attribute: str) -> list[str]:
    # getpeercert()'s subject: a tuple of RDNs, each a tuple of (name, value) pairs.
    values: list[str] = []
    if isinstance(subject, tuple):
        for rdn in subject:
            if not isinstance(rdn, tuple):
                continue
            for pair in rdn:
                if isinstance(pair, tuple) and len(pair) == 2 and pair[0] == attribute:
                    values.append(str(pair[1]))
    return values


def _show_role(role: str) -> str:
    # Roles are short words; anything else from a certificate is quoted, never echoed raw.
    return role if re.fullmatch(r"[a-z][a-z0-9_-]{0,31}", role) else repr(role)
