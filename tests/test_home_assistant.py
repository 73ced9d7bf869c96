"""Device readings where people already look: retained per-device state and availability
topics, and Home Assistant MQTT discovery (real mosquitto, a subscriber on the discovery prefix)."""
import uuid

import jinja2
import pytest
from ha_schema import validate

from support import MqttProbe, wait_for

READING = {"temperature": 23.5, "humidity": 41, "battery_low": False, "mode": "eco"}


@pytest.fixture
def ha(make_app, broker):
    """An app with a discovery prefix of its own, and a probe on it and on the device topics."""
    discovery = f"ha{uuid.uuid4().hex[:8]}"
    app = make_app(HA_DISCOVERY_PREFIX=discovery)
    probe = MqttProbe(broker.port, [f"{discovery}/#", f"{app.prefix}/devices/#"]).start()
    yield app, probe, discovery
    probe.stop()


def device_says(app, broker, payload):
    with MqttProbe(broker.port) as device:
        device.publish(f"{app.prefix}/messages/in", payload)


def configs(probe, discovery, node="chatroom_esp32-kitchen"):
    return [r for r in probe.received if r.topic.startswith(f"{discovery}/") and f"/{node}/" in r.topic
            and r.payload]


def retained_now(port, filters):
    """What a fresh subscriber gets: the retained messages, proven complete by a marker sent after them."""
    marker = f"marker/{uuid.uuid4().hex}"
    with MqttProbe(port, list(filters) + [marker]) as fresh:
        fresh.publish(marker, b"end")
        fresh.wait(marker)
        return [r for r in fresh.received if r.topic != marker]


def render(template: str, state: dict) -> str:
    return jinja2.Environment().from_string(template).render(value_json=state)


def test_a_device_gets_one_entity_per_key_and_a_retained_state(ha, broker):
    app, probe, discovery = ha
    device_says(app, broker, {"client_id": "esp32-kitchen", "username": "Kitchen", "message": "23.5 °C",
                              "data": READING})
    state_topic = f"{app.prefix}/devices/esp32-kitchen/state"
    state = probe.wait(state_topic)[0]
    found = wait_for(lambda: (lambda c: c if len(c) == 4 else None)(configs(probe, discovery)), what="4 configs")
    by_key = {}
    for config in found:
        component = config.topic.split("/")[1]
        payload = config.json()
        validate(component, payload)
        key = config.topic.split("/")[3]
        by_key[key] = (component, payload)
    assert set(by_key) == {"temperature", "humidity", "battery_low", "mode"}
    temperature = by_key["temperature"][1]
    assert by_key["temperature"][0] == "sensor" and temperature["unit_of_measurement"] == "°C"
    assert temperature["device_class"] == "temperature" and temperature["state_class"] == "measurement"
    assert by_key["humidity"][1]["unit_of_measurement"] == "%"
    assert by_key["battery_low"][0] == "binary_sensor" and by_key["battery_low"][1]["device_class"] == "battery"
    assert by_key["mode"][0] == "sensor" and "unit_of_measurement" not in by_key["mode"][1]
    assert temperature["device"]["name"] == "Kitchen" and temperature["device"]["identifiers"] == [
        "chatroom_esp32-kitchen"]
    assert temperature["unique_id"] == "chatroom_esp32-kitchen_temperature"
    assert [a["topic"] for a in temperature["availability"]] == [
        f"{app.prefix}/devices/esp32-kitchen/availability", f"{app.prefix}/bridge/state"]
    assert temperature["availability_mode"] == "all"
    # The templates give Home Assistant the right values from the retained state.
    body = state.json()
    assert body["data"] == READING and body["client_id"] == "esp32-kitchen" and body["timestamp"]
    assert [render(by_key[k][1]["value_template"], body) for k in ("temperature", "humidity", "battery_low",
                                                                    "mode")] == ["23.5", "41", "OFF", "eco"]
    # The bridge is a device too, the via_device of every entity, with its connectivity.
    bridge = [r for r in probe.received if r.topic.endswith("/connectivity/config")][0].json()
    validate("binary_sensor", bridge)
    assert temperature["device"]["via_device"] == bridge["device"]["identifiers"][0]
    assert render(bridge["value_template"], {"state": "online"}) == "ON"
    # Retained for whoever subscribes later: state, availability, configs.
    later = {r.topic: r for r in retained_now(broker.port, [f"{discovery}/#", f"{app.prefix}/devices/#"])}
    assert later[state_topic].json()["data"] == READING
    assert later[f"{app.prefix}/devices/esp32-kitchen/availability"].payload == b"online"
    assert len([t for t in later if "/chatroom_esp32-kitchen/" in t]) == 4


def test_configs_are_sent_once_per_new_key_never_per_reading(ha, broker):
    app, probe, discovery = ha
    for number in range(3):
        device_says(app, broker, {"client_id": "esp32-kitchen", "message": f"r{number}",
                                  "data": {**READING, "temperature": 20 + number}})
    probe.wait(f"{app.prefix}/devices/esp32-kitchen/state", count=3)
    device_says(app, broker, {"client_id": "esp32-kitchen", "message": "r3", "data": {"pressure": 1013.2}})
    probe.wait(f"{app.prefix}/devices/esp32-kitchen/state", count=4)
    app.drain()
    keys = sorted(c.topic.split("/")[3] for c in configs(probe, discovery))
    assert keys == ["battery_low", "humidity", "mode", "pressure", "temperature"]
    state = probe.on(f"{app.prefix}/devices/esp32-kitchen/state")[-1].json()
    assert state["data"] == {**READING, "temperature": 22, "pressure": 1013.2}


def test_availability_follows_presence_and_the_bridge(ha, broker):
    app, probe, discovery = ha
    availability = f"{app.prefix}/devices/esp32-kitchen/availability"
    device_says(app, broker, {"client_id": "esp32-kitchen", "message": "hi", "data": {"temperature": 21}})
    probe.wait(availability)
    with MqttProbe(broker.port) as device:
        device.publish(f"{app.prefix}/users/leave", {"client_id": "esp32-kitchen"})
    wait_for(lambda: [r.payload for r in probe.on(availability)] == [b"online", b"offline"], what="offline")
    assert all(r.payload in (b"online", b"offline") for r in probe.on(availability))
    app.stop()  # the bridge goes: its retained state says offline, so every entity is unavailable
    later = {r.topic: r for r in retained_now(broker.port, [f"{app.prefix}/bridge/state", availability])}
    assert later[f"{app.prefix}/bridge/state"].json() == {"state": "offline"}
    assert later[availability].payload == b"offline"


def test_home_assistant_restart_gets_everything_announced_again(ha, broker):
    app, probe, discovery = ha
    device_says(app, broker, {"client_id": "esp32-kitchen", "message": "hi", "data": READING})
    wait_for(lambda: len(configs(probe, discovery)) == 4, what="first announcement")
    with MqttProbe(broker.port) as home_assistant:
        home_assistant.publish(f"{discovery}/status", b"online")
    wait_for(lambda: len(configs(probe, discovery)) == 8, what="announced again")
    assert len([r for r in probe.received if r.topic.endswith("/connectivity/config")]) == 2


def test_forget_clears_every_retained_topic_of_the_device(ha, broker):
    app, probe, discovery = ha
    device_says(app, broker, {"client_id": "esp32-kitchen", "message": "hi", "data": READING})
    wait_for(lambda: len(configs(probe, discovery)) == 4, what="configs")
    response = app.http.post("/api/devices/esp32-kitchen/forget")
    assert response.status_code == 200 and response.get_json()["success"]
    app.drain()
    wait_for(lambda: not [r for r in retained_now(broker.port, [f"{discovery}/#", f"{app.prefix}/devices/#"])
                          if "esp32-kitchen" in r.topic], what="nothing retained for the device")
    assert app.http.post("/api/devices/bad%09id/forget").status_code == 400  # a tab: not a client_id


def test_names_and_ids_that_topics_cannot_carry_are_slugified_and_units_come_from_the_device(ha, broker):
    app, probe, discovery = ha
    client_id = "kitchen/sensor #1"
    device_says(app, broker, {"client_id": client_id, "username": "Küche #1 / Ofen", "message": "hot",
                              "data": {"Oven temp": 401}, "units": {"Oven temp": "°F"}})
    state = wait_for(lambda: [r for r in probe.received if r.topic.endswith("/state")], what="state")[0]
    level = state.topic.split("/")[-2]
    assert "/" not in level and "#" not in level and level.startswith("kitchen_sensor_1~")
    config = wait_for(lambda: [r for r in probe.received if r.topic.endswith("/config") and "kitchen" in r.topic],
                      what="config")[0]
    # Home Assistant's node ids take no `~`: a hashed id's node is chatroom-<slug>_<hash>.
    assert config.topic.split("/")[-3] == "chatroom-" + level.replace("~", "_")
    payload = config.json()
    validate("sensor", payload)
    assert payload["device"]["name"] == "Küche #1 / Ofen"
    assert payload["unit_of_measurement"] == "°F" and "device_class" not in payload
    assert render(payload["value_template"], state.json()) == "401"


def test_without_discovery_the_device_topics_still_work(make_app, broker):
    discovery = f"ha{uuid.uuid4().hex[:8]}"
    app = make_app(HA_DISCOVERY="false", HA_DISCOVERY_PREFIX=discovery)
    with MqttProbe(broker.port, [f"{discovery}/#", f"{app.prefix}/devices/#"]) as probe:
        device_says(app, broker, {"client_id": "plain", "message": "hi", "data": {"temperature": 20}})
        probe.wait(f"{app.prefix}/devices/plain/state")
        app.drain()
        assert not [r for r in probe.received if r.topic.startswith(discovery)]


def test_the_state_survives_a_restart(make_app, broker, tmp_path):
    """After a restart the first reading does not blank the other keys: they come from history."""
    database = str(tmp_path / "ha-restart.db")
    prefix = f"t{uuid.uuid4().hex[:8]}"
    first = make_app(DATABASE_PATH=database, MQTT_TOPIC_PREFIX=prefix, HA_DISCOVERY="false")
    device_says(first, broker, {"client_id": "esp", "message": "a", "data": {"temperature": 20, "humidity": 40}})
    first.drain()
    first.stop()
    second = make_app(DATABASE_PATH=database, MQTT_TOPIC_PREFIX=prefix, HA_DISCOVERY="false")
    with MqttProbe(broker.port, f"{prefix}/devices/esp/state") as probe:
        device_says(second, broker, {"client_id": "esp", "message": "b", "data": {"temperature": 21}})
        state = probe.wait(f"{prefix}/devices/esp/state", match=lambda s: s["data"]["temperature"] == 21)[0]
    assert state.json()["data"] == {"temperature": 21, "humidity": 40}
