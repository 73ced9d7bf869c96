"""Commands and requests in the shipped clients (PROTOCOL 11), each client a real process.

The device side (--on-command, the ESP32 sketch) needs only a real mosquitto and a paho
"controller" that publishes commands exactly as the contract says. --command and
--history-since go through the real server (`python app.py`), one for the module, on a
broker of this module's own with the `chatroom` prefix (the sketch's).
"""
import json
import os
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timedelta, timezone

import pytest
import requests
from arduino_build import build_sketch
from conftest import app_env
from devices import DeviceProcess
from test_broker_identity import ACL_EXAMPLE, PASSWORDS, DevicesBroker, login
from test_clients import CLIENTS, LineReader, node_modules  # noqa: F401  (a fixture)

from support import (
    TIMEOUT,
    Mosquitto,
    MqttProbe,
    ServerProcess,
    password_file,
    stop_process,
    unique_prefix,
    wait_for,
)

TOKEN = "commands-test-token"
DECLARED = {"led": {"type": "bool"}, "reboot": {"type": "bool"},
            "mode": {"type": "enum", "options": ["eco", "comfort"]}}

# argv: COMMAND VALUE-as-JSON; stdin: the command JSON. One line per run in the log.
HANDLER = """#!/bin/sh
printf '%s %s ' "$1" "$2" >> "{log}"; cat >> "{log}"; echo >> "{log}"
case "$1" in reboot) echo "starting..."; printf 'no reboots today\033[0m\n' >&2; exit 3;; esac
printf '{{"%s": %s}}\\n' "$1" "$2"
"""


def client_argv(kind: str, port: int, prefix: str, *args: str) -> list[str]:
    program = ([sys.executable, str(CLIENTS / "python_client.py")] if kind == "python"
               else ["node", str(CLIENTS / "nodejs_client.js")])
    return [*program, "--broker", "127.0.0.1", "--port", str(port), "--prefix", prefix, *args]


@pytest.fixture(params=["python", "node"])
def kind(request):
    if request.param == "node":
        request.getfixturevalue("node_modules")
    return request.param


def write_handler(tmp_path):
    log = tmp_path / "handler.log"
    handler = tmp_path / "handler.sh"
    handler.write_text(HANDLER.format(log=log))
    handler.chmod(0o755)
    return handler, log


def command(name: str, value, age: float = 0.0, **extra) -> dict:
    """A command as the bridge publishes it (PROTOCOL 11)."""
    sent = datetime.now(timezone.utc) - timedelta(seconds=age)
    return {"command_id": str(uuid.uuid4()), "command": name, "value": value, "from": "Controller",
            "timestamp": sent.isoformat(), **extra}


def start_device(kind, port, prefix, client_id, handler, *extra) -> subprocess.Popen:
    return subprocess.Popen(client_argv(kind, port, prefix, "--name", f"{kind} lamp", "--client-id", client_id,
                                        "--commands", json.dumps(DECLARED), "--on-command", str(handler), *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


# --- the device side: a real mosquitto and a paho controller --------------------------------------------

def test_on_command_declares_runs_the_handler_and_acks(kind, broker, tmp_path):
    """--on-command: the join declares --commands; each command on P/devices/<id>/commands runs the
    handler once (argv COMMAND VALUE, stdin the command) and is answered on .../commands/ack with the
    handler's stdout as the result, or its last stderr line as the error. Undeclared commands, values
    outside their type and stale commands are refused without running it; a redelivery gets the same
    ack without a second run."""
    prefix, device_id = unique_prefix(), f"{kind}-lamp"
    handler, log = write_handler(tmp_path)
    own = f"{prefix}/devices/{device_id}"
    with MqttProbe(broker.port, f"{prefix}/#") as controller:
        proc = start_device(kind, broker.port, prefix, device_id, handler)
        try:
            join = controller.wait(f"{prefix}/users/join/{device_id}")[0].json()
            assert join["commands"] == DECLARED and join["username"] == f"{kind} lamp"
            sent = [command("led", True), command("reboot", True), command("fan", 1), command("led", "yes"),
                    command("mode", "comfort", age=120), command("mode", "eco")]
            for body in sent:
                controller.publish(f"{own}/commands", body)
            controller.wait(f"{own}/commands/ack", count=len(sent))
            controller.publish(f"{own}/commands", sent[0])  # the first one again: a QoS 1 redelivery
            acks = [r.json() for r in controller.wait(f"{own}/commands/ack", count=len(sent) + 1)]
            by_id = {}
            for ack in acks:
                by_id.setdefault(ack["command_id"], []).append(ack)
            led, reboot, fan, bad_value, stale, mode = (by_id[body["command_id"]] for body in sent)
            assert led == [{"command_id": sent[0]["command_id"], "ok": True, "result": {"led": True}}] * 2
            # Its last stderr line, escaped: the server takes printable text only.
            assert reboot == [{"command_id": sent[1]["command_id"], "ok": False,
                               "error": "no reboots today\\x1b[0m"}]
            assert fan[0]["ok"] is False and "unknown command" in fan[0]["error"]
            assert bad_value[0]["ok"] is False and "true or false" in bad_value[0]["error"]
            assert stale[0]["ok"] is False and "60 s ago" in stale[0]["error"]
            assert mode == [{"command_id": sent[5]["command_id"], "ok": True, "result": {"mode": "eco"}}]
            # Settled (every ack is in): the handler ran exactly for the three it should have, once each.
            runs = [line.split(" ", 2) for line in log.read_text().splitlines()]
            assert [(name, value) for name, value, _ in runs] == [("led", "true"), ("reboot", "true"),
                                                                  ("mode", '"eco"')]
            assert json.loads(runs[0][2]) == sent[0]
            lines = LineReader(proc)
            lines.wait_for('command reboot = true from Controller: error: no reboots today')
            assert controller.on(f"{prefix}/errors") == []
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(TIMEOUT) == 0
            assert controller.wait(f"{prefix}/users/leave/{device_id}")[0].json() == {"client_id": device_id}
        finally:
            stop_process(proc)


def test_on_command_with_a_login_behind_the_shipped_acl(tmp_path):
    """The shipped ACL (clients/mosquitto/acl.example) and devices conf: the device logged in as
    esp-a gets its commands and its acks reach the bridge's login; esp-b can neither read esp-a's
    commands nor ack in its name (the broker drops both)."""
    handler, log = write_handler(tmp_path)
    passwords = password_file(tmp_path / "passwd", PASSWORDS)
    acl = tmp_path / "acl"
    acl.write_text(ACL_EXAMPLE.read_text())
    broker = DevicesBroker(tmp_path / "devices-broker", passwords, acl).start()
    own = "chatroom/devices/esp-a"
    proc = subprocess.Popen(client_argv("python", broker.port, "chatroom", "--commands", json.dumps(DECLARED),
                                        "--on-command", str(handler)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "MQTT_USERNAME": "esp-a", "MQTT_PASSWORD": PASSWORDS["esp-a"]})
    bridge, other = login(broker, "chatroom-bridge", "chatroom/#"), login(broker, "esp-b", f"{own}/#")
    try:
        bridge.wait("chatroom/users/join/esp-a")
        forged = command("led", False)
        other.publish(f"{own}/commands/ack", {"command_id": forged["command_id"], "ok": True})
        sent = command("led", True)
        bridge.publish(f"{own}/commands", sent)
        assert [r.json() for r in bridge.wait(f"{own}/commands/ack")] == [
            {"command_id": sent["command_id"], "ok": True, "result": {"led": True}}]
        # Settled: the device's own ack came after esp-b's publication, which never arrived.
        assert [r.json()["command_id"] for r in bridge.on(f"{own}/commands/ack")] == [sent["command_id"]]
        assert other.received == []
        assert len(log.read_text().splitlines()) == 1
    finally:
        bridge.stop()
        other.stop()
        stop_process(proc)
        broker.kill()


def test_on_command_flags_are_checked_before_connecting(kind, broker, tmp_path):
    """Bad --commands, a handler that is not executable, or two modes at once: exit 2 with the reason."""
    handler, _ = write_handler(tmp_path)
    plain = tmp_path / "plain.sh"
    plain.write_text("#!/bin/sh\n")
    cases = [(["--commands", '{"led": {"type": "switch"}}', "--on-command", str(handler)], "needs a type"),
             (["--commands", '{"a b": {"type": "bool"}}', "--on-command", str(handler)], "1-32 letters"),
             (["--commands", json.dumps(DECLARED), "--on-command", str(plain)], "not executable"),
             (["--on-command", str(handler)], "go together"),
             (["--send", "hi", "--history-since", "3"], "cannot be combined")]
    for args, reason in cases:
        done = subprocess.run(client_argv(kind, broker.port, "nobody", *args), capture_output=True, text=True,
                              timeout=60)
        assert done.returncode == 2 and reason in done.stderr, (args, done.stderr)


def test_history_since_exits_3_when_no_server_answers(kind, broker):
    """Nobody answers requests under this prefix: after --timeout the client says so, exits 3, and
    asked on its own requests topic without joining (no join, no leave, no will)."""
    prefix = unique_prefix()
    with MqttProbe(broker.port, f"{prefix}/#") as probe:
        done = subprocess.run(client_argv(kind, broker.port, prefix, "--client-id", "asker", "--history-since", "7",
                                          "--timeout", "1"), capture_output=True, text=True, timeout=60)
        assert done.returncode == 3 and "no answer" in done.stderr, done.stderr
        request = probe.wait(f"{prefix}/devices/asker/requests")[0].json()
        assert {k: v for k, v in request.items() if k != "request_id"} == {
            "request": "history", "room": "lobby", "after_seq": 7, "limit": 100}
        assert isinstance(request["request_id"], str) and request["request_id"]
        assert [r.topic for r in probe.received] == [f"{prefix}/devices/asker/requests"]


def test_history_since_waits_out_rate_limited_answers(kind, broker):
    """Requests spend the device's rate-limit bucket: a `rate_limited` answer is asked again after a
    pause instead of ending the listing. A paho stand-in answers in the server's format
    (docs/PROTOCOL.md, Requests): two refusals, then the page (filling a real server's bucket
    takes 20 requests, more than this test is worth in suite time)."""
    prefix = unique_prefix()
    topic = f"{prefix}/devices/{kind}-patient/requests"
    asked = []

    def answer(client, userdata, message):
        request = json.loads(message.payload)
        asked.append(request)
        reply = ({"request_id": request["request_id"], "ok": False, "code": "rate_limited",
                  "error": "too many requests; slow down"} if len(asked) <= 2 else
                 {"request_id": request["request_id"], "ok": True, "result": {
                     "room": "lobby", "last_seq": 9, "truncated": False, "messages": [
                         {"type": "user_message", "username": "ann", "content": "late but there", "seq": 9,
                          "timestamp": datetime.now(timezone.utc).isoformat()}]}})
        client.publish(topic.replace("/requests", "/responses"), json.dumps(reply), qos=1)

    with MqttProbe(broker.port, topic) as server:
        server.client.on_message = answer
        done = subprocess.run(client_argv(kind, broker.port, prefix, "--client-id", f"{kind}-patient",
                                          "--history-since", "8"), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("] ann: late but there")
    assert [r["after_seq"] for r in asked] == [8, 8, 8]


@pytest.fixture(scope="module")
def sketch(tmp_path_factory):
    """The ESP32 sketch built once (g++, the real PubSubClient and ArduinoJson, -Werror)."""
    return build_sketch(CLIENTS / "esp32_sensor" / "esp32_sensor.ino", tmp_path_factory.mktemp("sketch"),
                        {"SENSOR_DHT22": "0"}, werror=True)


def test_esp32_sketch_declares_its_led_and_acks_commands(sketch, own_broker):
    """The sketch (g++, the real PubSubClient and ArduinoJson) declares `led` (bool) in its join,
    switches LED_PIN for a command on chatroom/devices/<id>/commands and acks it with the LED's
    state; an undeclared command or a value that is not a bool is refused in the ack."""
    own = "chatroom/devices/esp32-aabbcc"
    with MqttProbe(own_broker.port, "chatroom/#") as controller:
        device = DeviceProcess([str(sketch), "120"], {**os.environ, "HOST_MQTT_HOST": "127.0.0.1",
                                                      "HOST_MQTT_PORT": str(own_broker.port), "HOST_TIME_SCALE": "30"})
        try:
            join = controller.wait("chatroom/users/join/esp32-aabbcc")[0].json()
            assert join["commands"] == {"led": {"type": "bool"}}
            sent = [command("led", True), command("led", "on"), command("fan", True), command("led", False)]
            for body in sent:
                controller.publish(f"{own}/commands", body)
            acks = [r.json() for r in controller.wait(f"{own}/commands/ack", count=len(sent))]
            assert acks == [{"command_id": sent[0]["command_id"], "ok": True, "result": True},
                            {"command_id": sent[1]["command_id"], "ok": False, "error": "led expects true or false"},
                            {"command_id": sent[2]["command_id"], "ok": False, "error": "unknown command"},
                            {"command_id": sent[3]["command_id"], "ok": True, "result": False}]
            # The pin itself (the host core prints every digitalWrite): low at start, on, off.
            assert device.wait_line(lambda line: line.startswith("pin 2 = "), count=3) == [
                "pin 2 = LOW", "pin 2 = HIGH", "pin 2 = LOW"]
            device.wait_line(lambda line: line == "command led from Controller: LED on")
        finally:
            device.stop()


# --- through the real server: --command (HTTP) and --history-since (MQTT requests) ----------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One `python app.py` with API_TOKEN on a broker of its own, prefix `chatroom`."""
    workdir = tmp_path_factory.mktemp("commands-server")
    broker = Mosquitto(workdir / "mosquitto").start()
    env = app_env(broker, workdir, MQTT_TOPIC_PREFIX="chatroom", API_TOKEN=TOKEN, ASYNC_MODE="eventlet")
    process = ServerProcess(env, log_path=workdir / "server.log")
    try:
        process.start(wait_connected=False)  # /mqtt/status needs the token: waited on below
        process.broker = broker
        wait_for(lambda: api(process, "GET", "/mqtt/status").status_code == 200, what="bridge connected")
        yield process
    finally:
        process.stop()
        broker.stop()


def api(server, method: str, path: str, **kwargs):
    return requests.request(method, server.url + path, headers={"Authorization": f"Bearer {TOKEN}"},
                            timeout=TIMEOUT, **kwargs)


def declared(server, client_id: str) -> bool:
    """The server knows the device's commands (its join was taken)."""
    response = api(server, "GET", f"/api/devices/{client_id}/commands")
    return response.status_code == 200 and bool(response.json()["commands"])


def run_controller(kind, server, *args) -> subprocess.CompletedProcess:
    """The client as a controller: --command over HTTP with the token from $API_TOKEN."""
    return subprocess.run(client_argv(kind, server.broker.port, "chatroom", "--server", server.url, "--name",
                                      f"{kind} controller", *args),
                          capture_output=True, text=True, timeout=60, env={**os.environ, "API_TOKEN": TOKEN})


def test_command_flag_drives_a_device_and_prints_its_ack(kind, server, tmp_path, node_modules):  # noqa: F811
    """--command DEVICE COMMAND VALUE: the server publishes the command, the other client's
    --on-command device runs its handler and acks, and the ack is printed (exit 0); the device's
    refusal is printed and exits 1; the room's audit trail names the controller."""
    other = "node" if kind == "python" else "python"  # the two clients talk to each other
    handler, log = write_handler(tmp_path)
    device_id = f"{other}-lamp-for-{kind}"
    device = start_device(other, server.broker.port, "chatroom", device_id, handler)
    try:
        wait_for(lambda: declared(server, device_id), what="the device declared its commands")
        before = ([{"seq": 0}] + api(server, "GET", "/api/messages", params={"limit": 1}).json()["messages"])[-1]["seq"]
        done = run_controller(kind, server, "--command", device_id, "led", "true")
        assert done.returncode == 0, done.stderr
        answer = json.loads(done.stdout)
        assert (answer["ok"], answer["result"]) == (True, {"led": True}) and answer["command_id"]
        refused = run_controller(kind, server, "--command", device_id, "reboot", "true")
        assert refused.returncode == 1 and "no reboots today" in refused.stderr
        assert json.loads(refused.stdout)["ok"] is False
        assert [line.split(" ", 2)[:2] for line in log.read_text().splitlines()] == [["led", "true"],
                                                                                     ["reboot", "true"]]
        history = api(server, "GET", "/api/messages", params={"limit": 100}).json()["messages"]
        asked = [m for m in history if m["type"] == "system_message" and (m.get("data") or {}).get("event") == "command"
                 and m["data"]["command_id"] == answer["command_id"]]
        assert [m["username"] for m in asked] == [f"{kind} controller"], history[-4:]
        # The audit trail as --history-since prints it (stored records keep their text in `content`).
        audit = subprocess.run(client_argv(kind, server.broker.port, "chatroom", "--client-id", f"{kind}-auditor",
                                           "--history-since", str(before)), capture_output=True, text=True, timeout=60)
        assert audit.returncode == 0, audit.stderr
        records = [line.split("] * ", 1)[1] for line in audit.stdout.splitlines() if "] * " in line]
        assert len(records) == 4 and "led = true" in records[0] and "reboot refused: no reboots today" in records[3]
    finally:
        stop_process(device)


def test_command_flag_reports_timeout_unknown_device_and_bad_values(kind, server):
    """A declared device that never answers: exit 3 after --timeout; a device never seen: exit 1
    with unknown_device; a value outside the declared type: exit 1 with bad_field."""
    silent = f"silent-{kind}"
    with MqttProbe(server.broker.port) as device:
        device.publish(f"chatroom/users/join/{silent}", {"username": f"silent {kind}", "commands": DECLARED})
        wait_for(lambda: declared(server, silent), what="the silent device declared its commands")
        timeout = run_controller(kind, server, "--command", silent, "led", "true", "--timeout", "1")
        assert timeout.returncode == 3 and "timeout" in timeout.stderr, timeout.stderr
        unknown = run_controller(kind, server, "--command", f"nobody-{kind}", "led", "true")
        assert unknown.returncode == 1 and "unknown_device" in unknown.stderr, unknown.stderr
        bad = run_controller(kind, server, "--command", silent, "mode", "turbo")
        assert bad.returncode == 1 and "bad_field" in bad.stderr, bad.stderr
        device.publish(f"chatroom/users/leave/{silent}", {})


def test_command_flag_drives_the_esp32_sketch(sketch, server):
    """End to end: the Python client's --command, the server, mosquitto, the sketch's LED and back."""
    device = DeviceProcess([str(sketch), "120"], {**os.environ, "HOST_MQTT_HOST": "127.0.0.1",
                                                  "HOST_MQTT_PORT": str(server.broker.port), "HOST_TIME_SCALE": "30"})
    try:
        wait_for(lambda: declared(server, "esp32-aabbcc"), what="the sketch declared its led")
        done = run_controller("python", server, "--command", "esp32-aabbcc", "led", "true")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["result"] is True
        device.wait_line(lambda line: line == "pin 2 = HIGH")
    finally:
        device.stop()


@pytest.fixture(scope="module")
def posted(server):
    """105 messages in the lobby (more than one page of 100): their seqs, in order."""
    seqs = []
    for number in range(105):
        response = api(server, "POST", "/api/messages", json={"username": "historian", "message": f"entry {number}"})
        assert response.status_code == 201, response.text
        seqs.append(response.json()["message"]["seq"])
    return seqs


def test_history_since_prints_the_room_after_a_seq(kind, server, posted):
    """--history-since SEQ asks on P/devices/<id>/requests and prints, from .../responses, every
    message after SEQ once, in order, over two pages; it never joins the room."""
    after = posted[1]
    done = subprocess.run(client_argv(kind, server.broker.port, "chatroom", "--client-id", f"{kind}-reader",
                                      "--history-since", str(after)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    printed = [line.split("] ", 1)[1] for line in done.stdout.splitlines() if "historian:" in line]
    assert printed == [f"historian: entry {number}" for number in range(2, 105)]
    assert f"the last seq is {posted[-1]}" in done.stderr
    users = api(server, "GET", "/api/users").json()["users"]
    assert f"{kind}-reader" not in [u["client_id"] for u in users]
