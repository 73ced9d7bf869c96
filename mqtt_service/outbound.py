"""Outbound MQTT: what the bridge publishes, all through the one ordered, bounded outbox.

Every room message and system event goes out on `P/messages/out` / `P/system`, once, in
seq order (a room listener); the device topics and Home Assistant configs (device_topics.py)
and the error replies of inbound.py go the same way, in order with everything else and
kept while the broker is down (outbox.py).
"""
from __future__ import annotations

from typing import Any

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
            self.outbox.publish(self.message_outgoing(event))
        elif isinstance(event, SystemEvent):
            self.outbox.publish(Outgoing(self.topics.system(event.room), event.to_json().encode("utf-8"), self.qos))

    def message_outgoing(self, message: Message) -> Outgoing:
        """A chat message's publication, marked with its room and seq: history has it (PROTOCOL 12)."""
        text = message.to_compact_json() if self.compact else message.to_json()
        return Outgoing(self.topics.messages_out(message.room), text.encode("utf-8"), self.qos,
                        mark=(message.room, message.seq))

    def reply(self, topic: str, payload: bytes) -> None:
        """An error reply (inbound.py)."""
        self.outbox.publish(Outgoing(topic, payload, self.qos))

    def publish_with_properties(self, topic: str, payload: bytes, properties: Any = None,
                                retain: bool = False) -> None:
        """MQTT 5: a publication carrying paho Properties (a reply's Correlation Data), in
        order with everything else; with MQTT 3.1.1 the properties are left out."""
        self.outbox.publish(Outgoing(topic, payload, self.qos, retain, properties=properties))

    def publish_retained(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """For the device topics: retained, in order with everything else, kept while the broker is down."""
        self.outbox.publish(Outgoing(topic, payload, self.qos, retain))
