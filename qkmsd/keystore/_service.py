"""Service keys: keys cut from a link's pool for SAEs, and their life cycle.

Theory of operation
-------------------
A service key is exact pool bits, never stretched.  The end that owns a block
(see ``qkmsd.keymanager.owns_block``) cuts keys from it front to back and
advances the block's ``used_bits``; the cut is described by segments
``(block_id, offset, length)`` in bytes.  The other end of the link consumes the
same segments from its copy of the block.  Concurrent requests may reach it out
of order, so it records each consumed byte range and refuses any segment that
overlaps one: no bit is handed out twice at either end.  A block whose bits are
all used moves READY -> RESERVED -> DELIVERED -> ERASED and its material is
erased.

Each end keeps a row per service key for the SAEs it still has to serve (the
slaves attached to it), encrypted like blocks, in state RESERVED.  When every
such SAE has fetched it, the row moves to DELIVERED then ERASED; a row past its
validity time is DISCARDED.  Both erase the material.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import itertools
import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Final

from protocol import KEY_ID_RE, MAX_SEGMENTS_PER_KEY, SAE_ID_RE

from ._errors import KeyStoreError, NotAuthorised, SegmentRefused, ServiceKeyNotFound
from ._lifecycle import HOLDS_MATERIAL, KeyState, check_transition
from ._pool import PoolMethods, Segment

RETAIN_ENDED_S: Final = 86400.0
"""How long, by default, the row of a fetched, expired or elsewhere-served key outlives its
validity (``[supply] retain_ended_s``).  About 260 bytes a row at the slave's KME."""
_KEY_ID = KEY_ID_RE
# Rows per INSERT statement: 13 parameters each, well under SQLite's 32,766.
_ROWS_PER_INSERT = 256
_SAE_ID = SAE_ID_RE

SERVICE_KEYS_SCHEMA: Final = (
    """CREATE TABLE service_keys (
        key_id TEXT PRIMARY KEY,
        link_id TEXT NOT NULL,
        master_sae TEXT NOT NULL,
        slaves TEXT NOT NULL,
        pending TEXT NOT NULL,
        size_bits INTEGER NOT NULL CHECK (size_bits > 0),
        state TEXT NOT NULL CHECK (state IN ('reserved', 'delivered', 'erased', 'discarded')),
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        state_changed_at REAL NOT NULL,
        reason TEXT NOT NULL DEFAULT '',
        nonce BLOB,
        material BLOB,
        CHECK ((nonce IS NULL) = (material IS NULL)),
        CHECK ((material IS NULL) = (state IN ('erased', 'discarded')))
    )""",
    "CREATE INDEX service_keys_by_state ON service_keys (state, expires_at)",
    "CREATE INDEX service_keys_by_pair ON service_keys (master_sae, state)",
    # Byte ranges consumed from blocks the other end owns (it may reserve out of order).
    """CREATE TABLE consumed (
        link_id TEXT NOT NULL,
        block_id INTEGER NOT NULL,
        start INTEGER NOT NULL CHECK (start >= 0),
        stop INTEGER NOT NULL CHECK (stop > start)
    )""",
    "CREATE INDEX consumed_by_block ON consumed (link_id, block_id, start)",
)


@dataclasses.dataclass(frozen=True, slots=True)
class CutKey:
    """A service key and where in the pool it came from.  ``key`` stays out of ``repr``."""

    key_id: str
    segments: tuple[Segment, ...]
    key: bytes = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True, slots=True)
class KeySpec:
    """A key to record: its id and where it comes from (segments of the link's pool)."""

    key_id: str
    segments: tuple[Segment, ...]


class ServiceKeyMethods(PoolMethods):
    """Service-key operations of ``KeyStore`` (mixed in; uses its transactions and the pool
    primitive)."""

    _key: bytes
    _clock: Callable[[], float]

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _seal(self, items: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]: ...

    @abc.abstractmethod
    def _unseal(self, nonce: bytes, cipher: bytes, ad: bytes) -> bytes: ...

    # -- the owner's side -----------------------------------------------------------

    def cut_service_keys(
        self,
        link_id: str,
        keys: Sequence[tuple[str, int]],
        *,
        master_sae: str,
        local_slaves: Sequence[str],
        expires_at: float,
        slaves: Sequence[str] = (),
        keep: int = 0,
        in_flight: bool = False,
    ) -> list[CutKey]:
        """Cut keys of the given byte sizes from the blocks this end owns, in one transaction.

        ``keys`` is ``[(key_id, size_bytes), ...]``; ``slaves`` names every slave of the
        request.  Each key gets a row here: with its material for ``local_slaves`` to
        fetch, or, if none is local, without material, so that a ``dec_keys`` here can
        still tell an SAE that was not named (401) from an unknown key (400).  Raises
        ``InsufficientKey`` (nothing cut) when the owned ready pool is too small, or would
        keep fewer than ``keep`` bytes after the cut.  ``in_flight``: the keys are to be
        reserved at the other end now: their bytes are noted with the kept burns in the
        same transaction, until ``forget_in_flight`` (see ``._burns``).
        """
        for key_id, size in keys:
            _check_key_id(key_id)
            if size <= 0:
                raise KeyStoreError(f"service key {key_id}: size must be positive")
        with self._writing() as conn:
            taken = self._allocate(conn, link_id, [size for _, size in keys], keep=keep)
            out = [
                CutKey(key_id, a.segments, a.material)
                for (key_id, _), a in zip(keys, taken, strict=True)
            ]
            if slaves or local_slaves:
                named = [*slaves, *(s for s in local_slaves if s not in slaves)]
                self._insert_keys(conn, link_id, out, master_sae, named, local_slaves, expires_at)
            if in_flight:
                self._note_in_flight(conn, link_id, [s for k in out for s in k.segments])
        return out

    # -- the other end's side -------------------------------------------------------

    def record_service_keys(
        self,
        link_id: str,
        specs: Sequence[KeySpec],
        *,
        master_sae: str,
        local_slaves: Sequence[str],
        expires_at: float,
    ) -> list[CutKey]:
        """Consume the segments the owner cut and record the keys for ``local_slaves``.

        All or nothing, in one transaction.  Raises ``SegmentRefused`` naming the
        first segment that cannot be consumed.
        """
        for spec in specs:
            _check_key_id(spec.key_id)
            if not spec.segments or len(spec.segments) > MAX_SEGMENTS_PER_KEY:
                raise SegmentRefused(f"service key {spec.key_id}: 1 to 64 segments")
        with self._writing() as conn:
            material = self._consume_segments(conn, link_id, [spec.segments for spec in specs])
            out = [
                CutKey(spec.key_id, spec.segments, key)
                for spec, key in zip(specs, material, strict=True)
            ]
            if local_slaves:
                self._insert_keys(
                    conn, link_id, out, master_sae, local_slaves, local_slaves, expires_at
                )
        return out

    def _insert_keys(
        self,
        conn: sqlite3.Connection,
        link_id: str,
        keys: Sequence[CutKey],
        master_sae: str,
        named: Sequence[str],
        local: Sequence[str],
        expires_at: float,
    ) -> None:
        """Rows for ``keys``: named slaves, and material only if some slave is ``local``."""
        for sae in (master_sae, *named, *local):
            _check_sae_id(sae)
        now = self._clock()
        named_json = json.dumps(sorted(set(named)))
        pending_json = json.dumps(sorted(set(local)))
        state = "reserved" if local else "erased"
        # Sealed together and inserted many rows a statement: on the store thread each
        # C call is a moment the event loop may take the GIL for a while, so a
        # reservation of 16 keys costs a handful of them instead of about 60.
        sealed = (
            self._seal([(k.key, _service_ad(k.key_id)) for k in keys])
            if local
            else [(None, None)] * len(keys)
        )
        rows = [
            (
                key.key_id,
                link_id,
                master_sae,
                named_json,
                pending_json,
                len(key.key) * 8,
                state,
                now,
                expires_at,
                now,
                "" if local else "no slave here",
                nonce,
                material,
            )
            for key, (nonce, material) in zip(keys, sealed, strict=True)
        ]
        for start in range(0, len(rows), _ROWS_PER_INSERT):
            chunk = rows[start : start + _ROWS_PER_INSERT]
            try:
                conn.execute(
                    "INSERT INTO service_keys (key_id, link_id, master_sae, slaves, pending,"
                    " size_bits, state, created_at, expires_at, state_changed_at, reason,"
                    " nonce, material) VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"] * len(chunk)),
                    [value for row in chunk for value in row],
                )
            except sqlite3.IntegrityError as exc:
                reused = _first_reused(conn, [row[0] for row in chunk])
                if reused is None:
                    raise KeyStoreError(f"service keys: {exc}") from None
                raise KeyStoreError(f"service key {reused}: id already used") from None

    def record_local_service_keys(
        self,
        keys: Sequence[CutKey],
        *,
        master_sae: str,
        local_slaves: Sequence[str],
        expires_at: float,
    ) -> None:
        """Record keys that did not come from a QKD link (master and slaves on this node)."""
        with self._writing() as conn:
            self._insert_keys(
                conn, "local", keys, master_sae, local_slaves, local_slaves, expires_at
            )

    # -- serving the slaves ---------------------------------------------------------

    def fetch_service_keys(
        self, key_ids: Sequence[str], *, master_sae: str, requester: str
    ) -> list[tuple[str, bytes]]:
        """Hand ``requester`` the keys ``key_ids`` (master ``master_sae``), once each.

        All or nothing.  Raises ``NotAuthorised`` if the requester was not named as
        a slave of a key that exists here for that master, ``ServiceKeyNotFound``
        if a key is unknown, expired or already fetched by the requester.
        """
        for key_id in key_ids:
            _check_key_id(key_id)
        out: list[tuple[str, bytes]] = []
        now = self._clock()
        with self._writing() as conn:
            rows = []
            for key_id in key_ids:
                row = conn.execute(
                    "SELECT master_sae, slaves, pending, state, expires_at, nonce, material"
                    " FROM service_keys WHERE key_id = ?",
                    (key_id,),
                ).fetchone()
                if row is None or row[0] != master_sae:
                    raise ServiceKeyNotFound(f"service key {key_id}: not found")
                master, slaves, pending, state, expires_at, nonce, material = row
                if requester not in json.loads(slaves):
                    raise NotAuthorised(f"service key {key_id}: {requester} is not a named slave")
                waiting = json.loads(pending)
                if state != "reserved" or requester not in waiting or expires_at <= now:
                    raise ServiceKeyNotFound(f"service key {key_id}: not found")
                rows.append((key_id, waiting, nonce, material))
            for key_id, waiting, nonce, material in rows:
                out.append((key_id, self._unseal(nonce, material, _service_ad(key_id))))
                waiting.remove(requester)
                if waiting:
                    conn.execute(
                        "UPDATE service_keys SET pending = ? WHERE key_id = ?",
                        (json.dumps(waiting), key_id),
                    )
                else:
                    _end_service_keys(conn, _DELIVERED, "delivered", now, "key_id = ?", (key_id,))
        return out

    def expire_service_keys(self, *, retain_s: float = RETAIN_ENDED_S) -> int:
        """Discard (and erase) service keys past their validity.  Returns how many.

        Rows without material (erased or discarded) are kept until ``retain_s`` after
        the key's validity ended (so at least that long after the key itself ended), so that
        late requests still get the right answer, then removed.
        """
        now = self._clock()
        with self._writing() as conn:
            expired = _end_service_keys(conn, _EXPIRED, "expired", now, "expires_at <= ?", (now,))
            # Counted from the key's expiry (never before its end): an index range over
            # exactly the rows to delete.  Counted from the end, every second's sweep would
            # walk every ended row whose key has expired: days of rows on a busy node.
            conn.execute(
                "DELETE FROM service_keys WHERE state IN ('erased', 'discarded')"
                " AND expires_at < ?",
                (now - retain_s,),
            )
            return expired

    def stored_service_keys(self, master_sae: str, slave_sae: str) -> int:
        """Keys held here for ``slave_sae`` from ``master_sae``, not yet fetched."""
        with self._reading() as conn:
            count: int = conn.execute(
                "SELECT COUNT(*) FROM service_keys WHERE master_sae = ? AND state = 'reserved'"
                " AND EXISTS (SELECT 1 FROM json_each(pending) WHERE value = ?)",
                (master_sae, slave_sae),
            ).fetchone()[0]
        return count


_DELIVERED: Final = (KeyState.RESERVED, KeyState.DELIVERED, KeyState.ERASED)
_EXPIRED: Final = (KeyState.RESERVED, KeyState.DISCARDED)


def _end_service_keys(
    conn: sqlite3.Connection,
    path: Sequence[KeyState],
    reason: str,
    now: float,
    where: str,
    params: tuple[object, ...],
) -> int:
    """Move the service keys matching ``where`` along ``path`` of the life-cycle table to
    its last state, which holds no material, and erase their material.  The one place a
    recorded service key changes state; returns how many rows moved."""
    for old, new in itertools.pairwise(path):
        check_transition(old, new)
    final = path[-1]
    assert final not in HOLDS_MATERIAL, "a service key ends without its material"
    cursor = conn.execute(
        "UPDATE service_keys SET pending = '[]', state = ?, state_changed_at = ?, reason = ?,"
        f" nonce = NULL, material = NULL WHERE state = ? AND {where}",
        (final.value, now, reason, path[0].value, *params),
    )
    count: int = cursor.rowcount
    return count


def _first_reused(conn: sqlite3.Connection, key_ids: list[str]) -> str | None:
    """The first of ``key_ids`` already in the table or repeated among them, if any."""
    seen: set[str] = set()
    for key_id in key_ids:
        if (
            key_id in seen
            or conn.execute("SELECT 1 FROM service_keys WHERE key_id = ?", (key_id,)).fetchone()
        ):
            return key_id
        seen.add(key_id)
    return None


def _service_ad(key_id: str) -> bytes:
    return b"qkms-service-key\0" + key_id.encode("ascii")


def _check_key_id(key_id: str) -> None:
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise KeyStoreError("service key id must be a lower-case UUID string")


def _check_sae_id(sae: str) -> None:
    if not isinstance(sae, str) or not _SAE_ID.fullmatch(sae):
        raise KeyStoreError("SAE id must be 1 to 64 characters from A-Z a-z 0-9 _ . : -")
