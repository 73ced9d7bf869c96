"""The history as the outbox (PROTOCOL 12): the durable cursor and the replay.

Two threads. The cursor writer stores each room's acknowledged seq (published.py) as it
moves, many acknowledgements in one write; a clean stop writes the last of it. The
replay sends what a room missed, in seq order, once: at start every message stored after
the cursor (the server may have been stopped or killed with messages the broker never
took), later whatever the in-memory outbox let go of. It reads history a page at a time,
only while the outbox is connected with an empty backlog and half its window free, so the
outbox's bound holds however much history waits.

The database is reached through `CursorStore` (chatroom/storage/publish_cursor.py; app.py
opens it): the bridge imports no storage engine (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from chatroom.core.model import Message
from mqtt_service.outbox import Outbox, Outgoing
from mqtt_service.published import PublishedRooms

log = logging.getLogger("mqtt_service.bridge")

PAGE = 200  # messages read from history at a time (at most half the outbox's bound)
IDLE_WAIT = 0.5  # seconds between two looks while nothing can be sent


class CursorStore(Protocol):
    def load(self, scope: str) -> dict[str, int]: ...
    def save(self, scope: str, cursors: dict[str, int]) -> None: ...
    def newest_per_room(self) -> dict[str, int]: ...
    def newest(self, room: str) -> int: ...
    def after(self, room: str, seq: int, limit: int) -> list[Message]: ...
    def close(self) -> None: ...


def recall(store: CursorStore, scope: str) -> PublishedRooms:
    """Where each room's stream stands: the stored cursors, and the rooms history holds more of."""
    cursors = store.load(scope)
    behind = {room for room, newest in store.newest_per_room().items() if newest > cursors.get(room, 0)}
    if behind:
        log.info("MQTT history holds messages the broker never acknowledged in %d rooms: they are "
                 "published first, in seq order", len(behind))
    return PublishedRooms(cursors, behind)


class HistoryReplay:
    def __init__(self, store: CursorStore, scope: str, rooms: PublishedRooms, outbox: Outbox,
                 render: Callable[[Message], Outgoing], page: int = PAGE):
        """`render`: a stored message as its publication on P/…/messages/out (outbound.py)."""
        self.store = store
        self.scope = scope
        self.rooms = rooms
        self.outbox = outbox
        self.render = render
        self.page = max(1, min(page, outbox.bound // 2))
        self.replayed = 0  # messages published from history
        self._stopped = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for name, target in (("mqtt-history-replay", self._run_replay), ("mqtt-publish-cursor", self._run_writer)):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop both threads; the cursor as acknowledged so far is written, its database closed."""
        self._stopped.set()
        self.rooms.changed.set()
        for thread in self._threads:
            thread.join(timeout)
        self._write()
        self.store.close()

    # --- the cursor writer ---------------------------------------------------------------

    def _run_writer(self) -> None:
        while not self._stopped.is_set():
            self.rooms.changed.wait()
            if not self._stopped.is_set():
                self._write()

    def _write(self) -> None:
        changes = self.rooms.take_changes()
        if not changes:
            return
        try:
            self.store.save(self.scope, changes)
        except Exception:  # the database is away: the next change writes these too
            self.rooms.retry_changes(changes)
            log.exception("MQTT publish cursor not written (%d rooms); retried with the next change", len(changes))
            self._stopped.wait(IDLE_WAIT)

    # --- the replay ------------------------------------------------------------------------

    def _run_replay(self) -> None:
        while not self._stopped.is_set():
            points = self.rooms.replay_points()
            if not points or not self.outbox.has_room():
                self._stopped.wait(IDLE_WAIT if not points else 0.05)
                continue
            for room, after, generation in points:
                try:
                    self._replay_page(room, after, generation)
                except Exception:
                    log.exception("MQTT replay of %r from history failed; tried again", room)
                    self._stopped.wait(IDLE_WAIT)
                if self._stopped.is_set() or not self.outbox.has_room():
                    break

    def _replay_page(self, room: str, after: int, generation: int) -> None:
        messages = self.store.after(room, after, self.page)
        for message in messages:
            if not self.outbox.publish_replayed(self.render(message), generation):
                return  # the room let go again (the broker left): the next round starts over
            self.replayed += 1
        if len(messages) < self.page:
            self.outbox.end_replay(room, generation, lambda: self.store.newest(room))
