"""Home Assistant's documented MQTT discovery options for `sensor`, `binary_sensor` and the
controls of declared commands: `switch`, `number`, `select`, `text`.

From home-assistant.io/integrations/sensor.mqtt, /binary_sensor.mqtt, /switch.mqtt,
/number.mqtt, /select.mqtt, /text.mqtt and /mqtt (device,
origin, availability). No installable package ships these for this Python: the
`homeassistant` package needs a newer Python, and ha-mqtt-discoverable's models cover
only part of the options and accept unknown keys. `validate()` raises AssertionError
naming the first problem: a missing required key, a wrong type, an unknown key.
"""
from __future__ import annotations

STR, BOOL, INT, LIST, DICT = str, bool, int, list, dict
NUMBER = (int, float)

AVAILABILITY_ITEM = {"topic": STR, "payload_available": STR, "payload_not_available": STR, "value_template": STR}
DEVICE = {"identifiers": (LIST, STR), "connections": LIST, "name": STR, "model": STR, "model_id": STR,
          "manufacturer": STR, "sw_version": STR, "hw_version": STR, "serial_number": STR, "via_device": STR,
          "configuration_url": STR, "suggested_area": STR}
ORIGIN = {"name": STR, "sw_version": STR, "support_url": STR}
COMMON = {
    "availability": LIST, "availability_mode": STR, "availability_template": STR, "availability_topic": STR,
    "payload_available": STR, "payload_not_available": STR, "default_entity_id": STR, "device": DICT,
    "device_class": STR, "enabled_by_default": BOOL, "encoding": STR, "entity_category": STR,
    "entity_picture": STR, "expire_after": INT, "force_update": BOOL, "icon": STR,
    "json_attributes_template": STR, "json_attributes_topic": STR, "name": (STR, type(None)), "object_id": STR,
    "origin": DICT, "platform": STR, "qos": INT, "state_topic": STR, "unique_id": STR, "value_template": STR,
}
COMPONENTS = {
    "sensor": {**COMMON, "unit_of_measurement": STR, "state_class": STR, "suggested_display_precision": INT,
               "last_reset_value_template": STR, "options": LIST},
    "binary_sensor": {**COMMON, "payload_on": STR, "payload_off": STR, "off_delay": INT},
}
CONTROL = {**{key: kind for key, kind in COMMON.items() if key not in ("expire_after", "force_update")},
           "command_topic": STR, "command_template": STR, "optimistic": BOOL, "retain": BOOL}
COMPONENTS.update({
    "switch": {**CONTROL, "payload_on": STR, "payload_off": STR, "state_on": STR, "state_off": STR},
    "number": {**CONTROL, "min": NUMBER, "max": NUMBER, "step": NUMBER, "mode": STR, "payload_reset": STR,
               "unit_of_measurement": STR},
    "select": {**CONTROL, "options": LIST},
    "text": {**CONTROL, "min": INT, "max": INT, "mode": STR, "pattern": STR},
})
REQUIRED = {"sensor": ("state_topic",), "binary_sensor": ("state_topic",), "switch": ("command_topic",),
            "number": ("command_topic",), "select": ("command_topic", "options"), "text": ("command_topic",)}
MODES = {"number": {"auto", "box", "slider"}, "text": {"text", "password"}}
DEVICE_CLASSES = {
    "sensor": {"apparent_power", "aqi", "atmospheric_pressure", "battery", "carbon_dioxide", "carbon_monoxide",
               "current", "data_rate", "data_size", "date", "distance", "duration", "energy", "frequency",
               "gas", "humidity", "illuminance", "irradiance", "moisture", "monetary", "nitrogen_dioxide",
               "ozone", "ph", "pm1", "pm10", "pm25", "power", "power_factor", "precipitation", "pressure",
               "reactive_power", "signal_strength", "sound_pressure", "speed", "temperature", "timestamp",
               "volatile_organic_compounds", "voltage", "volume", "water", "weight", "wind_speed", "enum"},
    "switch": {"outlet", "switch"},
    "number": set(),  # not used by the relay: any device_class on a number is reported
    "select": set(), "text": set(),
    "binary_sensor": {"battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
                      "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
                      "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
                      "smoke", "sound", "tamper", "update", "vibration", "window"},
}
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}


def _check(mapping: dict, allowed: dict, where: str) -> None:
    for key, value in mapping.items():
        assert key in allowed, f"{where}: unknown option {key!r}"
        assert isinstance(value, allowed[key]), f"{where}: {key!r} has type {type(value).__name__}"


def validate(component: str, config: dict) -> None:
    assert component in COMPONENTS, f"unknown component {component}"
    _check(config, COMPONENTS[component], component)
    for key in REQUIRED[component]:
        assert key in config, f"{component}: {key!r} is required"
    if "device_class" in config:
        assert config["device_class"] in DEVICE_CLASSES[component], f"device_class {config['device_class']}"
    if "state_class" in config:
        assert config["state_class"] in STATE_CLASSES, f"state_class {config['state_class']}"
    if "mode" in config:
        assert config["mode"] in MODES[component], f"{component}: mode {config['mode']!r}"
    if component == "number":
        assert config.get("min", 1) <= config.get("max", 100), "number: min above max"
        assert config.get("step", 1) > 0, "number: step must be above 0"
    if component == "select":
        assert config["options"] and all(isinstance(option, str) for option in config["options"])
    if component == "text":
        assert 0 <= config.get("min", 0) <= config.get("max", 255) <= 255, "text: min/max out of 0..255"
    if "availability_mode" in config:
        assert config["availability_mode"] in ("all", "any", "latest")
    for item in config.get("availability", []):
        _check(item, AVAILABILITY_ITEM, "availability item")
        assert "topic" in item, "availability item: 'topic' is required"
    if "device" in config:
        _check(config["device"], DEVICE, "device")
        assert "identifiers" in config["device"] or "connections" in config["device"]
        assert "unique_id" in config, "a device needs the entity's unique_id"
    if "origin" in config:
        _check(config["origin"], ORIGIN, "origin")
        assert "name" in config["origin"]
