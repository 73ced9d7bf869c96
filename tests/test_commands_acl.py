"""With the shipped ACL (clients/mosquitto/acl.example), an ack counts only from the device the
command went to: another device can neither write its ack topic nor answer for it from its
own, and only Home Assistant's login writes the controls' set topics (PROTOCOL 10 and 11)."""
from __future__ import annotations

import json
import threading

import pytest
from command_device import Device
from conftest import RunningApp, app_env

from support import ROOT, TIMEOUT, Mosquitto, MqttProbe, password_file, wait_for

ACL_EXAMPLE = ROOT / "clients" / "mosquitto" / "acl.example"
LOGINS = {"chatroom-bridge": "bridge-pw", "heater": "heater-pw", "intruder": "intruder-pw",
          "homeassistant": "ha-pw"}


@pytest.fixture
def acl_broker(tmp_path):
    passwords = password_file(tmp_path / "passwd", LOGINS)
    acl = tmp_path / "acl"
    acl.write_text(ACL_EXAMPLE.read_text())
    broker = Mosquitto(tmp_path / "acl-broker", anonymous=False,
                       extra_conf=f"password_file {passwords}\nacl_file {acl}\n")
    yield broker.start()
    broker.kill()


def login(port: int, user: str, client_id: str | None = None) -> MqttProbe:
    probe = MqttProbe(port, client_id=client_id or f"{user}-probe")
    probe.client.username_pw_set(user, LOGINS[user])
    return probe.start()


def forge(port: int, topic: str, payload: str, name: str) -> None:
    """Publish as the intruder where the ACL forbids it: mosquitto drops it (2.0.11 acknowledges
    and drops, older versions disconnect); either is its verdict."""
    forger = login(port, "intruder", client_id=name)
    forger.client.reconnect_delay_set(60, 60)  # once refused, stay away
    info = forger.client.publish(topic, payload, qos=1)
    wait_for(lambda: not forger.client.is_connected() or info.rc == 0 and info.is_published(), what="verdict")
    forger.stop()


def test_only_the_commanded_device_answers_and_only_home_assistant_sets(acl_broker, tmp_path):
    app = RunningApp(app_env(acl_broker, tmp_path, MQTT_USERNAME="chatroom-bridge", MQTT_PASSWORD="bridge-pw",
                             MQTT_TOPIC_PREFIX="chatroom")).start()
    heater = Device(acl_broker.port, "chatroom", "heater", {"power": {"type": "bool"}}, answer="silent",
                    password=LOGINS["heater"])
    intruder, home_assistant = login(acl_broker.port, "intruder"), login(acl_broker.port, "homeassistant")
    try:
        heater.join()
        wait_for(lambda: app.http.get("/api/devices/heater/commands").status_code == 200, what="heater declared")
        answers: list = []
        asking = threading.Thread(target=lambda: answers.append(app.http.post(
            "/api/devices/heater/commands", json={"command": "power", "value": True, "timeout": 15})))
        asking.start()
        command_id = heater.wait_commands(1)[0]["command_id"]
        # The broker drops the intruder's ack on the heater's topic; its ack on its own is ignored.
        forge(acl_broker.port, "chatroom/devices/heater/commands/ack",
              json.dumps({"command_id": command_id, "ok": False, "error": "forged"}), "forger-1")
        intruder.publish("chatroom/devices/intruder/commands/ack", {"command_id": command_id, "ok": False,
                                                                    "error": "forged"})
        wait_for(lambda: app.status()["mqtt_status"]["acks_ignored"] == 1, what="the intruder's own ack ignored")
        heater.ack(command_id, True, result="warm")
        asking.join(TIMEOUT)
        assert answers[0].status_code == 200 and answers[0].get_json()["result"] == "warm"
        # Home Assistant's login drives the control; the intruder's write of it is dropped.
        forge(acl_broker.port, "chatroom/devices/heater/set/power", "ON", "forger-2")
        home_assistant.publish("chatroom/devices/heater/set/power", "OFF")
        second = heater.wait_commands(2)[1]
        assert (second["value"], second["from"]) == (False, "Home Assistant")
        heater.ack(second["command_id"], True)
        app.drain()
        assert len(heater.commands_received) == 2 and app.status()["mqtt_status"]["acks_ignored"] == 1
    finally:
        for client in (intruder, home_assistant, heater):
            client.stop()
        app.stop()
