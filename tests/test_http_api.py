"""HTTP API: posting, history, users, readings, status, errors — with a real broker."""
import pytest

from support import wait_for


def post(app, body=None, **kwargs):
    return app.http.post("/api/messages", json=body, **kwargs)


def test_post_reaches_mqtt_and_history(make_app, probe_for):
    """POST /api/messages answers 201 with the message and publishes it on out."""
    app = make_app()
    probe = probe_for(app.prefix)
    response = post(app, {"username": "cron", "message": "backup done", "data": {"ok": True}})
    assert response.status_code == 201
    message = response.get_json()["message"]
    assert (message["username"], message["content"], message["source"], message["seq"]) == (
        "cron", "backup done", "http", 1)
    out = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert out == message
    history = app.http.get("/api/messages").get_json()
    assert history == {"success": True, "messages": [message]}


def test_post_to_a_room(make_app, probe_for):
    """`room` in the body routes the message to that room's topics."""
    app = make_app()
    probe = probe_for(app.prefix)
    assert post(app, {"username": "cron", "message": "x", "room": "ops"}).status_code == 201
    assert probe.wait(f"{app.prefix}/ops/messages/out")[0].json()["room"] == "ops"


def test_history_limit_and_before_seq(make_app):
    """GET /api/messages gives the newest `limit` before `before_seq`, oldest first."""
    app = make_app()
    for i in range(1, 8):
        post(app, {"username": "s", "message": str(i)})
    seqs = lambda q: [m["seq"] for m in app.http.get("/api/messages" + q).get_json()["messages"]]
    assert seqs("?limit=3") == [5, 6, 7]
    assert seqs("?limit=2&before_seq=4") == [2, 3]
    assert seqs("?room=elsewhere") == []


@pytest.mark.parametrize("kwargs, status, fragment", [
    ({"json": {"message": "no name"}}, 400, "username"),
    ({"json": {"username": "u"}}, 400, "message"),
    ({"json": {"username": "u", "message": "   "}}, 400, "empty"),
    ({"json": {"username": "u", "message": "x" * 2001}}, 400, "longer"),
    ({"json": {"username": "system", "message": "x"}}, 400, "reserved"),
    ({"json": {"username": "AI", "message": "x"}}, 400, "reserved"),
    ({"json": {"username": "u", "message": "x", "room": "bad room"}}, 400, "room"),
    ({"json": {"username": "u", "message": "x", "data": {"a": [1]}}}, 400, "data"),
    ({"json": [1, 2]}, 400, "object"),
    ({"data": "{not json", "content_type": "application/json"}, 400, "object"),
    ({"data": "username=u", "content_type": "application/x-www-form-urlencoded"}, 415, "application/json"),
    ({"data": "x" * 20000, "content_type": "application/json"}, 413, "larger"),
])
def test_bad_posts_get_json_errors(make_app, kwargs, status, fragment):
    """Bad input is a JSON error with the right status; nothing is posted."""
    app = make_app()
    response = app.http.post("/api/messages", **kwargs)
    assert response.status_code == status
    body = response.get_json()
    assert body["success"] is False and fragment in body["error"]
    assert app.http.get("/api/messages").get_json()["messages"] == []


def test_api_token_is_required_when_set(make_app):
    """With API_TOKEN, POST needs the bearer token (401 without it)."""
    app = make_app(API_TOKEN="s3cret")
    assert post(app, {"username": "u", "message": "x"}).status_code == 401
    assert post(app, {"username": "u", "message": "x"}, headers={"Authorization": "Bearer nope"}).status_code == 401
    ok = post(app, {"username": "u", "message": "x"}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 201


def test_http_rate_limit_answers_429(make_app):
    """Over RATE_LIMIT per HTTP client: 429; rejected posts don't use up the budget."""
    app = make_app(RATE_LIMIT="2/3600")
    assert post(app, {"username": "u", "message": ""}).status_code == 400
    assert [post(app, {"username": "u", "message": str(i)}).status_code for i in range(3)] == [201, 201, 429]
    assert "slow down" in post(app, {"username": "u", "message": "x"}).get_json()["error"]


def test_users_lists_web_and_mqtt_users_with_source(make_app, probe_for):
    """GET /api/users shows who is online and from where."""
    app = make_app()
    probe = probe_for(app.prefix)
    web = app.socket()
    assert web.emit("join", {"username": "Alice"}, callback=True)["ok"]
    probe.publish(f"{app.prefix}/users/join", {"client_id": "esp-9", "username": "Porch"})
    wait_for(lambda: len(app.http.get("/api/users").get_json()["users"]) == 2, what="two users")
    users = app.http.get("/api/users?room=lobby").get_json()["users"]
    assert sorted((u["username"], u["source"], u["client_id"]) for u in users) == [
        ("Alice", "web", None), ("Porch", "mqtt", "esp-9")]
    assert all(u["join_time"].endswith("+00:00") for u in users)
    web.disconnect()


def test_readings_series_from_device_data(make_app, probe_for):
    """GET /api/readings gives a device's values of one data key, oldest first."""
    app = make_app()
    probe = probe_for(app.prefix)
    for t in (20.5, 21.0, 21.5):
        probe.publish(f"{app.prefix}/messages/in", {"client_id": "esp", "message": f"{t} C",
                                                    "data": {"temperature": t}})
    probe.wait(f"{app.prefix}/messages/out", count=3)
    body = app.http.get("/api/readings?client_id=esp&key=temperature&limit=2").get_json()
    assert body["success"] and (body["client_id"], body["key"]) == ("esp", "temperature")
    assert [r["value"] for r in body["readings"]] == [21.0, 21.5]
    assert [r["seq"] for r in body["readings"]] == [2, 3]
    assert app.http.get("/api/readings?client_id=esp").status_code == 400


def test_healthz_and_unknown_routes(make_app):
    """/healthz is ok; an unknown API route is a JSON 404."""
    app = make_app()
    assert app.http.get("/healthz").get_json() == {"status": "ok"}
    missing = app.http.get("/api/nothing")
    assert missing.status_code == 404 and missing.get_json()["success"] is False


def test_metrics_exposes_bridge_and_room_counters(make_app, probe_for):
    """/metrics is Prometheus text with the bridge counters and per-room totals."""
    app = make_app()
    probe = probe_for(app.prefix)
    web = app.socket()  # per-room totals are kept for rooms with members (empty rooms are forgotten)
    assert web.emit("join", {"username": "Reader"}, callback=True)["ok"]
    post(app, {"username": "u", "message": "x"})
    probe.wait(f"{app.prefix}/messages/out")
    text = app.http.get("/metrics").get_data(as_text=True)
    assert 'chatroom_room_messages_total{room="lobby"} 1.0' in text
    assert "chatroom_mqtt_messages_sent_total" in text and "chatroom_mqtt_connected 1.0" in text
    assert "chatroom_socketio_clients" in text
    assert "chatroom_messages_lost_total 0.0" in text  # batches whose history commit failed
    web.disconnect()


def test_status_without_mqtt_is_200_not_running(make_app):
    """MQTT_ENABLE=false: /mqtt/status is 200 with is_running false; chat still works."""
    app = make_app(MQTT_ENABLE="false")
    response = app.http.get("/mqtt/status")
    assert response.status_code == 200
    assert response.get_json()["mqtt_status"] == {"is_connected": False, "is_running": False}
    assert post(app, {"username": "u", "message": "x"}).status_code == 201


def test_status_is_503_while_the_broker_is_unreachable(make_app):
    """Enabled but not connected: 503 with success false, an error and last_error."""
    app = make_app(start=False, MQTT_PORT="1")  # nothing listens on port 1
    app.components.start()
    wait_for(lambda: app.status()["mqtt_status"]["last_error"], what="a connection error")
    response = app.http.get("/mqtt/status")
    body = response.get_json()
    assert response.status_code == 503 and body["success"] is False
    assert "cannot reach broker" in body["error"] and body["mqtt_status"]["is_running"] is True
    assert post(app, {"username": "u", "message": "kept"}).status_code == 201
    app.drain()
    assert app.status()["mqtt_status"]["outbox_size"] == 1


def test_http_cannot_post_as_a_present_user(make_app):
    """A script cannot speak as someone who is in the room (names are unique per room)."""
    app = make_app()
    web = app.socket()
    assert web.emit("join", {"username": "Alice"}, callback=True)["ok"]
    response = post(app, {"username": "ＡＬＩＣＥ", "message": "I am Alice, honest"})
    assert response.status_code == 409 and response.get_json()["code"] == "name_taken"
    assert post(app, {"username": "alice", "message": "fine elsewhere", "room": "ops"}).status_code == 201
    web.disconnect()
