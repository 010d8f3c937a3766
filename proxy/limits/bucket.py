"""A token bucket: a sustained rate with bursts up to a capacity. Pure; the clock is passed in.

Each principal has one. A request that goes to the engine takes a token; tokens come back
at `rate` per second up to `capacity`. An empty bucket tells how long until the next token,
which becomes the 429's `Retry-After`.
"""

from __future__ import annotations

import math


class TokenBucket:
    """`capacity` tokens at most, refilled continuously at `rate` tokens per second."""

    __slots__ = ("_tokens", "_updated")

    def __init__(self, capacity: float, now: float) -> None:
        self._tokens = float(capacity)
        self._updated = now

    def take(self, rate: float, capacity: float, now: float) -> float:
        """Take one token: 0.0 on success, else the seconds until one is available."""
        # Refilled first. The rate and capacity come with each call: a config reload changes
        # them in place. (Inline, with comparisons instead of max/min: this runs for every
        # request sent to the engine.)
        elapsed = now - self._updated
        tokens = self._tokens
        if elapsed > 0.0:
            tokens += elapsed * rate
        if tokens > capacity:
            tokens = float(capacity)
        self._updated = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return 0.0
        self._tokens = tokens
        return (1.0 - tokens) / rate

    def wait(self, rate: float, capacity: float, now: float) -> float:
        """Seconds until a token is available (0.0: one is now), taking nothing: for a
        request that must pass another check before it is charged."""
        tokens = min(float(capacity), self._tokens + max(0.0, now - self._updated) * rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / rate

    def full(self, rate: float, capacity: float, now: float) -> bool:
        """Would the bucket be full at `now`? (A full, idle bucket need not be kept.)"""
        elapsed = max(0.0, now - self._updated)
        return self._tokens + elapsed * rate >= capacity


def retry_after_seconds(wait: float) -> int:
    """A `Retry-After` value (whole seconds, at least 1) for a wait in seconds."""
    return max(1, math.ceil(wait))
