"""PROTOCOL section 9 under load from strangers: bounded work per message, bounded state, logs that
cannot be flooded or forged. Real mosquitto, real clients, bounded loads on loopback only."""
import json
import logging

import requests
import websocket
from conftest import app_env

from support import TIMEOUT, SocketIOClient, wait_for


def test_a_flood_of_bad_messages_is_counted_but_answered_and_logged_only_a_few_times(make_app, probe_for,
                                                                                       caplog):
    app = make_app()
    probe = probe_for(app.prefix)
    caplog.set_level(logging.WARNING, logger="mqtt_service.bridge")
    for _ in range(60):
        probe.publish(f"{app.prefix}/messages/in", {"client_id": "noisy", "message": ""})
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "calm", "message": ""})
    probe.wait(f"{app.prefix}/errors", match=lambda e: e["client_id"] == "calm")  # others still answered
    app.drain()
    status = app.status()["mqtt_status"]
    assert status["messages_rejected"] == 61
    noisy_replies = [e for e in probe.on(f"{app.prefix}/errors") if e.json()["client_id"] == "noisy"]
    assert len(noisy_replies) == 10 and status["errors_suppressed"] == 50
    lines = [r.getMessage() for r in caplog.records if "'noisy'" in r.getMessage()]
    assert len(lines) == 10


def test_identifiers_cannot_forge_log_lines(make_app, probe_for, caplog):
    """Every identifier a stranger sends is logged quoted: no newline of theirs starts a line of ours."""
    app = make_app()
    probe = probe_for(app.prefix)
    caplog.set_level(logging.INFO)
    forged = "x\n2026-12-02 00:00:00 INFO chatroom.app: admin logged in"
    probe.publish(f"{app.prefix}/messages/in", {"client_id": forged, "message": "hi"})
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "ok", "message": "hi", "message_id": forged})
    probe.publish(f"{app.prefix}/users/join", {"client_id": "ok2", "username": forged})
    probe.wait(f"{app.prefix}/errors", count=3)
    app.drain()
    for record in caplog.records:
        assert "\n" not in record.getMessage(), record.getMessage()


def test_a_burst_of_joins_costs_a_web_client_linear_bytes(broker, tmp_path, server_for, probe_for):
    """900 devices join at once: one watching page receives O(N) bytes, not N lists of N members.
    (Full lists on every join were ~N²/2 × 100 bytes = 50 MB here; the bound below is 2 MB.)"""
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", RATE_LIMIT="0"))
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    with SocketIOClient(server.url) as watcher:
        assert watcher.call("join", {"username": "Watcher"})["ok"]
        probe = probe_for(prefix)
        devices = 900  # under MAX_ROOM_MEMBERS (1000) with the watcher
        for number in range(devices):
            probe.client.publish(f"{prefix}/users/join", json.dumps({"client_id": f"dev-{number:04d}"}), qos=1)

        def settled() -> bool:
            lists = watcher.received("user_list")
            joins = watcher.received("system_message", lambda data: data["event"] == "join")
            return len(joins) >= devices and bool(lists) and len(lists[-1]["users"]) == devices + 1

        wait_for(settled, timeout=120, what="every join and a final list")
        lists, systems = watcher.received("user_list"), watcher.received("system_message")
        received = {"bytes": sum(len(json.dumps(data)) for data in lists + systems), "lists": len(lists),
                    "joins": sum(data["event"] == "join" for data in systems), "last_list": len(lists[-1]["users"])}
        assert received["bytes"] < 2_000_000, received
        assert received["lists"] < devices / 4, received


def test_rooms_do_not_grow_without_members(broker, tmp_path, server_for):
    """HTTP posts into 300 fresh rooms: history has them, memory and /metrics do not."""
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", RATE_LIMIT="0"))
    for number in range(300):
        response = requests.post(server.url + "/api/messages", timeout=TIMEOUT,
                                 json={"username": "spray", "message": "hi", "room": f"r{number}"})
        assert response.status_code == 201
    code, status = server.status()
    assert status["room"]["rooms"] == 0 and status["room"]["messages_total"] == 300
    metrics = requests.get(server.url + "/metrics", timeout=TIMEOUT).text
    assert 'room="r1"' not in metrics
    history = requests.get(server.url + "/api/messages", params={"room": "r299"}, timeout=TIMEOUT).json()
    assert [m["content"] for m in history["messages"]] == ["hi"]


def test_malformed_socketio_packets_log_no_traceback(broker, tmp_path, server_for):
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet"))
    ws_url = server.url.replace("http", "ws") + "/socket.io/?EIO=4&transport=websocket"
    for junk in ("42[", "4x", '42["join",', "2probe" * 100, '42{"a":1}', "9", '451-["join",{"_placeholder":true,"num":7}]'):
        sock = websocket.create_connection(ws_url, timeout=TIMEOUT)
        try:
            sock.recv()  # the Engine.IO open packet
            sock.send("40")
            sock.recv()  # connected
            sock.send(junk)
        finally:
            sock.close()
    assert requests.get(server.url + "/healthz", timeout=TIMEOUT).status_code == 200
    assert "Traceback" not in server.logs()


def test_idle_and_half_sent_connections_cannot_starve_healthz(broker, tmp_path, server_for):
    """1 100 connections that send half a request line and wait: /healthz still answers."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 2048:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet"))
    idle = []
    try:
        for _ in range(1100):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=TIMEOUT)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x")  # never finished
            idle.append(sock)
        response = requests.get(server.url + "/healthz", timeout=TIMEOUT)
        assert response.status_code == 200
    finally:
        for sock in idle:
            sock.close()


def test_new_sockets_share_their_address_bucket(broker, tmp_path, server_for):
    """RATE_LIMIT=2/3600: a new socket and page id per message is not a fresh allowance;
    one address gets 5 × the limit across all its pages and HTTP posts."""
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", RATE_LIMIT="2/3600"))
    codes = []
    for number in range(6):
        with SocketIOClient(server.url) as client:
            ack = client.call("join", {"username": f"sock{number}", "client_id": f"page-{number}"})
            codes.append(ack.get("code", "ok"))
            if ack["ok"]:
                codes.append(client.call("send_message", {"message": "hi"}).get("code", "ok"))
    # 10 tokens per address: 5 sockets × (join + message), then the address is spent.
    assert codes[:10] == ["ok"] * 10 and codes[10] == "rate_limited"
    limited = requests.post(server.url + "/api/messages", json={"username": "cron", "message": "x"},
                            timeout=TIMEOUT)
    assert limited.status_code == 429


def test_trusted_proxies_give_each_forwarded_client_its_own_bucket(broker, tmp_path, server_for):
    """Behind one proxy hop every caller comes from 127.0.0.1; X-Forwarded-For tells them apart."""
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", RATE_LIMIT="1/3600",
                                TRUSTED_PROXIES="1"))

    def post(client_address):
        return requests.post(server.url + "/api/messages", json={"username": "cron", "message": "x"},
                             headers={"X-Forwarded-For": client_address}, timeout=TIMEOUT).status_code
    assert [post("203.0.113.1"), post("203.0.113.1"), post("203.0.113.2")] == [201, 429, 201]
