"""Group commit of inbound bursts, acknowledged by hand (paho's manual ack).

With `rooms.group_commit`, each inbound message is handled inside `rooms.batch()` and
its PUBACK waits: a flusher thread commits the batch, publishes it, then sends the
PUBACKs of the messages in it (PUBACK after commit). Under eventlet it runs when paho's
loop yields, after a whole read burst, so one commit covers the burst; a broker that
redelivers an unacknowledged message finds it stored. A broker that keeps the socket
busy never lets the flusher run: past `max_batch` waiting messages, paho's thread
commits by itself. When the shared store is away at commit (`Unavailable`), the batch
stays open and its PUBACKs wait: the commit is retried with backoff, as a single held
message is (dispatch.py), and paho's thread holds its reading once `max_batch` wait.
"""
from __future__ import annotations

import logging
import threading
from typing import Callable, Protocol

from paho.mqtt.client import MQTTMessage

from chatroom.core.errors import Unavailable
from chatroom.core.room import Rooms
from mqtt_service.stats import BridgeStats

log = logging.getLogger("mqtt_service.bridge")

# Seconds between two tries of what the store holds back (doubling): a held commit here, a
# held message in dispatch.py.
FIRST_RETRY, LAST_RETRY = 0.2, 5.0


class Acknowledger(Protocol):
    """What group commit needs of the paho client."""

    def ack(self, mid: int, qos: int) -> object: ...


class GroupCommit:
    def __init__(self, rooms: Rooms, stats: BridgeStats, max_batch: int):
        self.rooms = rooms
        self.stats = stats
        self.max_batch = max_batch
        self.enabled = rooms.group_commit  # off: paho acknowledges each message itself
        self._client: Acknowledger | None = None
        # (mid, qos) of inbound messages handled into the open batch, to PUBACK once committed.
        self._due: list[tuple[int, int]] = []
        self._due_lock = threading.Lock()
        self._flush_wanted = threading.Event()
        self._closed = False
        self._closing = threading.Event()  # wakes a held commit's backoff
        self._giving_up = False  # the bridge is stopping: a held commit is not retried
        # Messages paho's thread is handling now. One waiting on Redis (a message_id's claim)
        # yields to the hub mid-burst: the flusher then lets the burst go on rather than
        # commit a batch of one; it commits once paho waits for the socket.
        self._handling = 0

    def attach(self, client: Acknowledger) -> None:
        """The client whose `ack` sends the PUBACKs (looked up on every ack)."""
        self._client = client

    def start(self) -> None:
        """The flusher thread, with group commit only."""
        if self.enabled:
            threading.Thread(target=self.run, name="mqtt-batch-flusher", daemon=True).start()

    def stop_retrying(self) -> None:
        """The bridge is stopping: a commit the store holds back gives up (its messages stay
        unacknowledged, and the broker delivers them again to our session)."""
        self._giving_up = True
        self._closing.set()

    def close(self) -> None:
        """The client is stopped: the flusher ends."""
        self._closed = True
        self._closing.set()
        self._flush_wanted.set()

    def handle(self, message: MQTTMessage, receive: Callable[[MQTTMessage], None]) -> None:
        """`receive(message)` inside the open batch; its PUBACK waits for the batch's commit."""
        self._handling += 1
        try:
            with self.rooms.batch():
                receive(message)
        finally:
            self._handling -= 1
            # Acknowledged whatever happened to it (as paho does): an unacknowledged
            # message would hold one of the broker's in-flight slots for ever.
            with self._due_lock:
                self._due.append((message.mid, message.qos))
                due = len(self._due)
            if due >= self.max_batch:
                self.commit_and_ack()
            elif not self._flush_wanted.is_set():  # set() takes a lock: once per batch is enough
                self._flush_wanted.set()

    def run(self) -> None:
        """The flusher. Runs until the client is stopped, not only until stop() begins:
        messages that arrive while the outbox drains are acknowledged too."""
        while True:
            self._flush_wanted.wait()
            self._flush_wanted.clear()
            if self._closed:
                return
            if self._handling:
                continue  # mid-message: the message's end asks again
            try:
                self.commit_and_ack()
            except Unavailable as exc:  # given up at stop: said once, no traceback
                log.warning("MQTT batch not stored at stop: %s (the broker keeps it)", exc.detail)
            except Exception:
                self.stats.add("handler_errors")
                log.exception("MQTT batch flush failed")

    def commit_and_ack(self) -> None:
        """Commit and publish the open batch, then acknowledge the messages in it. A store
        that is away holds the PUBACKs until it answers (or the client stops: the broker
        then delivers them again to our session)."""
        with self._due_lock:  # taken before the commit: each of these is in the batch
            due, self._due = self._due, []
        delay = FIRST_RETRY
        try:
            while True:
                try:
                    self.rooms.flush()
                    break
                except Unavailable as exc:
                    if self._closed or self._giving_up:
                        due = []  # not stored: unacknowledged, so the broker keeps them
                        raise
                    self.stats.add("handler_errors")
                    log.warning("MQTT batch of %d held: %s (%s); retrying in %.1f s", len(due), exc.message,
                                exc.detail, delay)
                    self._closing.wait(delay)
                    delay = min(delay * 2, LAST_RETRY)
        finally:
            if due:
                client = self._client
                if client is None:
                    raise RuntimeError("group commit has no client to acknowledge with")
                for mid, qos in due:
                    client.ack(mid, qos)
