"""A real paho device for the command tests: joins on its own topic declaring commands,
records every command it gets and answers it (or not) on its own ack topic."""
from __future__ import annotations

import json
import threading
import time
import uuid

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from mqtt_service.topics import topic_id
from support import TIMEOUT


class Device:
    def __init__(self, port: int, prefix: str, client_id: str, commands: dict, name: str | None = None,
                 room: str | None = None, answer: str = "ok", password: str | None = None):
        """`answer`: "ok" (echo the value as result), "refuse" (ok:false) or "silent" (no ack);
        `password`: log in as `client_id` (a broker with the shipped ACL)."""
        self.prefix, self.client_id, self.commands = prefix, client_id, commands
        self.name, self.room, self.answer = name or client_id, room, answer
        self.commands_received: list[dict] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}")
        self.client.will_set(self._topic("users/leave"), "", qos=1)
        if password is not None:
            self.client.username_pw_set(client_id, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/devices/{topic_id(client_id)}/commands", qos=1)
        assert self._subscribed.wait(TIMEOUT), "device did not subscribe"

    def _topic(self, kind: str) -> str:
        room = f"{self.room}/" if self.room else ""
        return f"{self.prefix}/{room}{kind}/{self.client_id}"

    def publish(self, topic: str, payload) -> None:
        text = payload if isinstance(payload, (str, bytes)) else json.dumps(payload)
        self.client.publish(topic, text, qos=1).wait_for_publish(TIMEOUT)

    def join(self, commands: dict | None = None) -> None:
        self.publish(self._topic("users/join"), {"username": self.name,
                                                "commands": self.commands if commands is None else commands})

    def say(self, text: str, **fields) -> None:
        self.publish(self._topic("messages/in"), {"message": text, **fields})

    def leave(self) -> None:
        self.publish(self._topic("users/leave"), "")

    def ack(self, command_id: str, ok: bool = True, **fields) -> None:
        # Not waited for: this runs on paho's thread too, which must go on to read the PUBACK.
        self.client.publish(f"{self.prefix}/devices/{topic_id(self.client_id)}/commands/ack",
                            json.dumps({"command_id": command_id, "ok": ok, **fields}), qos=1)

    def _on_message(self, client, userdata, message) -> None:
        command = json.loads(message.payload)
        with self._cond:
            self.commands_received.append(command)
            self._cond.notify_all()
        if self.answer == "ok":
            self.ack(command["command_id"], True, result={"now": command["value"]})
        elif self.answer == "refuse":
            self.ack(command["command_id"], False, error="not now")

    def wait_commands(self, count: int = 1, timeout: float = TIMEOUT) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.commands_received) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.client_id} got {len(self.commands_received)} commands, "
                                         f"wanted {count}")
                self._cond.wait(remaining)
            return list(self.commands_received)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
