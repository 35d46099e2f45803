"""The node key store: per-link pools of key blocks in SQLite, encrypted at rest.

Synchronous and single-writer: the daemon calls it from one worker thread
(``qkmsd.storethread``, which also groups concurrent calls into one ``batch``).  Every
state change is one ``BEGIN IMMEDIATE`` transaction, and a batch applies all its calls
in one transaction (one fsync).  A lock file keeps a second process (or a second
``KeyStore``) off the same store: two writers could hand out the same key twice.

A block's encrypted material is a row of its own (``block_material``), deleted by a
trigger when the block enters a state that holds none.  Erased ciphertext leaves the disk
file at the next WAL checkpoint (``secure_delete`` zeroes the freed space);
``checkpoint()`` forces one, and ``close()`` always runs one.

Routine checkpoints run on a thread and connection of their own (``_Checkpointer``), not
inside a commit: SQLite's automatic checkpoint runs in whichever commit crosses its
threshold, on whichever thread made it, and small commits are made on the daemon's
event loop (``StoreThread.call_inline``), which must not stall for milliseconds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import nacl.exceptions
from nacl.bindings import (
    crypto_aead_xchacha20poly1305_ietf_decrypt,
    crypto_aead_xchacha20poly1305_ietf_encrypt,
)

from protocol import LINK_ID_RE, MAX_BLOCK_ID

from ._burns import BURNS_IN_FLIGHT_SCHEMA, BURNS_SCHEMA, BurnMethods
from ._errors import CorruptStoreError, KeyStoreError, MasterKeyMismatch, StoreUnavailable
from ._lifecycle import HOLDS_MATERIAL, KeyState, check_transition
from ._masterkey import MASTER_KEY_SIZE
from ._relays import RELAYS_SCHEMA, RelayJournalMethods
from ._service import SERVICE_KEYS_SCHEMA, ServiceKeyMethods, _service_ad

MAX_BLOCK_BYTES: Final = 1 << 24
"""Largest key block accepted (16 MiB)."""

MAX_REASON_LENGTH: Final = 256

_LINK_ID = LINK_ID_RE
_NONCE_SIZE: Final = 24
_CHUNK: Final = 500  # ids per IN (...) query, well under SQLite's variable limit
_PLAIN_CACHE_BYTES: Final = 4 << 20  # decrypted blocks kept for cutting (at least one)
CHECKPOINT_INTERVAL_S: Final = 0.25
"""How often the background checkpointer copies the WAL into the database file."""

_CANARY: Final = b"qkms key store canary v1"
_CANARY_AD: Final = b"qkms-meta\0canary"
_ERASED_STATES = tuple(sorted(s.value for s in KeyState if s not in HOLDS_MATERIAL))
_ALL_STATES = tuple(sorted(s.value for s in KeyState))


def _sql_list(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


# Migration i takes the schema from user_version i to i + 1.  Each runs inside the
# opening transaction, so a store is never left half migrated.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (
    (
        """CREATE TABLE meta (
            name TEXT PRIMARY KEY,
            nonce BLOB NOT NULL,
            value BLOB NOT NULL
        )""",
        f"""CREATE TABLE blocks (
            link_id TEXT NOT NULL,
            block_id INTEGER NOT NULL CHECK (block_id >= 0),
            state TEXT NOT NULL CHECK (state IN ({_sql_list(_ALL_STATES)})),
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
            PRIMARY KEY (link_id, block_id),
            CHECK ((nonce IS NULL) = (material IS NULL)),
            CHECK ((material IS NULL) = (state IN ({_sql_list(_ERASED_STATES)})))
        )""",
        "CREATE INDEX blocks_by_link_state ON blocks (link_id, state)",
    ),
    SERVICE_KEYS_SCHEMA,
    # The device's own name for a block (an upstream ETSI 014 key ID), kept until the
    # block is confirmed so that a restarted node can announce it again with its name.
    ("ALTER TABLE blocks ADD COLUMN ref TEXT",),
    # Key material in a table of its own.  In the blocks row, every change of state or of
    # used_bits that changed the row's size rewrote all of it: for a 1 Mbit block, 128 KiB
    # of ciphertext written again and as much zeroed by secure_delete.  A trigger erases
    # the material in the same statement that moves a block to a state that holds none,
    # as the CHECK on the old row did.
    (
        """CREATE TABLE block_material (
            link_id TEXT NOT NULL,
            block_id INTEGER NOT NULL,
            nonce BLOB NOT NULL,
            material BLOB NOT NULL,
            PRIMARY KEY (link_id, block_id)
        )""",
        "INSERT INTO block_material (link_id, block_id, nonce, material)"
        " SELECT link_id, block_id, nonce, material FROM blocks WHERE material IS NOT NULL",
        f"""CREATE TABLE blocks_v4 (
            link_id TEXT NOT NULL,
            block_id INTEGER NOT NULL CHECK (block_id >= 0),
            state TEXT NOT NULL CHECK (state IN ({_sql_list(_ALL_STATES)})),
            owned INTEGER NOT NULL CHECK (owned IN (0, 1)),
            size_bits INTEGER NOT NULL CHECK (size_bits > 0),
            used_bits INTEGER NOT NULL DEFAULT 0 CHECK (used_bits BETWEEN 0 AND size_bits),
            qber REAL NOT NULL,
            produced_at REAL NOT NULL,
            received_at REAL NOT NULL,
            state_changed_at REAL NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            ref TEXT,
            PRIMARY KEY (link_id, block_id)
        )""",
        "INSERT INTO blocks_v4 (link_id, block_id, state, owned, size_bits, used_bits, qber,"
        " produced_at, received_at, state_changed_at, reason, ref)"
        " SELECT link_id, block_id, state, owned, size_bits, used_bits, qber, produced_at,"
        " received_at, state_changed_at, reason, ref FROM blocks",
        "DROP TABLE blocks",
        "ALTER TABLE blocks_v4 RENAME TO blocks",
        "CREATE INDEX blocks_by_link_state ON blocks (link_id, state)",
        f"""CREATE TRIGGER blocks_erase_material AFTER UPDATE OF state ON blocks
            WHEN NEW.state IN ({_sql_list(_ERASED_STATES)})
            BEGIN
                DELETE FROM block_material
                WHERE link_id = NEW.link_id AND block_id = NEW.block_id;
            END""",
        """CREATE TRIGGER blocks_delete_material AFTER DELETE ON blocks
            BEGIN
                DELETE FROM block_material
                WHERE link_id = OLD.link_id AND block_id = OLD.block_id;
            END""",
    ),
    # The relay journal (``_relays``): what each relay this node took part in came to.
    RELAYS_SCHEMA,
    # Burns kept for the neighbours (``_burns``), told again after a restart.
    BURNS_SCHEMA,
    # Link key in flight (a reservation, a relay hop) noted with the burns until its
    # answer: a node killed before the answer tells it as burnt after its restart.
    BURNS_IN_FLIGHT_SCHEMA,
)
SCHEMA_VERSION: Final = len(_MIGRATIONS)


@dataclasses.dataclass(frozen=True, slots=True)
class NewBlock:
    """A block to add.  ``key`` is secret and stays out of ``repr``."""

    link_id: str
    block_id: int
    key: bytes = dataclasses.field(repr=False)
    qber: float
    produced_at: float
    owned: bool
    ref: str | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class PoolLevel:
    """How much key one link's pool holds, by state.  Bits are unused bits."""

    link_id: str
    ready_blocks: int
    ready_bits: int
    owned_ready_bits: int
    received_blocks: int
    reserved_blocks: int
    delivered_blocks: int
    discarded_blocks: int
    expired_blocks: int


class KeyStore(BurnMethods, ServiceKeyMethods, RelayJournalMethods):
    """Per-link pools of key blocks with their life-cycle state.

    Open with ``KeyStore.open``; use as a context manager or call ``close()``.
    Every error is a ``KeyStoreError``; SQLite errors are translated into it.
    The caller serialises calls (one worker thread); a lock guards against misuse.
    """

    def __init__(
        self,
        path: Path,
        connection: sqlite3.Connection,
        master_key: bytes,
        lock_fd: int,
        clock: Callable[[], float],
    ) -> None:
        # Use KeyStore.open(): it sets the PRAGMAs, migrates and checks the master key.
        self._path = path
        self._conn: sqlite3.Connection | None = connection
        self._key = master_key
        self._lock_fd = lock_fd
        self._clock = clock
        self._mutex = threading.RLock()
        self._batch_depth = 0
        self._checkpoint_after_batch = False
        self.last_commit_s = 0.0
        """How long the last ``batch``'s COMMIT took: its write and fsync, not the WAL
        truncation that may follow it."""
        self._plain: dict[tuple[str, int], bytes] = {}
        self._checkpointer: _Checkpointer | None = None
        self._new_open_mark()

    @classmethod
    def open(
        cls,
        path: Path,
        master_key: bytes,
        *,
        clock: Callable[[], float] = time.time,
        checkpoint_interval_s: float = CHECKPOINT_INTERVAL_S,
        durable: bool = True,
    ) -> KeyStore:
        """Open (creating if needed) the store at ``path``.

        A background thread checkpoints the WAL every ``checkpoint_interval_s``.
        ``durable=False`` is for the simulator (``qkmssim``) only: no fsync
        (``synchronous=OFF``) and no checkpoint thread; a commit then survives the loss of
        the process but not of the machine.
        Raises ``KeyStoreError`` if the file cannot be opened or is in use by
        another ``KeyStore``, ``MasterKeyMismatch`` if the store was created with
        another master key, ``CorruptStoreError`` if its canary is missing.
        """
        path = Path(path)
        if not isinstance(master_key, bytes) or len(master_key) != MASTER_KEY_SIZE:
            raise KeyStoreError(f"key store {path}: the master key must be {MASTER_KEY_SIZE} bytes")
        if not path.parent.is_dir():
            raise KeyStoreError(f"key store {path}: directory {path.parent} does not exist")
        lock_fd = _lock(path)
        conn: sqlite3.Connection | None = None
        try:
            # Created 0600 before SQLite sees it; SQLite gives -wal and -shm the same mode.
            os.close(os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600))
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            _configure(path, conn)
            if not durable:
                conn.execute("PRAGMA synchronous = OFF")
            store = cls(path, conn, master_key, lock_fd, clock)
            store._migrate()
            store.verify_master_key()
            if durable:
                store._checkpointer = _Checkpointer(path, checkpoint_interval_s)
        except BaseException as exc:
            if conn is not None:
                conn.close()
            os.close(lock_fd)
            if isinstance(exc, sqlite3.Error):
                raise KeyStoreError(f"key store {path}: cannot open: {exc}") from exc
            raise
        return store

    def __repr__(self) -> str:
        return f"<KeyStore {str(self._path)!r}{' closed' if self._conn is None else ''}>"

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._path

    def close(self) -> None:
        """Checkpoint the WAL (so erased ciphertext leaves the disk) and close.  Idempotent."""
        if self._checkpointer is not None:
            self._checkpointer.stop()
        with self._mutex:
            conn, self._conn = self._conn, None
            if conn is None:
                return
            try:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.close()
            finally:
                os.close(self._lock_fd)

    @property
    def background_checkpoints(self) -> int:
        """How many background checkpoints have completed (see ``_Checkpointer``)."""
        return 0 if self._checkpointer is None else self._checkpointer.completed

    @contextlib.contextmanager
    def try_hold(self) -> Iterator[bool]:
        """Hold the store for this thread if no other thread is using it: yields whether it did.

        While held, calls from this thread run at once and other threads wait.  For running
        a small call on the caller's thread when the worker is idle (``StoreThread``).
        """
        held = self._mutex.acquire(blocking=False)
        try:
            yield held
        finally:
            if held:
                self._mutex.release()

    def checkpoint(self) -> bool:
        """Copy the WAL into the database file and truncate the WAL.

        Until then the pages of recently erased rows may still sit in the WAL.
        Returns False if a reader in another connection kept it from completing, or if
        it was called inside ``batch`` (SQLite cannot checkpoint inside a transaction):
        then it runs as soon as the batch has committed.
        """
        if self._batch_depth:
            self._checkpoint_after_batch = True
            return False
        with self._reading() as conn:
            busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        return not busy

    # -- the master key -----------------------------------------------------------------

    def verify_master_key(self) -> None:
        """Check the store's canary decrypts with this master key.

        Raises ``MasterKeyMismatch`` if it does not, ``CorruptStoreError`` if the
        canary is missing.  ``open`` calls it.
        """
        with self._reading() as conn:
            row = conn.execute("SELECT nonce, value FROM meta WHERE name = 'canary'").fetchone()
        if row is None:
            raise CorruptStoreError(f"key store {self._path}: master key canary missing")
        try:
            plain = _decrypt(self._key, row[0], row[1], _CANARY_AD)
        except nacl.exceptions.CryptoError:
            raise MasterKeyMismatch(
                f"key store {self._path} was created with another master key"
            ) from None
        if plain != _CANARY:
            raise CorruptStoreError(f"key store {self._path}: master key canary altered")

    def reencrypt(self, new_key: bytes) -> tuple[int, int]:
        """Re-encrypt every ciphertext under ``new_key``, in one transaction, and use it
        from now on.  Returns (blocks, service keys) re-encrypted.

        All or nothing: a crash leaves the store under the old key or the new one (see
        ``rotate_master_key``, which also keeps both keys on disk meanwhile).  Raises
        ``KeyStoreError`` for a key of the wrong size, ``CorruptStoreError`` if a row fails
        authentication (nothing is changed then).
        """
        if not isinstance(new_key, bytes) or len(new_key) != MASTER_KEY_SIZE:
            raise KeyStoreError(
                f"key store {self._path}: the master key must be {MASTER_KEY_SIZE} bytes"
            )
        with self._writing() as conn:
            nonce = os.urandom(_NONCE_SIZE)
            conn.execute(
                "UPDATE meta SET nonce = ?, value = ? WHERE name = 'canary'",
                (nonce, _encrypt(new_key, nonce, _CANARY, _CANARY_AD)),
            )
            ids = conn.execute("SELECT link_id, block_id FROM block_material").fetchall()
            for link_id, block_id in ids:
                old_nonce, material = conn.execute(
                    "SELECT nonce, material FROM block_material WHERE link_id = ? AND block_id = ?",
                    (link_id, block_id),
                ).fetchone()
                plain = self._open_block(link_id, block_id, old_nonce, material)
                nonce = os.urandom(_NONCE_SIZE)
                conn.execute(
                    "UPDATE block_material SET nonce = ?, material = ?"
                    " WHERE link_id = ? AND block_id = ?",
                    (
                        nonce,
                        _encrypt(new_key, nonce, plain, _block_ad(link_id, block_id)),
                        link_id,
                        block_id,
                    ),
                )
            rows = conn.execute(
                "SELECT key_id, nonce, material FROM service_keys WHERE material IS NOT NULL"
            ).fetchall()
            for key_id, old_nonce, material in rows:
                ad = _service_ad(key_id)
                plain = self._unseal(old_nonce, material, ad)
                nonce = os.urandom(_NONCE_SIZE)
                conn.execute(
                    "UPDATE service_keys SET nonce = ?, material = ? WHERE key_id = ?",
                    (nonce, _encrypt(new_key, nonce, plain, ad), key_id),
                )
        self._key = new_key  # committed
        return len(ids), len(rows)

    def _migrate(self) -> None:
        with self._writing() as conn:
            version: int = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise KeyStoreError(
                    f"key store {self._path}: schema version {version} is newer than this "
                    f"qkmsd understands ({SCHEMA_VERSION}); upgrade qkmsd"
                )
            for step in _MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            if version == 0:
                nonce = os.urandom(_NONCE_SIZE)
                conn.execute(
                    "INSERT INTO meta (name, nonce, value) VALUES ('canary', ?, ?)",
                    (nonce, _encrypt(self._key, nonce, _CANARY, _CANARY_AD)),
                )
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own integer.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")

    # -- writing ----------------------------------------------------------------------------

    def add_blocks(self, blocks: Sequence[NewBlock]) -> list[int]:
        """Insert blocks as RECEIVED, all in one transaction.

        Returns the ids actually added: a block whose (link, id) is already in the
        store, in whatever state (tombstones included), is skipped.  Raises
        ``KeyStoreError`` for invalid input, before anything is written.
        """
        for block in blocks:
            _check_new_block(block)
        if not blocks:
            return []
        now = self._clock()
        rows = []
        for b in blocks:
            nonce = os.urandom(_NONCE_SIZE)
            material = _encrypt(self._key, nonce, b.key, _block_ad(b.link_id, b.block_id))
            rows.append((b, nonce, material))
        added: list[int] = []
        with self._writing() as conn:
            for b, nonce, material in rows:
                cursor = conn.execute(
                    "INSERT INTO blocks (link_id, block_id, state, owned, size_bits, qber,"
                    " produced_at, received_at, state_changed_at, ref)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                    (
                        b.link_id,
                        b.block_id,
                        KeyState.RECEIVED.value,
                        int(b.owned),
                        len(b.key) * 8,
                        b.qber,
                        b.produced_at,
                        now,
                        now,
                        b.ref,
                    ),
                )
                if cursor.rowcount == 1:
                    conn.execute(
                        "INSERT INTO block_material (link_id, block_id, nonce, material)"
                        " VALUES (?, ?, ?, ?)",
                        (b.link_id, b.block_id, nonce, material),
                    )
                    added.append(b.block_id)
        return added

    def mark_ready(self, link_id: str, block_ids: Iterable[int]) -> list[int]:
        """RECEIVED -> READY for those of ``block_ids`` in RECEIVED; returns the ids moved.

        Idempotent: ids already READY or beyond, and unknown ids, are ignored.
        """
        return self._move(link_id, block_ids, frozenset({KeyState.RECEIVED}), KeyState.READY)

    def discard(self, link_id: str, block_ids: Iterable[int], reason: str) -> list[int]:
        """RECEIVED/READY/RESERVED -> DISCARDED, erasing the material; returns the ids moved.

        ``reason`` is recorded on the row (no key material in it, please).
        """
        sources = frozenset({KeyState.RECEIVED, KeyState.READY, KeyState.RESERVED})
        return self._move(link_id, block_ids, sources, KeyState.DISCARDED, reason=reason)

    def expire(self, link_id: str, *, produced_before: float) -> list[int]:
        """READY -> EXPIRED (erasing the material) for blocks produced before the time given."""
        _check_link_id(link_id)
        _check_time("produced_before", produced_before)
        with self._writing() as conn:
            ids = [
                row[0]
                for row in conn.execute(
                    "SELECT block_id FROM blocks WHERE link_id = ? AND state = ?"
                    " AND produced_at < ? ORDER BY block_id",
                    (link_id, KeyState.READY.value, produced_before),
                )
            ]
            self._update(conn, link_id, ids, KeyState.READY, KeyState.EXPIRED, "max age")
        return ids

    def transition(
        self, link_id: str, block_id: int, new_state: KeyState, *, reason: str = ""
    ) -> None:
        """Move one block to ``new_state`` if the life-cycle table allows it.

        Entering EXPIRED, DISCARDED or ERASED erases the material.  Raises
        ``IllegalTransition`` (the row unchanged) or ``KeyStoreError`` for an
        unknown block or invalid input.
        """
        _check_link_id(link_id)
        _check_block_id(link_id, block_id)
        try:
            new_state = KeyState(new_state)
        except ValueError:
            raise KeyStoreError(
                f"block {link_id}/{block_id}: unknown state {_shown(new_state)}"
            ) from None
        _check_reason(reason)
        with self._writing() as conn:
            row = conn.execute(
                "SELECT state FROM blocks WHERE link_id = ? AND block_id = ?",
                (link_id, block_id),
            ).fetchone()
            if row is None:
                raise KeyStoreError(f"block {link_id}/{block_id}: unknown")
            old = KeyState(row[0])
            check_transition(old, new_state, link_id=link_id, block_id=block_id)
            self._update(conn, link_id, [block_id], old, new_state, reason)

    def _move(
        self,
        link_id: str,
        block_ids: Iterable[int],
        sources: frozenset[KeyState],
        target: KeyState,
        *,
        reason: str = "",
    ) -> list[int]:
        _check_link_id(link_id)
        ids = _unique_ids(link_id, block_ids)
        _check_reason(reason)
        if not ids:
            return []
        with self._writing() as conn:
            current = self._fetch_states(conn, link_id, ids)
            moved = [i for i in ids if current.get(i) in sources]
            for source in sources:
                source_ids = [i for i in moved if current[i] == source]
                self._update(conn, link_id, source_ids, source, target, reason)
            if target is KeyState.READY and moved:
                self.spend_used_up(conn, link_id, moved)
        return moved

    def _update(
        self,
        conn: sqlite3.Connection,
        link_id: str,
        block_ids: Sequence[int],
        old: KeyState,
        new: KeyState,
        reason: str,
    ) -> None:
        check_transition(old, new)
        if not block_ids:
            return
        if new not in HOLDS_MATERIAL:  # the material goes with it (trigger blocks_erase_material)
            self._forget_blocks(link_id, block_ids)
        now = self._clock()
        # An empty reason keeps the earlier one: "peer discarded" should outlive the erase.
        conn.executemany(
            "UPDATE blocks SET state = ?, state_changed_at = ?,"
            " reason = CASE WHEN ? = '' THEN reason ELSE ? END"
            " WHERE link_id = ? AND block_id = ? AND state = ?",
            [(new.value, now, reason, reason, link_id, i, old.value) for i in block_ids],
        )

    # -- reading ----------------------------------------------------------------------------

    def read_block(self, link_id: str, block_id: int) -> bytes:
        """Decrypt and return a block's key material.

        Raises ``KeyStoreError`` if the block is unknown or erased, and
        ``CorruptStoreError`` if the row fails authentication (wrong master key,
        tampering, rows swapped).
        """
        _check_link_id(link_id)
        _check_block_id(link_id, block_id)
        with self._reading() as conn:
            row = conn.execute(
                "SELECT b.state, m.nonce, m.material FROM blocks AS b"
                " LEFT JOIN block_material AS m USING (link_id, block_id)"
                " WHERE b.link_id = ? AND b.block_id = ?",
                (link_id, block_id),
            ).fetchone()
        if row is None:
            raise KeyStoreError(f"block {link_id}/{block_id}: unknown")
        state, nonce, material = row
        if material is None:
            raise KeyStoreError(f"block {link_id}/{block_id}: material erased (state {state})")
        return self._open_block(link_id, block_id, nonce, material)

    def states(self, link_id: str, block_ids: Iterable[int]) -> dict[int, KeyState]:
        """The state of each known block of ``block_ids``; unknown ids are left out."""
        _check_link_id(link_id)
        ids = _unique_ids(link_id, block_ids)
        with self._reading() as conn:
            return self._fetch_states(conn, link_id, ids)

    def ready_ids(self, link_id: str, first: int, last: int, *, limit: int) -> list[int]:
        """Ids of the READY blocks in ``[first, last]``, lowest first, at most ``limit``."""
        _check_link_id(link_id)
        with self._reading() as conn:
            return [
                row[0]
                for row in conn.execute(
                    "SELECT block_id FROM blocks WHERE link_id = ? AND state = ?"
                    " AND block_id BETWEEN ? AND ? ORDER BY block_id LIMIT ?",
                    (link_id, KeyState.READY.value, first, last, limit),
                )
            ]

    def unconfirmed(self, link_id: str, *, older_than: float | None = None) -> list[int]:
        """Ids of RECEIVED blocks, optionally only those received before ``older_than``."""
        _check_link_id(link_id)
        query = "SELECT block_id FROM blocks WHERE link_id = ? AND state = ?"
        params: tuple[object, ...] = (link_id, KeyState.RECEIVED.value)
        if older_than is not None:
            _check_time("older_than", older_than)
            query += " AND received_at < ?"
            params += (older_than,)
        with self._reading() as conn:
            return [row[0] for row in conn.execute(query + " ORDER BY block_id", params)]

    def oldest_unconfirmed(self, link_id: str) -> float | None:
        """When the link's longest-waiting RECEIVED block was received; None if none is."""
        _check_link_id(link_id)
        with self._reading() as conn:
            value: float | None = conn.execute(
                "SELECT MIN(received_at) FROM blocks WHERE link_id = ? AND state = ?",
                (link_id, KeyState.RECEIVED.value),
            ).fetchone()[0]
        return value

    def oldest_unexpired(self, link_id: str) -> float | None:
        """When the link's oldest block that may still expire (RECEIVED or READY: a
        RESERVED block never returns to READY) was produced; None if there is none."""
        _check_link_id(link_id)
        with self._reading() as conn:
            value: float | None = conn.execute(
                "SELECT MIN(produced_at) FROM blocks WHERE link_id = ? AND state IN (?, ?)",
                (link_id, KeyState.RECEIVED.value, KeyState.READY.value),
            ).fetchone()[0]
        return value

    def discarded_since(self, link_id: str, *, reason: str, since: float, limit: int) -> list[int]:
        """Ids of blocks moved to DISCARDED with ``reason`` at or after ``since`` (the
        store's clock), at most ``limit`` of the most recent, in id order."""
        _check_link_id(link_id)
        _check_time("since", since)
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT block_id FROM blocks WHERE link_id = ? AND state = ? AND reason = ?"
                " AND state_changed_at >= ? ORDER BY state_changed_at DESC, block_id DESC"
                " LIMIT ?",
                (link_id, KeyState.DISCARDED.value, reason, since, limit),
            ).fetchall()
        return sorted(row[0] for row in rows)

    def unconfirmed_refs(self, link_id: str) -> dict[int, str]:
        """The device references of RECEIVED blocks that have one."""
        _check_link_id(link_id)
        with self._reading() as conn:
            return dict(
                conn.execute(
                    "SELECT block_id, ref FROM blocks WHERE link_id = ? AND state = ?"
                    " AND ref IS NOT NULL",
                    (link_id, KeyState.RECEIVED.value),
                ).fetchall()
            )

    def max_block_id(self, link_id: str) -> int | None:
        """The largest block id ever stored for the link (tombstones included), or None."""
        _check_link_id(link_id)
        with self._reading() as conn:
            value: int | None = conn.execute(
                "SELECT MAX(block_id) FROM blocks WHERE link_id = ?", (link_id,)
            ).fetchone()[0]
        return value

    def pool(self, link_id: str) -> PoolLevel:
        """The link's pool level; all zeros for a link with no blocks."""
        _check_link_id(link_id)
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT state, COUNT(*), TOTAL(size_bits - used_bits),"
                " TOTAL(CASE WHEN owned THEN size_bits - used_bits ELSE 0 END)"
                " FROM blocks WHERE link_id = ? GROUP BY state",
                (link_id,),
            ).fetchall()
        return _pool_level(link_id, rows)

    def pools(self, link_ids: Sequence[str]) -> dict[str, tuple[PoolLevel, int | None]]:
        """Each link's pool level and largest block id (``max_block_id``), in one read."""
        for link_id in link_ids:
            _check_link_id(link_id)
        rows: dict[str, list[tuple[str, int, float, float]]] = {lid: [] for lid in link_ids}
        newest: dict[str, int | None] = dict.fromkeys(link_ids)
        ids = list(rows)
        with self._reading() as conn:
            for start in range(0, len(ids), _CHUNK):
                chunk = ids[start : start + _CHUNK]
                marks = ", ".join("?" * len(chunk))
                for link_id, state, n, b, o, top in conn.execute(
                    "SELECT link_id, state, COUNT(*), TOTAL(size_bits - used_bits),"
                    " TOTAL(CASE WHEN owned THEN size_bits - used_bits ELSE 0 END),"
                    f" MAX(block_id) FROM blocks WHERE link_id IN ({marks})"
                    " GROUP BY link_id, state",
                    chunk,
                ):
                    rows[link_id].append((state, n, b, o))
                    seen = newest[link_id]
                    newest[link_id] = top if seen is None else max(seen, top)
        return {lid: (_pool_level(lid, rows[lid]), newest[lid]) for lid in ids}

    def owned_ready_bits(self, link_id: str) -> int:
        """``pool(link_id).owned_ready_bits``, reading the READY blocks only."""
        _check_link_id(link_id)
        with self._reading() as conn:
            value: float = conn.execute(
                "SELECT TOTAL(size_bits - used_bits) FROM blocks"
                " WHERE link_id = ? AND state = ? AND owned",
                (link_id, KeyState.READY.value),
            ).fetchone()[0]
        return int(value)

    def links(self) -> list[str]:
        """The links with at least one row (tombstones included), sorted."""
        with self._reading() as conn:
            return [
                row[0] for row in conn.execute("SELECT DISTINCT link_id FROM blocks ORDER BY 1")
            ]

    def _fetch_states(
        self, conn: sqlite3.Connection, link_id: str, ids: Sequence[int]
    ) -> dict[int, KeyState]:
        found: dict[int, KeyState] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start : start + _CHUNK]
            marks = ", ".join("?" * len(chunk))
            for block_id, state in conn.execute(
                f"SELECT block_id, state FROM blocks WHERE link_id = ? AND block_id IN ({marks})",
                (link_id, *chunk),
            ):
                found[block_id] = KeyState(state)
        return found

    # -- transactions -----------------------------------------------------------------------

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run several calls in one transaction: one commit, one fsync for all of them.

        Inside a batch each write runs under its own savepoint, so a call that fails
        undoes only its own changes.  Nothing is durable until the batch commits; a
        caller must not act on a result (or tell anyone) before ``batch`` returns.
        """
        with self._mutex:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE")
                self._batch_depth += 1
                try:
                    yield
                    started = time.perf_counter()
                    conn.execute("COMMIT")
                    self.last_commit_s = time.perf_counter() - started
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                finally:
                    self._batch_depth -= 1
                if self._checkpoint_after_batch and not self._batch_depth:
                    # Committed already: a checkpoint that fails now must not look like a
                    # failed commit; the next one catches up.
                    self._checkpoint_after_batch = False
                    with contextlib.suppress(sqlite3.Error):
                        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except sqlite3.Error as exc:
                raise _store_error(self._path, exc) from exc

    @contextlib.contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            conn = self._connection()
            begin, commit, undo = (
                ("SAVEPOINT op", "RELEASE op", "ROLLBACK TO op")
                if self._batch_depth
                else ("BEGIN IMMEDIATE", "COMMIT", "ROLLBACK")
            )
            try:
                conn.execute(begin)
                try:
                    yield conn
                    conn.execute(commit)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute(undo)
                        if self._batch_depth:
                            conn.execute("RELEASE op")
                    raise
            except sqlite3.Error as exc:
                raise _store_error(self._path, exc) from exc

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._mutex:
            conn = self._connection()
            try:
                yield conn
            except sqlite3.Error as exc:
                raise _store_error(self._path, exc) from exc

    # -- encryption, for the service-key methods -------------------------------------------

    def _block_plain(self, conn: sqlite3.Connection, link_id: str, block_id: int) -> bytes:
        """A ready block's material, decrypted once and kept while keys are cut from it.

        Key requests cut a few bytes at a time from the same block: decrypting the whole
        block (up to 16 MiB) for each would cost more than everything else a request does.
        A block's material never changes once written, so the plaintext stays valid until
        the block's material is erased (``_forget_blocks``).  The cache is small
        (``_PLAIN_CACHE_BYTES``), and holds nothing the process did not already decrypt.
        """
        entry = (link_id, block_id)
        plain = self._plain.pop(entry, None)
        if plain is None:
            row = conn.execute(
                "SELECT nonce, material FROM block_material WHERE link_id = ? AND block_id = ?",
                entry,
            ).fetchone()
            if row is None or row[1] is None:
                raise KeyStoreError(f"block {link_id}/{block_id}: material erased or unknown")
            plain = self._open_block(link_id, block_id, *row)
        self._plain[entry] = plain  # most recently used last
        held = sum(len(p) for p in self._plain.values())
        while held > _PLAIN_CACHE_BYTES and len(self._plain) > 1:
            oldest = next(iter(self._plain))
            held -= len(self._plain.pop(oldest))
        return plain

    def _open_block(self, link_id: str, block_id: int, nonce: bytes, material: bytes) -> bytes:
        try:
            return _decrypt(self._key, nonce, material, _block_ad(link_id, block_id))
        except nacl.exceptions.CryptoError:
            raise CorruptStoreError(
                f"key store {self._path}: block {link_id}/{block_id} fails authentication "
                "(wrong master key or tampered row)"
            ) from None

    def _forget_blocks(self, link_id: str, block_ids: Iterable[int]) -> None:
        for block_id in block_ids:
            self._plain.pop((link_id, block_id), None)

    def _seal(self, items: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """(nonce, ciphertext) for each (plaintext, associated data); fresh random nonces."""
        nonces = os.urandom(_NONCE_SIZE * len(items))
        out = []
        for i, (plain, ad) in enumerate(items):
            nonce = nonces[i * _NONCE_SIZE : (i + 1) * _NONCE_SIZE]
            out.append((nonce, _encrypt(self._key, nonce, plain, ad)))
        return out

    def _unseal(self, nonce: bytes, cipher: bytes, ad: bytes) -> bytes:
        try:
            return _decrypt(self._key, nonce, cipher, ad)
        except nacl.exceptions.CryptoError:
            raise CorruptStoreError(
                f"key store {self._path}: a service key row fails authentication"
            ) from None

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise KeyStoreError(f"key store {self._path} is closed")
        return self._conn


def _lock(path: Path) -> int:
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise KeyStoreError(f"key store {path}: cannot open {lock_path}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise KeyStoreError(
            f"key store {path} is in use by another qkmsd (lock {lock_path} held); "
            "stop it first: two writers could hand out the same key twice"
        ) from None
    return fd


class _Checkpointer:
    """Copies the WAL into the database file every ``interval`` s, from its own thread.

    A passive checkpoint waits for nobody: the store's writer carries on meanwhile, and
    once every frame has been copied the next commit starts the WAL from its beginning,
    so the WAL stays about as large as ``interval`` s of commits.  A checkpoint that
    fails (a reader holding old frames, a busy lock) is simply tried again next time.
    """

    def __init__(self, path: Path, interval: float) -> None:
        self._path = path
        self._interval = interval
        self._stop = threading.Event()
        self.completed = 0
        self._thread = threading.Thread(target=self._run, name="qkmsd-checkpoint", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread (after a checkpoint in progress).  Idempotent."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        try:
            conn = sqlite3.connect(self._path, isolation_level=None)
        except sqlite3.Error:
            return  # the store itself stays open, and its close() still checkpoints
        try:
            while not self._stop.wait(self._interval):
                with contextlib.suppress(sqlite3.Error):
                    busy, frames, copied = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    # Complete: every frame of the WAL is in the database, so the next
                    # commit starts the WAL from its beginning.  A pass that ran beside a
                    # commit copies only the frames before it.
                    if not busy and frames == copied:
                        self.completed += 1
        finally:
            conn.close()


# SQLite's words for a store that cannot write now (SQLITE_FULL, SQLITE_READONLY,
# SQLITE_IOERR, SQLITE_CANTOPEN), and what the operator is told for each.
_CANNOT_WRITE = (
    ("disk is full", "the disk is full: free space"),
    ("readonly", "the file system is read-only: make the state directory writable"),
    ("disk i/o error", "an I/O error: check the disk and the file system"),
    ("unable to open", "its files cannot be opened: check the state directory"),
)


def _store_error(path: Path, exc: sqlite3.Error) -> KeyStoreError:
    """The error a failed SQLite call becomes: ``StoreUnavailable`` (503 for an SAE) when
    the store cannot write now and would once the operator acts; else ``KeyStoreError``."""
    text = str(exc)
    if isinstance(exc, sqlite3.OperationalError):
        for words, advice in _CANNOT_WRITE:
            if words in text.lower():
                # The file's name, not its path: the message also goes to SAEs.
                return StoreUnavailable(
                    f"key store {path.name} cannot write: {advice}; the node serves again"
                    f" once it can ({text})"
                )
    return KeyStoreError(f"key store {path}: {text}")


def _configure(path: Path, conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode != "wal":
        raise KeyStoreError(f"key store {path}: cannot use WAL journal mode (got {mode})")
    # No checkpoints inside commits: _Checkpointer runs them on a thread of its own.
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA secure_delete = ON")
    conn.execute("PRAGMA foreign_keys = ON")
    if conn.execute("PRAGMA secure_delete").fetchone()[0] != 1:
        raise KeyStoreError(f"key store {path}: this SQLite cannot turn secure_delete on")


# XChaCha20-Poly1305 rather than DESIGN's SecretBox (XSalsa20-Poly1305): the same
# family and nonce size, plus associated data that binds the ciphertext to its row.
def _encrypt(key: bytes, nonce: bytes, plain: bytes, ad: bytes) -> bytes:
    out: bytes = crypto_aead_xchacha20poly1305_ietf_encrypt(plain, ad, nonce, key)
    return out


def _decrypt(key: bytes, nonce: bytes, cipher: bytes, ad: bytes) -> bytes:
    out: bytes = crypto_aead_xchacha20poly1305_ietf_decrypt(cipher, ad, nonce, key)
    return out


def _block_ad(link_id: str, block_id: int) -> bytes:
    return b"qkms-block\0" + link_id.encode("ascii") + b"\0" + block_id.to_bytes(8, "big")


# -- input checks: all raise KeyStoreError before anything is written ----------------------


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(value if len(value) <= 40 else value[:40] + "...")
    return f"of type {type(value).__name__}"


def _check_link_id(link_id: str) -> None:
    if not isinstance(link_id, str) or not _LINK_ID.fullmatch(link_id):
        raise KeyStoreError(
            f"link id {_shown(link_id)} invalid: use 1 to 129 characters from A-Z a-z 0-9 _ . : ~ -"
        )


def _check_block_id(link_id: str, block_id: int) -> None:
    if isinstance(block_id, bool) or not isinstance(block_id, int):
        raise KeyStoreError(f"block {link_id}/?: block id must be an integer")
    if not 0 <= block_id <= MAX_BLOCK_ID:
        raise KeyStoreError(f"block {link_id}/{block_id}: block id must be in 0..2**63-1")


def _unique_ids(link_id: str, block_ids: Iterable[int]) -> list[int]:
    ids = list(dict.fromkeys(block_ids))
    for block_id in ids:
        _check_block_id(link_id, block_id)
    return ids


def _check_time(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise KeyStoreError(f"{name} must be a finite timestamp")


def _check_reason(reason: str) -> None:
    if not isinstance(reason, str) or len(reason) > MAX_REASON_LENGTH:
        raise KeyStoreError(f"reason must be a string of at most {MAX_REASON_LENGTH} characters")


def _check_new_block(block: NewBlock) -> None:
    _check_link_id(block.link_id)
    _check_block_id(block.link_id, block.block_id)
    where = f"block {block.link_id}/{block.block_id}"
    if not isinstance(block.key, bytes):
        raise KeyStoreError(f"{where}: key must be bytes")
    if not block.key:
        raise KeyStoreError(f"{where}: empty key")
    if len(block.key) > MAX_BLOCK_BYTES:
        raise KeyStoreError(f"{where}: key longer than {MAX_BLOCK_BYTES} bytes")
    qber = block.qber
    if isinstance(qber, bool) or not isinstance(qber, int | float) or not 0.0 <= qber <= 1.0:
        raise KeyStoreError(f"{where}: qber must be a number in [0, 1]")
    _check_time(f"{where}: produced_at", block.produced_at)
    if not isinstance(block.owned, bool):
        raise KeyStoreError(f"{where}: owned must be a bool")


def _pool_level(link_id: str, rows: Sequence[tuple[str, int, float, float]]) -> PoolLevel:
    """A ``PoolLevel`` from ``(state, blocks, unused bits, owned unused bits)`` rows."""
    count = {KeyState(state): n for state, n, _, _ in rows}
    bits = {KeyState(state): (int(b), int(o)) for state, _, b, o in rows}
    ready_bits, owned_ready_bits = bits.get(KeyState.READY, (0, 0))
    return PoolLevel(
        link_id=link_id,
        ready_blocks=count.get(KeyState.READY, 0),
        ready_bits=ready_bits,
        owned_ready_bits=owned_ready_bits,
        received_blocks=count.get(KeyState.RECEIVED, 0),
        reserved_blocks=count.get(KeyState.RESERVED, 0),
        delivered_blocks=count.get(KeyState.DELIVERED, 0),
        discarded_blocks=count.get(KeyState.DISCARDED, 0),
        expired_blocks=count.get(KeyState.EXPIRED, 0),
    )
