from __future__ import annotations

import os
import sqlite3
import stat
import time
from pathlib import Path

import pytest

from qkmsd.keystore import (
    SCHEMA_VERSION,
    CorruptStoreError,
    IllegalTransition,
    KeyState,
    KeyStore,
    KeyStoreError,
    MasterKeyMismatch,
    NewBlock,
    PoolLevel,
)

from .keystore_support import LINK, FakeClock, block, disk_bytes

# Recognisable, so that a test can search the disk for it.
KEY64 = bytes(range(0x40, 0x80))


def raw_row(path: Path, block_id: int, link_id: str = LINK) -> tuple[object, ...]:
    conn = sqlite3.connect(path)
    try:
        row: tuple[object, ...] = conn.execute(
            "SELECT b.state, m.nonce, m.material, b.reason, b.state_changed_at FROM blocks AS b"
            " LEFT JOIN block_material AS m USING (link_id, block_id)"
            " WHERE b.link_id = ? AND b.block_id = ?",
            (link_id, block_id),
        ).fetchone()
    finally:
        conn.close()
    return row


def test_added_blocks_read_back_identical(store: KeyStore) -> None:
    keys = {i: os.urandom(16 + i) for i in range(5)}
    assert store.add_blocks([block(i, k) for i, k in keys.items()]) == list(keys)
    store.add_blocks([block(0, KEY64, link_id="alice:carol")])
    for i, k in keys.items():
        assert store.read_block(LINK, i) == k
    assert store.read_block("alice:carol", 0) == KEY64
    assert store.states(LINK, range(10)) == dict.fromkeys(keys, KeyState.RECEIVED)


def test_keys_never_in_reprs(store: KeyStore, master_key: bytes) -> None:
    b = block(1, KEY64)
    assert KEY64.hex() not in repr(b) and repr(KEY64) not in repr(b)
    assert "key=" not in repr(b)
    store.add_blocks([b])
    for secret in (KEY64, master_key):
        assert secret.hex() not in repr(store) and repr(secret) not in repr(store)


def test_key_material_is_not_on_disk_in_the_clear(store: KeyStore, store_path: Path) -> None:
    store.add_blocks([block(7, KEY64)])
    assert KEY64 not in disk_bytes(store_path)
    assert store.checkpoint()
    data = disk_bytes(store_path)
    assert KEY64 not in data and KEY64.hex().encode() not in data
    assert store.read_block(LINK, 7) == KEY64


def fragments(data: bytes, size: int = 24) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data) - size + 1, size)]


@pytest.mark.parametrize("ending", ["discard", "expire", "erase-after-delivery"])
def test_erased_ciphertext_leaves_the_disk(store: KeyStore, store_path: Path, ending: str) -> None:
    # Far larger than the tombstone that replaces it, so that without secure_delete
    # most of the old cell would survive in the page's free space.
    big_key = KEY64 * 16
    store.add_blocks([block(1, big_key, produced_at=10.0), block(2, produced_at=10.0)])
    store.mark_ready(LINK, [1, 2])
    store.checkpoint()
    _, _, ciphertext, _, _ = raw_row(store_path, 1)
    assert isinstance(ciphertext, bytes) and ciphertext in disk_bytes(store_path)

    if ending == "discard":
        assert store.discard(LINK, [1], "operator flush") == [1]
    elif ending == "expire":
        assert store.expire(LINK, produced_before=11.0) == [1, 2]
    else:
        store.transition(LINK, 1, KeyState.RESERVED)
        store.transition(LINK, 1, KeyState.DELIVERED)
        store.transition(LINK, 1, KeyState.ERASED)
    assert store.checkpoint()

    data = disk_bytes(store_path)
    assert not [f for f in fragments(ciphertext) if f in data]
    state, nonce, material, _, _ = raw_row(store_path, 1)
    assert (nonce, material) == (None, None)
    with pytest.raises(KeyStoreError, match=f"block {LINK}/1: material erased"):
        store.read_block(LINK, 1)


def test_duplicates_are_skipped_whatever_their_state(store: KeyStore) -> None:
    assert store.add_blocks([block(1, KEY64), block(2), block(1)]) == [1, 2]
    assert store.add_blocks([block(1), block(3)]) == [3]
    assert store.read_block(LINK, 1) == KEY64

    store.discard(LINK, [2], "peer discarded")
    store.transition(LINK, 2, KeyState.ERASED)
    assert store.add_blocks([block(2)]) == []  # a tombstone still blocks the id
    assert store.states(LINK, [2]) == {2: KeyState.ERASED}


def test_mark_ready_is_idempotent_and_ignores_unknown_ids(store: KeyStore) -> None:
    store.add_blocks([block(i) for i in range(4)])
    store.discard(LINK, [3], "sync time-out")
    assert store.mark_ready(LINK, [0, 1, 3, 99]) == [0, 1]
    assert store.mark_ready(LINK, [0, 1, 2]) == [2]
    assert store.mark_ready(LINK, [0, 1, 2]) == []
    assert store.mark_ready(LINK, []) == []
    assert store.states(LINK, range(5)) == {
        0: KeyState.READY,
        1: KeyState.READY,
        2: KeyState.READY,
        3: KeyState.DISCARDED,
    }


def test_discard_moves_only_blocks_still_in_play(store: KeyStore, store_path: Path) -> None:
    store.add_blocks([block(i) for i in range(5)])
    store.mark_ready(LINK, [1, 2, 3, 4])
    store.transition(LINK, 2, KeyState.RESERVED)
    store.transition(LINK, 3, KeyState.RESERVED)
    store.transition(LINK, 3, KeyState.DELIVERED)
    store.transition(LINK, 4, KeyState.EXPIRED)
    assert store.discard(LINK, [0, 1, 2, 3, 4, 5], "peer discarded") == [0, 1, 2]
    assert store.states(LINK, range(5))[3] is KeyState.DELIVERED
    assert raw_row(store_path, 0)[3] == "peer discarded"


def test_illegal_transition_raises_and_leaves_the_row_unchanged(
    store: KeyStore, store_path: Path, clock: FakeClock
) -> None:
    store.add_blocks([block(5, KEY64)])
    store.mark_ready(LINK, [5])
    before = raw_row(store_path, 5)
    clock.now += 10
    with pytest.raises(IllegalTransition, match=f"^block {LINK}/5: illegal transition ready -> "):
        store.transition(LINK, 5, KeyState.RECEIVED)
    with pytest.raises(IllegalTransition):
        store.transition(LINK, 5, KeyState.DELIVERED)
    assert raw_row(store_path, 5) == before
    assert store.read_block(LINK, 5) == KEY64


def test_transition_of_an_unknown_block_is_refused(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match=f"block {LINK}/4: unknown"):
        store.transition(LINK, 4, KeyState.READY)
    store.add_blocks([block(4)])
    with pytest.raises(KeyStoreError, match="unknown state 'bogus'"):
        store.transition(LINK, 4, "bogus")  # type: ignore[arg-type]
    assert store.states(LINK, [4]) == {4: KeyState.RECEIVED}


def test_transition_records_time_and_reason(
    store: KeyStore, store_path: Path, clock: FakeClock
) -> None:
    store.add_blocks([block(1)])
    clock.now += 5
    store.transition(LINK, 1, KeyState.DISCARDED, reason="relay aborted")
    state, _, _, reason, changed_at = raw_row(store_path, 1)
    assert (state, reason, changed_at) == ("discarded", "relay aborted", clock.now)
    clock.now += 5
    store.transition(LINK, 1, KeyState.ERASED)
    state, _, _, reason, changed_at = raw_row(store_path, 1)
    assert (state, reason, changed_at) == ("erased", "relay aborted", clock.now)


def test_wrong_master_key_is_refused_at_open(store_path: Path, master_key: bytes) -> None:
    KeyStore.open(store_path, master_key).close()
    with pytest.raises(MasterKeyMismatch, match=f"key store {store_path} was created with another"):
        KeyStore.open(store_path, os.urandom(32))
    KeyStore.open(store_path, master_key).close()  # the failed open changed nothing


def test_swapped_ciphertexts_fail_authentication(store: KeyStore, store_path: Path) -> None:
    store.add_blocks([block(1, KEY64), block(2, os.urandom(64))])
    conn = sqlite3.connect(store_path)
    with conn:
        rows = dict(
            (i, (n, m))
            for i, n, m in conn.execute("SELECT block_id, nonce, material FROM block_material")
        )
        for i, j in ((1, 2), (2, 1)):
            conn.execute(
                "UPDATE block_material SET nonce = ?, material = ? WHERE block_id = ?",
                (*rows[j], i),
            )
    conn.close()
    for i in (1, 2):
        with pytest.raises(CorruptStoreError) as info:
            store.read_block(LINK, i)
        message = str(info.value)
        assert f"block {LINK}/{i} fails authentication" in message
        assert KEY64.hex() not in message and "\\x" not in message


def test_a_flipped_ciphertext_bit_fails_authentication(store: KeyStore, store_path: Path) -> None:
    store.add_blocks([block(1, KEY64)])
    conn = sqlite3.connect(store_path)
    with conn:
        (material,) = conn.execute("SELECT material FROM block_material").fetchone()
        tampered = bytes([material[0] ^ 1]) + material[1:]
        conn.execute("UPDATE block_material SET material = ?", (tampered,))
    conn.close()
    with pytest.raises(CorruptStoreError):
        store.read_block(LINK, 1)


def test_everything_survives_close_and_reopen(
    store_path: Path, master_key: bytes, clock: FakeClock
) -> None:
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        s.add_blocks([block(i, bytes([i]) * 32, owned=i % 2 == 0) for i in range(6)])
        s.mark_ready(LINK, [0, 1, 2, 3])
        s.transition(LINK, 3, KeyState.RESERVED)
        s.discard(LINK, [4], "test")
        before = (s.states(LINK, range(6)), s.pool(LINK), s.max_block_id(LINK))
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        assert (s.states(LINK, range(6)), s.pool(LINK), s.max_block_id(LINK)) == before
        for i in (0, 1, 2, 3, 5):
            assert s.read_block(LINK, i) == bytes([i]) * 32


def test_pool_levels_count_states_and_unused_bits(store: KeyStore) -> None:
    store.add_blocks(
        [block(i, os.urandom(32), owned=i < 3) for i in range(6)]
        + [block(0, os.urandom(8), link_id="other")]
    )
    store.mark_ready(LINK, [0, 1, 3, 4, 5])
    store.transition(LINK, 4, KeyState.RESERVED)
    store.transition(LINK, 5, KeyState.EXPIRED)
    assert store.pool(LINK) == PoolLevel(
        link_id=LINK,
        ready_blocks=3,
        ready_bits=3 * 256,
        owned_ready_bits=2 * 256,
        received_blocks=1,
        reserved_blocks=1,
        delivered_blocks=0,
        discarded_blocks=0,
        expired_blocks=1,
    )
    assert store.pool("nobody") == PoolLevel("nobody", 0, 0, 0, 0, 0, 0, 0, 0)
    assert store.links() == [LINK, "other"]


def test_unconfirmed_lists_received_blocks_by_arrival(store: KeyStore, clock: FakeClock) -> None:
    store.add_blocks([block(1), block(2)])
    arrival = clock.now
    clock.now += 30
    store.add_blocks([block(3)])
    store.mark_ready(LINK, [2])
    assert store.unconfirmed(LINK) == [1, 3]
    assert store.unconfirmed(LINK, older_than=arrival + 1) == [1]
    assert store.unconfirmed(LINK, older_than=arrival) == []


def test_expire_moves_only_old_ready_blocks(store: KeyStore) -> None:
    store.add_blocks([block(i, produced_at=100.0 + i) for i in range(4)])
    store.mark_ready(LINK, [0, 1, 3])
    assert store.expire(LINK, produced_before=102.5) == [0, 1]
    assert store.states(LINK, range(4)) == {
        0: KeyState.EXPIRED,
        1: KeyState.EXPIRED,
        2: KeyState.RECEIVED,
        3: KeyState.READY,
    }


def test_max_block_id_counts_tombstones(store: KeyStore) -> None:
    assert store.max_block_id(LINK) is None
    store.add_blocks([block(3), block(41)])
    store.discard(LINK, [41], "x")
    store.transition(LINK, 41, KeyState.ERASED)
    assert store.max_block_id(LINK) == 41


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (NewBlock(LINK, -1, b"k", 0.0, 1.0, True), "block id must be in"),
        (NewBlock(LINK, 2**63, b"k", 0.0, 1.0, True), "block id must be in"),
        (NewBlock(LINK, 1, b"", 0.0, 1.0, True), f"block {LINK}/1: empty key"),
        (NewBlock("", 1, b"k", 0.0, 1.0, True), "link id '' invalid"),
        (NewBlock("a/b", 1, b"k", 0.0, 1.0, True), "link id 'a/b' invalid"),
        (NewBlock("ab\n", 1, b"k", 0.0, 1.0, True), "invalid"),
        (NewBlock("x" * 130, 1, b"k", 0.0, 1.0, True), "invalid: use 1 to 129 characters"),
        (NewBlock(LINK, 1, b"k", float("nan"), 1.0, True), "qber"),
        (NewBlock(LINK, 1, b"k", 0.0, float("inf"), True), "produced_at"),
    ],
)
def test_invalid_blocks_are_refused_and_change_nothing(
    store: KeyStore, store_path: Path, bad: NewBlock, message: str
) -> None:
    store.add_blocks([block(0)])
    before = disk_bytes(store_path)
    with pytest.raises(KeyStoreError, match=message):
        store.add_blocks([block(1), bad])
    assert store.states(LINK, [0, 1]) == {0: KeyState.RECEIVED}
    assert disk_bytes(store_path) == before


def test_a_link_id_of_129_characters_is_fine(store: KeyStore) -> None:
    link = "A-z0.9_:~" * 14 + "abc"
    assert len(link) == 129
    assert store.add_blocks([block(1, link_id=link)]) == [1]


def test_invalid_ids_in_batch_calls_are_refused(store: KeyStore) -> None:
    store.add_blocks([block(1)])
    with pytest.raises(KeyStoreError, match="block id must be in"):
        store.mark_ready(LINK, [1, -5])
    with pytest.raises(KeyStoreError, match="link id"):
        store.discard("no spaces", [1], "x")
    assert store.states(LINK, [1]) == {1: KeyState.RECEIVED}


def test_a_second_open_of_the_same_store_is_refused(store_path: Path, master_key: bytes) -> None:
    with KeyStore.open(store_path, master_key):
        with pytest.raises(KeyStoreError, match="in use by another qkmsd"):
            KeyStore.open(store_path, master_key)
    KeyStore.open(store_path, master_key).close()


def test_a_closed_store_refuses_calls_and_closes_twice(store: KeyStore) -> None:
    store.close()
    store.close()
    with pytest.raises(KeyStoreError, match="is closed"):
        store.pool(LINK)


def test_store_files_are_private(store: KeyStore, store_path: Path) -> None:
    store.add_blocks([block(1)])
    for p in store_path.parent.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, p.name


def test_a_store_from_a_newer_qkmsd_is_refused(store_path: Path, master_key: bytes) -> None:
    KeyStore.open(store_path, master_key).close()
    conn = sqlite3.connect(store_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(KeyStoreError, match="newer than this qkmsd understands"):
        KeyStore.open(store_path, master_key)


def test_a_file_that_is_not_a_database_is_refused(store_path: Path, master_key: bytes) -> None:
    store_path.write_bytes(b"not a database, just some bytes " * 64)
    with pytest.raises(KeyStoreError, match="cannot open"):
        KeyStore.open(store_path, master_key)


def test_a_master_key_of_the_wrong_size_is_refused(store_path: Path) -> None:
    with pytest.raises(KeyStoreError, match="must be 32 bytes"):
        KeyStore.open(store_path, b"short")
    assert not store_path.exists()


def test_the_database_enforces_the_pragmas(store: KeyStore, store_path: Path) -> None:
    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        conn.close()


def test_checkpoint_inside_a_batch_runs_after_the_commit(store: KeyStore, store_path: Path) -> None:
    # The key manager's periodic checkpoint reaches the store through the group-commit
    # thread, i.e. inside a batch, where SQLite refuses to checkpoint ("table is locked").
    store.add_blocks([block(1)])
    with store.batch():
        store.add_blocks([block(2)])
        assert store.checkpoint() is False  # deferred
    wal = store_path.with_name(store_path.name + "-wal")
    assert not wal.exists() or wal.stat().st_size == 0
    assert store.read_block(LINK, 2)
    assert store.checkpoint() is True


def test_a_batch_says_how_long_its_commit_took(store: KeyStore) -> None:
    # The store thread judges the disk by the commit alone (see StoreThread).
    assert store.last_commit_s == 0.0
    started = time.perf_counter()
    with store.batch():
        store.add_blocks([block(1)])
    assert 0.0 < store.last_commit_s <= time.perf_counter() - started


def _wal_sizes(path: Path, master_key: bytes, interval_s: float) -> tuple[int, int]:
    """WAL bytes after 60 commits, and again after a pause and 60 more commits."""
    wal = path.with_name(path.name + "-wal")
    with KeyStore.open(path, master_key, checkpoint_interval_s=interval_s) as store:
        for i in range(60):
            store.add_blocks([block(i, os.urandom(4096))])
        first = wal.stat().st_size
        done = store.background_checkpoints
        deadline = time.monotonic() + (10 if interval_s < 1 else 0.1)
        while store.background_checkpoints < done + 2 and time.monotonic() < deadline:
            time.sleep(0.01)  # a pass that began after the last commit has completed
        for i in range(60, 120):
            store.add_blocks([block(i, os.urandom(4096))])
        return first, wal.stat().st_size


def test_commits_leave_checkpoints_to_the_background_thread(
    tmp_path: Path, master_key: bytes
) -> None:
    # No commit copies the WAL into the database (that would stall its caller): without the
    # background thread the WAL keeps every commit; with it, once a checkpoint has copied
    # the WAL, the next commit starts writing it from the beginning again.
    first, second = _wal_sizes(tmp_path / "off.db", master_key, interval_s=3600)
    assert second > 1.9 * first
    first, second = _wal_sizes(tmp_path / "on.db", master_key, interval_s=0.01)
    assert second < 1.2 * first


def test_close_still_empties_the_wal(tmp_path: Path, master_key: bytes) -> None:
    path = tmp_path / "k.db"
    with KeyStore.open(path, master_key, checkpoint_interval_s=3600) as store:
        store.add_blocks([block(1)])
        wal = path.with_name(path.name + "-wal")
        assert wal.stat().st_size > 0
    assert not wal.exists() or wal.stat().st_size == 0


# -- the material in a table of its own (schema 4) --------------------------------------------

SCHEMA_3_BLOCKS = """CREATE TABLE blocks (
    link_id TEXT NOT NULL,
    block_id INTEGER NOT NULL CHECK (block_id >= 0),
    state TEXT NOT NULL,
    owned INTEGER NOT NULL CHECK (owned IN (0, 1)),
    size_bits INTEGER NOT NULL CHECK (size_bits > 0),
    used_bits INTEGER NOT NULL DEFAULT 0 CHECK (used_bits BETWEEN 0 AND size_bits),
    qber REAL NOT NULL,
    produced_at REAL NOT NULL,
    received_at REAL NOT NULL,
    state_changed_at REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    nonce BLOB,
    material BLOB,
    ref TEXT,
    PRIMARY KEY (link_id, block_id)
)"""


def as_schema_3(path: Path) -> None:
    """Rewrite a store in the layout qkmsd wrote before schema 4: material in the block row."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        conn.execute("DROP TRIGGER blocks_erase_material")
        conn.execute("DROP TRIGGER blocks_delete_material")
        conn.execute("ALTER TABLE blocks RENAME TO blocks_v4")
        conn.execute(SCHEMA_3_BLOCKS)
        conn.execute(
            "INSERT INTO blocks SELECT b.link_id, b.block_id, b.state, b.owned, b.size_bits,"
            " b.used_bits, b.qber, b.produced_at, b.received_at, b.state_changed_at, b.reason,"
            " m.nonce, m.material, b.ref"
            " FROM blocks_v4 AS b LEFT JOIN block_material AS m USING (link_id, block_id)"
        )
        conn.execute("DROP TABLE blocks_v4")
        conn.execute("DROP TABLE block_material")
        conn.execute("CREATE INDEX blocks_by_link_state ON blocks (link_id, state)")
        conn.execute("DROP TABLE relays")  # schema 5
        conn.execute("DROP TABLE burns")  # schema 6
        conn.execute("PRAGMA user_version = 3")
        conn.execute("COMMIT")
    finally:
        conn.close()


def test_a_schema_3_store_is_migrated_with_its_keys_and_states(
    store_path: Path, master_key: bytes, clock: FakeClock
) -> None:
    keys = {i: os.urandom(32) for i in (1, 2, 3)}
    with KeyStore.open(store_path, master_key, clock=clock) as s:
        s.add_blocks([block(i, k) for i, k in keys.items()])
        s.mark_ready(LINK, [2, 3])
        s.discard(LINK, [3], "test")
    as_schema_3(store_path)

    with KeyStore.open(store_path, master_key, clock=clock) as s:
        assert s.states(LINK, keys) == {
            1: KeyState.RECEIVED,
            2: KeyState.READY,
            3: KeyState.DISCARDED,
        }
        assert s.read_block(LINK, 1) == keys[1]
        assert s.read_block(LINK, 2) == keys[2]
        with pytest.raises(KeyStoreError, match="material erased"):
            s.read_block(LINK, 3)
        s.discard(LINK, [2], "after the migration")
        s.checkpoint()
    assert keys[2] not in disk_bytes(store_path)
    conn = sqlite3.connect(store_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [r[0] for r in conn.execute("SELECT block_id FROM block_material")] == [1]
    finally:
        conn.close()


def test_the_database_itself_erases_material_when_a_block_leaves_the_pool(
    store: KeyStore, store_path: Path
) -> None:
    # Whatever code path moves a block to a state that holds no material (or deletes
    # its row), the material row goes in the same statement.
    store.add_blocks([block(i) for i in (1, 2, 3)])
    conn = sqlite3.connect(store_path, isolation_level=None)
    try:
        conn.execute("UPDATE blocks SET state = 'expired' WHERE block_id = 1")
        conn.execute("DELETE FROM blocks WHERE block_id = 2")
        conn.execute("UPDATE blocks SET state = 'ready' WHERE block_id = 3")
        left = [r[0] for r in conn.execute("SELECT block_id FROM block_material")]
    finally:
        conn.close()
    assert left == [3]


def test_a_state_change_does_not_rewrite_the_material(store: KeyStore, store_path: Path) -> None:
    # 270 KiB of WAL to mark a 1 Mbit block ready when the material shared its row.
    store.add_blocks([block(1, os.urandom(1 << 17))])
    assert store.checkpoint()
    store.mark_ready(LINK, [1])
    wal = store_path.with_name(store_path.name + "-wal")
    assert wal.stat().st_size < 32 * 1024
