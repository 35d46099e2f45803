"""The controller election between three eligible nodes, each a real ``Node`` joined to the
others by memory streams: one controller at a time, and another once it goes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import trio
import trio.testing

from qkmsd.app import Node

from ..conftest import ConfigFactory

NODES = {"KME_A": 50, "KME_B": 100, "KME_C": 50}
NOWHERE = "127.0.0.1:1"  # never dialled: the nodes do not listen or dial


@contextlib.asynccontextmanager
async def electors(
    node_config: ConfigFactory, tmp_path: Path
) -> AsyncIterator[tuple[dict[str, Node], dict[str, trio.CancelScope]]]:
    nodes: dict[str, Node] = {}
    for kme, priority in NODES.items():
        others = {n: p for n, p in NODES.items() if n != kme}
        controller = {
            "eligible": True,
            "priority": priority,
            "lease_s": 1.0,
            "drift_s": 0.05,
            "electors": others,
        }
        cfg = node_config(kme, peers={n: NOWHERE for n in others}, controller=controller)
        nodes[kme] = Node(cfg, listen=False)
    scopes: dict[str, trio.CancelScope] = {}
    async with trio.open_nursery() as nursery:
        for kme, node in nodes.items():
            scopes[kme] = await nursery.start(_run, node)
        for a, b in (("KME_A", "KME_B"), ("KME_B", "KME_C"), ("KME_A", "KME_C")):
            left, right = trio.testing.memory_stream_pair()
            nursery.start_soon(nodes[a].peers.serve_authenticated, left, b)  # type: ignore[union-attr]
            nursery.start_soon(nodes[b].peers.serve_authenticated, right, a)  # type: ignore[union-attr]
        yield nodes, scopes
        nursery.cancel_scope.cancel()


async def _run(node: Node, *, task_status: trio.TaskStatus[trio.CancelScope]) -> None:
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            task_status.started(scope)


def controllers(nodes: dict[str, Node], alive: set[str]) -> set[str]:
    return {k for k in alive if nodes[k].controller and nodes[k].controller.is_controller()}


async def one_controller(nodes: dict[str, Node], alive: set[str]) -> str:
    """Until exactly one of ``alive`` holds the role, and the others follow it."""
    while True:
        held = controllers(nodes, alive)
        if len(held) == 1:
            (leader,) = held
            followed = {nodes[k].controller.status().controller for k in alive}  # type: ignore[union-attr]
            if followed == {leader}:
                return leader
        assert len(held) <= 1, f"two controllers at once: {held}"
        await trio.sleep(0.02)


async def test_three_eligible_nodes_elect_one_controller_and_another_when_it_goes(
    node_config: ConfigFactory, tmp_path: Path
) -> None:
    with trio.fail_after(30):
        async with electors(node_config, tmp_path) as (nodes, scopes):
            alive = set(NODES)
            first = await one_controller(nodes, alive)
            status = nodes[first].controller.status()  # type: ignore[union-attr]
            assert status.role == "leader" and status.lease_left_s is not None
            scopes[first].cancel()  # the controller's node goes
            alive.discard(first)
            second = await one_controller(nodes, alive)
            assert second != first
            term = nodes[second].controller.status().term  # type: ignore[union-attr]
            assert term > status.term
