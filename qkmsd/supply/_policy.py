"""Per-pair supply policy at work: rate limits and optional key derivation."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config import SaeLimits, SupplyPolicy
from ..tokenbucket import TokenBucket
from ._errors import BadRequest, RateLimited, Unavailable


class RateLimiter:
    """Token buckets per key (an SAE pair): ``rate_keys_per_s``, up to ``burst_keys``."""

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._buckets: dict[Hashable, TokenBucket] = {}

    def take(self, key: Hashable, n: int, policy: SupplyPolicy) -> None:
        """Spend ``n`` keys of the pair's budget.  Raises ``Unavailable`` if there are too few."""
        if policy.rate_keys_per_s is None:
            return
        bucket = _bucket(
            self._buckets, key, policy.rate_keys_per_s, policy.burst_keys, self._clock()
        )
        wait = bucket.wait(n, bucket.at)
        if wait > 0.0:
            raise Unavailable(
                f"rate limit of {policy.rate_keys_per_s:g} keys/s for this SAE pair; "
                f"retry in {wait:.1f} s"
            )
        bucket.take(n)


def _bucket(
    buckets: dict[Any, TokenBucket], key: Hashable, rate: float, burst: int, now: float
) -> TokenBucket:
    """``key``'s bucket (new ones start full), up to date at ``now`` under limits that may
    have been reloaded since the last look: the tokens earned so far are kept."""
    bucket = buckets.get(key)
    if bucket is None:
        bucket = buckets[key] = TokenBucket(rate, now, full=True, depth=burst)
    bucket.fixed_depth = burst
    bucket.set_rate(rate, now)
    return bucket


class SaeRateLimiter:
    """Per-SAE token buckets for calls and keys (``[saes.X.limits]``).

    Each SAE has its own two buckets, so an SAE over its limit is refused at once and
    cheaply, and the others' budgets are untouched.  ``clock`` is trio's clock in the
    daemon (``trio.current_time``), so tests drive it with ``MockClock``.
    """

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._requests: dict[str, TokenBucket] = {}
        self._keys: dict[str, TokenBucket] = {}

    def request(self, sae: str, limits: SaeLimits) -> None:
        """Spend one call.  Raises ``RateLimited`` over ``requests_per_s``."""
        if limits.requests_per_s is None:
            return
        self._take(self._requests, sae, 1, limits.requests_per_s, limits.burst_requests, "calls")

    def keys(self, sae: str, n: int, limits: SaeLimits) -> None:
        """Spend ``n`` keys.  Raises ``RateLimited`` over ``keys_per_s``, ``BadRequest`` if
        ``n`` is more than the bucket ever holds."""
        if limits.keys_per_s is None:
            return
        if n > limits.burst_keys:
            raise BadRequest(
                f"{n} keys in one request exceed this SAE's burst_keys {limits.burst_keys}"
            )
        self._take(self._keys, sae, n, limits.keys_per_s, limits.burst_keys, "keys")

    def _take(
        self, buckets: dict[str, TokenBucket], sae: str, n: int, rate: float, burst: int, what: str
    ) -> None:
        bucket = _bucket(buckets, sae, rate, burst, self._clock())
        wait = bucket.wait(n, bucket.at)
        if wait > 0.0:
            raise RateLimited(
                f"rate limit of {rate:g} {what}/s for SAE {sae}; retry in {wait:.2f} s",
                retry_after=max(1, math.ceil(wait)),
            )
        bucket.take(n)


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
