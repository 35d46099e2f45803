"""Key relay on a ring of four real nodes, over loopback mutual TLS.

KME_A - KME_B - KME_C - KME_D - KME_A; A and C keep an end-to-end pool.  Two node-disjoint
paths join them (through B and through D): a key split into XOR shares over both is never
whole at any intermediate node, and when one side of the ring goes, relays take the other.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from protocol import RelayHop
from qkmsd.app import Node, NodeInfo

from ..conftest import ConfigFactory

FAST = {"rate_bps": 2e6, "block_bits": 65536}
E2E = "KME_A~KME_C"
RING = ["KME_A", "KME_B", "KME_C", "KME_D"]
LINKS = [("KME_A", "KME_B"), ("KME_B", "KME_C"), ("KME_C", "KME_D"), ("KME_A", "KME_D")]
RELAY = {
    "block_bits": 4096,
    "low_bits": 0,
    "high_bits": 0,
    "timeout_s": 3.0,
    "link_reserve_bits": 0,
}
TIME_LIMIT_S = 60


@dataclasses.dataclass
class Ring:
    nodes: dict[str, Node]
    scopes: dict[str, trio.CancelScope]

    def store(self, kme: str) -> Any:
        return self.nodes[kme].store_thread._store  # type: ignore[union-attr]

    def relay(self, kme: str) -> Any:
        return self.nodes[kme].relay


async def _run(
    config: Any, *, task_status: trio.TaskStatus[tuple[Node, NodeInfo, trio.CancelScope]]
) -> None:
    node = Node(config)
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            info = await nursery.start(node.run)
            task_status.started((node, info, scope))


@contextlib.asynccontextmanager
async def ring(
    node_config: ConfigFactory, pki: Path, *, paths: Any = 1, spread: bool = False
) -> AsyncIterator[Ring]:
    ports: dict[str, int] = {}
    nodes: dict[str, Node] = {}
    scopes: dict[str, trio.CancelScope] = {}
    topology = [list(link) for link in LINKS]
    async with trio.open_nursery() as nursery:
        for kme in ("KME_D", "KME_C", "KME_B", "KME_A"):  # a node dials the higher ids
            links = {
                f"{a}~{b}": (
                    b if a == kme else a,
                    "paired",
                    {**FAST, "seed": f"{a}{b}".ljust(32, "x")},
                )
                for a, b in LINKS
                if kme in (a, b)
            }
            peers = {peer: f"127.0.0.1:{ports.get(peer, 1)}" for peer, *_ in links.values()}
            pools: dict[str, Any] = {}
            if kme in ("KME_A", "KME_C"):
                other = "KME_C" if kme == "KME_A" else "KME_A"
                peers[other] = f"127.0.0.1:{ports.get(other, 1)}"
                pools[other] = {"paths": paths, "spread": spread}
            cfg = node_config(
                kme, peers=peers, links=links, relay={**RELAY, "topology": topology, "pools": pools}
            )
            node, info, scope = await nursery.start(_run, cfg)
            ports[kme], nodes[kme], scopes[kme] = info.peer_port, node, scope
        yield Ring(nodes, scopes)
        nursery.cancel_scope.cancel()


async def wait_for_link_key(net: Ring, bits: int) -> None:
    """Until every link end owns ``bits`` of ready key."""
    while True:
        owned = [
            net.store(kme).pool(f"{a}~{b}").owned_ready_bits for a, b in LINKS for kme in (a, b)
        ]
        if min(owned) >= bits:
            return
        await trio.sleep(0.05)


async def holds(net: Ring, kme: str, block_id: int) -> None:
    """Until ``kme``'s key manager has stored relayed block ``block_id``."""
    while True:
        if net.store(kme).states(E2E, [block_id]):
            return
        await trio.sleep(0.02)


async def disconnected(net: Ring, kme: str, peer: str) -> None:
    while True:
        if not net.nodes[kme].peers.is_connected(peer):  # type: ignore[union-attr]
            return
        await trio.sleep(0.02)


def record_opened(net: Ring, kme: str) -> list[bytes]:
    """What ``kme`` recovers from each hop it receives (instrumenting its agent)."""
    agent = net.relay(kme)
    opened: list[bytes] = []
    original: Callable[[str, RelayHop], Awaitable[bytes]] = agent._open_hop

    async def recording(peer: str, hop: RelayHop) -> bytes:
        data = await original(peer, hop)
        opened.append(data)
        return data

    agent._open_hop = recording
    return opened


async def test_a_key_split_over_disjoint_paths_is_whole_only_at_the_two_ends(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with ring(node_config, pki, paths="disjoint") as net:
            await wait_for_link_key(net, 65536)
            via_b, via_d = record_opened(net, "KME_B"), record_opened(net, "KME_D")
            record = await net.relay("KME_A").relay(E2E)
            block_id = int(record.relay_id.split("/")[1].split("#")[0])
            paths = {tuple(r.path) for r in net.relay("KME_A").relays() if r.role == "source"}
            assert paths == {("KME_A", "KME_B", "KME_C"), ("KME_A", "KME_D", "KME_C")}
            # Each intermediate node saw one share; neither share is the key, both are.
            (share_b,), (share_d,) = via_b, via_d
            await holds(net, "KME_A", block_id)
            await holds(net, "KME_C", block_id)
            key = net.store("KME_A").read_block(E2E, block_id)
            assert net.store("KME_C").read_block(E2E, block_id) == key
            size = len(key)
            assert share_b[:size] != key and share_d[:size] != key
            assert bytes(x ^ y for x, y in zip(share_b, share_d, strict=True))[:size] == key


async def test_relays_take_the_other_side_of_the_ring_when_a_middle_node_goes(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with ring(node_config, pki) as net:
            await wait_for_link_key(net, 65536)
            first = await net.relay("KME_A").relay(E2E)
            net.scopes["KME_B"].cancel()  # B goes; its sessions close
            await disconnected(net, "KME_A", "KME_B")
            second = await net.relay("KME_A").relay(E2E)
            assert {tuple(first.path), tuple(second.path)} == {
                ("KME_A", "KME_B", "KME_C"),
                ("KME_A", "KME_D", "KME_C"),
            }
            assert second.path == ["KME_A", "KME_D", "KME_C"]


async def test_a_spread_pool_takes_both_sides_of_the_ring_in_turn(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with ring(node_config, pki, spread=True) as net:
            await wait_for_link_key(net, 65536)
            taken = [tuple((await net.relay("KME_A").relay(E2E)).path) for _ in range(4)]
            assert set(taken) == {("KME_A", "KME_B", "KME_C"), ("KME_A", "KME_D", "KME_C")}
            assert taken[0] != taken[1] and taken[1] != taken[2]


async def test_a_disjoint_pool_relays_whole_keys_over_the_one_side_left(
    node_config: ConfigFactory, pki: Path
) -> None:
    # paths = "disjoint" uses as many disjoint paths as are up: with B gone, one.
    with trio.fail_after(TIME_LIMIT_S):
        async with ring(node_config, pki, paths="disjoint") as net:
            await wait_for_link_key(net, 65536)
            net.scopes["KME_B"].cancel()
            await disconnected(net, "KME_A", "KME_B")
            record = await net.relay("KME_A").relay(E2E)
            assert record.path == ["KME_A", "KME_D", "KME_C"]
            assert "#" not in record.relay_id  # whole, not a share
