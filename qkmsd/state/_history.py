"""Alarm history: every raise, change, acknowledgement, clear and fault, in
``<state_dir>/alarms.sqlite``, bounded by age and count.

A file of its own, not a table of the key store: the key store holds key material under
the master key, with ``synchronous=FULL`` and one writer thread whose commits requests
wait for.  Alarm history is neither secret nor precious; keeping it apart means an alarm
storm never queues behind (or delays) a key commit, a full history never touches the key
store's file, and an operator may delete or copy ``alarms.sqlite`` freely.

Rows carry codes, resources (link, peer and file ids), severities and measured values:
never key material.  Calls block, briefly: the state agent makes them on the event loop.
Alarm events are rare (a hold-down apart per alarm), and with WAL and ``synchronous=NORMAL``
a commit writes the log without waiting for the disk (a power cut may lose the last few
events, never corrupt the file), so a call takes well under a millisecond; a thread
hand-off would cost more than it saves.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from ..disruptions import Severity
from ..errors import QkmsError
from ._table import Alarm, AlarmEvent, EventKind

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    code TEXT NOT NULL,
    resource TEXT NOT NULL,
    severity TEXT NOT NULL,
    previous TEXT NOT NULL,
    value REAL,
    by TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
"""


class AlarmHistoryError(QkmsError):
    """The history file cannot be opened or written; the message names the file."""


class AlarmHistory:
    """The alarm history file.  Not thread-safe: one caller at a time."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *, max_age_s: float, max_rows: int):
        self._conn = conn
        self.path = path
        self._max_age = max_age_s
        self._max_rows = max_rows

    @classmethod
    def open(cls, path: Path, *, max_age_s: float, max_rows: int) -> AlarmHistory:
        """Open (or create) the history at ``path``.  Raises ``AlarmHistoryError``."""
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AlarmHistoryError(f"alarm history {path}: {exc}") from None
        return cls(conn, path, max_age_s=max_age_s, max_rows=max_rows)

    def record(self, events: list[AlarmEvent]) -> None:
        """Append ``events``, then drop rows past the age and count bounds."""
        if not events:
            return
        try:
            with self._conn:
                self._conn.execute("BEGIN")
                self._conn.executemany(
                    "INSERT INTO events (at, kind, code, resource, severity, previous, value, by)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    [
                        (
                            e.at,
                            e.kind.value,
                            e.code,
                            e.resource,
                            str(e.severity),
                            str(e.previous),
                            e.value,
                            e.by,
                        )
                        for e in events
                    ],
                )
                newest = max(e.at for e in events)
                self._conn.execute("DELETE FROM events WHERE at < ?", (newest - self._max_age,))
                self._conn.execute(
                    "DELETE FROM events WHERE id <= (SELECT MAX(id) FROM events) - ?",
                    (self._max_rows,),
                )
        except sqlite3.Error as exc:
            raise AlarmHistoryError(f"alarm history {self.path}: {exc}") from None

    def recent(self, limit: int, since: float | None = None) -> list[AlarmEvent]:
        """The ``limit`` newest events (at or after ``since``), newest first.  Raises
        ``AlarmHistoryError``."""
        try:
            return self._recent(limit, since)
        except sqlite3.Error as exc:
            raise AlarmHistoryError(f"alarm history {self.path}: {exc}") from None

    def _recent(self, limit: int, since: float | None) -> list[AlarmEvent]:
        rows = self._conn.execute(
            "SELECT kind, code, resource, severity, previous, value, at, by FROM events"
            " WHERE at >= ? ORDER BY id DESC LIMIT ?",
            (float("-inf") if since is None else since, limit),
        ).fetchall()
        return [_from_row(row) for row in rows]

    def after(self, after_id: int | None, limit: int) -> list[tuple[int, AlarmEvent]]:
        """``(id, event)`` pairs oldest first: those after row ``after_id``, or the newest
        ``limit`` if it is None.  Raises ``AlarmHistoryError``."""
        try:
            if after_id is None:
                rows = self._conn.execute(
                    "SELECT id, kind, code, resource, severity, previous, value, at, by"
                    " FROM events ORDER BY id DESC LIMIT ?",
                    (limit,),
                ).fetchall()
                rows.reverse()
            else:
                rows = self._conn.execute(
                    "SELECT id, kind, code, resource, severity, previous, value, at, by"
                    " FROM events WHERE id > ? ORDER BY id LIMIT ?",
                    (after_id, limit),
                ).fetchall()
        except sqlite3.Error as exc:
            raise AlarmHistoryError(f"alarm history {self.path}: {exc}") from None
        return [(int(row[0]), _from_row(row[1:])) for row in rows]

    def count(self) -> int:
        (n,) = self._conn.execute("SELECT COUNT(*) FROM events").fetchone()
        return int(n)

    def still_active(self) -> list[Alarm]:
        """The alarms whose last life-cycle event is not a clear: those active when the
        node stopped.  Raises ``AlarmHistoryError``."""
        try:
            return self._still_active()
        except sqlite3.Error as exc:
            raise AlarmHistoryError(f"alarm history {self.path}: {exc}") from None

    def _still_active(self) -> list[Alarm]:
        rows = self._conn.execute(
            "SELECT e.kind, e.code, e.resource, e.severity, e.previous, e.value, e.at, e.by"
            " FROM events e JOIN (SELECT MAX(id) AS id FROM events WHERE kind != 'fault'"
            " GROUP BY code, resource) last ON e.id = last.id WHERE e.kind != 'cleared'"
        ).fetchall()
        alarms = []
        for row in rows:
            event = _from_row(row)
            raised = self._conn.execute(
                "SELECT MAX(at) FROM events WHERE code = ? AND resource = ? AND kind = 'raised'",
                (event.code, event.resource),
            ).fetchone()[0]
            acked = self._conn.execute(
                "SELECT MAX(at) FROM events WHERE code = ? AND resource = ?"
                " AND kind = 'acknowledged' AND at >= ?",
                (event.code, event.resource, raised if raised is not None else event.at),
            ).fetchone()[0]
            alarms.append(
                Alarm(
                    event.code,
                    event.resource,
                    event.severity,
                    raised_at=raised if raised is not None else event.at,
                    changed_at=event.at,
                    value=event.value,
                    acknowledged_at=acked,
                )
            )
        return alarms

    def close(self) -> None:
        self._conn.close()


def _from_row(row: tuple[object, ...]) -> AlarmEvent:
    kind, code, resource, severity, previous, value, at, by = row
    return AlarmEvent(
        EventKind(str(kind)),
        str(code),
        str(resource),
        Severity[str(severity).upper()],
        Severity[str(previous).upper()],
        float(value) if isinstance(value, int | float) else None,
        float(at) if isinstance(at, int | float) else 0.0,
        str(by),
    )
