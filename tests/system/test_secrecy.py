"""Secrecy end to end: after the demo (three real daemons, relays included) and SAE traffic,
no delivered key and no link key block appears in any log line, metric, admin or CLI
answer, dashboard page or state file other than the encrypted store, in raw, hex or
base64 form.

The secrets are every key the SAEs were handed here, every block each paired link
produced while the lab ran (regenerated from the seed in the node's config), and every
block still held in each node's store (read after the nodes stop, with their master keys:
relayed end-to-end blocks included).
"""

from __future__ import annotations

import json
import sqlite3
import time
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from cli._admin import AdminClient, AdminError
from cli._lab import Lab
from cli.main import qkmsctl
from qkd_drivers._paired import paired_block
from qkms_client import Etsi014Client
from qkmsd.keystore import KeyStore, KeyStoreError, load_master_key
from tests.secrecy import SecretScanner

pytestmark = pytest.mark.system

ADMIN_METHODS = ("status", "peers", "links", "routes", "relays", "alarms", "active", "history")
STORE_FILES = ("keystore.sqlite", "keystore.sqlite-wal", "keystore.sqlite-shm")


def cli(*args: str) -> str:
    result = CliRunner().invoke(qkmsctl, list(args))
    return result.output + (str(result.exception) if result.exception else "")


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310 - loopback
        return str(answer.read().decode("utf-8", "replace"))


def sae_keys(manifest: dict[str, Any], rounds: int) -> list[bytes]:
    """Keys SAE1 (KME1) gets for SAE3 (KME3) and SAE3 fetches by id: relayed key."""
    saes, kmes = manifest["saes"], manifest["kmes"]
    master = Etsi014Client(
        kmes["KME1"]["url"], ca=manifest["ca"], cert=saes["SAE1"]["cert"], key=saes["SAE1"]["key"]
    )
    slave = Etsi014Client(
        kmes["KME3"]["url"], ca=manifest["ca"], cert=saes["SAE3"]["cert"], key=saes["SAE3"]["key"]
    )
    keys: list[bytes] = []
    with master, slave:
        for _ in range(rounds):
            deadline = time.monotonic() + 30
            while True:
                try:
                    sent = master.get_key("SAE3", number=2, size=256)
                    break
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)  # the end-to-end pool refills by relay
            got = slave.get_key_with_ids("SAE1", [k.key_id for k in sent])
            same = [k.key for k in got] == [k.key for k in sent]
            assert same, "SAE1 got other bytes than SAE3 for the same key ids"  # no key shown
            keys += [k.key for k in sent]
    return keys


def observe(lab: Lab, manifest: dict[str, Any]) -> dict[str, str]:
    """What an operator or a scraper can see of the running lab."""
    seen: dict[str, str] = {}
    for node, kme in manifest["kmes"].items():
        seen[f"{node} metrics"] = get(kme["metrics_url"])
        seen[f"{node} dashboard /"] = get(kme["dashboard_url"])
        seen[f"{node} dashboard /state.json"] = get(kme["dashboard_url"] + "state.json")
        client = AdminClient(kme["admin_socket"], timeout=10.0)
        for method in ADMIN_METHODS:
            try:
                seen[f"{node} admin {method}"] = json.dumps(client.call(method))
            except AdminError as exc:
                seen[f"{node} admin {method}"] = str(exc)
        for command in ("status", "peers", "links", "routes", "relays", "alarms"):
            for extra in ((), ("--json",)):
                args = (command, "--lab", str(lab.dir), "--node", node, *extra)
                seen[f"qkmsctl {' '.join(args)}"] = cli(*args)
    seen["qkmsctl lab status"] = cli("lab", "status", "--dir", str(lab.dir))
    seen["qkmsctl sae"] = cli(
        "sae", "get-key", "SAE3", "--lab", str(lab.dir), "--sae", "SAE1", "--json"
    )
    return seen


def link_blocks(manifest: dict[str, Any], since: float, until: float) -> list[bytes]:
    """Every block the paired links produced between ``since`` and ``until``."""
    blocks: dict[tuple[str, int], bytes] = {}
    for kme in manifest["kmes"].values():
        config = tomllib.loads(Path(kme["config"]).read_text())
        for link_id, link in config.get("links", {}).items():
            params = link["params"]
            interval = params["block_bits"] / params["rate_bps"]
            for block_id in range(int(since / interval) - 1, int(until / interval) + 2):
                if (link_id, block_id) not in blocks:
                    blocks[(link_id, block_id)] = paired_block(
                        params["seed"], link_id, block_id, params["block_bits"]
                    )
    return list(blocks.values())


def stored_blocks(manifest: dict[str, Any]) -> list[bytes]:
    """The material of every block still held in each node's store (nodes stopped)."""
    out: list[bytes] = []
    for kme in manifest["kmes"].values():
        config = tomllib.loads(Path(kme["config"]).read_text())
        state = Path(config["node"]["state_dir"])
        key = load_master_key(Path(config["node"]["master_key_file"]))
        with sqlite3.connect(state / "keystore.sqlite") as db:
            ids = db.execute("SELECT link_id, block_id FROM block_material").fetchall()
        with KeyStore.open(state / "keystore.sqlite", key) as store:
            for link_id, block_id in ids:
                try:
                    out.append(store.read_block(link_id, block_id))
                except KeyStoreError:
                    pass
    return out


def state_files(lab: Lab) -> dict[str, bytes]:
    """Every file of the lab directory but the encrypted stores (logs, configs, PKI, the
    alarm and controller databases...)."""
    return {
        str(p.relative_to(lab.dir)): p.read_bytes()
        for p in sorted(lab.dir.rglob("*"))
        if p.is_file() and p.name not in STORE_FILES and not p.is_socket()
    }


def test_no_key_material_anywhere_an_operator_or_a_scraper_can_look(lab: Lab) -> None:
    since = time.time()
    seen = {"qkmsctl demo": cli("demo", "--dir", str(lab.dir), "--keep")}
    manifest = lab.manifest()
    delivered = sae_keys(manifest, rounds=4)
    seen |= observe(lab, manifest)
    lab.down()
    until = time.time()
    seen |= {f"file {name}": data.decode("latin-1") for name, data in state_files(lab).items()}
    blocks = link_blocks(manifest, since, until)
    held = stored_blocks(manifest)
    scanner = SecretScanner([*delivered, *blocks, *held])
    hits = [hit for where, text in seen.items() for hit in scanner.scan(where, text)]
    print(
        f"secrecy scan: {len(delivered)} delivered keys, {len(blocks)} link blocks regenerated,"
        f" {len(held)} stored blocks; {len(seen)} sources,"
        f" {sum(len(t) for t in seen.values())} characters; {len(hits)} hits"
    )
    # Counts only in the assertions: a failing assertion must not print key material.
    n_delivered, n_blocks, n_held = len(delivered), len(blocks), len(held)
    assert n_delivered == 8 and n_blocks >= 10 and n_held > 0
    # The regenerated stream is the links' real one (stored blocks are among it), and the
    # scanner would see a delivered key had it been logged: the scan is not vacuous.
    overlap = len(set(held) & set(blocks))
    assert overlap > 0
    planted = len(scanner.scan("planted", f"event=x key={delivered[0].hex()}"))
    assert planted > 0
    assert any("KME1" in name and "log" in name for name in seen)
    assert hits == [], "\n".join(map(str, hits[:20]))
