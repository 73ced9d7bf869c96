"""Per-device retained topics and Home Assistant discovery: a room listener of the bridge.

For every device (by client_id):
- `P/devices/<id>/state` (retained): the latest value of each of its `data` keys, with
  the time of the reading;
- `P/devices/<id>/availability` (retained): `online` while the device is in a room,
  `offline` when it leaves (a leave, its will, the silence timeout, or giving way);
- with HA_DISCOVERY, one retained config per key under the discovery prefix, sent once
  per new key, never per reading.

What strangers can leave on the broker is bounded (PROTOCOL 9): at most `max_keys` keys
per device (across its messages), at most `max_devices` devices (the longest-silent one
is cleared to make room), and devices silent for DEVICE_RETENTION_DAYS are cleared
(`expire`). Clearing a device publishes an empty retained message on each of its topics.
Home Assistant's birth (`online` on its status topic) re-announces everything at most
once a minute, paced so the outbox never fills with configs (`Reannouncer`).
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Callable, Sequence

from chatroom.core.limits import RecentSet, Throttle
from chatroom.core.model import Message, Source, SystemEvent, dumps
from mqtt_service.homeassistant.discovery import Announcement, Discovery
from mqtt_service.homeassistant.reannounce import Reannouncer

log = logging.getLogger(__name__)

DEVICE_SOURCE = Source.MQTT
# New devices given retained topics per minute, all senders together. One message of a new
# device costs up to MAX_DEVICE_KEYS + 2 retained publications (and up to twice as many to
# clear the one it pushes out): strangers inventing ids must not turn a flood into a flood of those. A
# device beyond it still chats; its topics come with its next message after the minute.
NEW_DEVICES_PER_MINUTE = 120
MAX_KEYS_CLEARED = 256  # keys of a device's history cleared at most (older versions allowed 64 in memory)

Publish = Callable[[str, bytes, bool], None]  # (topic, payload, retain)


@dataclass
class _Device:
    name: str
    room: str
    last_seen: float  # epoch seconds: compared with DEVICE_RETENTION_DAYS
    data: dict = field(default_factory=dict)
    timestamp: str | None = None
    units: dict = field(default_factory=dict)
    announced: dict = field(default_factory=dict)  # key -> config topic (None without HA)
    rooms: set = field(default_factory=set)
    loaded: bool = False  # its latest readings were read from history


class DeviceTopics:
    def __init__(self, discovery: Discovery, publish: Publish, ha_enabled: bool,
                 history: Callable[[str], tuple[dict, str | None]] = lambda client_id: ({}, None),
                 known_keys: Callable[[str], list[str]] = lambda client_id: [],
                 max_devices: int = 500, max_keys: int = 32, clock: Callable[[], float] = time.time,
                 reannouncer: Reannouncer | None = None):
        self.discovery = discovery
        self.publish = publish
        self.ha_enabled = ha_enabled
        self.history = history        # latest stored readings, so a restart does not blank the state
        self.known_keys = known_keys  # every data key history holds, for clearing
        self.max_devices = max_devices
        self.max_keys = max_keys
        self.clock = clock
        self.reannouncer = reannouncer or Reannouncer(lambda deadline: True)
        self._devices: OrderedDict[str, _Device] = OrderedDict()  # least recently heard first
        self._forgotten = RecentSet(max_items=1000)  # cleared and not heard since
        self._admissions = Throttle(count=NEW_DEVICES_PER_MINUTE, seconds=60.0, max_keys=1)
        self.deferred = 0  # messages of new devices beyond the per-minute budget (no retained topics yet)
        self._deferring = False
        self._lock = threading.Lock()
        self.cleared = 0  # devices whose retained topics were cleared (evicted, expired, forgotten)

    @property
    def tracked(self) -> int:
        return len(self._devices)

    # --- room listener ------------------------------------------------------------

    def __call__(self, event: object) -> None:
        if isinstance(event, Message) and event.source == DEVICE_SOURCE and event.client_id and event.data:
            self._reading(event, event.client_id, event.data)
        elif isinstance(event, SystemEvent) and event.client_id and event.event in ("join", "leave", "rename"):
            self._presence(event, event.client_id)

    def _device(self, client_id: str, name: str, room: str, evicted: list[tuple[str, _Device]]) -> _Device | None:
        """The device's entry, made the most recently heard. A new one may push out the
        longest-silent device that is not present (into `evicted`, cleared by the caller); a
        present device is never pushed out (its entities would vanish while it is there). None:
        a new device beyond this minute's budget, or with every tracked device present."""
        device = self._devices.pop(client_id, None)
        if device is None:
            absent = None
            if len(self._devices) >= self.max_devices:
                absent = next((other for other, known in self._devices.items() if not known.rooms), None)
                if absent is None:
                    self._defer("all the tracked devices are present (MAX_DEVICES)")
                    return None
            admitted, _ = self._admissions.allow("new devices")
            if not admitted:
                self._defer(f"new devices arrive faster than {NEW_DEVICES_PER_MINUTE} a minute")
                return None
            if absent is not None:
                evicted.append((absent, self._devices.pop(absent)))
            if self._deferring:
                self._deferring = False
                log.info("new devices get their retained topics again (%d messages deferred so far)",
                         self.deferred)
            device = _Device(name=name, room=room, last_seen=self.clock())
        self._devices[client_id] = device
        device.last_seen = self.clock()
        self._forgotten.discard(client_id)
        return device

    def _defer(self, why: str) -> None:
        self.deferred += 1
        if not self._deferring:  # one line when it starts, one when it ends
            self._deferring = True
            log.warning("%s: new devices' retained topics wait for their next message", why)

    def _reading(self, message: Message, client_id: str, readings: dict) -> None:
        """`client_id`, `readings`: the message's (a device's message carries both)."""
        evicted: list[tuple[str, _Device]] = []
        with self._lock:
            device = self._device(client_id, message.username, message.room, evicted)
            if device is None:
                return
            if not device.loaded:
                device.loaded = True
                data, device.timestamp = self.history(client_id)
                device.data.update(list(data.items())[:self.max_keys])
            device.name, device.room, device.timestamp = message.username, message.room, message.timestamp
            new_keys = []
            for key, value in readings.items():
                if key not in device.data and len(device.data) >= self.max_keys:
                    continue  # bounded across its messages: later new keys are not published
                device.data[key] = value
                if key not in device.announced:
                    new_keys.append(key)
            device.units.update((key, unit) for key, unit in (message.units or {}).items() if key in device.data)
            announcements = [self._entity(client_id, device, key) for key in new_keys]
            state = self._state(client_id, device)
        self._clear(evicted)
        for announcement in announcements:
            self._send(announcement)
        self.publish(self.discovery.state_topic(client_id), state, True)

    def _presence(self, event: SystemEvent, client_id: str) -> None:
        evicted: list[tuple[str, _Device]] = []
        with self._lock:
            device = self._device(client_id, event.username or client_id, event.room, evicted)
            if device is None:
                return
            if event.event == "leave":
                device.rooms.discard(event.room)
            else:
                device.rooms.add(event.room)
                device.name = event.username or device.name
            online = bool(device.rooms)
            # The device's name is in every config, and Home Assistant takes a device's name
            # from any of them: one config carries a rename (not one per key).
            renamed = event.event == "rename" and self.ha_enabled and device.announced
            announcement = self._entity(client_id, device, next(iter(device.announced))) if renamed else None
        self._clear(evicted)
        self.publish(self.discovery.availability_topic(client_id), b"online" if online else b"offline", True)
        self._send(announcement)

    # --- bounds ---------------------------------------------------------------------

    def recall(self, recent: list[tuple[str, str]]) -> None:
        """After a restart: the devices history heard from most recently, (client_id, ISO
        time of its newest message) newest first, so bounds and retention cover them too."""
        with self._lock:
            for client_id, timestamp in recent[:self.max_devices]:  # each in front of the newer
                if client_id not in self._devices:
                    self._devices[client_id] = _Device(name=client_id, room="", last_seen=_epoch(timestamp))
                    self._devices.move_to_end(client_id, last=False)  # older than anyone heard since

    def expire(self, silent_since: float) -> int:
        """Devices not heard from since `silent_since` (epoch seconds) are cleared."""
        with self._lock:
            # Least recently heard first; a present device is never cleared, whatever its age.
            expired = [(client_id, device) for client_id, device in self._devices.items()
                       if device.last_seen < silent_since and not device.rooms]
            for client_id, _ in expired:
                del self._devices[client_id]
        self._clear(expired)
        if expired:
            log.info("device retention: %d devices silent since %s cleared", len(expired),
                     datetime.fromtimestamp(silent_since).isoformat(timespec="seconds"))
        return len(expired)

    def forget(self, client_id: str) -> list[str] | None:
        """Clear a device's retained topics (state, availability, discovery). The topics
        cleared; [] when it was cleared already and not heard since; None when unknown."""
        with self._lock:
            device = self._devices.pop(client_id, None)
            if device is None and client_id in self._forgotten:
                return []
        if device is None and not self.known_keys(client_id) and not self.history(client_id)[1]:
            return None
        topics = self._clear([(client_id, device)], thorough=True)
        log.info("device %r forgotten: %d retained topics cleared", client_id, len(topics))
        return topics

    def _clear(self, devices: Sequence[tuple[str, _Device | None]], thorough: bool = False) -> list[str]:
        """Empty retained messages on every topic of these devices (called without the lock).

        A pushed-out or expired device costs at most 2 + 2 x max_keys publications: its
        announced configs, or for one recalled after a restart (announced by an earlier run)
        its first max_keys keys in history, both kinds. `thorough` (forget, an operator's
        call) clears every key history holds, up to MAX_KEYS_CLEARED."""
        topics: list[str] = []
        for client_id, device in devices:
            own = [self.discovery.state_topic(client_id), self.discovery.availability_topic(client_id)]
            announced = dict(device.announced) if device else {}
            own += [topic for topic in announced.values() if topic]
            if thorough or device is None or not device.loaded:
                limit = MAX_KEYS_CLEARED if thorough else self.max_keys
                for key in sorted(set(self.known_keys(client_id)[:limit]) - set(announced)):
                    # The kind of a key seen only in history is not known: clear both.
                    own += [self.discovery.config_topic("sensor", client_id, key),
                            self.discovery.config_topic("binary_sensor", client_id, key)]
            for topic in own:
                self.publish(topic, b"", True)  # an empty retained message deletes the retained one
            self._forgotten.add(client_id)
            topics += own
        self.cleared += len(devices)
        return topics

    # --- Home Assistant -------------------------------------------------------------

    def on_connect(self) -> None:
        """Announce the bridge itself (the via_device of every device)."""
        if self.ha_enabled:
            self._send(self.discovery.bridge())

    def on_ha_status(self, payload: bytes) -> None:
        """Home Assistant restarted (`online` on its status topic): announce everything again,
        at most once a minute and paced (on a thread of its own: this is paho's thread)."""
        if not self.ha_enabled or payload.strip().lower() != b"online":
            return
        self.reannouncer.start(self._every_announcement, self._send)

    def _every_announcement(self) -> list[Announcement | None]:
        with self._lock:
            announcements = [self._entity(client_id, device, key)
                             for client_id, device in self._devices.items() for key in device.announced]
        return [self.discovery.bridge(), *announcements]

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


def _epoch(timestamp: str) -> float:
    try:
        return datetime.fromisoformat(timestamp).timestamp()
    except (TypeError, ValueError):
        return time.time()
