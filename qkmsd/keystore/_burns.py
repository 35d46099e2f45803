"""Burns kept for a neighbour: link key this end spent that the neighbour may never have
consumed (a reservation or a relay hop that got no answer), told to it again at every new
session.

Durable so that a node killed before it could tell its neighbour (the neighbour away, the
session broken) still tells it after its restart: without it, the neighbour's copy of
those bytes stays READY and unused until its block expires.  Ids and byte ranges only,
no key material.  Bounded: the latest ``BURNS_KEPT`` ranges per link.
"""

from __future__ import annotations

import abc
import contextlib
import sqlite3
from collections.abc import Sequence
from typing import Final

from ._pool import Segment

BURNS_KEPT: Final = 4096
"""Burnt byte ranges kept per link (the latest)."""

BURNS_SCHEMA: Final = (
    """CREATE TABLE burns (
        link_id TEXT NOT NULL,
        block_id INTEGER NOT NULL,
        start INTEGER NOT NULL,
        length INTEGER NOT NULL,
        PRIMARY KEY (link_id, block_id, start, length)
    )""",
)


class BurnMethods(abc.ABC):
    """The kept burns of ``KeyStore`` (mixed in; uses its transactions)."""

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    def keep_burns(self, link_id: str, segments: Sequence[Segment]) -> None:
        """Keep ``segments`` of ``link_id`` (burnt here), then only the latest ``BURNS_KEPT``."""
        with self._writing() as conn:
            conn.executemany(
                "INSERT OR IGNORE INTO burns (link_id, block_id, start, length)"
                " VALUES (?, ?, ?, ?)",
                [(link_id, s.block_id, s.offset, s.length) for s in segments],
            )
            conn.execute(
                "DELETE FROM burns WHERE link_id = ? AND rowid NOT IN (SELECT rowid FROM burns"
                " WHERE link_id = ? ORDER BY rowid DESC LIMIT ?)",
                (link_id, link_id, BURNS_KEPT),
            )

    def kept_burns(self, link_id: str) -> list[Segment]:
        """The burnt ranges kept for ``link_id``, oldest first."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT block_id, start, length FROM burns WHERE link_id = ? ORDER BY rowid",
                (link_id,),
            ).fetchall()
        return [Segment(b, o, n) for b, o, n in rows]
