"""What a transport hands the intake (a `Submission`) and what it gets back (an
`Accepted`). Stdlib only (docs/ARCHITECTURE.md)."""
from __future__ import annotations

from dataclasses import dataclass

from chatroom.core.model import Message, Source, User
from chatroom.core.ports import MemberKey
from chatroom.core.room_types import Outcome

# What json.loads can give: the raw fields of a Submission are one of these.
JsonValue = str | int | float | bool | None | list["JsonValue"] | dict[str, "JsonValue"]


@dataclass(frozen=True)
class Submission:
    """One input from any transport, as raw values: the intake validates them.

    `connection` is the transport's handle of a web member (its Socket.IO sid);
    `client_id` is a device's id or the page's stable id; `address` is the
    remote address of an HTTP caller (its rate-limit key).
    """

    source: Source
    # As decoded from JSON (or a topic): anything, until the intake's validators say otherwise.
    room: JsonValue = None
    username: JsonValue = None
    text: JsonValue = None
    data: JsonValue = None
    client_id: JsonValue = None
    message_id: JsonValue = None
    units: JsonValue = None
    connection: str | None = None  # a web member's Socket.IO sid
    address: str | None = None
    # The broker vouched for `client_id`: it came from the device's own topic (PROTOCOL 10).
    proven: bool = False

    @property
    def from_device(self) -> bool:
        """A device speaks (MQTT): it names itself by client_id and joins implicitly."""
        return self.source == Source.MQTT


@dataclass(frozen=True)
class Accepted:
    outcome: Outcome
    room: str
    user: User | None = None
    message: Message | None = None
    message_id: str | None = None       # the server's id of the message (the original one for a duplicate)
    replaced: MemberKey | None = None    # a reclaimed web entry's old connection key
