"""Who gives way when a room or the room table is full (PROTOCOL 9: fair shares, not first
come). A stranger with many device ids must not lock people out, so devices give way and
people never do. Pure: the room asks, then removes whom these name."""
from __future__ import annotations

from typing import Iterable

from chatroom.core.model import User
from chatroom.core.ports import MemberKey


def longest_silent_device(members: dict[MemberKey, User], device_source: str) -> MemberKey | None:
    """The key of the room's device heard from longest ago; None in a room of people only."""
    devices = [(user.last_seen, key) for key, user in members.items() if user.source == device_source]
    return min(devices, key=lambda pair: pair[0])[1] if devices else None


def room_to_free(every_member: Iterable[tuple[MemberKey, User]], device_source: str
                 ) -> tuple[str, list[MemberKey]] | None:
    """(room, its member keys) of the room of devices only to empty, or None when every room
    has a person. The room with the fewest devices goes first (a stranger's one-device rooms
    before a real room of sensors), then the one heard from longest ago."""
    rooms: dict[str, dict[MemberKey, User]] = {}
    for key, user in every_member:
        rooms.setdefault(user.room, {})[key] = user
    candidates = [(len(members), max(user.last_seen for user in members.values()), room)
                  for room, members in rooms.items()
                  if all(user.source == device_source for user in members.values())]
    if not candidates:
        return None
    room = min(candidates)[2]
    return room, list(rooms[room])
