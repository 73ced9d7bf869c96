"""Socket.IO events in process (Flask-SocketIO test client), with a real broker."""
import pytest

from support import wait_for


def events(client, name):
    return [packet["args"][0] for packet in client.get_received() if packet["name"] == name]


def test_join_ack_has_user_history_and_users(make_app):
    """join answers with the user, the last HISTORY_LIMIT messages and who is online."""
    app = make_app(HISTORY_LIMIT="2")
    for i in range(3):
        app.http.post("/api/messages", json={"username": "cron", "message": str(i)})
    web = app.socket()
    ack = web.emit("join", {"username": "Alice"}, callback=True)
    assert ack["ok"] and ack["user"]["username"] == "Alice" and ack["user"]["source"] == "web"
    assert [m["content"] for m in ack["history"]] == ["1", "2"]
    assert [u["username"] for u in ack["users"]] == ["Alice"]


def test_send_message_reaches_mqtt_out_and_other_web_clients(make_app, probe_for):
    """A web message is acked, pushed to the room and published on out once."""
    app = make_app()
    probe = probe_for(app.prefix)
    alice, bob = app.socket(), app.socket()
    assert alice.emit("join", {"username": "Alice"}, callback=True)["ok"]
    assert bob.emit("join", {"username": "Bob"}, callback=True)["ok"]
    ack = alice.emit("send_message", {"message": "hello 世界"}, callback=True)
    assert ack["ok"] and ack["message_id"]
    out = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert (out["username"], out["content"], out["source"], out["message_id"]) == (
        "Alice", "hello 世界", "web", ack["message_id"])
    app.drain()
    assert [m["content"] for m in events(bob, "chat_message")] == ["hello 世界"]


def test_mqtt_message_reaches_web_client(make_app, probe_for):
    """A device message is pushed to web clients as chat_message, after a join system event."""
    app = make_app()
    probe = probe_for(app.prefix)
    web = app.socket()
    assert web.emit("join", {"username": "Alice"}, callback=True)["ok"]
    app.drain()  # Alice's own join events are pushed by the room's listener thread
    web.get_received()
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "esp", "message": "21 C", "data": {"t": 21}})
    probe.wait(f"{app.prefix}/messages/out")
    app.drain()
    received = []
    # user_list is coalesced and sent up to 250 ms after the change: wait for it, no fixed sleep.
    wait_for(lambda: received.extend(web.get_received()) or "user_list" in [p["name"] for p in received],
             what="the coalesced user_list")
    by_name = {p["name"]: p["args"][0] for p in received}
    assert [p["name"] for p in received if p["name"] != "user_list"] == ["system_message", "chat_message"]
    assert by_name["chat_message"]["data"] == {"t": 21}
    assert {u["source"] for u in by_name["user_list"]["users"]} == {"web", "mqtt"}


@pytest.mark.parametrize("payload, code", [
    ({"message": ""}, "missing_field"),
    ({"message": None}, "missing_field"),
    ({"message": 5}, "bad_field"),
    ({"message": "x" * 2001}, "too_long"),
    ({"message": "x", "data": "nope"}, "bad_field"),
    ("just a string", "bad_field"),
    (["a", "list"], "bad_field"),
])
def test_bad_send_gets_ok_false_with_code(make_app, payload, code):
    """Bad input is an ack with ok false and the PROTOCOL code; the socket stays usable."""
    app = make_app()
    web = app.socket()
    assert web.emit("join", {"username": "Alice"}, callback=True)["ok"]
    ack = web.emit("send_message", payload, callback=True)
    assert ack["ok"] is False and ack["code"] == code and ack["error"]
    assert web.emit("send_message", {"message": "fine"}, callback=True)["ok"]


def test_send_before_join_is_refused(make_app):
    """A socket that has not joined cannot post."""
    app = make_app()
    ack = app.socket().emit("send_message", {"message": "hi"}, callback=True)
    assert ack == {"ok": False, "error": "join a room first", "code": "not_joined"}


@pytest.mark.parametrize("username", ["", "   ", "x" * 33, "system", "ai", None, 42])
def test_bad_usernames_are_refused(make_app, username):
    """Empty, too long, reserved or non-string names: ok false, bad_name."""
    app = make_app()
    ack = app.socket().emit("join", {"username": username}, callback=True)
    assert ack["ok"] is False and ack["code"] == "bad_name"


def test_names_are_unique_per_room_case_insensitive(make_app):
    """A second 'alice' is refused while 'Alice' is present; free again once she leaves."""
    app = make_app()
    alice, other = app.socket(), app.socket()
    assert alice.emit("join", {"username": "Alice"}, callback=True)["ok"]
    refused = other.emit("join", {"username": "alice"}, callback=True)
    assert refused["ok"] is False and refused["code"] == "name_taken" and "taken" in refused["error"]
    assert alice.emit("leave", {}, callback=True) == {"ok": True}
    assert other.emit("join", {"username": "alice"}, callback=True)["ok"]


def test_disconnect_leaves_the_room(make_app, probe_for):
    """Closing the socket is a leave: system event on MQTT and the user list shrinks."""
    app = make_app()
    probe = probe_for(app.prefix)
    web = app.socket()
    assert web.emit("join", {"username": "Alice"}, callback=True)["ok"]
    web.disconnect()
    leave = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")[0].json()
    assert leave["username"] == "Alice"
    assert app.http.get("/api/users").get_json()["users"] == []


def test_rooms_are_separate(make_app):
    """Web clients in other rooms do not see a room's messages."""
    app = make_app()
    lobby, ops = app.socket(), app.socket()
    assert lobby.emit("join", {"username": "A"}, callback=True)["ok"]
    assert ops.emit("join", {"username": "B", "room": "ops"}, callback=True)["room"] == "ops"
    ops.get_received()
    assert lobby.emit("send_message", {"message": "lobby only"}, callback=True)["ok"]
    app.drain()
    assert events(ops, "chat_message") == []


def test_web_rate_limit(make_app):
    """Over RATE_LIMIT a web sender gets rate_limited."""
    app = make_app(RATE_LIMIT="3/3600")
    web = app.socket()
    assert web.emit("join", {"username": "A"}, callback=True)["ok"]  # a presence change takes a token too
    codes = [web.emit("send_message", {"message": str(i)}, callback=True).get("code") for i in range(3)]
    assert codes == [None, None, "rate_limited"]


def test_handler_bug_becomes_an_internal_ack(make_app):
    """An unexpected exception in a handler is logged and acked, the socket lives on."""
    app = make_app()
    web = app.socket()
    assert web.emit("join", {"username": "A"}, callback=True)["ok"]
    rooms = app.components.rooms
    original = rooms.post
    rooms.post = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk on fire"))
    try:
        assert web.emit("send_message", {"message": "x"}, callback=True) == {
            "ok": False, "error": "internal error", "code": "internal"}
    finally:
        rooms.post = original
    assert web.emit("send_message", {"message": "x"}, callback=True)["ok"]
    wait_for(lambda: web.is_connected(), what="socket still connected")
