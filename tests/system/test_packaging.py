"""packaging/: the systemd unit, sysusers.d and tmpfiles.d files, checked against the code."""

from __future__ import annotations

import configparser
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cli.node import DEFAULT_SOCKET
from qkmsd.keystore import CREDENTIAL_NAME
from qkmsd.systemd import Notifier

pytestmark = pytest.mark.system

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
UNIT = PACKAGING / "qkmsd.service"
SYSUSERS = PACKAGING / "qkmsd.sysusers"
TMPFILES = PACKAGING / "qkmsd.tmpfiles"
CONFIG = "/etc/qkms/qkmsd.toml"


class _Accumulate(dict[str, Any]):
    """configparser storage that keeps every occurrence of a directive, one per line.

    While reading, configparser stores each value as a list of lines; a repeated key
    (systemd allows ``SystemCallFilter=`` twice) extends the list instead of replacing it.
    """

    def __setitem__(self, key: str, value: Any) -> None:
        old = self.get(key)
        if isinstance(value, list) and isinstance(old, list):
            old.extend(value)
        else:
            super().__setitem__(key, value)


def load_unit(path: Path = UNIT) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser(
        strict=False, dict_type=_Accumulate, interpolation=None, empty_lines_in_values=False
    )
    parser.optionxform = str  # type: ignore[assignment, method-assign]  # keys are case-sensitive
    parser.read_string(path.read_text(), source=str(path))
    return parser


def values(unit: configparser.RawConfigParser, section: str, key: str) -> list[str]:
    """Every value given to ``key`` in ``section``, in order."""
    return unit.get(section, key).split("\n")


REQUIRED = {
    "Type": "notify",
    "NotifyAccess": "main",
    "ExecStart": f"/usr/bin/qkmsd --config {CONFIG}",
    "ExecStartPre": f"/usr/bin/qkmsd --config {CONFIG} --check",
    "Restart": "on-failure",
    "WatchdogSec": "30",
    "TimeoutStopSec": "20",
    "User": "qkms",
    "Group": "qkms",
    "StateDirectory": "qkms",
    "StateDirectoryMode": "0700",
    "RuntimeDirectory": "qkms",
    "RuntimeDirectoryMode": "0750",
    "ConfigurationDirectory": "qkms",
    "LoadCredential": f"{CREDENTIAL_NAME}:/etc/qkms/master.key",
    "UMask": "0077",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "ProtectClock": "yes",
    "ProtectHostname": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
}


@pytest.mark.parametrize("key", list(REQUIRED))
def test_unit_sets_required_directive(key: str) -> None:
    assert values(load_unit(), "Service", key) == [REQUIRED[key]]


def test_unit_filters_system_calls_to_system_service() -> None:
    filters = values(load_unit(), "Service", "SystemCallFilter")
    assert filters[0] == "@system-service"
    assert all(f.startswith("~") for f in filters[1:])  # later lines only take away


def test_unit_uses_a_fixed_user_not_a_dynamic_one() -> None:
    unit = load_unit()
    assert not unit.has_option("Service", "DynamicUser")
    sysusers = [
        shlex.split(line)
        for line in SYSUSERS.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert [(e[0], e[1]) for e in sysusers] == [("u", values(unit, "Service", "User")[0])]
    assert sysusers[0][4] == "/var/lib/qkms"  # home: the StateDirectory


def test_unit_paths_agree_with_the_code() -> None:
    unit = load_unit()
    # qkmsctl's default admin socket lives in the unit's RuntimeDirectory.
    runtime = values(unit, "Service", "RuntimeDirectory")[0]
    assert Path(DEFAULT_SOCKET).parent == Path("/run") / runtime
    # The daemon pings at half of WatchdogSec, so one late ping does not kill it.
    usec = int(values(unit, "Service", "WatchdogSec")[0]) * 1_000_000
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": str(usec)})
    assert notifier.watchdog_interval == usec / 2e6
    # Exit 2 (invalid config) is not worth a restart.
    assert values(unit, "Service", "RestartPreventExitStatus") == ["2"]
    assert values(unit, "Install", "WantedBy") == ["multi-user.target"]


def test_unit_explains_serial_devices() -> None:
    comments = [line for line in UNIT.read_text().splitlines() if line.startswith("#")]
    assert any("DeviceAllow=" in line for line in comments)


def _unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this environment's qkmsd (verify checks it exists)."""
    qkmsd = shutil.which("qkmsd", path=str(Path(sys.executable).parent)) or shutil.which("qkmsd")
    if qkmsd is None:
        pytest.skip("no qkmsd executable installed")
    unit = tmp_path / "qkmsd.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/qkmsd", qkmsd))
    return unit


def _systemd_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} not installed (systemd tools are optional for this test)")
    return path


def test_systemd_analyze_verify(tmp_path: Path) -> None:
    tool = _systemd_tool("systemd-analyze")
    unit = _unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [tool, "verify", str(unit)], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert (result.returncode, result.stdout + result.stderr) == (0, "")


def test_systemd_analyze_security_exposure_stays_low(tmp_path: Path) -> None:
    tool = _systemd_tool("systemd-analyze")
    unit = _unit_for_this_machine(tmp_path)
    result = subprocess.run(
        [tool, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    match = re.search(r"Overall exposure level for qkmsd\.service: (\d+\.\d+)", result.stdout)
    if result.returncode != 0 and match is None:
        pytest.skip(f"systemd-analyze security --offline unsupported: {result.stderr.strip()}")
    assert match, result.stdout
    # 0 is a fully locked-down service, 10 an unprotected one; this unit scores 1.2.
    assert float(match.group(1)) <= 2.0, result.stdout


def test_sysusers_and_tmpfiles_install_into_a_fresh_root(tmp_path: Path) -> None:
    sysusers = _systemd_tool("systemd-sysusers")
    tmpfiles = _systemd_tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("needs root to give files to another owner")
    root = tmp_path / "root"
    (root / "etc" / "qkms" / "tls").mkdir(parents=True)
    # Files an operator may have copied in carelessly: tmpfiles fixes their modes.
    for name in ("master.key", "tls/node.key"):
        (root / "etc" / "qkms" / name).write_text("x")
        (root / "etc" / "qkms" / name).chmod(0o644)

    for cmd in (
        [sysusers, f"--root={root}", str(SYSUSERS)],
        [tmpfiles, "--create", f"--root={root}", str(TMPFILES)],
    ):
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
    passwd = (root / "etc" / "passwd").read_text().splitlines()
    entry = next(line.split(":") for line in passwd if line.startswith("qkms:"))
    uid, gid, home, shell = int(entry[2]), int(entry[3]), entry[5], entry[6]
    assert uid != 0 and (home, shell) == ("/var/lib/qkms", "/usr/sbin/nologin")

    def owner_mode(rel: str) -> tuple[int, int, int]:
        st = (root / "etc" / "qkms" / rel).stat()
        return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)

    assert owner_mode(".") == (0, gid, 0o750)
    assert owner_mode("tls") == (0, gid, 0o750)
    assert owner_mode("master.key") == (0, 0, 0o600)  # read by systemd, never by qkms
    assert owner_mode("tls/node.key") == (0, gid, 0o640)
