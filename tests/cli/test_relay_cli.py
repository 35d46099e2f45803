"""``qkmsctl routes|relays|relay test``: thin commands over a (fake) node's admin socket."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli._render import node_status, relay_hops_table, relay_test_report
from cli.main import qkmsctl
from protocol import Error

from .fake_admin import fake_admin

ROUTES = {
    "routes": [
        {
            "destination": "KME3",
            "path": ["KME1", "KME2", "KME3"],
            "source": "computed",
            "cost": 2,
            "age_s": 3.4,
        }
    ]
}
RELAYS = {
    "relays": [
        {
            "relay_id": "r-2",
            "e2e_link_id": "KME1~KME3",
            "path": ["KME1", "KME2", "KME3"],
            "role": "source",
            "state": "started",
            "bits": 4096,
            "started_at": 1000.0,
            "ended_at": None,
            "error": "",
        },
        {
            "relay_id": "r-1",
            "e2e_link_id": "KME1~KME3",
            "path": ["KME1", "KME2", "KME3"],
            "role": "source",
            "state": "failed",
            "bits": 4096,
            "started_at": 990.0,
            "ended_at": 990.25,
            "error": "no answer from KME3 within 5 s",
        },
    ]
}
RELAY_TEST = {
    "destination": "KME3",
    "e2e_link_id": "KME1~KME3",
    "relays": 2,
    "seconds": 0.4213,
    "bytes": 1024,
    "hops": [{"hop": "KME1-KME2", "bytes": 1152}, {"hop": "KME2-KME3", "bytes": 1152}],
    "pool_ready_bits": 40960,
}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory with a short path: a Unix socket's path has at most 107 bytes."""
    path = Path(tempfile.mkdtemp(prefix="qkmsctl-"))
    yield path
    shutil.rmtree(path)


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def write_lab(directory: Path, sockets: dict[str, Path]) -> Path:
    """A lab.json naming only what the commands read: each node's admin socket."""
    lab = directory / "lab"
    lab.mkdir()
    kmes = {node: {"admin_socket": str(path)} for node, path in sockets.items()}
    (lab / "lab.json").write_text(json.dumps({"kmes": kmes}))
    return lab


def test_routes_prints_one_row_a_destination_with_its_path(short_dir: Path) -> None:
    sock = short_dir / "admin.sock"
    with fake_admin(sock, {"routes": ROUTES}) as node:
        result = invoke("routes", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    header, rule, row = result.stdout.splitlines()
    assert header.split() == ["destination", "path", "hops", "source", "cost", "age", "held"]
    assert row.split() == [
        *("KME3", "KME1", "->", "KME2", "->", "KME3", "2", "computed", "2", "3s", "-")
    ]
    assert node.requests == [("routes", {})]


def test_routes_shows_the_node_disjoint_paths_of_pools_that_split_keys(short_dir: Path) -> None:
    sock = short_dir / "admin.sock"
    split = [
        {
            "destination": "KME3",
            "paths": [["KME1", "KME2", "KME3"], ["KME1", "KME4", "KME3"]],
            "source": "controller",
        }
    ]
    with fake_admin(sock, {"routes": {**ROUTES, "split": split}}):
        result = invoke("routes", "--socket", str(sock))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert "node-disjoint paths (split or spread keys):" in lines
    assert lines[-1].split() == [
        *("KME3", "KME1", "->", "KME2", "->", "KME3", "|", "KME1", "->", "KME4", "->", "KME3"),
        "controller",
    ]


def test_routes_json_is_the_daemon_s_answer(short_dir: Path) -> None:
    sock = short_dir / "admin.sock"
    with fake_admin(sock, {"routes": ROUTES}):
        result = invoke("routes", "--socket", str(sock), "--json")
    assert json.loads(result.stdout) == ROUTES


def test_relays_in_a_lab_are_asked_of_the_named_node(short_dir: Path) -> None:
    sock1, sock2 = short_dir / "1.sock", short_dir / "2.sock"
    lab = write_lab(short_dir, {"KME1": sock1, "KME2": sock2})
    with fake_admin(sock1, {"relays": RELAYS}) as kme1, fake_admin(sock2, {}) as kme2:
        result = invoke("relays", "--lab", str(lab), "--node", "KME1")
    assert result.exit_code == 0, result.output
    assert kme1.requests == [("relays", {})] and kme2.requests == []
    lines = result.stdout.splitlines()
    assert lines[0].split() == [
        "relay", "pool", "path", "role", "state", "key", "started", "took", "error"
    ]  # fmt: skip
    assert lines[2].split()[:9] == [
        "r-2", "KME1~KME3", "KME1", "->", "KME2", "->", "KME3", "source", "started"
    ]  # fmt: skip
    assert lines[2].endswith(" -")  # still under way: no duration yet
    assert "250 ms" in lines[3] and lines[3].endswith("no answer from KME3 within 5 s")


def test_lab_without_node_is_a_usage_error(short_dir: Path) -> None:
    result = invoke("routes", "--lab", str(short_dir))
    assert result.exit_code == 2
    assert "--lab and --node go together" in result.stderr


def test_a_node_not_in_the_lab_is_named_with_those_that_are(short_dir: Path) -> None:
    lab = write_lab(short_dir, {"KME1": short_dir / "1.sock"})
    result = invoke("routes", "--lab", str(lab), "--node", "KME9")
    assert result.exit_code == 1
    assert result.stderr == "Error: no node 'KME9' in this lab (known: KME1)\n"


def test_relay_test_asks_the_source_and_shows_each_hop(short_dir: Path) -> None:
    sock = short_dir / "1.sock"
    lab = write_lab(short_dir, {"KME1": sock})
    with fake_admin(sock, {"relay_test": RELAY_TEST}) as kme1:
        result = invoke("relay", "test", "KME1", "KME3", "--bytes", "1024", "--lab", str(lab))
    assert result.exit_code == 0, result.output
    assert kme1.requests == [("relay_test", {"destination": "KME3", "bytes": 1024})]
    assert result.stdout == relay_test_report("KME1", RELAY_TEST) + "\n"
    lines = result.stdout.splitlines()
    assert lines[0] == (
        "KME1 -> KME3: 2 relay(s) carried 1024 B (8.0 kbit) of end-to-end key in 0.42 s"
    )
    assert lines[4].split() == ["KME1-KME2", "1152", "B", "2", "1024", "B", "128", "B"]
    assert lines[5].split()[:2] == ["KME2-KME3", "1152"]
    assert lines[-1] == "the end-to-end pool KME1~KME3 now holds 40.0 kbit ready"


def test_a_hop_named_by_its_link_id_shows_the_link_id() -> None:
    result = {**RELAY_TEST, "hops": [{"link_id": "KME1~KME2", "bytes": 1152}]}
    assert relay_test_report("KME1", result).splitlines()[4].split()[:2] == ["KME1~KME2", "1152"]


def test_relays_over_different_routes_are_counted_per_link() -> None:
    # Two relays of 512 bytes: one via KME2, one via KME4 (a ring).
    hops = [
        {"hop": "KME1-KME2", "bytes": 576},
        {"hop": "KME2-KME3", "bytes": 576},
        {"hop": "KME1-KME4", "bytes": 576},
        {"hop": "KME4-KME3", "bytes": 576},
    ]
    rows = relay_hops_table({**RELAY_TEST, "hops": hops}).splitlines()[2:]
    assert [r.split() for r in rows] == [
        [hop["hop"], "576", "B", "1", "512", "B", "64", "B"] for hop in hops
    ]


def test_a_spend_the_cli_cannot_split_shows_only_the_total() -> None:
    result = {**RELAY_TEST, "hops": [{"hop": "KME1-KME2", "bytes": 1000}]}
    assert relay_hops_table(result).splitlines()[2].split() == [
        "KME1-KME2",
        "1000",
        "B",
        "-",
        "-",
        "-",
    ]


def test_relay_test_json(short_dir: Path) -> None:
    sock = short_dir / "1.sock"
    with fake_admin(sock, {"relay_test": RELAY_TEST}):
        result = invoke(
            "relay", "test", "KME1", "KME3", "--bytes", "1024", "--socket", str(sock), "--json"
        )
    assert json.loads(result.stdout) == RELAY_TEST


def test_relay_test_refused_by_the_daemon_says_why(short_dir: Path) -> None:
    sock = short_dir / "1.sock"
    refusal = Error(code="bad_params", message="relay_test: no end-to-end pool with 'KME9'")
    with fake_admin(sock, {"relay_test": refusal}):
        result = invoke("relay", "test", "KME1", "KME9", "--bytes", "64", "--socket", str(sock))
    assert result.exit_code == 1
    assert result.stderr == "Error: relay_test: no end-to-end pool with 'KME9'\n"


def test_relay_test_without_a_daemon_says_so(short_dir: Path) -> None:
    sock = short_dir / "none.sock"
    result = invoke("relay", "test", "KME1", "KME3", "--bytes", "64", "--socket", str(sock))
    assert result.exit_code == 1
    assert result.stderr == f"Error: {sock}: no such socket (is qkmsd running?)\n"


def link(**extra: Any) -> dict[str, Any]:
    return {
        "link_id": "KME1~KME2",
        "peer": "KME2",
        "driver": "paired",
        "driver_state": "up",
        "ready_bits": 8192,
        "ready_keys": 32,
        "ready_blocks": 2,
        "unconfirmed_blocks": 0,
        "discarded_blocks": 0,
        "qber": 0.02,
        **extra,
    }


def test_status_marks_end_to_end_pools_as_kept_by_relay() -> None:
    status = {
        "node_id": "KME1",
        "pid": 1,
        "uptime_s": 1.0,
        "peer_listen": "127.0.0.1:7001",
        "peers": [],
        "links": [
            link(e2e=False),
            link(link_id="KME1~KME3", peer="KME3", driver="relay", e2e=True, qber=None),
        ],
    }
    rows = node_status(status).splitlines()[-2:]
    assert rows[0].split()[:4] == ["KME1~KME2", "KME2", "paired", "up"]
    assert rows[1].split()[:5] == ["KME1~KME3", "KME3", "relay", "(e2e)", "up"]


def test_a_held_route_shows_how_long_it_stays_held(short_dir: Path) -> None:
    sock = short_dir / "admin.sock"
    held = {"routes": [{**ROUTES["routes"][0], "held_s": 4.2}]}
    with fake_admin(sock, {"routes": held}):
        result = invoke("routes", "--socket", str(sock))
    assert result.stdout.splitlines()[2].split()[-1] == "4.2s"
