"""PROTOCOL 11 and 12 together: with the bridge on MQTT 5 (MQTT_PROTOCOL=5), a device request's
Response Topic and Correlation Data are honoured end to end through a real mosquitto; a Response
Topic other than the device's own `P/devices/<id>/responses` or below is not (the answer goes to
its responses topic): not another device's, and not its own `set/<command>`, which the bridge
hears as Home Assistant's command."""
import json
import threading
import uuid

import paho.mqtt.client as mqtt
from conftest import app_env
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from support import TIMEOUT, ServerProcess


def test_mqtt5_request_response(broker, tmp_path):
    env = app_env(broker, tmp_path, ASYNC_MODE="eventlet", MQTT_PROTOCOL="5")
    server = ServerProcess(env, log_path=tmp_path / "s.log").start()
    prefix = env["MQTT_TOPIC_PREFIX"]
    got = []
    done = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"v5-{uuid.uuid4().hex[:6]}", protocol=mqtt.MQTTv5)
    def on_message(c, u, m):
        got.append((m.topic, m.payload, getattr(m.properties, "CorrelationData", None)))
        done.set()
    client.on_message = on_message
    sub = threading.Event()
    client.on_subscribe = lambda *a: sub.set()
    try:
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        client.subscribe(f"{prefix}/devices/dev5/responses/#", qos=1)
        assert sub.wait(TIMEOUT)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{prefix}/devices/dev5/responses/7"
        props.CorrelationData = b"\x01corr"
        client.publish(f"{prefix}/devices/dev5/requests", json.dumps({"request_id": "q", "request": "members"}),
                       qos=1, properties=props).wait_for_publish(TIMEOUT)
        assert done.wait(TIMEOUT), server.logs()
        topic, payload, corr = got[0]
        assert topic == f"{prefix}/devices/dev5/responses/7" and corr == b"\x01corr"
        assert json.loads(payload)["request_id"] == "q"
        # Another device's topic as the Response Topic: answered on dev5's own responses topic.
        done.clear()
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = f"{prefix}/devices/victim/commands"
        props.CorrelationData = b"x"
        client.publish(f"{prefix}/devices/dev5/requests", json.dumps({"request_id": "r", "request": "members"}),
                       qos=1, properties=props).wait_for_publish(TIMEOUT)
        assert done.wait(TIMEOUT), server.logs()
        assert [topic for topic, _, _ in got[1:]] == [f"{prefix}/devices/dev5/responses"]
        assert json.loads(got[1][1])["request_id"] == "r"
        # Its own set topic, or any other level of its own: answered on its responses topic too.
        for n, response_topic in enumerate([f"{prefix}/devices/dev5/set/label", f"{prefix}/devices/dev5/inbox/7"]):
            done.clear()
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic
            client.publish(f"{prefix}/devices/dev5/requests", json.dumps({"request_id": n, "request": "members"}),
                           qos=1, properties=props).wait_for_publish(TIMEOUT)
            assert done.wait(TIMEOUT), server.logs()
            assert got[-1][0] == f"{prefix}/devices/dev5/responses" and json.loads(got[-1][1])["request_id"] == n
    finally:
        client.loop_stop()
        server.stop()
