"""/metrics: Prometheus text built from the live counters at scrape time.

A custom collector reads the numbers the components already keep (no second
set of counters to drift). Each app has its own registry, so several apps can
live in one process (tests).
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from chatroom.core.errors import Unavailable
from chatroom.core.room import Rooms

NumberSource = Callable[[], dict[str, float]]


class ChatMetrics:
    def __init__(self, rooms: Rooms, web_clients: Callable[[], int], instance_id: str = "",
                 database_bytes: Callable[[], int] | None = None):
        self.rooms = rooms
        self.web_clients = web_clients
        self.instance_id = instance_id
        self.database_bytes = database_bytes
        self._sources: list[tuple[str, NumberSource, dict[str, tuple[str, str]]]] = []
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def add_source(self, prefix: str, read: NumberSource, described: dict[str, tuple[str, str]]) -> None:
        """Expose `read()[name]` as `<prefix>_<name>` for every name in `described`.

        `described` maps a name to (kind, help), kind being "counter" or "gauge".
        """
        self._sources.append((prefix, read, described))

    def collect(self) -> Iterable:
        # Counters are this instance's own; the label tells instances apart (PROTOCOL 8).
        info = GaugeMetricFamily("chatroom_instance_info", "This instance (value always 1)",
                                 labels=["instance_id"])
        info.add_metric([self.instance_id], 1)
        yield info
        up = "1 while the room state (in Redis, with several instances) answers"
        try:
            yield from self._room_numbers()
            yield GaugeMetricFamily("chatroom_shared_state_up", up, value=1)
        except Unavailable:  # Redis away: the rest of the page still answers
            yield GaugeMetricFamily("chatroom_shared_state_up", up, value=0)
        yield GaugeMetricFamily("chatroom_socketio_clients", "Connected Socket.IO clients",
                                value=self.web_clients())
        yield CounterMetricFamily("chatroom_listener_failures", "Room listener exceptions",
                                  value=self.rooms.listener_failures)
        yield CounterMetricFamily("chatroom_devices_evicted", "Devices that left a full room or room table "
                                  "to make way (the longest silent first)", value=self.rooms.evictions)
        yield CounterMetricFamily("chatroom_messages_lost", "Messages of a batch whose history commit failed "
                                  "(not published; the disk is full or failing)", value=self.rooms.messages_lost)
        for prefix, read, described in self._sources:
            values = read()
            for name, (kind, help_text) in described.items():
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(f"{prefix}_{name}", help_text, value=float(values.get(name) or 0))

    def _room_numbers(self) -> Iterable:
        per_room = CounterMetricFamily("chatroom_room_messages", "Chat messages posted per room since start",
                                       labels=["room"])
        for room, count in sorted(self.rooms.posted_per_room().items()):
            per_room.add_metric([room], count)
        summary = self.rooms.summary()
        size = self.database_bytes() if self.database_bytes is not None else None
        yield per_room
        yield GaugeMetricFamily("chatroom_rooms", "Rooms with members", value=summary["rooms"])
        yield GaugeMetricFamily("chatroom_web_users", "Web users present in rooms", value=summary["web_users"])
        if size is not None:
            yield GaugeMetricFamily("chatroom_database_size_bytes", "Size of the history database", value=size)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
