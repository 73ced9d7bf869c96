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
    """Inbound topics parse to (room, kind, sender); anything else is None."""
    assert T.parse("chatroom/messages/in") == ("lobby", "messages/in", None)
    assert T.parse("chatroom/kitchen/users/leave") == ("kitchen", "users/leave", None)
    assert T.parse("chatroom/messages/out") is None
    assert T.parse("chatroom/users/users/join") is None  # reserved room name
    assert T.parse("other/messages/in") is None
    assert T.parse("chatroom/bad room/messages/in") is None


def test_device_topics_name_their_sender():
    """PROTOCOL 10: P/[R/]messages/in/<client_id> and users/join|leave/<client_id>."""
    assert T.parse("chatroom/messages/in/esp-1") == ("lobby", "messages/in", "esp-1")
    assert T.parse("chatroom/kitchen/users/join/esp-1") == ("kitchen", "users/join", "esp-1")
    assert T.parse("chatroom/kitchen/users/leave/esp-1") == ("kitchen", "users/leave", "esp-1")
    assert T.parse("chatroom/messages/in/") == ("lobby", "messages/in", "")  # the intake refuses ""
    assert T.parse("chatroom/messages/in/a/b") is None
    assert T.parse("chatroom/users/messages/in/esp-1") is None  # reserved room name
    assert T.parse("chatroom/messages/out/esp-1") is None


def test_device_topics_only_subscribes_no_shared_topic():
    """MQTT_DEVICE_TOPICS_ONLY: a stranger cannot claim an id on a topic nobody hears."""
    assert T.subscriptions(device_topics_only=True) == [
        "chatroom/messages/in/+", "chatroom/users/join/+", "chatroom/users/leave/+",
        "chatroom/+/messages/in/+", "chatroom/+/users/join/+", "chatroom/+/users/leave/+"]
    assert "chatroom/messages/in/+" in T.subscriptions()
    assert T.subscriptions("g", device_topics_only=True)[0] == "$share/g/chatroom/messages/in/+"


def test_subscriptions_are_inbound_only():
    """The bridge never subscribes to its own output (no loops)."""
    subs = T.subscriptions()
    assert "chatroom/messages/in" in subs and "chatroom/+/users/join" in subs
    assert not any(s.endswith(("/out", "/system", "#")) for s in subs)
    assert T.subscriptions("g1")[0] == "$share/g1/chatroom/messages/in"


def test_several_instances_each_have_a_bridge_state_and_one_relay_device():
    """PROTOCOL 8 (docs/SCALING.md): one instance's will must not say the relay is down."""
    from mqtt_service.homeassistant.discovery import Discovery

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


def test_a_devices_own_unit_keeps_the_device_class_where_home_assistant_accepts_it():
    """pressure (atmospheric_pressure) in kPa, bar, psi, mbar or hPa stays a pressure sensor;
    temperature in °F or K stays one; a unit HA does not know for the class drops the class."""
    from mqtt_service.homeassistant.discovery import Discovery

    discovery = Discovery("chatroom", "homeassistant", "bridge-1")
    for unit in ("kPa", "bar", "psi", "mbar", "hPa", "Pa"):
        payload = discovery.entity("esp-1", "Kitchen", "pressure", 101.3, unit).payload
        assert (payload["device_class"], payload["unit_of_measurement"]) == ("atmospheric_pressure", unit)
    assert discovery.entity("esp-1", "Kitchen", "temperature", 70, "°F").payload["device_class"] == "temperature"
    odd = discovery.entity("esp-1", "Kitchen", "pressure", 3, "furlongs").payload
    assert "device_class" not in odd and odd["unit_of_measurement"] == "furlongs"
