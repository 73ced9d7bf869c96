"""The room's data types and the validation every transport shares.

Pure: no I/O, no Flask, no paho. Validation errors carry the PROTOCOL error
code (`missing_field`, `too_long`, `bad_name`…) so every transport reports a
rejection in the same words.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from .config import DEFAULT_ROOM, RESERVED_ROOM_NAMES, ROOM_NAME

USER_MESSAGE = "user_message"
AI_RESPONSE = "ai_response"

MAX_PAYLOAD_BYTES = 16 * 1024
MAX_DATA_KEYS = 32
MAX_DATA_BYTES = 1024
MAX_CLIENT_ID_CHARS = 64
MAX_MESSAGE_ID_CHARS = 128
# JavaScript's Number.MAX_SAFE_INTEGER: beyond it a browser rounds the number and
# python-socketio refuses to decode it (engineio's 100-digit cap), so `data` refuses it.
MAX_SAFE_INTEGER = 2**53 - 1

# A code point U+D800..U+DFFF in a decoded str is a lone surrogate (JSON decoders join a
# valid pair into one character): it cannot be encoded as UTF-8, so it would fail later
# in SQLite, in MQTT and in the JSON we send, after the sender has joined.
# The only way one gets into a UTF-8 payload is a `\uD800`..`\uDFFF` escape: payloads
# without one (nearly all) skip the walk through the decoded object.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def utc_timestamp(now: datetime | None = None) -> str:
    """ISO 8601 UTC with milliseconds and a `+00:00` offset, as PROTOCOL asks."""
    moment = datetime.now(timezone.utc) if now is None else now.astimezone(timezone.utc)
    return moment.isoformat(timespec="milliseconds")


def dumps(obj: Any) -> str:
    """Compact UTF-8 JSON (3 bytes per CJK character, not a 6-byte escape)."""
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


class ValidationError(ValueError):
    """Bad input from any transport; `code` is the PROTOCOL error code."""

    def __init__(self, code: str, message: str, client_id: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id
        self.retry_after = retry_after  # rate_limited: seconds until the sender may try again


def new_message_id() -> str:
    """A random UUID version 4 (PROTOCOL), made without uuid.UUID: every message needs one,
    and the class's checks cost more than the random bytes (2.6 -> 1.1 µs)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40  # version 4
    raw[8] = raw[8] & 0x3F | 0x80  # RFC 4122 variant
    text = raw.hex()
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


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

    def to_dict(self) -> dict:
        body = {
            "type": "system_message",
            "event": self.event,
            "message": self.message,
            "username": self.username,
            "room": self.room,
            "timestamp": self.timestamp,
        }
        if self.previous is not None:
            body["previous"] = self.previous
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


# --- validation -------------------------------------------------------------

def has_lone_surrogate(text: str) -> bool:
    """True when `text` holds an unpaired surrogate (not valid Unicode text)."""
    if text.isascii():
        return False
    try:
        # Encoding refuses exactly the surrogates, and is faster than a regex (1.7 against
        # 10 µs on 2 000 accented characters): only refusals pay for the exception.
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _holds_lone_surrogate(obj: Any) -> bool:
    """A lone surrogate in any string or key of a decoded JSON value (iterative: no recursion limit)."""
    pending = [obj]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if has_lone_surrogate(item):
                return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


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


def validate_text(value: Any, max_chars: int) -> str:
    if value is None:
        raise ValidationError("missing_field", "message is required")
    if not isinstance(value, str):
        raise ValidationError("bad_field", "message must be a string")
    if not value.isascii() and has_lone_surrogate(value):  # the guard inline: the hot path
        raise ValidationError("bad_field", "message must be valid Unicode text (no lone surrogate)")
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
        # What a browser and python-socketio can read back: finite numbers, integers a
        # JavaScript Number holds exactly, valid Unicode text.
        if isinstance(item, float):
            if not math.isfinite(item):
                raise ValidationError("bad_field", f"data.{key} must be a finite number")
        elif isinstance(item, str):
            if not item.isascii() and has_lone_surrogate(item):
                raise ValidationError("bad_field", f"data.{key} must be valid Unicode text (no lone surrogate)")
        elif isinstance(item, int):  # booleans too: within the bound
            if not -MAX_SAFE_INTEGER <= item <= MAX_SAFE_INTEGER:
                raise ValidationError("bad_field", f"data.{key} must be an integer from -(2^53 - 1) "
                                                   f"to 2^53 - 1 ({MAX_SAFE_INTEGER})")
        else:
            raise ValidationError("bad_field", f"data.{key} must be a number, string or boolean")
    if len(dumps(value).encode("utf-8")) > MAX_DATA_BYTES:
        raise ValidationError("bad_field", f"data is larger than {MAX_DATA_BYTES} bytes")
    return dict(value)


def _reject_constant(name: str) -> None:
    # NaN/Infinity are not JSON; refusing them keeps our own output valid JSON.
    raise ValueError(f"{name} is not valid JSON")


# One decoder for every payload: json.loads with an option builds a new one per call.
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_json_object(payload: bytes, max_bytes: int = MAX_PAYLOAD_BYTES) -> dict:
    """Decode an MQTT payload into a JSON object, or raise the PROTOCOL error."""
    if len(payload) > max_bytes:
        raise ValidationError("too_large", f"payload is larger than {max_bytes} bytes")
    try:
        text = payload.decode("utf-8")
        obj = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationError("invalid_json", "payload must be a UTF-8 JSON object") from None
    if not isinstance(obj, dict):
        raise ValidationError("invalid_json", "payload must be a JSON object")
    # A backslash first: one character is the cheapest search, and most payloads have none.
    if "\\" in text and _SURROGATE_ESCAPE.search(text) is not None and _holds_lone_surrogate(obj):
        # Not text, so not a payload we read: like any unreadable payload it names no sender
        # (the transport addresses the reply, e.g. to a device topic's proven id).
        raise ValidationError("invalid_json", "payload must be valid Unicode: it holds a lone surrogate "
                                              "escape (\\uD800-\\uDFFF)")
    return obj


def validate_units(value: Any) -> dict | None:
    """Optional `units` of a device message: {data key: unit text}, small."""
    if value is None:
        return None
    if (not isinstance(value, dict) or len(value) > MAX_DATA_KEYS
            or not all(isinstance(k, str) and 1 <= len(k) <= 64 and k.isprintable()
                       and isinstance(v, str) and 1 <= len(v) <= 16 and v.isprintable() for k, v in value.items())):
        raise ValidationError("bad_field", f"units must be an object of at most {MAX_DATA_KEYS} "
                                           "key: unit texts (1-16 printable characters)")
    return dict(value)


def client_id_of(obj: Any) -> str | None:
    """The sender's client_id when the payload named a valid one (for error replies)."""
    try:
        return validate_client_id(obj.get("client_id")) if isinstance(obj, dict) else None
    except ValidationError:
        return None


def validate_message_id(value: Any) -> str | None:
    """A sender's own message id, as its JSON text: `7` and `"7"` are different ids."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValidationError("bad_field", "message_id must be a string or a whole number")
    text = value if isinstance(value, str) else str(value)
    if not 1 <= len(text) <= MAX_MESSAGE_ID_CHARS or not text.isprintable():
        # The whole string: a newline here would forge a log line.
        raise ValidationError("bad_field", f"message_id must be 1-{MAX_MESSAGE_ID_CHARS} printable characters")
    return text


def dedup_text(value: Any) -> str:
    """How a message id is compared for de-duplication: its JSON text (7 != "7")."""
    return dumps(value)


def optional(obj: Mapping[str, Any], key: str) -> Any:
    """PROTOCOL: a null optional field, or an empty string, counts as absent."""
    value = obj.get(key)
    return None if value is None or value == "" else value
