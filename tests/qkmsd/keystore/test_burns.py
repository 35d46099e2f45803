"""Burns kept for a neighbour (``KeyStore.keep_burns``): durable, bounded, latest kept; bytes
in flight noted with them and told as burnt only after a restart."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from qkmsd.keystore import BURNS_KEPT, KeyStore, Segment
from qkmsd.keystore._burns import BURNS_SCHEMA
from qkmsd.keystore._store import SCHEMA_VERSION

from .keystore_support import LINK, FakeClock, block

KEY_ID = "00000000-0000-4000-8000-000000000001"


def test_kept_burns_survive_close_and_reopen_in_the_order_kept(
    store_path: Path, master_key: bytes, clock: FakeClock
) -> None:
    burns = [Segment(7, 0, 64), Segment(3, 128, 32), Segment(7, 64, 64)]
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        s.keep_burns(LINK, burns[:2])
        s.keep_burns(LINK, burns[2:])
        s.keep_burns(LINK, burns[:1])  # kept once
        s.keep_burns("other~link", [Segment(1, 0, 8)])
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        assert s.kept_burns(LINK) == burns
        assert s.kept_burns("other~link") == [Segment(1, 0, 8)]
        assert s.kept_burns("no~link") == []


def test_only_the_latest_burns_are_kept_per_link(store: KeyStore) -> None:
    store.keep_burns(LINK, [Segment(i, 0, 16) for i in range(BURNS_KEPT)])
    store.keep_burns(LINK, [Segment(BURNS_KEPT + i, 0, 16) for i in range(3)])
    kept = store.kept_burns(LINK)
    assert len(kept) == BURNS_KEPT
    assert kept[0] == Segment(3, 0, 16) and kept[-1] == Segment(BURNS_KEPT + 2, 0, 16)


def _owned_blocks(store: KeyStore, n: int = 2, size: int = 64) -> None:
    store.add_blocks([block(i, os.urandom(size), owned=True) for i in range(n)])
    store.mark_ready(LINK, list(range(n)))


def test_bytes_in_flight_are_burns_only_for_a_later_opening_of_the_store(
    store_path: Path, master_key: bytes, clock: FakeClock
) -> None:
    # Noted in the allocation's own transaction; a node killed before the answer came
    # tells them as burnt after its restart.
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        _owned_blocks(s)
        hop = s.allocate_link_key(LINK, [40, 8], in_flight=True)
        cut = s.cut_service_keys(
            LINK,
            [(KEY_ID, 16)],
            master_sae="SAE_A",
            local_slaves=[],
            expires_at=1e12,
            slaves=["SAE_B"],
            in_flight=True,
        )
        plain = s.allocate_link_key(LINK, [8])
        assert s.kept_burns(LINK) == []  # in flight now: not burnt
    sent = [seg for a in hop for seg in a.segments] + list(cut[0].segments)
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        assert s.kept_burns(LINK) == sent
        assert plain[0].segments[0] not in s.kept_burns(LINK)


def test_bytes_in_flight_that_were_answered_for_are_forgotten(
    store_path: Path, master_key: bytes, clock: FakeClock
) -> None:
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        _owned_blocks(s)
        answered = s.allocate_link_key(LINK, [40], in_flight=True)[0].segments
        failed = s.allocate_link_key(LINK, [8], in_flight=True)[0].segments
        s.keep_burns(LINK, failed)  # no answer: a burn now
        s.forget_in_flight(LINK, [*answered, *failed])
        assert s.kept_burns(LINK) == list(failed)
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        assert s.kept_burns(LINK) == list(failed)


def test_an_acknowledged_range_drops_every_kept_range_inside_it(store: KeyStore) -> None:
    # The sender joins back-to-back burns into one range before it tells them.
    store.keep_burns(LINK, [Segment(7, 0, 64), Segment(7, 64, 32), Segment(7, 96, 8)])
    store.keep_burns(LINK, [Segment(8, 0, 8)])
    assert store.forget_burns(LINK, [Segment(7, 0, 96)]) == 2
    assert store.kept_burns(LINK) == [Segment(7, 96, 8), Segment(8, 0, 8)]


def test_keeping_over_the_bound_says_how_many_oldest_were_dropped(store: KeyStore) -> None:
    assert store.keep_burns(LINK, [Segment(i, 0, 16) for i in range(BURNS_KEPT)]) == 0
    assert store.keep_burns(LINK, [Segment(BURNS_KEPT + i, 0, 16) for i in range(3)]) == 3


def test_a_schema_6_store_keeps_its_burns_as_burns(
    store_path: Path, master_key: bytes, clock: FakeClock
) -> None:
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        s.keep_burns(LINK, [Segment(3, 0, 64)])
    conn = sqlite3.connect(store_path, isolation_level=None)
    try:  # the table as schema 6 had it
        conn.execute("BEGIN")
        conn.execute("ALTER TABLE burns RENAME TO burns_7")
        conn.execute(BURNS_SCHEMA[0])
        conn.execute("INSERT INTO burns SELECT link_id, block_id, start, length FROM burns_7")
        conn.execute("DROP TABLE burns_7")
        conn.execute("PRAGMA user_version = 6")
        conn.execute("COMMIT")
    finally:
        conn.close()
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        assert s.kept_burns(LINK) == [Segment(3, 0, 64)]
    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_misplaced_burns_name_ranges_outside_blocks_and_blocks_owned_here(
    store: KeyStore,
) -> None:
    store.add_blocks([block(1, os.urandom(64), owned=False), block(2, os.urandom(64))])
    wrong = store.misplaced_burns(
        LINK, [Segment(1, 0, 64), Segment(1, 60, 8), Segment(2, 0, 8), Segment(9, 0, 8)]
    )
    assert wrong == [
        "segment 1[60:+8] outside the block's 64 bytes",
        "block 2 is ours to allocate, not yours",
    ]
