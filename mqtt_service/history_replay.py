"""The history as the outbox (PROTOCOL 12): the durable cursor and the replay.

Two threads. The cursor writer stores each room's acknowledged seq (published.py) as it
moves, at most every WRITE_INTERVAL, many acknowledgements in one write, never waiting for
the database's write lock (busy: tried again); a clean stop writes the last of it. The
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
import time
from typing import Callable, Protocol

from chatroom.core.model import Message
from mqtt_service.outbox import Outbox, Outgoing
from mqtt_service.published import PublishedRooms

log = logging.getLogger("mqtt_service.bridge")

PAGE = 200  # messages read from history at a time (at most half the outbox's bound)
IDLE_WAIT = 0.5  # seconds between two looks while no room is behind
BEHIND_WAIT = 0.2  # seconds between two looks while a room is behind and the outbox has no room
BUSY_WAIT = 0.05  # seconds before writing the cursor again at a stop, when the database was busy
WRITE_INTERVAL = 0.05  # seconds between two cursor writes (a crash may publish this much again)
FAILING_LOUDLY = 10.0  # seconds of failed cursor writes before one warning line


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
        self._failing_since = 0.0
        self._said_failing = False
        self._said_replay_failing = False
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
        deadline = time.monotonic() + timeout
        while not self._write() and time.monotonic() < deadline:
            time.sleep(BUSY_WAIT)  # the last cursor is worth a moment: it spares a replay after the restart
        self.store.close()

    def numbers(self) -> dict:
        """For /mqtt/status."""
        return {"rooms_behind": len(self.rooms.behind), "replayed": self.replayed,
                "let_go": self.rooms.let_go_count, "unacknowledged": self.rooms.outstanding()}

    # --- the cursor writer ---------------------------------------------------------------

    def _run_writer(self) -> None:
        while not self._stopped.is_set():
            self.rooms.changed.wait()
            if self._stopped.is_set():
                return
            self._write()
            # At most one write per WRITE_INTERVAL: a burst's acknowledgements share one, and the
            # history's own commits keep the file's write lock most of the time.
            self._stopped.wait(WRITE_INTERVAL)

    def _write(self) -> bool:
        """Write the cursors that moved; False when the database could not take them now."""
        changes = self.rooms.take_changes()
        if not changes:
            return True
        try:
            self.store.save(self.scope, changes)
        except Exception as exc:  # busy (the history's open batch) or away: written with the next try
            self.rooms.retry_changes(changes)
            self._failing_since = self._failing_since or time.monotonic()
            if time.monotonic() - self._failing_since > FAILING_LOUDLY and not self._said_failing:
                self._said_failing = True
                log.warning("MQTT publish cursor not written for %.0f s (%s); still trying",
                            FAILING_LOUDLY, " ".join(str(exc).split())[:200])
            return False
        if self._said_failing:
            log.info("MQTT publish cursor written again")
        self._failing_since, self._said_failing = 0.0, False
        return True

    # --- the replay ------------------------------------------------------------------------

    def _run_replay(self) -> None:
        while not self._stopped.is_set():
            points = self.rooms.replay_points()
            if not points or not self.outbox.has_room():
                self._stopped.wait(IDLE_WAIT if not points else BEHIND_WAIT)
                continue
            for room, after, generation in points:
                try:
                    self._replay_page(room, after, generation)
                except Exception as exc:  # the database is away: the room stays behind
                    if not self._said_replay_failing:  # one line per failing streak
                        self._said_replay_failing = True
                        log.warning("MQTT replay of %r from history failed (%s); trying again", room,
                                    " ".join(str(exc).split())[:200])
                    self._stopped.wait(IDLE_WAIT)
                    break
                self._said_replay_failing = False
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
