"""/metrics: Prometheus text built from the live counters at scrape time.

A custom collector reads the numbers the components already keep (no second
set of counters to drift). Each app has its own registry, so several apps can
live in one process (tests).
"""
from __future__ import annotations

from typing import Callable, Iterable

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .room import Rooms

NumberSource = Callable[[], dict[str, float]]


class ChatMetrics:
    def __init__(self, rooms: Rooms, web_clients: Callable[[], int]):
        self.rooms = rooms
        self.web_clients = web_clients
        self._sources: list[tuple[str, NumberSource, dict[str, tuple[str, str]]]] = []
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)

    def add_source(self, prefix: str, read: NumberSource, described: dict[str, tuple[str, str]]) -> None:
        """Expose `read()[name]` as `<prefix>_<name>` for every name in `described`.

        `described` maps a name to (kind, help), kind being "counter" or "gauge".
        """
        self._sources.append((prefix, read, described))

    def collect(self) -> Iterable:
        per_room = CounterMetricFamily("chatroom_room_messages", "Chat messages posted per room since start",
                                       labels=["room"])
        for room, count in sorted(self.rooms.posted_per_room().items()):
            per_room.add_metric([room], count)
        yield per_room
        summary = self.rooms.summary()
        yield GaugeMetricFamily("chatroom_rooms", "Rooms with state in this process", value=summary["rooms"])
        yield GaugeMetricFamily("chatroom_web_users", "Web users present in rooms", value=summary["web_users"])
        yield GaugeMetricFamily("chatroom_socketio_clients", "Connected Socket.IO clients",
                                value=self.web_clients())
        yield CounterMetricFamily("chatroom_listener_failures", "Room listener exceptions",
                                  value=self.rooms.listener_failures)
        for prefix, read, described in self._sources:
            values = read()
            for name, (kind, help_text) in described.items():
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(f"{prefix}_{name}", help_text, value=float(values.get(name) or 0))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
