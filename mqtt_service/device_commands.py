"""The MQTT side of declared commands (PROTOCOL 11): sending, acks, Home Assistant controls.

- `send_command`: the command desk (chatroom/core/command_desk.py) publishes QoS 1 on
  `P/devices/<id>/commands` through the outbox (in order, kept while the broker is away).
- `P/devices/<id>/commands/ack`: an ack counts only on the device's own topic (a broker
  ACL binds it to the device's login, contract section 10): the desk matches it with a
  command sent to that very device, else it is ignored and counted.
- Home Assistant (HA_DISCOVERY): each declared command is a switch/number/select/text
  (homeassistant/command_entities.py), announced when a declaration changes and cleared
  when a command or the device goes; `P/devices/<id>/set/<command>` (HA's plain payload)
  becomes a command from "Home Assistant", awaited on a thread of its own (bounded by
  the desk's pending limit: paho's thread never waits), and every acknowledged value is
  kept in the retained `P/devices/<id>/controls`. Anyone who may publish there is Home
  Assistant, so set commands spend a bucket per device (`RATE_LIMIT`) and one of all
  devices together (the intake's buckets, chatroom/core/intake.py): a flood is refused and counted
  (`ha_commands_rate_limited`), not turned into commands and stored records.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from chatroom.core.command_desk import Answer, Asker, CommandDesk, Pending
from chatroom.core.commands import CommandSpec, Declared, DeclaredCommands
from chatroom.core.errors import RelayError, ValidationError
from chatroom.core.limits import Throttle
from chatroom.core.model import dumps
from chatroom.core.validation import parse_json_object
from mqtt_service.homeassistant.command_entities import CommandEntities
from mqtt_service.homeassistant.reannounce import Reannouncer
from mqtt_service.outbox import Outbox, Outgoing
from mqtt_service.stats import BridgeStats
from mqtt_service.topics import Topics, topic_id

log = logging.getLogger("mqtt_service.bridge")

HA_ASKER = Asker("Home Assistant", "homeassistant")
HA_TIMEOUT = 10.0  # seconds Home Assistant's command waits for the device's ack
MAX_ACK_BYTES = 4096
MAX_SET_BYTES = 1024
# Declaring devices whose controls are announced per minute, all together (as device_topics.py
# does for readings): strangers inventing ids must not turn a flood into retained configs.
NEW_DEVICES_PER_MINUTE = 120
# Home Assistant's set commands of all devices together (each device also spends its own
# RATE_LIMIT bucket): a person at a dashboard sends a few; every one is a stored record.

Reject = Callable[[str, ValidationError], None]  # (topic, error): one throttled reply on P/errors


class DeviceCommands:
    def __init__(self, topics: Topics, outbox: Outbox, qos: int, desk: CommandDesk, declared: DeclaredCommands,
                 stats: BridgeStats, reject: Reject, entities: CommandEntities | None = None,
                 reannouncer: Reannouncer | None = None,
                 admit: Callable[[str], None] = lambda client_id: None):
        self.topics = topics
        self.outbox = outbox
        self.qos = qos
        self.desk = desk
        self.declared = declared
        self.stats = stats
        self.reject = reject
        self.entities = entities  # None without HA_DISCOVERY
        self.reannouncer = reannouncer or Reannouncer(lambda deadline: True)
        # The intake's decision on a Home Assistant command to a device (a token, or rate_limited).
        self.admit = admit
        self._lock = threading.Lock()
        declared.address = topic_id  # a device is told on its topic level: two never share one
        self._announced: dict[str, dict[str, str]] = {}  # client_id -> command -> config topic
        self._controls: dict[str, dict[str, Any]] = {}   # client_id -> command -> last acknowledged value
        self._deferred: set[str] = set()                 # declared beyond the per-minute budget
        self._admissions = Throttle(count=NEW_DEVICES_PER_MINUTE, seconds=60.0, max_keys=1)
        declared.on_change(self._declaration_changed)
        desk.on_done(self._answered)
        desk.transport = self

    # --- the desk's transport --------------------------------------------------------------

    def connected(self) -> bool:
        return self.outbox.is_connected

    def send_command(self, client_id: str, payload: bytes) -> None:
        self.outbox.publish(Outgoing(self.topics.device_commands(client_id), payload, 1))

    # --- inbound: acks and Home Assistant's set topics ----------------------------------------

    def handle(self, level: str, kind: str, command: str | None, topic: str, payload: bytes) -> None:
        try:
            if kind == "ack":
                self._ack(level, payload)
            elif kind == "set" and command is not None:
                self._set(level, command, payload)
        except ValidationError as exc:
            self.reject(topic, exc)

    def _ack(self, level: str, payload: bytes) -> None:
        ack = parse_json_object(payload, MAX_ACK_BYTES)
        # No declaring device answers here ("" is nobody's id): nothing of ours was sent to it.
        if self.desk.on_ack(self.declared.owner(level) or "", ack) == "ignored":
            self.stats.add("acks_ignored")

    def _set(self, level: str, command: str, payload: bytes) -> None:
        client_id = self.declared.owner(level)
        if client_id is None or len(payload) > MAX_SET_BYTES:
            self.stats.add("ha_commands_ignored")
            return
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            raise ValidationError("bad_field", "a Home Assistant command must be UTF-8 text") from None
        try:
            pending = self.desk.submit(client_id, command, text, HA_ASKER, HA_TIMEOUT, from_text=True,
                                       admit=lambda: self._admit(client_id))
        except RelayError as exc:
            # Not the device's mistake: the reply must not name it (its client would take it as its own).
            raise ValidationError(exc.code, exc.message) from None
        # The answer is awaited off paho's thread (the ack arrives on it); the desk bounds these waiters.
        threading.Thread(target=self._await, args=(pending,), name="ha-command", daemon=True).start()

    def _admit(self, client_id: str) -> None:
        try:
            self.admit(client_id)
        except ValidationError:
            self.stats.add("ha_commands_rate_limited")
            raise

    def _await(self, pending: Pending) -> None:
        try:
            self.desk.wait(pending)
        except RelayError:
            pass  # recorded in the room (command_result timeout); HA keeps its last state
        except Exception:
            log.exception("Home Assistant command %s failed", pending.command_id)

    def _answered(self, pending: Pending, answer: Answer) -> None:
        """An acknowledged command changed the device: its controls state follows (any asker)."""
        if not answer.ok or self.entities is None:
            return
        with self._lock:
            if pending.client_id not in self._announced:
                return
            controls = self._controls.setdefault(pending.client_id, {})
            controls[pending.command] = pending.value
            state = dumps(controls).encode("utf-8")
        self.outbox.publish(Outgoing(self.topics.device_controls(pending.client_id), state, self.qos, True))

    # --- declarations -> topics and Home Assistant entities -----------------------------------

    def _declaration_changed(self, client_id: str, declared: Declared | None,
                             before: dict[str, CommandSpec]) -> None:
        if self.entities is not None:
            self._announce(client_id, declared)

    def heard(self, client_id: str) -> None:
        """A declaring device spoke again: announce its controls if the budget held them back."""
        if client_id in self._deferred:
            declared = self.declared.get(client_id)
            if declared is not None and self.entities is not None:
                self._announce(client_id, declared)

    def _announce(self, client_id: str, declared: Declared | None) -> None:
        entities = self.entities
        assert entities is not None
        with self._lock:
            announced = self._announced.get(client_id, {})
            if declared is not None and not announced:
                admitted, _ = self._admissions.allow("new devices")
                if not admitted:
                    if client_id not in self._deferred:  # counted once a device, however often it is heard
                        self._deferred.add(client_id)
                        self.stats.add("ha_controls_deferred")
                    return
            self._deferred.discard(client_id)
            wanted = {name: entities.entity(client_id, declared.username, name, spec)
                      for name, spec in declared.commands.items()} if declared is not None else {}
            stale = [topic for name, topic in announced.items()
                     if name not in wanted or wanted[name].topic != topic]
            if wanted:
                self._announced[client_id] = {name: item.topic for name, item in wanted.items()}
                controls = self._controls.get(client_id, {})
                for name in [name for name in controls if name not in wanted]:
                    del controls[name]
            else:
                self._announced.pop(client_id, None)
                self._controls.pop(client_id, None)
        for topic in stale:
            self.outbox.publish(Outgoing(topic, b"", self.qos, True))
        for announcement in wanted.values():
            self.outbox.publish(Outgoing(announcement.topic, dumps(announcement.payload).encode("utf-8"),
                                         self.qos, True))
        if not wanted and announced:
            self.outbox.publish(Outgoing(self.topics.device_controls(client_id), b"", self.qos, True))

    def on_ha_status(self, payload: bytes) -> None:
        """Home Assistant restarted: its controls are announced again (paced, once a minute at most)."""
        if self.entities is None or payload.strip().lower() != b"online":
            return
        self.reannouncer.start(self._every_announcement, self._send)

    def _every_announcement(self) -> list:
        entities = self.entities
        assert entities is not None
        with self._lock:
            clients = list(self._announced)
        found = [self.declared.get(client_id) for client_id in clients]
        return [entities.entity(item.client_id, item.username, name, spec)
                for item in found if item is not None for name, spec in item.commands.items()]

    def _send(self, announcement) -> None:
        if announcement is not None:
            self.outbox.publish(Outgoing(announcement.topic, dumps(announcement.payload).encode("utf-8"),
                                         self.qos, True))
