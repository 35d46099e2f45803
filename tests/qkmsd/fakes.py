"""Fakes of the key manager's collaborators: a scripted QKD driver, an inline store
thread, and a wire that carries peer messages between two key managers."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import trio

from protocol import KeyAnnounce, KeyConfirm, KeyDiscard
from qkd_drivers import Driver, DriverHealth, KeyBlock, LinkEnd, LinkState
from qkmsd.keymanager import KeyManager
from qkmsd.keystore import KeyStore


class _NoParams(msgspec.Struct):
    pass


class ScriptedDriver(Driver):
    """Yields exactly the blocks the test pushes with ``emit``."""

    kind: ClassVar[str] = "scripted"
    Params: ClassVar[type[msgspec.Struct]] = _NoParams

    def __init__(self, link: LinkEnd) -> None:
        super().__init__(link, _NoParams())
        self._send, self._recv = trio.open_memory_channel[KeyBlock](1000)
        self.after_seen: list[int | None] = []

    async def emit(self, block_id: int, key: bytes, *, at: float = 0.0) -> None:
        await self._send.send(KeyBlock(self.link.link_id, block_id, key, 0.01, at))

    async def blocks(self, *, after: int | None = None) -> AsyncIterator[KeyBlock]:
        self.after_seen.append(after)
        async for block in self._recv:
            yield block

    def health(self) -> DriverHealth:
        return DriverHealth(LinkState.UP)


class InlineStoreThread:
    """Runs store calls inline: deterministic under ``autojump_clock``."""

    async def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        await trio.lowlevel.checkpoint()
        return fn(*args, **kwargs)


class Wire:
    """Carries messages between two key managers, in order, while ``up``.

    ``stall()`` holds every message (and the heartbeats) until ``resume()``: a peer whose
    event loop is starved, still connected but answering nothing.
    """

    def __init__(self) -> None:
        self.up = False
        self.stalled_at: float | None = None
        self._resumed = trio.Event()
        self.sent: list[tuple[str, Any]] = []
        self._ends: dict[str, KeyManager] = {}
        self._queue_send, self._queue_recv = trio.open_memory_channel[tuple[str, str, Any]](10000)

    def attach(self, node: str, manager: KeyManager) -> None:
        self._ends[node] = manager

    def sender(self, node: str) -> Callable[[str, Any], Any]:
        async def send(peer: str, message: Any) -> bool:
            if not self.up:
                return False
            self.sent.append((node, message))
            await self._queue_send.send((node, peer, message))
            return True

        return send

    def heard(self, peer: str) -> float | None:
        """When the other end last heard ``peer``: now, as heartbeats flow, unless stalled."""
        return self.stalled_at if self.stalled_at is not None else trio.current_time()

    def stall(self) -> None:
        self.stalled_at = trio.current_time()
        self._resumed = trio.Event()

    def resume(self) -> None:
        self.stalled_at = None
        self._resumed.set()

    async def run(self) -> None:
        async for src, dst, message in self._queue_recv:
            if self.stalled_at is not None:
                await self._resumed.wait()
            if not self.up:
                continue
            manager = self._ends[dst]
            handler = {
                KeyAnnounce: manager.on_announce,
                KeyConfirm: manager.on_confirm,
                KeyDiscard: manager.on_discard,
            }[type(message)]
            await handler(src, message)

    async def connect(self) -> None:
        self.up = True
        for node, manager in self._ends.items():
            peer = next(n for n in self._ends if n != node)
            await manager.peer_up(peer)

    async def disconnect(self) -> None:
        self.up = False
        for node, manager in self._ends.items():
            peer = next(n for n in self._ends if n != node)
            await manager.peer_down(peer)


@dataclasses.dataclass
class End:
    node: str
    store: KeyStore
    driver: ScriptedDriver
    manager: KeyManager


LINK = "KME_A~KME_B"


def make_end(
    node: str, peer: str, tmp: Path, wire: Wire, clock: Callable[[], float], **settings: float
) -> End:
    store = KeyStore.open(tmp / f"{node}.sqlite", bytes(32), clock=clock)
    driver = ScriptedDriver(LinkEnd(LINK, node, peer))
    manager = KeyManager(
        node_id=node,
        store=store,
        store_thread=InlineStoreThread(),  # type: ignore[arg-type]
        drivers={LINK: (peer, driver)},
        send=wire.sender(node),
        sync_timeout=settings.get("sync_timeout", 30.0),
        announce_interval=settings.get("announce_interval", 0.1),
        max_block_age=settings.get("max_block_age", 3600.0),
        key_size=256,
        clock=clock,
        peer_heard=wire.heard,
        liveness_window=settings.get("liveness_window", 2.0),
    )
    wire.attach(node, manager)
    return End(node, store, driver, manager)


class ReferenceDriver(ScriptedDriver):
    """A slave-end driver that gets its blocks by the peer's references (like ETSI 014 dec_keys)."""

    fetches_by_reference = True

    def __init__(self, link: LinkEnd, device: dict[str, bytes]) -> None:
        super().__init__(link)
        self.device = device
        self.fetched: list[tuple[int, str]] = []

    async def fetch(self, refs: list[tuple[int, str]]) -> None:
        self.fetched.extend(refs)
        for block_id, ref in refs:
            await self.emit(block_id, self.device[ref])
