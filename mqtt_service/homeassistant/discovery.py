"""Home Assistant MQTT discovery payloads for device readings. Pure: no I/O.

A device's `data` keys become entities: numbers a `sensor` (with a unit and
device class for the common keys), booleans a `binary_sensor`, strings a
`sensor` without unit. Every entity reads the device's retained state topic
with a `value_template`, and is available while both the device and the
bridge are online. Options are the ones Home Assistant documents for MQTT
sensor and binary_sensor discovery (integrations/sensor.mqtt,
binary_sensor.mqtt, and "origin" in the MQTT discovery docs).
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from mqtt_service.topics import Topics, topic_id

ORIGIN = {"name": "chatroom relay"}

# key (as devices commonly name it) -> (device_class, unit, state_class)
NUMERIC_KEYS: dict[str, tuple[str | None, str | None, str | None]] = {
    "temperature": ("temperature", "°C", "measurement"),
    "temp": ("temperature", "°C", "measurement"),
    "humidity": ("humidity", "%", "measurement"),
    "pressure": ("atmospheric_pressure", "hPa", "measurement"),
    "battery": ("battery", "%", "measurement"),
    "rssi": ("signal_strength", "dBm", "measurement"),
    "illuminance": ("illuminance", "lx", "measurement"),
    "lux": ("illuminance", "lx", "measurement"),
    "co2": ("carbon_dioxide", "ppm", "measurement"),
    "voltage": ("voltage", "V", "measurement"),
    "current": ("current", "A", "measurement"),
    "power": ("power", "W", "measurement"),
    "energy": ("energy", "kWh", "total_increasing"),
    "pm25": ("pm25", "µg/m³", "measurement"),
    "pm10": ("pm10", "µg/m³", "measurement"),
}
BINARY_KEYS: dict[str, str] = {
    "battery_low": "battery", "motion": "motion", "occupancy": "occupancy", "door": "door",
    "window": "window", "contact": "opening", "moisture": "moisture", "leak": "moisture",
    "smoke": "smoke", "online": "connectivity",
}
# Units a device may give in `units` that Home Assistant knows for these device classes.
# Home Assistant's sensor docs: its pressure and atmospheric_pressure classes take the same units.
_PRESSURE = frozenset({"pressure", "atmospheric_pressure"})
UNIT_CLASSES: dict[str, frozenset[str]] = {
    "°C": frozenset({"temperature"}), "°F": frozenset({"temperature"}), "K": frozenset({"temperature"}),
    **{unit: _PRESSURE for unit in ("Pa", "hPa", "kPa", "cbar", "bar", "mbar", "psi", "mmHg", "inHg")},
}

def key_id(key: str) -> str:
    """A data key as an HA object id (lower case, [a-z0-9_])."""
    slug = re.sub(r"[^a-z0-9_]+", "_", key.lower()).strip("_")
    if slug and slug == key:
        return slug
    return f"{slug[:40] or 'key'}_{hashlib.sha1(key.encode('utf-8')).hexdigest()[:6]}"


def ha_node(base: str, client_id: str) -> str:
    """`base` and the client_id as a Home Assistant node id ([A-Za-z0-9_-]): `base_<id>` for
    a plain id, `base-<slug>_<hash>` for a hashed one (its topic level's `~` is not allowed
    there): the `-` after the base keeps the two kinds apart, as the `~` does in topics."""
    level = topic_id(client_id)
    return f"{base}_{level}" if "~" not in level else f"{base}-{level.replace('~', '_')}"


def entity_name(key: str) -> str:
    return key.replace("_", " ").strip().capitalize() or key


@dataclass(frozen=True)
class Announcement:
    topic: str
    payload: dict


class Discovery:
    """Builds the retained config messages for one bridge (prefix P, discovery prefix)."""

    def __init__(self, topic_prefix: str, discovery_prefix: str, bridge_client_id: str,
                 instance_id: str | None = None):
        """`instance_id`: several instances (PROTOCOL 8) relay as one device, named after
        `bridge_client_id` (then the shared group); each instance has a connectivity
        sensor of its own, and a device's availability no longer follows one instance."""
        self.prefix = topic_prefix
        self.discovery_prefix = discovery_prefix
        self.bridge_id = ha_node("chatroom_bridge", bridge_client_id)
        self.bridge_client_id = bridge_client_id
        self.instance_id = instance_id
        self.topics = Topics(topic_prefix)
        self.bridge_state_topic = self.topics.bridge_state(instance_id or "")

    def state_topic(self, client_id: str) -> str:
        return self.topics.device_state(client_id)

    def availability_topic(self, client_id: str) -> str:
        return self.topics.device_availability(client_id)

    def node(self, client_id: str) -> str:
        return ha_node("chatroom", client_id)

    def config_topic(self, component: str, client_id: str, key: str) -> str:
        return f"{self.discovery_prefix}/{component}/{self.node(client_id)}/{key_id(key)}/config"

    def component_of(self, value) -> str | None:
        if isinstance(value, bool):
            return "binary_sensor"
        if isinstance(value, (int, float, str)):
            return "sensor"
        return None

    def entity(self, client_id: str, device_name: str, key: str, value, unit: str | None = None) -> Announcement:
        """The config message of data key `key` of a device (`value` decides the kind)."""
        component = self.component_of(value)
        if component is None:  # validation lets only numbers, strings and booleans into `data`
            raise ValueError(f"data.{key} ({type(value).__name__}) cannot be a Home Assistant entity")
        value_of = f"value_json.data[{json.dumps(key, ensure_ascii=False)}]"
        payload: dict[str, Any] = {
            "name": entity_name(key),
            "unique_id": f"{self.node(client_id)}_{key_id(key)}",
            "state_topic": self.state_topic(client_id),
            **self.device_part(client_id, device_name),
        }
        if component == "binary_sensor":
            payload["value_template"] = f"{{{{ 'ON' if {value_of} else 'OFF' }}}}"
            payload["payload_on"], payload["payload_off"] = "ON", "OFF"
            device_class = BINARY_KEYS.get(key.lower())
            if device_class:
                payload["device_class"] = device_class
        elif isinstance(value, str):
            payload["value_template"] = f"{{{{ {value_of} }}}}"
        else:
            device_class, default_unit, state_class = NUMERIC_KEYS.get(key.lower(), (None, None, "measurement"))
            if unit is not None and unit != default_unit:
                # The device's own unit wins; keep the class only where HA accepts that unit for it.
                device_class = device_class if device_class in UNIT_CLASSES.get(unit, ()) else None
            payload["value_template"] = f"{{{{ {value_of} }}}}"
            if unit or default_unit:
                payload["unit_of_measurement"] = unit or default_unit
            if device_class:
                payload["device_class"] = device_class
            if state_class:
                payload["state_class"] = state_class
        return Announcement(self.config_topic(component, client_id, key), payload)

    def device_part(self, client_id: str, device_name: str) -> dict[str, Any]:
        """What every entity of a device shares: availability, the device, the origin
        (its declared commands' entities too: homeassistant/command_entities.py)."""
        return {
            "availability": [
                {"topic": self.availability_topic(client_id)},
                # One bridge's will says the relay is gone; of several instances, one is not the relay.
                *([] if self.instance_id else
                  [{"topic": self.bridge_state_topic, "value_template": "{{ value_json.state }}"}]),
            ],
            "availability_mode": "all",
            "device": {
                "identifiers": [self.node(client_id)],
                "name": device_name,
                "model": "MQTT device",
                "manufacturer": "chatroom relay",
                "via_device": self.bridge_id,
            },
            "origin": ORIGIN,
        }

    def bridge(self) -> Announcement:
        """The bridge itself, as a device with a connectivity sensor (the via_device of all others)."""
        sensor = ha_node("connectivity", self.instance_id) if self.instance_id else "connectivity"
        return Announcement(
            f"{self.discovery_prefix}/binary_sensor/{self.bridge_id}/{sensor}/config",
            {
                "name": f"Connectivity {self.instance_id}" if self.instance_id else "Connectivity",
                "unique_id": f"{self.bridge_id}_{sensor}",
                "state_topic": self.bridge_state_topic,
                "value_template": "{{ 'ON' if value_json.state == 'online' else 'OFF' }}",
                "payload_on": "ON",
                "payload_off": "OFF",
                "device_class": "connectivity",
                "device": {"identifiers": [self.bridge_id], "name": f"Chatroom relay {self.bridge_client_id}",
                           "model": "MQTT bridge", "manufacturer": "chatroom relay"},
                "origin": ORIGIN,
            },
        )
