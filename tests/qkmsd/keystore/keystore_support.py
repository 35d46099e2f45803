"""Helpers shared by the key store tests."""

from __future__ import annotations

import os
from pathlib import Path

from qkmsd.keystore import NewBlock

LINK = "alice:bob"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def block(
    block_id: int,
    key: bytes | None = None,
    *,
    link_id: str = LINK,
    owned: bool = True,
    produced_at: float = 999_000.0,
    qber: float = 0.02,
) -> NewBlock:
    if key is None:
        key = os.urandom(32)
    return NewBlock(link_id, block_id, key, qber, produced_at, owned)


def disk_bytes(path: Path) -> bytes:
    """The database file and its WAL, as an attacker with the disk would see them."""
    wal = path.with_name(path.name + "-wal")
    return path.read_bytes() + (wal.read_bytes() if wal.exists() else b"")
