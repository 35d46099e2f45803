"""The pool primitive: the owner allocates link key as named segments, the other end consumes
exactly those bytes, and no byte is used twice at either end."""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkmsd.keystore import (
    InsufficientKey,
    KeyState,
    KeyStore,
    Segment,
    SegmentRefused,
)

from .keystore_support import LINK, block

BLOCK = 64  # bytes


class Ends:
    """Both ends of one link: ``owner`` owns blocks 0..n-1, ``other`` holds the same copies."""

    def __init__(self, tmp: Path, blocks: int = 4) -> None:
        self.owner = KeyStore.open(tmp / "owner.db", os.urandom(32))
        self.other = KeyStore.open(tmp / "other.db", os.urandom(32))
        self.material = {i: os.urandom(BLOCK) for i in range(blocks)}
        for store, owned in ((self.owner, True), (self.other, False)):
            store.add_blocks([block(i, k, owned=owned) for i, k in self.material.items()])
            store.mark_ready(LINK, list(self.material))

    def close(self) -> None:
        self.owner.close()
        self.other.close()


@pytest.fixture
def ends(tmp_path: Path) -> Iterator[Ends]:
    pair = Ends(tmp_path)
    yield pair
    pair.close()


def test_allocations_are_named_front_to_back_and_consumed_identically(ends: Ends) -> None:
    taken = ends.owner.allocate_link_key(LINK, [40, 40, 8])
    assert [a.segments for a in taken] == [
        (Segment(0, 0, 40),),
        (Segment(0, 40, 24), Segment(1, 0, 16)),
        (Segment(1, 16, 8),),
    ]
    assert taken[0].material == ends.material[0][:40]
    assert ends.other.consume_link_key(LINK, [a.segments for a in taken]) == [
        a.material for a in taken
    ]
    assert ends.owner.pool(LINK).owned_ready_bits == (4 * BLOCK - 88) * 8


def test_a_block_whose_bytes_are_all_used_is_erased_at_both_ends(ends: Ends) -> None:
    taken = ends.owner.allocate_link_key(LINK, [BLOCK])
    ends.other.consume_link_key(LINK, [taken[0].segments])
    for store in (ends.owner, ends.other):
        assert store.states(LINK, [0, 1]) == {0: KeyState.ERASED, 1: KeyState.READY}


def test_an_allocation_the_pool_cannot_cover_takes_nothing(ends: Ends) -> None:
    with pytest.raises(InsufficientKey, match="2056 bits asked, 2048 owned ready bits"):
        ends.owner.allocate_link_key(LINK, [4 * BLOCK + 1])
    with pytest.raises(InsufficientKey, match="kept back"):
        ends.owner.allocate_link_key(LINK, [BLOCK], keep=3 * BLOCK + 1)
    assert ends.owner.pool(LINK).owned_ready_bits == 4 * BLOCK * 8


def test_segments_are_consumed_in_any_order(ends: Ends) -> None:
    taken = ends.owner.allocate_link_key(LINK, [16, 16, 16])
    got = [ends.other.consume_link_key(LINK, [a.segments])[0] for a in reversed(taken)]
    assert got == [a.material for a in reversed(taken)]


@pytest.mark.parametrize(
    ("segments", "why"),
    [
        ([Segment(0, 8, 8)], "overlaps bytes already used"),
        ([Segment(1, 0, 8), Segment(1, 4, 8)], "by the same reservation"),
        ([Segment(1, 60, 8)], "outside the block's 64 bytes"),
        ([Segment(9, 0, 8)], "block 9 unknown here"),
        ([], "1 to 64 segments"),
    ],
    ids=["used before", "used twice in one call", "out of range", "unknown block", "empty"],
)
def test_a_segment_that_cannot_be_consumed_refuses_the_whole_call(
    ends: Ends, segments: list[Segment], why: str
) -> None:
    ends.other.consume_link_key(LINK, [[Segment(0, 0, 16)]])
    fresh = [Segment(2, 0, 8)]  # fine on its own: must not be consumed either
    with pytest.raises(SegmentRefused, match=why):
        ends.other.consume_link_key(LINK, [fresh, segments])
    assert ends.other.consume_link_key(LINK, [fresh]) == [ends.material[2][:8]]


def test_a_burn_consumes_the_unused_part_of_a_segment_that_is_partly_used(ends: Ends) -> None:
    # The sender joins back-to-back burnt segments of different requests: one recorded
    # here (used), the next never arrived.  The whole block must end used up here too.
    first, second = ends.owner.allocate_link_key(LINK, [40, 24])
    ends.other.consume_link_key(LINK, [first.segments])
    assert ends.other.burn_link_key(LINK, [Segment(0, 0, BLOCK)]) == 1
    assert ends.other.states(LINK, [0]) == {0: KeyState.ERASED}
    assert ends.owner.states(LINK, [0]) == {0: KeyState.ERASED}
    assert ends.other.burn_link_key(LINK, [Segment(0, 0, BLOCK)]) == 0  # nothing left


def test_a_burn_of_a_block_not_yet_ready_here_erases_it_once_it_is_ready(
    tmp_path: Path,
) -> None:
    # The owner used the block up and the burn came before the confirm (lost with a
    # session, re-announced): the block must not become READY here with its bits unused.
    owner = KeyStore.open(tmp_path / "owner.db", os.urandom(32))
    other = KeyStore.open(tmp_path / "other.db", os.urandom(32))
    material = os.urandom(BLOCK)
    owner.add_blocks([block(0, material, owned=True)])
    owner.mark_ready(LINK, [0])
    other.add_blocks([block(0, material, owned=False)])  # RECEIVED here
    (taken,) = owner.allocate_link_key(LINK, [BLOCK])
    assert other.burn_link_key(LINK, list(taken.segments)) == 1
    assert other.states(LINK, [0]) == {0: KeyState.RECEIVED}
    assert other.mark_ready(LINK, [0]) == [0]
    assert other.states(LINK, [0]) == {0: KeyState.ERASED}
    assert owner.states(LINK, [0]) == {0: KeyState.ERASED}
    owner.close()
    other.close()


def test_the_other_end_refuses_blocks_it_owns_or_that_are_not_ready(tmp_path: Path) -> None:
    with KeyStore.open(tmp_path / "k.db", os.urandom(32)) as store:
        store.add_blocks([block(0, owned=True), block(1, owned=False)])
        store.mark_ready(LINK, [0])
        with pytest.raises(SegmentRefused, match="block 0 is ours to allocate"):
            store.consume_link_key(LINK, [[Segment(0, 0, 8)]])
        with pytest.raises(SegmentRefused, match="block 1 is received, not ready"):
            store.consume_link_key(LINK, [[Segment(1, 0, 8)]])


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 100), min_size=1, max_size=12),
    order=st.randoms(use_true_random=False),
)
def test_no_byte_is_used_twice_at_either_end(sizes: list[int], order: random.Random) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        pair = Ends(Path(tmp), blocks=20)
        try:
            taken = pair.owner.allocate_link_key(LINK, sizes)
            spans = sorted(
                (s.block_id, s.offset, s.offset + s.length) for a in taken for s in a.segments
            )
            for (b1, _, stop), (b2, start, _) in zip(spans, spans[1:], strict=False):
                assert b1 != b2 or stop <= start  # disjoint at the owner
            shuffled = list(taken)
            order.shuffle(shuffled)
            for a in shuffled:
                assert pair.other.consume_link_key(LINK, [a.segments]) == [a.material]
                with pytest.raises(SegmentRefused):  # and never a second time
                    pair.other.consume_link_key(LINK, [a.segments])
        finally:
            pair.close()
