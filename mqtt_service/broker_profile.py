"""What the broker can do, and what the bridge does where it cannot (docs/BROKERS.md).

An MQTT 5 broker says what it lacks in its CONNACK (Retain Available, Shared
Subscription Available, Maximum QoS); an MQTT 3.1.1 broker cannot, so MQTT_BROKER_KIND
names the broker and its known gaps. At start the bridge says in one line what the broker
lacks and what it does instead: MQTT 3.1.1 where MQTT 5 is missing, QoS 1 where QoS 2 is
(NATS closes the connection on a QoS 2 publication; RabbitMQ takes it as QoS 1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Callable

log = logging.getLogger("mqtt_service.bridge")


@dataclass(frozen=True)
class BrokerProfile:
    kind: str
    mqtt5: bool = True
    shared_subscriptions: bool = True
    retained: bool = True
    # Retained messages reach subscribers of wildcard filters too (RabbitMQ 3.10: exact topics only).
    retained_to_wildcards: bool = True
    max_qos: int = 2
    # Characters a topic must not hold (NATS maps topics to subjects and closes the connection).
    forbidden_in_topics: str = ""

    def gaps(self) -> list[str]:
        """What this broker lacks, and what the bridge does instead: one phrase each."""
        gaps = []
        if not self.mqtt5:
            gaps.append("no MQTT 5 (the bridge speaks 3.1.1)")
        if not self.shared_subscriptions:
            gaps.append("no shared subscriptions (one instance per broker; MQTT_SHARED_GROUP is refused)")
        if not self.retained:
            gaps.append("no retained messages (bridge state and device topics reach only connected subscribers)")
        elif not self.retained_to_wildcards:
            gaps.append("retained messages reach exact-topic subscribers only (subscribe to P/bridge/state itself)")
        if self.forbidden_in_topics:
            gaps.append("no '.' or ' ' in topics (publications to such topics are dropped and counted)")
        if self.max_qos < 2:
            gaps.append(f"QoS at most {self.max_qos} (the bridge publishes and subscribes with QoS {self.max_qos})")
        return gaps


# Tested here with real servers (tests/test_brokers_*.py): Mosquitto 2.0, RabbitMQ 3.10's
# MQTT plugin, NATS 2.9's MQTT support. `auto`: a complete broker (EMQX, HiveMQ), or MQTT 5's CONNACK tells.
PROFILES = {
    "auto": BrokerProfile("auto"),
    "mosquitto": BrokerProfile("mosquitto"),
    "rabbitmq": BrokerProfile("rabbitmq", mqtt5=False, shared_subscriptions=False, retained_to_wildcards=False,
                              max_qos=1),
    "nats": BrokerProfile("nats", mqtt5=False, shared_subscriptions=False, max_qos=1, forbidden_in_topics=". "),
}


@dataclass(frozen=True)
class BridgePlan:
    """How the bridge talks to this broker: the protocol and QoS it uses."""

    profile: BrokerProfile
    protocol: str  # "3.1.1" or "5"
    qos: int


def plan_for(kind: str, protocol: str, qos: int, shared_group: str = "") -> BridgePlan:
    """The protocol and QoS to use with broker `kind`, logging once what it lacks."""
    profile = PROFILES[kind]
    used_protocol = protocol if profile.mqtt5 else "3.1.1"
    used_qos = min(qos, profile.max_qos)
    gaps = profile.gaps()
    if gaps:
        log.warning("MQTT broker %s lacks: %s", kind, "; ".join(gaps))
    if used_protocol != protocol:
        log.warning("MQTT_PROTOCOL=%s: %s speaks only 3.1.1; using 3.1.1", protocol, kind)
    if shared_group and kind == "auto" and used_protocol == "3.1.1":
        # Nothing on 3.1.1 tells: RabbitMQ and NATS grant `$share/…` as a plain topic and deliver
        # nothing to it. Not refused (Mosquitto, EMQX, HiveMQ share it), said at every start.
        log.warning("MQTT_SHARED_GROUP=%s with MQTT_BROKER_KIND=auto on MQTT 3.1.1: the broker cannot say "
                    "whether it shares subscriptions, and RabbitMQ and NATS would deliver no device message; "
                    "name the broker (MQTT_BROKER_KIND) or use MQTT_PROTOCOL=5 (docs/BROKERS.md)", shared_group)
    return BridgePlan(profile, used_protocol, used_qos)


def connack_gaps(properties: Any, profile: BrokerProfile) -> BrokerProfile | None:
    """MQTT 5: the profile the CONNACK's properties describe, when it lacks more than `profile`."""
    if properties is None:
        return None
    told = replace(
        profile,
        retained=profile.retained and bool(getattr(properties, "RetainAvailable", 1)),
        shared_subscriptions=profile.shared_subscriptions
        and bool(getattr(properties, "SharedSubscriptionAvailable", 1)),
        max_qos=min(profile.max_qos, int(getattr(properties, "MaximumQoS", 2))),
    )
    return told if told != profile else None


def topic_problem_for(profile: BrokerProfile) -> Callable[[str], str | None] | None:
    """What this broker refuses in a topic name beyond MQTT's own rules (None: nothing)."""
    forbidden = profile.forbidden_in_topics
    if not forbidden:
        return None

    def problem(topic: str) -> str | None:
        found = [char for char in forbidden if char in topic]
        return f"{profile.kind} refuses {' and '.join(repr(c) for c in found)} in topics" if found else None
    return problem
