"""``qkmsctl topology``, ``node add|remove``, ``link add|remove``: thin commands over a
(fake) node's admin socket."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from cli.main import qkmsctl
from protocol import Error

from .fake_admin import fake_admin

TOPOLOGY = {
    "controller": "KME2",
    "term": 7,
    "nodes": [
        {
            "node_id": "KME1",
            "state": "up",
            "software": "0.1.0",
            "location": "Daejeon",
            "report_age_s": 0.4,
            "peers": ["KME2", "KME3"],
            "registered": False,
            "demand": [],
            "relay": None,
        },
        {
            "node_id": "KME3",
            "state": "lost",
            "software": "0.1.0",
            "location": "",
            "report_age_s": 9.0,
            "peers": [],
            "registered": False,
            "demand": [],
            "relay": None,
        },
    ],
    "links": [
        {
            "link_id": "KME1~KME2",
            "a": "KME1",
            "b": "KME2",
            "kind": "qkd",
            "state": "up",
            "registered": False,
            "rate_bps": 8192.0,
            "qber": 0.021,
            "ready_bits": {"KME1": 65536, "KME2": 32768},
            "device": {"KME1": "up"},
        },
        {
            "link_id": "KME2~KME3",
            "a": "KME2",
            "b": "KME3",
            "kind": "qkd",
            "state": "down",
            "registered": False,
            "rate_bps": 0.0,
            "qber": None,
            "ready_bits": {"KME2": 0, "KME3": 0},
            "device": {},
        },
        {
            "link_id": "KME1~KME3",
            "a": "KME1",
            "b": "KME3",
            "kind": "virtual",
            "state": "up",
            "registered": False,
            "rate_bps": 4096.0,
            "qber": None,
            "ready_bits": {"KME1": 8192, "KME3": 0},
            "device": {},
            "hops": ["KME1", "KME2", "KME3"],
        },
    ],
    "routes": [
        {
            "source": "KME1",
            "destination": "KME3",
            "paths": [{"nodes": ["KME1", "KME2", "KME3"], "cost": 2.0}],
        }
    ],
}


@pytest.fixture
def sock() -> Iterator[Path]:
    """A socket path short enough for AF_UNIX (at most 107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="qkmsctl-"))
    yield path / "admin.sock"
    shutil.rmtree(path)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_topology_prints_nodes_links_and_routes(sock: Path) -> None:
    with fake_admin(sock, {"topology": TOPOLOGY}) as node:
        result = invoke("topology", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    assert node.requests == [("topology", {})]
    out = result.stdout
    assert out.startswith("controller KME2 (term 7)")
    rows: dict[str, list[str]] = {}
    for line in out.splitlines():
        if line.strip():
            rows.setdefault(line.split()[0], line.split())  # the first table naming it
    assert rows["KME1"][:3] == ["KME1", "up", "Daejeon"]
    assert rows["KME3"][:2] == ["KME3", "lost"]
    assert rows["KME2~KME3"][1:6] == ["qkd", "KME2", "-", "KME3", "down"]
    assert rows["KME1~KME3"][-5:] == ["KME1", "->", "KME2", "->", "KME3"]
    assert "0.021" in out


def test_topology_json_is_the_daemon_s_answer(sock: Path) -> None:
    with fake_admin(sock, {"topology": TOPOLOGY}):
        result = invoke("topology", "--socket", str(sock), "--json")
    assert json.loads(result.stdout) == TOPOLOGY


def test_topology_dot_draws_down_links_dashed_and_a_pool_dotted(sock: Path) -> None:
    with fake_admin(sock, {"topology": TOPOLOGY}):
        result = invoke("topology", "--socket", str(sock), "--dot")
    lines = result.stdout.splitlines()
    assert lines[0] == "graph qkms {" and lines[-1] == "}"
    edge = {line.split("[")[0].strip(): line for line in lines if " -- " in line}
    assert "style=solid" in edge['"KME1" -- "KME2"']
    assert "style=dashed" in edge['"KME2" -- "KME3"']
    assert "style=dotted" in edge['"KME1" -- "KME3"']
    assert any(line.strip().startswith('"KME3" [') and "color=red" in line for line in lines)


def test_topology_etsi015_asks_for_that_format(sock: Path) -> None:
    answer = {"module": "etsi-qkd-sdn-node", "nodes": [], "qkms_names": {}}
    with fake_admin(sock, {"topology": answer}) as node:
        result = invoke("topology", "--socket", str(sock), "--format", "etsi015")
    assert node.requests == [("topology", {"format": "etsi015"})]
    assert json.loads(result.stdout) == answer


def test_topology_two_output_choices_is_a_usage_error(sock: Path) -> None:
    result = invoke("topology", "--socket", str(sock), "--json", "--dot")
    assert result.exit_code == 2


def test_topology_on_a_node_that_is_not_the_controller_says_whom_to_ask(sock: Path) -> None:
    refusal = Error(code="no-controller", message="topology: KME1 is not the controller; ask KME2")
    with fake_admin(sock, {"topology": refusal}):
        result = invoke("topology", "--socket", str(sock))
    assert result.exit_code == 1
    assert "ask KME2" in result.stderr


def test_node_add_and_link_remove_send_the_registration(sock: Path) -> None:
    answers = {
        "register": {
            "controller": "KME2",
            "entry": {"kind": "link", "name": "KME1~KME4", "a": "KME1", "b": "KME4",
                      "location": "", "removed": True},
        }
    }  # fmt: skip
    with fake_admin(sock, answers) as node:
        added = invoke("node", "add", "KME4", "--location", "Seoul", "--socket", str(sock))
        removed = invoke("link", "remove", "KME1", "KME4", "--socket", str(sock))
    assert node.requests == [
        ("register", {"kind": "node", "action": "add", "name": "KME4", "location": "Seoul"}),
        ("register", {"kind": "link", "action": "remove", "name": "", "a": "KME1", "b": "KME4"}),
    ]
    assert added.exit_code == 0 and removed.exit_code == 0
    assert removed.stdout.startswith("link KME1~KME4 (KME1 - KME4) taken out of the network")
    assert "controller KME2" in removed.stdout


def test_a_refused_registration_is_an_error_line(sock: Path) -> None:
    refusal = Error(code="bad-registration", message="link KME1~KME4: node KME4 is removed")
    with fake_admin(sock, {"register": refusal}):
        result = invoke("link", "add", "KME1", "KME4", "--socket", str(sock))
    assert result.exit_code == 1
    assert "node KME4 is removed" in result.stderr
