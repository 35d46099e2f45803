"""An in-process relay network: real key stores and relay agents, a wire of function calls.

Each node has a ``KeyStore`` on disk, a store thread that runs calls inline (and records
what link key they used), a ``RoutingTable`` over the network's links, and a
``RelayAgent`` whose ``request`` hands the hop to the next node's ``handle_hop`` through
``Wire``: a test reads, changes, drops or holds messages there.  QKD links get the same
blocks at both ends, owned by the rule the key manager uses (``owns_block``).  No key
manager runs: relayed keys are read from the end-to-end pools' drivers, as delivered.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
import trio
import trio.testing

from protocol import PeerReply, RelayHop, RelayResult
from qkd_drivers import KeyBlock, LinkEnd
from qkmsd.config import RelayPoolConfig, RelaySection
from qkmsd.errors import PeerUnavailable
from qkmsd.keymanager import owns_block
from qkmsd.keystore import Allocation, KeyStore, NewBlock, Segment
from qkmsd.relay import RelayAgent, RelayedKeys, RoutingTable

A, B, C, D = "KME_A", "KME_B", "KME_C", "KME_D"
BLOCK_BYTES = 1024
SETTINGS = RelaySection(block_bits=256, timeout_s=5.0, link_reserve_bits=0)
"""A relayed key of 32 bytes plus its 32-byte confirmation key: 96 bytes of link key a hop."""
HOP_BYTES = 256 // 8 + 32 + 32


def link_id(a: str, b: str) -> str:
    return "~".join(sorted((a, b)))


class InlineStoreThread:
    """Runs store calls at once, after a checkpoint, and keeps what each successful one
    returned (``calls``: the method's name, its arguments, its result)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], Any]] = []

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        result = fn(*args, **kwargs)
        self.calls.append((fn.__name__, args, result))
        return result

    async def call_inline(
        self, fn: Callable[..., Any], *args: Any, slow_after: float = 0.005, **kwargs: Any
    ) -> Any:
        return await self.call(fn, *args, **kwargs)

    def used(self, link: str) -> list[Segment]:
        """Every segment of ``link`` this node allocated or consumed, in order."""
        out: list[Segment] = []
        for name, args, result in self.calls:
            if name == "allocate_link_key" and args[0] == link:
                allocations: list[Allocation] = result
                out.extend(s for a in allocations for s in a.segments)
            elif name == "consume_link_key" and args[0] == link:
                out.extend(s for segments in args[1] for s in segments)
        return out


HopHook = Callable[[str, str, RelayHop], Awaitable[RelayHop]]
ResultHook = Callable[[str, str, RelayResult], RelayResult]


async def _pass_hop(sender: str, receiver: str, hop: RelayHop) -> RelayHop:
    return hop


def _pass_result(sender: str, receiver: str, result: RelayResult) -> RelayResult:
    return result


@dataclasses.dataclass
class Sent:
    """One hop as the receiver got it, and the answer as the sender got it."""

    sender: str
    receiver: str
    hop: RelayHop
    result: RelayResult | None = None


class Wire:
    """The peer sessions, as direct calls of the receiver's ``handle_hop``.

    ``on_hop`` sees each hop on its way (it may return another, or never return: a lost
    message); ``on_result`` each answer on its way back.  ``sent`` keeps what passed.
    """

    def __init__(self) -> None:
        self.agents: dict[str, RelayAgent] = {}
        self.sent: list[Sent] = []
        self.burnt: list[tuple[str, str, list[Segment]]] = []
        """(sender, receiver, segments) of each burn the sender asked the receiver for."""
        self.settled: list[tuple[str, str, list[Segment]]] = []
        """(sender, receiver, segments) of each hop's link key the receiver answered for."""
        self.on_hop: HopHook = _pass_hop
        self.on_result: ResultHook = _pass_result
        self.down: set[tuple[str, str]] = set()
        """(node, peer): sessions ``node`` sees as closed (its ``is_up(peer)`` is false)."""
        self._ids = 0

    def is_up_from(self, node: str) -> Callable[[str], bool]:
        return lambda peer: (node, peer) not in self.down

    def request_from(self, sender: str) -> Callable[[str, RelayHop], Awaitable[PeerReply]]:
        async def request(peer: str, hop: RelayHop) -> PeerReply:
            return await self.send(sender, peer, hop)

        return request

    def burn_from(self, sender: str) -> Callable[[str, list[Segment]], None]:
        def burn(peer: str, segments: list[Segment]) -> None:
            self.burnt.append((sender, peer, list(segments)))

        return burn

    def settled_from(self, sender: str) -> Callable[[str, list[Segment]], None]:
        def settled(peer: str, segments: list[Segment]) -> None:
            self.settled.append((sender, peer, list(segments)))

        return settled

    async def send(self, sender: str, receiver: str, hop: RelayHop) -> RelayResult:
        """Deliver ``hop`` as the peer session would: a fresh request id, the hooks."""
        agent = self.agents.get(receiver)
        if agent is None:
            raise PeerUnavailable(f"no session with {receiver}")
        self._ids += 1
        hop = await self.on_hop(sender, receiver, msgspec.structs.replace(hop, id=self._ids))
        sent = Sent(sender, receiver, hop)
        self.sent.append(sent)
        result = self.on_result(sender, receiver, await agent.handle_hop(sender, hop))
        sent.result = result
        return result

    def hops(self, sender: str, receiver: str) -> list[RelayHop]:
        return [s.hop for s in self.sent if (s.sender, s.receiver) == (sender, receiver)]


@dataclasses.dataclass
class Node:
    node_id: str
    store: KeyStore
    thread: InlineStoreThread
    agent: RelayAgent
    drivers: dict[str, RelayedKeys]
    delivered: dict[str, list[KeyBlock]]
    """What each end-to-end pool's driver handed on, per pool link id."""


class Net:
    """The nodes of one network and the wire between them."""

    def __init__(self, nodes: dict[str, Node], wire: Wire, links: Sequence[str]) -> None:
        self.nodes = nodes
        self.wire = wire
        self.links = list(links)

    def __getitem__(self, node_id: str) -> Node:
        return self.nodes[node_id]

    def add_link_key(
        self, a: str, b: str, block_ids: Iterable[int], *, size: int = BLOCK_BYTES
    ) -> None:
        """The same READY blocks at both ends of link a~b, each owned by one end."""
        link = link_id(a, b)
        material = {i: os.urandom(size) for i in block_ids}
        for here, there in ((a, b), (b, a)):
            store = self.nodes[here].store
            store.add_blocks(
                [
                    NewBlock(link, i, key, 0.01, 1.0, owns_block(here, there, i))
                    for i, key in material.items()
                ]
            )
            store.mark_ready(link, list(material))

    def owned_ready_bytes(self, node: str, peer: str) -> int:
        return self.nodes[node].store.pool(link_id(node, peer)).owned_ready_bits // 8

    async def delivered(self, node: str, peer: str) -> list[KeyBlock]:
        """The keys ``node``'s driver of its pool with ``peer`` handed on so far."""
        await trio.testing.wait_all_tasks_blocked()
        return list(self.nodes[node].delivered.get(link_id(node, peer), []))


async def _collect(driver: RelayedKeys, into: list[KeyBlock]) -> None:
    async for block in driver.blocks():
        into.append(block)


@contextlib.asynccontextmanager
async def open_net(
    root: Path,
    *,
    links: Sequence[tuple[str, str]],
    pools: Sequence[tuple[str, str]],
    manual: Mapping[str, Mapping[str, Sequence[str]]] | None = None,
    settings: RelaySection = SETTINGS,
    link_blocks: Sequence[int] = range(8),
    block_bytes: int = BLOCK_BYTES,
    paths: tuple[int, int] = (1, 1),
    watermarks: tuple[int, int] | None = None,
    priority_of: Callable[[str, str], float] | None = None,
) -> AsyncIterator[Net]:
    """Nodes on ``links`` (each given ``link_blocks``), with end-to-end ``pools``.

    ``manual[node][destination]`` is ``node``'s manual route: the intermediate nodes.
    ``paths`` is every pool's (``paths``, ``paths_required``); ``watermarks`` every pool's
    (``low_bits``, ``high_bits``); ``priority_of(node, peer)`` each pool's priority.
    """
    defaults = RelayPoolConfig("", "", None)
    low, high = watermarks or (defaults.low_bits, defaults.high_bits)
    manual = manual or {}
    names = sorted({n for link in links for n in link} | {n for pool in pools for n in pool})
    wire = Wire()
    nodes: dict[str, Node] = {}
    async with contextlib.AsyncExitStack() as stack, trio.open_nursery() as nursery:
        for name in names:
            store = KeyStore.open(root / f"{name}.db", os.urandom(32))
            stack.callback(store.close)
            neighbours = {b if a == name else a for a, b in links if name in (a, b)}
            routes_here = manual.get(name, {})
            peers = {link_id(*pool): pool[1] if pool[0] == name else pool[0] for pool in pools}
            configs = {
                lid: RelayPoolConfig(
                    peer,
                    lid,
                    tuple(routes_here[peer]) if peer in routes_here else None,
                    paths=paths[0],
                    paths_required=paths[1],
                    low_bits=low,
                    high_bits=high,
                )
                for lid, peer in peers.items()
                if peer != name and name in lid.split("~")
            }
            drivers = {
                lid: RelayedKeys(LinkEnd(lid, name, cfg.peer)) for lid, cfg in configs.items()
            }
            thread = InlineStoreThread()
            agent = RelayAgent(
                node_id=name,
                store=store,
                store_thread=thread,  # type: ignore[arg-type]
                request=wire.request_from(name),
                link_to={n: link_id(name, n) for n in neighbours},
                pools=configs,
                drivers=drivers,
                routes=RoutingTable(
                    name,
                    links=links,
                    manual={dst: tuple(via) for dst, via in routes_here.items()},
                    neighbours=neighbours,
                ),
                settings=settings,
                burn=wire.burn_from(name),
                settled=wire.settled_from(name),
                is_up=wire.is_up_from(name),
                priority_of=(
                    (lambda peer, name=name: priority_of(name, peer))  # type: ignore[misc]
                    if priority_of is not None
                    else lambda peer: 0.0
                ),
            )
            delivered: dict[str, list[KeyBlock]] = {lid: [] for lid in drivers}
            for lid, driver in drivers.items():
                nursery.start_soon(_collect, driver, delivered[lid])
            wire.agents[name] = agent
            nodes[name] = Node(name, store, thread, agent, drivers, delivered)
        net = Net(nodes, wire, [link_id(a, b) for a, b in links])
        for a, b in links:
            net.add_link_key(a, b, link_blocks, size=block_bytes)
        yield net
        nursery.cancel_scope.cancel()


@pytest.fixture
async def line3(tmp_path: Path) -> AsyncIterator[Net]:
    """A - B - C, QKD links A~B and B~C, an end-to-end pool A~C."""
    async with open_net(tmp_path, links=[(A, B), (B, C)], pools=[(A, C)]) as net:
        yield net


@pytest.fixture
async def line4(tmp_path: Path) -> AsyncIterator[Net]:
    """A - B - C - D, end-to-end pools A~C and A~D."""
    async with open_net(tmp_path, links=[(A, B), (B, C), (C, D)], pools=[(A, C), (A, D)]) as net:
        yield net
