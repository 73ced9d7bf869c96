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

from cachetools import TTLCache


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

    def wait_time(self, sender: Hashable) -> float:
        """Seconds until `sender` may send again (0 when it may now). Takes nothing."""
        if not self.enabled:
            return 0.0
        with self._lock:
            tokens = self._tokens(sender, self.now())
            return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.refill_per_second

    def take(self, sender: Hashable) -> None:
        """Spend one token of `sender` (never below zero): called once an input is accepted."""
        if not self.enabled:
            return
        with self._lock:
            now = self.now()
            tokens = self._tokens(sender, now)
            self._buckets.pop(sender, None)
            self._buckets[sender] = (max(0.0, tokens - 1.0), now)
            # Oldest senders first: a full bucket table forgets the least recent.
            while len(self._buckets) > self.max_senders:
                self._buckets.popitem(last=False)

    def _tokens(self, sender: Hashable, now: float) -> float:
        tokens, last = self._buckets.get(sender, (float(self.count), now))
        return min(float(self.count), tokens + (now - last) * self.refill_per_second)


class DedupWindow:
    """Remembers keys (with a value: the accepted message's id) for `ttl` seconds, at most
    `max_keys` of them (cachetools' TTLCache; the least recently used key gives way first).

    `get` and `remember` are separate: only what the intake accepted is
    remembered, so a corrected resend of a rejected message goes through.
    """

    def __init__(self, ttl: float = 600.0, now: Callable[[], float] = time.monotonic,
                 max_keys: int = 200_000):
        self.ttl = ttl
        self._entries: TTLCache[Hashable, object] = TTLCache(maxsize=max_keys, ttl=ttl, timer=now)
        self._lock = threading.Lock()  # TTLCache is not thread-safe

    def get(self, key: Hashable) -> object | None:
        """What was remembered for `key` (the accepted message's id), or None."""
        with self._lock:
            return self._entries.get(key)

    def remember(self, key: Hashable, value: object = True) -> None:
        with self._lock:
            self._entries[key] = value

    def claim(self, key: Hashable, message_id: str, holds: Callable[[str], bool]) -> str | None:
        """None: `message_id` is now remembered for `key` (store it). Else the id of the message
        remembered for it, which `holds` says is stored (a duplicate). One process: the caller
        holds the room's lock, so nobody else is between the two steps."""
        with self._lock:
            original = self._entries.get(key)
            if isinstance(original, str) and holds(original):
                return original
            # Remembered but not stored: whoever took it died before storing, so this
            # retry is the message's only copy.
            self._entries[key] = message_id
            return None


class Throttle:
    """At most `count` events per `seconds` per key; the rest are counted, not acted on.

    For what a stranger can make us do per message besides the work itself:
    log lines and error replies. `allow` answers whether to act now and how
    many were held back since the last time it said yes (for one summary line).
    The table of keys is bounded: the least recently seen key is forgotten first.
    """

    def __init__(self, count: int = 5, seconds: float = 60.0, now: Callable[[], float] = time.monotonic,
                 max_keys: int = 10_000):
        self.count, self.seconds, self.now, self.max_keys = count, seconds, now, max_keys
        self._windows: OrderedDict[Hashable, list] = OrderedDict()  # key -> [window start, used, held back]
        self._lock = threading.Lock()

    def allow(self, key: Hashable) -> tuple[bool, int]:
        with self._lock:
            now = self.now()
            window = self._windows.pop(key, None)
            if window is None or now - window[0] >= self.seconds:
                held_back = window[2] if window else 0
                window = [now, 0, 0]
            else:
                held_back = 0
            self._windows[key] = window
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
            if window[1] < self.count:
                window[1] += 1
                return True, held_back
            window[2] += 1
            return False, 0


class RecentSet:
    """A set that forgets its least recently added item beyond `max_items`."""

    def __init__(self, max_items: int):
        self.max_items = max_items
        self._items: OrderedDict[Hashable, None] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, item: Hashable) -> None:
        with self._lock:
            if item in self._items:
                self._items.move_to_end(item)
                return
            self._items[item] = None
            if len(self._items) > self.max_items:
                self._items.popitem(last=False)

    def discard(self, item: Hashable) -> None:
        with self._lock:
            self._items.pop(item, None)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __len__(self) -> int:
        return len(self._items)
