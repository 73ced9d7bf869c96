"""A room listener's own queue and thread.

The room feeds every listener's queue in `seq` order while its lock is held, so a slow
listener (the assistant, a broker that is down) never delays the others, and every
listener sees events in the order they happened."""
from __future__ import annotations

import logging
import queue
import threading
from typing import Callable

from chatroom.core.room_types import Listener, RoomEvent

log = logging.getLogger("chatroom.core.room")


class ListenerWorker:
    """Delivers events to one listener, in order, on its own thread."""

    def __init__(self, name: str, callback: Listener, on_failure: Callable[[], None],
                 events: tuple[type, ...] = ()):
        self.name = name
        self.callback = callback
        self.events = events  # empty: every event
        self.on_failure = on_failure
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"room-listener-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):  # a drain() marker
                item.set()
                continue
            # A flushed batch comes as one list: one wake-up of this thread for all of it.
            for event in item if isinstance(item, list) else (item,):
                try:
                    self.callback(event)
                except Exception:
                    self.on_failure()
                    log.exception("listener %s failed on %s", self.name, type(event).__name__)

    def wants(self, event: RoomEvent) -> bool:
        return not self.events or isinstance(event, self.events)

    def drain(self, timeout: float) -> bool:
        marker = threading.Event()
        self.queue.put(marker)
        return marker.wait(timeout)

    def stop(self, timeout: float) -> None:
        self.queue.put(None)
        self.thread.join(timeout)
