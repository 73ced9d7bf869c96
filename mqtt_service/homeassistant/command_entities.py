"""Home Assistant discovery payloads for declared commands (PROTOCOL 11). Pure: no I/O.

A declared command becomes a control: `bool` a `switch`, `number` a `number`, `enum` a
`select`, `text` a `text`. Its `command_topic` is `P/devices/<id>/set/<command>`, which
the bridge subscribes to: Home Assistant's plain payload (`ON`, `21.5`, an option, a
text) becomes the command JSON the device gets (mqtt_service/device_commands.py). Its
state is the retained `P/devices/<id>/controls` (`{"<command>": last acknowledged value}`),
which the bridge updates when the device acknowledges a command, whoever sent it. Options
are the ones Home Assistant documents for MQTT switch, number, select and text
(integrations/switch.mqtt, number.mqtt, select.mqtt, text.mqtt); tests/ha_schema.py checks them.
"""
from __future__ import annotations

from typing import Any

from chatroom.core.commands import MAX_TEXT_CHARS, CommandSpec
from mqtt_service.homeassistant.discovery import Announcement, Discovery, entity_name, key_id
from mqtt_service.topics import Topics

COMPONENT_OF = {"bool": "switch", "number": "number", "enum": "select", "text": "text"}
COMPONENTS = tuple(COMPONENT_OF.values())
# A number command declared without bounds still needs them in Home Assistant (its defaults are 1 and 100).
UNBOUNDED = 1_000_000


class CommandEntities:
    def __init__(self, discovery: Discovery, topics: Topics):
        self.discovery = discovery
        self.topics = topics

    def config_topic(self, component: str, client_id: str, command: str) -> str:
        return (f"{self.discovery.discovery_prefix}/{component}/{self.discovery.node(client_id)}/"
                f"command_{key_id(command)}/config")

    def topics_of(self, client_id: str, commands: dict[str, CommandSpec]) -> list[str]:
        return [self.config_topic(COMPONENT_OF[spec.type], client_id, name) for name, spec in commands.items()]

    def entity(self, client_id: str, device_name: str, command: str, spec: CommandSpec) -> Announcement:
        component = COMPONENT_OF[spec.type]
        value = f"value_json[{command!r}]"  # names are [A-Za-z0-9_.-]: no quote to escape
        present = f"{command!r} in value_json"
        payload: dict[str, Any] = {
            "name": entity_name(command),
            "unique_id": f"{self.discovery.node(client_id)}_command_{key_id(command)}",
            "command_topic": self.topics.device_set(client_id, command),
            "state_topic": self.topics.device_controls(client_id),
            **self.discovery.device_part(client_id, device_name),
        }
        if component == "switch":
            payload["payload_on"], payload["payload_off"] = "ON", "OFF"
            payload["state_on"], payload["state_off"] = "ON", "OFF"
            # "None": Home Assistant's word for an unknown state, until the device first acknowledges.
            payload["value_template"] = f"{{{{ ('ON' if {value} else 'OFF') if {present} else 'None' }}}}"
        elif component == "number":
            payload["min"] = spec.min if spec.min is not None else -UNBOUNDED
            payload["max"] = spec.max if spec.max is not None else UNBOUNDED
            whole = all(isinstance(bound, int) for bound in (payload["min"], payload["max"]))
            payload["step"] = spec.step if spec.step is not None else (1 if whole else 0.01)
            payload["mode"] = "box"
            payload["value_template"] = f"{{{{ {value} if {present} else 'None' }}}}"
        elif component == "select":
            payload["options"] = list(spec.options)
            payload["value_template"] = f"{{{{ {value} if {present} else 'None' }}}}"
        else:
            payload["min"], payload["max"], payload["mode"] = 0, int(spec.max or MAX_TEXT_CHARS), "text"
            payload["value_template"] = f"{{{{ {value} if {present} else '' }}}}"
        return Announcement(self.config_topic(component, client_id, command), payload)
