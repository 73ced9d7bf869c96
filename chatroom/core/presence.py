"""Where the room state that several instances must share lives (docs/ARCHITECTURE.md).

Members of every room, their liveness, and each room's `seq`: `LocalPresence`
keeps them in this process (one instance, the default); `RedisPresence`
(chatroom/storage/redis_state.py) keeps members in Redis so that every instance sees the
same ones, and leaves `seq` to the shared history store (`numbers_rooms` False): it
numbers each message in the transaction that stores it (gap-free across
instances, even when one dies mid-message). `Rooms` holds the rules (names,
bounds, events); a presence only stores. Stdlib only.

Callers that change a member's fields write it back with `put`: a shared
presence hands out copies, not the stored object.
"""
from __future__ import annotations

import threading
from typing import Callable, ContextManager

from chatroom.core.model import User
from chatroom.core.ports import MemberKey


class LocalPresence:
    """Presence in this process. The caller (Rooms) serialises changes; the small
    lock only keeps readers on other threads from seeing a dict mid-change."""

    def __init__(self, numbers_rooms: bool = True) -> None:
        # False with PostgreSQL: the store numbers each room in the transaction that stores
        # a message or a batch, as it does for several instances.
        self.numbers_rooms = numbers_rooms
        # Not re-entrant: no method calls another under it (eventlet's RLock costs twice a Lock).
        self._lock = threading.Lock()
        self._members: dict[str, dict[MemberKey, User]] = {}
        # A room's seq is kept while it has members; otherwise the store's newest
        # message says where it continues (after a restart, too).
        self._seq: dict[str, int] = {}

    def member(self, room: str, key: MemberKey) -> User | None:
        members = self._members.get(room)
        return members.get(key) if members else None

    def members(self, room: str) -> dict[MemberKey, User]:
        with self._lock:
            return dict(self._members.get(room, {}))

    def put(self, room: str, key: MemberKey, user: User) -> None:
        with self._lock:
            self._members.setdefault(room, {})[key] = user

    def remove(self, room: str, key: MemberKey) -> User | None:
        with self._lock:
            members = self._members.get(room)
            user = members.pop(key, None) if members else None
            if members is not None and not members:
                # A room without members holds nothing the store does not: forget it,
                # so strangers cannot grow memory room by room.
                del self._members[room]
                self._seq.pop(room, None)
            return user

    def write_touches(self, force: bool = False) -> None:
        """Nothing waits: touches are made in place."""

    def touch(self, room: str, key: MemberKey, when: float) -> None:
        user = self.member(room, key)
        if user is not None:
            user.last_seen = when

    def touch_present(self, room: str, key: MemberKey, requested: str | None, when: float) -> User | None:
        """A present member (that asked for `requested`, when given) posts: alive, one more
        message. None when absent or asking for another name."""
        with self._lock:
            user = self.member(room, key)
            if user is None or (requested is not None and user.requested != requested):
                return None
            user.last_seen = when
            user.message_count += 1
            return user

    def count_message(self, room: str, key: MemberKey) -> None:
        user = self.member(room, key)
        if user is not None:
            user.message_count += 1

    def rooms(self) -> list[str]:
        with self._lock:
            return list(self._members)

    def room_count(self) -> int:
        return len(self._members)

    def all_members(self, source: str | None = None) -> list[tuple[MemberKey, User]]:
        with self._lock:
            return [(key, user) for members in self._members.values() for key, user in members.items()
                    if source is None or user.source == source]

    def next_seq(self, room: str, stored_last: Callable[[], int]) -> int:
        with self._lock:
            seq = self._seq.get(room)
            seq = (stored_last() if seq is None else seq) + 1
            if room in self._members:
                self._seq[room] = seq
            return seq


class LocalLocks:
    """One lock for every room: in one process the intake decides one input at a time."""

    shared = False  # taking it costs nothing: every input takes it

    def __init__(self) -> None:
        self._lock = threading.Lock()  # never nested: each intake method takes it once

    def hold(self, room: str) -> ContextManager:
        return self._lock
