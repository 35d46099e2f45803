"""``qkmsctl demo``: the most complete scenario qkms can run, narrated for a newcomer.

The topology is embedded so the demo needs nothing but the installed package.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from qkms_client import Etsi014Client, Etsi014Error
from qkms_pqc import HybridPrivateKey

from ._admin import AdminClient
from ._errors import CliError, Command
from ._lab import Lab
from ._render import bits, node_status
from ._topology import topology_from_mapping

DEMO_TOPOLOGY = """
name = "demo-pair"
description = "two trusted nodes joined by one simulated QKD link"

[defaults]
driver = "paired"
params = { rate_bps = 32768.0, block_bits = 4096 }

[nodes.KME_A]
controller = true
priority = 100

[nodes.KME_B]
controller = true
priority = 50

[[links]]
a = "KME_A"
b = "KME_B"
distance_km = 20.0

[saes.SAE_A]
kme = "KME_A"
pqc = true

[saes.SAE_B]
kme = "KME_B"

[saes.SAE_B2]
kme = "KME_B"
"""

WATCH_SECONDS = 6


def say(text: str = "", **style: Any) -> None:
    click.secho(text, **style)


def step(n: int, total: int, title: str) -> None:
    say()
    say(f"[{n}/{total}] {title}", bold=True)


@contextlib.contextmanager
def _lab_dir(directory: Path | None) -> Iterator[Path]:
    if directory is not None:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="qkms-demo-") as tmp:
        yield Path(tmp)


@click.command(cls=Command)
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    help="keep the lab here instead of a temporary directory",
)
@click.option("--keep", is_flag=True, help="leave the lab running at the end (needs --dir)")
def demo(directory: Path | None, keep: bool) -> None:
    """Run a two-node qkms network on loopback and explain what happens."""
    if keep and directory is None:
        raise click.UsageError("--keep needs --dir, so that you can find the lab afterwards")
    topo = topology_from_mapping(tomllib.loads(DEMO_TOPOLOGY), label="embedded demo topology")
    total = 6
    say("qkms demo: a quantum key management network on this machine", bold=True, fg="cyan")
    say(
        "Two trusted nodes, KME_A and KME_B, share one QKD link. On each node a qkmsd\n"
        "daemon stores the key its QKD device produces, and the two daemons agree, block\n"
        "by block, on which key both hold before any of it may be used. Applications\n"
        "(SAEs) then get keys through the ETSI GS QKD 014 REST API. The QKD devices\n"
        "are simulated by the 'paired' driver: both ends derive the same blocks from a\n"
        "shared seed (a stand-in for key management, not physics)."
    )
    with _lab_dir(directory) as where:
        lab = Lab(where)
        step(1, total, "Network PKI and node configuration")
        say(
            "A certificate authority for this network signs one certificate per node and one\n"
            "per application (SAE). Nodes authenticate each other with mutual TLS 1.3 against\n"
            "this CA only; a certificate from any other CA is refused during the handshake."
        )
        started = time.monotonic()
        manifest = lab.up(topo, progress=lambda s: say(f"  - {s}", dim=True))
        try:
            _narrate(lab, manifest, total)
            if keep:
                say(f"\nThe lab keeps running. Try: qkmsctl lab status --dir {where}", bold=True)
                return
        finally:
            if not keep:
                step(total, total, "Shutting the lab down")
                stopped = lab.down()
                say(f"  stopped {', '.join(stopped)} with SIGTERM (graceful shutdown)")
        say(f"\nDemo finished in {time.monotonic() - started:.0f} s.", bold=True, fg="green")


def _client(manifest: dict[str, Any], sae: str) -> Etsi014Client:
    entry = manifest["saes"][sae]
    pqc = HybridPrivateKey.load(entry["pqc_key"]) if "pqc_key" in entry else None
    return Etsi014Client(
        manifest["kmes"][entry["kme"]]["url"],
        ca=manifest["ca"],
        cert=entry["cert"],
        key=entry["key"],
        pqc_private_key=pqc,
    )


def fingerprint(key: bytes) -> str:
    return hashlib.sha256(key).hexdigest()[:16]


def _deliver_keys(manifest: dict[str, Any], total: int) -> None:
    step(5, total, "Applications get keys (ETSI GS QKD 014 over mutual TLS)")
    say(
        "SAE_A (on KME_A) asks its KME for two 256-bit keys to share with SAE_B (on KME_B).\n"
        "KME_A cuts them from the pool it shares with KME_B, has KME_B record the same key\n"
        "IDs durably, then answers. SAE_A registered a hybrid post-quantum key (ML-KEM-768\n"
        "+ X25519), so its keys travel wrapped and the client library unwraps them. Below,\n"
        "keys are shown by fingerprint (a hash), never as key material."
    )
    sae_a, sae_b, sae_b2 = (_client(manifest, s) for s in ("SAE_A", "SAE_B", "SAE_B2"))
    status = sae_a.status("SAE_B")
    say(
        f"  status: {status.stored_key_count} keys of {status.key_size} bits ready "
        f"for SAE_A -> SAE_B (at most {status.max_key_per_request} per request)"
    )
    delivery = sae_a.get_key("SAE_B", number=2, size=256)
    for key in delivery:
        say(f"  SAE_A got key {key.key_id}  fingerprint {fingerprint(key.key)}")
    say(f"  (PQC-wrapped in transit and unwrapped by qkms_client: {delivery.pqc_unwrapped})")
    fetched = sae_b.get_key_with_ids("SAE_A", [k.key_id for k in delivery])
    for key in fetched:
        say(f"  SAE_B got key {key.key_id}  fingerprint {fingerprint(key.key)}")
    same = [a.key for a in delivery] == [b.key for b in fetched]
    say(
        "  Both applications hold the same keys." if same else "  The keys DIFFER.",
        fg="green" if same else "red",
    )
    try:
        sae_b.get_key_with_ids("SAE_A", [delivery[0].key_id])
    except Etsi014Error as exc:
        say(f"  SAE_B asks again: refused ({exc}): each key is delivered once, then erased.")
    try:
        sae_b2.get_key_with_ids("SAE_A", [delivery[1].key_id])
    except Etsi014Error as exc:
        say(f"  SAE_B2, not named by SAE_A, asks for it: refused ({exc}).")


def _narrate(lab: Lab, manifest: dict[str, Any], total: int) -> None:
    kmes = manifest["kmes"]
    for node, kme in kmes.items():
        say(
            f"  {node}: qkmsd pid {kme['pid']}, peer port {kme['peer_address']}, "
            f"admin {kme['admin_socket']}"
        )

    step(2, total, "The nodes find each other")
    say(
        "The node with the lower id dials its peer; both check that the certificate names\n"
        "the node they expect, then exchange Hello messages (framed msgpack)."
    )
    clients = {node: AdminClient(kme["admin_socket"]) for node, kme in kmes.items()}
    deadline = time.monotonic() + 20
    while not all(
        p["state"] == "connected" for c in clients.values() for p in c.call("peers")["peers"]
    ):
        if time.monotonic() > deadline:
            raise CliError("the nodes did not connect within 20 s; see their logs")
        time.sleep(0.1)
    for node, client in clients.items():
        for peer in client.call("peers")["peers"]:
            say(f"  {node} -> {peer['node_id']}: {peer['state']} (protocol v{peer['version']})")

    step(3, total, "Key flows in and is synchronised")
    say(
        "Each new block is stored encrypted under the node's master key as RECEIVED and\n"
        "announced to the peer. It becomes READY only when both ends hold it. Each block\n"
        "belongs to exactly one end (by a rule both compute), so the two ends can serve\n"
        "keys at the same time without ever handing out the same bits."
    )
    for second in range(1, WATCH_SECONDS + 1):
        time.sleep(1)
        row = []
        for node, client in clients.items():
            link = client.call("links")["links"][0]
            row.append(
                f"{node}: {link['ready_blocks']:3d} ready blocks, {bits(link['ready_bits']):>10}, "
                f"{link['unconfirmed_blocks']} awaiting confirmation"
            )
        say(f"  t={second}s  " + "   ".join(row))

    step(4, total, "Do both ends hold the same key?")
    link_id = next(iter(clients["KME_A"].call("links")["links"]))["link_id"]
    newest = min(c.call("links")["links"][0]["newest_block_id"] for c in clients.values())
    window = {"link_id": link_id, "first": newest - 400, "last": newest - 4}
    checks = {node: c.call("check", **window) for node, c in clients.items()}
    say(
        "Each node reports the ids of its READY blocks in the same window and a key check\n"
        "value (24 bits of a keyed hash over those blocks: equal values mean equal key,\n"
        "and 24 bits say nothing useful about the key itself)."
    )
    for node, check in checks.items():
        ids = check["ready_ids"]
        say(f"  {node}: {len(ids)} ready blocks, ids {ids[0]}..{ids[-1]}, KCV {check['kcv']}")
    values = list(checks.values())
    if all(v == values[0] for v in values):
        say("  Identical at both ends: the pools are synchronised.", fg="green")
    else:
        say("  The ends differ in this window (a block may still be in flight).", fg="yellow")
    _deliver_keys(manifest, total)
    say()
    say("Status of both nodes, as `qkmsctl lab status` shows it:", bold=True)
    for node, status in lab.status().items():
        say(node_status(status) if "error" not in status else f"{node}: {status['error']}")
        say()
