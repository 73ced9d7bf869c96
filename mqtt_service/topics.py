"""Topic names for a prefix: the PROTOCOL topic table in one place. Pure."""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import NamedTuple

from chatroom.core.validation import DEFAULT_ROOM, is_room_name

MESSAGES_IN = "messages/in"
USERS_JOIN = "users/join"
USERS_LEAVE = "users/leave"
INBOUND_KINDS = (MESSAGES_IN, USERS_JOIN, USERS_LEAVE)


MAX_TOPIC_BYTES = 65535

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def topic_id(client_id: str) -> str:
    """The client_id as one topic level: as it is when it is plain (letters, digits, _
    and -), else a slug, `~` and a short hash. A plain id cannot hold `~`, so a hashed
    level never equals a plain id (`esp32.kitchen` is `esp32_kitchen~1a0c8247`, which
    no device can be called); two hashed ids that meet are refused by the declarations
    (chatroom/core/commands.py `address`)."""
    if _SAFE_ID.fullmatch(client_id):
        return client_id
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", client_id).strip("_")[:48] or "device"
    return f"{slug}~{hashlib.sha1(client_id.encode('utf-8')).hexdigest()[:8]}"



class InboundTopic(NamedTuple):
    """What an inbound topic says: the room, the kind, and on a device topic
    (PROTOCOL 10) the sender the broker let publish there."""

    room: str
    kind: str
    client_id: str | None = None


def topic_name_problem(topic: str) -> str | None:
    """Why a broker would refuse a PUBLISH to `topic` (None when it is fine).

    MQTT 3.1.1 section 4.7 plus mosquitto's UTF-8 check, which also refuses
    control characters: the broker answers such a packet by dropping the
    connection, and paho would re-send it on every reconnect.
    """
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return "wildcard in a topic name"
    for char in topic:
        point = ord(char)
        if point < 0x20 or 0x7F <= point <= 0x9F:
            return "control character in the topic"
        if 0xD800 <= point <= 0xDFFF or point & 0xFFFE == 0xFFFE or 0xFDD0 <= point <= 0xFDEF:
            return "character not allowed in MQTT UTF-8"
    if len(topic.encode("utf-8")) > MAX_TOPIC_BYTES:
        return "topic longer than 65535 bytes"
    return None


@dataclass(frozen=True)
class Topics:
    prefix: str = "chatroom"

    def _room_base(self, room: str) -> str:
        # The default room has no room segment: P/messages/in, not P/lobby/messages/in.
        return self.prefix if room == DEFAULT_ROOM else f"{self.prefix}/{room}"

    # --- a device's own topics (retained state and availability, docs/HOME_ASSISTANT.md)
    @property
    def devices_root(self) -> str:
        """What every device topic starts with (not a topic itself)."""
        return f"{self.prefix}/devices/"

    def device_state(self, client_id: str) -> str:
        return f"{self.devices_root}{topic_id(client_id)}/state"

    def device_availability(self, client_id: str) -> str:
        return f"{self.devices_root}{topic_id(client_id)}/availability"

    # --- a device told and asked (PROTOCOL 11; docs/PROTOCOL.md "Devices that can be told and asked")
    def device_commands(self, client_id: str) -> str:
        return f"{self.devices_root}{topic_id(client_id)}/commands"

    def device_command_ack(self, client_id: str) -> str:
        return f"{self.devices_root}{topic_id(client_id)}/commands/ack"

    def device_receipts(self, client_id: str) -> str:
        return f"{self.devices_root}{topic_id(client_id)}/receipts"

    def device_requests(self, client_id: str) -> str:
        return f"{self.devices_root}{topic_id(client_id)}/requests"

    def device_responses(self, client_id: str) -> str:
        return f"{self.devices_root}{topic_id(client_id)}/responses"

    def device_set(self, client_id: str, command: str) -> str:
        """Home Assistant's command topic of a declared command (its plain payload)."""
        return f"{self.devices_root}{topic_id(client_id)}/set/{command}"

    def device_controls(self, client_id: str) -> str:
        """Retained: the last acknowledged value of each declared command (Home Assistant's state)."""
        return f"{self.devices_root}{topic_id(client_id)}/controls"

    def device_subscriptions(self, home_assistant: bool = True, shared_group: str = "") -> list[str]:
        """What the bridge hears of the devices' own subtrees. Acks are never shared: the
        instance that sent a command waits for its answer (MQTT_SHARED_GROUP)."""
        shared = [f"{self.devices_root}+/requests"] + ([f"{self.devices_root}+/set/+"] if home_assistant else [])
        if shared_group:
            shared = [f"$share/{shared_group}/{topic}" for topic in shared]
        return [f"{self.devices_root}+/commands/ack", *shared]

    def parse_device(self, topic: str) -> tuple[str, str, str | None] | None:
        """`P/devices/T/commands/ack` -> (T, "ack", None); `P/devices/T/requests` -> (T,
        "requests", None); `P/devices/T/set/C` -> (T, "set", C); None for anything else."""
        if not topic.startswith(self.devices_root):
            return None
        parts = topic[len(self.devices_root):].split("/")
        if len(parts) == 3 and parts[1:] == ["commands", "ack"]:
            return parts[0], "ack", None
        if len(parts) == 2 and parts[1] == "requests":
            return parts[0], "requests", None
        if len(parts) == 3 and parts[1] == "set":
            return parts[0], "set", parts[2]
        return None

    def messages_in(self, room: str = DEFAULT_ROOM) -> str:
        return f"{self._room_base(room)}/{MESSAGES_IN}"

    def users_join(self, room: str = DEFAULT_ROOM) -> str:
        return f"{self._room_base(room)}/{USERS_JOIN}"

    def users_leave(self, room: str = DEFAULT_ROOM) -> str:
        return f"{self._room_base(room)}/{USERS_LEAVE}"

    def messages_out(self, room: str = DEFAULT_ROOM) -> str:
        return f"{self._room_base(room)}/messages/out"

    def system(self, room: str = DEFAULT_ROOM) -> str:
        return f"{self._room_base(room)}/system"

    def errors(self) -> str:
        return f"{self.prefix}/errors"

    def bridge_state(self, instance_id: str = "") -> str:
        """`P/bridge/state`; of several instances each has its own (`P/bridge/<id>/state`):
        one instance's will must not say the others are offline."""
        return f"{self.prefix}/bridge/{instance_id}/state" if instance_id else f"{self.prefix}/bridge/state"

    def subscriptions(self, shared_group: str = "", device_topics_only: bool = False) -> list[str]:
        """Inbound topic filters only: the bridge never hears its own output.

        The shared topics (`P/messages/in`, ...) and the device topics
        (`P/messages/in/<client_id>`, ...); with `device_topics_only` the latter alone.
        """
        filters = [] if device_topics_only else [f"{self.prefix}/{kind}" for kind in INBOUND_KINDS] + [
            f"{self.prefix}/+/{kind}" for kind in INBOUND_KINDS]
        filters += [f"{self.prefix}/{kind}/+" for kind in INBOUND_KINDS]
        filters += [f"{self.prefix}/+/{kind}/+" for kind in INBOUND_KINDS]
        if shared_group:
            filters = [f"$share/{shared_group}/{topic}" for topic in filters]
        return filters

    def parse(self, topic: str) -> InboundTopic | None:
        """`P/messages/in` -> ("lobby", "messages/in"); `P/R/users/join` -> ("R", "users/join");
        `P/R/messages/in/esp-1` -> ("R", "messages/in", "esp-1").

        None for anything that is not an inbound topic of a valid room. A device topic's last
        level may be anything the broker delivered (even empty): the intake validates it.
        """
        if not topic.startswith(self.prefix + "/"):
            return None
        rest = topic[len(self.prefix) + 1:]
        found = _kind_and_sender(rest)
        if found is not None:
            return InboundTopic(DEFAULT_ROOM, *found)
        room, _, rest = rest.partition("/")
        found = _kind_and_sender(rest)
        if found is not None and is_room_name(room):
            return InboundTopic(room, *found)
        return None


def _kind_and_sender(rest: str) -> tuple[str, str | None] | None:
    """`messages/in` -> (kind, None); `messages/in/<client_id>` -> (kind, client_id)."""
    for kind in INBOUND_KINDS:
        if rest == kind:
            return kind, None
        if rest.startswith(kind) and rest[len(kind):len(kind) + 1] == "/":
            sender = rest[len(kind) + 1:]
            return (kind, sender) if "/" not in sender else None
    return None
