"""The network PKI: one CA per qkms network, certificates for its nodes and SAEs.

Layout of a PKI directory ``D``::

    D/ca.pem  D/ca.key            the network CA (the only trust anchor of every node)
    D/crl.pem                     the CA's revocation list, which nodes load (``[tls] crl``)
    D/index.json                  every certificate issued: serial, kind, id, revocation
    D/nodes/<id>.pem  <id>.key    a node (KME): serverAuth + clientAuth, OU=node
    D/saes/<id>.pem   <id>.key    an application (SAE): clientAuth only, OU=sae
    D/operators/<name>.pem  .key  a dashboard operator: clientAuth only, OU=operator
    D/operators-ro/<name>.pem     a read-only dashboard operator: OU=operator-ro

Keys are ECDSA P-256, stored unencrypted (PKCS#8 PEM) because the daemon loads them
unattended; they are created with mode 0600 from the first byte (``os.open`` with the mode,
then an atomic rename), never made private after the fact, in directories kept 0700. The
role of a certificate is its OU; the daemon reads it back with
``qkmsd.tls.certificate_identity``.

One name has one current certificate: issuing a new one for a name (``force``) revokes
the previous one as superseded, and ``revoke`` revokes it outright; either way the CRL is
signed again. A stolen key is then refused by every node that has loaded the new CRL.

Pure functions, no printing: ``cli/pki.py`` is the command-line face.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import re
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
from ._files import private_dir as _private_dir
from ._files import write_private as _write_private
from ._files import write_public as _write_public

__all__ = [
    "CaFiles",
    "CertInfo",
    "IssuedFiles",
    "Kind",
    "PkiError",
    "Revoked",
    "init_ca",
    "issue_node",
    "issue_operator",
    "issue_sae",
    "list_certificates",
    "revoke",
    "sign_crl",
]

Kind = Literal["ca", "node", "sae", "operator", "operator-ro"]
ISSUED: tuple[Kind, ...] = ("node", "sae", "operator", "operator-ro")
Reason = Literal["revoked", "superseded"]

ORGANIZATION = "qkms"
_ID_RE = NODE_ID_RE  # node and SAE ids share the rule
# Labels of letters, digits, '_' and inner '-'; an optional leading wildcard label.
_DNS_LABEL = r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
_DNS_NAME_RE = re.compile(rf"(?:\*\.)?{_DNS_LABEL}(?:\.{_DNS_LABEL})*\.?")
_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_CRL = "crl.pem"
_INDEX = "index.json"
CRL_DAYS = 90
"""Default validity of a CRL: nodes refuse every handshake once their CRL is past its
next update, so it must be signed again (``sign_crl``, ``qkmsctl pki crl``) before that."""
_REASON_CODE: dict[str, x509.ReasonFlags] = {
    "revoked": x509.ReasonFlags.unspecified,
    "superseded": x509.ReasonFlags.superseded,
}
_SUBDIR: dict[Kind, str] = {
    "node": "nodes",
    "sae": "saes",
    "operator": "operators",
    "operator-ro": "operators-ro",
}
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
    path: Path | None
    """The certificate file; ``None`` for a revoked certificate whose file was replaced."""
    not_after: dt.datetime
    fingerprint: str
    """SHA-256 of the DER certificate, lower-case hex with colons (as ``openssl x509``)."""
    serial: str = ""
    """The serial number, lower-case hex."""
    revoked: dt.datetime | None = None
    reason: str = ""
    """Why it was revoked: ``revoked`` (``qkmsctl pki revoke``) or ``superseded`` (reissued)."""


@dataclass(frozen=True, slots=True)
class Revoked:
    """A certificate ``revoke`` revoked, and the CRL that now lists it."""

    kind: Kind
    id: str
    serial: str
    crl: Path


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
    _private_dir(directory)

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
    # A new CA starts a new history: the old CA's serials mean nothing under it.
    index = _Index(certificates=[])
    _write_public(directory / _INDEX, index.dump())
    _write_crl(directory, cert, key, index, days=CRL_DAYS)
    return CaFiles(cert=cert_path, key=key_path)


def issue_node(
    directory: Path,
    node_id: str,
    *,
    hosts: Sequence[str] = (),
    days: int = 825,
    seconds: int | None = None,
    force: bool = False,
) -> IssuedFiles:
    """Issue a node (KME) certificate, valid as TLS server and client.

    Subject CN=<node_id>, O=qkms, OU=node; SANs are the loopback addresses, ``localhost``
    and every entry of ``hosts`` (an IP address if it parses as one, else a DNS name). The
    validity (``seconds`` instead of ``days`` if given: a certificate that expires soon, for
    labs and tests) is cut short at the CA's own expiry.

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
        seconds=seconds,
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


def issue_operator(
    directory: Path, name: str, *, read_only: bool = False, days: int = 365, force: bool = False
) -> IssuedFiles:
    """Issue a dashboard operator's certificate: TLS client only, CN=<name>, O=qkms,
    OU=operator (view and operate) or, with ``read_only``, OU=operator-ro (view only).

    Raises ``PkiError`` as ``issue_node`` does.
    """
    return _issue(
        Path(directory),
        "operator-ro" if read_only else "operator",
        name,
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
    index = _Index(certificates=[])
    if ca_path.exists():
        found.append(_info("ca", "ca", ca_path, None))
        index = _load_index(directory, _read_cert(ca_path))
    by_serial = {r.serial: r for r in index.certificates}
    for kind in ISSUED:
        subdir = directory / _SUBDIR[kind]
        files: list[CertInfo] = []
        if subdir.is_dir():
            for path in sorted(subdir.glob("*.pem")):
                if path.name.endswith(".pqc.pem") or path.name.endswith(".pub.pem"):
                    continue  # an SAE's PQC key pair (the lab keeps it beside the certificate)
                files.append(_info(kind, path.name.removesuffix(".pem"), path, by_serial))
        shown = {info.serial for info in files}
        gone = [
            CertInfo(
                kind=r.kind,
                id=r.id,
                path=None,
                not_after=dt.datetime.fromisoformat(r.not_after),
                fingerprint=r.sha256,
                serial=r.serial,
                revoked=dt.datetime.fromisoformat(r.revoked) if r.revoked else None,
                reason=r.reason,
            )
            for r in index.certificates
            if r.kind == kind and r.serial not in shown and r.revoked
        ]
        found += sorted([*files, *gone], key=lambda i: (i.id, i.revoked is not None))
    return found


def _issue(
    directory: Path,
    kind: Kind,
    ident: str,
    *,
    days: int,
    seconds: int | None = None,
    force: bool,
    sans: list[x509.GeneralName],
    eku: list[x509.ObjectIdentifier],
) -> IssuedFiles:
    _check_id(kind, ident)
    _check_days(days)
    if seconds is not None and seconds < 1:
        raise PkiError(f"validity {seconds} s: must be at least 1 second")
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
    _private_dir(subdir)

    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    validity = dt.timedelta(days=days) if seconds is None else dt.timedelta(seconds=seconds)
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
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
    # The index first: a crash after it leaves a serial without a file, never a
    # certificate that revocation cannot find. The previous certificate of this name
    # is revoked as superseded, so one name has one certificate nodes accept.
    index = _load_index(directory, ca_cert)
    superseded = index.revoke(kind, ident, "superseded", now)
    index.certificates.append(_Record.of(kind, ident, cert))
    _write_public(directory / _INDEX, index.dump())
    _write_private(key_path, _key_pem(key))
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    if superseded:
        _write_crl(directory, ca_cert, ca_key, index, days=CRL_DAYS)
    return IssuedFiles(kind=kind, id=ident, cert=cert_path, key=key_path, not_after=not_after)


def revoke(directory: Path, ident: str, *, kind: Kind | None = None) -> list[Revoked]:
    """Revoke the current certificate(s) of ``ident`` (of ``kind`` only, if given).

    Writes ``crl.pem``, signed by the CA, valid ``CRL_DAYS``; nodes refuse the revoked
    certificates once they load it (at start, or on ``SIGHUP``). The certificate files stay
    where they are; ``list_certificates`` marks them revoked.

    Raises ``PkiError`` if the CA is missing or inconsistent, or if ``ident`` has no
    current certificate.
    """
    directory = Path(directory)
    ca_cert, ca_key = _load_ca(directory)
    index = _load_index(directory, ca_cert)
    kinds: tuple[Kind, ...] = (kind,) if kind is not None else ISSUED
    revoked: list[_Record] = []
    for one in kinds:
        revoked += index.revoke(one, ident, "revoked", _now())
    if not revoked:
        what = f"{kind} {ident!r}" if kind is not None else repr(ident)
        raise PkiError(
            f"{what} has no current certificate in {directory}: "
            "`pki list` shows what was issued and what is revoked"
        )
    _write_public(directory / _INDEX, index.dump())
    crl = _write_crl(directory, ca_cert, ca_key, index, days=CRL_DAYS)
    return [Revoked(kind=r.kind, id=r.id, serial=r.serial, crl=crl) for r in revoked]


def sign_crl(directory: Path, *, days: int = CRL_DAYS) -> Path:
    """Sign ``crl.pem`` again, with every revocation so far, valid ``days`` from now.

    Nodes refuse every TLS handshake once their CRL is past its next update: run this
    (``qkmsctl pki crl``) and hand the nodes the new file before then. Raises ``PkiError``
    as ``revoke`` does, or if ``days`` is not positive.
    """
    _check_days(days)
    directory = Path(directory)
    ca_cert, ca_key = _load_ca(directory)
    return _write_crl(directory, ca_cert, ca_key, _load_index(directory, ca_cert), days=days)


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


def _info(kind: Kind, ident: str, path: Path, index: dict[str, _Record] | None) -> CertInfo:
    cert = _read_cert(path)
    digest = cert.fingerprint(hashes.SHA256())
    serial = f"{cert.serial_number:x}"
    record = (index or {}).get(serial)
    revoked = record.revoked if record is not None else None
    return CertInfo(
        kind=kind,
        id=ident,
        path=path,
        not_after=cert.not_valid_after_utc,
        fingerprint=digest.hex(":"),
        serial=serial,
        revoked=dt.datetime.fromisoformat(revoked) if revoked else None,
        reason=record.reason if record is not None else "",
    )


# --- the index of issued certificates, and the CRL ---------------------------------------


@dataclass(slots=True)
class _Record:
    kind: Kind
    id: str
    serial: str
    not_after: str
    sha256: str
    revoked: str | None = None
    reason: str = ""

    @classmethod
    def of(cls, kind: Kind, ident: str, cert: x509.Certificate) -> _Record:
        return cls(
            kind=kind,
            id=ident,
            serial=f"{cert.serial_number:x}",
            not_after=cert.not_valid_after_utc.isoformat(),
            sha256=cert.fingerprint(hashes.SHA256()).hex(":"),
        )


@dataclass(slots=True)
class _Index:
    certificates: list[_Record]
    crl_number: int = 0

    def revoke(self, kind: Kind, ident: str, reason: Reason, when: dt.datetime) -> list[_Record]:
        """Mark every current certificate of (kind, ident) revoked; those records."""
        hit = [r for r in self.certificates if (r.kind, r.id) == (kind, ident) and not r.revoked]
        for record in hit:
            record.revoked, record.reason = when.isoformat(), reason
        return hit

    def dump(self) -> bytes:
        rows = [
            {
                "kind": r.kind,
                "id": r.id,
                "serial": r.serial,
                "not_after": r.not_after,
                "sha256": r.sha256,
                "revoked": r.revoked,
                "reason": r.reason,
            }
            for r in self.certificates
        ]
        data = {"crl_number": self.crl_number, "certificates": rows}
        return (json.dumps(data, indent=2) + "\n").encode()


def _load_index(directory: Path, ca_cert: x509.Certificate) -> _Index:
    path = directory / _INDEX
    try:
        data = json.loads(path.read_bytes())
        records = [
            _Record(
                kind=row["kind"],
                id=row["id"],
                serial=row["serial"],
                not_after=row["not_after"],
                sha256=row["sha256"],
                revoked=row["revoked"],
                reason=row["reason"],
            )
            for row in data["certificates"]
        ]
        return _Index(certificates=records, crl_number=int(data["crl_number"]))
    except FileNotFoundError:
        pass
    except (ValueError, KeyError, TypeError):
        raise PkiError(
            f"{path} is not a qkms certificate index: restore it from backup "
            "(without it, revocation cannot find the certificates issued)"
        ) from None
    # A PKI directory from before the index: what is on disk is what was issued.
    index = _Index(certificates=[])
    for kind in ISSUED:
        subdir = directory / _SUBDIR[kind]
        for pem in sorted(subdir.glob("*.pem")) if subdir.is_dir() else ():
            cert = _read_cert_or_none(pem)
            if cert is not None and cert.issuer == ca_cert.subject:
                index.certificates.append(_Record.of(kind, pem.name.removesuffix(".pem"), cert))
    return index


def _write_crl(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    index: _Index,
    *,
    days: int,
) -> Path:
    now = _now()
    index.crl_number += 1
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - _BACKDATE)
        .next_update(min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc))
        .add_extension(x509.CRLNumber(index.crl_number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for record in index.certificates:
        if record.revoked is None:
            continue
        reason = _REASON_CODE.get(record.reason, x509.ReasonFlags.unspecified)
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(int(record.serial, 16))
            .revocation_date(dt.datetime.fromisoformat(record.revoked))
            .add_extension(x509.CRLReason(reason), critical=False)
            .build()
        )
    crl = builder.sign(ca_key, hashes.SHA256())
    # The number first: a CRL never reuses one, even if writing it fails.
    _write_public(directory / _INDEX, index.dump())
    path = directory / _CRL
    _write_public(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def _read_cert_or_none(path: Path) -> x509.Certificate | None:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        return None


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
