"""Link key synchronisation driven at random: a hostile network, then a lying peer.

``SyncOverHostileNetwork``: two real key managers (real key stores) joined by a network
the adversary runs.  It delivers each side's messages in any order, repeats them, holds
them back, and cuts the session (what is in flight is lost); drivers deliver blocks to
either end in any order or never; the clock jumps past time-outs.  After every heal
(reconnect and deliver everything) the two ends agree: each block is READY at both ends
or at neither.  At every step, a block discarded at one end is never READY there again.

``LyingPeer``: one real key manager and a peer that says whatever it likes: announces,
confirms and discards of any ids (ones this end holds, discarded, never saw), for this
link and for others, repeated.  This end never makes a block READY that its own driver did
not deliver or that the peer's last word called discarded; never confirms or announces a
block it does not hold; and never remembers more of the peer's announced ids than its
bound, however many the peer sends.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import hypothesis.strategies as st
import pytest
import trio
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from protocol import KeyAnnounce, KeyConfirm, KeyDiscard
from qkd_drivers import KeyBlock
from qkmsd.keymanager import KeyManager
from qkmsd.keystore import KeyState, KeyStore

from .fakes import InlineStoreThread, ScriptedDriver

LINK = "KME_A~KME_B"
NODES = ("KME_A", "KME_B")
SYNC_TIMEOUT = 30.0
PEER_ANNOUNCED_BOUND = 64
block_ids = st.integers(0, 9)
nodes = st.sampled_from(NODES)


def _tmpdir() -> Path:
    shm = Path("/dev/shm")  # each store commit is an fsync: in memory where we can
    return Path(tempfile.mkdtemp(prefix="qkms-sync-", dir=shm if shm.is_dir() else None))


def _run(fn: Callable[[], Awaitable[Any]]) -> Any:
    return trio.run(fn)


class _Node:
    """One key manager with its store, driven by hand (no ``run()``: rules are the tasks)."""

    def __init__(
        self,
        node: str,
        peer: str,
        directory: Path,
        clock: Callable[[], float],
        send: Callable[[str, Any], Awaitable[bool]],
        heard: Callable[[str], float | None],
    ) -> None:
        from qkd_drivers import LinkEnd

        self.node = node
        self.store = KeyStore.open(directory / f"{node}.db", os.urandom(32), clock=clock)
        self.manager = KeyManager(
            node_id=node,
            store=self.store,
            store_thread=InlineStoreThread(),  # type: ignore[arg-type]
            drivers={LINK: (peer, ScriptedDriver(LinkEnd(LINK, node, peer)))},
            send=send,
            sync_timeout=SYNC_TIMEOUT,
            announce_interval=0.1,
            max_block_age=1e9,
            key_size=256,
            clock=clock,
            peer_heard=heard,
            liveness_window=5.0,
            max_peer_announced=PEER_ANNOUNCED_BOUND,
        )
        self.link = self.manager._links[LINK]

    async def deliver_block(self, block_id: int, key: bytes) -> None:
        await self.manager._accept_block(self.link, KeyBlock(LINK, block_id, key, 0.01, 0.0))

    async def flush_announcements(self) -> None:
        """What the announcer task does after its batching interval."""
        if self.link.to_announce and self.link.connected_since is not None:
            ids = sorted(self.link.to_announce)
            self.link.to_announce.clear()
            await self.manager._announce(self.link, ids)

    async def receive(self, peer: str, message: Any) -> None:
        handler = {
            KeyAnnounce: self.manager.on_announce,
            KeyConfirm: self.manager.on_confirm,
            KeyDiscard: self.manager.on_discard,
        }[type(message)]
        await handler(peer, message)

    def states(self, ids: range) -> dict[int, KeyState]:
        return self.store.states(LINK, ids)


class SyncOverHostileNetwork(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = _tmpdir()
        self.now = 1000.0
        self.up = False
        self.in_flight: dict[str, list[Any]] = {n: [] for n in NODES}  # messages *to* n
        self.keys: dict[int, bytes] = {}
        self.discarded: dict[str, set[int]] = {n: set() for n in NODES}
        self.heals = 0
        self.in_test = True  # False when a plain test drives the machine by hand
        self.nodes = {
            n: _Node(n, self._peer(n), self.dir, self._clock, self._sender(n), self._heard)
            for n in NODES
        }

    def teardown(self) -> None:
        for node in self.nodes.values():
            node.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _clock(self) -> float:
        return self.now

    def _heard(self, peer: str) -> float | None:
        return self.now if self.up else None

    @staticmethod
    def _peer(node: str) -> str:
        return NODES[1] if node == NODES[0] else NODES[0]

    def _sender(self, node: str) -> Callable[[str, Any], Awaitable[bool]]:
        async def send(peer: str, message: Any) -> bool:
            if not self.up:
                return False
            self.in_flight[peer].append(message)
            return True

        return send

    # --- the world ----------------------------------------------------------------------

    @rule(block_id=block_ids, at=st.sampled_from([*NODES, "both"]))
    def driver_delivers(self, block_id: int, at: str) -> None:
        key = self.keys.setdefault(block_id, os.urandom(16))
        for node in NODES if at == "both" else (at,):
            _run(lambda node=node: self.nodes[node].deliver_block(block_id, key))

    @rule(node=nodes)
    def announcer_runs(self, node: str) -> None:
        _run(self.nodes[node].flush_announcements)

    @rule()
    def connect(self) -> None:
        if self.up:
            return
        self.up = True

        async def up() -> None:
            for n, node in self.nodes.items():
                await node.manager.peer_up(self._peer(n))

        _run(up)

    @rule()
    def disconnect(self) -> None:
        """The session breaks: whatever is in flight is lost."""
        if not self.up:
            return
        self.up = False
        for queue in self.in_flight.values():
            queue.clear()

        async def down() -> None:
            for n, node in self.nodes.items():
                await node.manager.peer_down(self._peer(n))

        _run(down)

    @precondition(lambda self: any(self.in_flight.values()))
    @rule(node=nodes, pick=st.integers(0, 1000), keep=st.booleans())
    def deliver_message(self, node: str, pick: int, keep: bool) -> None:
        """Any message in flight to ``node`` arrives (reordered); ``keep``: it arrives
        again later too (repeated)."""
        queue = self.in_flight[node]
        if not queue:
            return
        message = queue[pick % len(queue)] if keep else queue.pop(pick % len(queue))
        _run(lambda: self.nodes[node].receive(self._peer(node), message))

    @rule(seconds=st.sampled_from([1, 10, int(SYNC_TIMEOUT) + 1]), node=nodes)
    def time_passes(self, seconds: int, node: str) -> None:
        """Time goes by (heartbeats flow while connected); ``node``'s sweeper runs."""
        for _ in range(seconds):
            self.now += 1.0
            for n in self.nodes.values():
                n.manager._tick(n.link, self.now)
        _run(self.nodes[node].manager.sweep)

    @rule()
    def heal(self) -> None:
        """Reconnect and let everything through, in order, until nothing is in flight;
        then the two ends must agree."""
        self.disconnect()
        self.connect()
        for _ in range(20):
            for n in NODES:
                _run(self.nodes[n].flush_announcements)
            if not any(self.in_flight.values()):
                break
            for n in NODES:
                while self.in_flight[n]:
                    message = self.in_flight[n].pop(0)
                    _run(lambda n=n, m=message: self.nodes[n].receive(self._peer(n), m))
        assert not any(self.in_flight.values()), "synchronisation did not settle"
        ids = range(10)
        a, b = (self.nodes[n].states(ids) for n in NODES)
        for block_id in ids:
            ready = [a.get(block_id) is KeyState.READY, b.get(block_id) is KeyState.READY]
            assert ready[0] == ready[1], (
                f"block {block_id}: {a.get(block_id)} at KME_A, {b.get(block_id)} at KME_B"
            )
        self.heals += 1
        if self.in_test:
            event(f"healed: {sum(s is KeyState.READY for s in a.values())} ready")

    @invariant()
    def a_discarded_block_is_never_ready_again(self) -> None:
        for n, node in self.nodes.items():
            states = node.states(range(10))
            for block_id, state in states.items():
                if state is KeyState.DISCARDED:
                    self.discarded[n].add(block_id)
                assert not (block_id in self.discarded[n] and state is KeyState.READY)


SyncOverHostileNetwork.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_sync_over_a_hostile_network = SyncOverHostileNetwork.TestCase


class LyingPeer(RuleBasedStateMachine):
    """KME_A is honest; every message from KME_B is the adversary's choice."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = _tmpdir()
        self.now = 1000.0
        self.sent: list[Any] = []
        self.delivered: set[int] = set()
        self.last_word: dict[int, str] = {}  # block id -> "holds" / "discarded"
        self.ever_discarded: set[int] = set()
        self.a = _Node("KME_A", "KME_B", self.dir, lambda: self.now, self._send, self._heard)
        _run(lambda: self.a.manager.peer_up("KME_B"))

    def teardown(self) -> None:
        self.a.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _heard(self, peer: str) -> float | None:
        return self.now

    async def _send(self, peer: str, message: Any) -> bool:
        self.sent.append(message)
        return True

    @rule(block_id=block_ids)
    def driver_delivers(self, block_id: int) -> None:
        self.delivered.add(block_id)
        _run(lambda: self.a.deliver_block(block_id, bytes([block_id]) * 16))
        _run(self.a.flush_announcements)

    @rule(
        kind=st.sampled_from([KeyAnnounce, KeyConfirm, KeyDiscard]),
        ids=st.lists(block_ids | st.integers(0, 2**63 - 1), max_size=8),
        other_link=st.booleans(),
    )
    def peer_says(self, kind: type[Any], ids: list[int], other_link: bool) -> None:
        link = "KME_C~KME_A" if other_link else LINK
        extra = {"reason": "lie"} if kind is KeyDiscard else {}
        message = kind(link_id=link, block_ids=ids, **extra)
        if not other_link:
            for block_id in ids:
                self.last_word[block_id] = "discarded" if kind is KeyDiscard else "holds"
        _run(lambda: self.a.receive("KME_B", message))

    @rule(count=st.integers(1, 3))
    def peer_floods_unknown_ids(self, count: int) -> None:
        """Announces of ids this end will never get: they must not pile up without end."""
        base = random.Random(count).randrange(10**6, 10**12)
        for i in range(count):
            ids = list(range(base + i * 50, base + (i + 1) * 50))
            _run(lambda ids=ids: self.a.receive("KME_B", KeyAnnounce(link_id=LINK, block_ids=ids)))

    @rule(seconds=st.sampled_from([1, int(SYNC_TIMEOUT) + 1]))
    def time_passes(self, seconds: int) -> None:
        for _ in range(seconds):
            self.now += 1.0
            self.a.manager._tick(self.a.link, self.now)
        _run(self.a.manager.sweep)

    @invariant()
    def honest_end_holds_to_its_rules(self) -> None:
        states = self.a.states(range(10))
        for block_id, state in states.items():
            if state is KeyState.DISCARDED:
                self.ever_discarded.add(block_id)
            if state is KeyState.READY:
                assert block_id in self.delivered
                assert self.last_word.get(block_id) == "holds", (
                    f"block {block_id} READY though the peer's last word was "
                    f"{self.last_word.get(block_id)}"
                )
                assert block_id not in self.ever_discarded
        for message in self.sent:
            if isinstance(message, (KeyAnnounce, KeyConfirm)):
                assert set(message.block_ids) <= self.delivered, "told the peer a lie"
        self.sent.clear()
        assert len(self.a.link.peer_has) <= PEER_ANNOUNCED_BOUND


LyingPeer.TestCase.settings = settings(
    max_examples=30,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_a_lying_peer = LyingPeer.TestCase


class _LongHostileNetwork(SyncOverHostileNetwork):
    pass


class _LongLyingPeer(LyingPeer):
    pass


for _machine in (_LongHostileNetwork, _LongLyingPeer):
    _machine.TestCase.settings = settings(
        max_examples=1500,
        stateful_step_count=80,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
test_sync_over_a_hostile_network_soak = pytest.mark.soak(_LongHostileNetwork.TestCase)
test_a_lying_peer_soak = pytest.mark.soak(_LongLyingPeer.TestCase)


def test_a_discard_lost_with_the_session_after_a_crossing_confirm_is_repeated() -> None:
    """Found by ``SyncOverHostileNetwork``: A's time-out ran out while B's confirm was on
    its way, and A's discard was lost with the session.  B kept the block READY alone;
    now A repeats the discard when the session is back."""
    machine = SyncOverHostileNetwork()
    machine.in_test = False
    try:
        machine.connect()
        machine.driver_delivers(1, "KME_A")
        machine.announcer_runs("KME_A")
        machine.deliver_message("KME_B", 0, keep=False)  # B learns A holds block 1
        machine.driver_delivers(1, "KME_B")  # B has it too: READY at B, confirm in flight
        machine.time_passes(int(SYNC_TIMEOUT) + 1, "KME_A")  # A gives up: discard in flight
        states = {n: node.states(range(2)) for n, node in machine.nodes.items()}
        assert states == {"KME_A": {1: KeyState.DISCARDED}, "KME_B": {1: KeyState.READY}}
        machine.disconnect()  # the confirm and the discard are lost
        machine.heal()  # asserts: READY at both ends or neither
        assert machine.nodes["KME_B"].states(range(2)) == {1: KeyState.DISCARDED}
    finally:
        machine.teardown()


def test_discarded_since_names_recent_discards_of_one_reason_newest_first(tmp_path: Path) -> None:
    from .keystore.keystore_support import FakeClock

    clock = FakeClock(100.0)
    with KeyStore.open(tmp_path / "ks.db", os.urandom(32), clock=clock) as store:
        from qkmsd.keystore import NewBlock

        store.add_blocks([NewBlock(LINK, i, b"k" * 8, 0.0, 0.0, True) for i in range(6)])
        store.discard(LINK, [0, 1], "unconfirmed")
        clock.now = 200.0
        store.discard(LINK, [2, 3], "unconfirmed")
        store.discard(LINK, [4], "peer:expired")
        assert store.discarded_since(LINK, reason="unconfirmed", since=150.0, limit=10) == [2, 3]
        assert store.discarded_since(LINK, reason="unconfirmed", since=0.0, limit=3) == [1, 2, 3]
