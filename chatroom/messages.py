"""The room's data types and the validation every transport shares.

Pure: no I/O, no Flask, no paho. Validation errors carry the PROTOCOL error
code (`missing_field`, `too_long`, `bad_name`…) so every transport reports a
rejection in the same words.
"""
from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .config import DEFAULT_ROOM, RESERVED_ROOM_NAMES, ROOM_NAME

USER_MESSAGE = "user_message"
AI_RESPONSE = "ai_response"

SYSTEM_NAME = "system"

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_DATA_KEYS = 32
MAX_DATA_BYTES = 1024
MAX_CLIENT_ID_CHARS = 64
MAX_USERNAME_CHARS = 32
MAX_MESSAGE_ID_CHARS = 128


def utc_timestamp(now: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a `+00:00` offset, as PROTOCOL asks."""
    moment = now or datetime.now(timezone.utc)
    return moment.astimezone(timezone.utc).isoformat(timespec="milliseconds")


def dumps(obj: Any) -> str:
    """Compact UTF-8 JSON (3 bytes per CJK character, not a 6-byte escape)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class ValidationError(ValueError):
    """Bad input from any transport; `code` is the PROTOCOL error code."""

    def __init__(self, code: str, message: str, client_id: str | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id


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
    message_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    client_id: str | None = None
    client_message_id: str | None = None
    data: dict | None = None
    reply_to: str | None = None
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

    def to_json(self) -> str:
        """The message as JSON; computed on first use, so set every field before calling it."""
        if self._json is None:
            self._json = dumps(self.to_dict())
        return self._json

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

    def to_dict(self) -> dict:
        return {
            "type": "system_message",
            "event": self.event,
            "message": self.message,
            "username": self.username,
            "room": self.room,
            "timestamp": self.timestamp,
        }

    def to_json(self) -> str:
        return dumps(self.to_dict())


@dataclass
class User:
    """A present member of a room, as listed by /api/users and `user_list`."""

    username: str
    source: str
    room: str
    client_id: str | None = None
    join_time: str = field(default_factory=utc_timestamp)
    message_count: int = 0

    def to_dict(self) -> dict:
        return {
            "username": self.username,
            "source": self.source,
            "client_id": self.client_id,
            "join_time": self.join_time,
        }


@dataclass(frozen=True)
class DeviceMessage:
    """A validated chat message from `P/messages/in` (or an HTTP post)."""

    client_id: str
    message: str
    username: str | None = None
    message_id: str | None = None
    data: dict | None = None


# --- validation -------------------------------------------------------------

def validate_room(room: Any) -> str:
    if room is None or room == "":
        return DEFAULT_ROOM
    if not isinstance(room, str) or not ROOM_NAME.fullmatch(room) or room in RESERVED_ROOM_NAMES:
        raise ValidationError(
            "bad_field", "room must be 1-32 letters, digits, '_' or '-' and not a reserved word"
        )
    return room


def validate_client_id(value: Any) -> str:
    if value is None:
        raise ValidationError("missing_field", "client_id is required")
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= MAX_CLIENT_ID_CHARS
        or not value.isprintable()
    ):
        raise ValidationError("bad_field", f"client_id must be 1-{MAX_CLIENT_ID_CHARS} printable characters")
    return value


def validate_username(value: Any, reserved: tuple[str, ...] = ()) -> str:
    """A display name: 1-32 printable characters, not the assistant or `system`."""
    if not isinstance(value, str):
        raise ValidationError("bad_name", "username must be a string")
    name = value.strip()
    if not 1 <= len(name) <= MAX_USERNAME_CHARS or not name.isprintable():
        raise ValidationError("bad_name", f"username must be 1-{MAX_USERNAME_CHARS} printable characters")
    taken = {SYSTEM_NAME, *(r.casefold() for r in reserved)}
    if name.casefold() in taken:
        raise ValidationError("bad_name", f"username {name!r} is reserved")
    return name


def validate_text(value: Any, max_chars: int) -> str:
    if value is None:
        raise ValidationError("missing_field", "message is required")
    if not isinstance(value, str):
        raise ValidationError("bad_field", "message must be a string")
    text = value.strip()
    if not text:
        raise ValidationError("missing_field", "message must not be empty")
    if len(text) > max_chars:
        raise ValidationError("too_long", f"message is longer than {max_chars} characters")
    return text


def validate_data(value: Any) -> dict | None:
    """Device readings: a flat object of numbers, strings and booleans."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValidationError("bad_field", "data must be an object")
    if len(value) > MAX_DATA_KEYS:
        raise ValidationError("bad_field", f"data has more than {MAX_DATA_KEYS} keys")
    for key, item in value.items():
        if not 1 <= len(key) <= 64 or not key.isprintable():
            raise ValidationError("bad_field", "data keys must be 1-64 printable characters")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValidationError("bad_field", f"data.{key} must be a finite number")
        if not isinstance(item, (str, int, float, bool)):
            raise ValidationError("bad_field", f"data.{key} must be a number, string or boolean")
    if len(dumps(value).encode("utf-8")) > MAX_DATA_BYTES:
        raise ValidationError("bad_field", f"data is larger than {MAX_DATA_BYTES} bytes")
    return dict(value)


def _optional(obj: Mapping[str, Any], key: str) -> Any:
    """PROTOCOL: a null optional field, or an empty username, counts as absent."""
    value = obj.get(key)
    return None if value is None or value == "" else value


def parse_json_object(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict:
    """Decode an MQTT payload into a JSON object, or raise the PROTOCOL error."""
    if len(payload) > max_bytes:
        raise ValidationError("too_large", f"payload is larger than {max_bytes} bytes")
    try:
        obj = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError("invalid_json", "payload must be a UTF-8 JSON object") from None
    if not isinstance(obj, dict):
        raise ValidationError("invalid_json", "payload must be a JSON object")
    return obj


def _reject_constant(name: str) -> None:
    # NaN/Infinity are not JSON; refusing them keeps our own output valid JSON.
    raise ValueError(f"{name} is not valid JSON")


def client_id_of(obj: Mapping[str, Any]) -> str | None:
    """The sender's client_id when the payload named a valid one (for error replies)."""
    try:
        return validate_client_id(obj.get("client_id"))
    except ValidationError:
        return None


def parse_device_message(obj: Mapping[str, Any], max_chars: int, reserved: tuple[str, ...]) -> DeviceMessage:
    client_id = validate_client_id(obj.get("client_id"))
    try:
        text = validate_text(obj.get("message"), max_chars)
        username = _optional(obj, "username")
        message_id = _optional(obj, "message_id")
        if message_id is not None and (
            not isinstance(message_id, (str, int)) or isinstance(message_id, bool)
            or not 1 <= len(str(message_id)) <= MAX_MESSAGE_ID_CHARS
            or not str(message_id).isprintable()  # the whole string: no newline forges a log line
        ):
            raise ValidationError("bad_field", f"message_id must be 1-{MAX_MESSAGE_ID_CHARS} printable "
                                               "characters or a whole number")
        return DeviceMessage(
            client_id=client_id,
            message=text,
            username=None if username is None else validate_username(username, reserved),
            message_id=None if message_id is None else str(message_id),
            data=validate_data(_optional(obj, "data")),
        )
    except ValidationError as exc:
        exc.client_id = client_id
        raise


def parse_device_join(obj: Mapping[str, Any], reserved: tuple[str, ...]) -> tuple[str, str]:
    """`{client_id, username?}` -> (client_id, display name; the client_id if none)."""
    client_id = validate_client_id(obj.get("client_id"))
    return client_id, device_name(client_id, _optional(obj, "username"), reserved)


def device_name(client_id: str, username: Any, reserved: tuple[str, ...]) -> str:
    """A device's display name: the one it gave, else its client_id (cut to fit)."""
    try:
        return validate_username(client_id[:MAX_USERNAME_CHARS] if username is None else username, reserved)
    except ValidationError as exc:
        exc.client_id = client_id
        raise


def parse_device_leave(obj: Mapping[str, Any]) -> str:
    return validate_client_id(obj.get("client_id"))
