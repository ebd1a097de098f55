"""Rate limits: requests per API key, and failed authentications per client address.

- Per API key: at most N requests per window, then 429 ``rate_limit_exceeded`` with
  Retry-After. Counted after the key is known, on every request.
- Per client address: at most N failed authentications (a key that is malformed, unknown,
  revoked or expired) per window, then 429 ``too_many_failed_authentications`` with
  Retry-After. Only failures are counted, but the check comes before the key is looked up, so
  an address that has used up its failures is refused even when it finally guesses right.

Two counters with the same contract, each with a non-counting ``blocked`` check.
:class:`MemoryRateLimiter` keeps a token bucket per key in this process (the embedded
deployment, one API process). :class:`RedisRateLimiter` keeps a
fixed-window counter per key in Redis, shared by every API process, with ``INCR`` and
``EXPIRE`` in one transaction so a crash between them cannot leave a counter that never
expires. If Redis is unreachable the request is let through and the failure logged: a broken
counter must not take the whole API down.

:func:`check_request_limits` is the check of a request whose key is already known: the
address's failures, then the key's requests, in one Redis round trip when both count there.
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


AUTH_FAILURE_PREFIX = "bds:authfail:"


class RateLimiter(Protocol):
    """Counts one request of ``key``; returns None if allowed, else seconds until it would be."""

    def hit(self, key: str) -> float | None:
        """Count a request; None if allowed, else the wait in seconds."""
        ...

    def blocked(self, key: str) -> float | None:
        """Without counting: None if a request of ``key`` would be allowed, else the wait."""
        ...


class MemoryRateLimiter:
    """A token bucket per key: ``requests`` tokens, refilled evenly over ``window_s``.

    Full buckets are forgotten once the table holds ``prune_at`` keys (a full bucket and no
    bucket mean the same), so keys that come from outside, such as client addresses, cannot
    grow it without bound.
    """

    def __init__(
        self,
        requests: int,
        window_s: float,
        clock: Clock = time.monotonic,
        *,
        prune_at: int = 10_000,
    ) -> None:
        if requests <= 0 or window_s <= 0:
            raise ValueError(
                f"rate limit needs requests > 0 and window_s > 0, got {requests} and {window_s}"
            )
        self.capacity = float(requests)
        self.refill_per_s = requests / window_s
        self.clock = clock
        self.prune_at = prune_at
        self._next_prune_at = prune_at
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def _tokens(self, key: str, now: float) -> float:
        # Caller holds the lock.
        tokens, updated = self._buckets.get(key, (self.capacity, now))
        return min(self.capacity, tokens + (now - updated) * self.refill_per_s)

    def _wait(self, tokens: float) -> float | None:
        return None if tokens >= 1.0 else (1.0 - tokens) / self.refill_per_s

    def hit(self, key: str) -> float | None:
        """Take a token for ``key``; None if there was one, else seconds until the next."""
        now = self.clock()
        with self._lock:
            if key not in self._buckets and len(self._buckets) >= self._next_prune_at:
                self._forget_full_buckets(now)
            tokens = self._tokens(key, now)
            wait_s = self._wait(tokens)
            self._buckets[key] = (tokens if wait_s is not None else tokens - 1.0, now)
            return wait_s

    def blocked(self, key: str) -> float | None:
        """Without taking a token: None if ``key`` has one, else seconds until it will."""
        now = self.clock()
        with self._lock:
            return self._wait(self._tokens(key, now))

    def _forget_full_buckets(self, now: float) -> None:
        # Caller holds the lock. The next pass waits until the table has doubled, so a table
        # of buckets that are all in use costs one pass per doubling, not one per hit.
        full = [key for key in self._buckets if self._tokens(key, now) >= self.capacity]
        for key in full:
            del self._buckets[key]
        self._next_prune_at = max(self.prune_at, 2 * len(self._buckets))


# KEYS: the address's failure counter, the key's request counter (their current windows).
# ARGV: the failures that block the address, the request counter's lifetime in seconds.
# Like blocked() then hit(): the request is not counted when the address is blocked.
_BLOCKED_THEN_HIT = """
local failures = tonumber(redis.call('GET', KEYS[1]) or '0')
if failures >= tonumber(ARGV[1]) then
  return {failures, 0}
end
local count = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[2])
return {failures, count}
"""


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
        self.url = url
        self.client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
        self._blocked_then_hit = self.client.register_script(_BLOCKED_THEN_HIT)  # no I/O yet
        self.requests = requests
        self.window_s = window_s
        self.prefix = prefix
        self.clock = clock

    def _window(self, key: str) -> tuple[str, float]:
        """The current window's counter name and the seconds until the window ends."""
        now = self.clock()
        window = math.floor(now / self.window_s)
        return f"{self.prefix}{key}:{window}", (window + 1) * self.window_s - now

    def hit(self, key: str) -> float | None:
        """Count a request in the current window; None if within the limit, else the wait."""
        counter, window_left_s = self._window(key)
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
        return window_left_s

    def blocked(self, key: str) -> float | None:
        """Without counting: None if the window has room for one more, else the wait."""
        counter, window_left_s = self._window(key)
        try:
            count = int(self.client.get(counter) or 0)
        except Exception:
            logger.exception("rate-limit counter unavailable; letting the request through")
            return None
        if count < self.requests:
            return None
        return window_left_s

    def hit_unless_blocked(
        self, key: str, failures: RedisRateLimiter, address: str
    ) -> tuple[float | None, float | None]:
        """``failures.blocked(address)`` and, only if that allows it, ``self.hit(key)``, in
        one round trip (a Lua script; ``failures`` counts in the same Redis): the wait of the
        one that refuses, as (address's wait, None) or (None, key's wait), or (None, None)."""
        failure_counter, failure_window_left_s = failures._window(address)
        counter, window_left_s = self._window(key)
        try:
            failed, count = self._blocked_then_hit(
                keys=[failure_counter, counter],
                args=[failures.requests, math.ceil(self.window_s) + 1],
            )
        except Exception:
            logger.exception("rate-limit counter unavailable; letting the request through")
            return None, None
        if int(failed) >= failures.requests:
            return failure_window_left_s, None
        return None, None if int(count) <= self.requests else window_left_s


def _build_limiter(
    settings: Settings, requests: int, window_s: float, prefix: str
) -> RateLimiter | None:
    if requests == 0:
        return None
    if settings.rate_limit_redis_url:
        return RedisRateLimiter(settings.rate_limit_redis_url, requests, window_s, prefix=prefix)
    return MemoryRateLimiter(requests, window_s)


def build_rate_limiter(settings: Settings) -> RateLimiter | None:
    """The per-API-key limiter the settings ask for; None when the limit is off."""
    return _build_limiter(
        settings,
        settings.rate_limit_requests,
        settings.rate_limit_window_seconds,
        "bds:ratelimit:",
    )


def build_auth_failure_limiter(settings: Settings) -> RateLimiter | None:
    """The per-client-address limiter of failed authentications; None when it is off."""
    return _build_limiter(
        settings,
        settings.auth_failure_limit,
        settings.auth_failure_window_seconds,
        AUTH_FAILURE_PREFIX,
    )


def _retry_after(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


def _limit_exceeded(what: str, code: str, wait_s: float) -> LimitExceededError:
    """429 with Retry-After: ``what`` (the limit reached), then the wait in whole seconds."""
    retry_after = _retry_after(wait_s)
    return LimitExceededError(
        f"{what}; retry in {retry_after} s",
        code=code,
        headers={"Retry-After": str(retry_after)},
    )


def _too_many_requests(settings: Settings, wait_s: float) -> LimitExceededError:
    return _limit_exceeded(
        f"rate limit reached: at most {settings.rate_limit_requests} requests per "
        f"{settings.rate_limit_window_seconds:g} s per API key",
        "rate_limit_exceeded",
        wait_s,
    )


def _too_many_failures(settings: Settings, wait_s: float) -> LimitExceededError:
    return _limit_exceeded(
        f"too many failed authentications from your address: at most "
        f"{settings.auth_failure_limit} per {settings.auth_failure_window_seconds:g} s",
        "too_many_failed_authentications",
        wait_s,
    )


def check_rate_limit(limiter: RateLimiter | None, key: str, settings: Settings) -> None:
    """Count a request of ``key``; LimitExceededError (429 with Retry-After) past the limit."""
    if limiter is None:
        return
    wait_s = limiter.hit(key)
    if wait_s is not None:
        raise _too_many_requests(settings, wait_s)


def check_auth_failures(limiter: RateLimiter | None, client: str, settings: Settings) -> None:
    """Refuse a client address that has used up its failed authentications, before its key
    is looked up: LimitExceededError (429 with Retry-After). Counts nothing."""
    if limiter is None:
        return
    wait_s = limiter.blocked(client)
    if wait_s is not None:
        raise _too_many_failures(settings, wait_s)


def check_request_limits(
    failures: RateLimiter | None,
    requests: RateLimiter | None,
    client: str,
    key: str,
    settings: Settings,
) -> None:
    """:func:`check_auth_failures` of ``client``, then :func:`check_rate_limit` of ``key``,
    for a request whose key is known without a lookup: in one round trip when both count in
    the same Redis (the production setting), else one check after the other."""
    if (
        isinstance(failures, RedisRateLimiter)
        and isinstance(requests, RedisRateLimiter)
        and failures.url == requests.url
    ):
        failures_wait_s, requests_wait_s = requests.hit_unless_blocked(key, failures, client)
        if failures_wait_s is not None:
            raise _too_many_failures(settings, failures_wait_s)
        if requests_wait_s is not None:
            raise _too_many_requests(settings, requests_wait_s)
        return
    check_auth_failures(failures, client, settings)
    check_rate_limit(requests, key, settings)


def record_auth_failure(limiter: RateLimiter | None, client: str, settings: Settings) -> None:
    """Count a failed authentication of ``client``; the one that uses up its allowance logs a
    warning naming the address (the requests refused afterwards do not)."""
    if limiter is None:
        return
    if limiter.hit(client) is not None:
        return  # already blocked (concurrent attempts): the block was logged when it began
    wait_s = limiter.blocked(client)
    if wait_s is not None:
        logger.warning(
            "client %s reached %d failed authentications per %g s; refused for %d s",
            client,
            settings.auth_failure_limit,
            settings.auth_failure_window_seconds,
            _retry_after(wait_s),
        )
