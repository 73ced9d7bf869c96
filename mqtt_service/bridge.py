"""The MQTT bridge: builds the MQTT side's parts, wires them, starts and stops them.

Each part has one job (docs/ARCHITECTURE.md):
- connection.py: the paho client's lifecycle, connection callbacks, subscriptions;
- dispatch.py: paho's on_message, each publication to inbound.py (a Submission to the
  intake; a refusal one throttled reply on `P/errors`) or to the device topics;
- group_commit.py: with `rooms.group_commit`, inbound bursts committed together and
  acknowledged by hand after the commit (PUBACK after commit), on a thread of its own;
- outbound.py, outbox.py: room events out on `P/messages/out` / `P/system`, device
  topics and replies, in order, bounded; connection_watch.py: connections the broker
  keeps closing (a take-over of our client id, refused publications);
- homeassistant/: per-device retained topics and discovery; status.py: `/mqtt/status`;
- device_commands.py, device_requests.py, device_extras.py: devices told and asked
  (PROTOCOL 11): commands and their acks, Home Assistant's controls, receipts, requests.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

import paho.mqtt.client as mqtt

from chatroom.config import Settings
from chatroom.core.command_desk import CommandDesk
from chatroom.core.commands import DeclaredCommands
from chatroom.core.errors import Unavailable, ValidationError
from chatroom.core.intake import Intake
from chatroom.core.limits import Throttle
from chatroom.core.room import Rooms
from chatroom.core.validation import DEFAULT_ROOM
from chatroom.ops.housekeeping import Periodic
from mqtt_service.broker_profile import plan_for, topic_problem_for
from mqtt_service.connection import Connection
from mqtt_service.connection_watch import ConnectionWatch
from mqtt_service.device_commands import DeviceCommands
from mqtt_service.device_extras import DeviceExtras
from mqtt_service.device_requests import DeviceRequests
from mqtt_service.dispatch import Dispatcher
from mqtt_service.group_commit import GroupCommit
from mqtt_service.history_replay import CursorStore, HistoryReplay, recall
from mqtt_service.homeassistant.command_entities import CommandEntities
from mqtt_service.homeassistant.device_topics import DeviceTopics
from mqtt_service.homeassistant.discovery import Discovery
from mqtt_service.homeassistant.reannounce import Reannouncer
from mqtt_service.inbound import Inbound
from mqtt_service.outbound import Outbound
from mqtt_service.outbox import Outbox
from mqtt_service.stats import BridgeStats
from mqtt_service.status import StatusReport
from mqtt_service.topics import Topics

log = logging.getLogger(__name__)

# Group commit: the paho thread commits by itself once this many messages wait for
# their PUBACK (a broker that keeps the socket busy never lets the flusher run).
MAX_BATCH = 256
DEVICE_RETENTION_CHECK = 3600.0  # seconds between two looks for devices silent DEVICE_RETENTION_DAYS


class MqttBridge:
    def __init__(self, settings: Settings, rooms: Rooms, intake: Intake, device_history: tuple = (),
                 log_budget: Throttle | None = None, publish_cursor: CursorStore | None = None,
                 desk: CommandDesk | None = None):
        """`device_history`: (latest readings of a client_id, every data key of a client_id[,
        the devices heard from most recently]), read from the history store, for the device
        topics. `log_budget`: client-error log lines of the whole process (shared with the web side).
        `publish_cursor`: the durable cursor beside the history (PROTOCOL 12): chat messages the
        broker never acknowledged are published from history after a restart or an overflow.
        `desk`: declared commands and their answers (PROTOCOL 11), shared with the web side."""
        self.settings = settings
        self.rooms = rooms
        self.intake = intake
        self.topics = Topics(settings.mqtt_topic_prefix)
        self.stats = BridgeStats()
        # What this broker lacks decides the protocol and QoS (docs/BROKERS.md); said once, here.
        self.plan = plan_for(settings.mqtt_broker_kind, settings.mqtt_protocol, settings.mqtt_qos,
                             settings.mqtt_shared_group)
        self.qos = self.plan.qos
        # Several instances (PROTOCOL 8): each has its own state topic; they relay as one device.
        instance = settings.instance_id if settings.mqtt_shared_group else ""
        self.state_topic = self.topics.bridge_state(instance)
        self.ha_status_topic = f"{settings.ha_discovery_prefix}/status"
        self.watch = ConnectionWatch(self.stats, settings.mqtt_client_id,
                                     (self.topics.devices_root, f"{settings.ha_discovery_prefix}/"))
        self.outbox = Outbox(settings.mqtt_outbox_size, self.stats, self.watch)
        self.outbox.broker_topic_problem = topic_problem_for(self.plan.profile)
        self.outbound = Outbound(self.topics, self.outbox, self.qos, compact=settings.mqtt_out_format == "compact")
        self.replay: HistoryReplay | None = None
        if publish_cursor is not None:
            self.outbox.published = recall(publish_cursor, settings.mqtt_topic_prefix)
            self.replay = HistoryReplay(publish_cursor, settings.mqtt_topic_prefix, self.outbox.published,
                                        self.outbox, self.outbound.message_outgoing)
        self.devices = _device_topics(settings, instance, self.outbound.publish_retained, self.outbox, device_history)
        self.device_retention = Periodic(
            "device-retention", DEVICE_RETENTION_CHECK,
            lambda: self.devices.expire(time.time() - settings.device_retention_days * 86400))
        self.inbound = Inbound(self.topics, intake, self.stats, self.outbound.reply, log_budget)
        self.desk = desk or CommandDesk(rooms, DeclaredCommands(settings.max_devices))
        self.extras = _device_extras(settings, self.topics, self.outbox, self.desk, self.devices.discovery,
                                     self.stats, rooms, intake, self._reject_device)
        self.inbound.extras = self.extras
        self.group_commit = GroupCommit(rooms, self.stats, MAX_BATCH)
        stopping = threading.Event()
        self.dispatcher = Dispatcher(self.stats, self.inbound.handle, self.ha_status_topic,
                                     self._on_ha_status, self.group_commit, stopping, device_in=self.extras.route,
                                     devices_root=self.topics.devices_root)
        self.connection = Connection(
            settings, self.topics, self.stats, self.watch, self.outbox, state_topic=self.state_topic,
            qos=self.qos, extra_filters=([self.ha_status_topic] if settings.ha_discovery else [])
            + self.topics.device_subscriptions(settings.ha_discovery, settings.mqtt_shared_group),
            on_message=self.dispatcher.on_message, announce=self._announce_all,
            after_online=self.devices.on_connect, stopping=stopping, plan=self.plan)
        self.status_report = StatusReport(settings, rooms, self.stats, self.outbox, self.devices,
                                          protocol=self.plan.protocol,
                                          history=self.replay.numbers if self.replay is not None else None)
        self._running = False

    # --- lifecycle --------------------------------------------------------------------

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
        client = self.connection.build(manual_ack=self.group_commit.enabled)
        self._client = client
        self.outbox.attach(client)
        self._running = True
        if self.settings.device_retention_days > 0:
            self.device_retention.start()
        self.group_commit.start()
        if self.replay is not None:
            self.replay.start()
        self.connection.connect()

    def stop(self, timeout: float = 5.0) -> None:
        """Publish `offline`, flush the outbox (bounded by `timeout`), disconnect."""
        if not self._running or self._client is None:
            if self.replay is not None:
                self.replay.stop()  # never started: closes the cursor's database
            return
        deadline = time.monotonic() + timeout
        self.connection.stopping.set()
        self.group_commit.stop_retrying()  # a batch the store holds back is given up, unacknowledged
        self.device_retention.stop()
        self.connection.publish_offline()
        # Waiting only helps while the broker is there to take the messages.
        flushed = self.outbox.wait_until(self.outbox.flushed, deadline)
        if not flushed or self.outbox.size:
            log.warning("MQTT stop: %d outbox and %d unacknowledged messages not flushed",
                        self.outbox.size, self.outbox.unacked)
        # The flusher kept acknowledging while we waited; these PUBACKs go out before DISCONNECT.
        try:
            self.group_commit.commit_and_ack()
        except Unavailable as exc:
            log.warning("MQTT stop: the last batch not stored (%s); the broker keeps it", exc.detail)
        self.connection.disconnect()
        # Handled in the last instant: stored, unacknowledged, so the broker sends it again
        # after a restart (recognised then when it carries a message_id).
        try:
            self.rooms.flush()
        except Unavailable as exc:
            log.warning("MQTT stop: messages of the last instant not stored (%s)", exc.detail)
        self._running = False
        self.group_commit.close()
        self.outbox.disconnected()
        self.outbox.stop()
        if self.replay is not None:  # after the last acknowledgement: the cursor says where we are
            self.replay.stop()
        log.info("MQTT bridge stopped")

    # --- the room's side ----------------------------------------------------------------

    def on_room_event(self, event: object) -> None:
        """Room listener: republish chat messages and system events."""
        self.outbound.on_room_event(event)

    def _announce_all(self, event: str, text: str) -> None:
        """A bridge event for the lobby and every room with members (not every room ever seen)."""
        for room in dict.fromkeys([DEFAULT_ROOM, *self.rooms.rooms_with_members()]):
            self.rooms.announce(room, event, text)

    def _reject_device(self, topic: str, exc: ValidationError) -> None:
        """A bad publication on a device's own subtree: one throttled reply on P/errors,
        answered for the device the topic names (its own topic: a broker ACL proves it)."""
        found = self.topics.parse_device(topic)
        if exc.client_id is None and found is not None and found[1] != "set":
            exc.client_id = Inbound._plain_id(found[0])
        self.inbound.reject(topic, exc, ("device", found[0] if found else topic[:200]))

    def _on_ha_status(self, payload: bytes) -> None:
        self.devices.on_ha_status(payload)
        self.extras.commands.on_ha_status(payload)

    def forget(self, client_id: str) -> list[str] | None:
        """A device gone for good: its retained topics cleared, its declaration forgotten."""
        self.desk.declared.forget(client_id)
        return self.devices.forget(client_id)

    def status(self) -> dict:
        """The `/mqtt/status` snapshot."""
        return self.status_report.snapshot(self._running, self.connection.subscriptions)

    # --- seams for bench/inbound_cpu.py and the tests (a stand-in client, no network) -----

    @property
    def _client(self) -> Any:
        return self.connection.client

    @_client.setter
    def _client(self, client: Any) -> None:
        self.connection.client = client
        self.group_commit.attach(client)

    def on_message(self, client: mqtt.Client | None, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self.dispatcher.on_message(client, userdata, message)

    def on_publish(self, client: mqtt.Client | None, userdata: Any, mid: int, reason_code: Any,
                   properties: Any) -> None:
        self.connection.on_publish(client, userdata, mid, reason_code, properties)

    def _run_flusher(self) -> None:
        self.group_commit.run()


def _device_extras(settings: Settings, topics: Topics, outbox: Outbox, desk: CommandDesk, discovery: Discovery,
                   stats: BridgeStats, rooms: Rooms, intake: Intake, reject) -> DeviceExtras:
    """Commands, Home Assistant's controls, receipts and requests (PROTOCOL 11)."""
    entities = CommandEntities(discovery, topics) if settings.ha_discovery else None
    commands = DeviceCommands(topics, outbox, settings.mqtt_qos, desk, desk.declared, stats, reject, entities,
                              Reannouncer(lambda deadline: outbox.wait_until(outbox.has_room, deadline)),
                              intake.admit_home_assistant_command)
    requests = DeviceRequests(topics, outbox, settings.mqtt_qos, rooms, stats, reject, intake.admit_request)
    return DeviceExtras(topics, desk.declared, commands, requests)


def _device_topics(settings: Settings, instance: str, publish: Callable[[str, bytes, bool], None],
                   outbox: Outbox, device_history: tuple) -> DeviceTopics:
    """The device topics, with the history they start from and paced re-announcements."""
    latest_data, data_keys, *recent_devices = device_history or (lambda _: ({}, None), lambda _: [])
    devices = DeviceTopics(
        Discovery(settings.mqtt_topic_prefix, settings.ha_discovery_prefix,
                  settings.mqtt_shared_group or settings.mqtt_client_id, instance or None),
        publish, settings.ha_discovery, latest_data, data_keys,
        max_devices=settings.max_devices, max_keys=settings.max_device_keys,
        reannouncer=Reannouncer(lambda deadline: outbox.wait_until(outbox.has_room, deadline)))
    if recent_devices:  # the device table as history left it: bounds and retention cover it
        devices.recall(recent_devices[0](settings.max_devices))
    return devices
