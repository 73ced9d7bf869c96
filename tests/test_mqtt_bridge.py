"""The MQTT bridge against a real mosquitto: topics, payloads, errors, counters.

The whole module runs twice: with MQTT 3.1.1 (the default) and with MQTT_PROTOCOL=5,
where the bridge and the devices speak MQTT 5 (PROTOCOL 12).
"""
import functools
import json
import re
import time
from datetime import datetime, timedelta, timezone

import pytest

from support import wait_for


@pytest.fixture(scope="module", params=["3.1.1", "5"], ids=["mqtt311", "mqtt5"])
def mqtt_protocol(request) -> str:
    return request.param


@pytest.fixture
def make_app(make_app, mqtt_protocol):
    """conftest's make_app, with the module's protocol."""
    return functools.partial(make_app, MQTT_PROTOCOL=mqtt_protocol)


@pytest.fixture
def probe_for(broker, mqtt_protocol):
    """conftest's probes, speaking the module's protocol."""
    from support import MqttProbe

    probes: list[MqttProbe] = []

    def make(prefix: str, subscribe: str | None = None) -> MqttProbe:
        probes.append(MqttProbe(broker.port, subscribe or f"{prefix}/#", protocol=mqtt_protocol).start())
        return probes[-1]

    yield make
    for probe in probes:
        probe.stop()


def test_the_bridge_speaks_the_configured_protocol(make_app, mqtt_protocol, probe_for):
    """MQTT 5: a session that outlives the connection (expiry, not clean_session); 3.1.1: clean_session off."""
    app = make_app()
    client = app.components.bridge.connection.client
    assert client.protocol == (5 if mqtt_protocol == "5" else 4)
    assert app.status()["mqtt_status"]["broker_info"]["protocol"] == mqtt_protocol
    if mqtt_protocol == "5":
        assert client._clean_start is False
        assert client._connect_properties.SessionExpiryInterval == 0xFFFFFFFF
    else:
        assert client._clean_session is False


DEVICE = {"client_id": "esp32-1", "username": "Kitchen", "message": "23.5 °C",
          "data": {"temperature": 23.5, "humidity": 41}}


def test_device_message_is_published_once_on_out_with_implicit_join(make_app, probe_for):
    """A device's message joins it (one join event) and appears on out exactly once."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in", DEVICE)
    out = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert {k: out[k] for k in ("type", "username", "content", "room", "seq", "source", "client_id", "data")} == {
        "type": "user_message", "username": "Kitchen", "content": "23.5 °C", "room": "lobby", "seq": 1,
        "source": "mqtt", "client_id": "esp32-1", "data": {"temperature": 23.5, "humidity": 41}}
    assert out["reply_to"] is None and out["client_message_id"] is None and len(out["message_id"]) == 36
    joins = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "join")
    assert joins[0].json()["message"] == "Kitchen joined"
    probe.publish(f"{app.prefix}/messages/in", {**DEVICE, "message": "second"})
    probe.wait(f"{app.prefix}/messages/out", count=2)
    app.drain()
    assert len(probe.on(f"{app.prefix}/messages/out")) == 2
    assert len([r for r in probe.on(f"{app.prefix}/system") if r.json()["event"] == "join"]) == 1


def test_non_ascii_round_trip_is_byte_exact(make_app, probe_for):
    """UTF-8 in, UTF-8 out: 3 bytes per Chinese character, no \\u escapes."""
    app = make_app()
    probe = probe_for(app.prefix)
    text = "温度 23.5 °C — ok ✓ 🌡"
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "c1", "message": text})
    raw = probe.wait(f"{app.prefix}/messages/out")[0].payload
    assert text.encode("utf-8") in raw and b"\\u" not in raw


def test_bridge_state_is_retained_online(make_app, broker, probe_for):
    """A late subscriber reads the retained online state."""
    app = make_app()
    wait_for(lambda: app.status()["mqtt_status"]["messages_sent"] >= 1, what="online acknowledged")
    late = probe_for(app.prefix, subscribe=f"{app.prefix}/bridge/state")
    state = late.wait(f"{app.prefix}/bridge/state")[0]
    assert state.retain and state.json() == {"state": "online"}


def test_join_and_leave_update_presence_and_system(make_app, probe_for):
    """users/join and users/leave change /api/users and produce system events."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/users/join", {"client_id": "pi-1", "username": "Garage Pi"})
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "join")
    users = app.http.get("/api/users").get_json()["users"]
    assert [(u["username"], u["source"], u["client_id"]) for u in users] == [("Garage Pi", "mqtt", "pi-1")]
    probe.publish(f"{app.prefix}/users/leave", {"client_id": "pi-1"})
    leave = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")[0].json()
    assert leave["message"] == "Garage Pi left" and leave["username"] == "Garage Pi"
    assert app.http.get("/api/users").get_json()["users"] == []


def test_other_rooms_use_their_own_topics(make_app, probe_for):
    """P/R/messages/in reaches room R and comes out on P/R/messages/out, not the lobby."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/kitchen/messages/in", {"client_id": "k1", "message": "hot"})
    out = probe.wait(f"{app.prefix}/kitchen/messages/out")[0].json()
    assert out["room"] == "kitchen" and out["seq"] == 1
    probe.wait(f"{app.prefix}/kitchen/system", match=lambda e: e["event"] == "join")
    assert probe.on(f"{app.prefix}/messages/out") == []
    assert app.http.get("/api/messages?room=kitchen").get_json()["messages"][0]["content"] == "hot"


BAD_INPUT = [
    ("messages/in", b"not json", "invalid_json", None),
    ("messages/in", b"\xff\xfe\x00", "invalid_json", None),
    ("messages/in", b"[1,2,3]", "invalid_json", None),
    ("messages/in", b'{"message": "no id"}', "missing_field", None),
    ("messages/in", b'{"client_id": "d1"}', "missing_field", "d1"),
    ("messages/in", b'{"client_id": "d1", "message": "   "}', "missing_field", "d1"),
    ("messages/in", json.dumps({"client_id": "d1", "message": "x" * 2001}).encode(), "too_long", "d1"),
    ("messages/in", b'{"client_id": "d1", "message": "hi", "username": "system"}', "bad_name", "d1"),
    ("messages/in", b'{"client_id": "d1", "message": "hi", "username": "AI"}', "bad_name", "d1"),
    ("messages/in", b'{"client_id": "d1", "message": "hi", "data": [1]}', "bad_field", "d1"),
    ("messages/in", b'{"client_id": 12, "message": "hi"}', "bad_field", None),
    ("messages/in", b'{"client_id": "d", "message": "' + b"x" * 17000 + b'"}', "too_large", None),
    ("users/join", b'{"username": "nobody"}', "missing_field", None),
    ("users/join", b'{"client_id": "d1", "username": ""}', None, None),  # empty name = absent: valid
    ("users/leave", b"{}", "missing_field", None),
]


@pytest.mark.parametrize("kind, payload, code, client_id", BAD_INPUT)
def test_bad_input_gets_one_error_and_the_relay_carries_on(make_app, probe_for, kind, payload, code, client_id):
    """Each bad payload: one error on P/errors with its code, counted; a valid message still relays."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/{kind}", payload)
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "good", "message": "still here"})
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["content"] == "still here")
    app.drain()
    errors = [r.json() for r in probe.on(f"{app.prefix}/errors")]
    status = app.status()["mqtt_status"]
    if code is None:
        assert errors == [] and status["messages_rejected"] == 0
        return
    assert len(errors) == 1, errors
    error = errors[0]
    assert (error["type"], error["code"], error["topic"], error["client_id"]) == (
        "error", code, f"{app.prefix}/{kind}", client_id)
    assert error["error"] and error["timestamp"].endswith("+00:00")
    assert status["messages_rejected"] == 1 and status["messages_received"] == 2
    assert status["is_connected"] and status["handler_errors"] == 0


def test_unknown_room_topic_is_rejected(make_app, probe_for):
    """A reserved word as room segment is not a room: bad_field on P/errors."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/users/users/join", {"client_id": "x"})
    error = probe.wait(f"{app.prefix}/errors")[0].json()
    assert error["code"] == "bad_field" and error["client_id"] == "x"


def test_duplicate_message_id_is_dropped_and_counted(make_app, probe_for):
    """A QoS 1 redelivery (same client_id + message_id) enters the room once."""
    app = make_app()
    probe = probe_for(app.prefix)
    message = {"client_id": "d1", "message": "once", "message_id": "m-1"}
    probe.publish(f"{app.prefix}/messages/in", message)
    probe.publish(f"{app.prefix}/messages/in", message)
    probe.publish(f"{app.prefix}/messages/in", {**message, "client_id": "d2"})  # other device: not a dup
    probe.wait(f"{app.prefix}/messages/out", count=2)
    app.drain()
    outs = [r.json() for r in probe.on(f"{app.prefix}/messages/out")]
    assert [(m["client_id"], m["client_message_id"]) for m in outs] == [("d1", "m-1"), ("d2", "m-1")]
    assert app.status()["mqtt_status"]["messages_duplicate"] == 1


def test_rate_limited_device_gets_an_error(make_app, probe_for):
    """Over RATE_LIMIT, a device gets rate_limited on P/errors; others are unaffected."""
    app = make_app(RATE_LIMIT="2/3600")
    probe = probe_for(app.prefix)
    for i in range(3):
        probe.publish(f"{app.prefix}/messages/in", {"client_id": "chatty", "message": f"m{i}"})
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "calm", "message": "hello"})
    error = probe.wait(f"{app.prefix}/errors")[0].json()
    assert (error["code"], error["client_id"]) == ("rate_limited", "chatty")
    probe.wait(f"{app.prefix}/messages/out", count=3)
    app.drain()
    assert [m.json()["content"] for m in probe.on(f"{app.prefix}/messages/out")] == ["m0", "m1", "hello"]


def test_status_counters_are_exact_after_a_known_sequence(make_app, probe_for):
    """received/sent/rejected/duplicate and the MQTT user table match what happened."""
    app = make_app()
    probe = probe_for(app.prefix)
    # the retained online state, the bridge_online event in the lobby (every connect, the first too)
    # and the bridge's Home Assistant discovery config
    wait_for(lambda: app.status()["mqtt_status"]["messages_sent"] == 3, what="online state acknowledged")
    assert app.status()["mqtt_status"]["last_message_time"] is None
    p = app.prefix
    before = datetime.now(timezone.utc)
    probe.publish(f"{p}/users/join", {"client_id": "a", "username": "Alpha"})          # join event
    probe.publish(f"{p}/messages/in", {"client_id": "a", "message": "1", "message_id": "x"})  # out
    probe.publish(f"{p}/messages/in", {"client_id": "a", "message": "1", "message_id": "x"})  # duplicate
    probe.publish(f"{p}/messages/in", {"client_id": "b", "message": "2"})              # join event + out
    probe.publish(f"{p}/messages/in", b"{bad")                                          # error
    probe.wait(f"{p}/errors")
    probe.wait(f"{p}/messages/out", count=2)
    app.drain()
    # sent = online state + bridge_online + HA bridge config + 2 joins + 2 device availabilities
    #        + 2 outs + 1 error, each acknowledged by the broker
    expected_sent = 10
    wait_for(lambda: app.status()["mqtt_status"]["messages_sent"] == expected_sent, what="acks")
    body = app.status()
    status = body["mqtt_status"]
    assert body["success"] is True
    assert {k: status[k] for k in ("messages_received", "messages_sent", "messages_rejected",
                                   "messages_duplicate", "messages_dropped", "outbox_size",
                                   "reconnect_count", "mqtt_users_count")} == {
        "messages_received": 5, "messages_sent": expected_sent, "messages_rejected": 1,
        "messages_duplicate": 1, "messages_dropped": 0, "outbox_size": 0,
        "reconnect_count": 0, "mqtt_users_count": 2}
    users = {u["client_id"]: u for u in status["mqtt_users"]}
    assert users["a"]["message_count"] == 1 and users["a"]["username"] == "Alpha"
    assert users["b"]["message_count"] == 1 and users["b"]["room"] == "lobby"
    assert f"{p}/messages/in" in status["active_topics"]
    assert status["broker_info"]["client_id"] == app.settings.mqtt_client_id
    assert body["room"] == {"rooms": 1, "web_users": 0, "messages_total": 2}
    # When the last one arrived, in PROTOCOL's timestamp format (milliseconds, +00:00).
    last = status["last_message_time"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", last), last
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(last) <= datetime.now(timezone.utc)


def test_a_device_under_a_present_web_users_name_is_shown_with_a_number(make_app, probe_for):
    """A device is never refused for its name, and never passes as the web user: `alice (2)`."""
    app = make_app()
    probe = probe_for(app.prefix)
    web = app.socket()
    assert web.emit("join", {"username": "Alice"}, callback=True)["ok"]
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "evil", "username": "аlice", "message": "hi"})
    out = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert (out["username"], out["client_id"], out["source"]) == ("аlice (2)", "evil", "mqtt")
    assert probe.on(f"{app.prefix}/errors") == []
    web.disconnect()


def test_silent_mqtt_users_are_marked_left(make_app, probe_for):
    """After MQTT_USER_TIMEOUT of silence a device leaves (checked with an explicit cut-off)."""
    app = make_app(MQTT_USER_TIMEOUT="3600")
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/users/join", {"client_id": "quiet"})
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "join")
    app.components.rooms.clock = lambda: time.monotonic() + 3601  # an hour of silence, without waiting it
    assert [u.client_id for u in app.components.device_timeout.expire()] == ["quiet"]
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")
    assert app.http.get("/api/users").get_json()["users"] == []


@pytest.mark.parametrize("max_batch", [256, 8])  # 8: the network thread commits by itself too
def test_a_burst_is_acknowledged_only_after_the_commit_that_stored_it(make_app, broker, monkeypatch, max_batch,
                                                                      mqtt_protocol):
    """Group commit: each PUBACK follows the commit of its message's batch, so a crash
    before that commit leaves the message with the broker, which sends it again."""
    import threading

    from mqtt_service import bridge as bridge_module
    from support import MqttProbe

    monkeypatch.setattr(bridge_module, "MAX_BATCH", max_batch)
    app = make_app()
    bridge, store = app.components.bridge, app.components.store
    lock = threading.Lock()
    counts = {"stored": 0, "committed": 0, "acked": 0, "batches": 0}
    early = []
    append, commit, ack = store.append_to_batch, store.commit_batch, bridge._client.ack

    def counting_append(message):
        append(message)
        with lock:
            counts["stored"] += 1

    def counting_commit():
        with lock:
            stored = counts["stored"]  # at least these are in the batch being committed
        commit()
        with lock:
            counts["committed"], counts["batches"] = stored, counts["batches"] + 1

    def checking_ack(mid, qos):
        with lock:
            counts["acked"] += 1
            if counts["acked"] > counts["committed"]:
                early.append(mid)
        return ack(mid, qos)

    store.append_to_batch, store.commit_batch, bridge._client.ack = counting_append, counting_commit, checking_ack
    count = 400
    device = MqttProbe(broker.port, protocol=mqtt_protocol)
    device.client.max_inflight_messages_set(0)  # the whole burst in flight at once
    with MqttProbe(broker.port, f"{app.prefix}/messages/out", protocol=mqtt_protocol) as probe, device:
        for i in range(count):
            device.client.publish(f"{app.prefix}/messages/in",
                                  json.dumps({"client_id": "esp-burst", "message": f"r{i}"}), qos=1)
        probe.wait(f"{app.prefix}/messages/out", count=count, timeout=60)
        wait_for(lambda: counts["acked"] == count, what="every message acknowledged")
        app.drain()
        assert len(probe.on(f"{app.prefix}/messages/out")) == count
    assert early == [] and counts["committed"] == count
    assert counts["batches"] < count  # grouped, not one commit per message


def test_device_messages_sent_while_the_bridge_is_stopped_arrive_after_it_starts(make_app, probe_for, tmp_path):
    """The persistent session (3.1.1: clean_session off; 5: session expiry) keeps QoS 1 messages for us."""
    client_id, database = "bridge-persistent", str(tmp_path / "persistent.db")
    first = make_app(MQTT_CLIENT_ID=client_id, DATABASE_PATH=database)
    prefix = first.prefix
    first.stop()
    probe = probe_for(prefix)
    probe.publish(f"{prefix}/messages/in", {"client_id": "d1", "message": "while you were away"})
    make_app(MQTT_CLIENT_ID=client_id, DATABASE_PATH=database, MQTT_TOPIC_PREFIX=prefix)
    assert probe.wait(f"{prefix}/messages/out")[0].json()["content"] == "while you were away"


def test_a_publication_can_carry_mqtt5_properties_for_an_answer(make_app, probe_for, broker, mqtt_protocol):
    """For device requests (issue 25): a request's Response Topic and Correlation Data are read
    from the paho message; an answer published with them carries the Correlation Data back
    (MQTT 5), or goes without properties (3.1.1)."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from mqtt_service.mqtt5 import reply_properties, response_of
    from support import MqttProbe

    app = make_app()
    answers = probe_for(app.prefix, subscribe=f"{app.prefix}/answers/#")
    requester = MqttProbe(broker.port, f"{app.prefix}/requests/#", protocol=mqtt_protocol).start()
    try:
        request = Properties(PacketTypes.PUBLISH)
        request.ResponseTopic, request.CorrelationData = f"{app.prefix}/answers/esp-1", b"req-42"
        requester.client.publish(f"{app.prefix}/requests/x", b"{}", qos=1,
                                 properties=request if mqtt_protocol == "5" else None).wait_for_publish(20)
        received = requester.wait(f"{app.prefix}/requests/x")[0]
        asked = response_of(received)
        if mqtt_protocol == "3.1.1":
            assert asked is None
            asked = (f"{app.prefix}/answers/esp-1", b"req-42")
        assert asked == (f"{app.prefix}/answers/esp-1", b"req-42")
        app.components.bridge.outbound.publish_with_properties(asked[0], b'{"ok": true}', reply_properties(asked[1]))
        answer = answers.wait(asked[0])[0]
        assert answer.json() == {"ok": True}
        correlation = getattr(answer.properties, "CorrelationData", None)
        assert correlation == (b"req-42" if mqtt_protocol == "5" else None)
    finally:
        requester.stop()
