"""Per-pair supply policy at work: rate limits and optional key derivation."""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..config import SaeLimits, SupplyPolicy
from ._errors import BadRequest, RateLimited, Unavailable


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


class _Bucket:
    """One token bucket: ``rate`` tokens per second, at most ``burst`` held."""

    __slots__ = ("tokens", "then")

    def __init__(self, burst: int, now: float) -> None:
        self.tokens = float(burst)
        self.then = now

    def wait(self, n: int, rate: float, burst: int, now: float) -> float:
        """Seconds until ``n`` tokens are there (0: take them now)."""
        self.tokens = min(float(burst), self.tokens + (now - self.then) * rate)
        self.then = now
        return 0.0 if self.tokens >= n else (n - self.tokens) / rate


class SaeRateLimiter:
    """Per-SAE token buckets for calls and keys (``[saes.X.limits]``).

    Each SAE has its own two buckets, so an SAE over its limit is refused at once and
    cheaply, and the others' budgets are untouched.  ``clock`` is trio's clock in the
    daemon (``trio.current_time``), so tests drive it with ``MockClock``.
    """

    def __init__(self, *, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._requests: dict[str, _Bucket] = {}
        self._keys: dict[str, _Bucket] = {}

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
        self, buckets: dict[str, _Bucket], sae: str, n: int, rate: float, burst: int, what: str
    ) -> None:
        now = self._clock()
        bucket = buckets.get(sae)
        if bucket is None:
            bucket = buckets[sae] = _Bucket(burst, now)
        wait = bucket.wait(n, rate, burst, now)
        if wait > 0.0:
            raise RateLimited(
                f"rate limit of {rate:g} {what}/s for SAE {sae}; retry in {wait:.2f} s",
                retry_after=max(1, math.ceil(wait)),
            )
        bucket.tokens -= n


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
