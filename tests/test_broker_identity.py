"""Proven device identity with a real mosquitto (PROTOCOL 10, docs/SECURITY.md "Proven device identity").

The broker runs the shipped clients/mosquitto/mosquitto-devices.conf (port, persistence and
file paths substituted) with the shipped acl.example and a password file made with
`mosquitto_passwd -b`: each device's login may write only its own device topics. Device
B cannot speak, join or leave as device A, whatever topic it tries; an anonymous client
cannot publish at all; the shipped clients log in and work.

A `spy` login, added to this test's copy of the ACL with `topic read chatroom/#`, sees what
the broker lets through on the inbound topics (no device may read them).
"""
import json
import os
import socket
import subprocess
import sys

import pytest
from arduino_build import build_sketch
from devices import DeviceProcess
from test_clients import CLIENTS, SCRIPTS, node_modules  # noqa: F401  (node_modules: a fixture)

from support import ROOT, TIMEOUT, Mosquitto, MqttProbe, password_file, wait_for
from tools.ensure_broker import shipped_conf

DEVICES_CONF = SCRIPTS / "mosquitto-devices.conf"
ACL_EXAMPLE = SCRIPTS / "acl.example"
PASSWORDS = {"chatroom-bridge": "bridge-pw", "esp-a": "a-pw", "esp-b": "b-pw", "spy": "spy-pw"}


class DevicesBroker(Mosquitto):
    """mosquitto from the shipped mosquitto-devices.conf, with this test's port, directory,
    password file and ACL in place of /etc/mosquitto/..."""

    def __init__(self, workdir, passwords, acl):
        super().__init__(workdir, anonymous=False)
        self.passwords, self.acl = passwords, acl

    def base_conf(self) -> str:
        text = shipped_conf(self.port, self.workdir, DEVICES_CONF)
        for line in ("allow_anonymous false", "password_file /etc/mosquitto/chatroom.passwd",
                     "acl_file /etc/mosquitto/chatroom.acl", "use_username_as_clientid true"):
            assert f"\n{line}\n" in text, f"the shipped conf lost {line!r}"
        return (text.replace("/etc/mosquitto/chatroom.passwd", str(self.passwords))
                .replace("/etc/mosquitto/chatroom.acl", str(self.acl)))


@pytest.fixture
def devices_broker(tmp_path):
    passwords = password_file(tmp_path / "passwd", PASSWORDS)
    acl = tmp_path / "acl"
    acl.write_text(ACL_EXAMPLE.read_text() + "\n# test only: sees the inbound topics\n"
                   "user spy\ntopic read chatroom/#\n")
    broker = DevicesBroker(tmp_path / "devices-broker", passwords, acl).start()
    yield broker
    broker.kill()


@pytest.fixture
def secure_app(devices_broker, make_app):
    """make_app(...) logged in as the bridge on the devices broker (prefix `chatroom`, as in the ACL)."""
    def make(**overrides):
        return make_app(MQTT_PORT=devices_broker.port, MQTT_USERNAME="chatroom-bridge",
                        MQTT_PASSWORD=PASSWORDS["chatroom-bridge"], MQTT_TOPIC_PREFIX="chatroom", **overrides)
    return make


def login(broker, user, subscribe=None, will=None) -> MqttProbe:
    """A connected paho client with `user`'s password (the broker makes the login its client id)."""
    probe = MqttProbe(broker.port, subscribe, client_id=f"{user}-probe", will=will)
    probe.client.username_pw_set(user, PASSWORDS[user])
    return probe.start()


def spy_on(broker) -> MqttProbe:
    return login(broker, "spy", "chatroom/#")


def lose_power(probe: MqttProbe) -> None:
    """Drop the connection without a DISCONNECT, as a device losing power: the broker sends its will."""
    probe.client.loop_stop()
    sock = probe.client.socket()
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()


def users(app, room="lobby"):
    return [(u["client_id"], u["username"]) for u in app.http.get(f"/api/users?room={room}").get_json()["users"]]


def test_a_device_with_its_login_speaks_on_its_topics_and_its_will_makes_it_leave(secure_app, devices_broker):
    """(a) esp-a, logged in, joins and speaks on its device topics (the lobby and a room); the
    message reaches messages/out and the history; its bare will on users/leave/esp-a makes it leave."""
    app = secure_app(MQTT_DEVICE_TOPICS_ONLY="true")
    spy = spy_on(devices_broker)
    device = login(devices_broker, "esp-a", ["chatroom/messages/out", "chatroom/system"],
                   will=("chatroom/users/leave/esp-a", ""))
    device.publish("chatroom/users/join/esp-a", {"client_id": "esp-a", "username": "Kitchen A"})
    device.publish("chatroom/messages/in/esp-a", {"client_id": "esp-a", "message": "23.5 °C",
                                                  "data": {"temperature": 23.5}})
    out = device.wait("chatroom/messages/out")[0].json()  # a device may read the room's output
    assert (out["client_id"], out["username"], out["content"], out["source"]) == ("esp-a", "Kitchen A", "23.5 °C",
                                                                                   "mqtt")
    history = app.http.get("/api/messages").get_json()["messages"]
    assert [(m["client_id"], m["content"]) for m in history] == [("esp-a", "23.5 °C")]
    assert users(app) == [("esp-a", "Kitchen A")]
    # Another room: chatroom/+/messages/in/%u.
    device.publish("chatroom/kitchen/messages/in/esp-a", {"message": "oven on"})
    assert spy.wait("chatroom/kitchen/messages/out")[0].json()["client_id"] == "esp-a"

    lose_power(device)
    will = spy.wait("chatroom/users/leave/esp-a")[0]
    assert will.payload == b""  # the bare will: the topic says who left
    leave = spy.wait("chatroom/system", match=lambda e: e["event"] == "leave")[0].json()
    assert leave["username"] == "Kitchen A"
    assert users(app) == [] and users(app, "kitchen") == [("esp-a", "esp-a")]  # names are per room
    app.drain()
    status = app.status()["mqtt_status"]
    assert (status["is_connected"], status["reconnect_count"], status["messages_dropped"]) == (True, 0, 0)
    spy.stop()


def test_device_b_cannot_speak_join_or_leave_as_device_a(secure_app, devices_broker):
    """(b) esp-b, logged in as itself, publishes on esp-a's device topic and on the shared topic
    claiming esp-a, and sets its will on esp-a's leave topic: the broker delivers none of it
    (the shared topic is not writable at all, so this holds with MQTT_DEVICE_TOPICS_ONLY=false
    too, and before esp-a ever spoke). Its own messages work."""
    app = secure_app()  # the shared topics subscribed: only the broker stands in the way
    spy = spy_on(devices_broker)
    forger = login(devices_broker, "esp-b", will=("chatroom/users/leave/esp-a", ""))
    forger.publish("chatroom/messages/in/esp-a", {"message": "fire! (on esp-a's topic)",
                                                  "data": {"temperature": 95}})
    forger.publish("chatroom/messages/in", {"client_id": "esp-a", "message": "fire! (claimed on the shared topic)"})
    forger.publish("chatroom/users/join/esp-a", {"username": "Impostor"})
    forger.publish("chatroom/users/join", {"client_id": "esp-a", "username": "Impostor"})
    forger.publish("chatroom/users/leave/esp-a", b"")
    forger.publish("chatroom/messages/in/esp-b", {"client_id": "esp-b", "message": "B, honestly"})
    # One connection: the broker decided on everything before it passed on the last message.
    spy.wait("chatroom/messages/in/esp-b")
    out = spy.wait("chatroom/messages/out")[0].json()
    assert (out["client_id"], out["content"]) == ("esp-b", "B, honestly")
    app.drain()
    inbound = sorted({r.topic for r in spy.received if "/in" in r.topic or "/users/" in r.topic})
    assert inbound == ["chatroom/messages/in/esp-b"]
    assert [m.json()["content"] for m in spy.on("chatroom/messages/out")] == ["B, honestly"]
    assert users(app) == [("esp-b", "esp-b")]
    assert spy.on("chatroom/errors") == [] and spy.on("chatroom/devices/esp-a/state") == []
    status = app.status()["mqtt_status"]
    assert (status["messages_received"], status["messages_rejected"]) == (1, 0)

    # esp-a joins for real; esp-b loses power: its will, set on esp-a's leave topic, is dropped.
    device_a = login(devices_broker, "esp-a")
    device_a.publish("chatroom/users/join/esp-a", {"username": "Kitchen A"})
    wait_for(lambda: ("esp-a", "Kitchen A") in users(app), what="esp-a joined")
    lose_power(forger)
    again = login(devices_broker, "esp-b")  # the same login again, after the old connection is gone
    again.publish("chatroom/messages/in/esp-b", {"message": "B is back"})
    spy.wait("chatroom/messages/out", match=lambda m: m["content"] == "B is back")
    app.drain()
    assert spy.on("chatroom/users/leave/esp-a") == []
    assert sorted(users(app)) == [("esp-a", "Kitchen A"), ("esp-b", "esp-b")]
    presence = [(e.json()["event"], e.json()["username"]) for e in spy.on("chatroom/system")
                if e.json()["event"] in ("join", "leave")]
    assert presence == [("join", "esp-b"), ("join", "Kitchen A")]
    for probe in (again, device_a, spy):
        probe.stop()


def test_an_anonymous_client_or_a_wrong_password_cannot_publish(secure_app, devices_broker):
    """(c) No login, or a wrong password: the broker refuses the connection, nothing is delivered."""
    app = secure_app(MQTT_DEVICE_TOPICS_ONLY="true")
    spy = spy_on(devices_broker)
    base = ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(devices_broker.port), "-q", "1"]
    for credentials, topic in (([], "chatroom/messages/in/anon"), ([], "chatroom/messages/in"),
                               (["-u", "esp-a", "-P", "wrong"], "chatroom/messages/in/esp-a")):
        result = subprocess.run(base + credentials + ["-t", topic, "-m", json.dumps({"message": "let me in"})],
                                capture_output=True, text=True, timeout=TIMEOUT)
        assert result.returncode != 0 and "not authori" in result.stderr.lower(), result.stderr
    honest = login(devices_broker, "esp-a")
    honest.publish("chatroom/messages/in/esp-a", {"message": "after the strangers"})
    spy.wait("chatroom/messages/out")
    app.drain()
    assert {r.topic for r in spy.received if "/in" in r.topic} == {"chatroom/messages/in/esp-a"}
    assert [m["content"] for m in app.http.get("/api/messages").get_json()["messages"]] == ["after the strangers"]
    honest.stop()
    spy.stop()


def test_the_shipped_python_client_and_send_sh_log_in_and_use_their_device_topics(secure_app, devices_broker):
    """(d) python_client.py --username/--password (its login is its client id) and send.sh with
    MQTT_USERNAME/MQTT_PASSWORD: join, message, leave on their own device topics; a wrong
    password is a clear exit 1."""
    app = secure_app(MQTT_DEVICE_TOPICS_ONLY="true")
    spy = spy_on(devices_broker)
    python = [sys.executable, str(CLIENTS / "python_client.py"), "--broker", "127.0.0.1",
              "--port", str(devices_broker.port)]
    result = subprocess.run(python + ["--username", "esp-a", "--password", PASSWORDS["esp-a"], "--name", "Py A",
                                      "--send", "from the python client"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = spy.wait("chatroom/messages/out")[0].json()
    assert (out["client_id"], out["username"], out["content"]) == ("esp-a", "Py A", "from the python client")
    spy.wait("chatroom/users/leave/esp-a")
    assert {r.topic for r in spy.received if "/in" in r.topic or "/users/" in r.topic} == {
        "chatroom/users/join/esp-a", "chatroom/messages/in/esp-a", "chatroom/users/leave/esp-a"}

    env = {**os.environ, "BROKER": "127.0.0.1", "PORT": str(devices_broker.port), "MQTT_USERNAME": "esp-b",
           "MQTT_PASSWORD": PASSWORDS["esp-b"]}
    subprocess.run([str(SCRIPTS / "send.sh"), "from send.sh", "Shell B"], env=env, check=True, timeout=60)
    out = spy.wait("chatroom/messages/out", count=2)[1].json()
    assert (out["client_id"], out["username"], out["content"]) == ("esp-b", "Shell B", "from send.sh")
    spy.wait("chatroom/users/leave/esp-b")
    wait_for(lambda: users(app) == [], what="both left")

    refused = subprocess.run(python + ["--username", "esp-a", "--password", "wrong", "--send", "x"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "refused the connection" in refused.stderr, refused.stderr
    spy.stop()


def test_the_node_client_logs_in_with_its_device_topics(secure_app, devices_broker, node_modules):  # noqa: F811
    """(d) nodejs_client.js with MQTT_USERNAME/MQTT_PASSWORD in its environment; a wrong password exits 1."""
    app = secure_app(MQTT_DEVICE_TOPICS_ONLY="true")
    spy = spy_on(devices_broker)
    node = ["node", str(CLIENTS / "nodejs_client.js"), "--broker", "127.0.0.1", "--port", str(devices_broker.port)]
    env = {**os.environ, "MQTT_USERNAME": "esp-b", "MQTT_PASSWORD": PASSWORDS["esp-b"]}
    result = subprocess.run(node + ["--name", "Node B", "--send", "from node"], env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    out = spy.wait("chatroom/messages/out")[0].json()
    assert (out["client_id"], out["username"], out["content"]) == ("esp-b", "Node B", "from node")
    spy.wait("chatroom/users/leave/esp-b")
    assert {r.topic for r in spy.received if "/in" in r.topic or "/users/" in r.topic} == {
        "chatroom/users/join/esp-b", "chatroom/messages/in/esp-b", "chatroom/users/leave/esp-b"}
    wait_for(lambda: users(app) == [], what="node client left")
    refused = subprocess.run(node + ["--username", "esp-b", "--password", "wrong", "--send", "x"],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "refused the connection" in refused.stderr, refused.stderr
    spy.stop()


def test_the_esp32_sketch_with_mqtt_user_reports_as_its_login(secure_app, devices_broker, tmp_path):
    """(d) clients/esp32_sensor built with MQTT_USER/MQTT_PASS (g++, the real PubSubClient): it
    connects as esp-a, joins and reports on chatroom/.../esp-a, and its readings are esp-a's."""
    sketch = build_sketch(ROOT / "clients" / "esp32_sensor" / "esp32_sensor.ino", tmp_path / "sketch",
                          {"SENSOR_DHT22": "0", "MQTT_USER": '"esp-a"', "MQTT_PASS": f'"{PASSWORDS["esp-a"]}"'},
                          werror=True)
    app = secure_app(MQTT_DEVICE_TOPICS_ONLY="true")
    spy = spy_on(devices_broker)
    env = {**os.environ, "HOST_MQTT_HOST": "127.0.0.1", "HOST_MQTT_PORT": str(devices_broker.port),
           "HOST_TIME_SCALE": "30"}
    device = DeviceProcess([str(sketch), "120"], env)
    try:
        device.wait_line(lambda line: line.startswith("MQTT connected as esp-a"))
        device.wait_line(lambda line: line.startswith("sent: "), count=2)
        spy.wait("chatroom/messages/out", count=2)
    finally:
        device.stop()
    readings = app.http.get("/api/readings?client_id=esp-a&key=rssi").get_json()["readings"]
    assert len(readings) >= 2 and readings[0]["value"] == -61
    assert {r.topic for r in spy.received if "/in" in r.topic or "/users/" in r.topic} >= {
        "chatroom/users/join/esp-a", "chatroom/messages/in/esp-a"}
    assert not [r for r in spy.received if r.topic in ("chatroom/messages/in", "chatroom/users/join")]
    assert spy.on("chatroom/errors") == []
    # stop_process sent SIGTERM: the host program dies without a DISCONNECT, so the will
    # (on users/leave/esp-a) takes the sensor out of the room.
    spy.wait("chatroom/users/leave/esp-a")
    wait_for(lambda: users(app) == [], what="the sketch's will")
    spy.stop()


def test_acl_example_binds_device_logins_and_keeps_the_legacy_topics_commented_out():
    """The ACL's shape: %u patterns for the device topics, no writable shared inbound topic
    (only in the commented-out legacy block), the bridge's and Home Assistant's users."""
    lines = [line.strip() for line in ACL_EXAMPLE.read_text().splitlines()]
    active = [line for line in lines if line and not line.startswith("#")]
    for kind in ("messages/in", "users/join", "users/leave"):
        assert f"pattern write chatroom/{kind}/%u" in active and f"pattern write chatroom/+/{kind}/%u" in active
        assert f"#pattern write chatroom/{kind}" in lines and f"pattern write chatroom/{kind}" not in active
    writes = [line for line in active if line.startswith("pattern write")]
    assert all("%u" in line for line in writes)
    assert "user chatroom-bridge" in active and "topic readwrite chatroom/#" in active
    assert "topic write homeassistant/#" in active and "topic read homeassistant/status" in active
    assert "user homeassistant" in active
    # Home Assistant reads the relay's connectivity: one instance's, and each of a cluster's
    # (discovery points it at chatroom/bridge/<INSTANCE_ID>/state).
    home_assistant = active[active.index("user homeassistant"):active.index("user chatroom-bridge")]
    assert {"topic read chatroom/bridge/state", "topic read chatroom/bridge/+/state"} <= set(home_assistant)
    # A further cluster instance's login: a commented-out copy of the bridge's lines.
    assert "#user chatroom-bridge-2" in lines and "user chatroom-bridge-2" not in active
    conf = [line.strip() for line in DEVICES_CONF.read_text().splitlines()]
    assert {"allow_anonymous false", "use_username_as_clientid true"} <= set(conf)
