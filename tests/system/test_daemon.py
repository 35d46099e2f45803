"""``python -m qkmsd`` as a real subprocess: systemd notify, exit codes, config errors, logs."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli._admin import AdminClient, AdminError
from cli._pki import init_ca, issue_node, revoke
from cli.main import qkmsctl
from qkd_drivers import known_drivers, paired_block
from qkmsd.config import Config, load_config
from qkmsd.keystore import HOLDS_MATERIAL, KeyStore, load_master_key

from ..conftest import ConfigFactory

pytestmark = pytest.mark.system

START_TIMEOUT_S = 20.0
STOP_GRACE_S = 10.0  # well inside the unit's TimeoutStopSec=20
LINK = "KME_A~KME_B"
SEED = "daemon-system-test-seed-0123456789"
BLOCK_BITS = 1024
FAST = {"rate_bps": 65536.0, "block_bits": BLOCK_BITS, "seed": SEED}


def qkmsd(*args: str) -> list[str]:
    return [sys.executable, "-m", "qkmsd", *args]


def child_env(**extra: str) -> dict[str, str]:
    """Our environment without any systemd variables of the test runner's own, plus ``extra``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS")
    }
    env.update(extra)
    return env


def run_qkmsd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        qkmsd(*args), capture_output=True, text=True, timeout=START_TIMEOUT_S, env=child_env()
    )


def wait_until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def answers(path: Path) -> bool:
    try:
        AdminClient(path, timeout=2.0).call("status")
    except AdminError:
        return False
    return True


@contextmanager
def daemon(config: Config, **env: str) -> Iterator[subprocess.Popen[str]]:
    """A running ``qkmsd --config``; stopped (SIGTERM, then SIGKILL) on the way out."""
    proc = subprocess.Popen(
        qkmsd("--config", str(config.source)),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(**env),
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate(timeout=STOP_GRACE_S)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- systemd notify ----------------------------------------------------------------


class NotifyListener:
    """The service manager's side of sd_notify: a datagram socket that collects states."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.states: list[str] = []

    def wait_for(self, state: str, *, count: int = 1, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.states.count(state) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {count} x {state} within {timeout:g} s: {self.states}")
            self.sock.settimeout(remaining)
            try:
                datagram = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.states.extend(datagram.decode().splitlines())


@pytest.fixture(params=["path", "abstract"])
def notify_socket(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[str, NotifyListener]]:
    """``(NOTIFY_SOCKET value, listener)`` for a filesystem socket and an abstract one."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        address = str(tmp_path / "notify.sock")
        sock.bind(address)
    else:
        name = f"qkms-test-{os.getpid()}-{time.monotonic_ns()}"
        sock.bind("\0" + name)
        address = "@" + name
    with sock:
        yield address, NotifyListener(sock)


def test_systemd_notify_ready_watchdog_stopping(
    node_config: ConfigFactory, notify_socket: tuple[str, NotifyListener]
) -> None:
    address, listener = notify_socket
    cfg = node_config("KME_A")
    # 200 ms watchdog: the daemon pings every 100 ms.  No WATCHDOG_PID means "this process".
    with daemon(cfg, NOTIFY_SOCKET=address, WATCHDOG_USEC="200000") as proc:
        listener.wait_for("READY=1", timeout=START_TIMEOUT_S)
        # READY=1 is a promise: the admin socket answers from then on, with no retry.
        status = AdminClient(cfg.admin_socket, timeout=5.0).call("status")
        assert status["node_id"] == "KME_A" and status["pid"] == proc.pid
        assert any(s.startswith("STATUS=") for s in listener.states)
        listener.wait_for("WATCHDOG=1", count=2, timeout=5.0)
        assert "STOPPING=1" not in listener.states
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", timeout=STOP_GRACE_S)
        assert proc.wait(timeout=STOP_GRACE_S) == 0
    assert listener.states.index("READY=1") < listener.states.index("STOPPING=1")
    assert not cfg.admin_socket.exists()


def test_watchdog_for_another_pid_is_not_ours(
    node_config: ConfigFactory, notify_socket: tuple[str, NotifyListener]
) -> None:
    address, listener = notify_socket
    cfg = node_config("KME_A")
    env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"}
    with daemon(cfg, **env) as proc:
        listener.wait_for("READY=1", timeout=START_TIMEOUT_S)
        time.sleep(0.5)  # five watchdog periods: none may come
        proc.send_signal(signal.SIGTERM)
        listener.wait_for("STOPPING=1", timeout=STOP_GRACE_S)
        assert proc.wait(timeout=STOP_GRACE_S) == 0
    assert "WATCHDOG=1" not in listener.states


# --- configuration errors: exit 2, one line ------------------------------------------


def _valid_config(node_config: ConfigFactory) -> Path:
    cfg = node_config(
        "KME_A",
        peers={"KME_B": "127.0.0.1:1"},
        links={LINK: ("KME_B", "paired", {"seed": SEED})},
    )
    return cfg.source


BAD_CONFIGS: dict[str, tuple[Callable[[str], str], str]] = {
    # name: (how to break a valid config, what the one line must name)
    "unknown driver": (
        lambda t: t.replace('driver = "paired"', 'driver = "bb48"'),
        f"[links.KME_A~KME_B] driver 'bb48' unknown (known: {', '.join(known_drivers())})",
    ),
    "missing node id": (
        lambda t: t.replace('id = "KME_A"\n', ""),
        "[node]: missing required key `id`",
    ),
    "non-numeric timeout": (
        lambda t: t.replace("timeout_s = 10.0", 'timeout_s = "soon"'),
        "[sync] timeout_s: expected `float`, got `str`",
    ),
    "unknown key": (
        lambda t: t.replace("[node]\n", '[node]\ncolour = "blue"\n'),
        "[node]: unknown key `colour`",
    ),
    "not TOML": (lambda t: t + "[links\n", "not valid TOML: "),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_config_exits_2_with_one_line_naming_file_and_key(
    node_config: ConfigFactory, case: str
) -> None:
    source = _valid_config(node_config)
    breaks, names = BAD_CONFIGS[case]
    source.write_text(breaks(source.read_text()))

    result = run_qkmsd("--config", str(source))
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(f"qkmsd: config {source}: ")
    assert names in line

    checked = CliRunner().invoke(qkmsctl, ["config", "check", str(source)])
    assert checked.exit_code == 2
    assert checked.stdout == ""
    assert checked.stderr.splitlines() == [line.removeprefix("qkmsd: ")]


def test_not_toml_names_the_line(node_config: ConfigFactory) -> None:
    source = _valid_config(node_config)
    source.write_text("[node\n")
    result = run_qkmsd("--config", str(source), "--check")
    assert result.returncode == 2
    assert "(at line 1, column" in result.stderr


def test_valid_config_checks_ok(node_config: ConfigFactory) -> None:
    source = _valid_config(node_config)
    result = run_qkmsd("--config", str(source), "--check")
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == f"config {source}: ok (node KME_A, 1 link(s))\n"

    checked = CliRunner().invoke(qkmsctl, ["config", "check", str(source)])
    assert checked.exit_code == 0
    assert checked.stdout == result.stdout


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_qkmsd("--config", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr == f"qkmsd: config {tmp_path / 'nope.toml'}: file not found\n"


# --- start-up errors: exit 1, a clear last line -------------------------------------


def startup_failure(config: Config) -> str:
    """Run the daemon, expect exit 1, return its last stderr line (logs may come before)."""
    result = run_qkmsd("--config", str(config.source))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert last.startswith("qkmsd: ")
    return last


def test_master_key_readable_by_others_is_refused(node_config: ConfigFactory) -> None:
    cfg = node_config("KME_A")
    assert cfg.master_key_file is not None
    cfg.master_key_file.chmod(0o644)
    line = startup_failure(cfg)
    assert str(cfg.master_key_file) in line
    assert "mode 0644" in line and f"chmod 600 {cfg.master_key_file}" in line
    assert not cfg.keystore_path.exists()


def test_wrong_master_key_for_an_existing_store_is_refused(node_config: ConfigFactory) -> None:
    cfg = node_config("KME_A")
    cfg.state_dir.mkdir(mode=0o700)
    KeyStore.open(cfg.keystore_path, os.urandom(32)).close()  # made with another key
    line = startup_failure(cfg)
    assert line == f"qkmsd: key store {cfg.keystore_path} was created with another master key"


def test_peer_port_in_use_is_refused(node_config: ConfigFactory) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        cfg = node_config("KME_A", port=port)
        line = startup_failure(cfg)
    assert line == f"qkmsd: peer port 127.0.0.1:{port}: Address already in use"


def test_missing_certificate_is_a_startup_error(node_config: ConfigFactory) -> None:
    cfg = node_config("KME_A")
    text = cfg.source.read_text().replace(str(cfg.cert), str(cfg.cert) + ".missing")
    cfg.source.write_text(text)
    line = startup_failure(load_config(cfg.source))
    assert ".missing" in line


def test_sighup_reloads_the_crl_and_a_bad_one_is_logged_and_changes_nothing(
    node_config: ConfigFactory, tmp_path: Path
) -> None:
    pki = tmp_path / "pki"
    init_ca(pki)
    for node in ("KME_A", "KME_B"):
        issue_node(pki, node)
    cfg = node_config("KME_A", ca_dir=pki, crl=pki / "crl.pem")
    log = tmp_path / "qkmsd.log"

    def logged(event: str) -> bool:
        return f"event={event}" in log.read_text()

    with log.open("w") as sink:
        proc = subprocess.Popen(
            qkmsd("--config", str(cfg.source)),
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=sink,
            env=child_env(),
        )
        try:
            wait_until(lambda: answers(cfg.admin_socket), timeout=START_TIMEOUT_S, what="start")
            revoke(pki, "KME_B")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: logged("node.reloaded"), timeout=10, what="the reload")
            (pki / "crl.pem").write_text("truncated\n")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: logged("node.reload_failed"), timeout=10, what="the failed reload")
            assert answers(cfg.admin_socket) and proc.poll() is None
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=STOP_GRACE_S) == 0
    lines = [parse_kv(line) for line in log.read_text().splitlines() if "event=node.relo" in line]
    assert [(x["event"], x.get("revoked")) for x in lines] == [
        ("node.reloaded", "1"),
        ("node.reload_failed", None),
    ]
    assert "is not a PEM certificate revocation list" in lines[1]["error"]


# --- logs: structured, and never key material -----------------------------------------

_KV_TOKEN = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|[^ "=]+)(?: |$)')


def parse_kv(line: str) -> dict[str, str]:
    """One ``key=value`` log line; quoted values are JSON strings.  Asserts it parses whole."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(line):
        match = _KV_TOKEN.match(line, pos)
        assert match, f"not key=value at column {pos}: {line!r}"
        key, value = match.groups()
        fields[key] = json.loads(value) if value.startswith('"') else value
        pos = match.end()
    return fields


def stored_block_ids(cfg: Config) -> list[int]:
    """Every block id in the node's store; checks the blocks are the paired driver's."""
    with KeyStore.open(cfg.keystore_path, load_master_key(cfg.master_key_file)) as store:
        top = store.max_block_id(LINK)
        assert top is not None
        states = store.states(LINK, range(max(0, top - 100_000), top + 1))
        held = [i for i, state in states.items() if state in HOLDS_MATERIAL]
        assert held
        for block_id in held:
            assert store.read_block(LINK, block_id) == paired_block(
                SEED, LINK, block_id, BLOCK_BITS
            )
        return sorted(states)


def key_encodings(block: bytes) -> list[bytes]:
    """The forms a careless log line could show a key in, and its first 12 bytes in each."""
    forms = []
    for part in (block, block[:12]):
        forms += [
            part,
            part.hex().encode(),
            part.hex().upper().encode(),
            base64.b64encode(part).rstrip(b"="),
            base64.urlsafe_b64encode(part).rstrip(b"="),
        ]
    return forms


def test_logs_are_structured_and_hold_no_key_material(node_config: ConfigFactory) -> None:
    port_b = free_port()
    cfg_b = node_config(
        "KME_B",
        peers={"KME_A": "127.0.0.1:1"},
        links={LINK: ("KME_A", "paired", FAST)},
        port=port_b,
    )
    cfg_a = node_config(
        "KME_A",
        peers={"KME_B": f"127.0.0.1:{port_b}"},
        links={LINK: ("KME_B", "paired", FAST)},
    )
    # Debug level (the chattiest); one node logs key=value, the other JSON.
    for cfg, fmt in ((cfg_a, "kv"), (cfg_b, "json")):
        with cfg.source.open("a") as f:
            f.write(f'[log]\nlevel = "debug"\nformat = "{fmt}"\n')

    with daemon(cfg_b) as proc_b, daemon(cfg_a) as proc_a:

        def ready_blocks() -> bool:
            try:
                links = [
                    AdminClient(c.admin_socket, timeout=2.0).call("links")["links"][0]
                    for c in (cfg_a, cfg_b)
                ]
            except AdminError:
                return False
            return all(link["ready_blocks"] >= 20 for link in links)

        wait_until(ready_blocks, timeout=30.0, what="20 ready blocks at both ends")
        # Admin answers are output too: the same rule holds for them.
        admin_out = {
            node: json.dumps(
                [AdminClient(c.admin_socket).call(m) for m in ("status", "peers", "links")]
            ).encode()
            for node, c in (("KME_A", cfg_a), ("KME_B", cfg_b))
        }
        for proc in (proc_a, proc_b):
            proc.send_signal(signal.SIGTERM)
        logs: dict[str, str] = {}
        for node, proc in (("KME_A", proc_a), ("KME_B", proc_b)):
            out, err = proc.communicate(timeout=STOP_GRACE_S)
            assert proc.returncode == 0, err
            assert out == ""
            logs[node] = err

    kv_lines = logs["KME_A"].splitlines()
    json_lines = logs["KME_B"].splitlines()
    assert kv_lines and json_lines
    events_a = [parse_kv(line) for line in kv_lines]
    events_b: list[dict[str, Any]] = [json.loads(line) for line in json_lines]
    for event in events_a + events_b:
        assert {"ts", "level", "event"} <= event.keys()
        assert event["level"] in ("debug", "info", "warning", "error")
    for node, events in (("KME_A", events_a), ("KME_B", events_b)):
        assert all(e["node"] == node for e in events)
        names = [e["event"] for e in events]
        assert "node.ready" in names and "peer.connected" in names and "node.stopped" in names

    for node, cfg in (("KME_A", cfg_a), ("KME_B", cfg_b)):
        ids = stored_block_ids(cfg)
        assert len(ids) >= 20
        seen = logs[node].encode() + admin_out[node]
        assert SEED.encode() not in seen
        for block_id in ids:
            block = paired_block(SEED, LINK, block_id, BLOCK_BITS)
            for form in key_encodings(block):
                assert form not in seen, f"{node}: block {block_id} appears in its output"
