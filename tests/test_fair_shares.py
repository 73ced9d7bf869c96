"""Fair shares under hostile load (PROTOCOL 9): what a stranger with many ids fills, a person
can still use; error replies and log lines are shares, not first come. Real mosquitto."""
import json
import logging

from support import wait_for


def test_a_person_gets_into_a_lobby_that_strangers_device_ids_filled(make_app, probe_for):
    """Finding 4: 1 000 users/join with new client_ids made the lobby room_full for people
    (and a heartbeat every 10 minutes kept it so). The longest-silent device now gives way."""
    app = make_app(MAX_ROOM_MEMBERS="20")
    probe = probe_for(app.prefix)
    for number in range(30):
        probe.publish(f"{app.prefix}/users/join", {"client_id": f"stranger-{number:03d}"})
    probe.wait(f"{app.prefix}/system", count=30, match=lambda e: e["event"] == "join")
    app.drain()
    assert len(app.http.get("/api/users").get_json()["users"]) == 20
    person = app.socket()
    ack = person.emit("join", {"username": "Alice"}, callback=True)
    assert ack["ok"], ack
    users = app.http.get("/api/users").get_json()["users"]
    assert len(users) == 20 and "Alice" in [u["username"] for u in users]
    leaves = [e.json() for e in probe.wait(f"{app.prefix}/system", count=11, match=lambda e: e["event"] == "leave")]
    assert leaves[-1]["username"] == "stranger-010"  # the longest silent of those still present
    assert "chatroom_devices_evicted_total 11.0" in app.http.get("/metrics").get_data(as_text=True)


def test_a_person_opens_a_room_when_strangers_filled_the_room_table(make_app, probe_for):
    app = make_app(MAX_ROOMS="5")
    probe = probe_for(app.prefix)
    for number in range(10):
        probe.publish(f"{app.prefix}/r{number}/users/join", {"client_id": f"stranger-{number}"})
    probe.wait(f"{app.prefix}/r9/system", match=lambda e: e["event"] == "join")
    app.drain()
    person = app.socket()
    ack = person.emit("join", {"username": "Alice", "room": "family"}, callback=True)
    assert ack["ok"], ack
    assert "family" in app.components.rooms.rooms_with_members()
    assert len(app.components.rooms.rooms_with_members()) == 5


def test_error_replies_for_invalid_ids_are_not_one_bucket(make_app, probe_for):
    """Finding 14: 10 invalid client_ids within a minute silenced the replies to everyone's
    invalid ids for that minute. Each claimed id now has its own allowance."""
    app = make_app()
    probe = probe_for(app.prefix)
    for number in range(15):
        probe.publish(f"{app.prefix}/messages/in", {"client_id": f"bad id\t{number}", "message": "hi"})
    probe.wait(f"{app.prefix}/errors", count=15)
    for _ in range(12):  # one sender repeating itself is still held to its own allowance
        probe.publish(f"{app.prefix}/messages/in", {"client_id": "bad id\tsame", "message": "hi"})
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "good", "message": "after"})
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["content"] == "after")
    app.drain()
    wait_for(lambda: app.status()["mqtt_status"]["messages_rejected"] == 27, what="27 rejections counted")
    assert len(probe.on(f"{app.prefix}/errors")) == 25
    assert app.status()["mqtt_status"]["errors_suppressed"] == 2


def test_rejection_log_lines_are_bounded_across_all_senders(make_app, probe_for, caplog):
    """Finding 8: 3 000 too_long messages from new client_ids were 3 000 log lines in a second.
    Every rejection is still counted and answered (per sender), but the log gets a budget."""
    app = make_app()
    probe = probe_for(app.prefix)
    caplog.set_level(logging.WARNING, logger="mqtt_service.bridge")
    for number in range(300):
        probe.client.publish(f"{app.prefix}/messages/in",
                             json.dumps({"client_id": f"s{number}", "message": "x" * 2001}), qos=1)
    probe.wait(f"{app.prefix}/errors", count=300, timeout=60)
    assert app.status()["mqtt_status"]["rejections_by_code"]["too_long"] == 300
    lines = [r for r in caplog.records if r.name == "mqtt_service.bridge" and "rejected" in r.getMessage()]
    assert 1 <= len(lines) <= 60, len(lines)
