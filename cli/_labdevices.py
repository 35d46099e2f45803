"""QKD device emulators in a lab: one ``qkmsctl qkde emulate`` process per end of each
``vendor-tcp`` link, started by ``lab up`` and by ``lab device start``, stopped by ``lab
device stop`` and ``lab down``.

A ``vendor-tcp`` link in a lab talks to a real process over TCP, as it would to a device:
stopping that process is a device failure the node sees only through its driver.  Each end
has its own emulator on a loopback port of its own (the driver's ``host``/``port``/``role``
are filled in per end); both share the link's seed, so they produce identical blocks.  The
seed reaches the emulator through its environment, not its command line.

The manifest's ``devices`` entry: ``{link_id: {node: {port, role, pid, log}}}``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ._errors import CliError

DEVICE_DRIVERS = frozenset({"vendor-tcp"})
"""Drivers whose link ends the lab serves with an emulator process."""

EMULATOR_OPTIONS = {"rate_bps": "--rate-bps", "block_bits": "--block-bits", "qber": "--qber"}
"""A link's ``device = {...}`` table in the topology: the emulators' options."""

DRIVER_DEFAULTS: dict[str, Any] = {"backoff_initial": 0.1, "backoff_max": 1.0}
"""Reconnect quickly: a device started again is back within a second (the driver's own
defaults back off to 30 s, right for a device across a site, slow for a lab)."""

SEED_ENV = "QKMS_QKDE_SEED"
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0


class LabDeviceError(CliError):
    """A lab device cannot do what was asked; the message says why."""


def plan(
    links: list[tuple[str, str, str, str]], ports: list[int], options: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """The emulators for ``links`` (``(link_id, a, b, driver)``, device links only used):
    end ``a`` is alice, ``b`` bob, each on one of ``ports``."""
    out: dict[str, dict[str, Any]] = {}
    free = iter(ports)
    for link_id, a, b, driver in links:
        if driver not in DEVICE_DRIVERS:
            continue
        out[link_id] = {
            node: {"port": next(free), "role": role, "pid": None, "options": options[link_id]}
            for node, role in ((a, "alice"), (b, "bob"))
        }
    return out


def driver_params(end: dict[str, Any]) -> dict[str, Any]:
    """What the node's ``vendor-tcp`` driver needs to reach its end's emulator."""
    return {**DRIVER_DEFAULTS, "host": "127.0.0.1", "port": end["port"], "role": end["role"]}


def _endpoint(end: dict[str, Any]) -> str:
    return f"127.0.0.1:{end['port']}"


def start(lab_dir: Path, link_id: str, ends: dict[str, dict[str, Any]], seed: str) -> None:
    """Start the emulators of ``ends`` (node: end) of one link together and wait until each
    listens; fills in their pids and logs."""
    procs = {node: _spawn(lab_dir, link_id, node, end, seed) for node, end in ends.items()}
    deadline = time.monotonic() + START_TIMEOUT_S
    for node, proc in procs.items():
        end = ends[node]
        while not _listening(end["port"]):
            if proc.poll() is not None or time.monotonic() > deadline:
                for spawned in procs.values():
                    spawned.kill()
                    spawned.wait()
                for stopped in ends.values():
                    stopped["pid"] = None
                tail = Path(end["log"]).read_text(errors="replace").splitlines()[-5:]
                raise LabDeviceError(
                    f"the device emulator of {link_id} at {node} did not start:\n" + "\n".join(tail)
                )
            time.sleep(0.02)


def _spawn(
    lab_dir: Path, link_id: str, node: str, end: dict[str, Any], seed: str
) -> subprocess.Popen[bytes]:
    log_path = lab_dir / "devices" / f"{link_id}.{node}.log"
    log_path.parent.mkdir(mode=0o700, exist_ok=True)
    command = [
        sys.executable,
        "-c",
        "from cli.qkde import qkde; qkde()",
        "emulate",
        "--tcp",
        _endpoint(end),
        "--link-id",
        link_id,
        "--role",
        end["role"],
        "--device-id",  # a device id has no "~"
        f"lab-{link_id.replace('~', '-')}-{end['role']}",
    ]
    for key, value in end.get("options", {}).items():
        command += [EMULATOR_OPTIONS[key], str(value)]
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
            close_fds=True,
            env={**os.environ, SEED_ENV: seed},
        )
    end.update(pid=proc.pid, log=str(log_path))
    return proc


def stop(end: dict[str, Any]) -> bool:
    """Stop one emulator (SIGTERM, then SIGKILL).  Returns whether it was running."""
    if not alive(end):
        end["pid"] = None
        return False
    pid = int(end["pid"])
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while alive(end) and time.monotonic() < deadline:
        time.sleep(0.02)
    if alive(end):
        os.kill(pid, signal.SIGKILL)
    try:
        os.waitpid(pid, os.WNOHANG)  # a child of ours (``lab up`` in this process): reap it
    except ChildProcessError:
        pass
    end["pid"] = None
    return True


def alive(end: dict[str, Any]) -> bool:
    """Whether the end's emulator runs (its pid, with its endpoint on the command line)."""
    pid = end.get("pid")
    if not pid:
        return False
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    if status.rsplit(")", 1)[-1].split()[0] == "Z":
        return False
    return _endpoint(end).encode() in raw.split(b"\0")


def _listening(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0
