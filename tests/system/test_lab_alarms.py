"""Each disruption code raised by a real fault in a lab of subprocesses, and cleared when the
fault heals: a QKD device emulator stopped (``link-down``), a pool drained by SAE requests
(``pool-low``, ``pool-empty``), the state directory's file system filled (``disk-low``), a
node certificate that expires during the test (``cert-expiring``); and the hold-down: a
device flapping 20 times raises one alarm, not 20.

One lab for the module: two nodes joined by a ``vendor-tcp`` link, each end served by a
``qkmsctl qkde emulate`` process the lab starts and stops.  The tests run in file order
and each leaves the lab healed.  ``qber-high`` (``test_lab_eve.py``) and ``peer-down``
(``test_dashboard.py``, ``test_history_crash.py``) have their own labs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cli._admin import AdminClient
from cli._lab import Lab
from cli._topology import load_topology
from qkms_client import Etsi014Client, ServiceUnavailable

from .test_lab import invoke, wait_until

pytestmark = pytest.mark.system

LINK = "KME_A~KME_B"
HOLD_DOWN_S = 4.0
DISK_FREE_MIN_MIB = 16
TMPFS_MIB = 48
# One 4096-bit block a second from the emulators: a pool an SAE can drain in seconds.
TOPOLOGY = f"""
name = "alarms-test"
[defaults]
driver = "vendor-tcp"
[alarms]
interval_s = 0.25
hold_down_s = {HOLD_DOWN_S}
pool_low_bits = 16384
disk_free_min_mib = {DISK_FREE_MIN_MIB}
[nodes.KME_A]
[nodes.KME_B]
[[links]]
a = "KME_A"
b = "KME_B"
device = {{ rate_bps = 4096.0, block_bits = 4096 }}
[saes.SAE_A]
kme = "KME_A"
[saes.SAE_B]
kme = "KME_B"
"""


def _mount_tmpfs(path: Path) -> str | None:
    """Mount a small tmpfs at ``path``; None if done, else why not."""
    if os.geteuid() != 0:
        return "not root: cannot mount a small tmpfs as KME_A's state directory"
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_MIB}m,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    return None if done.returncode == 0 else f"mount tmpfs: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    base = tmp_path_factory.mktemp("alarms")
    lab = Lab(base / "lab")
    state_a = lab.dir / "nodes" / "KME_A" / "state"
    no_tmpfs = _mount_tmpfs(state_a)
    topology = base / "alarms.toml"
    topology.write_text(TOPOLOGY)
    try:
        lab.up(load_topology(topology))
        yield {"lab": lab, "no_tmpfs": no_tmpfs, "state_a": state_a}
    finally:
        if lab.manifest_path.exists():
            lab.down()
            for node, kme in lab.manifest()["kmes"].items():
                lines = Path(kme["log"]).read_text(errors="replace").splitlines()
                print(f"--- {node} (last 40 lines)", *lines[-40:], sep="\n")
        if no_tmpfs is None:
            subprocess.run(["umount", "-l", str(state_a)], check=False)


@pytest.fixture
def lab(shared: dict[str, Any]) -> Lab:
    lab_: Lab = shared["lab"]
    return lab_


def call(lab: Lab, node: str, method: str, **params: Any) -> dict[str, Any]:
    return AdminClient(lab.admin_socket(node), timeout=5.0).call(method, **params)


def active(lab: Lab, node: str, code: str, resource: str = LINK) -> dict[str, Any] | None:
    for alarm in call(lab, node, "alarms")["active"]:
        if alarm["code"] == code and alarm["resource"] == resource:
            return dict(alarm)
    return None


def events(lab: Lab, node: str, code: str, since: float, resource: str = LINK) -> list[str]:
    """The kinds (raised, changed, cleared...) of the history events of one alarm, oldest
    first."""
    history = call(lab, node, "alarms", limit=1000, since=since)["history"]
    mine = [e for e in history if e["code"] == code and e["resource"] == resource]
    return [e["kind"] for e in reversed(mine)]


def clear_of(lab: Lab, node: str, code: str, resource: str = LINK) -> None:
    wait_until(
        lambda: active(lab, node, code, resource) is None,
        what=f"no {code} on {resource} at {node}",
        timeout=60,
    )


def driver_state(lab: Lab, node: str) -> str:
    [link] = [x for x in call(lab, node, "status")["links"] if x["link_id"] == LINK]
    return str(link["driver_state"])


def test_stopping_a_device_raises_link_down_at_its_node_and_starting_it_clears_it(
    lab: Lab,
) -> None:
    clear_of(lab, "KME_A", "link-down")
    since = time.time()
    result = invoke("lab", "device", "stop", "--dir", str(lab.dir), "KME_A", "KME_B")
    assert result.exit_code == 0, result.output
    assert "device stopped at KME_A, KME_B" in result.stdout
    for node in ("KME_A", "KME_B"):
        wait_until(lambda n=node: active(lab, n, "link-down") is not None, what=f"link-down {node}")
    alarm = active(lab, "KME_A", "link-down")
    assert alarm is not None and alarm["severity"] == "major" and alarm["value"] >= 0.5
    result = invoke("lab", "device", "start", "--dir", str(lab.dir), "KME_A", "KME_B")
    assert result.exit_code == 0, result.output
    for node in ("KME_A", "KME_B"):
        clear_of(lab, node, "link-down")
        assert events(lab, node, "link-down", since) == ["raised", "cleared"]


def test_one_end_of_a_device_stopped_is_down_at_that_node_only(lab: Lab) -> None:
    clear_of(lab, "KME_A", "link-down")
    result = invoke(
        "lab", "device", "stop", "--dir", str(lab.dir), "KME_A", "KME_B", "--end", "KME_B"
    )
    assert result.exit_code == 0, result.output
    wait_until(lambda: active(lab, "KME_B", "link-down") is not None, what="link-down at KME_B")
    assert driver_state(lab, "KME_A") == "up"
    invoke("lab", "device", "start", "--dir", str(lab.dir), "KME_A", "KME_B", "--end", "KME_B")
    clear_of(lab, "KME_B", "link-down")


def test_lab_device_refuses_what_is_not_a_device_of_this_lab(lab: Lab) -> None:
    result = invoke("lab", "device", "stop", "--dir", str(lab.dir), "KME_A", "KME_C")
    assert result.exit_code == 1 and "no link KME_A~KME_C in this lab" in result.output
    result = invoke("lab", "device", "stop", "--dir", str(lab.dir), "KME_A", "KME_B", "--end", "X")
    assert result.exit_code == 1 and "'X' is not an end of link KME_A~KME_B" in result.output
    result = invoke("lab", "device", "start", "--dir", str(lab.dir), "KME_A", "KME_B")
    assert result.exit_code == 0 and "no end (all running)" in result.stdout


def test_a_device_flapping_20_times_raises_one_alarm_not_20(lab: Lab) -> None:
    clear_of(lab, "KME_A", "link-down")
    since = time.time()
    for flap in range(20):
        lab.device_stop("KME_A", "KME_B", end="KME_A")
        # Down long enough each time to be alarmed without the hold-down: the alarm's value
        # (seconds down, from the agent's looks) passes the down grace.
        wait_until(
            lambda: (a := active(lab, "KME_A", "link-down")) is not None and a["value"] > 0.5,
            what=f"flap {flap}: the link seen down past its grace",
        )
        lab.device_start("KME_A", "KME_B", end="KME_A")
        wait_until(lambda: driver_state(lab, "KME_A") == "up", what=f"flap {flap}: link up")
    assert events(lab, "KME_A", "link-down", since) == ["raised"]
    clear_of(lab, "KME_A", "link-down")
    assert events(lab, "KME_A", "link-down", since) == ["raised", "cleared"]


def sae_client(lab: Lab, sae: str) -> Etsi014Client:
    manifest = lab.manifest()
    entry = manifest["saes"][sae]
    kme = entry["kme"]
    return Etsi014Client(
        manifest["kmes"][kme]["url"],
        ca=manifest["ca"],
        cert=entry["cert"],
        key=entry["key"],
        kme_id=kme,
        timeout=10.0,
    )


def test_draining_a_pool_with_sae_requests_raises_pool_low_and_pool_empty(lab: Lab) -> None:
    for node in ("KME_A", "KME_B"):
        for code in ("pool-low", "pool-empty"):
            clear_of(lab, node, code)
    since = time.time()
    refused = 0
    # Each end hands out its own share of the pool: the SAEs at both ends ask, faster than
    # the link makes key, until both ends refuse and the link's pool is low.
    with sae_client(lab, "SAE_A") as at_a, sae_client(lab, "SAE_B") as at_b:
        while not all(
            active(lab, node, code)
            for node in ("KME_A", "KME_B")
            for code in ("pool-low", "pool-empty")
        ):
            for client, slave in ((at_a, "SAE_B"), (at_b, "SAE_A")):
                try:
                    client.get_key(slave, number=16)
                except ServiceUnavailable:
                    refused += 1
    assert refused > 0
    # Nobody asks now: the link refills the pool and the alarms clear.
    for node in ("KME_A", "KME_B"):
        for code in ("pool-empty", "pool-low"):
            clear_of(lab, node, code)
            assert events(lab, node, code, since) == ["raised", "cleared"]


def test_filling_the_state_directory_file_system_raises_disk_low(
    lab: Lab, shared: dict[str, Any]
) -> None:
    if shared["no_tmpfs"]:
        pytest.skip(shared["no_tmpfs"])
    clear_of(lab, "KME_A", "disk-low", "state_dir")
    since = time.time()
    state: Path = shared["state_a"]
    filler = state / "filler"
    free_mib = shutil.disk_usage(state).free // (1 << 20)
    with open(filler, "wb") as f:  # leaves half the minimum free: the store still writes
        f.truncate(0)
        for _ in range(free_mib - DISK_FREE_MIN_MIB // 2):
            f.write(b"\0" * (1 << 20))
    wait_until(lambda: active(lab, "KME_A", "disk-low", "state_dir") is not None, what="disk-low")
    alarm = active(lab, "KME_A", "disk-low", "state_dir")
    assert alarm is not None and alarm["value"] < DISK_FREE_MIN_MIB
    filler.unlink()
    clear_of(lab, "KME_A", "disk-low", "state_dir")
    assert events(lab, "KME_A", "disk-low", since, "state_dir") == ["raised", "cleared"]


def test_a_node_certificate_that_expires_raises_cert_expiring_then_critical(lab: Lab) -> None:
    pki = str(lab.dir / "pki")
    since = time.time()
    # A certificate valid for 20 s more: a warning at the node's start, critical once past.
    result = invoke("pki", "issue", "--dir", pki, "--node", "KME_B", "--seconds", "20", "--force")
    assert result.exit_code == 0, result.output
    lab.kill("KME_B")
    lab.start("KME_B")
    wait_until(
        lambda: active(lab, "KME_B", "cert-expiring", "cert:node") is not None,
        what="cert-expiring at KME_B",
    )
    wait_until(
        lambda: (
            (a := active(lab, "KME_B", "cert-expiring", "cert:node")) is not None
            and a["severity"] == "critical"
        ),
        what="cert-expiring critical once the certificate expired",
        timeout=60,
    )
    # Heal: a certificate of the usual validity, loaded at the node's next start.
    result = invoke("pki", "issue", "--dir", pki, "--node", "KME_B", "--force")
    assert result.exit_code == 0, result.output
    lab.kill("KME_B")
    lab.start("KME_B")
    clear_of(lab, "KME_B", "cert-expiring", "cert:node")
    assert events(lab, "KME_B", "cert-expiring", since, "cert:node") == [
        "raised",
        "changed",
        "cleared",
    ]
