"""``qkmsctl lab up --netns``: a silent cut between two real nodes is seen, then healed.

Needs network namespaces (root and iproute2); skipped with the reason elsewhere.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio

from cli import _netns
from cli._admin import AdminClient, AdminError
from cli._lab import Lab
from cli._topology import load_topology

pytestmark = pytest.mark.system

PAPER = Path(__file__).resolve().parents[2] / "examples" / "paper-3node.toml"


def peer(lab: Lab, node: str, other: str) -> dict[str, Any] | None:
    try:
        peers = AdminClient(lab.admin_socket(node), timeout=5.0).call("peers")["peers"]
    except AdminError:
        return None
    found: dict[str, Any] = next(p for p in peers if p["node_id"] == other)
    return found


async def until_peer(lab: Lab, node: str, other: str, state: str) -> dict[str, Any]:
    while True:
        seen = await trio.to_thread.run_sync(peer, lab, node, other)
        if seen is not None and seen["state"] == state:
            return seen
        await trio.sleep(0.05)


async def test_a_silent_cut_is_seen_as_silence_and_the_heal_brings_the_peer_back(
    lab: Lab,
) -> None:
    reason = _netns.unavailable()
    if reason is not None:
        pytest.skip(f"no network namespaces here: {reason}")
    said: list[str] = []
    await trio.to_thread.run_sync(
        lambda: lab.up(load_topology(PAPER), netns=True, progress=said.append)
    )
    assert not any("loopback instead" in s for s in said)
    with trio.fail_after(60):
        for a, b in (("KME1", "KME2"), ("KME2", "KME3"), ("KME1", "KME3")):
            await until_peer(lab, a, b, "connected")
        cut_at = time.time()
        lab.cut("KME1", "KME2")
        down = await until_peer(lab, "KME1", "KME2", "disconnected")
        assert down["down_reason"].startswith("silent")
        print(f"\nKME1 declared KME2 down {down['down_since'] - cut_at:.2f} s after the cut")
        # Only that pair is cut: KME1's direct session with KME3 stays up.
        kme3 = await trio.to_thread.run_sync(peer, lab, "KME1", "KME3")
        assert kme3 is not None and kme3["state"] == "connected" and kme3["connects"] == 1
        healed_at = time.time()
        lab.heal("KME1", "KME2")
        await until_peer(lab, "KME1", "KME2", "connected")
        await until_peer(lab, "KME2", "KME1", "connected")
        print(f"KME1 and KME2 connected again {time.time() - healed_at:.2f} s after the heal")
    lab.down()
    assert _netns.existing(_netns.lab_prefix(lab.dir)) == []
