from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from qkmsd.keystore import MasterKeyError, generate_master_key, load_master_key

KEY = bytes(range(32))


def write(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.write_bytes(data)
    path.chmod(mode)
    return path


def test_generated_key_loads_back_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "master.key"
    generate_master_key(path)
    text = path.read_bytes()
    assert len(text) == 64 and bytes.fromhex(text.decode())
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_master_key(path) == bytes.fromhex(text.decode())


def test_generate_refuses_to_overwrite(tmp_path: Path) -> None:
    path = write(tmp_path / "master.key", KEY)
    with pytest.raises(MasterKeyError, match="already exists; refusing to overwrite"):
        generate_master_key(path)
    assert path.read_bytes() == KEY


@pytest.mark.parametrize(
    "content", [KEY, KEY.hex().encode(), KEY.hex().encode() + b"\n", KEY.hex().upper().encode()]
)
def test_raw_and_hex_forms_are_accepted(tmp_path: Path, content: bytes) -> None:
    assert load_master_key(write(tmp_path / "k", content)) == KEY


@pytest.mark.parametrize(
    "content", [b"", KEY[:31], KEY + b"\n", KEY.hex().encode()[:-1], b"zz" * 32, b"0" * 1000]
)
def test_malformed_keys_are_refused_without_echoing_them(tmp_path: Path, content: bytes) -> None:
    path = write(tmp_path / "k", content)
    with pytest.raises(MasterKeyError, match=f"master key {path}: expected 32 raw bytes") as info:
        load_master_key(path)
    assert KEY.hex()[:8] not in str(info.value) and "zz" not in str(info.value)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o610, 0o601])
def test_group_or_other_bits_are_refused_with_the_chmod_fix(tmp_path: Path, mode: int) -> None:
    path = write(tmp_path / "master.key", KEY, mode)
    with pytest.raises(MasterKeyError) as info:
        load_master_key(path)
    message = str(info.value)
    assert str(path) in message and f"run `chmod 600 {path}`" in message
    assert f"{mode:04o}" in message


def test_stricter_modes_are_accepted(tmp_path: Path) -> None:
    assert load_master_key(write(tmp_path / "a", KEY, 0o400)) == KEY
    assert load_master_key(write(tmp_path / "b", KEY, 0o700)) == KEY


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the file away")
def test_a_file_owned_by_another_user_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "master.key", KEY)
    os.chown(path, 65534, -1)
    with pytest.raises(MasterKeyError, match="owned by uid 65534, not by this user"):
        load_master_key(path)


def test_credentials_directory_is_used_when_no_path_is_given(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(tmp_path / "master.key", KEY.hex().encode() + b"\n", 0o400)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_master_key(None) == KEY


def test_systemd_acl_form_of_a_credential_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # systemd: 0400 root-owned plus an ACL for the service user, which stat shows as 0440.
    path = write(tmp_path / "master.key", KEY, 0o440)
    if path.stat().st_uid != 0:
        pytest.skip("needs a root-owned file")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert load_master_key(None) == KEY
    path.chmod(0o444)
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(None)


def test_the_acl_form_is_not_accepted_for_an_explicit_path(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="chmod 600"):
        load_master_key(write(tmp_path / "master.key", KEY, 0o440))


def test_no_path_and_no_credentials_directory_is_an_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(MasterKeyError, match="LoadCredential=master.key:"):
        load_master_key(None)


def test_a_missing_credential_names_the_unit_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    with pytest.raises(MasterKeyError, match=r"not found; add LoadCredential=master.key:FILE"):
        load_master_key(None)


def test_a_missing_or_odd_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(MasterKeyError, match="not found"):
        load_master_key(tmp_path / "nope")
    (tmp_path / "dir").mkdir(mode=0o700)
    with pytest.raises(MasterKeyError, match="not a regular file"):
        load_master_key(tmp_path / "dir")
