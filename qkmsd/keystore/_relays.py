"""The relay journal: each relay this node took part in, and how far it got.

Durable so that ``qkmsctl relays`` tells the truth after a restart: a relay still under
way when the node stopped is marked ``discarded`` at the next start (its key, if any end
stored one, is settled by link key synchronisation: READY at both ends or at neither).
No key material: ids, path, states and sizes only.  Bounded: the oldest rows go once the
journal holds ``RELAY_JOURNAL_MAX``.
"""

from __future__ import annotations

import abc
import contextlib
import json
import sqlite3
from collections.abc import Callable
from typing import Any, Final

RELAY_JOURNAL_MAX: Final = 10_000
OPEN_STATES: Final = ("started", "forwarded")
"""States of a relay still under way."""

RELAYS_SCHEMA: Final = (
    """CREATE TABLE relays (
        relay_id TEXT PRIMARY KEY,
        e2e_link_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('source', 'intermediate', 'destination')),
        state TEXT NOT NULL CHECK (state IN
            ('started', 'forwarded', 'received', 'confirmed', 'failed', 'discarded')),
        path TEXT NOT NULL,
        bits INTEGER NOT NULL,
        started_at REAL NOT NULL,
        ended_at REAL,
        error TEXT NOT NULL DEFAULT ''
    )""",
    "CREATE INDEX relays_by_start ON relays (started_at)",
)

_FIELDS = (
    "relay_id",
    "e2e_link_id",
    "role",
    "state",
    "path",
    "bits",
    "started_at",
    "ended_at",
    "error",
)


class RelayJournalMethods(abc.ABC):
    """The relay journal of ``KeyStore`` (mixed in; uses its transactions)."""

    _clock: Callable[[], float]

    @abc.abstractmethod
    def _writing(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    @abc.abstractmethod
    def _reading(self) -> contextlib.AbstractContextManager[sqlite3.Connection]: ...

    def journal_relays(self, records: list[dict[str, Any]]) -> None:
        """Insert or update relays (maps with the journal's fields), then trim the journal."""
        rows = [tuple(json.dumps(r[f]) if f == "path" else r[f] for f in _FIELDS) for r in records]
        with self._writing() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO relays ({', '.join(_FIELDS)})"
                f" VALUES ({', '.join('?' * len(_FIELDS))})",
                rows,
            )
            conn.execute(
                "DELETE FROM relays WHERE relay_id IN (SELECT relay_id FROM relays"
                " ORDER BY started_at DESC LIMIT -1 OFFSET ?)",
                (RELAY_JOURNAL_MAX,),
            )

    def recent_relays(self, limit: int) -> list[dict[str, Any]]:
        """The newest ``limit`` relays of the journal, newest first."""
        with self._reading() as conn:
            rows = conn.execute(
                f"SELECT {', '.join(_FIELDS)} FROM relays ORDER BY started_at DESC LIMIT ?",
                (limit,),
            ).fetchall()
        return [
            {f: json.loads(v) if f == "path" else v for f, v in zip(_FIELDS, row, strict=True)}
            for row in rows
        ]

    def abandon_open_relays(self, reason: str) -> int:
        """Mark every relay still under way ``discarded``; how many.  For a fresh start."""
        with self._writing() as conn:
            cursor = conn.execute(
                "UPDATE relays SET state = 'discarded', ended_at = ?, error = ?"
                f" WHERE state IN ({', '.join('?' * len(OPEN_STATES))})",
                (self._clock(), reason, *OPEN_STATES),
            )
            count: int = cursor.rowcount
        return count
