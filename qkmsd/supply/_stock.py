"""Per-pair key stock: keys the slave's KME already holds, ready for the master.

ETSI GS QKD 014 pictures KMEs that share keys for an SAE pair before the master asks
(Status ``stored_key_count``).  A stock is that: keys cut from the link and recorded at
the slave's KME (``supply.reserve``, durable there) ahead of demand, held here in memory
until a master's ``enc_keys`` takes them.  A request served from it needs no peer round
trip and no commit: the bits were burnt here when they were cut, and the slave's KME
has the keys for the named slave.

Nothing here is persisted.  After a restart the stock is gone: its keys stay at the
slave's KME, unknown to any SAE, until they expire there; their bits are lost, never
reused.  A key is handed out only while at least half of its validity is left, so that
a slave has about as long to fetch it as a key reserved on request.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Sequence

from ..keystore import CutKey


@dataclasses.dataclass(frozen=True, slots=True)
class _Stocked:
    key: CutKey
    expires_at: float
    validity_s: float


class PairStock:
    """The stock of one (master, slave) pair; sans-IO: the agent fills it."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.refilling = False
        self.failed_at = float("-inf")
        self._keys: collections.deque[_Stocked] = collections.deque()
        self.dropped = 0

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, keys: Sequence[CutKey], *, expires_at: float, validity_s: float) -> None:
        self._keys.extend(_Stocked(k, expires_at, validity_s) for k in keys)

    def take(self, number: int, *, now: float, size_bits: int | None = None) -> list[CutKey] | None:
        """``number`` keys, oldest first, or None (nothing taken) if there are fewer.

        With ``size_bits``, keys of another size (cut before the pair's key size changed,
        by a policy or a key profile) are dropped first: their bits are lost, never
        handed out at the wrong size."""
        self._drop_stale(now)
        if size_bits is not None and any(len(s.key.key) * 8 != size_bits for s in self._keys):
            kept = [s for s in self._keys if len(s.key.key) * 8 == size_bits]
            self.dropped += len(self._keys) - len(kept)
            self._keys = collections.deque(kept)
        if len(self._keys) < number:
            return None
        return [self._keys.popleft().key for _ in range(number)]

    def wanted(self, now: float, *, retry_after: float) -> int:
        """How many keys a refill should add now: 0 while one runs, within ``retry_after``
        seconds of a failed refill, or while the stock is above half its target."""
        if self.refilling or now - self.failed_at < retry_after:
            return 0
        return self.shortfall(now)

    def shortfall(self, now: float) -> int:
        """Keys missing from the target once half of it or more is gone, else 0: refills
        come in few large reservations rather than many small ones."""
        self._drop_stale(now)
        if len(self._keys) > self.target // 2:
            return 0
        return self.target - len(self._keys)

    def _drop_stale(self, now: float) -> None:
        # Refills append keys with later expiries, so the stale ones are at the front.
        while self._keys and self._keys[0].expires_at - now < self._keys[0].validity_s / 2:
            self._keys.popleft()
            self.dropped += 1
