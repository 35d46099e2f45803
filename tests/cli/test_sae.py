"""``qkmsctl sae``: an SAE's view of a real lab KME pair (examples/pair.toml)."""

from __future__ import annotations

import base64
import json
import re
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli._lab import Lab
from cli._pki import issue_sae
from cli._topology import load_topology
from cli.main import qkmsctl
from qkms_client import Etsi014Client, ServiceUnavailable, TransportError

PAIR = Path(__file__).resolve().parents[2] / "examples" / "pair.toml"
WAIT_S = 30.0
FINGERPRINT = re.compile(r"\b[0-9a-f]{16}\b")


def wait_for_key(
    manifest: dict[str, Any], master: str, slave: str, files: dict[str, str] | None = None
) -> None:
    """Until ``master``'s KME can serve it 16 keys for ``slave``.

    ``files``: the master's ``kme``, ``cert`` and ``key``, for an SAE not in the manifest.
    """
    files = files or manifest["saes"][master]
    url = manifest["kmes"][files["kme"]]["url"]
    with Etsi014Client(
        url, ca=manifest["ca"], cert=files["cert"], key=files["key"], timeout=5.0
    ) as client:
        deadline = time.monotonic() + WAIT_S
        while True:
            try:
                if client.status(slave).stored_key_count >= 16:
                    return
            except (ServiceUnavailable, TransportError):
                pass  # a node still starting
            assert time.monotonic() < deadline, f"{master} never had key for {slave}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """The pair lab, plus SAE_P at KME_B with a PQC key (``register-pqc``); down afterwards.

    SAE_P is not in lab.json: it is reached with explicit ``--cert``/``--key``.
    """
    base = tmp_path_factory.mktemp("sae")
    lab = Lab(base / "lab")
    try:
        manifest = lab.up(load_topology(PAIR))
        pqc = [str(base / "sae_p.pqc.key"), str(base / "sae_p.pqc.pub")]
        made = CliRunner().invoke(
            qkmsctl, ["sae", "register-pqc", "--out", pqc[0], "--public-out", pqc[1]]
        )
        assert made.exit_code == 0, made.output
        issue_sae(lab.dir / "pki", "SAE_P")
        lab.down()
        for node, kme in manifest["kmes"].items():
            lines = ["", '[saes."SAE_P"]', 'kme = "KME_B"']
            if node == "KME_B":
                lines.append(f"pqc_public_key = {json.dumps(pqc[1])}")
            with open(kme["config"], "a") as config:
                config.write("\n".join(lines) + "\n")
            lab.start(node)
        wait_for_key(lab.manifest(), "SAE_A", "SAE_B")
        # Each end cuts keys from the blocks it owns: KME_B may have none ready yet.
        saes = lab.dir / "pki" / "saes"
        sae_p = {"kme": "KME_B", "cert": str(saes / "SAE_P.pem"), "key": str(saes / "SAE_P.key")}
        wait_for_key(lab.manifest(), "SAE_P", "SAE_A", sae_p)
        yield lab
    finally:
        if lab.manifest_path.exists():
            lab.down()


def as_sae_p(lab: Lab, *args: str) -> Result:
    """``qkmsctl sae ARGS`` as SAE_P (explicit credentials) at KME_B."""
    manifest, pki = lab.manifest(), lab.dir / "pki"
    argv = ["sae", *args, "--url", manifest["kmes"]["KME_B"]["url"], "--ca", manifest["ca"]]
    argv += ["--cert", str(pki / "saes" / "SAE_P.pem"), "--key", str(pki / "saes" / "SAE_P.key")]
    result = CliRunner().invoke(qkmsctl, [*argv, "--timeout", "10"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def sae(lab: Lab, *args: str, who: str = "SAE_A") -> Result:
    """``qkmsctl sae ARGS --lab DIR --sae WHO --timeout 10``."""
    argv = ["sae", *args, "--lab", str(lab.dir), "--sae", who, "--timeout", "10"]
    result = CliRunner().invoke(qkmsctl, argv)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def keys_of(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    keys: list[dict[str, Any]] = json.loads(result.stdout)["keys"]
    return keys


def test_status_prints_the_etsi_fields(lab: Lab) -> None:
    result = sae(lab, "status", "SAE_B")
    assert result.exit_code == 0, result.output
    for field in ("source_KME_ID", "target_KME_ID", "stored_key_count", "max_key_per_request"):
        assert field in result.stdout
    assert re.search(r"source_KME_ID\s+KME_A", result.stdout)
    assert re.search(r"slave_SAE_ID\s+SAE_B", result.stdout)
    status = json.loads(sae(lab, "status", "SAE_B", "--json").stdout)
    assert status["master_SAE_ID"] == "SAE_A" and status["target_KME_ID"] == "KME_B"
    assert status["key_size"] == 256 and status["stored_key_count"] > 0


def test_both_saes_get_the_same_keys_by_fingerprint(lab: Lab) -> None:
    got = keys_of(sae(lab, "get-key", "SAE_B", "--number", "3", "--size", "512", "--json"))
    assert len(got) == 3 and all(k["size_bits"] == 512 and "key" not in k for k in got)
    ids = [k["key_ID"] for k in got]
    fetched = keys_of(sae(lab, "get-key-with-ids", "SAE_A", *ids, "--json", who="SAE_B"))
    assert {k["key_ID"]: k["fingerprint"] for k in fetched} == {
        k["key_ID"]: k["fingerprint"] for k in got
    }


def test_the_table_shows_ids_and_fingerprints_and_no_key(lab: Lab) -> None:
    result = sae(lab, "get-key", "SAE_B", "--number", "2")
    assert result.exit_code == 0, result.output
    assert "fingerprint" in result.stdout and "key (base64)" not in result.stdout
    [header, _, *rows] = result.stdout.strip().splitlines()
    assert len(rows) == 2
    key_ids = [row.split()[0] for row in rows]
    assert all(FINGERPRINT.search(row) for row in rows)
    # The other SAE's table: the same ids, the same fingerprints.
    other = sae(lab, "get-key-with-ids", "SAE_A", *key_ids, "--show-key", who="SAE_B")
    assert other.exit_code == 0, other.output
    assert "key (base64)" in other.stdout
    for row in rows:
        key_id, bits, fp = row.split()
        assert re.search(rf"{key_id}\s+{bits}\s+{fp}\s+\S+", other.stdout)


def test_show_key_prints_base64_of_size_bytes_and_only_then(lab: Lab) -> None:
    shown = keys_of(sae(lab, "get-key", "SAE_B", "--size", "1024", "--show-key", "--json"))
    [key] = shown
    raw = base64.b64decode(key["key"], validate=True)
    assert len(raw) == 1024 // 8
    # SAE_B fetches the same key without --show-key: its bytes appear in no form.
    result = sae(lab, "get-key-with-ids", "SAE_A", key["key_ID"], who="SAE_B")
    assert result.exit_code == 0, result.output
    assert key["key_ID"] in result.stdout and key["fingerprint"] in result.stdout
    assert key["key"] not in result.output
    assert raw.hex() not in result.output
    json_result = sae(lab, "get-key", "SAE_B", "--json")
    assert "key" not in keys_of(json_result)[0]


def test_register_pqc_writes_a_key_pair_and_the_config_lines(tmp_path: Path) -> None:
    out, public = tmp_path / "sae_a.pqc.key", tmp_path / "sae_a.pqc.pub"
    argv = ["sae", "register-pqc", "--out", str(out), "--public-out", str(public)]
    result = CliRunner().invoke(qkmsctl, [*argv, "--sae", "SAE_A"])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) & 0o022 == 0  # nobody else may change it
    assert "PRIVATE KEY" in out.read_text() and "PUBLIC KEY" in public.read_text()
    assert re.search(r"fingerprint \(SHA-256\): [0-9a-f]{64}", result.stdout)
    assert "[saes.SAE_A]" in result.stdout
    assert f'pqc_public_key = "{public.resolve()}"' in result.stdout
    assert out.read_text().strip() not in result.output
    # Never overwrites.
    before = out.read_bytes()
    again = CliRunner().invoke(qkmsctl, argv)
    assert again.exit_code == 1 and "already exists" in again.output
    assert out.read_bytes() == before


def test_pqc_wrapped_keys_are_unwrapped_with_pqc_key(lab: Lab, tmp_path: Path) -> None:
    """KME_B wraps SAE_P's keys for the key ``register-pqc`` made in the fixture."""
    got = keys_of(sae(lab, "get-key", "SAE_P", "--number", "2", "--json"))
    without = as_sae_p(lab, "get-key-with-ids", "SAE_A", got[0]["key_ID"])
    assert without.exit_code == 1
    assert "PQC-wrapped" in without.output and len(without.output.strip().splitlines()) == 1
    key_file = lab.dir.parent / "sae_p.pqc.key"
    fetched = as_sae_p(
        lab, "get-key-with-ids", "SAE_A", got[1]["key_ID"], "--pqc-key", str(key_file)
    )
    assert fetched.exit_code == 0, fetched.output
    assert got[1]["fingerprint"] in fetched.stdout and "unwrapped" in fetched.stdout
    as_master = as_sae_p(lab, "get-key", "SAE_A", "--pqc-key", str(key_file), "--json")
    assert as_master.exit_code == 0, as_master.output
    as_json = json.loads(as_master.stdout)
    assert as_json["pqc_unwrapped"] is True  # SAE_P as master: its keys come wrapped too
    bad = tmp_path / "not-a-key"
    bad.write_text("hello\n")
    result = sae(lab, "get-key", "SAE_B", "--pqc-key", str(bad))
    assert result.exit_code == 1
    assert f"PQC key {bad}" in result.output and "Traceback" not in result.output


def test_an_sae_the_kme_does_not_know_is_not_authorised(lab: Lab) -> None:
    manifest = lab.manifest()
    files = issue_sae(lab.dir / "pki", "SAE_X", force=True)
    argv = [
        "sae",
        "status",
        "SAE_B",
        "--url",
        manifest["kmes"]["KME_A"]["url"],
        "--ca",
        manifest["ca"],
        "--cert",
        str(files.cert),
        "--key",
        str(files.key),
        "--timeout",
        "10",
    ]
    result = CliRunner().invoke(qkmsctl, argv)
    assert result.exit_code == 1
    assert "not authorised" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_fetching_keys_meant_for_another_sae_is_not_authorised(lab: Lab) -> None:
    [key] = keys_of(sae(lab, "get-key", "SAE_B", "--json"))
    # SAE_A is the master, not a slave, of that key.
    result = sae(lab, "get-key-with-ids", "SAE_A", key["key_ID"], who="SAE_A")
    assert result.exit_code == 1
    assert "KME" in result.output and "Traceback" not in result.output


def test_kme_errors_are_one_clear_line(lab: Lab) -> None:
    unknown = sae(lab, "get-key", "NOBODY")
    assert unknown.exit_code == 1
    assert "refused the request (400)" in unknown.output and "NOBODY" in unknown.output
    gone = sae(
        lab, "get-key-with-ids", "SAE_A", "00000000-0000-4000-8000-000000000000", who="SAE_B"
    )
    assert gone.exit_code == 1 and "(400)" in gone.output
    too_many = sae(lab, "get-key", "SAE_B", "--number", "1000")
    assert too_many.exit_code == 1 and "max_key_per_request" in too_many.output
    for result in (unknown, gone, too_many):
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_an_unreachable_kme_is_one_clear_line(lab: Lab, tmp_path: Path) -> None:
    manifest = lab.manifest()
    sae_files = manifest["saes"]["SAE_A"]
    argv = ["sae", "status", "SAE_B", "--url", "https://127.0.0.1:1", "--ca", manifest["ca"]]
    argv += ["--cert", sae_files["cert"], "--key", sae_files["key"], "--timeout", "5"]
    result = CliRunner().invoke(qkmsctl, argv)
    assert result.exit_code == 1
    assert "request to KME 127.0.0.1:1 failed" in result.output
    # A KME whose certificate our CA did not sign: TLS fails, clearly.
    other_ca = tmp_path / "ca.pem"
    other_ca.write_text(Path(sae_files["cert"]).read_text())
    argv = ["sae", "status", "SAE_B", "--lab", str(lab.dir), "--sae", "SAE_A"]
    result = CliRunner().invoke(qkmsctl, [*argv, "--ca", str(other_ca), "--timeout", "5"])
    assert result.exit_code == 1
    assert "certificate" in result.output.lower() and "Traceback" not in result.output


def test_options_are_checked_before_any_request(lab: Lab, tmp_path: Path) -> None:
    result = CliRunner().invoke(qkmsctl, ["sae", "status", "SAE_B"])
    assert result.exit_code == 2 and "--lab DIR --sae SAE_ID" in result.output
    result = CliRunner().invoke(qkmsctl, ["sae", "status", "SAE_B", "--lab", str(lab.dir)])
    assert result.exit_code == 2 and "--lab needs --sae" in result.output
    result = sae(lab, "status", "SAE_B", who="SAE_Q")
    assert result.exit_code == 1 and "no SAE 'SAE_Q'" in result.output
    result = CliRunner().invoke(
        qkmsctl, ["sae", "status", "SAE_B", "--lab", str(tmp_path), "--sae", "SAE_A"]
    )
    assert result.exit_code == 1 and "no lab here" in result.output


def test_service_unavailable_reads_as_such() -> None:
    """The 503 line (a lab pair always has key, so this is the mapping on its own)."""
    from cli.sae import _error, _Kme

    kme = _Kme("https://kme:443", Path("ca"), Path("c"), Path("k"), "SAE_A", 1.0)
    message = str(_error(ServiceUnavailable("not enough key"), kme))
    assert message == "KME https://kme:443 cannot serve now (503): not enough key"
