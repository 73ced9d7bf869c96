"""`python app.py` as a real process, in both async modes, with real clients.

MQTT -> web, web -> MQTT, HTTP -> both, history across a restart, clean
shutdown, and start-up refusing bad configuration.
"""
import os
import signal
import subprocess
import sys

import pytest
import requests
from conftest import app_env

from support import ROOT, TIMEOUT, MqttProbe, SocketIOClient, free_port, port_open, wait_for


@pytest.fixture(params=["eventlet", "threading"])
def server(request, broker, tmp_path, server_for):
    env = app_env(broker, tmp_path, ASYNC_MODE=request.param)
    return server_for(env)


@pytest.fixture
def web(server, web_for):
    return lambda: web_for(server.url)


def test_mqtt_device_message_reaches_the_web_page(server, web, probe_for):
    """mosquitto_pub-style input shows up live for a web client, with the join event first."""
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    alice = web()
    assert alice.call("join", {"username": "Alice"})["ok"]
    probe = probe_for(prefix)
    probe.publish(f"{prefix}/messages/in", {"client_id": "esp32-1", "username": "Kitchen",
                                            "message": "23.5 °C", "data": {"temperature": 23.5}})
    joined = alice.until("system_message", lambda e: e["event"] == "join" and e["username"] == "Kitchen")
    assert joined["message"] == "Kitchen joined"
    # user_list is coalesced (sent once per 250 ms of presence changes): it may come after the message.
    users = alice.until("user_list", lambda data: len(data["users"]) == 2)
    message = alice.until("chat_message")
    assert {(u["username"], u["source"]) for u in users["users"]} == {("Alice", "web"), ("Kitchen", "mqtt")}
    assert (message["username"], message["content"], message["data"]) == ("Kitchen", "23.5 °C",
                                                                         {"temperature": 23.5})


def test_web_message_is_published_on_mqtt_once(server, web, probe_for):
    """A web message appears on messages/out once, in the PROTOCOL format, UTF-8."""
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    alice, bob = web(), web()
    assert alice.call("join", {"username": "Alice"})["ok"]
    assert bob.call("join", {"username": "Bob"})["ok"]
    ack = alice.call("send_message", {"message": "你好 from the web"})
    assert ack["ok"]
    received = probe.wait(f"{prefix}/messages/out")[0]
    assert "你好".encode() in received.payload and b"\\u" not in received.payload
    out = received.json()
    assert (out["message_id"], out["source"], out["username"]) == (ack["message_id"], "web", "Alice")
    assert bob.until("chat_message")["message_id"] == ack["message_id"]
    assert len(probe.on(f"{prefix}/messages/out")) == 1


def test_http_post_reaches_web_and_mqtt(server, web, probe_for):
    """curl-style POST goes to the page and to MQTT."""
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    alice = web()
    assert alice.call("join", {"username": "Alice"})["ok"]
    response = requests.post(server.url + "/api/messages", json={"username": "cron", "message": "backup done"},
                             timeout=TIMEOUT)
    assert response.status_code == 201
    assert alice.until("chat_message")["content"] == "backup done"
    assert probe.wait(f"{prefix}/messages/out")[0].json()["source"] == "http"


def test_history_survives_a_restart_and_seq_continues(broker, tmp_path, server_for, probe_for):
    """Stop the server, start it again on the same database: history is there, seq goes on."""
    env = app_env(broker, tmp_path)
    first = server_for(env)
    for i in range(3):
        requests.post(first.url + "/api/messages", json={"username": "u", "message": f"m{i}"}, timeout=TIMEOUT)
    assert first.stop() == 0
    second = server_for(env)
    with SocketIOClient(second.url) as client:
        ack = client.call("join", {"username": "Newcomer"})
        assert [m["content"] for m in ack["history"]] == ["m0", "m1", "m2"]
        posted = requests.post(second.url + "/api/messages", json={"username": "u", "message": "m3"},
                               timeout=TIMEOUT).json()["message"]
        assert posted["seq"] == 4


def test_sigterm_publishes_offline_and_exits_cleanly(broker, tmp_path, server_for, probe_for):
    """SIGTERM: retained bridge state becomes offline and the process exits 0."""
    env = app_env(broker, tmp_path, ASYNC_MODE="eventlet")
    server = server_for(env)
    prefix = env["MQTT_TOPIC_PREFIX"]
    assert server.stop(signal.SIGTERM) == 0
    state = probe_for(prefix, subscribe=f"{prefix}/bridge/state").wait(f"{prefix}/bridge/state")[0]
    assert state.retain and state.json() == {"state": "offline"}


def test_server_serves_chat_while_broker_is_unreachable(tmp_path, server_for):
    """No broker: the page and HTTP work, /mqtt/status says 503 and why."""
    env = {"ASYNC_MODE": "eventlet", "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": "1",
           "DATABASE_PATH": str(tmp_path / "c.db"), "RATE_LIMIT": "0", "MQTT_TOPIC_PREFIX": "nobroker"}
    server = server_for(env, wait_connected=False)
    assert requests.get(server.url + "/", timeout=TIMEOUT).status_code == 200
    wait_for(lambda: server.status()[1]["mqtt_status"]["last_error"], what="connection error recorded")
    code, body = server.status()
    assert code == 503 and body["success"] is False and "cannot reach broker" in body["error"]
    assert requests.post(server.url + "/api/messages", json={"username": "u", "message": "x"},
                         timeout=TIMEOUT).status_code == 201


@pytest.mark.parametrize("name, value", [("PORT", "abc"), ("MQTT_QOS", "3"), ("ASYNC_MODE", "gevent"),
                                         ("RATE_LIMIT", "fast"), ("LOG_LEVEL", "chatty")])
def test_bad_configuration_stops_with_one_clear_line(name, value, tmp_path):
    """A bad value exits with code 2 and one line naming the variable, no traceback."""
    env = {"PATH": "/usr/bin:/bin", name: value, "DATABASE_PATH": str(tmp_path / "c.db"),
           "ASYNC_MODE": "threading" if name != "ASYNC_MODE" else value}
    result = subprocess.run([sys.executable, str(ROOT / "app.py")], env=env, cwd=str(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and name in lines[0] and "Traceback" not in result.stderr


def test_socketio_refuses_other_origins_unless_configured(broker, tmp_path, server_for):
    """Same origin only by default; CORS_ORIGINS lets a named origin in (Engine.IO handshake)."""
    def handshake(server, origin):
        return requests.get(server.url + "/socket.io/?EIO=4&transport=polling", headers={"Origin": origin},
                            timeout=TIMEOUT).status_code

    strict = server_for(app_env(broker, tmp_path))
    assert handshake(strict, "http://evil.example") == 400
    assert handshake(strict, strict.url) == 200
    open_one = server_for(app_env(broker, tmp_path, CORS_ORIGINS="http://dashboard.example"))
    assert handshake(open_one, "http://dashboard.example") == 200
    assert handshake(open_one, "http://evil.example") == 400
    assert handshake(open_one, open_one.url) == 200, "the page's own origin stays allowed"
    behind_proxy = requests.get(strict.url + "/socket.io/?EIO=4&transport=polling", timeout=TIMEOUT,
                                headers={"Origin": "https://chat.example", "X-Forwarded-Proto": "https",
                                         "X-Forwarded-Host": "chat.example"})
    assert behind_proxy.status_code == 200, "a reverse proxy's public origin is the page's own"


def test_ensure_broker_starts_mosquitto_when_none_answers(tmp_path):
    """`make run`'s broker step: nothing on MQTT_PORT -> mosquitto started there with the shipped config."""
    port = free_port()
    env = {**os.environ, "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(port), "TMPDIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-m", "tools.ensure_broker"], cwd=str(ROOT), env=env,
                            capture_output=True, text=True, timeout=120)
    pid_file = tmp_path / "chatroom-mosquitto" / f"mosquitto-{port}.pid"
    try:
        assert result.returncode == 0, result.stderr
        assert f"MQTT broker running at 127.0.0.1:{port}" in result.stderr
        with MqttProbe(port, "check/#") as probe:
            probe.publish("check/it", {"ok": True})
            probe.wait("check/it")
        again = subprocess.run([sys.executable, "-m", "tools.ensure_broker"], cwd=str(ROOT), env=env,
                               capture_output=True, text=True, timeout=120)
        assert again.returncode == 0 and "reachable" in again.stderr
    finally:
        wait_for(pid_file.exists, what="mosquitto pid file")
        os.kill(int(pid_file.read_text()), signal.SIGTERM)


def test_make_run_stops_the_broker_it_started(tmp_path):
    """`make run` (tools.run): no broker -> mosquitto started; SIGINT -> server and that mosquitto stop."""
    port, web_port = free_port(), free_port()
    env = {**os.environ, "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(port), "TMPDIR": str(tmp_path),
           "PORT": str(web_port), "DATABASE_PATH": str(tmp_path / "run.db"), "ASYNC_MODE": "eventlet",
           "MQTT_CLIENT_ID": f"make-run-{port}"}
    env.pop("OPENAI_API_KEY", None)
    runner = subprocess.Popen([sys.executable, "-m", "tools.run"], cwd=str(ROOT), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pid_file = tmp_path / "chatroom-mosquitto" / f"mosquitto-{port}.pid"
    try:
        wait_for(lambda: requests.get(f"http://127.0.0.1:{web_port}/mqtt/status", timeout=2).status_code == 200
                 if port_open(web_port) else False, timeout=60, what="server connected to its broker")
        broker_pid = int(pid_file.read_text())
        os.kill(runner.pid, signal.SIGINT)
        output = runner.communicate(timeout=60)[0].decode()
        assert runner.returncode == 0, output
        assert f"stopped the mosquitto this run started (pid {broker_pid})" in output
        wait_for(lambda: not os.path.exists(f"/proc/{broker_pid}"), what="mosquitto gone")
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()


def test_port_in_use_and_bad_database_path_stop_with_one_line(tmp_path):
    """A taken PORT or an unusable DATABASE_PATH: exit 2 and one clear line, no traceback."""
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases = [({"PORT": str(port)}, "cannot serve on 127.0.0.1"),
                 ({"PORT": str(free_port()), "DATABASE_PATH": "/proc/no/such/chat.db"}, "DATABASE_PATH")]
        for extra, words in cases:
            env = {"PATH": "/usr/bin:/bin", "ASYNC_MODE": "threading", "MQTT_ENABLE": "false",
                   "DATABASE_PATH": str(tmp_path / "c.db"), **extra}
            result = subprocess.run([sys.executable, str(ROOT / "app.py")], env=env, cwd=str(tmp_path),
                                    capture_output=True, text=True, timeout=60)
            lines = [line for line in result.stderr.splitlines() if line.strip()]
            assert result.returncode == 2 and len(lines) == 1 and words in lines[0], result.stderr
