"""``qkmsctl profile ...`` over a (fake) admin socket: what it asks, what it prints."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli.main import qkmsctl
from protocol import Error

from .fake_admin import fake_admin

PROFILE: dict[str, Any] = {
    "name": "gold",
    "node_pairs": ["KME_A~KME_C"],
    "sae_pairs": ["SAE_A>SAE_B"],
    "key_size": 512,
    "key_validity_s": None,
    "rate_bps": 10240.0,
    "share": None,
    "priority": 5.0,
    "period_s": 60.0,
    "active": True,
}
STATUS: dict[str, Any] = {
    "name": "gold",
    "profile": PROFILE,
    "active": True,
    "period_started_at": time.time() - 5,
    "keys_served": 3,
    "bits_served": 1536,
    "bits_generated": 4096,
    "target_bits": 51200,
    "shortfall_bits": 49664,
    "keys_served_total": 7,
    "conflict": "",
}


@pytest.fixture
def sock() -> Iterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="qkmsctl-"))
    yield directory / "admin.sock"
    shutil.rmtree(directory)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_profile_add_sends_the_pairs_and_settings_it_was_given(sock: Path) -> None:
    with fake_admin(sock, {"profile_add": STATUS}) as node:
        result = invoke(
            "profile", "add", "gold", "--node-pair", "KME_A", "KME_C", "--sae-pair", "SAE_A",
            "SAE_B", "--key-size", "512", "--rate", "10240", "--priority", "5", "--active",
            "--socket", str(sock),
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    sent = {
        "name": "gold",
        "node_pairs": ["KME_A~KME_C"],
        "sae_pairs": ["SAE_A>SAE_B"],
        "key_size": 512,
        "rate_bps": 10240.0,
        "priority": 5.0,
        "active": True,
    }
    assert node.requests == [("profile_add", {"profile": sent})]
    assert "profile gold: active" in result.stdout
    assert "3 keys, 1.5 kbit served" in result.stdout


def test_profile_list_is_a_table_of_the_service_state(sock: Path) -> None:
    with fake_admin(sock, {"profiles": {"profiles": [STATUS]}}):
        result = invoke("profile", "list", "--socket", str(sock))
    lines = result.stdout.splitlines()
    assert lines[0].split()[:4] == ["profile", "state", "priority", "serves"]
    assert lines[2].split()[:3] == ["gold", "active", "5"] and "10.0 kbit/s" in lines[2]


def test_profile_list_says_how_to_add_one_when_there_is_none(sock: Path) -> None:
    with fake_admin(sock, {"profiles": {"profiles": []}}):
        result = invoke("profile", "list", "--socket", str(sock))
    assert "qkmsctl profile add" in result.stdout


def test_profile_show_json_is_the_daemon_s_answer(sock: Path) -> None:
    with fake_admin(sock, {"profile": STATUS}) as node:
        result = invoke("profile", "show", "gold", "--socket", str(sock), "--json")
    assert json.loads(result.stdout) == STATUS
    assert node.requests == [("profile", {"name": "gold"})]


def test_profile_set_sends_typed_values_and_null_drops_a_field(sock: Path) -> None:
    with fake_admin(sock, {"profile_set": STATUS}) as node:
        result = invoke(
            "profile", "set", "gold", "priority=9", "rate_bps=null", "share=0.5",
            "--socket", str(sock),
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    changes = {"priority": 9, "rate_bps": None, "share": 0.5}
    assert node.requests == [("profile_set", {"name": "gold", "changes": changes})]


@pytest.mark.parametrize(
    ("command", "method"),
    [("activate", "profile_activate"), ("deactivate", "profile_deactivate")],
)
def test_activate_and_deactivate_name_the_profile(sock: Path, command: str, method: str) -> None:
    with fake_admin(sock, {method: STATUS}) as node:
        result = invoke("profile", command, "gold", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert node.requests == [(method, {"name": "gold"})]


def test_profile_remove_says_what_is_left(sock: Path) -> None:
    with fake_admin(sock, {"profile_remove": {"removed": "gold", "profiles": ["bulk"]}}):
        result = invoke("profile", "remove", "gold", "--socket", str(sock))
    assert result.stdout == "removed gold (left: bulk)\n"


def test_a_refused_profile_shows_the_daemon_s_reason(sock: Path) -> None:
    refusal = Error(code="bad-message", message="profile 'x': give a target rate or a share")
    with fake_admin(sock, {"profile_add": refusal}):
        result = invoke("profile", "add", "x", "--sae-pair", "A", "B", "--socket", str(sock))
    assert result.exit_code != 0
    assert "give a target rate or a share" in result.output


def test_a_change_through_the_controller_lists_each_node_s_outcome(sock: Path) -> None:
    answer = {
        "controller": "KME_D",
        "op": "activate",
        "name": "gold",
        "nodes": [
            {"node": "KME_A", "result": "applied", "message": ""},
            {"node": "KME_C", "result": "skipped", "message": "not held here"},
        ],
        "profile": None,
        "status": None,
    }
    with fake_admin(sock, {"profile_activate": answer}) as node:
        result = invoke("profile", "activate", "gold", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert node.requests == [("profile_activate", {"name": "gold"})]
    lines = result.stdout.splitlines()
    assert lines[0] == "profile gold: activate through controller KME_D"
    assert lines[3].split() == ["KME_A", "applied"]


def test_profile_local_changes_the_one_node(sock: Path) -> None:
    with fake_admin(sock, {"profile_remove": {"removed": "gold", "profiles": []}}) as node:
        assert invoke("profile", "remove", "gold", "--local", "--socket", str(sock)).exit_code == 0
    assert node.requests == [("profile_remove", {"name": "gold", "local": True})]
