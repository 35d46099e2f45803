"""``qkmsctl keystore rotate-master`` runs ``qkmsd rotate-master`` on a stopped node."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from cli.main import qkmsctl
from qkmsd.keystore import KeyStore, NewBlock, generate_master_key, load_master_key


def node(tmp_path: Path, *, key_file: bool = True) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    master = tmp_path / "master.key"
    generate_master_key(master)
    with KeyStore.open(state / "keystore.sqlite", load_master_key(master)) as store:
        store.add_blocks([NewBlock("A~B", i, bytes([i]) * 64, 0.01, 1.0, True) for i in range(3)])
    config = tmp_path / "qkmsd.toml"
    key_line = f'master_key_file = "{master}"\n' if key_file else ""
    config.write_text(
        f'[node]\nid = "A"\nstate_dir = "{state}"\n{key_line}'
        '[tls]\nca = "ca.pem"\ncert = "a.pem"\nkey = "a.key"\n'
        '[listen]\npeer = "127.0.0.1:7001"\nadmin_socket = "/run/qkms/a.sock"\n'
    )
    return config


def test_rotate_master_re_encrypts_and_says_what_it_did(tmp_path: Path) -> None:
    config = node(tmp_path)
    old = load_master_key(tmp_path / "master.key")
    result = CliRunner().invoke(qkmsctl, ["keystore", "rotate-master", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "re-encrypted 3 block(s) and 0 service key(s) under a new master key" in result.stdout
    new = load_master_key(tmp_path / "master.key")
    assert new != old and old.hex() not in result.output and new.hex() not in result.output
    with KeyStore.open(tmp_path / "state" / "keystore.sqlite", new) as store:
        assert store.read_block("A~B", 2) == bytes([2]) * 64


def test_rotate_master_of_a_running_node_is_refused_and_changes_nothing(tmp_path: Path) -> None:
    config = node(tmp_path)
    old = load_master_key(tmp_path / "master.key")
    with KeyStore.open(tmp_path / "state" / "keystore.sqlite", old):  # the "running node"
        result = CliRunner().invoke(qkmsctl, ["keystore", "rotate-master", "--config", str(config)])
    assert result.exit_code == 1
    assert "in use by another qkmsd" in result.stderr
    assert load_master_key(tmp_path / "master.key") == old


def test_rotate_master_needs_a_key_file(tmp_path: Path) -> None:
    config = node(tmp_path, key_file=False)
    result = CliRunner().invoke(qkmsctl, ["keystore", "rotate-master", "--config", str(config)])
    assert result.exit_code == 1
    assert "master_key_file is not set" in result.stderr
