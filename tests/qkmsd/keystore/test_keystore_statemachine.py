"""The store's life cycle, driven at random: the table and the database must agree."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from qkmsd.keystore import (
    HOLDS_MATERIAL,
    TRANSITIONS,
    IllegalTransition,
    KeyState,
    KeyStore,
    KeyStoreError,
    NewBlock,
    is_legal,
)

from .keystore_support import FakeClock

LINKS = ("a:b", "a:c")
links = st.sampled_from(LINKS)
block_ids = st.integers(min_value=0, max_value=5)
MASTER_KEY = os.urandom(32)


class KeyStoreLifeCycle(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="qkms-ks-"))
        self.clock = FakeClock()
        self.store: KeyStore | None = KeyStore.open(
            self.dir / "ks.db", MASTER_KEY, clock=self.clock
        )
        self.state: dict[tuple[str, int], KeyState] = {}
        self.keys: dict[tuple[str, int], bytes] = {}
        self.produced: dict[tuple[str, int], float] = {}

    @property
    def ks(self) -> KeyStore:
        assert self.store is not None
        return self.store

    def teardown(self) -> None:
        if self.store is not None:
            self.store.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _moved(self, link: str, ids: list[int], sources: set[KeyState], to: KeyState) -> list[int]:
        moved = []
        for i in dict.fromkeys(ids):
            if self.state.get((link, i)) in sources:
                assert is_legal(self.state[(link, i)], to)
                self.state[(link, i)] = to
                moved.append(i)
        return moved

    @initialize(link=links, batch=st.lists(block_ids, min_size=1, max_size=4, unique=True))
    def seed(self, link: str, batch: list[int]) -> None:
        self.add_blocks(link, [(i, os.urandom(8 + i), 50) for i in batch])

    @rule(
        link=links,
        batch=st.lists(
            st.tuples(block_ids, st.binary(min_size=1, max_size=24), st.integers(0, 100)),
            max_size=4,
        ),
    )
    def add_blocks(self, link: str, batch: list[tuple[int, bytes, int]]) -> None:
        expected = []
        for block_id, key, produced_at in batch:
            if (link, block_id) not in self.state:
                self.state[(link, block_id)] = KeyState.RECEIVED
                self.keys[(link, block_id)] = key
                self.produced[(link, block_id)] = produced_at
                expected.append(block_id)
        added = self.ks.add_blocks(
            [NewBlock(link, i, key, 0.01, float(p), True) for i, key, p in batch]
        )
        assert added == expected
        self.clock.now += 1

    @rule(link=links, ids=st.lists(block_ids, max_size=4))
    def mark_ready(self, link: str, ids: list[int]) -> None:
        expected = self._moved(link, ids, {KeyState.RECEIVED}, KeyState.READY)
        assert self.ks.mark_ready(link, ids) == expected

    @rule(link=links, ids=st.lists(block_ids, max_size=4))
    def discard(self, link: str, ids: list[int]) -> None:
        sources = {KeyState.RECEIVED, KeyState.READY, KeyState.RESERVED}
        expected = self._moved(link, ids, sources, KeyState.DISCARDED)
        assert self.ks.discard(link, ids, "peer discarded") == expected

    @rule(link=links, cutoff=st.integers(0, 101))
    def expire(self, link: str, cutoff: int) -> None:
        ids = sorted(
            i
            for (lk, i), s in self.state.items()
            if lk == link and s is KeyState.READY and self.produced[(lk, i)] < cutoff
        )
        expected = self._moved(link, ids, {KeyState.READY}, KeyState.EXPIRED)
        assert self.ks.expire(link, produced_before=float(cutoff)) == expected

    @rule(link=links, block_id=block_ids, new=st.sampled_from(KeyState))
    def transition(self, link: str, block_id: int, new: KeyState) -> None:
        old = self.state.get((link, block_id))
        if old is None:
            with pytest.raises(KeyStoreError, match="unknown"):
                self.ks.transition(link, block_id, new)
        elif is_legal(old, new):
            self.ks.transition(link, block_id, new, reason="rule")
            self.state[(link, block_id)] = new
        else:
            event(f"illegal {old} -> {new}")
            with pytest.raises(IllegalTransition):
                self.ks.transition(link, block_id, new)

    @precondition(lambda self: any(TRANSITIONS[s] for s in self.state.values()))
    @rule(data=st.data(), steps=st.integers(1, 3))
    def advance(self, data: st.DataObject, steps: int) -> None:
        """Walk one existing block along legal edges, so the deep states get visited."""
        movable = sorted(k for k, s in self.state.items() if TRANSITIONS[s])
        link, block_id = data.draw(st.sampled_from(movable))
        for _ in range(steps):
            old = self.state[(link, block_id)]
            if not TRANSITIONS[old]:
                break
            new = data.draw(st.sampled_from(sorted(TRANSITIONS[old])))
            self.ks.transition(link, block_id, new, reason="advance")
            self.state[(link, block_id)] = new
            event(f"legal {old} -> {new}")

    @rule()
    def reopen(self) -> None:
        self.ks.close()
        self.store = KeyStore.open(self.dir / "ks.db", MASTER_KEY, clock=self.clock)

    @invariant()
    def table_and_database_agree(self) -> None:
        for link in LINKS:
            expected = {i: s for (lk, i), s in self.state.items() if lk == link}
            assert self.ks.states(link, range(6)) == expected
            for i, s in expected.items():
                if s in HOLDS_MATERIAL:
                    assert self.ks.read_block(link, i) == self.keys[(link, i)]
                else:
                    with pytest.raises(KeyStoreError, match="erased"):
                        self.ks.read_block(link, i)
            level = self.ks.pool(link)
            ready = [i for i, s in expected.items() if s is KeyState.READY]
            assert level.ready_blocks == len(ready)
            assert level.ready_bits == sum(len(self.keys[(link, i)]) * 8 for i in ready)
            assert level.received_blocks == list(expected.values()).count(KeyState.RECEIVED)
            assert self.ks.max_block_id(link) == (max(expected) if expected else None)
            assert self.ks.owned_ready_bits(link) == level.owned_ready_bits
        # The batched read (links_status's) agrees with the per-link ones.
        assert self.ks.pools(list(LINKS)) == {
            link: (self.ks.pool(link), self.ks.max_block_id(link)) for link in LINKS
        }


KeyStoreLifeCycle.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_key_store_life_cycle = KeyStoreLifeCycle.TestCase
