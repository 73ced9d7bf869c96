"""Periodic work that keeps state bounded: silent devices leave, old history goes.

Each task is a plain method (tests call it directly with a fake clock); `start()`
runs it every `interval` seconds on a thread of its own until `stop()`.
"""
from __future__ import annotations

import logging
import threading
from datetime import datetime, timedelta, timezone
from typing import Callable

from chatroom.core.errors import Unavailable
from chatroom.core.model import Source, User, utc_timestamp
from chatroom.core.room import Rooms

log = logging.getLogger(__name__)

DEVICE_SOURCE = Source.MQTT


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
            except Unavailable as exc:  # Redis/PostgreSQL away: one line per run, no traceback
                log.warning("%s skipped: %s (%s)", self.name, exc.message, exc.detail)
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


class InstanceWatch(Periodic):
    """Several instances (PROTOCOL 8): says this one is alive, and makes the web
    members of an instance that stopped saying so leave (its sockets died with it),
    so no ghost stays in the user list longer than the registry's TTL.

    `connected(keys)` tells which of this instance's web member keys still have a
    socket here: an entry whose leave was lost (Redis was away when the tab closed)
    goes once it has been seen without a socket at two checks in a row.
    """

    def __init__(self, rooms: Rooms, registry, connected: Callable[[list], set] | None = None):
        super().__init__("instance-watch", max(registry.ttl / 3, 0.5), self.check)
        self.rooms = rooms
        self.registry = registry
        self.connected = connected
        self._orphans: set = set()

    def start(self) -> None:
        if self.registry.was_alive():
            log.warning("instance %s was alive %d s ago: a restart after a crash (or a second server "
                        "with the same INSTANCE_ID); its old web members leave",
                        self.registry.instance_id, self.registry.ttl)
        self.sweep(self.registry.instance_id)  # a restart's old sockets are gone too
        self.registry.beat()
        super().start()

    def stop(self) -> None:
        """A clean stop: this instance's web members leave now, not after the TTL."""
        super().stop()
        try:
            self.sweep(self.registry.instance_id)
        except Unavailable as exc:
            log.warning("web members not removed at stop: %s; they go after INSTANCE_TTL", exc.message)

    def check(self) -> None:
        self.registry.beat()
        for instance in self.registry.dead():
            gone = self.sweep(instance)
            log.info("instance %s stopped beating: %d web members left", instance, gone)
        self._drop_orphans()

    def sweep(self, instance: str) -> int:
        gone = sum(1 for room, key in self.registry.web_members(instance) if self.rooms.leave(room, key))
        self.registry.forget(instance)
        return gone

    def _drop_orphans(self) -> None:
        if self.connected is None:
            return
        mine = self.registry.web_members(self.registry.instance_id)
        live = self.connected([key for _, key in mine])
        orphans = {(room, key) for room, key in mine if key not in live}
        for room, key in orphans & self._orphans:
            if self.rooms.leave(room, key):
                log.info("web member %s of %s had no socket any more: left", key, room)
        self._orphans = orphans
