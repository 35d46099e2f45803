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
import json
import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from protocol import KEY_ID_RE, MAX_SEGMENTS_PER_KEY, SAE_ID_RE

from ._errors import (
    InsufficientKey,
    KeyStoreError,
    NotAuthorised,
    SegmentRefused,
    ServiceKeyNotFound,
)
from ._lifecycle import KeyState, check_transition

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
class Segment:
    block_id: int
    offset: int
    length: int


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


class ServiceKeyMethods(abc.ABC):
    """Service-key operations of ``KeyStore`` (mixed in; uses its transactions)."""

    _key: bytes
    _clock: Callable[[], float]

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _block_plain(self, conn: sqlite3.Connection, link_id: str, block_id: int) -> bytes: ...

    @abc.abstractmethod
    def _forget_blocks(self, link_id: str, block_ids: Iterable[int]) -> None: ...

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
    ) -> list[CutKey]:
        """Cut keys of the given byte sizes from the blocks this end owns, in one transaction.

        ``keys`` is ``[(key_id, size_bytes), ...]``; ``slaves`` names every slave of the
        request.  Each key gets a row here: with its material for ``local_slaves`` to
        fetch, or, if none is local, without material, so that a ``dec_keys`` here can
        still tell an SAE that was not named (401) from an unknown key (400).  Raises
        ``InsufficientKey`` (nothing cut) when the owned ready pool is too small, or would
        keep fewer than ``keep`` bytes after the cut.
        """
        for key_id, size in keys:
            _check_key_id(key_id)
            if size <= 0:
                raise KeyStoreError(f"service key {key_id}: size must be positive")
        need = sum(size for _, size in keys)
        out: list[CutKey] = []
        with self._writing() as conn:
            rows = conn.execute(
                "SELECT block_id, size_bits, used_bits FROM blocks"
                " WHERE link_id = ? AND state = 'ready' AND owned = 1 AND used_bits < size_bits"
                " ORDER BY block_id",
                (link_id,),
            )
            chosen: list[tuple[int, int, int]] = []  # id, used bytes, size bytes
            have = 0
            for block_id, size_bits, used_bits in rows:
                if have >= need + keep:
                    break
                if have < need:
                    chosen.append((block_id, used_bits // 8, size_bits // 8))
                have += size_bits // 8 - used_bits // 8
            if have < need + keep:
                kept = f" and {keep * 8} kept back" if keep else ""
                raise InsufficientKey(
                    f"link {link_id}: {need * 8} bits asked{kept}, {have * 8} owned ready bits"
                    " available"
                )
            blocks = [(b, u, t, self._block_plain(conn, link_id, b)) for b, u, t in chosen]
            cursor = 0
            for key_id, size in keys:
                segments: list[Segment] = []
                parts: list[bytes] = []
                while size > 0:
                    block_id, used, total, plain = blocks[cursor]
                    take = min(size, total - used)
                    segments.append(Segment(block_id, used, take))
                    parts.append(plain[used : used + take])
                    used += take
                    size -= take
                    blocks[cursor] = (block_id, used, total, plain)
                    if used == total:
                        cursor += 1
                if len(segments) > MAX_SEGMENTS_PER_KEY:
                    raise KeyStoreError(f"service key {key_id}: spans too many blocks")
                out.append(CutKey(key_id, tuple(segments), b"".join(parts)))
            self._advance(conn, link_id, [(b, used) for b, used, _, _ in blocks[: cursor + 1]])
            if slaves or local_slaves:
                named = [*slaves, *(s for s in local_slaves if s not in slaves)]
                self._insert_keys(conn, link_id, out, master_sae, named, local_slaves, expires_at)
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
        out: list[CutKey] = []
        with self._writing() as conn:
            blocks: dict[int, tuple[int, int, bytes]] = {}  # id -> used, size, plain
            spans: dict[int, list[tuple[int, int]]] = {}  # id -> [(start, stop), ...]
            for spec in specs:
                parts = []
                for seg in spec.segments:
                    if seg.block_id not in blocks:
                        blocks[seg.block_id] = self._peer_block(conn, link_id, seg.block_id)
                    used, total, plain = blocks[seg.block_id]
                    start, stop = seg.offset, seg.offset + seg.length
                    if seg.length <= 0 or start < 0 or stop > total:
                        raise SegmentRefused(
                            f"link {link_id}: segment {seg.block_id}[{start}:+{seg.length}]"
                            f" outside the block's {total} bytes"
                        )
                    spans.setdefault(seg.block_id, []).append((start, stop))
                    parts.append(plain[start:stop])
                    blocks[seg.block_id] = (used + seg.length, total, plain)
                out.append(CutKey(spec.key_id, spec.segments, b"".join(parts)))
            for block_id, block_spans in spans.items():
                self._consume(conn, link_id, block_id, block_spans)
            self._advance(conn, link_id, [(b, used) for b, (used, _, _) in blocks.items()])
            if local_slaves:
                self._insert_keys(
                    conn, link_id, out, master_sae, local_slaves, local_slaves, expires_at
                )
        return out

    def _consume(
        self,
        conn: sqlite3.Connection,
        link_id: str,
        block_id: int,
        spans: list[tuple[int, int]],
    ) -> None:
        """Record byte ranges of a block as used; refuse any that overlaps a used one.

        A reservation's keys are usually cut back to back: adjacent ranges are merged
        first, so a reservation of many keys costs one check and one row per block.
        """
        merged: list[tuple[int, int]] = []
        for start, stop in sorted(spans):
            if merged and start < merged[-1][1]:
                raise SegmentRefused(
                    f"link {link_id}: segment {block_id}[{start}:+{stop - start}]"
                    f" overlaps bytes already used [{merged[-1][0]}:{merged[-1][1]}]"
                    " by the same reservation"
                )
            if merged and start == merged[-1][1]:
                merged[-1] = (merged[-1][0], stop)
            else:
                merged.append((start, stop))
        for start, stop in merged:
            # Used ranges never overlap, so only the last one starting before `stop`
            # can overlap [start, stop): one index seek, not a scan.
            clash = conn.execute(
                "SELECT start, stop FROM consumed WHERE link_id = ? AND block_id = ?"
                " AND start < ? ORDER BY start DESC LIMIT 1",
                (link_id, block_id, stop),
            ).fetchone()
            if clash is not None and clash[1] > start:
                raise SegmentRefused(
                    f"link {link_id}: segment {block_id}[{start}:+{stop - start}]"
                    f" overlaps bytes already used [{clash[0]}:{clash[1]}]"
                )
            conn.execute(
                "INSERT INTO consumed (link_id, block_id, start, stop) VALUES (?, ?, ?, ?)",
                (link_id, block_id, start, stop),
            )

    def _peer_block(
        self, conn: sqlite3.Connection, link_id: str, block_id: int
    ) -> tuple[int, int, bytes]:
        row = conn.execute(
            "SELECT state, owned, size_bits, used_bits FROM blocks"
            " WHERE link_id = ? AND block_id = ?",
            (link_id, block_id),
        ).fetchone()
        if row is None:
            raise SegmentRefused(f"link {link_id}: block {block_id} unknown here")
        state, owned, size_bits, used_bits = row
        if state != KeyState.READY.value:
            raise SegmentRefused(f"link {link_id}: block {block_id} is {state}, not ready")
        if owned:
            raise SegmentRefused(f"link {link_id}: block {block_id} is ours to allocate, not yours")
        return used_bits // 8, size_bits // 8, self._block_plain(conn, link_id, block_id)

    def _advance(
        self, conn: sqlite3.Connection, link_id: str, cursors: Sequence[tuple[int, int]]
    ) -> None:
        now = self._clock()
        for block_id, used in cursors:
            size_bits = conn.execute(
                "SELECT size_bits FROM blocks WHERE link_id = ? AND block_id = ?",
                (link_id, block_id),
            ).fetchone()[0]
            if used * 8 < size_bits:
                conn.execute(
                    "UPDATE blocks SET used_bits = ? WHERE link_id = ? AND block_id = ?",
                    (used * 8, link_id, block_id),
                )
                continue
            # Every bit handed out: the block's material has done its job.
            for old, new in (
                (KeyState.READY, KeyState.RESERVED),
                (KeyState.RESERVED, KeyState.DELIVERED),
                (KeyState.DELIVERED, KeyState.ERASED),
            ):
                check_transition(old, new)
            conn.execute(
                "DELETE FROM consumed WHERE link_id = ? AND block_id = ?", (link_id, block_id)
            )
            self._forget_blocks(link_id, [block_id])
            conn.execute(  # the material goes with it (trigger blocks_erase_material)
                "UPDATE blocks SET used_bits = size_bits, state = 'erased', state_changed_at = ?,"
                " reason = 'all bits delivered'"
                " WHERE link_id = ? AND block_id = ? AND state = 'ready'",
                (now, link_id, block_id),
            )

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
                    check_transition(KeyState.RESERVED, KeyState.DELIVERED)
                    check_transition(KeyState.DELIVERED, KeyState.ERASED)
                    conn.execute(
                        "UPDATE service_keys SET pending = '[]', state = 'erased',"
                        " state_changed_at = ?, reason = 'delivered', nonce = NULL, material = NULL"
                        " WHERE key_id = ?",
                        (now, key_id),
                    )
        return out

    def expire_service_keys(self, *, retain_s: float = RETAIN_ENDED_S) -> int:
        """Discard (and erase) service keys past their validity.  Returns how many.

        Rows without material (erased or discarded) are kept until ``retain_s`` after
        the key's validity ended (so at least that long after the key itself ended), so that
        late requests still get the right answer, then removed.
        """
        now = self._clock()
        check_transition(KeyState.RESERVED, KeyState.DISCARDED)
        with self._writing() as conn:
            cursor = conn.execute(
                "UPDATE service_keys SET state = 'discarded', state_changed_at = ?,"
                " reason = 'expired', nonce = NULL, material = NULL"
                " WHERE state = 'reserved' AND expires_at <= ?",
                (now, now),
            )
            # Counted from the key's expiry (never before its end): an index range over
            # exactly the rows to delete.  Counted from the end, every second's sweep would
            # walk every ended row whose key has expired: days of rows on a busy node.
            conn.execute(
                "DELETE FROM service_keys WHERE state IN ('erased', 'discarded')"
                " AND expires_at < ?",
                (now - retain_s,),
            )
            return cursor.rowcount

    def stored_service_keys(self, master_sae: str, slave_sae: str) -> int:
        """Keys held here for ``slave_sae`` from ``master_sae``, not yet fetched."""
        with self._reading() as conn:
            count: int = conn.execute(
                "SELECT COUNT(*) FROM service_keys WHERE master_sae = ? AND state = 'reserved'"
                " AND EXISTS (SELECT 1 FROM json_each(pending) WHERE value = ?)",
                (master_sae, slave_sae),
            ).fetchone()[0]
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
