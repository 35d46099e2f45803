"""The network PKI: ``cli._pki`` (files, certificate contents) and ``qkmsctl pki``."""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from cli._pki import (
    PkiError,
    init_ca,
    issue_node,
    issue_sae,
    list_certificates,
    revoke,
    sign_crl,
)
from cli.pki import pki

CA_FILES = {"ca.pem", "ca.key", "crl.pem", "index.json"}
"""What ``pki init`` writes: the CA, its (empty) CRL and the index of what it issued."""


def load_cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def names(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> list[str]:
    return [str(a.value) for a in cert.subject.get_attributes_for_oid(oid)]


def all_files(directory: Path) -> set[str]:
    return {str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file()}


@pytest.fixture
def pki_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "pki"
    init_ca(directory)
    return directory


@pytest.fixture
def umask_0() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


# --- the CA ---------------------------------------------------------------------------


def test_init_writes_a_public_ca_certificate_and_a_private_key(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "pki")

    assert files.cert == tmp_path / "pki" / "ca.pem"
    assert files.key == tmp_path / "pki" / "ca.key"
    assert mode(files.cert) == 0o644
    assert mode(files.key) == 0o600


def test_ca_key_is_private_even_under_a_permissive_umask(tmp_path: Path, umask_0: None) -> None:
    files = init_ca(tmp_path / "pki")

    assert mode(files.key) == 0o600


def test_ca_is_a_self_signed_p256_ca_that_signs_only_certificates(tmp_path: Path) -> None:
    files = init_ca(tmp_path / "pki", common_name="lab CA")
    ca = load_cert(files.cert)

    assert names(ca, NameOID.COMMON_NAME) == ["lab CA"]
    assert ca.issuer == ca.subject
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    constraints = ca.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca
    usage = ca.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign


def test_init_refuses_to_replace_an_existing_ca(pki_dir: Path) -> None:
    before = (pki_dir / "ca.pem").read_bytes()

    with pytest.raises(PkiError, match=r"ca\.pem already exists.*--force"):
        init_ca(pki_dir)

    assert (pki_dir / "ca.pem").read_bytes() == before


def test_init_with_force_replaces_the_ca(pki_dir: Path) -> None:
    before = (pki_dir / "ca.pem").read_bytes()

    files = init_ca(pki_dir, force=True)

    assert files.cert.read_bytes() != before
    assert mode(files.key) == 0o600


# --- node certificates ----------------------------------------------------------------


def test_node_certificate_names_the_node_and_its_role(pki_dir: Path) -> None:
    files = issue_node(pki_dir, "KME_A")
    cert = load_cert(files.cert)

    assert (files.cert, files.key) == (pki_dir / "nodes/KME_A.pem", pki_dir / "nodes/KME_A.key")
    assert names(cert, NameOID.COMMON_NAME) == ["KME_A"]
    assert names(cert, NameOID.ORGANIZATION_NAME) == ["qkms"]
    assert names(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["node"]


def test_node_certificate_covers_loopback_and_every_configured_host(pki_dir: Path) -> None:
    files = issue_node(pki_dir, "KME_A", hosts=["192.0.2.7", "2001:db8::1", "kme-a.example.net"])
    sans = load_cert(files.cert).extensions.get_extension_for_class(x509.SubjectAlternativeName)

    assert set(sans.value.get_values_for_type(x509.IPAddress)) == {
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
        ipaddress.ip_address("192.0.2.7"),
        ipaddress.ip_address("2001:db8::1"),
    }
    assert set(sans.value.get_values_for_type(x509.DNSName)) == {
        "localhost",
        "kme-a.example.net",
    }


def test_node_certificate_serves_and_authenticates_but_signs_nothing(pki_dir: Path) -> None:
    cert = load_cert(issue_node(pki_dir, "KME_A").cert)

    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and not constraints.value.ca
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.key_agreement
    assert not usage.key_cert_sign


def test_node_certificate_chains_to_the_ca_as_a_tls_server(pki_dir: Path) -> None:
    ca = load_cert(pki_dir / "ca.pem")
    cert = load_cert(issue_node(pki_dir, "KME_A", hosts=["kme-a.example.net"]).cert)

    cert.verify_directly_issued_by(ca)
    policy = verification.PolicyBuilder().store(verification.Store([ca]))
    for name in (
        x509.DNSName("kme-a.example.net"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        chain = policy.build_server_verifier(name).verify(cert, [])
        assert chain[-1] == ca


def test_node_certificate_from_another_ca_does_not_chain(tmp_path: Path) -> None:
    init_ca(tmp_path / "ours")
    init_ca(tmp_path / "theirs")
    ours = load_cert(tmp_path / "ours/ca.pem")
    theirs = load_cert(issue_node(tmp_path / "theirs", "KME_X").cert)

    verifier = verification.PolicyBuilder().store(verification.Store([ours]))
    with pytest.raises(verification.VerificationError):
        verifier.build_server_verifier(x509.DNSName("localhost")).verify(theirs, [])


def test_node_key_is_private_and_belongs_to_the_certificate(pki_dir: Path) -> None:
    files = issue_node(pki_dir, "KME_A")

    assert mode(files.key) == 0o600
    key = serialization.load_pem_private_key(files.key.read_bytes(), password=None)
    assert key.public_key() == load_cert(files.cert).public_key()


def test_node_key_is_private_even_under_a_permissive_umask(pki_dir: Path, umask_0: None) -> None:
    files = issue_node(pki_dir, "KME_A")

    assert mode(files.key) == 0o600
    assert mode(files.cert) == 0o644


def test_node_certificate_does_not_outlive_the_ca(tmp_path: Path) -> None:
    init_ca(tmp_path, days=30)
    ca = load_cert(tmp_path / "ca.pem")

    files = issue_node(tmp_path, "KME_A", days=825)

    assert load_cert(files.cert).not_valid_after_utc == ca.not_valid_after_utc
    assert files.not_after == ca.not_valid_after_utc


def test_every_certificate_gets_a_fresh_random_serial(pki_dir: Path) -> None:
    serials = {load_cert(issue_node(pki_dir, f"KME_{i}").cert).serial_number for i in range(5)}

    assert len(serials) == 5
    assert all(s.bit_length() > 64 for s in serials)


@pytest.mark.parametrize(
    "host", ["", "kme a", "kme/a", "-", "-kme", "kme..example", "a." * 127 + "a"]
)
def test_a_host_that_is_neither_ip_nor_dns_name_is_rejected(pki_dir: Path, host: str) -> None:
    with pytest.raises(PkiError, match="neither an IP address nor a DNS name"):
        issue_node(pki_dir, "KME_A", hosts=[host])

    assert not (pki_dir / "nodes/KME_A.pem").exists()


# --- SAE certificates -----------------------------------------------------------------


def test_sae_certificate_names_the_sae_and_is_for_tls_clients_only(pki_dir: Path) -> None:
    files = issue_sae(pki_dir, "SAE_A")
    cert = load_cert(files.cert)

    assert (files.cert, files.key) == (pki_dir / "saes/SAE_A.pem", pki_dir / "saes/SAE_A.key")
    assert mode(files.key) == 0o600
    assert names(cert, NameOID.COMMON_NAME) == ["SAE_A"]
    assert names(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == ["sae"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    cert.verify_directly_issued_by(load_cert(pki_dir / "ca.pem"))


@pytest.mark.parametrize(("read_only", "role"), [(False, "operator"), (True, "operator-ro")])
def test_an_operator_certificate_carries_its_role_in_the_ou_and_can_be_revoked(
    pki_dir: Path, read_only: bool, role: str
) -> None:
    args = ["operator", "--dir", str(pki_dir), "alice", *(["--read-only"] if read_only else [])]
    result = CliRunner().invoke(pki, args)
    assert result.exit_code == 0, result.output
    subdir = pki_dir / {"operator": "operators", "operator-ro": "operators-ro"}[role]
    cert = load_cert(subdir / "alice.pem")
    assert names(cert, NameOID.COMMON_NAME) == ["alice"]
    assert names(cert, NameOID.ORGANIZATIONAL_UNIT_NAME) == [role]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert mode(subdir / "alice.key") == 0o600
    assert [(c.kind, c.id) for c in list_certificates(pki_dir)][1:] == [(role, "alice")]
    result = CliRunner().invoke(pki, ["revoke", "--dir", str(pki_dir), "alice", "--kind", role])
    assert result.exit_code == 0 and f"revoked {role} alice" in result.output


# --- refusals -------------------------------------------------------------------------


def test_reissuing_an_id_is_refused_and_leaves_the_old_files(pki_dir: Path) -> None:
    files = issue_node(pki_dir, "KME_A")
    before = files.cert.read_bytes(), files.key.read_bytes()

    with pytest.raises(PkiError, match=r"KME_A\.pem already exists.*--force"):
        issue_node(pki_dir, "KME_A")

    assert (files.cert.read_bytes(), files.key.read_bytes()) == before


def test_reissuing_with_force_replaces_certificate_and_key(pki_dir: Path) -> None:
    old = issue_sae(pki_dir, "SAE_A")
    old_key = old.key.read_bytes()

    new = issue_sae(pki_dir, "SAE_A", force=True)

    assert new.key.read_bytes() != old_key
    assert mode(new.key) == 0o600


@pytest.mark.parametrize("bad_id", ["", "x" * 65, "KME/B", "KME B", "../etc", "KMÉ", "a\nb"])
def test_ids_outside_the_allowed_alphabet_are_rejected(pki_dir: Path, bad_id: str) -> None:
    with pytest.raises(PkiError, match="1-64 characters"):
        issue_node(pki_dir, bad_id)
    with pytest.raises(PkiError, match="1-64 characters"):
        issue_sae(pki_dir, bad_id)

    assert all_files(pki_dir) == CA_FILES


@pytest.mark.parametrize("good_id", ["A", "x" * 64, "kme-1.lab:2_b"])
def test_ids_from_the_allowed_alphabet_are_accepted(pki_dir: Path, good_id: str) -> None:
    assert (
        load_cert(issue_node(pki_dir, good_id).cert)
        .subject.rfc4514_string()
        .startswith(f"OU=node,O=qkms,CN={good_id}")
    )


def test_issuing_without_a_ca_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match=r"ca\.pem not found.*pki init --dir"):
        issue_node(tmp_path, "KME_A")


def test_an_unreadable_ca_key_is_reported_without_quoting_it(pki_dir: Path) -> None:
    garbage = "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n"
    (pki_dir / "ca.key").write_text(garbage)

    with pytest.raises(PkiError, match=r"ca\.key is not an unencrypted PEM private key") as info:
        issue_node(pki_dir, "KME_A")

    assert "c2VjcmV0LWJ5dGVz" not in str(info.value)
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_a_ca_key_that_is_not_the_certificates_is_reported(tmp_path: Path) -> None:
    init_ca(tmp_path / "a")
    init_ca(tmp_path / "b")
    (tmp_path / "a/ca.key").write_bytes((tmp_path / "b/ca.key").read_bytes())

    with pytest.raises(PkiError, match=r"ca\.key does not belong to .*ca\.pem"):
        issue_sae(tmp_path / "a", "SAE_A")


@pytest.mark.parametrize("days", [0, -1])
def test_a_validity_that_is_not_positive_is_rejected(tmp_path: Path, days: int) -> None:
    with pytest.raises(PkiError, match="positive number of days"):
        init_ca(tmp_path, days=days)


# --- listing --------------------------------------------------------------------------


def test_list_reports_the_ca_then_nodes_then_saes_with_sha256_fingerprints(
    pki_dir: Path,
) -> None:
    issue_sae(pki_dir, "SAE_A")
    issue_node(pki_dir, "KME_B")
    issue_node(pki_dir, "KME_A")

    infos = list_certificates(pki_dir)

    assert [(i.kind, i.id) for i in infos] == [
        ("ca", "ca"),
        ("node", "KME_A"),
        ("node", "KME_B"),
        ("sae", "SAE_A"),
    ]
    for info in infos:
        assert info.path is not None
        cert = load_cert(info.path)
        assert info.fingerprint == cert.fingerprint(hashes.SHA256()).hex(":")
        assert info.not_after == cert.not_valid_after_utc
        assert info.not_after > dt.datetime.now(dt.UTC)


def test_writing_leaves_no_temporary_files_behind(pki_dir: Path) -> None:
    issue_node(pki_dir, "KME_A")
    issue_sae(pki_dir, "SAE_A", force=True)

    assert all_files(pki_dir) == {
        *CA_FILES,
        "nodes/KME_A.pem",
        "nodes/KME_A.key",
        "saes/SAE_A.pem",
        "saes/SAE_A.key",
    }


def test_listing_a_missing_directory_says_how_to_create_it(tmp_path: Path) -> None:
    with pytest.raises(PkiError, match="no such PKI directory.*pki init"):
        list_certificates(tmp_path / "nowhere")


# --- qkmsctl pki ----------------------------------------------------------------------


def test_cli_builds_a_pki_and_prints_every_path_written(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"

    init = runner.invoke(pki, ["init", "--dir", str(d)])
    node = runner.invoke(pki, ["issue", "--dir", str(d), "--node", "KME_A", "--host", "10.0.0.1"])
    sae = runner.invoke(pki, ["issue", "--dir", str(d), "--sae", "SAE_A", "--days", "30"])

    assert (init.exit_code, node.exit_code, sae.exit_code) == (0, 0, 0)
    for path in ("ca.pem", "ca.key"):
        assert str(d / path) in init.output
    for path in ("nodes/KME_A.pem", "nodes/KME_A.key"):
        assert str(d / path) in node.output
    for path in ("saes/SAE_A.pem", "saes/SAE_A.key"):
        assert str(d / path) in sae.output
    sans = load_cert(d / "nodes/KME_A.pem").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert ipaddress.ip_address("10.0.0.1") in sans.value.get_values_for_type(x509.IPAddress)


def test_cli_output_never_contains_private_key_material(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"

    outputs = [
        runner.invoke(pki, ["init", "--dir", str(d)]),
        runner.invoke(pki, ["issue", "--dir", str(d), "--node", "KME_A"]),
        runner.invoke(pki, ["list", "--dir", str(d)]),
        runner.invoke(pki, ["list", "--dir", str(d), "--json"]),
    ]

    for result in outputs:
        assert result.exit_code == 0
        assert "PRIVATE KEY" not in result.output + result.stderr


def test_cli_list_prints_a_table_or_json(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"
    runner.invoke(pki, ["init", "--dir", str(d)])
    runner.invoke(pki, ["issue", "--dir", str(d), "--node", "KME_A"])

    table = runner.invoke(pki, ["list", "--dir", str(d)])
    as_json = runner.invoke(pki, ["list", "--dir", str(d), "--json"])

    assert table.exit_code == 0
    assert table.output.splitlines()[0].split() == [
        "KIND",
        "ID",
        "NOT",
        "AFTER",
        "STATUS",
        "SHA-256",
    ]
    assert [line.split()[:2] for line in table.output.splitlines()[1:]] == [
        ["ca", "ca"],
        ["node", "KME_A"],
    ]
    rows = json.loads(as_json.output)
    assert [(r["kind"], r["id"]) for r in rows] == [("ca", "ca"), ("node", "KME_A")]
    assert rows[1]["sha256"] == list_certificates(d)[1].fingerprint
    assert rows[1]["path"] == str(d / "nodes/KME_A.pem")


def test_cli_refusal_is_one_line_on_stderr_and_exit_status_1(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"
    runner.invoke(pki, ["init", "--dir", str(d)])

    result = runner.invoke(pki, ["init", "--dir", str(d)])

    assert result.exit_code == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "ca.pem already exists" in result.stderr and "--force" in result.stderr


def test_cli_bad_id_exits_1_naming_the_id(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"
    runner.invoke(pki, ["init", "--dir", str(d)])

    result = runner.invoke(pki, ["issue", "--dir", str(d), "--sae", "SAE A"])

    assert result.exit_code == 1
    assert "sae id 'SAE A' is invalid" in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--node", "KME_A", "--sae", "SAE_A"],
        ["--sae", "SAE_A", "--host", "10.0.0.1"],
        ["--node", "KME_A", "--days", "0"],
        ["--node", "KME_A", "--seconds", "0"],
        ["--sae", "SAE_A", "--seconds", "60"],
    ],
)
def test_cli_issue_usage_errors_exit_2(tmp_path: Path, args: list[str]) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"
    runner.invoke(pki, ["init", "--dir", str(d)])

    result = runner.invoke(pki, ["issue", "--dir", str(d), *args])

    assert result.exit_code == 2
    assert all_files(d) == CA_FILES


def test_a_node_certificate_valid_for_seconds_expires_that_many_seconds_from_now(
    pki_dir: Path,
) -> None:
    before = dt.datetime.now(dt.UTC)
    files = issue_node(pki_dir, "KME_A", seconds=30)
    after = dt.datetime.now(dt.UTC)
    not_after = load_cert(files.cert).not_valid_after_utc
    # X.509 times have whole seconds
    assert before + dt.timedelta(seconds=29) <= not_after <= after + dt.timedelta(seconds=30)
    with pytest.raises(PkiError, match="at least 1 second"):
        issue_node(pki_dir, "KME_B", seconds=0)


# --- revocation -----------------------------------------------------------------------


def load_crl(directory: Path) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl((directory / "crl.pem").read_bytes())


def revoked_serials(directory: Path) -> set[int]:
    return {r.serial_number for r in load_crl(directory)}


def test_init_writes_an_empty_crl_signed_by_the_ca(pki_dir: Path) -> None:
    crl = load_crl(pki_dir)
    ca = load_cert(pki_dir / "ca.pem")

    assert crl.is_signature_valid(ca.public_key())
    assert crl.issuer == ca.subject
    assert len(crl) == 0
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=80)
    assert mode(pki_dir / "crl.pem") == 0o644


def test_revoke_lists_the_current_certificate_in_a_new_crl(pki_dir: Path) -> None:
    files = issue_sae(pki_dir, "SAE_A")
    issue_node(pki_dir, "KME_A")
    before = load_crl(pki_dir).extensions.get_extension_for_class(x509.CRLNumber).value

    (revoked,) = revoke(pki_dir, "SAE_A")

    serial = load_cert(files.cert).serial_number
    assert (revoked.kind, revoked.id, int(revoked.serial, 16)) == ("sae", "SAE_A", serial)
    assert revoked_serials(pki_dir) == {serial}
    crl = load_crl(pki_dir)
    assert crl.is_signature_valid(load_cert(pki_dir / "ca.pem").public_key())
    entry = crl.get_revoked_certificate_by_serial_number(serial)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.unspecified
    )
    after = crl.extensions.get_extension_for_class(x509.CRLNumber).value
    assert after.crl_number > before.crl_number


def test_revoke_with_a_kind_leaves_the_other_kind_of_the_same_name(pki_dir: Path) -> None:
    node = issue_node(pki_dir, "X1")
    sae = issue_sae(pki_dir, "X1")

    revoke(pki_dir, "X1", kind="sae")

    assert revoked_serials(pki_dir) == {load_cert(sae.cert).serial_number}
    revoke(pki_dir, "X1")
    assert revoked_serials(pki_dir) == {load_cert(p).serial_number for p in (sae.cert, node.cert)}


def test_revoking_a_name_without_a_current_certificate_says_so(pki_dir: Path) -> None:
    issue_sae(pki_dir, "SAE_A")
    revoke(pki_dir, "SAE_A")

    with pytest.raises(PkiError, match="'SAE_A' has no current certificate.*pki list"):
        revoke(pki_dir, "SAE_A")
    with pytest.raises(PkiError, match="node 'SAE_B' has no current certificate"):
        revoke(pki_dir, "SAE_B", kind="node")


def test_reissuing_a_name_revokes_its_previous_certificate_as_superseded(pki_dir: Path) -> None:
    old = load_cert(issue_sae(pki_dir, "SAE_A").cert)

    new = load_cert(issue_sae(pki_dir, "SAE_A", force=True).cert)

    assert revoked_serials(pki_dir) == {old.serial_number}
    entry = load_crl(pki_dir).get_revoked_certificate_by_serial_number(old.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.superseded
    )
    infos = [i for i in list_certificates(pki_dir) if i.id == "SAE_A"]
    assert [(i.serial, i.revoked is None, i.reason, i.path is None) for i in infos] == [
        (f"{new.serial_number:x}", True, "", False),
        (f"{old.serial_number:x}", False, "superseded", True),
    ]


def test_list_marks_a_revoked_certificate_whose_file_is_still_there(pki_dir: Path) -> None:
    issue_node(pki_dir, "KME_A")
    revoke(pki_dir, "KME_A")

    (info,) = [i for i in list_certificates(pki_dir) if i.id == "KME_A"]

    assert info.path == pki_dir / "nodes/KME_A.pem"
    assert info.revoked is not None and info.reason == "revoked"


def test_a_pki_directory_from_before_the_index_is_indexed_from_its_files(pki_dir: Path) -> None:
    old = load_cert(issue_node(pki_dir, "KME_A").cert)
    (pki_dir / "index.json").unlink()

    revoke(pki_dir, "KME_A")

    assert revoked_serials(pki_dir) == {old.serial_number}


def test_a_new_ca_starts_with_an_empty_crl(pki_dir: Path) -> None:
    issue_node(pki_dir, "KME_A")
    revoke(pki_dir, "KME_A")

    init_ca(pki_dir, force=True)

    assert revoked_serials(pki_dir) == set()


def test_sign_crl_renews_the_next_update(pki_dir: Path) -> None:
    issue_node(pki_dir, "KME_A")
    revoke(pki_dir, "KME_A")

    sign_crl(pki_dir, days=400)

    crl = load_crl(pki_dir)
    assert len(crl) == 1
    assert crl.next_update_utc is not None
    assert crl.next_update_utc > dt.datetime.now(dt.UTC) + dt.timedelta(days=399)


def test_key_directories_are_0700_even_under_a_permissive_umask(
    tmp_path: Path, umask_0: None
) -> None:
    directory = tmp_path / "pki"
    init_ca(directory)
    issue_node(directory, "KME_A")
    issue_sae(directory, "SAE_A")

    for sub in (directory, directory / "nodes", directory / "saes"):
        assert mode(sub) == 0o700
    for key in ("ca.key", "nodes/KME_A.key", "saes/SAE_A.key"):
        assert mode(directory / key) == 0o600


def test_cli_revoke_writes_the_crl_and_list_shows_it(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"
    runner.invoke(pki, ["init", "--dir", str(d)])
    runner.invoke(pki, ["issue", "--dir", str(d), "--sae", "SAE_A"])

    result = runner.invoke(pki, ["revoke", "--dir", str(d), "SAE_A", "--kind", "sae"])
    table = runner.invoke(pki, ["list", "--dir", str(d)])
    rows = json.loads(runner.invoke(pki, ["list", "--dir", str(d), "--json"]).output)
    again = runner.invoke(pki, ["revoke", "--dir", str(d), "SAE_A"])

    assert result.exit_code == 0, result.output
    assert "revoked sae SAE_A" in result.output and str(d / "crl.pem") in result.output
    assert table.output.splitlines()[-1].split()[:4][3] == "revoked"
    assert rows[-1]["reason"] == "revoked" and rows[-1]["revoked"] is not None
    assert again.exit_code == 1 and "no current certificate" in again.stderr


def test_cli_crl_signs_the_list_again(tmp_path: Path) -> None:
    runner = CliRunner()
    d = tmp_path / "pki"
    runner.invoke(pki, ["init", "--dir", str(d)])

    result = runner.invoke(pki, ["crl", "--dir", str(d), "--days", "7"])

    assert result.exit_code == 0
    next_update = load_crl(d).next_update_utc
    assert next_update is not None
    assert next_update < dt.datetime.now(dt.UTC) + dt.timedelta(days=8)
