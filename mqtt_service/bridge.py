"""The MQTT bridge: the paho client's lifecycle and callbacks, and group commit.

Inbound (inbound.py): the shared and device topics become Submissions to the
intake; a refusal becomes one reply on `P/errors`. Outbound: every room message
and system event is published on `P/messages/out` / `P/system`, once, in seq
order, and the device topics / Home Assistant configs (devices.py) go through
the same ordered, bounded outbox (outbox.py). Connections the broker keeps
closing are explained by connection_watch.py.

Group commit: with `rooms.group_commit`, inbound messages are handled inside
`rooms.batch()` and acknowledged by hand (paho's manual ack): a flusher thread
commits the batch, publishes it, then sends the PUBACKs. Under eventlet it runs
when paho's loop yields, after a whole read burst, so one commit covers the
burst; a broker that redelivers an unacknowledged message finds it stored.
"""
from __future__ import annotations

import logging
import os
import threading
import time

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from chatroom.config import Settings
from chatroom.core.errors import Unavailable
from chatroom.core.intake import Intake
from chatroom.core.limits import Throttle
from chatroom.core.model import Message, Source, SystemEvent, dumps
from chatroom.core.room import Rooms
from chatroom.core.validation import DEFAULT_ROOM
from chatroom.ops.housekeeping import Periodic
from mqtt_service.callbacks import guarded as _guarded
from mqtt_service.callbacks import set_tcp_nodelay
from mqtt_service.connection_watch import ConnectionWatch
from mqtt_service.homeassistant.device_topics import DeviceTopics
from mqtt_service.homeassistant.discovery import Discovery
from mqtt_service.homeassistant.reannounce import Reannouncer
from mqtt_service.inbound import Inbound
from mqtt_service.outbox import Outbox, Outgoing
from mqtt_service.stats import BridgeStats
from mqtt_service.subscriptions import SubscriptionMemory, stale_filters
from mqtt_service.topics import Topics

log = logging.getLogger(__name__)

# 0 = no limit. paho's default window of 20 caps a QoS 1 relay well below one core,
# and any window makes paho scan its whole queue on every PUBACK. The broker takes
# what we send; our own outbox bounds memory while it is unreachable.
MAX_INFLIGHT = 0
STATUS_USERS_SHOWN = 500  # /mqtt/status lists at most this many MQTT users (the count is exact)
# Group commit: the paho thread commits by itself once this many messages wait for
# their PUBACK (a broker that keeps the socket busy never lets the flusher run).
MAX_BATCH = 256
DEVICE_RETENTION_CHECK = 3600.0  # seconds between two looks for devices silent DEVICE_RETENTION_DAYS


class MqttBridge:
    def __init__(self, settings: Settings, rooms: Rooms, intake: Intake, device_history: tuple = (),
                 log_budget: Throttle | None = None):
        """`device_history`: (latest readings of a client_id, every data key of a client_id[,
        the devices heard from most recently]), read from the history store, for the device topics. `log_budget`: client-error log
        lines of the whole process (shared with the web side)."""
        self.settings = settings
        self.rooms = rooms
        self.intake = intake
        self.topics = Topics(settings.mqtt_topic_prefix)
        self.stats = BridgeStats()
        self.ha_status_topic = f"{settings.ha_discovery_prefix}/status"
        # Several instances (PROTOCOL 8): each has its own state topic; they relay as one device.
        instance = settings.instance_id if settings.mqtt_shared_group else ""
        self.state_topic = self.topics.bridge_state(instance)
        latest_data, data_keys, *recent_devices = device_history or (lambda _: ({}, None), lambda _: [])
        self.devices = DeviceTopics(
            Discovery(settings.mqtt_topic_prefix, settings.ha_discovery_prefix,
                      settings.mqtt_shared_group or settings.mqtt_client_id, instance or None),
            self.publish_retained, settings.ha_discovery, latest_data, data_keys,
            max_devices=settings.max_devices, max_keys=settings.max_device_keys,
            reannouncer=Reannouncer(lambda deadline: self.outbox.wait_until(self.outbox.has_room, deadline)))
        if recent_devices:  # the device table as history left it: bounds and retention cover it
            self.devices.recall(recent_devices[0](settings.max_devices))
        self.device_retention = Periodic(
            "device-retention", DEVICE_RETENTION_CHECK,
            lambda: self.devices.expire(time.time() - settings.device_retention_days * 86400))
        self.qos = settings.mqtt_qos
        self.compact = settings.mqtt_out_format == "compact"  # the original project's 5 fields
        self.watch = ConnectionWatch(self.stats, settings.mqtt_client_id,
                                     (f"{settings.mqtt_topic_prefix}/devices/", f"{settings.ha_discovery_prefix}/"))
        self.outbox = Outbox(settings.mqtt_outbox_size, self.stats, self.watch)
        self.inbound = Inbound(self.topics, intake, self.stats,
                               lambda topic, payload: self.outbox.publish(Outgoing(topic, payload, self.qos)),
                               log_budget)
        self._client: mqtt.Client | None = None
        self._running = False
        self._stopping = threading.Event()
        self._ever_connected = False
        self._subscriptions: list[str] = []
        self.subscription_memory = SubscriptionMemory(os.path.dirname(os.path.abspath(settings.database_path)))

        # Group commit: inbound (mid, qos) handled into the open batch, to PUBACK once committed.
        self.group_commit = rooms.group_commit
        self._acks_due: list[tuple[int, int]] = []
        self._acks_due_lock = threading.Lock()
        self._flush_wanted = threading.Event()

    # --- lifecycle --------------------------------------------------------------

    @property
    def is_running(self) -> bool:
        return self._running

    @property
    def is_connected(self) -> bool:
        return self.outbox.is_connected

    @property
    def outbox_size(self) -> int:
        return self.outbox.size

    def start(self) -> None:
        """Connect in the background; the server works while the broker is down."""
        settings = self.settings
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=settings.mqtt_client_id,
            clean_session=False,  # persistent session: messages sent while we restart wait for us
            protocol=mqtt.MQTTv311,
            manual_ack=self.group_commit,  # PUBACK once the batch holding the message is committed
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
        client.will_set(self.state_topic, dumps({"state": "offline"}), qos=1, retain=True)
        client.on_socket_open = self.on_socket_open
        client.on_connect = self.on_connect
        client.on_connect_fail = self.on_connect_fail
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        client.on_publish = self.on_publish
        self._client = client
        self.outbox.attach(client)
        self._running = True
        if settings.device_retention_days > 0:
            self.device_retention.start()
        if self.group_commit:
            threading.Thread(target=self._run_flusher, name="mqtt-batch-flusher", daemon=True).start()
        log.info("MQTT bridge connecting to %s:%s as %s", settings.mqtt_broker,
                 settings.mqtt_port, settings.mqtt_client_id)
        client.connect_async(settings.mqtt_broker, settings.mqtt_port, keepalive=30)
        client.loop_start()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline`, flush the outbox (bounded by `timeout`), disconnect."""
        if not self._running or self._client is None:
            return
        deadline = time.monotonic() + timeout
        self._stopping.set()
        self.device_retention.stop()
        self.outbox.publish(Outgoing(self.state_topic, dumps({"state": "offline"}).encode(),
                                     qos=1, retain=True))
        # Waiting only helps while the broker is there to take the messages.
        flushed = self.outbox.wait_until(self.outbox.flushed, deadline)
        if not flushed or self.outbox.size:
            log.warning("MQTT stop: %d outbox and %d unacknowledged messages not flushed",
                        self.outbox.size, self.outbox.unacked)
        # The flusher kept acknowledging while we waited; these PUBACKs go out before DISCONNECT.
        self._commit_and_ack()
        self._client.disconnect()
        self._client.loop_stop()
        # Handled in the last instant: stored, unacknowledged, so the broker sends it again
        # after a restart (recognised then when it carries a message_id).
        self.rooms.flush()
        self._running = False
        self._flush_wanted.set()  # the flusher sees _running is False and ends
        self.outbox.disconnected()
        self.outbox.stop()
        log.info("MQTT bridge stopped")

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
            if self.stats.last_error != text:  # one line per state change, not one per retry
                log.error("MQTT %s (check MQTT_USERNAME/MQTT_PASSWORD and the broker's ACL); "
                          "retrying with backoff", text)
            self.stats.error(text)
            self.stats.add("connections_refused")
            return
        first_time = not self._ever_connected
        self._ever_connected = True
        self.stats.connected(first_time)
        # With MQTT_SHARED_GROUP the broker hands each inbound message to one instance.
        self._subscriptions = self.topics.subscriptions(self.settings.mqtt_shared_group,
                                                        self.settings.mqtt_device_topics_only)
        if self.settings.ha_discovery:
            self._subscriptions.append(self.ha_status_topic)  # Home Assistant's restarts
        self._drop_stale_subscriptions(client)
        # Subscribing on every connect renews the subscriptions if the session was lost.
        client.subscribe([(topic, self.qos) for topic in self._subscriptions])
        self.watch.opened()
        # Ahead of the backlog: subscribers learn at once that the bridge is back.
        self.outbox.publish_first(Outgoing(self.state_topic, dumps({"state": "online"}).encode(),
                                           qos=1, retain=True))
        log.info("MQTT connected to %s:%s (session present: %s, outbox: %d)",
                 self.settings.mqtt_broker, self.settings.mqtt_port,
                 connect_flags.session_present, self.outbox.size)
        online_text = "MQTT service connected" if first_time else "MQTT bridge is back online"
        self.outbox.connected(after_drain=lambda: self._announce_online(online_text))

    def _drop_stale_subscriptions(self, client) -> None:
        """The persistent session keeps another configuration's filters: drop them first."""
        client_id = self.settings.mqtt_client_id
        previous = self.subscription_memory.previous(client_id)
        stale = stale_filters(self.topics, self._subscriptions, self.settings.mqtt_shared_group, previous)
        if stale:
            client.unsubscribe(stale)
        changed = [f for f in previous if f not in self._subscriptions]
        if changed:
            log.info("MQTT: %d subscriptions of an earlier configuration dropped (%s)", len(changed),
                     ", ".join(changed[:6]))
        self.subscription_memory.remember(client_id, self._subscriptions)

    def _announce_online(self, text: str) -> None:
        """After (re)connecting and sending the backlog: so these neither jump the queue
        nor push the oldest kept message out of a full outbox."""
        self._announce_all("bridge_online", text)
        self.devices.on_connect()

    @_guarded
    def on_connect_fail(self, client, userdata):
        text = f"cannot reach broker {self.settings.mqtt_broker}:{self.settings.mqtt_port}"
        if self.stats.last_error != text:
            log.warning("MQTT %s; retrying with backoff", text)
        self.stats.error(text)

    @_guarded
    def on_disconnect(self, client, userdata, disconnect_flags, reason_code, properties):
        was_connected = self.outbox.disconnected()
        if self._stopping.is_set() or not was_connected:
            return  # a refused or failed attempt already recorded why
        text = f"connection lost: {reason_code}"
        self.stats.error(text)
        log.warning("MQTT %s; messages wait in the outbox until it returns", text)
        self.watch.closed()
        self._announce_all("bridge_offline", "MQTT bridge lost the broker; device messages wait")

    @_guarded
    def on_publish(self, client, userdata, mid, reason_code, properties):
        # Runs under paho's message lock: touch only the stats and the ack condition.
        self.stats.add("messages_sent")
        self.outbox.acknowledged(mid)

    @_guarded
    def on_message(self, client, userdata, message):
        if not self.group_commit:
            self._receive(message)  # paho sends the PUBACK when this returns
            return
        try:
            with self.rooms.batch():
                self._receive(message)
        finally:
            # Acknowledged whatever happened to it (as paho does): an unacknowledged
            # message would hold one of the broker's in-flight slots for ever.
            with self._acks_due_lock:
                self._acks_due.append((message.mid, message.qos))
                due = len(self._acks_due)
            if due >= MAX_BATCH:
                self._commit_and_ack()
            elif not self._flush_wanted.is_set():  # set() takes a lock: once per batch is enough
                self._flush_wanted.set()

    def _run_flusher(self) -> None:
        # Runs until the client is stopped, not only until stop() begins: messages that
        # arrive while the outbox drains are acknowledged too.
        while True:
            self._flush_wanted.wait()
            self._flush_wanted.clear()
            if not self._running:
                return
            try:
                self._commit_and_ack()
            except Exception:
                self.stats.add("handler_errors")
                log.exception("MQTT batch flush failed")

    def _commit_and_ack(self) -> None:
        """Commit and publish the open batch, then acknowledge the messages in it."""
        with self._acks_due_lock:  # taken before the commit: each of these is in the batch
            due, self._acks_due = self._acks_due, []
        try:
            self.rooms.flush()
        finally:
            for mid, qos in due:
                self._client.ack(mid, qos)

    def _receive(self, message) -> None:
        self.stats.received()
        if message.topic == self.ha_status_topic:
            self.devices.on_ha_status(message.payload)
            return
        delay = 0.2
        while True:
            try:
                self.inbound.handle(message.topic, message.payload)
                return
            except Unavailable as exc:
                if self._stopping.is_set():
                    raise
                # Redis or PostgreSQL is away. Returning would acknowledge the message and
                # lose it: hold it (the broker keeps the rest for our session) and retry.
                self.stats.add("handler_errors")
                log.warning("MQTT inbound held: %s (%s); retrying in %.1f s", exc.message, exc.detail, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, 5.0)

    def publish_retained(self, topic: str, payload: bytes, retain: bool = True) -> None:
        """For the device topics: retained, in order with everything else, kept while the broker is down."""
        self.outbox.publish(Outgoing(topic, payload, self.qos, retain))

    # --- outbound --------------------------------------------------------------

    def on_room_event(self, event) -> None:
        """Room listener: republish chat messages and system events."""
        if isinstance(event, Message):
            topic = self.topics.messages_out(event.room)
            text = event.to_compact_json() if self.compact else event.to_json()
        elif isinstance(event, SystemEvent):
            topic, text = self.topics.system(event.room), event.to_json()
        else:
            return
        self.outbox.publish(Outgoing(topic, text.encode("utf-8"), self.qos))

    def _announce_all(self, event: str, text: str) -> None:
        """A bridge event for the lobby and every room with members (not every room ever seen)."""
        for room in dict.fromkeys([DEFAULT_ROOM, *self.rooms.rooms_with_members()]):
            self.rooms.announce(room, event, text)

    # --- status -------------------------------------------------------------------

    def status(self) -> dict:
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
            "is_running": self._running,
            "broker_info": {"host": settings.mqtt_broker, "port": settings.mqtt_port,
                            "tls": settings.mqtt_tls, "client_id": settings.mqtt_client_id},
            "mqtt_users_count": len(members) if members is not None else None,
            **self.stats.snapshot(),
            "outbox_size": self.outbox_size,
            # What devices leave retained on the broker (PROTOCOL 9): tracked now, cleared so
            # far (evicted, expired, forgotten), messages of new devices beyond the minute's budget.
            "devices": {"tracked": self.devices.tracked, "cleared": self.devices.cleared,
                        "deferred": self.devices.deferred},
            "active_topics": list(self._subscriptions) if connected else [],
            "mqtt_users": mqtt_users,
            "mqtt_users_truncated": members is not None and len(members) > STATUS_USERS_SHOWN,
        }
