"""paho's on_message: each inbound publication to its handler, held while the stores are away.

Home Assistant's status topic goes to the device topics (its birth re-announces them);
every other publication to `Inbound.handle` (inbound.py), inside the open batch with
group commit (group_commit.py). When Redis or PostgreSQL is away (`Unavailable`), the
message is held and retried with backoff: returning would acknowledge it and lose it.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from paho.mqtt.client import Client, MQTTMessage

from chatroom.core.errors import Unavailable
from mqtt_service.callbacks import guarded

# A held message is retried as a held commit is: the same backoff (0.2 s doubling to 5 s).
from mqtt_service.group_commit import FIRST_RETRY, LAST_RETRY, GroupCommit
from mqtt_service.stats import BridgeStats

log = logging.getLogger("mqtt_service.bridge")



class Dispatcher:
    def __init__(self, stats: BridgeStats, handle: Callable[[str, bytes], None], ha_status_topic: str,
                 on_ha_status: Callable[[bytes], None], group_commit: GroupCommit, stopping: threading.Event,
                 device_in: Callable[[MQTTMessage, bytes], bool] | None = None, devices_root: str = ""):
        """`handle(topic, payload)`: an inbound publication (raises Unavailable to be held);
        `stopping`: set when the bridge stops (a held message is then given up); `device_in`:
        a publication on a device's own subtree (acks, requests, Home Assistant's commands),
        True when it was one (mqtt_service/device_extras.py)."""
        self.stats = stats
        self.handle = handle
        self.device_in = device_in
        self.devices_root = devices_root  # only topics under it can be a device's own (a cheap test first)
        self.ha_status_topic = ha_status_topic
        self.on_ha_status = on_ha_status
        self.group_commit = group_commit
        self.stopping = stopping

    @guarded
    def on_message(self, client: Client | None, userdata: Any, message: MQTTMessage) -> None:
        if not self.group_commit.enabled:
            self.receive(message)  # paho sends the PUBACK when this returns
        else:
            self.group_commit.handle(message, self.receive)

    def receive(self, message: MQTTMessage) -> None:
        self.stats.received()
        # paho's decoder makes it bytes (struct.unpack); its annotation allows a bytearray.
        payload = message.payload if isinstance(message.payload, bytes) else bytes(message.payload)
        if message.topic == self.ha_status_topic:
            self.on_ha_status(payload)
            return
        delay = FIRST_RETRY
        while True:
            try:
                if self.device_in is None or not message.topic.startswith(self.devices_root) or not self.device_in(
                        message, payload):
                    self.handle(message.topic, payload)
                return
            except Unavailable as exc:
                if self.stopping.is_set():
                    raise
                # Redis or PostgreSQL is away. Returning would acknowledge the message and
                # lose it: hold it (the broker keeps the rest for our session) and retry.
                self.stats.add("handler_errors")
                log.warning("MQTT inbound held: %s (%s); retrying in %.1f s", exc.message, exc.detail, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, LAST_RETRY)
