"""The bridge's `/mqtt/status` snapshot: connection, counters, outbox, devices, MQTT members."""
from __future__ import annotations

from typing import Callable

from chatroom.config import Settings
from chatroom.core.errors import Unavailable
from chatroom.core.model import Source
from chatroom.core.room import Rooms
from mqtt_service.homeassistant.device_topics import DeviceTopics
from mqtt_service.outbox import Outbox
from mqtt_service.stats import BridgeStats

STATUS_USERS_SHOWN = 500  # /mqtt/status lists at most this many MQTT users (the count is exact)


class StatusReport:
    def __init__(self, settings: Settings, rooms: Rooms, stats: BridgeStats, outbox: Outbox,
                 devices: DeviceTopics, protocol: str = "", history: Callable[[], dict] | None = None):
        """`protocol`: the MQTT version the bridge speaks (MQTT_PROTOCOL unless the broker lacks it);
        `history`: the history-as-outbox numbers (history_replay.py), when it is on."""
        self.settings = settings
        self.protocol = protocol
        self.history = history
        self.rooms = rooms
        self.stats = stats
        self.outbox = outbox
        self.devices = devices

    def snapshot(self, is_running: bool, subscriptions: list[str]) -> dict:
        """`subscriptions`: the filters of the current (or last) connection."""
        settings = self.settings
        try:
            members = self.rooms.members(source=Source.MQTT)
        except Unavailable:  # Redis away: the counters still answer; the members are unknown
            members = None
        # The count is exact; the list is capped so strangers cannot make monitoring's answer huge.
        mqtt_users = [
            {"client_id": user.client_id, "username": user.username, "join_time": user.join_time,
             "message_count": user.message_count, "room": user.room}
            for _, user in (members or [])[:STATUS_USERS_SHOWN]
        ]
        connected = self.outbox.is_connected
        return {
            "is_connected": connected,
            "is_running": is_running,
            "broker_info": {"host": settings.mqtt_broker, "port": settings.mqtt_port,
                            "tls": settings.mqtt_tls, "client_id": settings.mqtt_client_id,
                            # what the bridge speaks (broker_profile.py may lower MQTT_PROTOCOL)
                            "protocol": self.protocol or settings.mqtt_protocol,
                            "broker_kind": settings.mqtt_broker_kind},
            "mqtt_users_count": len(members) if members is not None else None,
            **self.stats.snapshot(),
            "outbox_size": self.outbox.size,
            # PROTOCOL 12: rooms whose chat messages come from history now, messages published
            # from it, chat messages the outbox let go of; null with several instances.
            "history_outbox": self.history() if self.history is not None else None,
            # What devices leave retained on the broker (PROTOCOL 9): tracked now, cleared so
            # far (evicted, expired, forgotten), messages of new devices beyond the minute's budget.
            "devices": {"tracked": self.devices.tracked, "cleared": self.devices.cleared,
                        "deferred": self.devices.deferred},
            "active_topics": list(subscriptions) if connected else [],
            "mqtt_users": mqtt_users,
            "mqtt_users_truncated": members is not None and len(members) > STATUS_USERS_SHOWN,
        }
