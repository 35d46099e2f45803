"""The pool primitive: link key taken by the end that owns it, consumed identically by the other.

Theory of operation
-------------------
Both ends of a link hold the same blocks; each block is owned by one end (see
``qkmsd.keymanager.owns_block``).  The owner *allocates*: it takes bytes from the front of
its READY blocks, in block order, advances each block's ``used_bits``, and names what it
took as segments ``(block_id, offset, length)``.  It sends the segments to the other end,
which *consumes* exactly those bytes from its copy.  Requests may reach the other end out
of order, so it records every byte range it consumed and refuses any segment that
overlaps one, that lies outside the block, or that names a block that is unknown, not
READY or its own: no byte is used twice at either end.  A block whose bytes are all used
has done its job: it moves READY -> RESERVED -> DELIVERED -> ERASED and its material is
erased.

Service keys use this now; relay hops (a one-time pad and a one-time MAC key per hop)
use the same two calls.  Both run inside the caller's transaction: all or nothing.  The
consumed ranges live in the ``consumed`` table (created with the service keys' schema).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import sqlite3
from collections.abc import Callable, Iterable, Sequence

from protocol import MAX_SEGMENTS_PER_KEY

from ._errors import InsufficientKey, KeyStoreError, SegmentRefused
from ._lifecycle import KeyState

MAX_SEGMENTS_PER_ALLOCATION = MAX_SEGMENTS_PER_KEY
"""Segments one allocation may span (the wire's limit for one key)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Segment:
    """Bytes ``[offset, offset + length)`` of block ``block_id``."""

    block_id: int
    offset: int
    length: int


@dataclasses.dataclass(frozen=True, slots=True)
class Allocation:
    """Link key taken from the pool: where it came from and the bytes.  ``material`` stays
    out of ``repr``."""

    segments: tuple[Segment, ...]
    material: bytes = dataclasses.field(repr=False)


class PoolMethods(abc.ABC):
    """Allocation and consumption of link key (mixed into ``KeyStore``)."""

    _clock: Callable[[], float]

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _block_plain(self, conn: sqlite3.Connection, link_id: str, block_id: int) -> bytes: ...

    @abc.abstractmethod
    def _note_in_flight(
        self, conn: sqlite3.Connection, link_id: str, segments: Sequence[Segment]
    ) -> None: ...

    @abc.abstractmethod
    def _update(
        self,
        conn: sqlite3.Connection,
        link_id: str,
        block_ids: Sequence[int],
        old: KeyState,
        new: KeyState,
        reason: str,
    ) -> None: ...

    # -- public: each its own transaction ------------------------------------------------------

    def allocate_link_key(
        self, link_id: str, sizes: Sequence[int], *, keep: int = 0, in_flight: bool = False
    ) -> list[Allocation]:
        """Take ``sizes`` bytes each from the blocks this end owns.  See ``_allocate``.

        ``in_flight``: the bytes go to the other end now (a relay hop): noted with the
        kept burns in the same transaction, until ``forget_in_flight`` (see ``._burns``)."""
        with self._writing() as conn:
            taken = self._allocate(conn, link_id, sizes, keep=keep)
            if in_flight:
                self._note_in_flight(conn, link_id, [s for a in taken for s in a.segments])
            return taken

    def consume_link_key(
        self, link_id: str, allocations: Sequence[Sequence[Segment]]
    ) -> list[bytes]:
        """Consume the segments the owner allocated.  See ``_consume_segments``."""
        with self._writing() as conn:
            return self._consume_segments(conn, link_id, allocations)

    def burn_link_key(self, link_id: str, segments: Sequence[Segment]) -> int:
        """Consume, and throw away, the bytes of ``segments`` not used yet at this end.

        For bytes the other end cut for keys this end never recorded: so that a block the
        owner used up is used up (and erased) here too.  Bytes this end used already (the
        keys were recorded after all) are skipped, also when a segment covers both used
        and unused bytes (the sender joins back-to-back segments of different requests);
        a segment in a block it cannot find, or not READY, is skipped.  Returns how many
        unused ranges were consumed.

        A block still RECEIVED here is burnt too (the owner allocates only from blocks it
        holds READY, so its confirm is on the way or was lost with a session): its used
        bytes are recorded, and a block used up is erased when it becomes READY.
        """
        burnt = 0
        with self._writing() as conn:
            for seg in segments:
                for gap in _unused_parts(conn, link_id, seg):
                    conn.execute("SAVEPOINT burn")
                    try:
                        self._consume_segments(conn, link_id, [[gap]], received_too=True)
                    except SegmentRefused:
                        conn.execute("ROLLBACK TO burn")
                    else:
                        burnt += 1
                    conn.execute("RELEASE burn")
        return burnt

    def misplaced_burns(self, link_id: str, segments: Sequence[Segment]) -> list[str]:
        """Why each of ``segments`` that no burn could ever apply to is wrong: it lies
        outside its block, or in a block this end owns.  Segments in blocks unknown here
        or no longer READY are not named: their bytes are gone at this end already."""
        wrong: list[str] = []
        with self._reading() as conn:
            for seg in segments:
                row = conn.execute(
                    "SELECT owned, size_bits FROM blocks WHERE link_id = ? AND block_id = ?",
                    (link_id, seg.block_id),
                ).fetchone()
                if row is None:
                    continue
                owned, size_bits = row
                if owned:
                    wrong.append(f"block {seg.block_id} is ours to allocate, not yours")
                elif seg.offset + seg.length > size_bits // 8:
                    wrong.append(
                        f"segment {seg.block_id}[{seg.offset}:+{seg.length}] outside the"
                        f" block's {size_bits // 8} bytes"
                    )
        return wrong

    # -- inside a transaction --------------------------------------------------------------

    def _allocate(
        self, conn: sqlite3.Connection, link_id: str, sizes: Sequence[int], *, keep: int = 0
    ) -> list[Allocation]:
        """Take ``sizes`` bytes each from the front of the owned READY blocks, in block order.

        Raises ``InsufficientKey`` (nothing taken) when the owned ready pool is smaller
        than the total asked, or would keep fewer than ``keep`` bytes afterwards.
        """
        if any(size <= 0 for size in sizes):
            raise KeyStoreError(f"link {link_id}: allocation sizes must be positive")
        need = sum(sizes)
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
        out: list[Allocation] = []
        cursor = 0
        for size in sizes:
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
            if len(segments) > MAX_SEGMENTS_PER_ALLOCATION:
                raise KeyStoreError(
                    f"link {link_id}: an allocation spans more than"
                    f" {MAX_SEGMENTS_PER_ALLOCATION} blocks"
                )
            out.append(Allocation(tuple(segments), b"".join(parts)))
        self._advance(conn, link_id, [(b, used) for b, used, _, _ in blocks[: cursor + 1]])
        return out

    def _consume_segments(
        self,
        conn: sqlite3.Connection,
        link_id: str,
        allocations: Sequence[Sequence[Segment]],
        *,
        received_too: bool = False,
    ) -> list[bytes]:
        """The bytes of each allocation's segments, consumed from blocks the other end owns.

        Raises ``SegmentRefused`` (nothing consumed) naming the first segment that is out
        of range, overlaps bytes already used (here or earlier in the same call), or lies
        in a block that is unknown, not READY, or ours.
        """
        blocks: dict[int, tuple[int, int, bytes]] = {}  # id -> used, size, plain
        spans: dict[int, list[tuple[int, int]]] = {}  # id -> [(start, stop), ...]
        out: list[bytes] = []
        for segments in allocations:
            if not segments or len(segments) > MAX_SEGMENTS_PER_ALLOCATION:
                raise SegmentRefused(
                    f"link {link_id}: an allocation has 1 to {MAX_SEGMENTS_PER_ALLOCATION} segments"
                )
            parts = []
            for seg in segments:
                if seg.block_id not in blocks:
                    blocks[seg.block_id] = self._peer_block(
                        conn, link_id, seg.block_id, received_too=received_too
                    )
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
            out.append(b"".join(parts))
        for block_id, block_spans in spans.items():
            self._record_consumed(conn, link_id, block_id, block_spans)
        self._advance(conn, link_id, [(b, used) for b, (used, _, _) in blocks.items()])
        return out

    def _record_consumed(
        self,
        conn: sqlite3.Connection,
        link_id: str,
        block_id: int,
        spans: list[tuple[int, int]],
    ) -> None:
        """Record byte ranges of a block as used; refuse any that overlaps a used one.

        An allocation's keys are usually cut back to back: adjacent ranges are merged
        first, so an allocation of many keys costs one check and one row per block.
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
        self, conn: sqlite3.Connection, link_id: str, block_id: int, *, received_too: bool = False
    ) -> tuple[int, int, bytes]:
        row = conn.execute(
            "SELECT state, owned, size_bits, used_bits FROM blocks"
            " WHERE link_id = ? AND block_id = ?",
            (link_id, block_id),
        ).fetchone()
        if row is None:
            raise SegmentRefused(f"link {link_id}: block {block_id} unknown here")
        state, owned, size_bits, used_bits = row
        usable = {KeyState.READY.value, KeyState.RECEIVED.value} if received_too else {"ready"}
        if state not in usable:
            raise SegmentRefused(f"link {link_id}: block {block_id} is {state}, not ready")
        if owned:
            raise SegmentRefused(f"link {link_id}: block {block_id} is ours to allocate, not yours")
        return used_bits // 8, size_bits // 8, self._block_plain(conn, link_id, block_id)

    def _advance(
        self, conn: sqlite3.Connection, link_id: str, cursors: Iterable[tuple[int, int]]
    ) -> None:
        """Set each block's used bytes; a block with none left is spent and erased."""
        for block_id, used in cursors:
            size_bits = conn.execute(
                "SELECT size_bits FROM blocks WHERE link_id = ? AND block_id = ?",
                (link_id, block_id),
            ).fetchone()[0]
            used_bits = min(used * 8, size_bits)
            conn.execute(
                "UPDATE blocks SET used_bits = ? WHERE link_id = ? AND block_id = ?",
                (used_bits, link_id, block_id),
            )
            if used_bits < size_bits:
                continue
            self._spend(conn, link_id, [block_id])

    def _spend(self, conn: sqlite3.Connection, link_id: str, block_ids: Sequence[int]) -> None:
        """Every bit handed out: the blocks' material has done its job.  READY blocks go
        to ERASED; a RECEIVED one (burnt before its confirm came) waits for READY, when
        ``spend_used_up`` finishes it."""
        for block_id in block_ids:
            if (
                conn.execute(
                    "SELECT 1 FROM blocks WHERE link_id = ? AND block_id = ? AND state = ?",
                    (link_id, block_id, KeyState.READY.value),
                ).fetchone()
                is None
            ):
                continue
            conn.execute(
                "DELETE FROM consumed WHERE link_id = ? AND block_id = ?", (link_id, block_id)
            )
            for old, new in (
                (KeyState.READY, KeyState.RESERVED),
                (KeyState.RESERVED, KeyState.DELIVERED),
                (KeyState.DELIVERED, KeyState.ERASED),
            ):
                self._update(conn, link_id, [block_id], old, new, "all bits delivered")

    def spend_used_up(
        self, conn: sqlite3.Connection, link_id: str, block_ids: Sequence[int]
    ) -> None:
        """Inside a transaction: erase those of ``block_ids`` whose bits are all used (blocks
        burnt while RECEIVED, just made READY).  One query per 500 ids."""
        for first in range(0, len(block_ids), 500):
            chunk = list(block_ids[first : first + 500])
            marks = ", ".join("?" * len(chunk))
            spent = [
                row[0]
                for row in conn.execute(
                    "SELECT block_id FROM blocks WHERE link_id = ? AND used_bits >= size_bits"
                    f" AND block_id IN ({marks})",
                    (link_id, *chunk),
                )
            ]
            self._spend(conn, link_id, spent)


def _unused_parts(conn: sqlite3.Connection, link_id: str, seg: Segment) -> list[Segment]:
    """The parts of ``seg`` that no recorded consumed range covers."""
    start, stop = seg.offset, seg.offset + seg.length
    used = conn.execute(
        "SELECT start, stop FROM consumed WHERE link_id = ? AND block_id = ?"
        " AND stop > ? AND start < ? ORDER BY start",
        (link_id, seg.block_id, start, stop),
    ).fetchall()
    parts: list[Segment] = []
    cursor = start
    for lo, hi in used:
        if lo > cursor:
            parts.append(Segment(seg.block_id, cursor, lo - cursor))
        cursor = max(cursor, hi)
    if cursor < stop:
        parts.append(Segment(seg.block_id, cursor, stop - cursor))
    return parts
