"""Bridge counters for /mqtt/status and /metrics: one lock, exact numbers."""
from __future__ import annotations

import threading
import time
from collections import Counter
from datetime import datetime, timezone

from chatroom.core.model import utc_timestamp

COUNTERS = (
    "messages_received",   # arrived on a subscribed topic, valid or not
    "messages_sent",       # publications the broker acknowledged (QoS 0: handed to the network)
    "messages_rejected",   # invalid inbound payloads (answered on P/errors, at most 10 a sender a minute)
    "messages_duplicate",  # repeated (client_id, message_id) within the window
    "messages_dropped",    # outbox overflow while the broker was unreachable
    "reconnect_count",     # successful connections after the first
    "connections_refused", # connection attempts the broker refused (bad login, not authorised)
    "handler_errors",      # exceptions caught in our paho callbacks
    "errors_suppressed",   # rejections not logged or answered on P/errors (throttled per sender)
    # Devices told and asked (PROTOCOL 11)
    "acks_ignored",        # command acks for no command sent to that device
    "ha_commands_ignored", # Home Assistant set topics of no declaring device (or too large)
    "ha_commands_rate_limited",  # Home Assistant set commands over the device's or all devices' bucket
    "ha_controls_deferred",  # declaring devices whose controls wait: over the per-minute budget
    "receipts_sent",       # receipts for stored (or duplicate) device messages
    "receipts_withheld",   # receipts asked for a message whose batch was not committed (no receipt)
    "requests_answered",   # device requests answered (ok or not)
)


class BridgeStats:
    def __init__(self):
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter({name: 0 for name in COUNTERS})
        self._rejections: Counter[str] = Counter()
        self.last_error: str | None = None
        self.connect_time: str | None = None
        self._last_message_at: float | None = None  # epoch seconds, formatted when asked: received() is per message

    def add(self, counter: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[counter] += amount

    def received(self) -> None:
        with self._lock:
            self._counts["messages_received"] += 1
            self._last_message_at = time.time()

    def rejected(self, code: str) -> None:
        with self._lock:
            self._counts["messages_rejected"] += 1
            self._rejections[code] += 1

    def connected(self, first_time: bool) -> None:
        with self._lock:
            self.connect_time = utc_timestamp()
            self.last_error = None
            if not first_time:
                self._counts["reconnect_count"] += 1

    def error(self, text: str) -> None:
        with self._lock:
            self.last_error = text

    @property
    def last_message_time(self) -> str | None:
        moment = self._last_message_at
        return utc_timestamp(datetime.fromtimestamp(moment, timezone.utc)) if moment is not None else None

    def snapshot(self) -> dict:
        with self._lock:
            return {
                **{name: self._counts[name] for name in COUNTERS},
                "rejections_by_code": dict(self._rejections),
                "last_error": self.last_error,
                "connect_time": self.connect_time,
                "last_message_time": self.last_message_time,
            }
