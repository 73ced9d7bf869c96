"""The listener bus: each room listener with its own queue and thread.

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
MAX_BACKLOG = 500  # events handed to a `many` listener at once
_STOP = threading.Event()  # the stop sentinel met in a backlog (never set)


class ListenerWorker:
    """Delivers events to one listener, in order, on its own thread."""

    def __init__(self, name: str, callback: Listener, on_failure: Callable[[], None],
                 events: tuple[type, ...] = (), many: Callable[[list[RoomEvent]], None] | None = None):
        self.name = name
        self.callback = callback
        self.events = events  # empty: every event
        self.on_failure = on_failure
        # A listener that can take a backlog at once (one Redis publication for all of it)
        # gets, after each wait, every event already queued behind the first: under load the
        # batches grow by themselves; when quiet, each event goes alone, at once.
        self.many = many
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
            if self.many is None:
                self._each(item if isinstance(item, list) else (item,))
                continue
            events = list(item) if isinstance(item, list) else [item]  # grows with the backlog
            after = self._take_backlog(events)
            try:
                self.many(events)
            except Exception:
                self.on_failure()
                log.exception("listener %s failed on %d events", self.name, len(events))
            if after is not None:
                if after is _STOP:
                    return
                after.set()

    def _each(self, events: "list[RoomEvent] | tuple[RoomEvent]") -> None:
        for event in events:
            try:
                self.callback(event)
            except Exception:
                self.on_failure()
                log.exception("listener %s failed on %s", self.name, type(event).__name__)

    def _take_backlog(self, events: list[RoomEvent]) -> threading.Event | None:
        """Adds the events already queued (up to MAX_BACKLOG) to `events`; returns a drain
        marker or the stop sentinel met on the way, to be handled after them (in order)."""
        while len(events) < MAX_BACKLOG:
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                return None
            if item is None:
                return _STOP
            if isinstance(item, threading.Event):
                return item
            if isinstance(item, list):
                events.extend(item)
            else:
                events.append(item)
        return None

    def wants(self, event: RoomEvent) -> bool:
        return not self.events or isinstance(event, self.events)

    def drain(self, timeout: float) -> bool:
        marker = threading.Event()
        self.queue.put(marker)
        return marker.wait(timeout)

    def stop(self, timeout: float) -> None:
        self.queue.put(None)
        self.thread.join(timeout)


class ListenerBus:
    """Every listener of the rooms. The room calls `deliver` / `deliver_batch` with its lock
    held, so every queue receives events in the same (seq) order."""

    def __init__(self) -> None:
        self.workers: list[ListenerWorker] = []
        self.failures = 0  # listener exceptions, for /metrics
        self._count_lock = threading.Lock()

    def subscribe(self, name: str, listener: Listener, events: tuple[type, ...] = (),
                  many: Callable[[list[RoomEvent]], None] | None = None) -> None:
        self.workers.append(ListenerWorker(name, listener, self._count_failure, events, many))

    def _count_failure(self) -> None:
        with self._count_lock:
            self.failures += 1

    def deliver(self, event: RoomEvent) -> None:
        for worker in self.workers:
            if worker.wants(event):
                worker.queue.put(event)

    def deliver_batch(self, events: list[RoomEvent]) -> None:
        """A committed batch: one queue item (one wake-up) per listener for all of it."""
        for worker in self.workers:
            wanted = [event for event in events if worker.wants(event)]
            if len(wanted) == 1:
                worker.queue.put(wanted[0])
            elif wanted:
                worker.queue.put(wanted)

    def drain(self, timeout: float) -> bool:
        """Wait until every listener has handled every event delivered so far."""
        return all(worker.drain(timeout) for worker in list(self.workers))

    def stop(self, timeout: float) -> None:
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.stop(timeout)
