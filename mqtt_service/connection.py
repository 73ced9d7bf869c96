"""The paho client: how it is built, connected and stopped, its connection callbacks, and
the subscriptions it renews on every connect.

The session is persistent (messages sent while we restart wait for us) and paho
reconnects by itself with backoff; the server works while the broker is down. The
bridge's retained state topic says `online` ahead of any backlog on each connect, and
the will says `offline`. A refused or unreachable broker, or one that closes each
connection as it opens, is logged (and told to the rooms) once per state change, not
once per retry. Publications go through the outbox (outbox.py), which this
tells when the connection comes and goes; connections the broker keeps closing are
explained by connection_watch.py. Inbound publications go to `on_message` (dispatch.py).
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Any, Callable

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from chatroom.config import Settings
from chatroom.core.model import dumps
from mqtt_service.broker_profile import PROFILES, BridgePlan, connack_gaps
from mqtt_service.callbacks import guarded, set_tcp_nodelay
from mqtt_service.connect_errors import RecordingClient, reason_text
from mqtt_service.connection_watch import ConnectionWatch
from mqtt_service.outbox import Outbox, Outgoing
from mqtt_service.stats import BridgeStats
from mqtt_service.subscriptions import SubscriptionMemory, stale_filters
from mqtt_service.topics import Topics

log = logging.getLogger("mqtt_service.bridge")

# 0 = no limit. paho's default window of 20 caps a QoS 1 relay well below one core,
# and any window makes paho scan its whole queue on every PUBACK. The broker takes
# what we send; our own outbox bounds memory while it is unreachable.
MAX_INFLIGHT = 0
KEEPALIVE = 30  # seconds
RECONNECT_DELAY = (1, 30)  # paho's backoff between two attempts, seconds
# MQTT 5: the session outlives the connection for ever, as 3.1.1's clean_session=False does
# (the broker may cap it: mosquitto's persistent_client_expiration, EMQX's session expiry).
SESSION_EXPIRY = 0xFFFFFFFF
RETAIN_NOT_SUPPORTED = 0x9A  # MQTT 5 CONNACK: the broker takes no retained messages (nor a retained will)
UNSUPPORTED_PROTOCOL = (0x01, 0x84)  # 3.1.1's and MQTT 5's "unacceptable protocol version"

Announce = Callable[[str, str], None]  # (bridge event, text): a system event for the rooms
OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]


class Connection:
    def __init__(self, settings: Settings, topics: Topics, stats: BridgeStats, watch: ConnectionWatch,
                 outbox: Outbox, *, state_topic: str, qos: int, extra_filters: list[str],
                 on_message: OnMessage, announce: Announce, after_online: Callable[[], None],
                 stopping: threading.Event, plan: BridgePlan | None = None):
        """`extra_filters`: subscribed besides the inbound topics (Home Assistant's status);
        `announce`: tells the rooms the bridge is online or lost the broker; `after_online`:
        runs once the backlog is sent after a connect; `stopping`: set when the bridge stops;
        `plan`: the protocol and QoS this broker gets (broker_profile.py)."""
        self.plan = plan or BridgePlan(PROFILES["auto"], settings.mqtt_protocol, qos)
        self.settings = settings
        self.topics = topics
        self.stats = stats
        self.watch = watch
        self.outbox = outbox
        self.state_topic = state_topic
        self.qos = qos
        self.extra_filters = extra_filters
        self.on_message = on_message
        self.announce = announce
        self.after_online = after_online
        self.stopping = stopping
        self.client: mqtt.Client | None = None
        self.subscriptions: list[str] = []  # of the current (or last) connection
        self._ever_connected = False
        self._told_gaps = False
        self._connack_refused = False
        self._offline_told = False  # the rooms heard "lost the broker" and not yet "back online"
        self.subscription_memory = SubscriptionMemory(os.path.dirname(os.path.abspath(settings.database_path)))

    # --- lifecycle --------------------------------------------------------------------

    def build(self, manual_ack: bool) -> mqtt.Client:
        """The configured client, not yet connected. `manual_ack`: PUBACK once the batch
        holding the message is committed (group_commit.py)."""
        settings = self.settings
        if self.mqtt5:  # clean_start=False and a session expiry, given at connect
            client = RecordingClient(CallbackAPIVersion.VERSION2, client_id=settings.mqtt_client_id,
                                     protocol=mqtt.MQTTv5, manual_ack=manual_ack)
        else:
            client = RecordingClient(
                CallbackAPIVersion.VERSION2,
                client_id=settings.mqtt_client_id,
                clean_session=False,  # persistent session: messages sent while we restart wait for us
                protocol=mqtt.MQTTv311,
                manual_ack=manual_ack,
            )
        client.enable_logger(logging.getLogger("paho.mqtt"))
        client.suppress_exceptions = True  # second net under guarded
        client.max_inflight_messages_set(MAX_INFLIGHT)
        client.max_queued_messages_set(0)  # our outbox is the bound, not paho's queue
        client.reconnect_delay_set(min_delay=RECONNECT_DELAY[0], max_delay=RECONNECT_DELAY[1])
        if settings.mqtt_username:
            client.username_pw_set(settings.mqtt_username, settings.mqtt_password or None)
        if settings.mqtt_tls:
            # MQTT_CERTFILE/MQTT_KEYFILE: mutual TLS, the broker checks who we are.
            client.tls_set(ca_certs=settings.mqtt_ca_certs or None, certfile=settings.mqtt_certfile or None,
                           keyfile=settings.mqtt_keyfile or None)
        client.will_set(self.state_topic, dumps({"state": "offline"}), qos=1, retain=True)
        client.on_socket_open = self.on_socket_open
        client.on_connect = self.on_connect
        client.on_connect_fail = self.on_connect_fail
        client.on_disconnect = self.on_disconnect
        client.on_message = self.on_message
        client.on_publish = self.on_publish
        client.on_subscribe = self.on_subscribe
        self.client = client
        return client

    @property
    def mqtt5(self) -> bool:
        return self.plan.protocol == "5"

    def connect(self) -> None:
        """Connect in the background (paho's thread), retrying with backoff."""
        settings = self.settings
        if self.client is None:
            raise RuntimeError("Connection.connect() before build()")
        log.info("MQTT bridge connecting to %s:%s as %s (MQTT %s)", settings.mqtt_broker,
                 settings.mqtt_port, settings.mqtt_client_id, self.plan.protocol)
        if self.mqtt5:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = SESSION_EXPIRY
            self.client.connect_async(settings.mqtt_broker, settings.mqtt_port, keepalive=KEEPALIVE,
                                      clean_start=False, properties=properties)
        else:
            self.client.connect_async(settings.mqtt_broker, settings.mqtt_port, keepalive=KEEPALIVE)
        self.client.loop_start()

    def publish_offline(self) -> None:
        """The bridge's state `offline`, in order after everything before it (a clean stop)."""
        self.outbox.publish(Outgoing(self.state_topic, dumps({"state": "offline"}).encode(), qos=1, retain=True))

    def disconnect(self) -> None:
        """DISCONNECT (the will is not sent) and stop paho's thread."""
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()

    # --- paho callbacks (network thread) ------------------------------------------------

    @guarded
    def on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # paho leaves Nagle on: a PUBLISH queued behind our PUBACK then waits
        # for the broker's delayed ACK (up to 40 ms).
        set_tcp_nodelay(sock)

    @guarded
    def on_connect(self, client: mqtt.Client, userdata: Any, connect_flags: mqtt.ConnectFlags,
                   reason_code: ReasonCode, properties: Properties | None) -> None:
        self._connack_refused = reason_code.is_failure  # the disconnect that follows says nothing new
        if reason_code.is_failure and self.mqtt5 and reason_code.value == RETAIN_NOT_SUPPORTED:
            self._without_retain(client, "the broker refused our retained will (0x9A)")
            return  # paho's next attempt goes without it
        if reason_code.is_failure:
            text = f"broker refused the connection: {reason_text(reason_code, self.mqtt5)}"
            hint = "check MQTT_USERNAME/MQTT_PASSWORD and the broker's ACL"
            if reason_code.value in UNSUPPORTED_PROTOCOL:
                text += f" (MQTT_PROTOCOL={self.plan.protocol}: set the version the broker speaks, docs/BROKERS.md)"
                hint = "or name the broker in MQTT_BROKER_KIND"
            if self.stats.last_error != text:  # one line per state change, not one per retry
                log.error("MQTT %s (%s); retrying with backoff", text, hint)
            self.stats.error(text)
            self.stats.add("connections_refused")
            return
        self._tell_gaps(properties)
        first_time = not self._ever_connected
        self._ever_connected = True
        self.stats.connected(first_time)
        # With MQTT_SHARED_GROUP the broker hands each inbound message to one instance.
        self.subscriptions = self.topics.subscriptions(self.settings.mqtt_shared_group,
                                                       self.settings.mqtt_device_topics_only)
        self.subscriptions += self.extra_filters
        self._drop_stale_subscriptions(client)
        # Subscribing on every connect renews the subscriptions if the session was lost.
        client.subscribe([(topic, self.qos) for topic in self.subscriptions])
        self.watch.opened()
        # Ahead of the backlog: subscribers learn at once that the bridge is back.
        self.outbox.publish_first(Outgoing(self.state_topic, dumps({"state": "online"}).encode(),
                                           qos=1, retain=True))
        log.info("MQTT connected to %s:%s (session present: %s, outbox: %d)",
                 self.settings.mqtt_broker, self.settings.mqtt_port,
                 connect_flags.session_present, self.outbox.size)
        online_text = "MQTT service connected" if first_time else "MQTT bridge is back online"
        self.outbox.connected(after_drain=lambda: self._online(online_text, first_time))

    def _drop_stale_subscriptions(self, client: mqtt.Client) -> None:
        """The persistent session keeps another configuration's filters: drop them first."""
        client_id = self.settings.mqtt_client_id
        previous = self.subscription_memory.previous(client_id)
        stale = stale_filters(self.topics, self.subscriptions, self.settings.mqtt_shared_group, previous)
        if stale:
            client.unsubscribe(stale)
        changed = [f for f in previous if f not in self.subscriptions]
        if changed:
            log.info("MQTT: %d subscriptions of an earlier configuration dropped (%s)", len(changed),
                     ", ".join(changed[:6]))
        self.subscription_memory.remember(client_id, self.subscriptions)

    def _tell_gaps(self, properties: Properties | None) -> None:
        """MQTT 5: what the CONNACK says the broker lacks, once."""
        told = connack_gaps(properties, self.plan.profile) if self.mqtt5 else None
        if told is None or self._told_gaps:
            return
        self._told_gaps = True
        text = f"the broker lacks: {'; '.join(told.gaps())} (its CONNACK says so)"
        log.warning("MQTT %s", text)
        self.outbox.max_qos = told.max_qos
        if not told.retained and self.client is not None:
            self._without_retain(self.client, "its CONNACK says Retain Available 0")
        if self.settings.mqtt_shared_group and not told.shared_subscriptions:
            self.stats.error("the broker has no shared subscriptions: MQTT_SHARED_GROUP cannot work there")
            log.error("MQTT the broker has no shared subscriptions: MQTT_SHARED_GROUP cannot work there "
                      "(docs/BROKERS.md)")

    def _without_retain(self, client: mqtt.Client, why: str) -> None:
        """A broker without retained messages refuses a retained will and closes the connection
        on a retained publication: the state and device topics go out unretained."""
        if not self.outbox.retain_available:
            return
        self.outbox.retain_available = False
        client.will_set(self.state_topic, dumps({"state": "offline"}), qos=1, retain=False)
        log.warning("MQTT %s: the bridge's state, will and device topics go out unretained "
                    "(late subscribers miss them)", why)

    def _online(self, text: str, first_time: bool) -> None:
        """After (re)connecting and sending the backlog: so these neither jump the queue
        nor push the oldest kept message out of a full outbox. "Back online" answers a loss
        the rooms were told of (a repeated one is not told: connection_watch.py)."""
        if first_time or self._offline_told:
            self._offline_told = False
            self.announce("bridge_online", text)
        self.after_online()

    @guarded
    def on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        text = f"cannot reach broker {self.settings.mqtt_broker}:{self.settings.mqtt_port}"
        why = getattr(client, "last_transport_error", None)
        if why:
            text = f"{text}: {why}"
        if self.stats.last_error != text:
            log.warning("MQTT %s; retrying with backoff", text)
        self.stats.error(text)

    @guarded
    def on_disconnect(self, client: mqtt.Client, userdata: Any, disconnect_flags: mqtt.DisconnectFlags,
                      reason_code: ReasonCode, properties: Properties | None) -> None:
        was_connected = self.outbox.disconnected()
        if self.stopping.is_set():
            return
        if not was_connected and self._connack_refused:
            self._connack_refused = False
            return  # on_connect told why
        if not was_connected:
            # Closed before the CONNACK: a TLS 1.3 broker refusing our certificate, or a
            # broker that does not speak our protocol version (RabbitMQ and MQTT 5).
            why = getattr(client, "last_transport_error", None) or (
                f"the broker closed the connection before accepting it ({reason_text(reason_code, self.mqtt5)})"
                + ("; does it speak MQTT 5? (MQTT_PROTOCOL, docs/BROKERS.md)" if self.mqtt5 else ""))
            self._attempt_failed(f"cannot connect to broker {self.settings.mqtt_broker}:"
                                 f"{self.settings.mqtt_port}: {why}")
            return
        why = getattr(client, "last_transport_error", None)
        text = f"connection lost: {reason_text(reason_code, self.mqtt5)}" + (f" ({why})" if why else "")
        self.stats.error(text)
        news = self.watch.lost(text)
        self.watch.closed()
        if news:  # once per state change, not once per retry of a broker that keeps closing
            log.warning("MQTT %s; messages wait in the outbox until it returns", text)
            self._offline_told = True
            self.announce("bridge_offline", "MQTT bridge lost the broker; device messages wait")

    def _attempt_failed(self, text: str) -> None:
        if self.stats.last_error != text:  # one line per state change, not one per retry
            log.error("MQTT %s; retrying with backoff", text)
        self.stats.error(text)

    @guarded
    def on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list[ReasonCode],
                     properties: Properties | None) -> None:
        refused = [reason_text(code, self.mqtt5) for code in reason_codes if code.is_failure]
        if refused:
            text = f"broker refused {len(refused)} of {len(reason_codes)} subscriptions: {', '.join(refused[:3])}"
            self.stats.error(text)
            log.error("MQTT %s (its ACL, or a filter it does not support; docs/BROKERS.md)", text)

    @guarded
    def on_publish(self, client: mqtt.Client | None, userdata: Any, mid: int, reason_code: ReasonCode | None,
                   properties: Properties | None) -> None:
        # Runs under paho's message lock: touch only the stats and the ack condition.
        self.stats.add("messages_sent")
        if reason_code is not None and reason_code.is_failure:  # MQTT 5: the broker says why it refused
            text = f"broker refused a publication: {reason_text(reason_code, self.mqtt5)}"
            if self.stats.last_error != text:  # one line per change, not one per publication
                log.warning("MQTT %s (its ACL or limits)", text)
            self.stats.error(text)
        self.outbox.acknowledged(mid)
