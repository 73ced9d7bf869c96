"""Group commit: one process relaying a burst stores it in one transaction.

`with rooms.batch():` (ThreadBatch) marks the calling thread; its posts go into the open
batch (`OpenBatch`): one uncommitted store transaction, with their events staged. `flush`
commits, then hands the whole batch to each listener as one queue item. Anyone else who
posts or publishes while a batch is open flushes it first, so "stored before published"
and the one event order hold for everyone. The room calls every `OpenBatch` method with
its lock held.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from chatroom.core.listeners import ListenerBus
from chatroom.core.model import Message
from chatroom.core.ports import History
from chatroom.core.room_types import RoomEvent

if TYPE_CHECKING:
    from chatroom.core.room import Rooms

log = logging.getLogger("chatroom.core.room")


class OpenBatch:
    def __init__(self, history: History, bus: ListenerBus) -> None:
        self.history = history
        self.bus = bus
        # Threads posting into the batch (idents: eventlet's green locals cost ~2 µs a look).
        self.threads: set[int] = set()
        self.open = False                   # messages sit in an uncommitted store transaction
        self.staged: list[RoomEvent] = []   # the batch's events, in order
        self.messages_lost = 0              # stored in a batch whose commit failed

    def holds_this_thread(self) -> bool:
        return bool(self.threads) and threading.get_ident() in self.threads

    def append(self, message: Message) -> None:
        self.open = True  # before: a failed insert still leaves a transaction to end
        self.history.append_to_batch(message)

    def flush(self) -> None:
        if not self.open and not self.staged:
            return
        staged, self.staged = self.staged, []
        if self.open:
            self.open = False
            try:
                self.history.commit_batch()
            except Exception:
                # Not stored, so not published: the same loss as a failed single insert.
                lost = [event for event in staged if isinstance(event, Message)]
                staged = [event for event in staged if not isinstance(event, Message)]
                self.messages_lost += len(lost)
                log.exception("history commit failed: %d messages lost", len(lost))
        self.bus.deliver_batch(staged)


class ThreadBatch:
    """`with rooms.batch():` for the calling thread. A class rather than a generator
    context manager: the bridge enters one per MQTT message."""

    __slots__ = ("rooms", "ident")

    def __init__(self, rooms: "Rooms"):
        self.rooms = rooms
        self.ident: int | None = None

    def __enter__(self) -> None:
        if self.rooms.group_commit:
            self.ident = threading.get_ident()
            self.rooms.open_batch.threads.add(self.ident)

    def __exit__(self, *exc_info: object) -> None:
        if self.ident is not None:
            self.rooms.open_batch.threads.discard(self.ident)
