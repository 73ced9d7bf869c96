"""Per-sender rate limiting and the duplicate window.

Both span MQTT, Socket.IO and HTTP alike, so they are owned here rather than
borrowed from an HTTP-only limiter. Both take an injectable clock so tests
never sleep.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from typing import Callable, Hashable


class RateLimiter:
    """Token bucket per sender: `count` messages per `seconds`, bursts up to `count`."""

    def __init__(self, count: int, seconds: float, now: Callable[[], float] = time.monotonic,
                 max_senders: int = 100_000):
        self.count = count
        self.refill_per_second = count / seconds if count > 0 else 0.0
        self.now = now
        self.max_senders = max_senders
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.count > 0

    def allow(self, sender: Hashable) -> bool:
        """Take one token for `sender`; False when its bucket is empty."""
        if not self.enabled:
            return True
        with self._lock:
            now = self.now()
            tokens, last = self._buckets.pop(sender, (float(self.count), now))
            tokens = min(float(self.count), tokens + (now - last) * self.refill_per_second)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[sender] = (tokens, now)
            # Oldest senders first: a full bucket table forgets the least recent.
            while len(self._buckets) > self.max_senders:
                self._buckets.popitem(last=False)
            return allowed


class DedupWindow:
    """Remembers keys for `ttl` seconds.

    `contains` and `remember` are separate so a message that is rejected for
    another reason (rate limit) is not mistaken for a duplicate when re-sent.
    """

    def __init__(self, ttl: float = 600.0, now: Callable[[], float] = time.monotonic,
                 max_keys: int = 200_000):
        self.ttl = ttl
        self.now = now
        self.max_keys = max_keys
        self._expiry: OrderedDict[Hashable, float] = OrderedDict()
        self._lock = threading.Lock()

    def contains(self, key: Hashable) -> bool:
        with self._lock:
            self._expire()
            return key in self._expiry

    def remember(self, key: Hashable) -> None:
        with self._lock:
            self._expire()
            self._expiry[key] = self.now() + self.ttl

    def _expire(self) -> None:
        # Keys are kept in insertion order, so expired ones sit at the front.
        now = self.now()
        while self._expiry:
            expires = next(iter(self._expiry.values()))
            if expires > now and len(self._expiry) <= self.max_keys:
                break
            self._expiry.popitem(last=False)
