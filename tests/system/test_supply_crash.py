"""No key reuse, and agreement, while ETSI 014 traffic runs through kill -9 of either KME."""

from __future__ import annotations

import time
import tomllib

import pytest

from cli._lab import Lab
from cli._topology import topology_from_mapping
from qkms_client import Etsi014Client, Etsi014Error

from .labkit import Workers

pytestmark = pytest.mark.system

TOPOLOGY = """
name = "supply-crash"
[defaults]
driver = "paired"
params = { rate_bps = 2000000.0, block_bits = 65536 }
[nodes.KME_A]
[nodes.KME_B]
[[links]]
a = "KME_A"
b = "KME_B"
[saes.SAE_A]
kme = "KME_A"
[saes.SAE_B]
kme = "KME_B"
"""


class Traffic(Workers):
    """One SAE pair asking for keys in a loop; what each side got, by key id."""

    def __init__(self, manifest: dict[str, object]) -> None:
        super().__init__([()], name="sae-pair")
        self.manifest = manifest
        self.master: dict[str, bytes] = {}
        self.slave: dict[str, bytes] = {}
        self.refused = 0

    def client(self, sae: str) -> Etsi014Client:
        saes = self.manifest["saes"]
        kmes = self.manifest["kmes"]
        assert isinstance(saes, dict) and isinstance(kmes, dict)
        entry = saes[sae]
        return Etsi014Client(
            kmes[entry["kme"]]["url"],
            ca=str(self.manifest["ca"]),
            cert=entry["cert"],
            key=entry["key"],
            timeout=10.0,
        )

    def work(self) -> None:
        master, slave = self.client("SAE_A"), self.client("SAE_B")
        while not self.stop.is_set():
            try:
                got = master.get_key("SAE_B", number=4, size=256)
                for key in got:
                    assert key.key_id not in self.master, "a key id served twice"
                    self.master[key.key_id] = key.key
                fetched = slave.get_key_with_ids("SAE_A", [k.key_id for k in got])
                self.slave.update((k.key_id, k.key) for k in fetched)
            except Etsi014Error:
                self.refused += 1  # a KME is down or restarting: expected here
                time.sleep(0.05)

    def delivered(self) -> int:
        return len(self.master)


def wait_for_more(traffic: Traffic, than: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while traffic.delivered() < than + 20:
        assert time.monotonic() < deadline, "key delivery did not resume"
        time.sleep(0.05)


def test_no_key_is_served_twice_and_both_ends_agree_across_kill_9_of_either_kme(
    lab: Lab,
) -> None:
    topo = topology_from_mapping(tomllib.loads(TOPOLOGY), label="embedded")
    manifest = lab.up(topo)
    with Traffic(manifest) as traffic:
        wait_for_more(traffic, 0)
        for victim in ("KME_A", "KME_B", "KME_A"):
            lab.kill(victim)
            time.sleep(0.3)
            lab.start(victim)
            wait_for_more(traffic, traffic.delivered())
    # No reuse: every key delivered to the master is distinct bits under a distinct id.
    assert len(set(traffic.master.values())) == len(traffic.master)
    # Agreement: whatever the slave fetched is exactly what the master got for that id.
    assert traffic.slave, "the slave fetched nothing"
    assert all(traffic.master[i] == k for i, k in traffic.slave.items())
    assert traffic.delivered() >= 80
