"""Key IDs: UUIDv7 (RFC 9562), time-ordered, never derived from key bytes.

ETSI GS QKD 014 asks only for a UUID.  Version 7 puts the creation time (Unix
milliseconds, 48 bits) first and fills the other 74 bits from the CSPRNG, so IDs made one
after another sort one after another.  Both KMEs keep every key ID in a B-tree index for
as long as its row lives: random (v4) IDs land on a random leaf each, so a reservation of
n keys rewrote up to n index pages; time-ordered IDs land on the same rightmost leaf, a
third of the write-ahead log per key (benchmarks/NOTES.md).  The creation time an
ID reveals is known anyway to everyone who sees the ID: the SAEs that asked for the key
and the KMEs that made it.
"""

from __future__ import annotations

import os
import time
import uuid

__all__ = ["new_key_id"]

_VERSION = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_B_MASK = (1 << 62) - 1


def new_key_id() -> str:
    """A fresh key ID: a lower-case UUIDv7 string."""
    millis = time.time_ns() // 1_000_000
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b
    rand_a = rand >> 68
    value = (millis << 80) | _VERSION | (rand_a << 64) | _VARIANT | (rand & _RAND_B_MASK)
    return str(uuid.UUID(int=value))
