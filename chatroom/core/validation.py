"""Validation every transport shares: a payload's fields, checked the same way for
MQTT, Socket.IO and HTTP, each refusal carrying the PROTOCOL error code
(`missing_field`, `too_long`, `bad_name`…) so every transport reports it in the same
words. Pure: stdlib only.
"""
from __future__ import annotations

import json
import math
import re
from typing import Any, Mapping

from chatroom.core.errors import ValidationError
from chatroom.core.model import dumps

# Used with fullmatch() only: `$` would let a trailing newline through, and a
# newline in a topic makes the broker drop the bridge's connection (PROTOCOL 9).
ROOM_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}")
# Room names that would collide with the default room's topic segments.
RESERVED_ROOM_NAMES = frozenset({"messages", "users", "system", "bridge", "errors", "devices"})
DEFAULT_ROOM = "lobby"

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


def is_room_name(room: str) -> bool:
    """The one room-name rule (PROTOCOL 2): topics and payloads both use it."""
    return bool(ROOM_NAME.fullmatch(room)) and room not in RESERVED_ROOM_NAMES


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
    if not isinstance(room, str) or not is_room_name(room):
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
