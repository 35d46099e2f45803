"""Three real nodes in a line with a fault proxy on every peer session, and the checks
that both ends of each pool agree once the faults stop.

KME_A - KME_B - KME_C: QKD links A~B and B~C, an end-to-end pool A~C filled by relays
through B, and the direct A-C session that synchronises it.  Each session runs through a
``FaultProxy`` (the lower id dials, through the proxy).  SAE_A on A asks for keys to
SAE_B (direct link) and SAE_C (relayed); SAE_C asks for keys to SAE_A.

Nothing here prints key material: keys are compared in memory and only ids and counts
appear in messages.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import trio

from cli.faultproxy import FaultProxy, FaultSpec, parse_spec
from qkms_client import Etsi014Error, TrioEtsi014Client
from qkmsd.app import Node, NodeInfo
from qkmsd.keystore import KeyState, KeyStoreError

from ..conftest import ConfigFactory

FAST = {"rate_bps": 1e6, "block_bits": 32768}
NODES = ("KME_A", "KME_B", "KME_C")
LINKS = {"KME_A~KME_B": ("KME_A", "KME_B"), "KME_B~KME_C": ("KME_B", "KME_C")}
E2E = "KME_A~KME_C"
POOLS = {**LINKS, E2E: ("KME_A", "KME_C")}
SESSIONS = [("KME_A", "KME_B"), ("KME_B", "KME_C"), ("KME_A", "KME_C")]
SAES = {"SAE_A": {"kme": "KME_A"}, "SAE_B": {"kme": "KME_B"}, "SAE_C": {"kme": "KME_C"}}
PAIRS = [("SAE_A", "SAE_C"), ("SAE_A", "SAE_B"), ("SAE_C", "SAE_A")]
SYNC = {"timeout_s": 2.0, "heartbeat_s": 0.5, "announce_interval_s": 0.05, "reconnect_max_s": 1.0}
RELAY = {
    "block_bits": 4096,
    "low_bits": 16384,
    "high_bits": 32768,
    "timeout_s": 2.0,
    "link_reserve_bits": 0,
    "request_wait_s": 1.0,
}
SUPPLY = {"reserve_timeout_s": 1.0}
HELD = frozenset({KeyState.READY, KeyState.RESERVED, KeyState.DELIVERED, KeyState.ERASED})


@dataclasses.dataclass
class Delivered:
    """One key an SAE got from ``enc_keys``: who, and a digest of its value (never shown)."""

    master: str
    slave: str
    digest: bytes


@dataclasses.dataclass
class FaultNet:
    nodes: dict[str, Node]
    infos: dict[str, NodeInfo]
    proxies: dict[tuple[str, str], FaultProxy]
    pki: Path
    stack: contextlib.AsyncExitStack
    delivered: dict[str, Delivered] = dataclasses.field(default_factory=dict)
    refused: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)

    def store(self, kme: str) -> Any:
        return self.nodes[kme].store_thread._store  # type: ignore[union-attr]

    def client(self, sae: str) -> TrioEtsi014Client:
        """A client on a connection of its own; the caller closes it (``aclose``): the
        node caps the connections one address may hold open."""
        kme = SAES[sae]["kme"]
        return TrioEtsi014Client(
            f"https://127.0.0.1:{self.infos[kme].api_port}",
            ca=self.pki / "ca.pem",
            cert=self.pki / "saes" / f"{sae}.pem",
            key=self.pki / "saes" / f"{sae}.key",
            kme_id=kme,
        )

    def set_faults(self, spec: FaultSpec, sessions: list[tuple[str, str]] | None = None) -> None:
        for pair in sessions or SESSIONS:
            self.proxies[pair].set_spec(spec)

    def faults_injected(self) -> int:
        return sum(p.stats.faults() for p in self.proxies.values())

    def connected(self, a: str, b: str) -> bool:
        peers_a, peers_b = self.nodes[a].peers, self.nodes[b].peers
        assert peers_a is not None and peers_b is not None
        return peers_a.is_connected(b) and peers_b.is_connected(a)


async def _run(config: Any, *, task_status: trio.TaskStatus[tuple[Node, NodeInfo]]) -> None:
    node = Node(config)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(node.run)
        task_status.started((node, info))


@contextlib.asynccontextmanager
async def fault_line(node_config: ConfigFactory, pki: Path) -> AsyncIterator[FaultNet]:
    """C, then B, then A (the lower id dials), each dialling through a fault proxy."""
    topology = [list(pair) for pair in LINKS.values()]
    relay = {**RELAY, "topology": topology}
    proxies: dict[tuple[str, str], FaultProxy] = {}
    nodes: dict[str, Node] = {}
    infos: dict[str, NodeInfo] = {}

    async with trio.open_nursery() as nursery:
        for kme in reversed(NODES):
            peers = {}
            for a, b in SESSIONS:
                if kme not in (a, b):
                    continue
                other = b if a == kme else a
                if kme < other:  # we dial: through the proxy in front of the other
                    proxy = FaultProxy(("127.0.0.1", infos[other].peer_port), name=f"{kme}-{other}")
                    await nursery.start(proxy.run)
                    proxies[(a, b)] = proxy
                    peers[other] = f"127.0.0.1:{proxy.port}"
                else:
                    peers[other] = "127.0.0.1:1"  # the address of a peer that dials us
            links = {
                link_id: (b if a == kme else a, "paired", {**FAST, "seed": link_id.ljust(32, "x")})
                for link_id, (a, b) in LINKS.items()
                if kme in (a, b)
            }
            pools = {"KME_C": {}} if kme == "KME_A" else {"KME_A": {}} if kme == "KME_C" else {}
            cfg = node_config(
                kme,
                peers=peers,
                links=links,
                api=True,
                saes=SAES,
                sync=SYNC,
                supply=SUPPLY,
                relay={**relay, "pools": pools},
            )
            nodes[kme], infos[kme] = await nursery.start(_run, cfg)
        async with contextlib.AsyncExitStack() as stack:
            yield FaultNet(nodes, infos, proxies, pki, stack)
        nursery.cancel_scope.cancel()


async def wait_until_connected(net: FaultNet) -> None:
    while True:
        if all(net.connected(a, b) for a, b in SESSIONS):
            return
        await trio.sleep(0.02)


async def wait_for_key(net: FaultNet) -> None:
    """Until every pool has ready key at both ends (the relays have started)."""
    while True:
        if all(net.store(k).pool(p).ready_bits for p, ends in POOLS.items() for k in ends):
            return
        await trio.sleep(0.05)


async def sae_traffic(net: FaultNet, stop: trio.Event) -> None:
    """Each pair of ``PAIRS`` asks for keys until ``stop``; what it gets is recorded."""

    async def ask(master: str, slave: str) -> None:
        client = net.client(master)
        try:
            await asking(master, slave, client)
        finally:
            await client.aclose()

    async def asking(master: str, slave: str, client: TrioEtsi014Client) -> None:
        while not stop.is_set():
            try:
                keys = await client.get_key(slave, number=2)
            except Etsi014Error as exc:
                net.refused[type(exc).__name__] += 1
                await client.aclose()  # a fresh connection after any failure
                client = net.client(master)
                await trio.sleep(0.05)
                continue
            for key in keys:
                assert key.key_id not in net.delivered, f"key id {key.key_id} delivered twice"
                digest = hashlib.sha256(key.key).digest()
                net.delivered[key.key_id] = Delivered(master, slave, digest)
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        for master, slave in PAIRS:
            nursery.start_soon(ask, master, slave)


def block_states(store: Any, link_id: str, last: int) -> dict[int, KeyState]:
    """Every block of ``link_id`` up to id ``last`` at one end, with its state."""
    with store._reading() as conn:
        rows = conn.execute(
            "SELECT block_id, state FROM blocks WHERE link_id = ? AND block_id <= ?",
            (link_id, last),
        ).fetchall()
    return {block_id: KeyState(state) for block_id, state in rows}


def used_bytes(store: Any, link_id: str, block_id: int) -> str:
    """A block's used and total bytes at one end, and the ranges it recorded as consumed."""
    with store._reading() as conn:
        used, size = conn.execute(
            "SELECT used_bits, size_bits FROM blocks WHERE link_id = ? AND block_id = ?",
            (link_id, block_id),
        ).fetchone()
        ranges = conn.execute(
            "SELECT start, stop FROM consumed WHERE link_id = ? AND block_id = ? ORDER BY start",
            (link_id, block_id),
        ).fetchall()
    return f"{used // 8}/{size // 8} {ranges}"


def key_check_value(store: Any, link_id: str, ids: list[int]) -> str:
    kcv = hashlib.blake2b(digest_size=3, key=b"qkms-key-check-value")
    for block_id in ids:
        kcv.update(store.read_block(link_id, block_id))
    return kcv.hexdigest()


@dataclasses.dataclass
class PoolComparison:
    link_id: str
    blocks: int
    ready_both: int
    unsettled: int
    problems: list[str]


def compare_pool(net: FaultNet, link_id: str, last: int) -> PoolComparison:
    """Both ends of ``link_id`` up to block ``last``: a block is held (ready or used) at
    both ends or at neither, READY at both or neither, and the READY ones hold the same
    key (same key check value).  RECEIVED blocks are unsettled, not yet a problem."""
    a, b = POOLS[link_id]
    sa, sb = block_states(net.store(a), link_id, last), block_states(net.store(b), link_id, last)
    problems: list[str] = []
    unsettled = 0
    ready_both: list[int] = []
    for block_id in sorted(set(sa) | set(sb)):
        x, y = sa.get(block_id), sb.get(block_id)
        if KeyState.RECEIVED in (x, y):
            unsettled += 1
        elif (x in HELD) != (y in HELD):
            problems.append(f"block {block_id}: {x} at {a}, {y} at {b}")
        elif (x is KeyState.READY) != (y is KeyState.READY):
            problems.append(
                f"block {block_id}: READY at one end only ({x} at {a}, {y} at {b};"
                f" used {used_bytes(net.store(a), link_id, block_id)} at {a},"
                f" {used_bytes(net.store(b), link_id, block_id)} at {b})"
            )
        elif x is KeyState.READY:
            ready_both.append(block_id)
    try:
        kcv_a, kcv_b = (key_check_value(net.store(k), link_id, ready_both) for k in (a, b))
    except KeyStoreError:  # a block used up since its state was read: look again
        return PoolComparison(link_id, len(set(sa) | set(sb)), len(ready_both), 1, problems)
    if kcv_a != kcv_b:
        problems.append(f"{len(ready_both)} ready blocks, key check values differ")
    return PoolComparison(link_id, len(set(sa) | set(sb)), len(ready_both), unsettled, problems)


def under_way(net: FaultNet) -> list[str]:
    """What, at any node, can leave link or relayed key spent at one end and not yet at
    the other: relay hops being sent or handled, reservations and burn notices being
    sent, burnt ranges not yet told.  Empty: the network is quiet."""
    busy = []
    for kme, node in net.nodes.items():
        assert node.relay is not None and node.direct is not None and node.e2e is not None
        if hops := node.relay.hops_under_way():
            busy.append(f"{kme}: {hops} relay hops under way")
        for pools, source in (("link", node.direct), ("relayed", node.e2e)):
            if n := source.unsettled():
                busy.append(f"{kme}: {n} {pools} reservations or burns not yet told")
    return busy


@dataclasses.dataclass
class Settling:
    """What ``settled_pools`` saw last: the network busy, or quiet with its comparison."""

    busy: list[str] = dataclasses.field(default_factory=list)
    busy_looks: int = 0
    quiet_looks: int = 0
    found: dict[str, PoolComparison] = dataclasses.field(default_factory=dict)

    def __str__(self) -> str:
        if self.busy:
            return f"never quiet ({self.quiet_looks} quiet looks), last: {self.busy}; {self.found}"
        return f"quiet, {self.quiet_looks} quiet looks, still differing: {self.found}"


async def settled_pools(
    net: FaultNet,
    lasts: dict[str, int],
    *,
    busy: Callable[[FaultNet], list[str]] = under_way,
    compare: Callable[[FaultNet, str, int], PoolComparison] = compare_pool,
    seen: Settling | None = None,
) -> dict[str, PoolComparison]:
    """Wait until every pool's ends agree up to its block in ``lasts``; the comparisons.

    The ends are compared only while the network is quiet (``busy`` finds nothing under
    way at any node): a relay hop, a reservation or a burn notice on the wire shows as a
    difference that is not one.  A difference seen while quiet may still be a message
    being applied, so the comparison is repeated; a lasting one is a violation and shows
    in the caller's time-out, with what was seen last in ``seen``.
    """
    seen = seen if seen is not None else Settling()
    while True:
        seen.busy = busy(net)
        seen.busy_looks += bool(seen.busy)
        if not seen.busy:
            seen.quiet_looks += 1
            seen.found = {link: compare(net, link, last) for link, last in lasts.items()}
            if all(not c.unsettled and not c.problems for c in seen.found.values()):
                return seen.found
        await trio.sleep(0.05)


def newest_common_blocks(net: FaultNet) -> dict[str, int]:
    """Per pool, the newest block id both ends have stored (what to compare up to)."""
    out = {}
    for link_id, (a, b) in POOLS.items():
        ids = [net.store(k).max_block_id(link_id) for k in (a, b)]
        out[link_id] = min(i for i in ids if i is not None) if None not in ids else -1
    return out


async def unretrievable_keys(net: FaultNet) -> list[str]:
    """Every delivered key fetched by its slave, one at a time: the ids that did not come
    back intact, each with the reason."""
    missing: list[str] = []
    clients: dict[str, TrioEtsi014Client] = {}
    try:
        for key_id, rec in sorted(net.delivered.items()):
            client = clients.get(rec.slave) or clients.setdefault(rec.slave, net.client(rec.slave))
            try:
                (key,) = await client.get_key_with_ids(rec.master, [key_id])
            except Etsi014Error as exc:  # named: the reason, never key bytes
                missing.append(f"{key_id} ({rec.master}->{rec.slave}: {exc})")
                await clients.pop(rec.slave).aclose()  # a fresh connection for the next
                continue
            if hashlib.sha256(key.key).digest() != rec.digest:
                missing.append(f"{key_id} ({rec.master}->{rec.slave}: another value)")
    finally:
        for client in clients.values():
            await client.aclose()
    return missing


def duplicate_values(net: FaultNet) -> int:
    """Keys delivered under two ids (or to two pairs): how many digests repeat."""
    digests = [rec.digest for rec in net.delivered.values()]
    return len(digests) - len(set(digests))


def no_spec() -> FaultSpec:
    return parse_spec("none")
