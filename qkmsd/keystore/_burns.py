"""Burns kept for a neighbour: link key this end spent that the neighbour may never have
consumed (a reservation or a relay hop that got no answer), told to it until it answers
that the burn is durable at its end.

Durable so that a node killed before its neighbour acknowledged them (the neighbour away,
the session broken) still tells them after its restart: without it, the neighbour's copy
of those bytes stays READY and unused until its block expires.  Ids and byte ranges
only, no key material.

A row is a burn (``in_flight`` NULL), or bytes allocated for a reservation or a relay hop
whose answer has not come yet (``in_flight`` = the store's ``open_mark``, written in the
allocation's own transaction, so at no extra commit).  The owner deletes those rows once
the answer says the neighbour consumed the bytes (``forget_in_flight``, in batches).  A
row left ``in_flight`` under an older mark was in flight when the node stopped: its
outcome is unknown, so it counts as a burn (``kept_burns``), harmless if the neighbour
did consume the bytes (it skips bytes it used).

Bounded: the latest ``BURNS_KEPT`` burns per link; rows still in flight under this
store's mark are few (the allocations under way, and answers a few seconds old) and do
not count.  The oldest burns beyond the bound are dropped (``keep_burns`` says how many).
"""

from __future__ import annotations

import abc
import contextlib
import secrets
import sqlite3
from collections.abc import Sequence
from typing import Final

from ._pool import Segment

BURNS_KEPT: Final = 4096
"""Unacknowledged burnt byte ranges kept per link (the latest)."""

BURNS_SCHEMA: Final = (
    """CREATE TABLE burns (
        link_id TEXT NOT NULL,
        block_id INTEGER NOT NULL,
        start INTEGER NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (link_id, block_id, start, length)
    )""",
)
BURNS_IN_FLIGHT_SCHEMA: Final = ("ALTER TABLE burns ADD COLUMN in_flight INTEGER",)
"""Schema 7: bytes in flight (see the module's docstring); rows of schema 6 are burns."""


class BurnMethods(abc.ABC):
    """The kept burns of ``KeyStore`` (mixed in; uses its transactions)."""

    open_mark: int = 0
    """Names this opening of the store in the rows it writes in flight (random)."""

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    def _new_open_mark(self) -> None:
        self.open_mark = secrets.randbits(62) + 1

    def keep_burns(self, link_id: str, segments: Sequence[Segment]) -> int:
        """Keep ``segments`` of ``link_id`` (burnt here; rows in flight become burns), then
        only the latest ``BURNS_KEPT`` burns.  Returns how many older ones were dropped."""
        with self._writing() as conn:
            conn.executemany(
                "INSERT INTO burns (link_id, block_id, start, length) VALUES (?, ?, ?, ?)"
                " ON CONFLICT (link_id, block_id, start, length) DO UPDATE SET in_flight = NULL",
                [(link_id, s.block_id, s.offset, s.length) for s in segments],
            )
            cursor = conn.execute(
                "DELETE FROM burns WHERE rowid IN (SELECT rowid FROM burns WHERE link_id = ?"
                " AND (in_flight IS NULL OR in_flight != ?) ORDER BY rowid DESC"
                " LIMIT -1 OFFSET ?)",
                (link_id, self.open_mark, BURNS_KEPT),
            )
            dropped: int = cursor.rowcount
        return dropped

    def kept_burns(self, link_id: str) -> list[Segment]:
        """The burnt ranges kept for ``link_id``, oldest first: burns, and bytes that were
        in flight when an earlier opening of the store ended."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT block_id, start, length FROM burns WHERE link_id = ?"
                " AND (in_flight IS NULL OR in_flight != ?) ORDER BY rowid",
                (link_id, self.open_mark),
            ).fetchall()
        return [Segment(b, o, n) for b, o, n in rows]

    def forget_burns(self, link_id: str, segments: Sequence[Segment]) -> int:
        """Drop the kept ranges that lie inside ``segments`` (the neighbour acknowledged
        them; a segment may join several kept ranges).  Returns how many were dropped."""
        with self._writing() as conn:
            dropped = 0
            for s in segments:
                cursor = conn.execute(
                    "DELETE FROM burns WHERE link_id = ? AND block_id = ? AND start >= ?"
                    " AND start + length <= ?",
                    (link_id, s.block_id, s.offset, s.offset + s.length),
                )
                dropped += cursor.rowcount
        return dropped

    def forget_in_flight(self, link_id: str, segments: Sequence[Segment]) -> None:
        """The neighbour answered for these bytes in flight (it consumed them): drop their
        rows, unless they have become burns meanwhile."""
        with self._writing() as conn:
            conn.executemany(
                "DELETE FROM burns WHERE link_id = ? AND block_id = ? AND start = ?"
                " AND length = ? AND in_flight = ?",
                [(link_id, s.block_id, s.offset, s.length, self.open_mark) for s in segments],
            )

    def _note_in_flight(
        self, conn: sqlite3.Connection, link_id: str, segments: Sequence[Segment]
    ) -> None:
        conn.executemany(
            "INSERT OR IGNORE INTO burns (link_id, block_id, start, length, in_flight)"
            " VALUES (?, ?, ?, ?, ?)",
            [(link_id, s.block_id, s.offset, s.length, self.open_mark) for s in segments],
        )
