"""The network PKI: one CA per qkms network, certificates for its nodes and SAEs.

Layout of a PKI directory ``D``::

    D/ca.pem  D/ca.key            the network CA (the only trust anchor of every node)
    D/nodes/<id>.pem  <id>.key    a node (KME): serverAuth + clientAuth, OU=node
    D/saes/<id>.pem   <id>.key    an application (SAE): clientAuth only, OU=sae

Keys are ECDSA P-256, stored unencrypted (PKCS#8 PEM) because the daemon loads them
unattended; they are created with mode 0600 from the first byte (``os.open`` with the mode,
then an atomic rename), never made private after the fact. The role of a certificate is its
OU; the daemon reads it back with ``qkmsd.tls.certificate_identity``.

Pure functions, no printing: ``cli/pki.py`` is the command-line face.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from protocol import NODE_ID_RE

from ._errors import CliError

__all__ = [
    "CaFiles",
    "CertInfo",
    "IssuedFiles",
    "Kind",
    "PkiError",
    "init_ca",
    "issue_node",
    "issue_sae",
    "list_certificates",
]

Kind = Literal["ca", "node", "sae"]

ORGANIZATION = "qkms"
_ID_RE = NODE_ID_RE  # node and SAE ids share the rule
# Labels of letters, digits, '_' and inner '-'; an optional leading wildcard label.
_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME_RE = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")
_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_SUBDIR: dict[Kind, str] = {"node": "nodes", "sae": "saes"}
# Certificates start a little in the past so that a peer whose clock lags ours by a few
# minutes does not reject a certificate issued moments ago.
_BACKDATE = dt.timedelta(minutes=5)
_LOOPBACK_SANS: tuple[x509.GeneralName, ...] = (
    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    x509.IPAddress(ipaddress.ip_address("::1")),
    x509.DNSName("localhost"),
)


class PkiError(CliError):
    """A PKI operation cannot proceed; the message names the file or value and the fix."""


@dataclass(frozen=True, slots=True)
class CaFiles:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class IssuedFiles:
    kind: Kind
    id: str
    cert: Path
    key: Path
    not_after: dt.datetime


@dataclass(frozen=True, slots=True)
class CertInfo:
    kind: Kind
    id: str
    path: Path
    not_after: dt.datetime
    fingerprint: str
    """SHA-256 of the DER certificate, lower-case hex with colons (as ``openssl x509``)."""


def init_ca(
    directory: Path,
    *,
    common_name: str = "qkms network CA",
    days: int = 3650,
    force: bool = False,
) -> CaFiles:
    """Create the network CA in ``directory`` (created if missing).

    Raises ``PkiError`` if a CA is already there and ``force`` is false (a new CA orphans
    every certificate the old one issued), or if ``days`` is not positive.
    """
    _check_days(days)
    if not common_name:
        raise PkiError("CA common name is empty: give a name such as 'qkms network CA'")
    directory = Path(directory)
    cert_path, key_path = directory / _CA_CERT, directory / _CA_KEY
    if not force:
        for existing in (cert_path, key_path):
            if existing.exists():
                raise PkiError(
                    f"{existing} already exists: a new CA would orphan every certificate the "
                    "old one issued; use --force to replace it"
                )
    directory.mkdir(parents=True, exist_ok=True)

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )
    now = _now()
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    # Key first: a crash in between leaves a key without a certificate, which init refuses
    # to overwrite silently and issue reports as a mismatch, rather than the reverse.
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return CaFiles(cert=cert_path, key=key_path)


def issue_node(
    directory: Path,
    node_id: str,
    *,
    hosts: Sequence[str] = (),
    days: int = 825,
    force: bool = False,
) -> IssuedFiles:
    """Issue a node (KME) certificate, valid as TLS server and client.

    Subject CN=<node_id>, O=qkms, OU=node; SANs are the loopback addresses, ``localhost``
    and every entry of ``hosts`` (an IP address if it parses as one, else a DNS name). The
    validity is cut short at the CA's own expiry.

    Raises ``PkiError`` for a bad id or host, a missing or inconsistent CA, or an existing
    certificate for this id without ``force``.
    """
    sans = list(_LOOPBACK_SANS)
    for host in hosts:
        san = _host_san(host)
        if san not in sans:
            sans.append(san)
    return _issue(
        Path(directory),
        "node",
        node_id,
        days=days,
        force=force,
        sans=sans,
        eku=[ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH],
    )


def issue_sae(directory: Path, sae_id: str, *, days: int = 825, force: bool = False) -> IssuedFiles:
    """Issue an SAE (application) certificate: TLS client only, CN=<sae_id>, O=qkms, OU=sae.

    Raises ``PkiError`` as ``issue_node`` does.
    """
    return _issue(
        Path(directory),
        "sae",
        sae_id,
        days=days,
        force=force,
        sans=[],
        eku=[ExtendedKeyUsageOID.CLIENT_AUTH],
    )


def list_certificates(directory: Path) -> list[CertInfo]:
    """The CA, then nodes, then SAEs (each sorted by id) found in ``directory``.

    Raises ``PkiError`` if the directory does not exist or a certificate cannot be read.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise PkiError(f"{directory}: no such PKI directory; create one with `pki init`")
    found: list[CertInfo] = []
    ca_path = directory / _CA_CERT
    if ca_path.exists():
        found.append(_info("ca", "ca", ca_path))
    for kind in ("node", "sae"):
        subdir = directory / _SUBDIR[kind]
        if subdir.is_dir():
            for path in sorted(subdir.glob("*.pem")):
                found.append(_info(kind, path.name.removesuffix(".pem"), path))
    return found


def _issue(
    directory: Path,
    kind: Kind,
    ident: str,
    *,
    days: int,
    force: bool,
    sans: list[x509.GeneralName],
    eku: list[x509.ObjectIdentifier],
) -> IssuedFiles:
    _check_id(kind, ident)
    _check_days(days)
    ca_cert, ca_key = _load_ca(directory)
    subdir = directory / _SUBDIR[kind]
    cert_path, key_path = subdir / f"{ident}.pem", subdir / f"{ident}.key"
    if not force:
        for existing in (cert_path, key_path):
            if existing.exists():
                raise PkiError(
                    f"{existing} already exists: {kind} {ident!r} has a certificate; "
                    "use --force to issue a new one"
                )
    subdir.mkdir(parents=True, exist_ok=True)

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.COMMON_NAME, ident),
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, kind),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True, key_agreement=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage(eku), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return IssuedFiles(kind=kind, id=ident, cert=cert_path, key=key_path, not_after=not_after)


def _load_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    cert_path, key_path = directory / _CA_CERT, directory / _CA_KEY
    for required in (cert_path, key_path):
        if not required.exists():
            raise PkiError(
                f"{required} not found: create the network CA first with "
                f"`pki init --dir {directory}`"
            )
    cert = _read_cert(cert_path)
    try:
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        # The cause is dropped on purpose: it is about the key's bytes, which stay private.
        raise PkiError(
            f"{key_path} is not an unencrypted PEM private key: restore it from backup "
            "or recreate the CA with `pki init --force`"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
        raise PkiError(
            f"{key_path} does not belong to {cert_path}: restore the matching pair "
            "or recreate the CA with `pki init --force`"
        )
    if cert.not_valid_after_utc <= _now():
        raise PkiError(
            f"{cert_path} expired on {cert.not_valid_after_utc:%Y-%m-%d}: "
            "create a new CA with `pki init --force` and reissue every certificate"
        )
    return cert, key


def _info(kind: Kind, ident: str, path: Path) -> CertInfo:
    cert = _read_cert(path)
    digest = cert.fingerprint(hashes.SHA256())
    return CertInfo(
        kind=kind,
        id=ident,
        path=path,
        not_after=cert.not_valid_after_utc,
        fingerprint=digest.hex(":"),
    )


def _read_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise PkiError(
            f"{path} is not a PEM certificate: restore it from backup or reissue it"
        ) from None


def _check_id(kind: Kind, ident: str) -> None:
    if not _ID_RE.fullmatch(ident):
        raise PkiError(
            f"{kind} id {ident!r} is invalid: use 1-64 characters from A-Z a-z 0-9 and _ . : -"
        )


def _check_days(days: int) -> None:
    if days < 1:
        raise PkiError(f"validity of {days} days is invalid: give a positive number of days")


def _host_san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if len(host) > 253 or not _DNS_NAME_RE.fullmatch(host):
        raise PkiError(
            f"host {host!r} is neither an IP address nor a DNS name: "
            "give e.g. 192.0.2.7 or kme-a.example.net"
        )
    return x509.DNSName(host)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_agreement: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=key_agreement,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write_private(path: Path, data: bytes) -> None:
    # The umask keeps its say here: it can only make a key stricter than 0600.
    _write_atomically(path, data, 0o600, exact_mode=False)


def _write_public(path: Path, data: bytes) -> None:
    # A certificate is public: 0644 whatever the umask, so every service can read it.
    _write_atomically(path, data, 0o644, exact_mode=True)


def _write_atomically(path: Path, data: bytes, mode: int, *, exact_mode: bool) -> None:
    # A fresh file created with its final mode, then renamed over the target: a key is never
    # readable by others, not even for an instant, and a crash leaves the old file or the
    # new one, never half of each. O_EXCL so that a stale temporary file is never reused.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        if exact_mode:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
