"""The PROTOCOL topic table for a prefix."""
from mqtt_service.topics import Topics

T = Topics("chatroom")


def test_default_room_has_no_room_segment():
    """Lobby topics are chatroom/messages/in etc."""
    assert T.messages_in() == "chatroom/messages/in"
    assert T.messages_out("lobby") == "chatroom/messages/out"
    assert T.system() == "chatroom/system"
    assert T.errors() == "chatroom/errors"
    assert T.bridge_state() == "chatroom/bridge/state"


def test_other_rooms_have_a_room_segment():
    """Room R uses chatroom/R/..."""
    assert T.users_join("kitchen") == "chatroom/kitchen/users/join"
    assert T.messages_out("kitchen") == "chatroom/kitchen/messages/out"


def test_parse_inbound_topics():
    """Inbound topics parse to (room, kind); anything else is None."""
    assert T.parse("chatroom/messages/in") == ("lobby", "messages/in")
    assert T.parse("chatroom/kitchen/users/leave") == ("kitchen", "users/leave")
    assert T.parse("chatroom/messages/out") is None
    assert T.parse("chatroom/users/users/join") is None  # reserved room name
    assert T.parse("other/messages/in") is None
    assert T.parse("chatroom/bad room/messages/in") is None


def test_subscriptions_are_inbound_only():
    """The bridge never subscribes to its own output (no loops)."""
    subs = T.subscriptions()
    assert "chatroom/messages/in" in subs and "chatroom/+/users/join" in subs
    assert not any(s.endswith(("/out", "/system", "#")) for s in subs)
    assert T.subscriptions("g1")[0] == "$share/g1/chatroom/messages/in"


def test_several_instances_each_have_a_bridge_state_and_one_relay_device():
    """PROTOCOL 8 (docs/SCALING.md): one instance's will must not say the relay is down."""
    from mqtt_service.ha_discovery import Discovery

    assert T.bridge_state("i0") == "chatroom/bridge/i0/state"
    shared = Discovery("chatroom", "homeassistant", "relay", instance_id="i0")
    entity = shared.entity("esp-1", "Kitchen", "temperature", 21.5).payload
    assert entity["availability"] == [{"topic": "chatroom/devices/esp-1/availability"}]
    assert entity["device"]["via_device"] == "chatroom_bridge_relay"
    sensor = shared.bridge()
    assert sensor.topic == "homeassistant/binary_sensor/chatroom_bridge_relay/connectivity_i0/config"
    assert sensor.payload["state_topic"] == "chatroom/bridge/i0/state"
    single = Discovery("chatroom", "homeassistant", "bridge-1").entity("esp-1", "Kitchen", "temperature", 21.5)
    assert single.payload["availability"][1]["topic"] == "chatroom/bridge/state"
