"""Identity and the edges of HTTP and Socket.IO, against `python app.py` in eventlet mode,
with real python-socketio, paho and HTTP clients (PROTOCOL sections 2, 3, 4, 5)."""
import json
import uuid

import pytest
import requests
from conftest import app_env

from support import TIMEOUT, wait_for


@pytest.fixture
def server(broker, tmp_path, server_for):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", RATE_LIMIT="20/10"))


@pytest.fixture
def web(server, web_for):
    return lambda: web_for(server.url)


def test_http_edges_are_json_errors_never_500(server):
    """Huge before_seq, bad limits, chunked 2 MB, deep nesting, wrong type: 400/413/415, each with a code."""
    url = server.url + "/api/messages"
    for query in ("before_seq=99999999999999999999", "before_seq=-1", "before_seq=0", "limit=0",
                  "limit=abc", "limit=501", "limit=1e3", "before_seq=%EF%BC%91"):
        response = requests.get(f"{url}?{query}", timeout=TIMEOUT)
        assert response.status_code == 400 and response.json()["code"] == "bad_field", query
    assert requests.get(f"{url}?limit=500&before_seq=9223372036854775807", timeout=TIMEOUT).status_code == 200

    def chunks(total):
        for _ in range(total // 1024):
            yield b" " * 1024
    big = requests.post(url, data=chunks(2 * 1024 * 1024), headers={"Content-Type": "application/json"},
                        timeout=TIMEOUT)
    assert big.status_code == 413 and big.json()["code"] == "too_large"
    small = requests.post(url, data=iter([b'{"username":"cron",', b'"message":"chunked ok"}']),
                          headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert small.status_code == 201 and small.json()["message"]["content"] == "chunked ok"
    deep = requests.post(url, data=b"[" * 15000, headers={"Content-Type": "application/json"}, timeout=TIMEOUT)
    assert deep.status_code == 400 and deep.json()["code"] == "invalid_json"
    text = requests.post(url, data="hi", headers={"Content-Type": "text/plain"}, timeout=TIMEOUT)
    assert text.status_code == 415 and text.json()["success"] is False


def test_http_rate_limit_answers_429_with_retry_after(server):
    url = server.url + "/api/messages"
    statuses = [requests.post(url, json={"username": "cron", "message": str(i)}, timeout=TIMEOUT)
                for i in range(21)]
    assert [r.status_code for r in statuses[:20]] == [201] * 20
    limited = statuses[20]
    assert limited.status_code == 429 and limited.json()["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 10


def test_socketio_events_without_an_object_payload_are_bad_field_not_a_traceback(server, web):
    client = web()
    for event, args in (("join", ()), ("join", ("lobby",)), ("join", (None,)), ("send_message", ()),
                        ("send_message", (["x"],)), ("leave", ())):
        ack = client.call(event, *args)
        assert ack == {"ok": False, "error": ack["error"], "code": "bad_field"}, (event, args)
    assert client.call("join", {"username": "Alice"})["ok"]
    assert "Traceback" not in server.logs()


def test_look_alike_names_are_refused_and_http_gets_409(server, web):
    alice = web()
    assert alice.call("join", {"username": "Alice", "client_id": "page-alice"})["ok"]
    for lookalike in ("Аlice", "ＡＬＩＣＥ", "Alice\u3164", "alice"):
        ack = web().call("join", {"username": lookalike})
        assert (ack["ok"], ack["code"]) == (False, "name_taken"), lookalike
    for blank in ("\u3164", "\u200b\u200b", "АI", "ѕystem"):
        assert web().call("join", {"username": blank})["code"] == "bad_name", blank
    response = requests.post(server.url + "/api/messages", json={"username": "ＡＬＩＣＥ", "message": "hi"},
                             timeout=TIMEOUT)
    assert response.status_code == 409 and response.json()["code"] == "name_taken"


def test_a_refused_room_switch_keeps_the_old_room(server, web):
    alice, bob = web(), web()
    assert alice.call("join", {"username": "Alice", "room": "kitchen"})["ok"]
    assert bob.call("join", {"username": "Bob", "room": "garden"})["ok"]
    refused = bob.call("join", {"username": "alice", "room": "kitchen"})
    assert refused["code"] == "name_taken"
    sent = bob.call("send_message", {"message": "still in the garden"})
    assert sent["ok"], sent
    users = requests.get(server.url + "/api/users", params={"room": "garden"}, timeout=TIMEOUT).json()["users"]
    assert [u["username"] for u in users] == ["Bob"]
    history = requests.get(server.url + "/api/messages", params={"room": "garden"}, timeout=TIMEOUT).json()
    assert [m["content"] for m in history["messages"]] == ["still in the garden"]


def test_a_reconnecting_page_gets_its_name_back_and_its_resend_is_posted_once(server, web):
    """Same page client_id: the name comes back while the old socket is still open, and a message
    re-sent with the same client_message_id is acked with the original id and posted once."""
    observer = web()
    assert observer.call("join", {"username": "Observer"})["ok"]
    first = web()
    assert first.call("join", {"username": "Alice", "client_id": "page-1"})["ok"]
    sent = first.call("send_message", {"message": "typed once", "client_message_id": "c-1"})
    second = web()  # the page reconnected; the old socket is not gone yet
    rejoined = second.call("join", {"username": "Alice", "client_id": "page-1"})
    assert rejoined["ok"] and rejoined["user"]["client_id"] is None
    again = second.call("send_message", {"message": "typed once", "client_message_id": "c-1"})
    assert again["ok"] and again["message_id"] == sent["message_id"]
    first.close()  # the old socket's late disconnect must not take Alice out
    second.call("send_message", {"message": "end marker"})
    observer.until("chat_message", lambda m: m["content"] == "end marker")
    contents = [data["content"] for data in observer.received("chat_message")]
    assert contents.count("typed once") == 1
    users = requests.get(server.url + "/api/users", timeout=TIMEOUT).json()["users"]
    assert sorted(u["username"] for u in users) == ["Alice", "Observer"]
    assert not observer.received("system_message", lambda d: d["event"] == "leave")


def test_three_devices_with_one_name_are_all_relayed(server, probe_for):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    for number in range(3):
        probe.publish(f"{prefix}/messages/in", {"client_id": f"esp32_{number}", "username": "温度传感器",
                                                "message": f"{20 + number} °C"})
    outs = [o.json() for o in probe.wait(f"{prefix}/messages/out", count=3)]
    assert [(o["username"], o["client_id"]) for o in outs] == [
        ("温度传感器", "esp32_0"), ("温度传感器 (2)", "esp32_1"), ("温度传感器 (3)", "esp32_2")]
    assert probe.on(f"{prefix}/errors") == []


def test_bridge_online_is_announced_on_the_first_connect(broker, tmp_path, server_for, probe_for):
    env = app_env(broker, tmp_path, ASYNC_MODE="eventlet")
    probe = probe_for(env["MQTT_TOPIC_PREFIX"])
    server_for(env)
    event = probe.wait(f"{env['MQTT_TOPIC_PREFIX']}/system", match=lambda e: e["event"] == "bridge_online")[0]
    assert event.json()["room"] == "lobby"


def test_two_servers_with_one_client_id_are_named_in_the_log(broker, tmp_path, server_for):
    """They take each other's session in a loop; one log line and last_error name MQTT_CLIENT_ID."""
    shared = f"shared-{uuid.uuid4().hex[:6]}"
    first = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", MQTT_CLIENT_ID=shared))
    second = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", MQTT_CLIENT_ID=shared),
                        wait_connected=False)
    wait_for(lambda: "MQTT_CLIENT_ID" in first.logs() + second.logs(), timeout=90,
             what="a log line naming MQTT_CLIENT_ID")
    line = next(line for line in (first.logs() + second.logs()).splitlines() if "MQTT_CLIENT_ID" in line)
    assert repr(shared) in line and "ERROR" in line

    def status_names_it():
        for server in (first, second):
            try:
                body = requests.get(server.url + "/mqtt/status", timeout=5).json()
            except (requests.RequestException, json.JSONDecodeError):
                continue
            if "MQTT_CLIENT_ID" in (body["mqtt_status"]["last_error"] or ""):
                return True
        return False
    wait_for(status_names_it, timeout=60, what="last_error naming MQTT_CLIENT_ID")
