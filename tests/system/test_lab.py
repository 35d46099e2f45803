"""``qkmsctl lab``: a pair of real qkmsd processes, kill -9, restart, and what the stores say."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli._admin import AdminClient, AdminError
from cli._lab import Lab
from cli._topology import load_topology
from cli.main import qkmsctl
from qkd_drivers import paired_block
from qkmsd.config import Config, load_config
from qkmsd.keystore import KeyState, KeyStore, load_master_key

pytestmark = pytest.mark.system

PAIR = Path(__file__).resolve().parents[2] / "examples" / "pair.toml"
LINK = "KME_A~KME_B"
NODES = ("KME_A", "KME_B")
WAIT_S = 20.0

# Ids READY at one end and still RECEIVED at the other after `lab down`.  A block becomes
# one-sided READY only while a KeyConfirm is in flight: one end marked it READY and sent the
# confirm, the other end had not processed it yet.  After a kill -9 the victim's missing
# confirms are repaired when the session reopens (both ends re-announce every RECEIVED block
# and READY blocks are confirmed again), and the tests wait for that.  So only the final
# SIGTERM to both nodes can leave such ids: the blocks produced in the last announce batch
# (announce_interval_s = 0.1) plus a round trip.  pair.toml makes 4 blocks a second
# (16384 bit/s in 4096-bit blocks), so that is one block, two at a batch boundary; 4 leaves
# room for a slow machine without hiding a real leak, which would grow with every kill.
IN_FLIGHT_BOUND = 4


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def admin(lab: Lab, node: str, method: str) -> dict[str, Any]:
    return AdminClient(lab.manifest()["kmes"][node]["admin_socket"], timeout=5.0).call(method)


def peer_state(lab: Lab, node: str) -> str:
    try:
        peers = admin(lab, node, "peers")["peers"]
    except AdminError:
        return "unreachable"
    assert len(peers) == 1
    return str(peers[0]["state"])


def ready_blocks(lab: Lab, node: str) -> int:
    return int(admin(lab, node, "links")["links"][0]["ready_blocks"])


def connected(lab: Lab) -> bool:
    return all(peer_state(lab, node) == "connected" for node in NODES)


def pools_above(lab: Lab, levels: dict[str, int]) -> Callable[[], bool]:
    def grown() -> bool:
        return connected(lab) and all(ready_blocks(lab, n) > levels[n] for n in NODES)

    return grown


def pid_gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"


def wait_exited(*pids: int) -> None:
    """Wait until the processes have finished exiting, so the files they held are closed.

    ``Lab.kill`` and ``Lab.down`` return as soon as ``/proc/<pid>/cmdline`` no longer names
    the config, which is already the case while the kernel is still tearing the process
    down with its key store lock and peer socket open (see the report on cli/_lab.py).
    """
    wait_until(lambda: all(pid_gone(pid) for pid in pids), what=f"{pids} to exit", timeout=10.0)


def node_config(lab: Lab, node: str) -> Config:
    return load_config(lab.manifest()["kmes"][node]["config"])


def read_pool(cfg: Config, *, copy_to: Path | None = None) -> dict[int, tuple[KeyState, bytes]]:
    """Every block of the link in a node's store: ``{id: (state, bytes or b"")}``.

    With ``copy_to``, read a copy of the store files (database and WAL, as a crash left
    them) so that the node restarts from the untouched originals.
    """
    path = cfg.keystore_path
    if copy_to is not None:
        copy_to.mkdir()
        for suffix in ("", "-wal"):
            if path.with_name(path.name + suffix).exists():
                shutil.copy2(path.with_name(path.name + suffix), copy_to)
        path = copy_to / path.name
    with KeyStore.open(path, load_master_key(cfg.master_key_file)) as store:
        top = store.max_block_id(LINK)
        if top is None:
            return {}
        # Block ids follow the wall clock at 4 a second: 100 000 ids are seven hours.
        states = store.states(LINK, range(max(0, top - 100_000), top + 1))
        return {
            i: (s, store.read_block(LINK, i) if s is KeyState.READY else b"")
            for i, s in states.items()
        }


def ready(pool: dict[int, tuple[KeyState, bytes]]) -> dict[int, bytes]:
    return {i: key for i, (state, key) in pool.items() if state is KeyState.READY}


def check_consistent(lab: Lab) -> tuple[dict[int, bytes], dict[int, bytes]]:
    """Open both stores after ``down``; assert the pools agree.  Returns the READY blocks."""
    cfg_a, cfg_b = node_config(lab, "KME_A"), node_config(lab, "KME_B")
    pool_a, pool_b = read_pool(cfg_a), read_pool(cfg_b)
    ready_a, ready_b = ready(pool_a), ready(pool_b)
    in_flight = []
    for block_id in ready_a.keys() ^ ready_b.keys():
        here, there = (pool_a, pool_b) if block_id in ready_a else (pool_b, pool_a)
        other = there.get(block_id, (None, b""))[0]
        # READY at one end and absent, discarded or expired at the other is a broken pool.
        assert other is KeyState.RECEIVED, f"block {block_id}: ready at one end, {other} at other"
        in_flight.append(block_id)
    assert len(in_flight) <= IN_FLIGHT_BOUND, f"one-sided READY blocks: {sorted(in_flight)}"
    common = ready_a.keys() & ready_b.keys()
    assert common
    seed = cfg_a.links[LINK].params.seed
    block_bits = cfg_a.links[LINK].params.block_bits
    for block_id in common:
        assert ready_a[block_id] == ready_b[block_id], f"block {block_id} differs"
        assert ready_a[block_id] == paired_block(seed, LINK, block_id, block_bits)
    return ready_a, ready_b


def up(lab: Lab) -> dict[str, Any]:
    manifest = lab.up(load_topology(PAIR))
    wait_until(
        lambda: connected(lab) and all(ready_blocks(lab, n) >= 4 for n in NODES),
        what="both pools to have ready blocks",
    )
    return manifest


def assert_absolute_file(value: Any) -> None:
    assert isinstance(value, str) and os.path.isabs(value) and Path(value).is_file(), value


def file_mode(path: Path | str) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def assert_secrets_are_private(lab: Lab, manifest: dict[str, Any]) -> None:
    """Files holding secrets are 0600 in 0700 directories; the admin socket is 0600."""
    for kme in manifest["kmes"].values():
        home = Path(kme["config"]).parent
        assert file_mode(home) == 0o700
        assert file_mode(home / "state") == 0o700
        assert file_mode(kme["config"]) == 0o600  # the paired drivers' seeds
        assert file_mode(home / "master.key") == 0o600
        assert file_mode(kme["admin_socket"]) == 0o600
    pki = lab.dir / "pki"
    for directory in (pki, pki / "nodes", pki / "saes"):
        assert file_mode(directory) == 0o700
    keys = [pki / "ca.key", *pki.glob("*/*.key"), *pki.glob("saes/*.pqc.pem")]
    assert len(keys) >= 5
    assert {str(k): file_mode(k) for k in keys} == {str(k): 0o600 for k in keys}


def test_lab_up_status_down(lab: Lab) -> None:
    result = invoke("lab", "up", "--topology", str(PAIR), "--dir", str(lab.dir))
    assert result.exit_code == 0, result.output
    assert f"lab is up: {lab.manifest_path}" in result.stdout

    manifest = json.loads(lab.manifest_path.read_text())
    assert set(manifest) == {"topology", "ca", "kmes", "saes", "links", "drivers"}
    assert manifest["drivers"] == {LINK: "paired"}
    assert manifest["topology"] == "pair"
    assert_absolute_file(manifest["ca"])
    assert set(manifest["kmes"]) == set(NODES)
    for node, kme in manifest["kmes"].items():
        assert re.fullmatch(r"https://127\.0\.0\.1:\d{1,5}", kme["url"])
        assert re.fullmatch(r"http://127\.0\.0\.1:\d{1,5}/metrics", kme["metrics_url"])
        assert re.fullmatch(r"127\.0\.0\.1:\d{1,5}", kme["peer_address"])
        assert os.path.isabs(kme["admin_socket"]) and Path(kme["admin_socket"]).is_socket()
        assert type(kme["pid"]) is int and not pid_gone(kme["pid"])
        assert_absolute_file(kme["config"])
        assert load_config(kme["config"]).node_id == node
        assert os.path.isabs(kme["log"])
    assert manifest["saes"] == {
        sae: {
            "kme": kme,
            "cert": str(lab.dir / "pki" / "saes" / f"{sae}.pem"),
            "key": str(lab.dir / "pki" / "saes" / f"{sae}.key"),
        }
        for sae, kme in (("SAE_A", "KME_A"), ("SAE_B", "KME_B"))
    }
    for sae in manifest["saes"].values():
        assert_absolute_file(sae["cert"])
        assert_absolute_file(sae["key"])
    assert manifest["links"] == [["KME_A", "KME_B"]]
    assert_secrets_are_private(lab, manifest)
    for line, (node, kme) in zip(
        result.stdout.splitlines()[:2], manifest["kmes"].items(), strict=True
    ):
        assert line == f"{node}: pid {kme['pid']}  admin {kme['admin_socket']}"

    wait_until(
        lambda: connected(lab) and all(ready_blocks(lab, n) >= 1 for n in NODES),
        what="both pools to have ready blocks",
    )
    result = invoke("lab", "status", "--dir", str(lab.dir))
    assert result.exit_code == 0, result.output
    pages = result.stdout.split("\n\nnode ")
    assert len(pages) == 2
    for node, peer, page in zip(NODES, reversed(NODES), pages, strict=True):
        assert page.removeprefix("node ").startswith(f"{node}  pid {manifest['kmes'][node]['pid']}")
        assert re.search(rf"^{peer}\s+connected\s", page, re.MULTILINE), page
        row = re.search(
            rf"^{LINK}\s+{peer}\s+paired\s+up\s+(\d+\.\d+ \w+|\d+ bit)\s+(\d+)\s+(\d+)\s",
            page,
            re.MULTILINE,
        )
        assert row, page
        assert int(row.group(3)) >= 1  # ready blocks
    as_json = json.loads(invoke("lab", "status", "--dir", str(lab.dir), "--json").stdout)
    assert {n: s["node_id"] for n, s in as_json.items()} == {n: n for n in NODES}

    pids = [kme["pid"] for kme in manifest["kmes"].values()]
    result = invoke("lab", "down", "--dir", str(lab.dir))
    assert result.exit_code == 0, result.output
    assert result.stdout == "stopped 2 node(s): KME_A, KME_B\n"
    wait_exited(*pids)
    for kme in lab.manifest()["kmes"].values():
        assert kme["pid"] is None
        assert not Path(kme["admin_socket"]).exists()
    result = invoke("lab", "status", "--dir", str(lab.dir))
    assert result.stdout.splitlines()[0] == "KME_A: not running"


def test_kill_9_and_restart_keeps_the_store_and_the_pools_consistent(
    lab: Lab, tmp_path: Path
) -> None:
    manifest = up(lab)
    old_pid = manifest["kmes"]["KME_B"]["pid"]

    result = invoke("lab", "kill", "--dir", str(lab.dir), "KME_B")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"killed KME_B (pid {old_pid})\n"
    wait_exited(old_pid)
    assert lab.manifest()["kmes"]["KME_B"]["pid"] is None
    wait_until(lambda: peer_state(lab, "KME_A") != "connected", what="KME_A to see KME_B gone")
    assert peer_state(lab, "KME_A") in ("disconnected", "connecting")
    result = invoke("lab", "status", "--dir", str(lab.dir))
    assert "\nKME_B: not running" in result.stdout

    # What KME_B's store held at the crash (read from a copy: B restarts from the original).
    before = ready(read_pool(node_config(lab, "KME_B"), copy_to=tmp_path / "crashed-b"))
    assert len(before) >= 4

    result = invoke("lab", "start", "--dir", str(lab.dir), "KME_B")
    assert result.exit_code == 0, result.output
    kme_b = lab.manifest()["kmes"]["KME_B"]
    assert result.stdout == f"started KME_B (pid {kme_b['pid']})\n"
    assert kme_b["pid"] != old_pid and not pid_gone(kme_b["pid"])
    assert kme_b["peer_address"] == manifest["kmes"]["KME_B"]["peer_address"]
    assert admin(lab, "KME_B", "status")["peer_listen"] == kme_b["peer_address"]

    levels = {n: ready_blocks(lab, n) for n in NODES}
    wait_until(pools_above(lab, levels), what="reconnection and growing pools")
    pids = [kme["pid"] for kme in lab.manifest()["kmes"].values()]
    lab.down()
    wait_exited(*pids)

    ready_a, ready_b = check_consistent(lab)
    survived = {i for i in before if i in ready_b and ready_b[i] == before[i]}
    assert survived == before.keys(), "blocks READY at KME_B before the kill were lost"
    assert before.keys() <= ready_a.keys()
    assert max(ready_b) > max(before)  # and the pool grew after the restart


def test_repeated_kill_9_mid_sync_leaves_consistent_stores(lab: Lab, tmp_path: Path) -> None:
    up(lab)
    # Alternate victims; kill right after the session reopens (re-announces and confirms in
    # flight) or a moment later (mid-batch).  Each crashed store must open and keep its READY
    # blocks: READY never goes back while nothing consumes keys.
    snapshots: dict[str, dict[int, bytes]] = {n: {} for n in NODES}
    for round_, (victim, delay) in enumerate((("KME_B", 0.0), ("KME_A", 0.15), ("KME_B", 0.4))):
        wait_until(lambda: connected(lab), what="the session to reopen")
        time.sleep(delay)
        wait_exited(lab.kill(victim))
        snapshot = ready(read_pool(node_config(lab, victim), copy_to=tmp_path / f"crash{round_}"))
        assert snapshots[victim].keys() <= snapshot.keys()
        snapshots[victim] = snapshot
        lab.start(victim)

    levels = {n: ready_blocks(lab, n) for n in NODES}
    wait_until(pools_above(lab, levels), what="reconnection and growing pools")
    pids = [kme["pid"] for kme in lab.manifest()["kmes"].values()]
    lab.down()
    wait_exited(*pids)

    ready_a, ready_b = check_consistent(lab)
    for node, final in (("KME_A", ready_a), ("KME_B", ready_b)):
        snapshot = snapshots[node]
        assert snapshot and all(final.get(i) == key for i, key in snapshot.items()), node


def test_lab_refuses_what_would_break_it(lab: Lab) -> None:
    manifest = up(lab)
    pids = {n: k["pid"] for n, k in manifest["kmes"].items()}

    result = invoke("lab", "up", "--topology", str(PAIR), "--dir", str(lab.dir))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {lab.dir}: a lab is already running here (`qkmsctl lab down` first)\n"
    )
    result = invoke("lab", "start", "--dir", str(lab.dir), "KME_A")
    assert result.exit_code == 1
    assert result.stderr == f"Error: node KME_A is already running (pid {pids['KME_A']})\n"
    result = invoke("lab", "kill", "--dir", str(lab.dir), "KME_Z")
    assert result.exit_code == 1
    assert result.stderr == "Error: no node 'KME_Z' in this lab (known: KME_A, KME_B)\n"

    # Nothing was disturbed: the same processes serve on.
    assert {n: k["pid"] for n, k in lab.manifest()["kmes"].items()} == pids
    assert all(admin(lab, n, "status")["pid"] == pids[n] for n in NODES)
    assert connected(lab)

    lab.kill("KME_B")
    result = invoke("lab", "kill", "--dir", str(lab.dir), "KME_B")
    assert result.exit_code == 1
    assert result.stderr == "Error: node KME_B is not running\n"


def test_lab_commands_without_a_lab_say_so(tmp_path: Path) -> None:
    result = invoke("lab", "status", "--dir", str(tmp_path))
    assert result.exit_code == 1
    assert result.stderr == (
        f"Error: {tmp_path / 'lab.json'}: no lab here (run `qkmsctl lab up` first)\n"
    )
