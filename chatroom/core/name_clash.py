"""Two members asking for one name: who holds it, and the free "<name> (2)" a device is
shown as instead (a fleet of identical sensors gets through). Pure: names are compared by
their name key (chatroom/core/names.py), which the room passes in."""
from __future__ import annotations

from typing import Callable

from chatroom.core.model import User
from chatroom.core.ports import MemberKey


def holder_of(members: dict[MemberKey, User], wanted: str, except_key: MemberKey | None = None
              ) -> tuple[MemberKey, User] | None:
    """(key, member) of the member whose name key is `wanted`, other than `except_key`."""
    for key, member in members.items():
        if key != except_key and member.name_key == wanted:
            return key, member
    return None


def free_variant(members: dict[MemberKey, User], name: str, name_key: Callable[[str], str],
                 except_key: MemberKey) -> str:
    """The first of "<name> (2)", "<name> (3)"… no other member holds."""
    taken = {member.name_key for key, member in members.items() if key != except_key}
    number = 2
    while name_key(f"{name} ({number})") in taken:
        number += 1
    return f"{name} ({number})"
