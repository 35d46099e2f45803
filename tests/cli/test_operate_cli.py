"""``qkmsctl node drain|undrain|status`` and ``qkmsctl policy ...`` over a (fake) admin socket."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import qkmsctl
from protocol import Error

from .fake_admin import fake_admin

NODE = {
    "node_id": "KME_A",
    "draining": True,
    "drained_since": time.time() - 5,
    "requests_in_flight": 2,
}
POLICY = {
    "default": {"key_size": 256, "max_key_per_request": 128},
    "pairs": {"SAE_A>SAE_B": {"key_size": 512, "max_key_per_request": 128}},
    "overrides": {"SAE_A>SAE_B": {"key_size": 512}},
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


def test_node_drain_asks_the_node_and_says_what_it_does_now(sock: Path) -> None:
    # Drained 5 s before now, not before the module was imported (collection may be slow).
    with fake_admin(sock, {"node_drain": {**NODE, "drained_since": time.time() - 5}}) as node:
        result = invoke("node", "drain", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert node.requests == [("node_drain", {})]
    assert re.fullmatch(
        r"KME_A: draining \(since \d+s ago\), 2 ETSI 014 request\(s\) in flight\n", result.stdout
    )


def test_node_status_json_is_the_daemon_s_answer(sock: Path) -> None:
    with fake_admin(sock, {"node": NODE}):
        result = invoke("node", "status", "--socket", str(sock), "--json")
    assert json.loads(result.stdout) == NODE


def test_policy_set_sends_typed_values_for_the_pair(sock: Path) -> None:
    with fake_admin(sock, {"policy_set": POLICY}) as node:
        result = invoke(
            "policy", "set", "key_size=512", "derive=hkdf-sha256", "--pair", "SAE_A", "SAE_B",
            "--socket", str(sock),
        )  # fmt: skip
    assert result.exit_code == 0, result.output
    changes = {"key_size": 512, "derive": "hkdf-sha256"}
    assert node.requests == [("policy_set", {"scope": "SAE_A>SAE_B", "changes": changes})]
    assert "SAE_A>SAE_B *" in result.stdout and "overridden" in result.stdout


def test_policy_set_without_an_equals_sign_is_a_usage_error(sock: Path) -> None:
    result = invoke("policy", "set", "key_size", "--socket", str(sock))
    assert result.exit_code == 2 and "FIELD=VALUE" in result.output


def test_a_refused_policy_change_shows_the_daemon_s_reason(sock: Path) -> None:
    refusal = Error(
        code="bad-message", message="policy default: needs min_key_size <= key_size", id=1
    )
    with fake_admin(sock, {"policy_set": refusal}):
        result = invoke("policy", "set", "key_size=16", "--socket", str(sock))
    assert result.exit_code != 0 and "min_key_size <= key_size" in result.output


def test_policy_unset_and_reload_name_their_methods(sock: Path) -> None:
    with fake_admin(sock, {"policy_unset": POLICY, "policy_reload": POLICY}) as node:
        assert invoke("policy", "unset", "--socket", str(sock)).exit_code == 0
        assert invoke("policy", "reload", "--socket", str(sock)).exit_code == 0
    assert node.requests == [("policy_unset", {"scope": "default"}), ("policy_reload", {})]


DEVICES = {
    "devices": [
        {
            "link": "KME_A~KME_B",
            "peer": "KME_B",
            "driver": "vendor-tcp",
            "state": "stopped",
            "detail": "",
            "stopped": ["operator"],
        }
    ]
}


def test_devices_lists_each_qkd_link_s_driver_and_who_stopped_it(sock: Path) -> None:
    with fake_admin(sock, {"devices": DEVICES}):
        result = invoke("devices", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[2].split()
    assert row == ["KME_A~KME_B", "KME_B", "vendor-tcp", "stopped", "operator", "config"]


def test_devices_register_sends_the_driver_its_typed_parameters_and_the_peer(sock: Path) -> None:
    registered = {"devices": [{**DEVICES["devices"][0], "registered": True}]}
    with fake_admin(sock, {"device_register": registered, "device_remove": DEVICES}) as node:
        result = invoke(
            "devices", "register", "KME_A~KME_C", "--peer", "KME_C", "--driver", "paired",
            "--param", "rate_bps=1000", "--param", "seed=abc", "--socket", str(sock),
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        assert "runtime" in result.stdout
        assert invoke("devices", "remove", "KME_A~KME_C", "--socket", str(sock)).exit_code == 0
    params = {"rate_bps": 1000, "seed": "abc"}
    assert node.requests == [
        (
            "device_register",
            {"link": "KME_A~KME_C", "peer": "KME_C", "driver": "paired", "params": params},
        ),
        ("device_remove", {"link": "KME_A~KME_C"}),
    ]


def test_devices_register_with_a_parameter_without_a_value_is_a_usage_error(sock: Path) -> None:
    result = invoke(
        "devices", "register", "L", "--peer", "P", "--driver", "paired", "--param", "seed",
        "--socket", str(sock),
    )  # fmt: skip
    assert result.exit_code == 2 and "NAME=VALUE" in result.output


def test_device_stop_start_restart_name_the_link(sock: Path) -> None:
    answers = {m: DEVICES for m in ("device_stop", "device_start", "device_restart")}
    with fake_admin(sock, answers) as node:  # type: ignore[arg-type]
        for verb in ("stop", "start", "restart"):
            assert invoke("device", verb, "KME_A~KME_B", "--socket", str(sock)).exit_code == 0
    assert node.requests == [
        (f"device_{verb}", {"link": "KME_A~KME_B"}) for verb in ("stop", "start", "restart")
    ]
