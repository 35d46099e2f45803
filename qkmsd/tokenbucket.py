"""A token bucket: the one arithmetic behind the controller's budgets and the SAE rate limits.

Tokens (bits of key, keys, calls) flow in at ``rate`` per second up to a depth, and a draw
takes them out.  The depth is either fixed (``depth``: a rate limit's burst) or a number of
seconds' worth of the rate (``burst_s``: a budget), and then never less than the draw being
asked for, so that a draw larger than the burst can still pass once the bucket has filled
to it.  Time is passed in (``now``, seconds on any monotonic clock the caller keeps): no
clock, no I/O here, so tests drive it with explicit times.

Users: the relay agent's per-pool budgets (a new budget starts empty), the direct-link
source's budgets for QKD neighbours (a new budget starts full, so a pair that asks every
few seconds does not wait for its first request) and the supply's per-SAE and per-pair rate
limits (start full).
"""

from __future__ import annotations

import math

ROUNDING = 1e-9
"""A draw passes when the bucket holds all of it but this fraction: no Zeno's wait for a
rounding error in ``rate * elapsed``."""


class TokenBucket:
    """``rate`` tokens per second, at most ``depth`` (or ``burst_s`` seconds' worth) held.

    ``full``: a new bucket starts at its depth, else empty.  Pass exactly one of ``depth``
    and ``burst_s``; with ``burst_s``, ``draw`` is the size of the draws the owner makes (a
    relay's key): the bucket always holds at least one, whatever the rate, also while the
    rate changes.  Times only move forward: an earlier ``now`` than the last adds nothing.
    """

    __slots__ = ("at", "burst_s", "draw", "fixed_depth", "overflowed", "rate", "tokens")

    def __init__(
        self,
        rate: float,
        now: float,
        *,
        full: bool,
        depth: float | None = None,
        burst_s: float | None = None,
        draw: float = 0.0,
    ) -> None:
        if (depth is None) == (burst_s is None):
            raise ValueError("a token bucket needs exactly one of depth and burst_s")
        self.rate = rate
        self.fixed_depth = depth
        self.burst_s = burst_s
        self.draw = draw
        self.at = now
        self.tokens = self.depth(0.0) if full else 0.0
        self.overflowed = 0.0
        """Tokens that flowed in while the bucket was full, so were never there to spend:
        a budget left unused (the caller was waiting on something else)."""

    def depth(self, asked: float) -> float:
        """The most the bucket holds while a draw of ``asked`` waits."""
        if self.fixed_depth is not None:
            return self.fixed_depth
        assert self.burst_s is not None
        return max(asked, self.draw, self.rate * self.burst_s)

    def refill(self, now: float, asked: float = 0.0) -> None:
        """Add what flowed in since the last look, up to the depth for a draw of ``asked``."""
        elapsed = max(0.0, now - self.at)
        filled = self.tokens + elapsed * self.rate
        self.tokens = min(self.depth(asked), filled)
        self.overflowed += max(0.0, filled - self.tokens)
        self.at = max(self.at, now)

    def has(self, n: float, now: float) -> bool:
        """Whether ``n`` tokens are there now (nothing is taken)."""
        self.refill(now, n)
        return self.tokens >= n * (1 - ROUNDING)

    def wait(self, n: float, now: float) -> float:
        """Seconds until ``n`` tokens are there: 0 if they are now (nothing is taken),
        ``math.inf`` if the rate is 0 and they are not."""
        if self.has(n, now):
            return 0.0
        if self.rate <= 0:
            return math.inf
        return (n - self.tokens) / self.rate

    def take(self, n: float) -> None:
        """Spend ``n`` tokens (never below empty: the rounding ``has`` forgives)."""
        self.tokens = max(0.0, self.tokens - n)

    def give(self, n: float) -> None:
        """Return ``n`` tokens a draw did not spend (the depth applies at the next look)."""
        self.tokens += n

    def set_rate(self, rate: float, now: float) -> None:
        """Change the rate from ``now`` on: the tokens earned at the old rate are kept."""
        self.refill(now)
        self.rate = rate


BUDGET_BURST_S = 2.0
"""A controller's budget lets this many seconds' worth of it be drawn at once (at least the
draw asked for: one relay, one request)."""
