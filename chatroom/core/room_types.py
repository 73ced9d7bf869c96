"""The room's vocabulary: its events, what a join did, and the history store it needs.
Stdlib only (docs/ARCHITECTURE.md)."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Callable

from chatroom.core.model import Message, SystemEvent, User
from chatroom.core.ports import MemberKey


@dataclass(frozen=True)
class PresenceChanged:
    """The member list of `room` changed. It carries no list: a listener that
    wants one asks `Rooms.users(room)` when it sends it, so a burst of N joins
    does not build N lists of up to N members (O(N²))."""

    room: str


@dataclass(frozen=True)
class AssistantDelta:
    """A piece of a reply being written (pushed to web clients, not stored or sent to MQTT)."""

    room: str
    reply_to: str
    message_id: str
    delta: str


RoomEvent = Message | SystemEvent | PresenceChanged | AssistantDelta

class NameClash(StrEnum):
    """What to do when a joining member asks for a name another present member holds."""

    REFUSE = "refuse"   # a person chooses another name (name_taken)
    SUFFIX = "suffix"   # a device is shown as "<name> (2)": fleets of identical sensors get through


class Outcome(StrEnum):
    """What the room or the intake did with an input."""

    JOINED = "joined"
    RENAMED = "renamed"
    UNCHANGED = "unchanged"
    RECLAIMED = "reclaimed"   # a page's new connection took over its old entry
    POSTED = "posted"
    DUPLICATE = "duplicate"   # a repeated device message_id: acknowledged, not stored again
    LEFT = "left"
    NOT_PRESENT = "not_present"


@dataclass(frozen=True)
class JoinResult:
    user: User
    outcome: Outcome
    replaced: MemberKey | None = None  # the old connection key of a reclaimed entry
Listener = Callable[[RoomEvent], None]
