"""Devices in the field: the original project's own clients, unmodified, and our sketch,
built on this PC against the real PubSubClient and ArduinoJson and talking to a real mosquitto.

The sketches run with HOST_TIME_SCALE: their millis() runs 30 times faster than the
wall clock, so a reading every 30 s arrives every second.
"""
import json
import os
import sys
from pathlib import Path

import pytest
import requests
from arduino_build import build_sketch
from conftest import app_env
from devices import DeviceProcess

from support import ROOT, TIMEOUT, MqttProbe

ORIGINAL = ROOT / "tests" / "original"  # copies of ../shared/original (tests/original/README.md)
COMPAT = ROOT / ".venv" / "compat"  # paho-mqtt 1.6.1, installed by `make test`
PUBSUBCLIENT_DEFAULT_BUFFER = 256


def sketch_env(broker) -> dict:
    return {**os.environ, "HOST_MQTT_HOST": "127.0.0.1", "HOST_MQTT_PORT": str(broker.port),
            "HOST_TIME_SCALE": "30"}


def original_server(own_broker, tmp_path, server_for, **overrides):
    """The original clients hard-code the `chatroom` prefix: a broker of this test's own."""
    return server_for(app_env(own_broker, tmp_path, ASYNC_MODE="eventlet", MQTT_TOPIC_PREFIX="chatroom",
                              **overrides))


def post(server, username: str, message: str, **fields) -> dict:
    body = json.dumps({"username": username, "message": message, **fields}, ensure_ascii=False)
    response = requests.post(server.url + "/api/messages", timeout=TIMEOUT, data=body.encode("utf-8"),
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    return response.json()["message"]


@pytest.fixture(scope="module")
def original_sketch(tmp_path_factory) -> Path:
    return build_sketch(ORIGINAL / "esp32_sketch.ino", tmp_path_factory.mktemp("original-sketch"))


def test_original_esp32_sketch_sends_and_prints_room_messages_in_compact_format(
        original_sketch, own_broker, tmp_path, server_for):
    """MQTT_OUT_FORMAT=compact: the unmodified sketch (256-byte buffer) joins, reports, and
    prints its own reading and a web user's message as they come back from the room."""
    server = original_server(own_broker, tmp_path, server_for, MQTT_OUT_FORMAT="compact")
    with MqttProbe(own_broker.port, "chatroom/#") as watcher:
        device = DeviceProcess([str(original_sketch), "120"], sketch_env(own_broker))
        try:
            device.wait_line(lambda line: "Joined chat room" in line)
            echoed = device.wait_line(lambda line: line.startswith("Message received [chatroom/messages/out]")
                                      and "当前温度" in line)[0]
            compact = json.loads(echoed.split("]: ", 1)[1])
            assert list(compact) == ["type", "username", "content", "timestamp", "message_id"]
            assert compact["username"] == "温度传感器"
            post(server, "web user", "hello device, 你好")
            device.wait_line(lambda line: "messages/out" in line and "hello device, 你好" in line)
        finally:
            device.stop()
        # What went over the wire: every room message fits PubSubClient's default packet.
        outs = watcher.on("chatroom/messages/out")
        assert outs and all(len(o.payload) + len(o.topic) + 7 <= PUBSUBCLIENT_DEFAULT_BUFFER for o in outs)
        assert watcher.on("chatroom/errors") == []


def test_original_esp32_sketch_gets_nothing_in_full_format_which_is_why_compact_exists(
        original_sketch, own_broker, tmp_path, server_for):
    """The default full format is ~330 bytes: PubSubClient drops it without a word (docs/MIGRATION.md)."""
    original_server(own_broker, tmp_path, server_for)
    with MqttProbe(own_broker.port, "chatroom/messages/out") as watcher:
        device = DeviceProcess([str(original_sketch), "120"], sketch_env(own_broker))
        try:
            device.wait_line(lambda line: line.startswith("Temperature sent"), count=3)
            outs = watcher.wait("chatroom/messages/out", count=3)
            device.wait_line(lambda line: line.startswith("Temperature sent"), count=4)
        finally:
            device.stop()
        assert all(len(o.payload) + len(o.topic) + 7 > PUBSUBCLIENT_DEFAULT_BUFFER for o in outs)
        assert not [line for line in device.lines if "[chatroom/messages/out]" in line]


def test_original_python_client_on_paho_1x_sends_and_receives(own_broker, tmp_path, server_for):
    """The original client, as documented, on paho-mqtt 1.6.1: its messages enter the room and it
    prints the room's messages (full format: a Python client has no small buffer)."""
    assert (COMPAT / "paho").is_dir(), "paho-mqtt 1.6.1 missing in .venv/compat: run `make test`"
    server = original_server(own_broker, tmp_path, server_for)
    env = {**os.environ, "PYTHONPATH": str(COMPAT)}
    client = DeviceProcess([sys.executable, str(ORIGINAL / "python_client.py"), "127.0.0.1",
                            str(own_broker.port), "legacy-py-1", "老客户端", "60", "hello from 1.x"], env)
    try:
        client.wait_line(lambda line: line.startswith("connected"))
        received = client.wait_line(lambda line: "RECV [chatroom/messages/out]" in line
                                    and "hello from 1.x" in line)[0]
        body = json.loads(received.split("] ", 1)[1])
        assert (body["username"], body["source"], body["client_id"]) == ("老客户端", "mqtt", "legacy-py-1")
        post(server, "web user", "hi legacy")
        client.wait_line(lambda line: "RECV [chatroom/messages/out]" in line and "hi legacy" in line)
        users = requests.get(server.url + "/api/users", timeout=TIMEOUT).json()["users"]
        assert [(u["username"], u["client_id"]) for u in users] == [("老客户端", "legacy-py-1")]
    finally:
        client.stop()


@pytest.mark.parametrize("dht22", ["1", "0"])
def test_our_sketch_joins_reports_and_receives_the_largest_room_message(dht22, own_broker, tmp_path, server_for):
    """clients/esp32_sensor against the real libraries: readings arrive as data, and a room message
    of 2000 four-byte characters (the largest the server sends) is printed whole, not dropped."""
    sketch = build_sketch(ROOT / "clients" / "esp32_sensor" / "esp32_sensor.ino", tmp_path / "ours",
                          {"SENSOR_DHT22": dht22}, werror=True)
    server = original_server(own_broker, tmp_path, server_for)
    device = DeviceProcess([str(sketch), "120"], sketch_env(own_broker))
    try:
        device.wait_line(lambda line: line.startswith("MQTT connected as esp32-aabbcc"))
        device.wait_line(lambda line: line.startswith("sent: "), count=2)
        key = "temperature"
        readings = requests.get(server.url + "/api/readings", timeout=TIMEOUT,
                                params={"client_id": "esp32-aabbcc", "key": key}).json()["readings"]
        assert len(readings) >= 2
        if dht22 == "1":
            assert [r["value"] for r in readings[:2]] == [21, 21.5]
        largest = "💥" * 2000
        post(server, "🦊" * 32, largest, data={"note": "ü" * 400})
        printed = device.wait_line(lambda line: line.startswith("[chatroom/messages/out]") and "💥" in line)[0]
        body = json.loads(printed.split("] ", 1)[1])
        assert body["content"] == largest and len(printed.encode()) > 8000
        users = requests.get(server.url + "/api/users", timeout=TIMEOUT).json()["users"]
        assert [u["username"] for u in users] == ["ESP32 sensor"]
    finally:
        device.stop()
