"""What devices (and strangers posing as devices) may leave retained on the broker is
bounded (PROTOCOL 9): keys per device, devices, days of silence; Home Assistant's birth
re-announces at most once a minute; forgetting is rate-limited; a rename re-sends one config.
Unit tests of the device table, then counts of what a real mosquitto retains."""
import time
import uuid

from test_home_assistant import retained_now

from chatroom.core.model import Message, SystemEvent
from mqtt_service.homeassistant.device_topics import DeviceTopics
from mqtt_service.homeassistant.discovery import Discovery
from support import MqttProbe, wait_for


class Table:
    """A device table with a clock and a list of what it published."""

    def __init__(self, **options):
        self.now = [1_000_000.0]
        self.published: list[tuple[str, bytes]] = []
        self.devices = DeviceTopics(Discovery("chatroom", "homeassistant", "bridge"),
                                    lambda topic, payload, retain: self.published.append((topic, payload)),
                                    True, clock=lambda: self.now[0], **options)

    def reading(self, client_id, data, name=None):
        self.devices(Message(username=name or client_id, content="x", room="lobby", source="mqtt",
                             client_id=client_id, data=data))

    def presence(self, event, client_id, name=None, previous=None):
        self.devices(SystemEvent(event, "", "lobby", name or client_id, client_id=client_id, previous=previous))

    def retained(self):
        """Topic -> payload as a broker would hold them (an empty payload deletes)."""
        held = {}
        for topic, payload in self.published:
            if payload:
                held[topic] = payload
            else:
                held.pop(topic, None)
        return held


def test_keys_per_device_are_bounded_across_its_messages():
    table = Table(max_keys=8)
    for start in (0, 5, 10):
        table.reading("esp-1", {f"k{n}": n for n in range(start, start + 5)})
    configs = [t for t in table.retained() if t.startswith("homeassistant/")]
    assert len(configs) == 8
    state = [p for t, p in table.published if t == "chatroom/devices/esp-1/state"][-1]
    assert state.count(b'"k') == 8


def test_one_device_too_many_clears_the_longest_silent_ones_retained_topics():
    """Finding 6: 2 300 fresh ids x 32 keys left 107 862 retained messages (66 MB) in the broker."""
    table = Table(max_devices=3)
    for number in range(10):
        table.now[0] += 1
        table.presence("join", f"d{number}")
        table.reading(f"d{number}", {f"k{n}": n for n in range(4)})
        table.presence("leave", f"d{number}")
    held = table.retained()
    assert {t.split("/")[2] for t in held if t.startswith("chatroom/devices/")} == {"d7", "d8", "d9"}
    assert len(held) == 3 * (2 + 4)
    assert table.devices.cleared == 7


def test_devices_silent_for_the_retention_period_are_cleared_unless_present():
    table = Table()
    table.presence("join", "gone")
    table.reading("gone", {"t": 1})
    table.presence("leave", "gone")
    table.presence("join", "quiet-but-here")
    table.now[0] += 31 * 86400
    table.presence("join", "recent")
    assert table.devices.expire(table.now[0] - 30 * 86400) == 1
    held = table.retained()
    assert not [topic for topic in held if "gone" in topic]
    assert "chatroom/devices/quiet-but-here/availability" in held


def test_a_rename_re_sends_one_config_not_one_per_key():
    """Finding 10: each rename of a 64-key device re-sent every config."""
    table = Table(max_keys=64)
    table.presence("join", "esp-1", "Kitchen")
    table.reading("esp-1", {f"k{n}": n for n in range(64)}, name="Kitchen")
    before = len(table.published)
    table.presence("rename", "esp-1", "Pantry", previous="Kitchen")
    sent = table.published[before:]
    configs = [p for t, p in sent if t.startswith("homeassistant/")]
    assert len(configs) == 1 and b'"name":"Pantry"' in configs[0]


def test_forget_of_an_unknown_device_is_none_and_a_second_forget_clears_nothing():
    table = Table()
    assert table.devices.forget("nobody") is None
    table.reading("esp-1", {"t": 1})
    assert len(table.devices.forget("esp-1")) == 3  # state, availability, one config
    assert table.devices.forget("esp-1") == []
    table.reading("esp-1", {"t": 2})  # heard again: forgettable again
    assert table.devices.forget("esp-1")


def test_recalled_devices_count_against_the_bound_and_the_retention():
    table = Table(max_devices=3)
    table.devices.recall([("newest", "2026-12-01T00:00:00.000+00:00"), ("older", "2026-11-01T00:00:00.000+00:00"),
                          ("oldest", "2026-10-01T00:00:00.000+00:00"), ("beyond", "2026-09-01T00:00:00.000+00:00")])
    table.reading("fresh", {"t": 1})
    cleared = {t.split("/")[2] for t, p in table.published if not p}
    assert cleared == {"oldest"}  # "beyond" was never recalled: history had more than the bound


# --- against a real mosquitto --------------------------------------------------------------

def test_a_flood_of_fresh_device_ids_leaves_a_bounded_retained_footprint(make_app, broker):
    """Finding 6, counted in the broker: 60 fresh ids x 2 messages x 32 keys, then leave."""
    discovery = f"ha{uuid.uuid4().hex[:8]}"
    app = make_app(HA_DISCOVERY_PREFIX=discovery, MAX_DEVICES="10")
    with MqttProbe(broker.port) as stranger:
        for number in range(60):
            for half in range(2):
                stranger.publish(f"{app.prefix}/messages/in", {
                    "client_id": f"s{number:03d}", "message": "x",
                    "data": {f"k{half}_{n}": n for n in range(16)}})
            stranger.publish(f"{app.prefix}/users/leave", {"client_id": f"s{number:03d}"})
    app.drain()
    wait_for(lambda: app.components.bridge.outbox.flushed(), what="everything handed to the broker")
    held = retained_now(broker.port, [f"{discovery}/#", f"{app.prefix}/devices/#"])
    assert len(held) <= 10 * (2 + 32) + 1, len(held)  # + the bridge's own config
    devices = {r.topic.split("/")[2] for r in held if r.topic.startswith(f"{app.prefix}/devices/")}
    assert len(devices) == 10


def test_home_assistant_births_re_announce_at_most_once_a_minute(make_app, broker):
    """Finding 3: 16 births each re-sent ~19 000 configs. Now one re-announcement, paced."""
    discovery = f"ha{uuid.uuid4().hex[:8]}"
    app = make_app(HA_DISCOVERY_PREFIX=discovery)
    probe = MqttProbe(broker.port, [f"{discovery}/#"]).start()
    try:
        with MqttProbe(broker.port) as device:
            device.publish(f"{app.prefix}/messages/in", {"client_id": "esp-1", "message": "x",
                                                          "data": {"a": 1, "b": 2, "c": True}})
        entity_configs = lambda: [r for r in probe.received if "/chatroom_esp-1/" in r.topic]
        wait_for(lambda: len(entity_configs()) == 3, what="first announcement")
        reannouncer = app.components.bridge.devices.reannouncer
        with MqttProbe(broker.port) as home_assistant:
            for _ in range(16):
                home_assistant.publish(f"{discovery}/status", b"online")
        app.drain()
        wait_for(lambda: app.status()["mqtt_status"]["messages_received"] == 17, what="births received")
        assert reannouncer.done.wait(20)
        wait_for(lambda: app.components.bridge.outbox.flushed(), what="re-announcement handed to the broker")
        wait_for(lambda: len(entity_configs()) >= 6, what="announced again")
        bridge_configs = [r for r in probe.received if r.topic.endswith("/connectivity/config")]
        assert len(entity_configs()) == 6 and len(bridge_configs) == 2
    finally:
        probe.stop()


def test_forget_is_rate_limited_and_unknown_devices_are_404(make_app, broker):
    """Finding 10: 300 forgets in 4 s published 40 000 empty retained messages."""
    app = make_app(RATE_LIMIT="3/60")
    with MqttProbe(broker.port) as device:
        device.publish(f"{app.prefix}/messages/in", {"client_id": "esp-1", "message": "x", "data": {"t": 1}})
    app.drain()
    wait_for(lambda: app.http.get("/api/readings?client_id=esp-1&key=t").get_json()["readings"], what="stored")
    assert app.http.post("/api/devices/nobody/forget").status_code == 404
    first = app.http.post("/api/devices/esp-1/forget")
    assert first.status_code == 200 and first.get_json()["cleared_topics"]
    again = app.http.post("/api/devices/esp-1/forget")
    assert again.status_code == 200 and again.get_json()["cleared_topics"] == []
    limited = app.http.post("/api/devices/esp-1/forget")
    assert limited.status_code == 429 and limited.get_json()["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


def test_new_devices_get_retained_topics_at_a_bounded_rate(monkeypatch):
    """A flood of invented ids: beyond NEW_DEVICES_PER_MINUTE a new device's message still
    chats but leaves nothing retained until a later minute (one log line, counted)."""
    from chatroom.core.limits import Throttle
    from mqtt_service.homeassistant import device_topics as devices_module

    clock = [0.0]
    table = Table()
    table.devices._admissions = Throttle(count=5, seconds=60.0, now=lambda: clock[0], max_keys=1)
    for number in range(20):
        table.reading(f"s{number}", {"t": number})
    held = table.retained()
    assert len({t.split("/")[2] for t in held if t.startswith("chatroom/devices/")}) == 5
    assert table.devices.deferred == 15
    clock[0] += 61
    table.reading("s19", {"t": 19})  # a later minute: it gets its topics with its next message
    assert "chatroom/devices/s19/state" in table.retained()
    assert devices_module.NEW_DEVICES_PER_MINUTE >= 60  # a house full of new devices is not held back


def test_after_a_restart_the_device_table_comes_back_from_history(make_app, broker, tmp_path):
    """The bounds and the retention cover devices heard before a restart too."""
    database = str(tmp_path / "kept.db")
    first = make_app(DATABASE_PATH=database)
    with MqttProbe(broker.port) as device:
        for name in ("old-1", "old-2"):
            device.publish(f"{first.prefix}/messages/in", {"client_id": name, "message": "x", "data": {"t": 1}})
    first.drain()
    wait_for(lambda: first.status()["mqtt_status"]["devices"]["tracked"] == 2, what="two devices tracked")
    first.stop()
    second = make_app(DATABASE_PATH=database, MQTT_TOPIC_PREFIX=first.prefix)
    assert second.status()["mqtt_status"]["devices"]["tracked"] == 2
    assert second.components.bridge.devices.expire(time.time() + 1) == 2


def test_an_ignored_birth_builds_nothing():
    """Review of issue 21: each birth rebuilt every config on paho's thread before the
    once-a-minute check (200 births delayed a device's message by 12 s)."""
    from mqtt_service.homeassistant.reannounce import Reannouncer

    built, sent = [], []
    reannouncer = Reannouncer(lambda deadline: True, clock=lambda: 0.0)

    def build():
        built.append(1)
        return ["a", "b"]
    for _ in range(200):
        reannouncer.start(build, sent.append)
    assert reannouncer.done.wait(10)
    assert built == [1] and sent == ["a", "b"]


def test_a_present_device_is_never_pushed_out():
    """Review of issue 21: strangers' new ids cleared a present thermostat's entities (its
    heartbeat joins are silent, so they never refreshed its place). Now only devices that
    are not present give way; with every tracked device present a newcomer waits."""
    table = Table(max_devices=2)
    table.presence("join", "thermostat")
    table.reading("thermostat", {"t": 21})
    table.now[0] += 1
    table.reading("s1", {"t": 1})          # not present (it never joined): may give way later
    table.now[0] += 1
    table.reading("s2", {"t": 2})          # pushes out s1, not the quieter thermostat
    held = table.retained()
    assert "chatroom/devices/thermostat/state" in held and "chatroom/devices/s1/state" not in held
    table.presence("join", "s2")
    table.reading("s3", {"t": 3})          # both tracked devices are present: s3 waits
    assert "chatroom/devices/s3/state" not in table.retained() and table.devices.deferred == 1


def test_pushing_out_a_recalled_device_costs_at_most_two_per_key_it_may_hold():
    """Review of issue 21: clearing one device whose history held 256 junk keys was 482 empty
    publications. A pushed-out device costs at most 2 + 2 x MAX_DEVICE_KEYS."""
    table = Table(max_devices=1, max_keys=8)
    table.devices.known_keys = lambda client_id: [f"k{n}" for n in range(256)]
    table.devices.recall([("junk", "2026-12-01T00:00:00.000+00:00")])
    table.reading("fresh", {"t": 1})
    cleared = [t for t, p in table.published if not p]
    assert len(cleared) == 2 + 2 * 8
