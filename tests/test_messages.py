"""Validation shared by every transport, and the one message format."""
import json

import pytest

from chatroom.messages import (
    Message, ValidationError, parse_device_join, parse_device_message, parse_json_object,
    utc_timestamp, validate_data, validate_room, validate_username,
)

RESERVED = ("AI",)


def device(**fields):
    return {"client_id": "esp32-1", "message": "hi", **fields}


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


@pytest.mark.parametrize("fields, code", [
    ({"client_id": None}, "missing_field"),
    ({"client_id": ""}, "bad_field"),
    ({"client_id": "x" * 65}, "bad_field"),
    ({"client_id": "tab\there"}, "bad_field"),
    ({"client_id": 5}, "bad_field"),
    ({"message": None}, "missing_field"),
    ({"message": "   "}, "missing_field"),
    ({"message": 42}, "bad_field"),
    ({"message": "x" * 2001}, "too_long"),
    ({"username": "AI"}, "bad_name"),
    ({"username": "System"}, "bad_name"),
    ({"username": "x" * 33}, "bad_name"),
    ({"username": 7}, "bad_name"),
    ({"data": [1]}, "bad_field"),
    ({"data": {"nested": {"a": 1}}}, "bad_field"),
    ({"data": {f"k{i}": i for i in range(33)}}, "bad_field"),
    ({"data": {"big": "x" * 1100}}, "bad_field"),
    ({"message_id": {"a": 1}}, "bad_field"),
])
def test_bad_device_messages_get_the_protocol_code(fields, code):
    """Each kind of bad field maps to its PROTOCOL error code."""
    obj = device(**fields)
    if fields.get("client_id", "") is None:
        obj.pop("client_id")
    assert code_of(lambda: parse_device_message(obj, 2000, RESERVED)) == code


def test_error_names_the_sender_when_client_id_was_valid():
    """A rejected payload with a valid client_id is answered to that client."""
    with pytest.raises(ValidationError) as info:
        parse_device_message(device(message=""), 2000, RESERVED)
    assert info.value.client_id == "esp32-1"


def test_null_and_empty_optional_fields_count_as_absent():
    """`username: ""`, `data: null` and `message_id: null` are simply absent."""
    parsed = parse_device_message(device(username="", data=None, message_id=None), 2000, RESERVED)
    assert (parsed.username, parsed.data, parsed.message_id) == (None, None, None)


def test_device_message_keeps_readings_and_trims_text():
    """`data` is carried unchanged; the text is trimmed."""
    parsed = parse_device_message(device(message="  23.5 °C ", data={"t": 23.5, "ok": True, "s": "x"}),
                                  2000, RESERVED)
    assert parsed.message == "23.5 °C" and parsed.data == {"t": 23.5, "ok": True, "s": "x"}


def test_join_without_username_uses_client_id():
    """A device that gives no name is shown by its client_id."""
    assert parse_device_join({"client_id": "esp32-kitchen"}, RESERVED) == ("esp32-kitchen", "esp32-kitchen")


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


def test_usernames_are_trimmed_and_case_insensitively_reserved():
    """`ai` is as reserved as `AI`."""
    assert validate_username("  Alice ") == "Alice"
    assert code_of(lambda: validate_username("ai", RESERVED)) == "bad_name"
