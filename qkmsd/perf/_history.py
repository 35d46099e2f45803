"""Performance history: samples in ``<state_dir>/perf.sqlite``, kept at three resolutions.

Every sample (time, resource, metric, value) is added to three tiers at once: as it is
(tier 0, table ``raw``), and into the 5-minute and the 1-hour bucket it falls in (tiers 1
and 2, table ``buckets``), each bucket keeping the count, sum, minimum and maximum of what
fell in it.  Each tier is pruned by its own age (``[perf] raw_keep_s``, ``minute_keep_s``,
``hour_keep_s``), so the file holds at most series x (raw_keep / interval + minute_keep /
300 + hour_keep / 3600) rows, whatever the run length.  Series names are stored once
(table ``series``), rows carry their integer id.  A query takes the finest tier that still
covers its start.

Downsampling on write rather than by a background job: a bucket is always up to date,
nothing has to run at a given time, and a crash loses at most the last sample.

Like the alarm history, a file of its own (not secret, not precious: WAL with
``synchronous=NORMAL``), written on the event loop: one transaction per collection of a
few hundred rows takes a millisecond or two.  Rows carry resource ids (link, pool, SAE,
node) and measured values: never key material or key ids.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path

import msgspec

from ..errors import QkmsError

TIERS: tuple[float, ...] = (0.0, 300.0, 3600.0)
"""Bucket width of each tier in seconds (0: the samples as taken)."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS series (
    id INTEGER PRIMARY KEY,
    resource TEXT NOT NULL,
    metric TEXT NOT NULL,
    UNIQUE (resource, metric)
);
CREATE TABLE IF NOT EXISTS raw (
    at REAL NOT NULL,
    series INTEGER NOT NULL,
    value REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS raw_at ON raw (at);
CREATE TABLE IF NOT EXISTS buckets (
    tier INTEGER NOT NULL,
    series INTEGER NOT NULL,
    at INTEGER NOT NULL,
    n INTEGER NOT NULL,
    total REAL NOT NULL,
    low REAL NOT NULL,
    high REAL NOT NULL,
    PRIMARY KEY (tier, series, at)
) WITHOUT ROWID;
"""

_UPSERT = """
INSERT INTO buckets (tier, series, at, n, total, low, high) VALUES (?, ?, ?, 1, ?, ?, ?)
ON CONFLICT (tier, series, at) DO UPDATE SET
    n = n + 1, total = total + excluded.total,
    low = min(low, excluded.low), high = max(high, excluded.high)
"""

PRUNE_EVERY_S = 60.0
"""Old rows are deleted at most this often (each prune scans the buckets)."""


class Sample(msgspec.Struct, frozen=True, array_like=True):
    """One measured value: ``[at, resource, metric, value]`` on the wire."""

    at: float
    """Unix time of the measurement."""
    resource: str
    """``node``, ``relay``, ``link:<id>``, ``pool:<id>`` or ``sae:<name>``."""
    metric: str
    value: float


class Point(msgspec.Struct, frozen=True):
    """A value of a series: a sample, or a bucket's mean with its extremes."""

    at: float
    mean: float
    low: float
    high: float
    n: int


class PerfHistoryError(QkmsError):
    """The performance history cannot be opened or written; the message names the file."""


class PerfHistory:
    """The performance history file.  Not thread-safe: one caller at a time."""

    def __init__(self, conn: sqlite3.Connection, path: Path, keep_s: tuple[float, ...]):
        self._conn = conn
        self.path = path
        self._keep = keep_s
        self._series: dict[tuple[str, str], int] = {
            (resource, metric): sid
            for sid, resource, metric in conn.execute("SELECT id, resource, metric FROM series")
        }
        self._pruned_at = float("-inf")

    @classmethod
    def open(cls, path: Path, *, keep_s: tuple[float, float, float]) -> PerfHistory:
        """Open (or create) the history at ``path``; ``keep_s`` is each tier's age limit."""
        try:
            conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.executescript(_SCHEMA)
            return cls(conn, path, keep_s)
        except sqlite3.Error as exc:
            raise PerfHistoryError(f"performance history {path}: {exc}") from None

    def close(self) -> None:
        self._conn.close()

    def add(self, samples: Iterable[Sample], *, now: float) -> int:
        """Add ``samples`` to every tier (pruning each by age now and then).  Returns the
        rows written."""
        try:
            with self._conn:
                self._conn.execute("BEGIN")
                raw = [(s.at, self._series_id(s.resource, s.metric), s.value) for s in samples]
                self._conn.executemany("INSERT INTO raw (at, series, value) VALUES (?, ?, ?)", raw)
                buckets = [
                    (tier, sid, int(_bucket(at, TIERS[tier])), value, value, value)
                    for at, sid, value in raw
                    for tier in range(1, len(TIERS))
                ]
                self._conn.executemany(_UPSERT, buckets)
                if now - self._pruned_at >= PRUNE_EVERY_S:
                    self._prune(now)
        except sqlite3.Error as exc:
            raise PerfHistoryError(f"performance history {self.path}: {exc}") from None
        return len(raw) + len(buckets)

    def _series_id(self, resource: str, metric: str) -> int:
        sid = self._series.get((resource, metric))
        if sid is None:
            cur = self._conn.execute(
                "INSERT INTO series (resource, metric) VALUES (?, ?)", (resource, metric)
            )
            sid = self._series[(resource, metric)] = int(cur.lastrowid or 0)
        return sid

    def _prune(self, now: float) -> None:
        self._pruned_at = now
        self._conn.execute("DELETE FROM raw WHERE at < ?", (now - self._keep[0],))
        for tier in range(1, len(TIERS)):
            self._conn.execute(
                "DELETE FROM buckets WHERE tier = ? AND at < ?", (tier, now - self._keep[tier])
            )

    def tier_for(self, since: float, now: float) -> int:
        """The finest tier whose samples still reach back to ``since``."""
        for tier, keep in enumerate(self._keep):
            if now - keep <= since:
                return tier
        return len(TIERS) - 1

    def series(
        self, *, since: float, now: float, resource: str | None = None, tier: int | None = None
    ) -> dict[str, dict[str, list[Point]]]:
        """``{resource: {metric: points}}`` from ``since``, oldest first."""
        tier = self.tier_for(since, now) if tier is None else tier
        if tier == 0:
            query = (
                "SELECT s.resource, s.metric, r.at, 1, r.value, r.value, r.value"
                " FROM raw r JOIN series s ON s.id = r.series WHERE r.at >= ?"
            )
            args: list[object] = [since]
        else:
            query = (
                "SELECT s.resource, s.metric, b.at, b.n, b.total, b.low, b.high"
                " FROM buckets b JOIN series s ON s.id = b.series WHERE b.tier = ? AND b.at >= ?"
            )
            args = [tier, int(_bucket(since, TIERS[tier]))]
        if resource is not None:
            query += " AND s.resource = ?"
            args.append(resource)
        try:
            rows = self._conn.execute(query, args).fetchall()
        except sqlite3.Error as exc:
            raise PerfHistoryError(f"performance history {self.path}: {exc}") from None
        out: dict[str, dict[str, list[Point]]] = {}
        for res, metric, at, n, total, low, high in sorted(rows, key=lambda r: (r[0], r[1], r[2])):
            out.setdefault(res, {}).setdefault(metric, []).append(
                Point(at=at, mean=total / n, low=low, high=high, n=n)
            )
        return out

    def since(self, after: float, limit: int) -> list[Sample]:
        """Up to ``limit`` samples taken after ``after``, oldest first (for pushing)."""
        try:
            rows = self._conn.execute(
                "SELECT r.at, s.resource, s.metric, r.value FROM raw r"
                " JOIN series s ON s.id = r.series WHERE r.at > ? ORDER BY r.at LIMIT ?",
                (after, limit),
            ).fetchall()
        except sqlite3.Error as exc:
            raise PerfHistoryError(f"performance history {self.path}: {exc}") from None
        return [Sample(at, res, metric, value) for at, res, metric, value in rows]

    def rows(self) -> dict[int, int]:
        """Rows kept per tier."""
        (raw,) = self._conn.execute("SELECT count(*) FROM raw").fetchone()
        found = self._conn.execute("SELECT tier, count(*) FROM buckets GROUP BY tier").fetchall()
        return {0: raw, **{tier: count for tier, count in found}}


def _bucket(at: float, width: float) -> float:
    return at if width == 0 else at - at % width
