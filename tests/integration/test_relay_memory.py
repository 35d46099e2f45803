"""Key relay between three real nodes joined by memory streams instead of TLS sockets.

The same agents as ``qkmsd`` runs, wired by ``Node``, with no peer listener
(``Node(listen=False)``): each pair of nodes is joined by ``memory_stream_pair`` through
the peer managers' ``serve_authenticated``.  What holds over TLS holds here: relayed keys
are READY and identical at both ends of the end-to-end pool.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import trio
import trio.testing

from qkmsd.app import Node

from ..conftest import ConfigFactory

FAST = {"rate_bps": 2e6, "block_bits": 65536}
E2E = "KME_A~KME_C"
RELAY = {
    "block_bits": 4096,
    "low_bits": 16384,
    "high_bits": 32768,
    "link_reserve_bits": 0,
    "topology": [["KME_A", "KME_B"], ["KME_B", "KME_C"]],
}
NOWHERE = "127.0.0.1:1"  # never dialled: the nodes do not listen or dial


async def _run(node: Node, *, task_status: trio.TaskStatus[None]) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        task_status.started()


async def test_relayed_keys_are_identical_at_both_ends_over_memory_streams(
    node_config: ConfigFactory, pki: Path
) -> None:
    seeds = {"KME_A~KME_B": "a" * 32, "KME_B~KME_C": "b" * 32}
    links: dict[str, dict[str, tuple[str, str, dict[str, Any]]]] = {
        "KME_A": {"KME_A~KME_B": ("KME_B", "paired", {**FAST, "seed": seeds["KME_A~KME_B"]})},
        "KME_B": {
            "KME_A~KME_B": ("KME_A", "paired", {**FAST, "seed": seeds["KME_A~KME_B"]}),
            "KME_B~KME_C": ("KME_C", "paired", {**FAST, "seed": seeds["KME_B~KME_C"]}),
        },
        "KME_C": {"KME_B~KME_C": ("KME_B", "paired", {**FAST, "seed": seeds["KME_B~KME_C"]})},
    }
    pools = {"KME_A": {"KME_C": {}}, "KME_B": {}, "KME_C": {"KME_A": {}}}
    peers = {"KME_A": ["KME_B", "KME_C"], "KME_B": ["KME_A", "KME_C"], "KME_C": ["KME_A", "KME_B"]}
    nodes = {
        kme: Node(
            node_config(
                kme,
                peers={p: NOWHERE for p in peers[kme]},
                links=links[kme],
                relay={**RELAY, "pools": pools[kme]},
            ),
            listen=False,
        )
        for kme in ("KME_A", "KME_B", "KME_C")
    }
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for node in nodes.values():
                await nursery.start(_run, node)
            for a, b in (("KME_A", "KME_B"), ("KME_B", "KME_C"), ("KME_A", "KME_C")):
                left, right = trio.testing.memory_stream_pair()
                nursery.start_soon(nodes[a].peers.serve_authenticated, left, b)  # type: ignore[union-attr]
                nursery.start_soon(nodes[b].peers.serve_authenticated, right, a)  # type: ignore[union-attr]

            def store(kme: str) -> Any:
                return nodes[kme].store_thread._store  # type: ignore[union-attr]

            while True:
                if min(store(k).pool(E2E).ready_bits for k in ("KME_A", "KME_C")) >= 16384:
                    break
                await trio.sleep(0.05)
            ready_a = set(store("KME_A").ready_ids(E2E, 0, 2**63 - 1, limit=10_000))
            ready_c = set(store("KME_C").ready_ids(E2E, 0, 2**63 - 1, limit=10_000))
            common = ready_a & ready_c
            assert common
            for block_id in common:
                assert store("KME_A").read_block(E2E, block_id) == store("KME_C").read_block(
                    E2E, block_id
                )
            nursery.cancel_scope.cancel()
