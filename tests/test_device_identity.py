"""Proven device identity (PROTOCOL 10): the device topics name the sender.

`P/[R/]messages/in/<client_id>`, `P/[R/]users/join/<client_id>`, `P/[R/]users/leave/<client_id>`:
the topic's last level is the sender (a broker ACL can bind it to the device's login; that
part is tested with a real password file and ACL in tests/test_broker_identity.py). Once a
device has spoken on its own topic, nobody may claim its id on the shared topics.
Against the session's real mosquitto.
"""
from support import wait_for


def test_a_device_topic_names_the_sender_and_the_payload_needs_no_client_id(make_app, probe_for):
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/kitchen/messages/in/esp-oven", {"username": "Oven", "message": "180 °C",
                                                                  "data": {"temperature": 180}})
    out = probe.wait(f"{app.prefix}/kitchen/messages/out")[0].json()
    assert (out["client_id"], out["username"], out["source"], out["room"]) == ("esp-oven", "Oven", "mqtt", "kitchen")
    join = probe.wait(f"{app.prefix}/kitchen/system", match=lambda e: e["event"] == "join")[0].json()
    assert join["username"] == "Oven"
    users = app.http.get("/api/users?room=kitchen").get_json()["users"]
    assert [(u["client_id"], u["source"]) for u in users] == [("esp-oven", "mqtt")]


def test_join_and_a_bare_will_on_the_device_topics(make_app, probe_for):
    """A device's LWT on P/users/leave/<client_id> may be empty: the topic says who left."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/users/join/pi-garage", {"username": "Garage Pi"})
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "join" and e["username"] == "Garage Pi")
    probe.publish(f"{app.prefix}/users/leave/pi-garage", b"")
    probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")
    assert app.http.get("/api/users").get_json()["users"] == []


def test_a_payload_client_id_that_differs_from_the_topic_is_bad_field(make_app, probe_for):
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in/esp-a", {"client_id": "esp-b", "message": "I am b"})
    error = probe.wait(f"{app.prefix}/errors")[0].json()
    assert (error["code"], error["client_id"]) == ("bad_field", "esp-a")
    probe.publish(f"{app.prefix}/messages/in/esp-a", {"client_id": "esp-a", "message": "same id is fine"})
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["content"] == "same id is fine")
    assert app.http.get("/api/users").get_json()["users"][0]["client_id"] == "esp-a"


def test_an_invalid_id_on_a_device_topic_is_refused(make_app, probe_for):
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in/{'x' * 65}", {"message": "too long an id"})
    assert probe.wait(f"{app.prefix}/errors")[0].json()["code"] == "bad_field"
    assert app.http.get("/api/users").get_json()["users"] == []


def test_a_stranger_cannot_speak_or_leave_as_a_device_proven_on_its_topic(make_app, probe_for):
    """Finding 5 of the trust review: a stranger published "fire!" with the kitchen's id and
    temperature 95, then its leave: the kitchen's retained state and availability changed.
    Once the kitchen speaks on its own topic, such claims are refused (and the refusal is
    not addressed to the kitchen, whose client would take it for its own error)."""
    app = make_app()
    probe = probe_for(app.prefix)
    kitchen = f"{app.prefix}/messages/in/esp32-kitchen"
    probe.publish(kitchen, {"username": "Kitchen", "message": "23.5 °C", "data": {"temperature": 23.5}})
    state_topic = f"{app.prefix}/devices/esp32-kitchen/state"
    probe.wait(state_topic)
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "esp32-kitchen", "message": "fire!",
                                                 "data": {"temperature": 95}})
    probe.publish(f"{app.prefix}/users/leave", {"client_id": "esp32-kitchen"})
    probe.publish(f"{app.prefix}/users/join", {"client_id": "esp32-kitchen", "username": "Impostor"})
    errors = probe.wait(f"{app.prefix}/errors", count=3)
    assert [(e.json()["code"], e.json()["client_id"]) for e in errors] == [("bad_field", None)] * 3
    probe.publish(kitchen, {"message": "still 23.5 °C", "data": {"temperature": 23.5}})
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["content"] == "still 23.5 °C")
    app.drain()
    assert [m.json()["content"] for m in probe.on(f"{app.prefix}/messages/out")] == ["23.5 °C", "still 23.5 °C"]
    assert all(e.json()["event"] == "join" for e in probe.on(f"{app.prefix}/system"))
    assert probe.on(state_topic)[-1].json()["data"] == {"temperature": 23.5}
    assert [r.payload for r in probe.on(f"{app.prefix}/devices/esp32-kitchen/availability")] == [b"online"]
    users = app.http.get("/api/users").get_json()["users"]
    assert [(u["client_id"], u["username"]) for u in users] == [("esp32-kitchen", "Kitchen")]
    assert app.status()["mqtt_status"]["messages_rejected"] == 3


def test_an_unproven_device_still_works_on_the_shared_topics(make_app, probe_for):
    """The original project's devices publish on P/messages/in with their id in the payload."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "old-esp", "message": "hello"})
    assert probe.wait(f"{app.prefix}/messages/out")[0].json()["client_id"] == "old-esp"


def test_device_topics_only_hears_nothing_on_the_shared_topics(make_app, probe_for):
    """MQTT_DEVICE_TOPICS_ONLY=true: the shared topics are not subscribed at all."""
    app = make_app(MQTT_DEVICE_TOPICS_ONLY="true")
    probe = probe_for(app.prefix)
    status = app.status()["mqtt_status"]
    assert not any(topic.endswith(("/messages/in", "/users/join", "/users/leave"))
                   for topic in status["active_topics"]), status["active_topics"]
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "esp-1", "message": "unproven"})
    probe.publish(f"{app.prefix}/messages/in/esp-1", {"message": "proven"})
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["content"] == "proven")
    app.drain()
    wait_for(lambda: app.status()["mqtt_status"]["messages_received"] >= 1, what="the proven message counted")
    assert app.status()["mqtt_status"]["messages_received"] == 1
    assert [m.json()["content"] for m in probe.on(f"{app.prefix}/messages/out")] == ["proven"]


def test_a_reply_never_names_a_proven_device_for_someone_elses_publication(make_app, probe_for):
    """Review of issue 21: `P/errors/messages/in/mallory` with a proven device's client_id in the
    payload got an error addressed to that device (whose shipped client exits on it)."""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in/esp32-kitchen", {"message": "proven"})
    probe.wait(f"{app.prefix}/messages/out")
    for topic in (f"{app.prefix}/errors/messages/in/mallory", f"{app.prefix}/system/users/leave",
                  f"{app.prefix}/a.b/messages/in"):
        probe.publish(topic, {"client_id": "esp32-kitchen", "message": "x"})
    errors = [e.json() for e in probe.wait(f"{app.prefix}/errors", count=3)]
    assert [(e["code"], e["client_id"]) for e in errors] == [("bad_field", None)] * 3


def test_an_invalid_id_on_a_device_topic_is_neither_echoed_nor_kept_whole(make_app, probe_for, caplog):
    """Review of issue 21: a 60 KB topic level was the reply's client_id, a key of the reply
    throttle (RSS to 1 GB) and part of every log line."""
    import logging

    caplog.set_level(logging.WARNING, logger="mqtt_service.bridge")
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in/{'x' * 60000}", {"message": "hi"})
    probe.publish(f"{app.prefix}/messages/in/", {"message": "hi"})
    errors = [e.json() for e in probe.wait(f"{app.prefix}/errors", count=2)]
    assert [(e["code"], e["client_id"]) for e in errors] == [("bad_field", None)] * 2
    assert all(len(r.getMessage()) < 2000 for r in caplog.records)
    keys = app.components.bridge.inbound._reply_throttle._windows
    assert all(len(str(key)) < 200 for key in keys)
