"""Outbound MQTT: what the bridge publishes, all through the one ordered, bounded outbox.

Every room message and system event goes out on `P/messages/out` / `P/system`, once, in
seq order (a room listener); the device topics and Home Assistant configs (device_topics.py)
and the error replies of inbound.py go the same way, in order with everything else and
kept while the broker is down (outbox.py).
"""
from __future__ import annotations

from chatroom.core.model import Message, SystemEvent
from mqtt_service.outbox import Outbox, Outgoing
from mqtt_service.topics import Topics


class Outbound:
    def __init__(self, topics: Topics, outbox: Outbox, qos: int, compact: bool = False):
        """`compact`: chat messages in the original project's 5 fields (MQTT_OUT_FORMAT=compact)."""
        self.topics = topics
        self.outbox = outbox
        self.qos = qos
        self.compact = compact

    def on_room_event(self, event: object) -> None:
        """Room listener: republish chat messages and system events."""
        if isinstance(event, Message):
            topic = self.topics.messages_out(event.room)
            text = event.to_compact_json() if self.compact else event.to_json()
        elif isinstance(event, SystemEvent):
            topic, text = self.topics.system(event.room), event.to_json()
        else:
            return
        self.outbox.publish(Outgoing(topic, text.encode("utf-8"), self.qos))

    def reply(self, topic: str, payload: bytes) -> None:
        """An error reply (inbound.py)."""
        self.outbox.publish(Outgoing(topic, payload, self.qos))

    def publish_retained(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """For the device topics: retained, in order with everything else, kept while the broker is down."""
        self.outbox.publish(Outgoing(topic, payload, self.qos, retain))
