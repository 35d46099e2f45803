"""``qkmsctl lab`` with fault proxies: a partition of the paper's 3-node lab, then a heal.

paper-3node (KME1 - KME2 - KME3, SAE1 on KME1, SAE3 on KME3, their keys relayed through
KME2) with a fault proxy on every peer session.  SAE1 and SAE3 ask each other for keys
throughout; KME1 is cut off from KME2 and KME3 for a while, then healed.  Each side keeps
serving from what it holds; afterwards, from the SAEs' own records: no key id delivered
twice, no value under two ids, and every key a master got is retrievable, intact, by its
slave; both ends of every pool hold the same READY blocks (ids and key check values).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from cli._admin import AdminClient
from cli._lab import Lab
from cli.main import qkmsctl
from qkms_client import Etsi014Client, Etsi014Error, ServiceUnavailable

pytestmark = pytest.mark.system

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper-3node.toml"
POOLS = {
    "KME1~KME2": ("KME1", "KME2"),
    "KME2~KME3": ("KME2", "KME3"),
    "KME1~KME3": ("KME1", "KME3"),
}
PAIRS = [("SAE1", "SAE3"), ("SAE3", "SAE1")]
WAIT_S = 60.0


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(qkmsctl, list(args))
    assert result.exit_code == 0, result.output
    return result


def wait_until(predicate: Callable[[], bool], *, what: str, timeout: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.1)


class Saes:
    """The SAEs of the lab and what each master got: key id -> (slave, digest)."""

    def __init__(self, lab: Lab) -> None:
        self.manifest = lab.manifest()
        self.delivered: dict[str, tuple[str, str, bytes]] = {}
        self.served: dict[str, int] = {}
        self.refused: dict[str, int] = {}
        self.reasons: set[str] = set()

    def client(self, sae: str) -> Etsi014Client:
        entry = self.manifest["saes"][sae]
        kme = entry["kme"]
        return Etsi014Client(
            self.manifest["kmes"][kme]["url"],
            ca=self.manifest["ca"],
            cert=entry["cert"],
            key=entry["key"],
            kme_id=kme,
            timeout=10.0,
        )

    def ask(self, phase: str) -> None:
        """Each pair asks once for two keys; what came back is recorded under ``phase``."""
        for master, slave in PAIRS:
            with self.client(master) as client:
                try:
                    keys = client.get_key(slave, number=2)
                except ServiceUnavailable as exc:
                    self.refused[phase] = self.refused.get(phase, 0) + 1
                    self.reasons.add(exc.message.split(":")[0])
                    continue
            self.served[phase] = self.served.get(phase, 0) + 1
            for key in keys:
                assert key.key_id not in self.delivered, f"key id {key.key_id} delivered twice"
                digest = hashlib.sha256(key.key).digest()
                self.delivered[key.key_id] = (master, slave, digest)

    def unretrievable(self) -> list[str]:
        missing = []
        for key_id, (master, slave, digest) in self.delivered.items():
            with self.client(slave) as client:
                try:
                    (key,) = client.get_key_with_ids(master, [key_id])
                except Etsi014Error:
                    missing.append(key_id)
                    continue
            if hashlib.sha256(key.key).digest() != digest:
                missing.append(key_id)
        return missing


def check(lab: Lab, node: str, link: str, last: int) -> dict[str, Any]:
    socket = lab.manifest()["kmes"][node]["admin_socket"]
    return AdminClient(socket, timeout=10.0).call("check", link_id=link, first=0, last=last)


def newest(lab: Lab, node: str, link: str) -> int:
    socket = lab.manifest()["kmes"][node]["admin_socket"]
    for row in AdminClient(socket, timeout=10.0).call("links")["links"]:
        if row["link_id"] == link:
            return int(row["newest_block_id"] or 0)
    return 0


def connected(lab: Lab) -> bool:
    for status in lab.status().values():
        if any(p["state"] != "connected" for p in status.get("peers", [{"state": "down"}])):
            return False
    return True


def pools_agree(lab: Lab, lasts: dict[str, int]) -> Callable[[], bool]:
    def agree() -> bool:
        for link, (a, b) in POOLS.items():
            ends = [check(lab, n, link, lasts[link]) for n in (a, b)]
            if (ends[0]["ready_ids"], ends[0]["kcv"]) != (ends[1]["ready_ids"], ends[1]["kcv"]):
                return False
        return True

    return agree


def test_a_partition_serves_from_what_each_side_holds_and_loses_no_delivered_key(
    tmp_path: Path,
) -> None:
    lab_dir = tmp_path / "lab"
    invoke("lab", "up", "--topology", str(PAPER), "--dir", str(lab_dir), "--fault", "all=none")
    lab = Lab(lab_dir)
    try:
        saes = Saes(lab)
        wait_until(lambda: connected(lab), what="every session")
        wait_until(
            lambda: (saes.ask("before"), saes.served.get("before", 0) >= 4)[1],
            what="keys flowing both ways",
        )
        invoke("lab", "partition", "--dir", str(lab_dir), "KME1", "KME2,KME3")
        wait_until(lambda: not connected(lab), what="the partition")
        for _ in range(10):
            saes.ask("partitioned")
        invoke("lab", "heal", "--dir", str(lab_dir))
        wait_until(lambda: connected(lab), what="the sessions to heal")
        for _ in range(5):
            saes.ask("after")
        lasts = {
            link: min(newest(lab, a, link), newest(lab, b, link)) for link, (a, b) in POOLS.items()
        }
        wait_until(pools_agree(lab, lasts), what="both ends of every pool to agree")
        assert saes.unretrievable() == []
        digests = [d for _, _, d in saes.delivered.values()]
        assert len(digests) == len(set(digests)), "a key value under two ids"
        # Cut off, a side serves a pair across the cut only from the stock it holds (keys
        # the other side recorded before); past that, 503 naming the cause, never a 500.
        assert saes.served.get("partitioned", 0) + saes.refused.get("partitioned", 0) == 20
        print(f"\npartition: served {saes.served}, refused {saes.refused}: {saes.reasons}")
        stats = invoke("lab", "faults", "--dir", str(lab_dir)).output
        assert "KME1-KME2: none" in stats
    finally:
        lab.down()
