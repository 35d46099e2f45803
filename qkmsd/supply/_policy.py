"""Per-pair supply policy at work: rate limits and optional key derivation."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config import SupplyPolicy
from ._errors import Unavailable


class RateLimiter:
    """Token buckets per key (an SAE pair): ``rate_keys_per_s``, up to ``burst_keys``."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, tuple[float, float]] = {}

    def take(self, key: Hashable, n: int, policy: SupplyPolicy) -> None:
        """Spend ``n`` keys of the pair's budget.  Raises ``Unavailable`` if there are too few."""
        if policy.rate_keys_per_s is None:
            return
        now = self._clock()
        tokens, then = self._buckets.get(key, (float(policy.burst_keys), now))
        tokens = min(float(policy.burst_keys), tokens + (now - then) * policy.rate_keys_per_s)
        if tokens < n:
            self._buckets[key] = (tokens, now)
            wait = (n - tokens) / policy.rate_keys_per_s
            raise Unavailable(
                f"rate limit of {policy.rate_keys_per_s:g} keys/s for this SAE pair; "
                f"retry in {wait:.1f} s"
            )
        self._buckets[key] = (tokens - n, now)


def derive_keys(policy: SupplyPolicy, keys: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The keys as delivered: pool bits as they are, or HKDF-SHA256 of them if the pair asks.

    Derivation (RFC 5869) is deterministic in the pool bits and the key ID, so both KMEs of a
    pair deliver the same derived key; it never stretches: the output is as long as the input.
    """
    if policy.derive == "none":
        return keys
    return [(key_id, _hkdf(key, key_id)) for key_id, key in keys]


def _hkdf(key: bytes, key_id: str) -> bytes:
    kdf: Any = HKDF(
        algorithm=hashes.SHA256(),
        length=len(key),
        salt=None,
        info=b"qkms etsi014 service key\0" + key_id.encode("ascii"),
    )
    out: bytes = kdf.derive(key)
    return out
