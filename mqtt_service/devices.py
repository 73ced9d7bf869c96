"""Per-device topics and Home Assistant discovery: a room listener of the bridge.

For every device (by client_id) that sends readings in `data`:
- `P/devices/<id>/state` (retained): the latest value of every key, with the
  time of the reading;
- `P/devices/<id>/availability` (retained): `online` while the device is in a
  room, `offline` when it leaves (a leave, its will, or the silence timeout);
- with HA_DISCOVERY, one retained config per key under the discovery prefix,
  sent once per new key (and again when Home Assistant says it is `online`
  after its own restart), never per reading.
`forget()` clears all of a device's retained topics.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

from chatroom.messages import Message, SystemEvent, dumps

from .ha_discovery import Announcement, Discovery

log = logging.getLogger(__name__)

MAX_DEVICES = 1000          # devices remembered in memory (their retained topics stay on the broker)
MAX_KEYS_PER_DEVICE = 64    # a device cannot grow its state or its entities without bound

Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)


@dataclass
class _Device:
    name: str
    room: str
    data: dict = field(default_factory=dict)
    timestamp: str | None = None
    units: dict = field(default_factory=dict)
    announced: dict = field(default_factory=dict)  # key -> config topic
    rooms: set = field(default_factory=set)


class DeviceTopics:
    def __init__(self, discovery: Discovery, publish: Publish, ha_enabled: bool,
                 history: Callable[[str], tuple[dict, str | None]] = lambda client_id: ({}, None),
                 known_keys: Callable[[str], list[str]] = lambda client_id: []):
        self.discovery = discovery
        self.publish = publish
        self.ha_enabled = ha_enabled
        self.history = history        # latest stored readings, so a restart does not blank the state
        self.known_keys = known_keys  # every data key ever stored, for forget()
        self._devices: OrderedDict[str, _Device] = OrderedDict()
        self._lock = threading.Lock()

    # --- room listener ------------------------------------------------------------

    def __call__(self, event) -> None:
        if isinstance(event, Message) and event.source == "mqtt" and event.client_id and event.data:
            self._reading(event)
        elif isinstance(event, SystemEvent) and event.client_id and event.event in ("join", "leave", "rename"):
            self._presence(event)

    def _device(self, client_id: str, name: str, room: str) -> _Device:
        device = self._devices.pop(client_id, None)
        if device is None:
            data, timestamp = self.history(client_id)
            device = _Device(name=name, room=room, data=dict(list(data.items())[:MAX_KEYS_PER_DEVICE]),
                             timestamp=timestamp)
        self._devices[client_id] = device  # most recently heard last
        while len(self._devices) > MAX_DEVICES:
            self._devices.popitem(last=False)
        return device

    def _reading(self, message: Message) -> None:
        with self._lock:
            device = self._device(message.client_id, message.username, message.room)
            device.name, device.room, device.timestamp = message.username, message.room, message.timestamp
            device.units.update(message.units or {})
            new_keys = []
            for key, value in message.data.items():
                if key not in device.data and len(device.data) >= MAX_KEYS_PER_DEVICE:
                    continue
                device.data[key] = value
                if key not in device.announced:
                    new_keys.append(key)
            announcements = [self._entity(message.client_id, device, key) for key in new_keys]
            state = self._state(message.client_id, device)
        for announcement in announcements:
            self._send(announcement)
        self.publish(self.discovery.state_topic(message.client_id), state, True)

    def _presence(self, event: SystemEvent) -> None:
        with self._lock:
            device = self._device(event.client_id, event.username or event.client_id, event.room)
            if event.event == "leave":
                device.rooms.discard(event.room)
            else:
                device.rooms.add(event.room)
                device.name = event.username or device.name
            online = bool(device.rooms)
            renamed = event.event == "rename" and self.ha_enabled
            announcements = ([self._entity(event.client_id, device, key) for key in device.announced]
                             if renamed else [])
        self.publish(self.discovery.availability_topic(event.client_id), b"online" if online else b"offline", True)
        for announcement in announcements:  # the device's name in Home Assistant follows a rename
            self._send(announcement)

    # --- Home Assistant -------------------------------------------------------------

    def on_connect(self) -> None:
        """Announce the bridge itself (the via_device of every device)."""
        if self.ha_enabled:
            self._send(self.discovery.bridge())

    def on_ha_status(self, payload: bytes) -> None:
        """Home Assistant restarted (`online` on its status topic): announce everything again."""
        if not self.ha_enabled or payload.strip().lower() != b"online":
            return
        with self._lock:
            announcements = [self._entity(client_id, device, key)
                             for client_id, device in self._devices.items() for key in device.announced]
        self._send(self.discovery.bridge())
        for announcement in announcements:
            self._send(announcement)
        log.info("Home Assistant is online: %d device entities announced again", len(announcements))

    def forget(self, client_id: str) -> list[str]:
        """Clear every retained topic of a device (state, availability, discovery). Returns them."""
        with self._lock:
            device = self._devices.pop(client_id, None)
        keys = set(device.data if device else ()) | set(self.known_keys(client_id))
        topics = [self.discovery.state_topic(client_id), self.discovery.availability_topic(client_id)]
        for key in sorted(keys):
            # The kind of a key seen only in history is not known: clear both.
            topics += [self.discovery.config_topic("sensor", client_id, key),
                       self.discovery.config_topic("binary_sensor", client_id, key)]
        for topic in topics:
            self.publish(topic, b"", True)  # an empty retained message deletes the retained one
        log.info("device %r forgotten: %d retained topics cleared", client_id, len(topics))
        return topics

    # --- helpers --------------------------------------------------------------------

    def _entity(self, client_id: str, device: _Device, key: str) -> Announcement | None:
        if not self.ha_enabled:
            device.announced[key] = None
            return None
        announcement = self.discovery.entity(client_id, device.name, key, device.data[key], device.units.get(key))
        device.announced[key] = announcement.topic
        return announcement

    def _send(self, announcement: Announcement | None) -> None:
        if announcement is not None:
            self.publish(announcement.topic, dumps(announcement.payload).encode("utf-8"), True)

    def _state(self, client_id: str, device: _Device) -> bytes:
        return dumps({"client_id": client_id, "username": device.name, "room": device.room,
                      "timestamp": device.timestamp, "data": device.data}).encode("utf-8")
