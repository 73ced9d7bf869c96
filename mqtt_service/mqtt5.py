"""MQTT 5 request/response, for handlers that answer a device (issue 25's device requests).

A request may name a Response Topic and carry Correlation Data (MQTT 5, section 4.10); the
answer goes to that topic with the same Correlation Data. Inbound publications reach
`Dispatcher.on_message` as paho messages, whose `properties` hold both; an answer goes out
through `Outbound.publish_with_properties` with `reply_properties(...)`, in order with
everything else. With MQTT 3.1.1 a message has no properties (`response_of` is None) and
paho leaves a publication's properties out.
"""
from __future__ import annotations

from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MAX_CORRELATION_BYTES = 256  # echoed back as given: a stranger's bytes, so bounded


def response_of(message: Any) -> tuple[str, bytes | None] | None:
    """(Response Topic, Correlation Data) a request asked its answer to carry, or None."""
    properties = getattr(message, "properties", None)
    topic = getattr(properties, "ResponseTopic", None) if properties is not None else None
    if not topic:
        return None
    correlation = getattr(properties, "CorrelationData", None)
    if correlation is not None and len(correlation) > MAX_CORRELATION_BYTES:
        correlation = None  # too long to echo: the answer goes without it
    return topic, correlation


def reply_properties(correlation: bytes | None) -> Properties | None:
    """The properties of an answer: the request's Correlation Data, if it had any."""
    if correlation is None:
        return None
    properties = Properties(PacketTypes.PUBLISH)
    properties.CorrelationData = correlation
    return properties
