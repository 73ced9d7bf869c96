"""The bridge's outbox: every publication goes to the broker in order, and what waits is bounded.

paho's own queue takes whatever it is given (or, full, drops the *newest* silently), and
past 65 535 unacknowledged publications it refuses new ones (message ids run out). So the
bridge hands paho at most `window` unacknowledged publications; the rest wait here, in
order, at most `bound` of them (beyond it the oldest is dropped and counted, with one log
line when that starts and one when it ends). While the broker is unreachable everything
waits here; after a reconnect paho first re-sends what it had in flight, then a pump
thread sends the backlog as acknowledgements make room (PROTOCOL 3 and 9).
"""
from __future__ import annotations

import functools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable

from paho.mqtt.enums import MQTTErrorCode

from mqtt_service.connection_watch import ConnectionWatch
from mqtt_service.stats import BridgeStats
from mqtt_service.topics import topic_name_problem

log = logging.getLogger("mqtt_service.bridge")

# Publications handed to paho and not yet acknowledged: far below paho's 65 535 message
# ids, far above what a relay on loopback keeps in flight (a few hundred at 9 000 msg/s).
WINDOW = 2000
RESEND_WAIT_SECONDS = 10.0  # after a reconnect, paho's in-flight re-sends go before the backlog


@dataclass(frozen=True)
class Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False
    properties: Any = None  # MQTT 5 publish properties (a response's Correlation Data)


class Outbox:
    def __init__(self, bound: int, stats: BridgeStats, watch: ConnectionWatch, window: int = WINDOW):
        self.bound = bound
        self.window = window
        self.stats = stats
        self.watch = watch
        self._client = None
        # _lock guards the connection flag and the queue. It is held while calling
        # client.publish (keeping publish order), so paho callbacks that paho runs under
        # its own locks (on_publish) must never take it.
        self._lock = threading.Lock()
        self._connected = False
        self._backlog = False  # items wait here: new ones queue behind them (order)
        self._items: deque[Outgoing] = deque()
        self._after_drain: Callable[[], None] | None = None
        self._overflowing = False  # full: dropping the oldest (logged when it starts and ends)
        self._overflow_drops = 0
        self._paho_refused = False
        # Publications handed to paho and not yet acknowledged. A plain lock: never re-entered.
        self._acks = threading.Condition(threading.Lock())
        self._unacked = 0
        # mid -> qos of what paho holds unacknowledged: on a reconnect paho forgets its unsent
        # QoS 0 packets (no ack will come for them). An ack may come before publish() returns.
        self._pending: dict[int, int] = {}
        self._acked_early: set[int] = set()
        self._hold_until = 0.0
        self._stopped = False
        # Every publication's topic is checked; a room's few topics are checked once (bounded).
        self._topic_problem = functools.lru_cache(maxsize=4096)(topic_name_problem)

    # --- the bridge's side ----------------------------------------------------------

    def attach(self, client) -> None:
        self._client = client
        threading.Thread(target=self._run_pump, name="mqtt-outbox-pump", daemon=True).start()

    @property
    def size(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def unacked(self) -> int:
        return self._unacked

    @property
    def is_connected(self) -> bool:
        return self._connected

    def publish(self, item: Outgoing) -> None:
        """Send now if nothing waits and the window has room; else wait here, in order."""
        if self.watch.refused(item.topic):
            self.stats.add("messages_dropped")  # the broker refuses these (see ConnectionWatch)
            return
        problem = self._topic_problem(item.topic)
        if problem is not None:
            # Poison: the broker would drop our connection for it, and paho would send
            # it again after every reconnect. Dropped here, once, counted.
            self.stats.add("messages_dropped")
            log.warning("MQTT publication dropped: %s (topic %r)", problem, item.topic[:200])
            return
        with self._lock:
            if not (self._connected and not self._backlog and self._unacked < self.window
                    and self._send(item)):
                self._keep(item)

    def publish_first(self, item: Outgoing) -> None:
        """Ahead of any backlog (the bridge's `online` state on connect)."""
        with self._lock:
            if not self._send(item):
                self._keep(item, front=True)

    def connected(self, after_drain: Callable[[], None]) -> int:
        """The broker is back: the backlog goes out once paho has re-sent its in-flight
        publications, then `after_drain` runs (at once when nothing waits). The backlog's size."""
        with self._lock:
            self._connected = True
            waiting = len(self._items)
            self._backlog = waiting > 0
            if self._backlog:
                self._after_drain = after_drain
        with self._acks:
            # Unsent QoS 0 packets were forgotten by paho's reconnect: no ack will come.
            for mid in [mid for mid, qos in self._pending.items() if qos == 0]:
                del self._pending[mid]
                self._unacked -= 1
            self._acked_early.clear()
            self._hold_until = time.monotonic() + RESEND_WAIT_SECONDS
            self._acks.notify_all()
        if not waiting:
            after_drain()
        return waiting

    def disconnected(self) -> bool:
        """The connection is gone; new publications wait here. Whether it was up."""
        with self._lock:
            was_connected, self._connected = self._connected, False
        return was_connected

    def acknowledged(self, mid: int) -> None:
        """paho's on_publish (runs under paho's message lock: only the ack condition here)."""
        with self._acks:
            if self._pending.pop(mid, None) is None:
                self._acked_early.add(mid)  # before _send registered it
            self._unacked -= 1
            self._acks.notify_all()

    def wait_until(self, done: Callable[[], bool], deadline: float) -> bool:
        with self._acks:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acks.wait(min(remaining, 0.5))  # re-check: the queue has no condition of its own
            return True

    def flushed(self) -> bool:
        """Nothing waits here and paho has nothing unacknowledged (or the link is down)."""
        return not self._connected or (not self._items and self._unacked <= 0)

    def has_room(self) -> bool:
        """For paced senders (Home Assistant's re-announce): the backlog is empty and at
        most half the window is in flight."""
        return self._connected and not self._items and self._unacked < self.window // 2

    def stop(self) -> None:
        with self._acks:
            self._stopped = True
            self._acks.notify_all()

    # --- inside -------------------------------------------------------------------------

    def _send(self, item: Outgoing) -> bool:
        """Hand `item` to paho (caller holds _lock). False: paho refused it; not sent."""
        if self._client is None:
            return False
        self.watch.sent(item.topic)
        with self._acks:
            self._unacked += 1
        try:
            info = (self._client.publish(item.topic, item.payload, item.qos, item.retain)
                    if item.properties is None else
                    self._client.publish(item.topic, item.payload, item.qos, item.retain, properties=item.properties))
        except Exception:  # paho refused it loudly: counted unacknowledged for ever otherwise
            with self._acks:
                self._unacked -= 1
            self.stats.add("handler_errors")
            log.exception("MQTT publish on %r raised; the publication is dropped", item.topic[:200])
            return True  # not kept: it would raise again on every try
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS or (
                # paho holds QoS>0 messages and sends them on reconnect (an ack will come)
                info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and item.qos > 0):
            with self._acks:
                if info.mid in self._acked_early:
                    self._acked_early.discard(info.mid)
                else:
                    self._pending[info.mid] = item.qos
            if self._paho_refused:
                self._paho_refused = False
                log.info("MQTT publications accepted by paho again")
            return True
        with self._acks:
            self._unacked -= 1
        if not self._paho_refused:
            self._paho_refused = True
            log.warning("MQTT publish on %r refused by paho (%s): it waits in the outbox", item.topic[:200],
                        info.rc)
        return False

    def _keep(self, item: Outgoing, front: bool = False) -> None:
        """Wait here (caller holds _lock); full, the oldest is dropped and counted."""
        if len(self._items) >= self.bound:
            self.stats.add("messages_dropped")
            if not self._overflowing:
                self._overflowing = True
                self._overflow_drops = 0
                log.warning("MQTT outbox full (%d messages): the oldest are dropped and counted until "
                            "the broker takes them", self.bound)
            self._overflow_drops += 1
            if front:
                return  # it is the oldest
            self._items.popleft()
        if front:
            self._items.appendleft(item)
        else:
            self._items.append(item)
        self._backlog = True
        if self._connected:
            with self._acks:
                self._acks.notify_all()

    def _ready(self) -> bool:
        # Called with _acks held.
        if not (self._connected and self._backlog and self._unacked < self.window):
            return False
        return self._unacked <= 0 or time.monotonic() >= self._hold_until

    def _run_pump(self) -> None:
        """Sends the backlog as the window allows, in order."""
        while True:
            with self._acks:
                while not self._stopped and not self._ready():
                    self._acks.wait(0.5)  # the hold after a reconnect ends without a notify
                if self._stopped:
                    return
            self._pump()

    def _pump(self) -> None:
        sent, after_drain = 0, None
        with self._lock:
            while self._connected and self._items and self._unacked < self.window:
                if not self._send(self._items[0]):
                    break  # paho refuses for now: try again on the next ack
                self._items.popleft()
                sent += 1
            if self._connected and not self._items:
                self._backlog = False
                after_drain, self._after_drain = self._after_drain, None
                if self._overflowing:
                    self._overflowing = False
                    log.warning("MQTT outbox has room again: %d messages were dropped while it was full",
                                self._overflow_drops)
        if after_drain is not None:
            log.info("MQTT outbox drained after the reconnect")
            after_drain()
        elif sent == 0:
            with self._acks:  # paho refused: wait for an ack (or a reconnect) before trying again
                self._acks.wait(0.5)
