"""Home Assistant's birth message re-announces every device entity: at most once a minute,
and paced, so a flood of births or a broker full of devices cannot flood the outbox
(PROTOCOL 9; finding 3 of the trust review: 16 births x 19 000 configs)."""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Sequence, TypeVar

log = logging.getLogger("mqtt_service.homeassistant.device_topics")

MIN_INTERVAL = 60.0  # seconds between two re-announcements
CHUNK = 100          # configs handed to the outbox before waiting for it to have room again
ROOM_TIMEOUT = 30.0  # the broker took nothing for this long: give up (its next birth tries again)

Item = TypeVar("Item")


class Reannouncer:
    def __init__(self, wait_for_room: Callable[[float], bool], clock: Callable[[], float] = time.monotonic):
        """`wait_for_room(deadline)`: True once the outbox can take another chunk."""
        self.wait_for_room = wait_for_room
        self.clock = clock
        self._lock = threading.Lock()
        self._running = False
        self._last_start = float("-inf")
        self._ignored = 0  # births ignored since the last re-announcement (one log line for all)
        self.done = threading.Event()  # set when a re-announcement ends (tests wait on it)

    def start(self, build: Callable[[], Sequence[Item]], send: Callable[[Item], None]) -> bool:
        """Build the items and send them on a thread of its own, unless one ran less than a
        minute ago. Building waits for that thread: an ignored birth costs nothing, and the
        paho thread that received it never builds thousands of configs."""
        with self._lock:
            now = self.clock()
            if self._running or now - self._last_start < MIN_INTERVAL:
                self._ignored += 1
                if self._ignored == 1:
                    log.info("Home Assistant birth ignored: entities were announced %.0f s ago "
                             "(at most once a minute)", now - self._last_start)
                return False
            self._running, self._last_start, self._ignored = True, now, 0
            self.done.clear()
        threading.Thread(target=self._run, args=(build, send), name="ha-reannounce", daemon=True).start()
        return True

    def _run(self, build: Callable[[], Sequence[Item]], send: Callable) -> None:
        sent = 0
        try:
            items = list(build())
            for start in range(0, len(items), CHUNK):
                if not self.wait_for_room(time.monotonic() + ROOM_TIMEOUT):
                    log.warning("Home Assistant re-announcement stopped after %d of %d entities: "
                                "the broker is not taking them", sent, len(items))
                    return
                for item in items[start:start + CHUNK]:
                    send(item)
                    sent += 1
            log.info("Home Assistant is online: %d entities announced again", sent)
        finally:
            with self._lock:
                self._running = False
            self.done.set()
