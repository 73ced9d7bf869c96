"""Group commit: one process relaying a burst stores it in one transaction.

`with rooms.batch():` (ThreadBatch) marks the calling thread; its posts go into the open
batch (`OpenBatch`): one uncommitted store transaction, with their events staged. `flush`
commits, then hands the whole batch to each listener as one queue item. Anyone else who
posts or publishes while a batch is open flushes it first, so "stored before published"
and the one event order hold for everyone. The room calls every `OpenBatch` method with
its lock held.

Two ways to store a batch: this process numbers the rooms (one process on SQLite) and the
messages go into an open store transaction as they come; or the store numbers them
(PostgreSQL, several instances): drafts wait here and `append_numbered` stores and numbers
them all in one transaction at `flush`. When that store is away (`Unavailable`) nothing
is lost: the batch stays open and `flush` raises, for the caller to hold and retry.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from chatroom.core.errors import Unavailable
from chatroom.core.listeners import ListenerBus
from chatroom.core.model import Message
from chatroom.core.ports import History, Presence
from chatroom.core.room_types import RoomEvent

if TYPE_CHECKING:
    from chatroom.core.room import Rooms

log = logging.getLogger("chatroom.core.room")


class OpenBatch:
    def __init__(self, history: History, bus: ListenerBus, presence: Presence) -> None:
        self.history = history
        self.presence = presence
        self.bus = bus
        # Threads posting into the batch (idents: eventlet's green locals cost ~2 µs a look).
        self.threads: set[int] = set()
        self.open = False                   # messages sit in an uncommitted store transaction
        self.staged: list[RoomEvent] = []   # the batch's events, in order
        self.drafts: list[Message] = []     # messages the store numbers at flush (UNNUMBERED)
        self.messages_lost = 0              # stored in a batch whose commit failed

    def holds_this_thread(self) -> bool:
        return bool(self.threads) and threading.get_ident() in self.threads

    def append(self, message: Message) -> None:
        self.open = True  # before: a failed insert still leaves a transaction to end
        self.history.append_to_batch(message)

    def append_draft(self, message: Message) -> None:
        """A message the store numbers when the batch is committed."""
        self.drafts.append(message)

    def flush(self) -> None:
        if not self.open and not self.staged and not self.drafts:
            return
        if self.drafts:
            try:
                self.history.append_numbered(self.drafts)
            except Unavailable:
                # The store is away and stored none of it: the batch stays whole (drafts and
                # events) for the next flush, and the caller holds what it is handling.
                raise
            except Exception:
                self._lose(self.drafts)
            self.drafts = []
        staged, self.staged = self.staged, []
        if self.open:
            self.open = False
            try:
                self.history.commit_batch()
            except Exception:
                staged = self._lose(staged)
        self.bus.deliver_batch(staged)
        try:
            self.presence.write_touches()
        except Unavailable:  # stored already: lost bookkeeping must not make senders retry
            log.warning("liveness of the batch's senders not written: shared state unavailable")

    def _lose(self, events: list) -> list[RoomEvent]:
        """Not stored, so not published: the same loss as a failed single insert. Returns
        the batch's events without the lost messages."""
        lost = {id(event) for event in events if isinstance(event, Message)}
        self.messages_lost += len(lost)
        log.exception("history commit failed: %d messages lost", len(lost))
        self.staged = [event for event in self.staged if id(event) not in lost]
        return [event for event in events if id(event) not in lost]


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
