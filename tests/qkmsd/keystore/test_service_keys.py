"""Service keys: cut from owned blocks, consumed identically at the other end, served once."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qkmsd.keystore import (
    RETAIN_ENDED_S,
    InsufficientKey,
    KeySpec,
    KeyState,
    KeyStore,
    KeyStoreError,
    NotAuthorised,
    Segment,
    SegmentRefused,
    ServiceKeyNotFound,
)

from .keystore_support import LINK, FakeClock, block, disk_bytes

BLOCK = 64  # bytes per block in these tests


def kid() -> str:
    return str(uuid.uuid4())


class Link:
    """Both ends of one link: ``owner`` owns every block, ``peer`` holds the same copies."""

    def __init__(self, tmp: Path, clock: FakeClock, blocks: int = 4) -> None:
        self.owner = KeyStore.open(tmp / "owner.db", os.urandom(32), clock=clock)
        self.peer = KeyStore.open(tmp / "peer.db", os.urandom(32), clock=clock)
        self.material = {i: os.urandom(BLOCK) for i in range(blocks)}
        for store, owned in ((self.owner, True), (self.peer, False)):
            store.add_blocks([block(i, k, owned=owned) for i, k in self.material.items()])
            store.mark_ready(LINK, list(self.material))

    def close(self) -> None:
        self.owner.close()
        self.peer.close()


@pytest.fixture
def link(tmp_path: Path, clock: FakeClock) -> Iterator[Link]:
    pair = Link(tmp_path, clock)
    yield pair
    pair.close()


def cut(link: Link, *sizes: int, slaves: tuple[str, ...] = ()) -> list:  # type: ignore[type-arg]
    return link.owner.cut_service_keys(
        LINK, [(kid(), s) for s in sizes], master_sae="SAE_A", local_slaves=slaves, expires_at=2e6
    )


def record(link: Link, keys: list, slaves: tuple[str, ...] = ("SAE_B",)) -> list:  # type: ignore[type-arg]
    return link.peer.record_service_keys(
        LINK,
        [KeySpec(k.key_id, k.segments) for k in keys],
        master_sae="SAE_A",
        local_slaves=slaves,
        expires_at=2e6,
    )


def test_keys_are_exact_pool_bits_cut_front_to_back(link: Link) -> None:
    keys = cut(link, 32, 48)
    pool = b"".join(link.material[i] for i in sorted(link.material))
    assert keys[0].key == pool[:32]
    assert keys[1].key == pool[32:80]
    assert keys[1].segments == (Segment(0, 32, 32), Segment(1, 0, 16))


def test_the_other_end_reproduces_the_same_bytes(link: Link) -> None:
    keys = cut(link, 32, 100)
    assert [k.key for k in record(link, keys)] == [k.key for k in keys]


def test_a_fully_cut_block_is_erased_at_both_ends(link: Link) -> None:
    keys = cut(link, BLOCK)
    record(link, keys)
    for store in (link.owner, link.peer):
        assert store.states(LINK, [0]) == {0: KeyState.ERASED}
        assert store.pool(LINK).ready_bits == 3 * BLOCK * 8


def test_too_little_key_cuts_nothing(link: Link) -> None:
    with pytest.raises(InsufficientKey):
        cut(link, 4 * BLOCK + 1)
    assert link.owner.pool(LINK).ready_bits == 4 * BLOCK * 8


def test_a_cut_can_keep_bytes_back_for_others(link: Link) -> None:
    def cut_keeping(size: int, keep: int) -> None:
        link.owner.cut_service_keys(
            LINK, [(kid(), size)], master_sae="A", local_slaves=(), expires_at=1, keep=keep
        )

    with pytest.raises(InsufficientKey, match=f"{BLOCK * 8} kept back"):
        cut_keeping(3 * BLOCK + 1, BLOCK)
    assert link.owner.pool(LINK).ready_bits == 4 * BLOCK * 8  # nothing cut
    cut_keeping(3 * BLOCK, BLOCK)
    assert link.owner.pool(LINK).ready_bits == BLOCK * 8


def test_only_owned_blocks_are_cut(link: Link) -> None:
    with pytest.raises(InsufficientKey):
        link.peer.cut_service_keys(
            LINK, [(kid(), 1)], master_sae="A", local_slaves=(), expires_at=1
        )


@pytest.mark.parametrize(
    "segment",
    [
        Segment(9, 0, 8),  # unknown block
        Segment(0, 60, 8),  # past the end
        Segment(0, -1, 8),  # before the start
        Segment(0, 0, 0),  # empty
    ],
)
def test_segments_the_peer_cannot_consume_are_refused_and_nothing_changes(
    link: Link, segment: Segment
) -> None:
    with pytest.raises(SegmentRefused):
        link.peer.record_service_keys(
            LINK,
            [KeySpec(kid(), (segment,))],
            master_sae="SAE_A",
            local_slaves=("B",),
            expires_at=1,
        )
    assert link.peer.pool(LINK).ready_bits == 4 * BLOCK * 8


def test_the_peer_never_consumes_the_same_bits_twice(link: Link) -> None:
    keys = cut(link, 16)
    record(link, keys)
    with pytest.raises(SegmentRefused, match="overlaps bytes already used"):
        record(link, [type(keys[0])(kid(), keys[0].segments, b"")])
    shifted = (Segment(0, 8, 16),)
    with pytest.raises(SegmentRefused, match="overlaps"):
        record(link, [type(keys[0])(kid(), shifted, b"")])


def test_keys_of_one_reservation_that_overlap_each_other_are_refused(link: Link) -> None:
    halves = (Segment(0, 0, 16), Segment(0, 16, 16))  # back to back: fine
    record(link, [KeySpec(kid(), (s,)) for s in halves])
    clashing = (Segment(1, 0, 16), Segment(1, 8, 16))
    with pytest.raises(SegmentRefused, match="by the same reservation"):
        record(link, [KeySpec(kid(), (s,)) for s in clashing])
    # Nothing of the refused reservation was consumed: block 1 is whole.
    record(link, [KeySpec(kid(), (Segment(1, 0, 24),))])


def test_a_reservation_of_many_adjacent_keys_blocks_every_part_of_them(link: Link) -> None:
    keys = cut(link, *[8] * 6)  # bytes 0-47 of block 0
    record(link, keys)
    for inside in (Segment(0, 24, 8), Segment(0, 47, 1), Segment(0, 0, 1)):
        with pytest.raises(SegmentRefused, match="overlaps bytes already used"):
            record(link, [KeySpec(kid(), (inside,))])
    record(link, [KeySpec(kid(), (Segment(0, 48, 8),))])


def test_no_plaintext_of_an_erased_block_stays_in_memory(link: Link) -> None:
    # The store keeps the plaintext of blocks being cut (so a request does not decrypt a
    # whole block); once a block's material is erased, so is that copy.
    def held(store: KeyStore) -> set[int]:
        return {block_id for _, block_id in store._plain}

    record(link, cut(link, BLOCK, 8))  # all of block 0, the start of block 1
    assert held(link.owner) == held(link.peer) == {1}
    for store in (link.owner, link.peer):
        store.discard(LINK, [1], "test")
        assert held(store) == set()


def test_the_peer_refuses_to_consume_blocks_it_owns(link: Link) -> None:
    with pytest.raises(SegmentRefused, match="ours to allocate"):
        link.owner.record_service_keys(
            LINK,
            [KeySpec(kid(), (Segment(3, 0, 8),))],
            master_sae="S",
            local_slaves=(),
            expires_at=1,
        )


def test_reservations_may_arrive_out_of_order(link: Link) -> None:
    first, second = cut(link, 8), cut(link, 8)
    assert [k.key for k in record(link, second)] == [k.key for k in second]
    assert [k.key for k in record(link, first)] == [k.key for k in first]


def test_overlap_within_one_reservation_is_refused_whole(link: Link) -> None:
    twice = [KeySpec(kid(), (Segment(1, 0, 8),)), KeySpec(kid(), (Segment(1, 4, 8),))]
    with pytest.raises(SegmentRefused):
        link.peer.record_service_keys(
            LINK, twice, master_sae="SAE_A", local_slaves=("SAE_B",), expires_at=2e6
        )
    again = link.peer.record_service_keys(  # nothing was consumed by the refused one
        LINK, twice[:1], master_sae="SAE_A", local_slaves=("SAE_B",), expires_at=2e6
    )
    assert again[0].key == link.material[1][:8]


def test_a_key_id_already_recorded_is_refused_by_name_and_nothing_is_recorded(
    link: Link,
) -> None:
    first = cut(link, 8)
    record(link, first)
    fresh = cut(link, 8, 8, 8)
    # A new reservation whose middle key (fresh bits) reuses an id already recorded.
    specs = [KeySpec(k.key_id, k.segments) for k in fresh]
    specs[1] = KeySpec(first[0].key_id, fresh[1].segments)
    with pytest.raises(KeyStoreError, match=f"service key {first[0].key_id}: id already used"):
        link.peer.record_service_keys(
            LINK, specs, master_sae="SAE_A", local_slaves=("SAE_B",), expires_at=2e6
        )
    assert link.peer.stored_service_keys("SAE_A", "SAE_B") == 1
    assert [k.key for k in record(link, fresh)] == [k.key for k in fresh]  # nothing consumed


def test_a_reservation_of_more_keys_than_one_insert_takes_records_them_all(
    tmp_path: Path, clock: FakeClock
) -> None:
    many = Link(tmp_path, clock, blocks=12)  # 768 bytes: 384 keys of 2 bytes
    try:
        keys = cut(many, *[2] * 384)
        got = record(many, keys)
        assert [k.key for k in got] == [k.key for k in keys]
        assert many.peer.stored_service_keys("SAE_A", "SAE_B") == 384
        last = keys[-1].key_id
        assert many.peer.fetch_service_keys([last], master_sae="SAE_A", requester="SAE_B") == [
            (last, keys[-1].key)
        ]
    finally:
        many.close()


def test_named_slaves_fetch_once_then_the_key_is_erased(link: Link) -> None:
    keys = cut(link, 32)
    record(link, keys, slaves=("SAE_B", "SAE_C"))
    key_id = keys[0].key_id
    assert link.peer.stored_service_keys("SAE_A", "SAE_B") == 1
    assert link.peer.fetch_service_keys([key_id], master_sae="SAE_A", requester="SAE_B") == [
        (key_id, keys[0].key)
    ]
    with pytest.raises(ServiceKeyNotFound):
        link.peer.fetch_service_keys([key_id], master_sae="SAE_A", requester="SAE_B")
    assert (
        link.peer.fetch_service_keys([key_id], master_sae="SAE_A", requester="SAE_C")[0][1]
        == keys[0].key
    )
    assert link.peer.stored_service_keys("SAE_A", "SAE_C") == 0
    assert keys[0].key not in disk_bytes(link.peer.path)


def test_an_unnamed_sae_is_not_authorised_and_nothing_is_served(link: Link) -> None:
    keys = cut(link, 32, 32)
    record(link, keys)
    with pytest.raises(NotAuthorised):
        link.peer.fetch_service_keys(
            [k.key_id for k in keys], master_sae="SAE_A", requester="SAE_X"
        )
    assert link.peer.stored_service_keys("SAE_A", "SAE_B") == 2


def test_a_key_asked_for_under_another_master_is_not_found(link: Link) -> None:
    keys = cut(link, 32)
    record(link, keys)
    with pytest.raises(ServiceKeyNotFound):
        link.peer.fetch_service_keys([keys[0].key_id], master_sae="SAE_Z", requester="SAE_B")


def test_expired_keys_are_discarded(link: Link, clock: FakeClock) -> None:
    keys = cut(link, 32)
    record(link, keys)
    clock.now = 3e6
    assert link.peer.expire_service_keys() == 1
    with pytest.raises(ServiceKeyNotFound):
        link.peer.fetch_service_keys([keys[0].key_id], master_sae="SAE_A", requester="SAE_B")


def test_local_slaves_are_recorded_at_the_owner(link: Link) -> None:
    keys = cut(link, 16, slaves=("SAE_A2",))
    got = link.owner.fetch_service_keys([keys[0].key_id], master_sae="SAE_A", requester="SAE_A2")
    assert got[0][1] == keys[0].key


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(1, 80), min_size=1, max_size=4), min_size=1, max_size=6))
def test_any_sequence_of_cuts_uses_disjoint_bits_identically_at_both_ends(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[int]]
) -> None:
    pair = Link(tmp_path_factory.mktemp("cuts"), FakeClock(), blocks=8)
    try:
        used: set[tuple[int, int]] = set()
        for sizes in batches:
            try:
                keys = cut(pair, *sizes)
            except InsufficientKey:
                continue
            for key, mirrored in zip(keys, record(pair, keys), strict=True):
                assert key.key == mirrored.key
                for seg in key.segments:
                    bits = {(seg.block_id, seg.offset + i) for i in range(seg.length)}
                    assert not bits & used
                    used |= bits
    finally:
        pair.close()


def test_the_owner_remembers_who_was_named_without_keeping_the_key(
    link: Link, clock: FakeClock
) -> None:
    (key,) = link.owner.cut_service_keys(
        LINK, [(kid(), 32)], master_sae="SAE_A", local_slaves=(), expires_at=2e6, slaves=["SAE_B"]
    )
    with pytest.raises(NotAuthorised):
        link.owner.fetch_service_keys([key.key_id], master_sae="SAE_A", requester="SAE_X")
    with pytest.raises(ServiceKeyNotFound):  # named, but served by its own KME, not here
        link.owner.fetch_service_keys([key.key_id], master_sae="SAE_A", requester="SAE_B")
    assert key.key not in disk_bytes(link.owner.path)
    clock.now = 2e6 + 8 * 86400  # long after it ended, the row itself goes
    link.owner.expire_service_keys()
    with pytest.raises(ServiceKeyNotFound):
        link.owner.fetch_service_keys([key.key_id], master_sae="SAE_A", requester="SAE_X")


def test_ended_rows_stay_until_the_retention_after_validity_then_go(
    link: Link, clock: FakeClock
) -> None:
    keys = cut(link, 32, 32)
    record(link, keys)
    link.peer.fetch_service_keys([keys[0].key_id], master_sae="SAE_A", requester="SAE_B")
    clock.now = 2e6 + RETAIN_ENDED_S - 1  # both keys expired long ago, within the retention
    assert link.peer.expire_service_keys() == 1  # the unfetched one is discarded
    for key in keys:  # both rows are still there: an unnamed SAE is told 401, not 400
        with pytest.raises(NotAuthorised):
            link.peer.fetch_service_keys([key.key_id], master_sae="SAE_A", requester="SAE_X")
    clock.now = 2e6 + RETAIN_ENDED_S + 1
    link.peer.expire_service_keys()
    for key in keys:
        with pytest.raises(ServiceKeyNotFound):
            link.peer.fetch_service_keys([key.key_id], master_sae="SAE_A", requester="SAE_X")


def test_the_retention_of_ended_rows_is_the_callers_to_choose(link: Link, clock: FakeClock) -> None:
    (key,) = cut(link, 32)
    record(link, [key])
    link.peer.fetch_service_keys([key.key_id], master_sae="SAE_A", requester="SAE_B")
    clock.now = 2e6 + 61  # a minute past the key's validity
    link.peer.expire_service_keys(retain_s=60)
    with pytest.raises(ServiceKeyNotFound):  # the row is gone: unnamed SAEs get 400 now
        link.peer.fetch_service_keys([key.key_id], master_sae="SAE_A", requester="SAE_X")
