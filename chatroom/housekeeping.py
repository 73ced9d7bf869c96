"""Periodic work that keeps state bounded: silent devices leave, old history goes.

Each task is a plain method (tests call it directly with a fake clock); `start()`
runs it every `interval` seconds on a thread of its own until `stop()`.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from .messages import User, utc_timestamp
from .room import Rooms

log = logging.getLogger(__name__)

DEVICE_SOURCE = "mqtt"


class Periodic:
    def __init__(self, name: str, interval: float, task: Callable[[], object]):
        self.name, self.interval, self.task = name, interval, task
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.task()
            except Exception:  # a bad run must not end the task for good
                log.exception("%s failed", self.name)


class DeviceTimeout(Periodic):
    """Devices silent for `timeout` seconds leave (MQTT_USER_TIMEOUT; 0 = never).

    Liveness lives in the room (every accepted publication and every repeated
    join refreshes it); this only looks at the clock now and then.
    """

    def __init__(self, rooms: Rooms, timeout: float):
        super().__init__("device-timeout", min(max(timeout / 4, 1.0), 30.0), self.expire)
        self.rooms = rooms
        self.timeout = timeout

    def start(self) -> None:
        if self.timeout > 0:
            super().start()

    def expire(self) -> list[User]:
        gone = self.rooms.expire_silent(DEVICE_SOURCE, self.rooms.clock() - self.timeout)
        for user in gone:
            log.info("device %r in %r was silent for %g s: left", user.client_id, user.room, self.timeout)
        return gone


class HistoryRetention(Periodic):
    """Deletes messages older than HISTORY_RETENTION_DAYS (0 = keep forever), hourly."""

    def __init__(self, store, days: int, now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)):
        super().__init__("history-retention", 3600.0, self.apply)
        self.store, self.days, self.now = store, days, now

    def start(self) -> None:
        if self.days > 0:
            self.apply()  # at start too: a server that restarts daily must still prune
            super().start()

    def apply(self) -> int:
        cutoff = utc_timestamp(self.now() - timedelta(days=self.days))
        deleted = self.store.delete_older_than(cutoff)
        if deleted:
            log.info("history retention: deleted %d messages older than %s", deleted, cutoff)
        return deleted
