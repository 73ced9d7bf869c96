"""Validation shared by every transport, and the one message format."""
import json

import pytest

from chatroom.core.errors import ValidationError
from chatroom.core.model import Message, utc_timestamp
from chatroom.core.validation import parse_json_object, validate_data, validate_room


def code_of(call):
    with pytest.raises(ValidationError) as info:
        call()
    return info.value.code


def test_timestamp_is_utc_with_milliseconds_and_offset():
    """Timestamps look like 2026-11-23T16:20:00.123+00:00."""
    stamp = utc_timestamp()
    assert stamp.endswith("+00:00") and len(stamp) == len("2026-11-23T16:20:00.123+00:00")


def test_message_json_is_utf8_not_ascii_escaped():
    """Chinese text is 3 bytes per character on the wire, not a 6-byte escape."""
    message = Message(username="小明", content="你好", room="lobby", source="web", seq=1)
    encoded = message.to_json().encode("utf-8")
    assert "你好".encode("utf-8") in encoded and b"\\u" not in encoded
    assert list(json.loads(encoded)) == ["type", "username", "content", "room", "timestamp", "message_id",
                                         "seq", "source", "client_id", "client_message_id", "data", "reply_to"]


def test_message_round_trips_through_dict():
    """The store saves to_dict() and reads it back unchanged."""
    message = Message(username="a", content="b", room="r", source="mqtt", seq=3, data={"t": 1.5})
    assert Message.from_dict(message.to_dict()) == message


@pytest.mark.parametrize("payload, code", [
    (b"not json", "invalid_json"),
    (b"\xff\xfe", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"a": NaN}', "invalid_json"),
    (b"{" * 5000 + b"}" * 5000, "invalid_json"),
    (b'{"x": "' + b"a" * 17000 + b'"}', "too_large"),
])
def test_bad_payloads_are_rejected_with_their_code(payload, code):
    """Anything but a UTF-8 JSON object of at most 16 KiB is refused."""
    assert code_of(lambda: parse_json_object(payload)) == code


def test_validate_data_refuses_infinite_numbers():
    """Infinity is not JSON; it must never reach MQTT out."""
    assert code_of(lambda: validate_data({"t": float("inf")})) == "bad_field"


@pytest.mark.parametrize("room, ok", [(None, "lobby"), ("", "lobby"), ("kitchen", "kitchen"),
                                      ("a-b_c9", "a-b_c9"), ("messages", None), ("bad room", None),
                                      ("x" * 33, None), (5, None)])
def test_room_names(room, ok):
    """Rooms are [A-Za-z0-9_-]{1,32}, not a reserved topic word; absent means lobby."""
    if ok is None:
        assert code_of(lambda: validate_room(room)) == "bad_field"
    else:
        assert validate_room(room) == ok


def test_compact_json_is_the_original_five_fields_without_spaces():
    """MQTT_OUT_FORMAT=compact: what the original project's devices parse."""
    message = Message(username="温度传感器", content="23.5 °C", room="lobby", source="mqtt", seq=1,
                      client_id="esp32", data={"t": 23.5})
    compact = message.to_compact_json()
    assert list(json.loads(compact)) == ["type", "username", "content", "timestamp", "message_id"]
    assert ", " not in compact and '": ' not in compact


def test_message_ids_are_random_uuid4s():
    """PROTOCOL: the server's message_id is a uuid4 (canonical lower-case text)."""
    import uuid

    from chatroom.core.model import new_message_id

    ids = {new_message_id() for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122 and str(parsed) == text
