"""The room's data types: a chat message, a system event, a present member.

Pure: no I/O, no Flask, no paho. `Message.to_json()` is the one format that goes to
MQTT, Socket.IO, HTTP and the store (docs/ARCHITECTURE.md).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, Mapping


class Source(StrEnum):
    """Where a message or member came from: the `source` field of PROTOCOL's payloads."""

    WEB = "web"
    MQTT = "mqtt"
    HTTP = "http"
    AI = "ai"


USER_MESSAGE = "user_message"
AI_RESPONSE = "ai_response"

def utc_timestamp(now: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a `+00:00` offset, as PROTOCOL asks."""
    moment = datetime.now(timezone.utc) if now is None else now.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def dumps(obj: Any) -> str:
    """Compact UTF-8 JSON (3 bytes per CJK character, not a 6-byte escape)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))

def new_message_id() -> str:
    """A random UUID version 4 (PROTOCOL), made without uuid.UUID: every message needs one,
    and the class's checks cost more than the random bytes (2.6 -> 1.1 µs)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# The seq of a draft the history store numbers when it stores it (several instances).
UNNUMBERED = -1


@dataclass
class Message:
    """One chat message of a room: the single format for every transport."""

    username: str
    content: str
    room: str
    source: str
    seq: int = 0
    type: str = USER_MESSAGE
    timestamp: str = field(default_factory=utc_timestamp)
    message_id: str = field(default_factory=new_message_id)
    client_id: str | None = None
    client_message_id: str | None = None
    data: dict | None = None
    reply_to: str | None = None
    # A device's units for its data keys ({"temperature": "°F"}): for Home Assistant
    # discovery only, not part of the message format.
    units: dict | None = field(default=None, compare=False, repr=False)
    # The JSON text, made once: the store, MQTT and the benchmarked hot path all need it.
    _json: str | None = field(default=None, init=False, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {
            "type": self.type,
            "username": self.username,
            "content": self.content,
            "room": self.room,
            "timestamp": self.timestamp,
            "message_id": self.message_id,
            "seq": self.seq,
            "source": self.source,
            "client_id": self.client_id,
            "client_message_id": self.client_message_id,
            "data": self.data,
            "reply_to": self.reply_to,
        }

    def number(self, seq: int) -> None:
        """Give a stored draft its seq (a batch is numbered by the store when it commits)."""
        self.seq = seq
        self._json = None

    def to_json(self) -> str:
        """The message as JSON; computed on first use, so set every field before calling it."""
        if self._json is None:
            self._json = dumps(self.to_dict())
        return self._json

    def to_compact_json(self) -> str:
        """The original project's shape: five fields, no spaces (fits PubSubClient's 256 bytes)."""
        return dumps({"type": self.type, "username": self.username, "content": self.content,
                      "timestamp": self.timestamp, "message_id": self.message_id})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "Message":
        return cls(
            type=raw["type"],
            username=raw["username"],
            content=raw["content"],
            room=raw["room"],
            timestamp=raw["timestamp"],
            message_id=raw["message_id"],
            seq=raw["seq"],
            source=raw["source"],
            client_id=raw.get("client_id"),
            client_message_id=raw.get("client_message_id"),
            data=raw.get("data"),
            reply_to=raw.get("reply_to"),
        )


@dataclass
class SystemEvent:
    """Something that happened in a room that is not a chat message."""

    event: str
    message: str
    room: str
    username: str | None = None
    timestamp: str = field(default_factory=utc_timestamp)
    previous: str | None = None  # a rename's old name
    client_id: str | None = field(default=None, repr=False)  # a device's, for listeners; not sent
    # More fields of the event, sent after the common ones (a command's: PROTOCOL 11).
    details: dict | None = field(default=None, repr=False)
    # The stored record of this event (a command's): its seq is sent, read when sent (a
    # batch's drafts are numbered when it commits, before its events are delivered).
    record: "Message | None" = field(default=None, repr=False)

    def to_dict(self) -> dict:
        body: dict[str, Any] = {
            "type": "system_message",
            "event": self.event,
            "message": self.message,
            "username": self.username,
            "room": self.room,
            "timestamp": self.timestamp,
        }
        if self.previous is not None:
            body["previous"] = self.previous
        if self.details:
            body.update((key, value) for key, value in self.details.items() if key not in body)
        if self.record is not None:  # the stored record's id too: a page skips it in a rejoin's history
            body["seq"] = self.record.seq
            body["message_id"] = self.record.message_id
        return body

    def to_json(self) -> str:
        return dumps(self.to_dict())


@dataclass
class User:
    """A present member of a room, as listed by /api/users and `user_list`."""

    username: str
    source: str
    room: str
    client_id: str | None = None  # a device's; never a web page's (that one stays private)
    join_time: str = field(default_factory=utc_timestamp)
    message_count: int = 0
    private_id: str | None = field(default=None, repr=False)  # the page's stable client_id
    requested: str | None = None  # the name asked for; `username` may be "<requested> (2)"
    name_key: str = field(default="", repr=False)  # names.name_key(username), made once
    last_seen: float = 0.0

    def to_dict(self) -> dict:
        return {
            "username": self.username,
            "source": self.source,
            "client_id": self.client_id,
            "join_time": self.join_time,
        }
