"""Per-API-key rate limit: at most N requests per window, then 429 with Retry-After.

Two counters with the same contract. :class:`MemoryRateLimiter` keeps a token bucket per key
in this process (the embedded deployment, one API process). :class:`RedisRateLimiter` keeps a
fixed-window counter per key in Redis, shared by every API process, with ``INCR`` and
``EXPIRE`` in one transaction so a crash between them cannot leave a counter that never
expires. If Redis is unreachable the request is let through and the failure logged: a broken
counter must not take the whole API down.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import Protocol

from bds_service.errors import LimitExceededError
from bds_service.settings import Settings

logger = logging.getLogger(__name__)

Clock = Callable[[], float]


class RateLimiter(Protocol):
    """Counts one request of ``key``; returns None if allowed, else seconds until it would be."""

    def hit(self, key: str) -> float | None:
        """Count a request; None if allowed, else the wait in seconds."""
        ...


class MemoryRateLimiter:
    """A token bucket per key: ``requests`` tokens, refilled evenly over ``window_s``."""

    def __init__(self, requests: int, window_s: float, clock: Clock = time.monotonic) -> None:
        if requests <= 0 or window_s <= 0:
            raise ValueError(
                f"rate limit needs requests > 0 and window_s > 0, got {requests} and {window_s}"
            )
        self.capacity = float(requests)
        self.refill_per_s = requests / window_s
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def hit(self, key: str) -> float | None:
        """Take a token for ``key``; None if there was one, else seconds until the next."""
        now = self.clock()
        with self._lock:
            tokens, updated = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.refill_per_s)
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return None
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.refill_per_s


class RedisRateLimiter:
    """A fixed-window counter per key in Redis, shared by every API process."""

    def __init__(
        self,
        url: str,
        requests: int,
        window_s: float,
        *,
        prefix: str = "bds:ratelimit:",
        clock: Clock = time.time,
    ) -> None:
        import redis

        if requests <= 0 or window_s <= 0:
            raise ValueError(
                f"rate limit needs requests > 0 and window_s > 0, got {requests} and {window_s}"
            )
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self.requests = requests
        self.window_s = window_s
        self.prefix = prefix
        self.clock = clock

    def hit(self, key: str) -> float | None:
        """Count a request in the current window; None if within the limit, else the wait."""
        now = self.clock()
        window = math.floor(now / self.window_s)
        counter = f"{self.prefix}{key}:{window}"
        try:
            pipeline = self.client.pipeline(transaction=True)
            pipeline.incr(counter)
            pipeline.expire(counter, math.ceil(self.window_s) + 1)
            count = int(pipeline.execute()[0])
        except Exception:
            logger.exception("rate-limit counter unavailable; letting the request through")
            return None
        if count <= self.requests:
            return None
        return (window + 1) * self.window_s - now


def build_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The limiter the settings ask for; None when the limit is off."""
    if settings.rate_limit_requests == 0:
        return None
    if settings.rate_limit_redis_url:
        return RedisRateLimiter(
            settings.rate_limit_redis_url,
            settings.rate_limit_requests,
            settings.rate_limit_window_seconds,
        )
    return MemoryRateLimiter(settings.rate_limit_requests, settings.rate_limit_window_seconds)


def check_rate_limit(limiter: RateLimiter | None, key: str, settings: Settings) -> None:
    """Count a request of ``key``; LimitExceededError (429 with Retry-After) past the limit."""
    if limiter is None:
        return
    wait_s = limiter.hit(key)
    if wait_s is None:
        return
    retry_after = max(1, math.ceil(wait_s))
    raise LimitExceededError(
        f"rate limit reached: at most {settings.rate_limit_requests} requests per "
        f"{settings.rate_limit_window_seconds:g} s per API key; retry in {retry_after} s",
        code="rate_limit_exceeded",
        headers={"Retry-After": str(retry_after)},
    )
