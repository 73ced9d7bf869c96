"""The MQTT bridge: paho client lifecycle, inbound handlers, outbox, publishing.

Inbound: `P/messages/in`, `P/users/join`, `P/users/leave` (and the `P/R/...`
forms) become room calls. Outbound: every room message and system event is
published on `P/messages/out` / `P/system`, once, in seq order.

Why the bridge keeps its own outbox: paho's queue drops the *newest* message
when full and counts nothing. While the broker is unreachable, room traffic
waits here (bounded, oldest dropped and counted) and is published on
reconnect, after paho has re-sent what was in flight when the link dropped.
"""
from __future__ import annotations

import functools
import logging
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from chatroom.config import Settings
from chatroom.limits import DedupWindow, RateLimiter
from chatroom.messages import (
    Message, SystemEvent, ValidationError, client_id_of, device_name, dumps,
    parse_device_join, parse_device_leave, parse_device_message, parse_json_object,
    utc_timestamp,
)
from chatroom.room import Rooms

from .stats import BridgeStats
from .topics import MESSAGES_IN, USERS_JOIN, USERS_LEAVE, Topics, topic_name_problem

log = logging.getLogger(__name__)

LOG_PAYLOAD_CHARS = 200
RESEND_WAIT_SECONDS = 10.0
# 0 = no limit. paho's default window of 20 caps a QoS 1 relay well below one core,
# and any window makes paho scan its whole queue on every PUBACK. The broker takes
# what we send; our own outbox bounds memory while it is unreachable.
MAX_INFLIGHT = 0


@dataclass(frozen=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool = False


def set_tcp_nodelay(sock) -> None:
    """Turn Nagle off on a paho socket (plain or TLS); a no-op for others (websockets)."""
    raw = getattr(sock, "_sock", sock)  # TLS sockets are socket subclasses already
    if isinstance(raw, socket.socket) and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _object_or_empty(payload: bytes) -> dict:
    """Best-effort decode, only to address an error reply to its sender."""
    try:
        return parse_json_object(payload)
    except ValidationError:
        return {}


def _guarded(callback):
    """Catch-all for paho callbacks: an escaped exception would kill the network loop."""

    @functools.wraps(callback)
    def wrapper(self, *args, **kwargs):
        try:
            return callback(self, *args, **kwargs)
        except Exception:
            self.stats.add("handler_errors")
            log.exception("MQTT %s handler failed", callback.__name__)
    return wrapper


class MqttBridge:
    def __init__(self, settings: Settings, rooms: Rooms, rate_limiter: RateLimiter,
                 dedup: DedupWindow, reserved_names: tuple[str, ...]):
        self.settings = settings
        self.rooms = rooms
        self.rate_limiter = rate_limiter
        self.dedup = dedup
        self.reserved_names = reserved_names
        self.topics = Topics(settings.mqtt_topic_prefix)
        self.stats = BridgeStats()
        self.qos = settings.mqtt_qos
        self._client: mqtt.Client | None = None
        self._running = False
        self._stopping = threading.Event()

        # _lock guards the connection flag and the outbox. It is held while
        # calling client.publish (keeping publish order), so paho callbacks
        # that paho runs under its own locks (on_publish) must never take it.
        self._lock = threading.Lock()
        self._connected = False
        self._ever_connected = False
        self._draining = False
        self._outbox: deque[_Outgoing] = deque()
        self._subscriptions: list[str] = []

        # Publications handed to paho and not yet acknowledged.
        self._acks = threading.Condition()
        self._unacked = 0

        self._last_seen: dict[tuple[str, str], float] = {}
        self._last_seen_lock = threading.Lock()

    # --- lifecycle --------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def is_connected(self) -> bool:
        return self._connected

    @property
    def outbox_size(self) -> int:
        with self._lock:
            return len(self._outbox)

    def start(self) -> None:
        """Connect in the background; the server works while the broker is down."""
        settings = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            clean_session=False,  # persistent session: messages sent while we restart wait for us
            protocol=mqtt.MQTTv311,
        )
        client.enable_logger(logging.getLogger("paho.mqtt"))
        client.suppress_exceptions = True  # second net under _guarded
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)  # our outbox is the bound, not paho's queue
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        if settings.mqtt_username:
            client.username_pw_set(settings.mqtt_username, settings.mqtt_password or None)
        if settings.mqtt_tls:
            client.tls_set(ca_certs=settings.mqtt_ca_certs or None)
        client.will_set(self.topics.bridge_state(), dumps({"state": "offline"}), qos=1, retain=True)
        client.on_socket_open = self.on_socket_open
        client.on_connect = self.on_connect
        client.on_connect_fail = self.on_connect_fail
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        client.on_publish = self.on_publish
        self._client = client
        self._running = True
        log.info("MQTT bridge connecting to %s:%s as %s", settings.mqtt_broker,
                 settings.mqtt_port, settings.mqtt_client_id)
        client.connect_async(settings.mqtt_broker, settings.mqtt_port, keepalive=30)
        client.loop_start()
        if settings.mqtt_user_timeout > 0:
            threading.Thread(target=self._expire_silent_users, name="mqtt-user-timeout",
                             daemon=True).start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline`, flush the outbox (bounded by `timeout`), disconnect."""
        if not self._running or self._client is None:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self._publish(_Outgoing(self.topics.bridge_state(), dumps({"state": "offline"}).encode(),
                                qos=1, retain=True))
        # Waiting only helps while the broker is there to take the messages.
        flushed = self._wait_until(
            lambda: not self._connected or (not self._outbox and self._unacked <= 0), deadline)
        if not flushed or self._outbox:
            log.warning("MQTT stop: %d outbox and %d unacknowledged messages not flushed",
                        len(self._outbox), self._unacked)
        self._client.disconnect()
        self._client.loop_stop()
        self._running = False
        self._connected = False
        log.info("MQTT bridge stopped")

    def _wait_until(self, done, deadline: float) -> bool:
        with self._acks:
            while not done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._acks.wait(min(remaining, 0.5))  # re-check: the outbox has no condition of its own
            return True

    # --- paho callbacks (network thread) -------------------------------------

    @_guarded
    def on_socket_open(self, client, userdata, sock):
        # paho leaves Nagle on: a PUBLISH queued behind our PUBACK then waits
        # for the broker's delayed ACK (up to 40 ms).
        set_tcp_nodelay(sock)

    @_guarded
    def on_connect(self, client, userdata, connect_flags, reason_code, properties):
        if reason_code.is_failure:
            text = f"broker refused the connection: {reason_code}"
            self.stats.error(text)
            log.error("MQTT %s (check MQTT_USERNAME/MQTT_PASSWORD and the broker's ACL)", text)
            return
        first_time = not self._ever_connected
        self._ever_connected = True
        self.stats.connected(first_time)
        self._subscriptions = self.topics.subscriptions()
        # Subscribing on every connect renews the subscriptions if the session was lost.
        client.subscribe([(topic, self.qos) for topic in self._subscriptions])
        with self._lock:
            self._connected = True
            self._draining = bool(self._outbox)
            self._publish_now(_Outgoing(self.topics.bridge_state(),
                                        dumps({"state": "online"}).encode(), qos=1, retain=True))
        log.info("MQTT connected to %s:%s (session present: %s, outbox: %d)",
                 self.settings.mqtt_broker, self.settings.mqtt_port,
                 connect_flags.session_present, len(self._outbox))
        if self._draining:
            threading.Thread(target=self._drain_outbox, args=(not first_time,), name="mqtt-outbox-drain",
                             daemon=True).start()
        elif not first_time:
            self._announce_back_online()

    @_guarded
    def on_connect_fail(self, client, userdata):
        text = f"cannot reach broker {self.settings.mqtt_broker}:{self.settings.mqtt_port}"
        if self.stats.last_error != text:
            log.warning("MQTT %s; retrying with backoff", text)
        self.stats.error(text)

    @_guarded
    def on_disconnect(self, client, userdata, disconnect_flags, reason_code, properties):
        with self._lock:
            was_connected, self._connected = self._connected, False
        if self._stopping.is_set() or not was_connected:
            return  # a refused or failed attempt already recorded why
        text = f"connection lost: {reason_code}"
        self.stats.error(text)
        log.warning("MQTT %s; messages wait in the outbox until it returns", text)
        self._announce_all("bridge_offline", "MQTT bridge lost the broker; device messages wait")

    @_guarded
    def on_publish(self, client, userdata, mid, reason_code, properties):
        # Runs under paho's message lock: touch only the stats and the ack condition.
        self.stats.add("messages_sent")
        with self._acks:
            self._unacked -= 1
            self._acks.notify_all()

    @_guarded
    def on_message(self, client, userdata, message):
        self.stats.received()
        self._handle_inbound(message.topic, message.payload)

    # --- inbound ---------------------------------------------------------------

    def _handle_inbound(self, topic: str, payload: bytes) -> None:
        obj: dict | None = None
        try:
            parsed = self.topics.parse(topic)
            if parsed is None:
                raise ValidationError("bad_field", f"not an inbound topic of a valid room: {topic}")
            room, kind = parsed
            obj = parse_json_object(payload)
            if kind == MESSAGES_IN:
                self._on_chat_message(room, obj)
            elif kind == USERS_JOIN:
                self._on_device_join(room, obj)
            elif kind == USERS_LEAVE:
                self._on_device_leave(room, obj)
        except ValidationError as exc:
            if exc.client_id is None:
                exc.client_id = client_id_of(obj if obj is not None else _object_or_empty(payload))
            self._reject(topic, payload, exc)

    def _on_chat_message(self, room: str, obj: dict) -> None:
        incoming = parse_device_message(obj, self.settings.max_message_chars, self.reserved_names)
        client_id = incoming.client_id
        dedup_key = (client_id, incoming.message_id)
        if incoming.message_id is not None and self.dedup.contains(dedup_key):
            self.stats.add("messages_duplicate")
            log.info("MQTT duplicate %s from %s dropped", incoming.message_id, client_id)
            return
        if not self.rate_limiter.allow(("mqtt", client_id)):
            raise ValidationError("rate_limited", "too many messages; slow down", client_id)
        if incoming.message_id is not None:
            self.dedup.remember(dedup_key)
        key = ("mqtt", client_id)
        current = self.rooms.member(room, key)
        name = incoming.username or (current.username if current else
                                     device_name(client_id, None, self.reserved_names))
        user = self._join(room, client_id, name)  # joins implicitly, or renames
        self._seen(room, client_id)
        self.rooms.post(room, user.username, incoming.message, "mqtt", sender=key,
                        client_id=client_id, data=incoming.data,
                        client_message_id=incoming.message_id)

    def _on_device_join(self, room: str, obj: dict) -> None:
        client_id, name = parse_device_join(obj, self.reserved_names)
        self._join(room, client_id, name)
        self._seen(room, client_id)

    def _on_device_leave(self, room: str, obj: dict) -> None:
        client_id = parse_device_leave(obj)
        self.rooms.leave(room, ("mqtt", client_id))
        with self._last_seen_lock:
            self._last_seen.pop((room, client_id), None)

    def _join(self, room: str, client_id: str, name: str):
        try:
            user, _ = self.rooms.join(room, ("mqtt", client_id), name, "mqtt", client_id)
            return user
        except ValidationError as exc:
            exc.client_id = client_id
            raise

    def _reject(self, topic: str, payload: bytes, exc: ValidationError) -> None:
        self.stats.rejected(exc.code)
        log.warning("MQTT rejected %s on %s from %s: %s (payload %r)", exc.code, topic,
                    exc.client_id, exc.message, payload[:LOG_PAYLOAD_CHARS])
        error = {"type": "error", "code": exc.code, "error": exc.message, "topic": topic,
                 "client_id": exc.client_id, "timestamp": utc_timestamp()}
        self._publish(_Outgoing(self.topics.errors(), dumps(error).encode(), self.qos))

    # --- silent devices ----------------------------------------------------------

    def _seen(self, room: str, client_id: str) -> None:
        with self._last_seen_lock:
            self._last_seen[(room, client_id)] = time.monotonic()

    def _expire_silent_users(self) -> None:
        timeout = self.settings.mqtt_user_timeout
        interval = min(max(timeout / 4, 1.0), 30.0)
        while not self._stopping.wait(interval):
            self.expire_silent_users(time.monotonic() - timeout)

    def expire_silent_users(self, silent_since: float) -> int:
        """Mark MQTT users with no traffic since `silent_since` (monotonic) as left."""
        with self._last_seen_lock:
            silent = [key for key, seen in self._last_seen.items() if seen < silent_since]
            for key in silent:
                del self._last_seen[key]
        for room, client_id in silent:
            if self.rooms.leave(room, ("mqtt", client_id)) is not None:
                log.info("MQTT user %s in %s timed out", client_id, room)
        return len(silent)

    # --- outbound --------------------------------------------------------------

    def on_room_event(self, event) -> None:
        """Room listener: republish chat messages and system events."""
        if isinstance(event, Message):
            topic = self.topics.messages_out(event.room)
        elif isinstance(event, SystemEvent):
            topic = self.topics.system(event.room)
        else:
            return
        self._publish(_Outgoing(topic, event.to_json().encode("utf-8"), self.qos))

    def _publish(self, item: _Outgoing) -> None:
        problem = topic_name_problem(item.topic)
        if problem is not None:
            # Poison: the broker would drop our connection for it, and paho would
            # send it again after every reconnect. Drop it here, once, counted.
            self.stats.add("messages_dropped")
            log.warning("MQTT publication dropped: %s (topic %r)", problem, item.topic[:200])
            return
        with self._lock:
            # Behind a non-empty outbox, new messages queue up too: order is kept.
            if self._connected and not self._draining:
                self._publish_now(item)
            else:
                self._keep(item)

    def _keep(self, item: _Outgoing) -> None:
        if len(self._outbox) >= self.settings.mqtt_outbox_size:
            self._outbox.popleft()
            self.stats.add("messages_dropped")
        self._outbox.append(item)

    def _publish_now(self, item: _Outgoing) -> None:
        # Caller holds _lock.
        with self._acks:
            self._unacked += 1
        info = self._client.publish(item.topic, item.payload, item.qos, item.retain)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and item.qos > 0:
            return  # paho holds QoS>0 messages and sends them on reconnect
        with self._acks:
            self._unacked -= 1
        self._outbox.appendleft(item)
        log.warning("MQTT publish on %s failed (%s); kept in the outbox", item.topic, info.rc)

    def _drain_outbox(self, announce: bool) -> None:
        """After a reconnect: let paho re-send what was in flight, then send the outbox.

        `bridge_online` is announced after the backlog, so it neither jumps the
        queue nor pushes the oldest kept message out of a full outbox.
        """
        self._wait_until(lambda: self._unacked <= 0, time.monotonic() + RESEND_WAIT_SECONDS)
        sent = 0
        while True:
            with self._lock:
                if not self._connected:
                    return  # lost again: the next on_connect starts a new drain
                if not self._outbox:
                    self._draining = False
                    break
                self._publish_now(self._outbox.popleft())
                sent += 1
        with self._acks:
            self._acks.notify_all()
        log.info("MQTT outbox drained: %d messages published", sent)
        if announce:
            self._announce_back_online()

    def _announce_back_online(self) -> None:
        self._announce_all("bridge_online", "MQTT bridge is back online")

    def _announce_all(self, event: str, text: str) -> None:
        for room in self.rooms.active_rooms():
            self.rooms.announce(room, event, text)

    # --- status -------------------------------------------------------------------

    def status(self) -> dict:
        settings = self.settings
        mqtt_users = [
            {"client_id": user.client_id, "username": user.username, "join_time": user.join_time,
             "message_count": user.message_count, "room": user.room}
            for _, user in self.rooms.members(source="mqtt")
        ]
        connected = self._connected
        return {
            "is_connected": connected,
            "is_running": self._running,
            "broker_info": {"host": settings.mqtt_broker, "port": settings.mqtt_port,
                            "tls": settings.mqtt_tls, "client_id": settings.mqtt_client_id},
            "mqtt_users_count": len(mqtt_users),
            **self.stats.snapshot(),
            "outbox_size": self.outbox_size,
            "active_topics": list(self._subscriptions) if connected else [],
            "mqtt_users": mqtt_users,
        }
