"""PROTOCOL section 9: identifiers are validated whole, and no message can take the bridge down.

The attack this guards against: a room name with a trailing newline slipped through
`^…$`, the bridge published to `P/abc\\n/messages/out`, mosquitto dropped the
connection for a malformed packet and paho re-sent it on every reconnect.
"""

import pytest
import requests
from conftest import app_env
from hypothesis import given, settings
from hypothesis import strategies as st

from chatroom.core.errors import ValidationError
from chatroom.core.validation import validate_message_id, validate_room
from mqtt_service.outbox import Outgoing
from mqtt_service.topics import Topics, topic_name_problem
from support import TIMEOUT, SocketIOClient

NEWLINE_ROOMS = ["abc\n", "zz\n", "a\nb", "\nlobby", "kitchen\r", "k\x00", "k\t", "k/x", "k+", "#"]


@pytest.mark.parametrize("room", NEWLINE_ROOMS)
def test_room_names_are_validated_as_whole_strings(room):
    """`kitchen\\n` is not `kitchen`: the whole string must match, not a line of it."""
    with pytest.raises(ValidationError) as info:
        validate_room(room)
    assert info.value.code == "bad_field"


@pytest.mark.parametrize("message_id", ["a\nb", "x\n", "\x1b[31m", ""])
def test_message_ids_are_validated_as_whole_strings(message_id):
    """A message_id with a newline would forge a log line; an empty one counts as absent."""
    if message_id == "":
        assert validate_message_id(message_id) is None
        return
    with pytest.raises(ValidationError) as info:
        validate_message_id(message_id)
    assert info.value.code == "bad_field"


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_every_accepted_room_name_is_a_valid_topic_level(candidate):
    """Property: whatever the intake accepts as a room gives topics a broker takes."""
    try:
        room = validate_room(candidate)
    except ValidationError:
        return
    topics = Topics("chatroom")
    for topic_of in (topics.messages_in, topics.messages_out, topics.system,
                     topics.users_join, topics.users_leave):
        topic = topic_of(room)
        assert topic_name_problem(topic) is None, topic
        # Exactly one topic level more than the lobby's: the room is one whole level.
        assert topic.count("/") == topic_of().count("/") + (room != "lobby")
    # ... and the bridge reads it back as the same room.
    assert topics.parse(topics.messages_in(room)) == (room, "messages/in", None)


@pytest.mark.parametrize("topic, ok", [("chatroom/messages/out", True), ("chatroom/温度/out", True),
                                       ("chatroom/abc\n/messages/out", False), ("a\x00b", False),
                                       ("a/+/b", False), ("a/#", False), ("", False), ("a\x85b", False),
                                       ("x" * 65536, False)])
def test_topic_name_problem(topic, ok):
    assert (topic_name_problem(topic) is None) == ok


def test_a_poison_publication_is_dropped_and_counted_and_the_bridge_stays_up(make_app, probe_for):
    """Even if a bad topic reached the publisher, it is dropped once, not sent in a reconnect loop."""
    running = make_app()
    bridge = running.components.bridge
    probe = probe_for(running.prefix)
    bridge.outbox.publish(Outgoing(f"{running.prefix}/abc\n/messages/out", b"{}", 1))
    assert bridge.stats.snapshot()["messages_dropped"] == 1
    probe.publish(f"{running.prefix}/messages/in", {"client_id": "dev-1", "message": "still here"})
    probe.wait(f"{running.prefix}/messages/out")
    status = running.status()["mqtt_status"]
    assert status["is_connected"] and status["reconnect_count"] == 0


@pytest.fixture
def eventlet_server(broker, tmp_path, server_for):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet"))


def test_newline_room_names_are_refused_on_every_transport_and_the_bridge_stays_connected(
        eventlet_server, broker, probe_for):
    """HTTP, Socket.IO and MQTT all refuse `abc\\n`; the bridge never reconnects; relaying goes on."""
    server = eventlet_server
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)

    for room in ("abc\n", "zz\n", "lobby\n"):
        response = requests.post(server.url + "/api/messages", timeout=TIMEOUT,
                                 json={"username": "mallory", "message": "hi", "room": room})
        assert response.status_code == 400 and response.json()["code"] == "bad_field"
        response = requests.get(server.url + "/api/messages", params={"room": room}, timeout=TIMEOUT)
        assert response.status_code == 400

    with SocketIOClient(server.url) as web:
        for room in ("zz\n", "abc\n", "a\nb"):
            ack = web.call("join", {"username": "mallory", "room": room})
            assert ack["ok"] is False and ack["code"] == "bad_field"

    # MQTT: the broker itself refuses a control character in a topic, so the payload's
    # own identifiers are the way in: a client_id or message_id with a newline.
    for payload in ({"client_id": "dev\n", "message": "x"},
                    {"client_id": "dev-1", "message": "x", "message_id": "id\nforged log line"}):
        probe.publish(f"{prefix}/messages/in", payload)
    errors = probe.wait(f"{prefix}/errors", count=2)
    assert {error.json()["code"] for error in errors} == {"bad_field"}

    probe.publish(f"{prefix}/messages/in", {"client_id": "dev-ok", "message": "after the attack"})
    out = probe.wait(f"{prefix}/messages/out")
    assert [o.json()["content"] for o in out] == ["after the attack"]
    code, status = server.status()
    assert code == 200
    assert status["mqtt_status"]["is_connected"] and status["mqtt_status"]["reconnect_count"] == 0
    assert not [r for r in probe.received if "\n" in r.topic]
