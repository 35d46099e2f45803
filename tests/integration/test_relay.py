"""Key relay on a line of three real nodes in one trio run, over loopback mutual TLS.

KME_A - KME_B - KME_C: QKD links A~B and B~C (fast simulated), no link A~C.  A and C keep
an end-to-end pool (A starts the relays, through B); SAE_A on A and SAE_C on C get keys
over ETSI 014 as if A and C were neighbours.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import trio

from qkms_client import ServiceUnavailable, TrioEtsi014Client
from qkmsd.app import Node, NodeInfo
from qkmsd.relay import RelayFailed

from ..conftest import ConfigFactory

FAST = {"rate_bps": 2e6, "block_bits": 65536}
E2E = "KME_A~KME_C"
SAES = {"SAE_A": {"kme": "KME_A"}, "SAE_B": {"kme": "KME_B"}, "SAE_C": {"kme": "KME_C"}}
TOPOLOGY = [["KME_A", "KME_B"], ["KME_B", "KME_C"]]
RELAY = {
    "block_bits": 4096,
    "low_bits": 16384,
    "high_bits": 32768,
    "timeout_s": 5.0,
    "link_reserve_bits": 0,
}
TIME_LIMIT_S = 60


@dataclasses.dataclass
class Line:
    nodes: dict[str, Node]
    infos: dict[str, NodeInfo]
    pki: Path
    stack: contextlib.AsyncExitStack

    def client(self, sae: str) -> TrioEtsi014Client:
        kme = SAES[sae]["kme"]
        client = TrioEtsi014Client(
            f"https://127.0.0.1:{self.infos[kme].api_port}",
            ca=self.pki / "ca.pem",
            cert=self.pki / "saes" / f"{sae}.pem",
            key=self.pki / "saes" / f"{sae}.key",
            kme_id=kme,
        )
        self.stack.push_async_callback(client.aclose)
        return client

    def store(self, kme: str) -> Any:
        return self.nodes[kme].store_thread._store  # type: ignore[union-attr]

    async def ready_ids(self, kme: str) -> set[int]:
        check = await self.nodes[kme].keys.check(E2E, 0, 2**63 - 1)  # type: ignore[union-attr]
        return set(check["ready_ids"])


async def _run(config: Any, *, task_status: trio.TaskStatus[tuple[Node, NodeInfo]]) -> None:
    node = Node(config)
    async with trio.open_nursery() as nursery:
        info = await nursery.start(node.run)
        task_status.started((node, info))


@contextlib.asynccontextmanager
async def line(
    node_config: ConfigFactory,
    pki: Path,
    *,
    relay: dict[str, Any] | None = None,
    pools: bool = True,
) -> AsyncIterator[Line]:
    """C, then B, then A (the lower id dials), each with the relay settings given."""
    settings = {**RELAY, **(relay or {}), "topology": TOPOLOGY}
    placeholder = "127.0.0.1:1"  # the address of a peer that dials us is never used
    async with trio.open_nursery() as nursery:
        cfg_c = node_config(
            "KME_C",
            peers={"KME_B": placeholder, "KME_A": placeholder},
            links={"KME_B~KME_C": ("KME_B", "paired", {**FAST, "seed": "b" * 32})},
            api=True,
            saes=SAES,
            relay={**settings, "pools": {"KME_A": {}} if pools else {}},
        )
        node_c, info_c = await nursery.start(_run, cfg_c)
        cfg_b = node_config(
            "KME_B",
            peers={"KME_A": placeholder, "KME_C": f"127.0.0.1:{info_c.peer_port}"},
            links={
                "KME_A~KME_B": ("KME_A", "paired", {**FAST, "seed": "a" * 32}),
                "KME_B~KME_C": ("KME_C", "paired", {**FAST, "seed": "b" * 32}),
            },
            api=True,
            saes=SAES,
            relay={**settings},
        )
        node_b, info_b = await nursery.start(_run, cfg_b)
        cfg_a = node_config(
            "KME_A",
            peers={
                "KME_B": f"127.0.0.1:{info_b.peer_port}",
                "KME_C": f"127.0.0.1:{info_c.peer_port}",
            },
            links={"KME_A~KME_B": ("KME_B", "paired", {**FAST, "seed": "a" * 32})},
            api=True,
            saes=SAES,
            relay={**settings, "pools": {"KME_C": {}} if pools else {}},
        )
        node_a, info_a = await nursery.start(_run, cfg_a)
        async with contextlib.AsyncExitStack() as stack:
            yield Line(
                {"KME_A": node_a, "KME_B": node_b, "KME_C": node_c},
                {"KME_A": info_a, "KME_B": info_b, "KME_C": info_c},
                pki,
                stack,
            )
        nursery.cancel_scope.cancel()


async def wait_for_ready_bits(net: Line, bits: int) -> None:
    while True:
        levels = [net.store(k).pool(E2E).ready_bits for k in ("KME_A", "KME_C")]
        if min(levels) >= bits:
            return
        await trio.sleep(0.05)


async def wait_for_link_key(net: Line, bits: int) -> None:
    """Until each sending end of the path owns ``bits`` of ready link key."""
    while True:
        a = net.store("KME_A").pool("KME_A~KME_B").owned_ready_bits
        b = net.store("KME_B").pool("KME_B~KME_C").owned_ready_bits
        if min(a, b) >= bits:
            return
        await trio.sleep(0.05)


async def test_relayed_keys_are_ready_and_identical_at_both_ends(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with line(node_config, pki) as net:
            await wait_for_ready_bits(net, RELAY["low_bits"])
            ids_a, ids_c = await net.ready_ids("KME_A"), await net.ready_ids("KME_C")
            common = sorted(ids_a & ids_c)
            assert common
            for block_id in common:
                assert net.store("KME_A").read_block(E2E, block_id) == net.store(
                    "KME_C"
                ).read_block(E2E, block_id)
            # The intermediate node keeps no end-to-end key: it has no such pool at all.
            assert net.store("KME_B").pool(E2E).ready_bits == 0
            relays = net.nodes["KME_B"].relay.relays()  # type: ignore[union-attr]
            assert {r.role for r in relays} == {"intermediate"}


async def test_saes_on_distant_nodes_get_the_same_keys_over_etsi014(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with line(node_config, pki) as net:
            await wait_for_ready_bits(net, RELAY["low_bits"])
            keys = await net.client("SAE_A").get_key("SAE_C", number=3)
            fetched = await net.client("SAE_C").get_key_with_ids("SAE_A", [k.key_id for k in keys])
            assert {k.key_id: k.key for k in fetched} == {k.key_id: k.key for k in keys}
            status = await net.client("SAE_A").status("SAE_C")
            assert status.target_kme_id == "KME_C" and status.stored_key_count > 0


async def test_each_hop_spends_fresh_link_key_for_the_pad_and_the_mac(
    node_config: ConfigFactory, pki: Path
) -> None:
    # No background relays: one relay, and the link key it spent, counted at both links.
    with trio.fail_after(TIME_LIMIT_S):
        async with line(node_config, pki, relay={"low_bits": 0, "high_bits": 0}) as net:
            await wait_for_link_key(net, 2 * 65536)
            source, middle = net.nodes["KME_A"].relay, net.nodes["KME_B"].relay
            assert source is not None and middle is not None
            record = await source.relay(E2E)
            assert record.state == "confirmed" and record.path == ["KME_A", "KME_B", "KME_C"]
            # Each hop: the key and its 32-byte confirmation key padded, a 32-byte MAC key.
            per_hop_bits = RELAY["block_bits"] + 2 * 256
            assert source.statistics().link_bits_spent == per_hop_bits
            assert middle.statistics().link_bits_spent == per_hop_bits
            assert middle.statistics().hops_received == 1
            # Operators see the same counts in the node's status.
            status = await net.nodes["KME_A"].status.status({})  # type: ignore[union-attr]
            assert status["relay"]["relays_confirmed"] == 1
            assert status["relay"]["link_bits_spent"] == per_hop_bits


async def test_a_relay_with_no_route_fails_with_a_clear_reason(
    node_config: ConfigFactory, pki: Path
) -> None:
    # A manual route through a node that is not A's neighbour: refused before any key moves.
    with trio.fail_after(TIME_LIMIT_S):
        async with line(node_config, pki, relay={"low_bits": 0, "high_bits": 0}) as net:
            relay = net.nodes["KME_A"].relay
            assert relay is not None
            relay._routes._entries["KME_C"] = []  # the table knows no path to C
            with pytest.raises(RelayFailed, match="no route to KME_C"):
                await relay.relay(E2E)
            assert relay.statistics().link_bits_spent == 0


async def test_a_request_that_finds_the_pool_empty_waits_for_relays(
    node_config: ConfigFactory, pki: Path
) -> None:
    # No background relays: the request itself asks relay for key, and gets it.
    with trio.fail_after(TIME_LIMIT_S):
        async with line(node_config, pki, relay={"low_bits": 0, "high_bits": 0}) as net:
            await wait_for_link_key(net, 2 * 65536)
            assert net.store("KME_A").pool(E2E).ready_bits == 0
            keys = await net.client("SAE_A").get_key("SAE_C", number=2)
            fetched = await net.client("SAE_C").get_key_with_ids("SAE_A", [k.key_id for k in keys])
            assert {k.key_id: k.key for k in fetched} == {k.key_id: k.key for k in keys}


async def test_a_request_no_relay_can_serve_is_503_naming_the_cause(
    node_config: ConfigFactory, pki: Path
) -> None:
    with trio.fail_after(TIME_LIMIT_S):
        async with line(
            node_config, pki, relay={"low_bits": 0, "high_bits": 0, "request_wait_s": 1.0}
        ) as net:
            relay = net.nodes["KME_A"].relay
            assert relay is not None
            relay._routes._entries["KME_C"] = []  # the table knows no path to C
            with pytest.raises(ServiceUnavailable) as refused:
                await net.client("SAE_A").get_key("SAE_C")
            assert "key relay to KME_C failed: no route to KME_C" in refused.value.message


async def test_a_pool_is_made_on_demand_for_saes_that_ask(
    node_config: ConfigFactory, pki: Path
) -> None:
    # No [relay.pools] at either end, only the direct session: SAE_A's request makes the
    # pool at A, the first relay makes it at C, and the keys flow.
    with trio.fail_after(TIME_LIMIT_S):
        async with line(node_config, pki, pools=False) as net:
            await wait_for_link_key(net, 2 * 65536)
            assert net.nodes["KME_A"].relay.pool_of("KME_C") is None  # type: ignore[union-attr]
            keys = await net.client("SAE_A").get_key("SAE_C", number=2)
            fetched = await net.client("SAE_C").get_key_with_ids("SAE_A", [k.key_id for k in keys])
            assert {k.key_id: k.key for k in fetched} == {k.key_id: k.key for k in keys}
            for kme, other in (("KME_A", "KME_C"), ("KME_C", "KME_A")):
                relay = net.nodes[kme].relay
                assert relay is not None and relay.pool_of(other) == E2E
