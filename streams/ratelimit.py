"""Token buckets per client address or write key: a request spends one token, and a bucket
refills at `rate` tokens a second up to a burst of `burst`. An empty bucket answers how long until
the next token: the collector's 429 with Retry-After, the web server's throttling of failed
sign-ins.

The table of buckets is bounded: a bucket that has refilled to full says nothing a new one would
not, so those are forgotten first, and past `max_buckets` the least recently used goes, so a
flood of distinct addresses costs bounded memory (at worst it resets some clients' buckets).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        max_buckets: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`rate` tokens a second (0 switches the limit off), up to `burst` (default: a second's)."""
        self.rate = rate
        self.burst = max(burst if burst is not None else rate, 1.0)
        self.max_buckets = max_buckets
        self._clock = clock
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def __len__(self) -> int:
        return len(self._buckets)

    def wait(self, key: str) -> float:
        """The seconds until `key` has a token to spend (0: now), spending none."""
        bucket = self._buckets.get(key)
        if not self.enabled or bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + (self._clock() - bucket.at) * self.rate)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate

    def take(self, key: str) -> float:
        """Spend a token of `key`'s bucket: 0 when there was one, else the seconds to wait."""
        if not self.enabled:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(self.burst, now)
        else:
            self._buckets.move_to_end(key)
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
            bucket.at = now
        if bucket.tokens >= 1:
            bucket.tokens -= 1
            return 0.0
        return (1 - bucket.tokens) / self.rate

    def _make_room(self, now: float) -> None:
        if len(self._buckets) < self.max_buckets:
            return
        full_after = self.burst / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.at >= full_after]:
            del self._buckets[key]
        while len(self._buckets) >= self.max_buckets:
            self._buckets.popitem(last=False)


def retry_after(wait_s: float) -> str:
    """A Retry-After header's value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait_s)))
