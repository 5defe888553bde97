"""Per-key token buckets, kept in each worker process.

In memory rather than in Redis on purpose: a Redis-backed limiter costs a round trip (or a
script call on a hot key of one Cluster slot) on every request, including the decisions
whose latency budget is the product, and it would need its own fail-open rule for when
Redis is down, when decisions must keep degrading gracefully. The price is that the limit
is per worker: with N workers behind one port a key may reach N x rate. Operators set the
rate with that in mind (``SENDWISE_RATE_LIMIT_PER_SECOND`` / ``_BURST``).

Buckets exist only for configured keys (unknown keys are refused before a bucket is
touched), so memory is bounded by the key file, not by what clients send.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    """A token bucket per key: ``rate`` tokens per second, holding at most ``burst``."""

    def __init__(self, rate: float, burst: int, *,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        """``monotonic`` is injectable so tests move time instead of sleeping."""
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self._rate = rate
        self._burst = float(burst)
        self._monotonic = monotonic
        #: key -> (tokens, instant they were counted)
        self._buckets: dict[str, tuple[float, float]] = {}

    def take(self, key: str) -> float:
        """Spend one token of ``key``'s bucket: 0.0 when allowed, else the seconds until a
        token is available (the request is refused and spends nothing)."""
        now = self._monotonic()
        tokens, then = self._buckets.get(key, (self._burst, now))
        tokens = min(self._burst, tokens + (now - then) * self._rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1.0 - tokens) / self._rate
