"""``qkmsctl alarms`` and ``qkmsctl alarm ack|clear``: thin commands over a (fake) node's
admin socket."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.alarms import follow
from cli.main import qkmsctl
from protocol import Error

from .fake_admin import fake_admin

NOW = time.time()
ALARMS = {
    "active": [
        {
            "code": "qber-high",
            "resource": "KME_A~KME_B",
            "severity": "major",
            "raised_at": NOW - 30,
            "changed_at": NOW - 30,
            "value": 0.13,
            "acknowledged": False,
            "action": "stop-link",
        }
    ],
    "history": [
        {
            "kind": "raised",
            "code": "qber-high",
            "resource": "KME_A~KME_B",
            "severity": "major",
            "previous": "cleared",
            "value": 0.13,
            "at": NOW - 30,
        }
    ],
}


@pytest.fixture
def sock() -> Iterator[Path]:
    """A socket path short enough for a Unix socket (at most 107 bytes)."""
    directory = Path(tempfile.mkdtemp(prefix="qkmsctl-"))
    yield directory / "admin.sock"
    shutil.rmtree(directory)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_alarms_lists_the_active_ones_then_the_history(sock: Path) -> None:
    with fake_admin(sock, {"alarms": ALARMS}) as node:
        result = invoke("alarms", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == "1 active alarm(s)"
    assert lines[3].split()[:4] == ["major", "qber-high", "KME_A~KME_B", "0.13"]
    assert "history (newest first)" in lines
    assert node.requests == [("alarms", {})]


def test_alarms_json_is_the_daemon_s_answer(sock: Path) -> None:
    with fake_admin(sock, {"alarms": ALARMS}):
        result = invoke("alarms", "--socket", str(sock), "--json")
    assert json.loads(result.stdout) == ALARMS


def test_alarm_ack_names_the_alarm_by_code_and_resource(sock: Path) -> None:
    with fake_admin(sock, {"alarm_ack": {"acknowledged": True}}) as node:
        result = invoke("alarm", "ack", "qber-high", "KME_A~KME_B", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert node.requests == [("alarm_ack", {"code": "qber-high", "resource": "KME_A~KME_B"})]


def test_clearing_an_alarm_that_is_not_active_is_an_error_with_the_daemon_s_reason(
    sock: Path,
) -> None:
    refusal = Error(code="bad-message", message="alarm_clear: no active alarm x on 'y'", id=1)
    with fake_admin(sock, {"alarm_clear": refusal}):
        result = invoke("alarm", "clear", "x", "y", "--socket", str(sock))
    assert result.exit_code != 0
    assert "no active alarm x on 'y'" in result.output


def test_controller_names_the_holder_and_the_eligible_nodes(sock: Path) -> None:
    answer = {
        "node_id": "KME_B",
        "eligible": True,
        "role": "leader",
        "term": 3,
        "controller": "KME_B",
        "lease_left_s": 1.5,
        "electors": {"KME_A": 50, "KME_B": 100},
    }
    with fake_admin(sock, {"controller": answer}):
        result = invoke("controller", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert "controller  KME_B (this node; lease 1.5 s left)" in result.stdout
    assert "KME_A (priority 50), KME_B (priority 100)" in result.stdout


def event(at: float, kind: str = "raised", code: str = "peer-down") -> dict[str, object]:
    return {
        "kind": kind,
        "code": code,
        "resource": "KME_B",
        "severity": "major",
        "previous": "cleared",
        "value": 1.5,
        "at": at,
        "by": "",
    }


def test_alarm_history_asks_from_the_start_of_the_period_and_prints_oldest_first(
    sock: Path,
) -> None:
    answer = {"active": [], "history": [event(NOW - 10, "cleared"), event(NOW - 60)]}
    with fake_admin(sock, {"alarms": answer}) as node:
        result = invoke("alarm", "history", "--since", "15m", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    [(method, params)] = node.requests
    assert method == "alarms" and params["limit"] == 1000
    assert abs(params["since"] - (time.time() - 900)) < 60
    kinds = [line.split()[2] for line in result.stdout.splitlines()[2:]]
    assert kinds == ["raised", "cleared"]


def test_following_emits_each_event_once_in_order_across_polls() -> None:
    polls = [
        [event(100.0)],
        [event(101.0, "acknowledged"), event(100.0)],  # the newest first, a tie repeated
        [event(101.0, "acknowledged")],
        [
            event(103.0, "cleared"),
            event(103.0, "raised", "link-down"),
            event(101.0, "acknowledged"),
        ],
    ]
    asked: list[float] = []
    out: list[tuple[float, str]] = []

    def fetch(since: float) -> list[dict[str, object]]:
        asked.append(since)
        return polls[len(asked) - 1]

    follow(
        fetch,
        lambda e: out.append((e["at"], e["kind"])),  # type: ignore[arg-type]
        since=50.0,
        pause=lambda: None,
        polls=4,
    )
    assert out == [
        (100.0, "raised"),
        (101.0, "acknowledged"),
        (103.0, "cleared"),
        (103.0, "raised"),
    ]
    assert asked == [50.0, 100.0, 101.0, 101.0]


def test_controller_on_a_node_that_is_not_eligible_names_whom_it_reports_to(sock: Path) -> None:
    answer = {
        "node_id": "KME_C",
        "eligible": False,
        "role": "not eligible",
        "controller": "KME_B",
        "term": 3,
        "electors": {"KME_A": 50, "KME_B": 100},
        "reporting": {
            "following": "KME_B",
            "term": 3,
            "reports_sent": 12,
            "reports_refused": 0,
            "last_refusal": "",
            "route_settings": 2,
            "routes_installed": ["KME_A"],
            "budgets": {},
        },
    }
    with fake_admin(sock, {"controller": answer}):
        result = invoke("controller", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert "not eligible for the controller role" in result.stdout
    assert "controller  KME_B (term 3)" in result.stdout
    assert "12 sent to KME_B, 0 refused; routes from the controller to KME_A" in result.stdout


def test_alarm_history_network_asks_the_controller_and_names_each_event_s_node(
    sock: Path,
) -> None:
    answer = {
        "controller": "KME_D",
        "kept": 2,
        "events": [
            {**event(NOW - 10, "cleared"), "node": "KME_A"},
            {**event(NOW - 60), "node": "KME_B"},
        ],
    }
    with fake_admin(sock, {"network_alarms": answer}) as node:
        result = invoke(
            "alarm", "history", "--network", "--code", "link-down", "--socket", str(sock)
        )
    assert result.exit_code == 0, result.output
    [(method, params)] = node.requests
    assert method == "network_alarms" and params["code"] == "link-down"
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert [(r[0], r[3]) for r in rows] == [("KME_B", "raised"), ("KME_A", "cleared")]


def test_alarm_history_from_a_node_without_network_is_a_usage_error(sock: Path) -> None:
    result = invoke("alarm", "history", "--from", "KME_A", "--socket", str(sock))
    assert result.exit_code == 2 and "--network" in result.output
