"""A short-lived cache, in one process, of the keys that authenticated: most requests of a
busy client then need no database lookup at all.

An entry is keyed by the key's HMAC (never the plaintext) and lives ``ttl_s`` seconds, never
past the key's own ``expires_at``. Revoking a key or changing a tenant's caps in this process
empties every cache of the process at once (:func:`forget_cached_keys`), so the change holds
for its next request; another process (another API worker, the CLI, a direct UPDATE) sees it
within ``ttl_s`` seconds. Only successes are cached: an unknown key is looked up every time.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bds_service.tenants.service import Principal

Clock = Callable[[], float]

_live_caches: weakref.WeakSet[KeyCache] = weakref.WeakSet()
_live_caches_lock = threading.Lock()


class KeyCache:
    """Principals by key hash, each for at most ``ttl_s`` seconds (``max_entries`` at most)."""

    def __init__(
        self, ttl_s: float, *, clock: Clock = time.monotonic, max_entries: int = 10_000
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.ttl_s = ttl_s
        self.clock = clock
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}
        self._lock = threading.Lock()
        with _live_caches_lock:
            _live_caches.add(self)

    def get(self, key_hash: str) -> Principal | None:
        """The cached principal of ``key_hash``, or None when absent or stale."""
        entry = self._entries.get(key_hash)
        if entry is None:
            return None
        valid_until, principal = entry
        if self.clock() >= valid_until:
            with self._lock:
                if self._entries.get(key_hash) is entry:
                    del self._entries[key_hash]
            return None
        return principal

    def put(self, key_hash: str, principal: Principal, expires_at: dt.datetime | None) -> None:
        """Remember ``principal`` for ``ttl_s`` seconds, or until the key's ``expires_at``."""
        now = self.clock()
        valid_until = now + self.ttl_s
        if expires_at is not None:
            left_s = (expires_at - dt.datetime.now(dt.UTC)).total_seconds()
            valid_until = min(valid_until, now + left_s)
        with self._lock:
            if len(self._entries) >= self.max_entries:
                self._entries = {
                    cached: entry for cached, entry in self._entries.items() if entry[0] > now
                }
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[key_hash] = (valid_until, principal)

    def clear(self) -> None:
        """Forget every entry."""
        with self._lock:
            self._entries = {}


def forget_cached_keys() -> None:
    """Empty every key cache of this process (after a key is revoked or a tenant changes)."""
    with _live_caches_lock:
        caches = list(_live_caches)
    for cache in caches:
        cache.clear()
