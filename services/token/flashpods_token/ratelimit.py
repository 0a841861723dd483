"""Token-bucket rate limit per caller identity, so one container cannot starve the rest."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        per_s: float,
        burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = 10000,
    ) -> None:
        self._rate = float(per_s)
        self._burst = float(burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> tuple[bool, float]:
        """Take one token for `key`; return (allowed, seconds until the next token)."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self._burst, now))
            tokens = min(self._burst, tokens + (now - last) * self._rate)
            if tokens >= 1.0:
                self._store(key, tokens - 1.0, now)
                return True, 0.0
            self._store(key, tokens, now)
            wait = (1.0 - tokens) / self._rate if self._rate > 0 else 60.0
            return False, wait

    def _store(self, key: str, tokens: float, now: float) -> None:
        if key not in self._buckets and len(self._buckets) >= self._max_keys:
            # Forget full buckets first: they carry no state worth keeping.
            full = [
                k
                for k, (t, last) in self._buckets.items()
                if t + (now - last) * self._rate >= self._burst
            ]
            for k in full or list(self._buckets)[: self._max_keys // 10]:
                del self._buckets[k]
        self._buckets[key] = (tokens, now)
