"""`with rooms.batch():` — the calling thread's posts join the room's open group-commit batch."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chatroom.core.room import Rooms


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
            self.rooms._batching.add(self.ident)

    def __exit__(self, *exc_info: object) -> None:
        if self.ident is not None:
            self.rooms._batching.discard(self.ident)
