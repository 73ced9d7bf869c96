"""The MQTT bridge's parts one at a time: no broker, no server, stand-ins for paho and the rooms.

The whole (a real mosquitto, the real app) is in test_mqtt_bridge.py and test_reliability.py;
these pin down what each part does alone: group commit acknowledges only after the commit,
the dispatcher holds a message while the stores are away, the connection's callbacks
announce and subscribe, the status snapshot is bounded.
"""
from __future__ import annotations

import logging
import threading
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from paho.mqtt.client import ConnectFlags, DisconnectFlags, MQTTMessage
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from chatroom.config import Settings
from chatroom.core.errors import Unavailable
from chatroom.core.model import Message, Source, SystemEvent, User, dumps
from mqtt_service import dispatch, status
from mqtt_service.bridge import MqttBridge
from mqtt_service.callbacks import guarded
from mqtt_service.connection import Connection
from mqtt_service.connection_watch import ConnectionWatch
from mqtt_service.dispatch import Dispatcher
from mqtt_service.group_commit import GroupCommit
from mqtt_service.outbound import Outbound
from mqtt_service.outbox import Outbox
from mqtt_service.stats import BridgeStats
from mqtt_service.status import StatusReport
from mqtt_service.topics import Topics
from support import wait_for

# --- stand-ins ------------------------------------------------------------------------


class FakeRooms:
    """What group commit and the status use of Rooms; records the order of what happens."""

    def __init__(self, journal: list, group_commit: bool = True, members=()):
        self.journal = journal
        self.group_commit = group_commit
        self._members = members
        self.in_batch = False

    @contextmanager
    def batch(self):
        self.in_batch = True
        try:
            yield
        finally:
            self.in_batch = False

    def flush(self) -> None:
        self.journal.append("commit")

    def members(self, source=None):
        if isinstance(self._members, Exception):
            raise self._members
        return list(self._members)


class AckingClient:
    """Stands in for paho.Client: records acks, subscriptions, and acknowledges publications."""

    def __init__(self, journal: list | None = None):
        self.journal = journal if journal is not None else []
        self.published: list[tuple[str, bytes, int, bool]] = []
        self.subscribed: list = []
        self.unsubscribed: list = []
        self.mid = 0

    def ack(self, mid: int, qos: int) -> None:
        self.journal.append(("ack", mid))

    def publish(self, topic, payload, qos=0, retain=False):
        self.mid += 1
        self.published.append((topic, payload, qos, retain))
        return SimpleNamespace(rc=MQTTErrorCode.MQTT_ERR_SUCCESS, mid=self.mid)

    def subscribe(self, filters):
        self.subscribed.append(filters)

    def unsubscribe(self, filters):
        self.unsubscribed.append(filters)


def inbound_message(topic: str, payload: bytes, mid: int = 1, qos: int = 1) -> MQTTMessage:
    message = MQTTMessage(mid, topic.encode())
    message.payload, message.qos = payload, qos
    return message


def settings_for(tmp_path, **env) -> Settings:
    return Settings.from_env({"DATABASE_PATH": str(tmp_path / "history.db"), "MQTT_CLIENT_ID": "bridge-1", **env})


# --- group commit ---------------------------------------------------------------------


def test_group_commit_acknowledges_a_burst_only_after_the_commit_that_holds_it():
    journal: list = []
    rooms = FakeRooms(journal)
    commits = GroupCommit(rooms, BridgeStats(), max_batch=100)
    commits.attach(AckingClient(journal))
    inside = []
    for mid in (1, 2, 3):
        commits.handle(inbound_message("p/messages/in", b"{}", mid), lambda message: inside.append(rooms.in_batch))
    assert inside == [True, True, True] and journal == []  # handled in the batch; no PUBACK yet
    commits.commit_and_ack()
    assert journal == ["commit", ("ack", 1), ("ack", 2), ("ack", 3)]


def test_group_commit_commits_on_the_network_thread_past_max_batch():
    journal: list = []
    commits = GroupCommit(FakeRooms(journal), BridgeStats(), max_batch=2)
    commits.attach(AckingClient(journal))
    for mid in (1, 2, 3):
        commits.handle(inbound_message("p/messages/in", b"{}", mid), lambda message: None)
    assert journal == ["commit", ("ack", 1), ("ack", 2)]  # the third waits for the flusher


def test_group_commit_acknowledges_a_message_whose_handling_failed():
    journal: list = []
    commits = GroupCommit(FakeRooms(journal), BridgeStats(), max_batch=1)
    commits.attach(AckingClient(journal))

    def failing(message):
        raise RuntimeError("handler bug")

    with pytest.raises(RuntimeError):
        commits.handle(inbound_message("p/messages/in", b"{}", 7), failing)
    assert journal == ["commit", ("ack", 7)]  # never holds one of the broker's in-flight slots


def test_the_flusher_commits_when_asked_and_ends_when_closed():
    journal: list = []
    commits = GroupCommit(FakeRooms(journal), BridgeStats(), max_batch=100)
    commits.attach(AckingClient(journal))
    flusher = threading.Thread(target=commits.run, daemon=True)
    flusher.start()
    commits.handle(inbound_message("p/messages/in", b"{}", 5), lambda message: None)
    for _ in range(200):
        if ("ack", 5) in journal:
            break
        threading.Event().wait(0.01)
    assert journal == ["commit", ("ack", 5)]
    commits.close()
    flusher.join(timeout=5)
    assert not flusher.is_alive()


class AwayStoreRooms(FakeRooms):
    """A shared store that is away for the first `away` commits (PostgreSQL or Redis down)."""

    def __init__(self, journal: list, away: int):
        super().__init__(journal)
        self.away = away

    def flush(self) -> None:
        if self.away > 0:
            self.away -= 1
            self.journal.append("away")
            raise Unavailable("PostgreSQL", "connection refused")
        super().flush()


def test_a_commit_the_store_refuses_is_held_and_retried_before_any_puback(monkeypatch, caplog):
    """Several instances: the batch is numbered and stored at commit. A store that is away holds
    the batch's PUBACKs (the broker keeps the messages) and the commit is retried until it answers."""
    from mqtt_service import group_commit

    monkeypatch.setattr(group_commit, "FIRST_RETRY", 0.001)
    journal: list = []
    stats = BridgeStats()
    commits = GroupCommit(AwayStoreRooms(journal, away=2), stats, max_batch=100)
    commits.attach(AckingClient(journal))
    for mid in (1, 2):
        commits.handle(inbound_message("p/messages/in", b"{}", mid), lambda message: None)
    with caplog.at_level(logging.WARNING, logger="mqtt_service.bridge"):
        commits.commit_and_ack()
    assert journal == ["away", "away", "commit", ("ack", 1), ("ack", 2)]
    assert stats.snapshot()["handler_errors"] == 2
    assert sum("MQTT batch of 2 held" in r.getMessage() for r in caplog.records) == 2


def test_a_held_commit_given_up_at_stop_leaves_its_messages_unacknowledged(monkeypatch):
    """Stopping while the store is away: no PUBACK, so the broker delivers them again to our session."""
    journal: list = []
    commits = GroupCommit(AwayStoreRooms(journal, away=1), BridgeStats(), max_batch=100)
    commits.attach(AckingClient(journal))
    commits.handle(inbound_message("p/messages/in", b"{}", 9), lambda message: None)
    commits.close()
    with pytest.raises(Unavailable):
        commits.commit_and_ack()
    assert journal == ["away"]


def test_the_flusher_lets_a_burst_go_on_while_paho_is_mid_message():
    """A message waiting on Redis (a message_id's claim) yields to the hub mid-burst: the flusher,
    woken then, does not commit a batch of one; it commits when paho is between messages."""
    journal: list = []
    commits = GroupCommit(FakeRooms(journal), BridgeStats(), max_batch=100)
    commits.attach(AckingClient(journal))
    flusher = threading.Thread(target=commits.run, daemon=True)
    flusher.start()
    commits.handle(inbound_message("p/messages/in", b"{}", 1), lambda message: None)
    wait_for(lambda: journal == ["commit", ("ack", 1)], timeout=10, what="the first commit")
    woke_mid_message = threading.Event()

    def waits_on_redis(message):
        commits._flush_wanted.set()  # the flusher runs while this message waits
        wait_for(lambda: not commits._flush_wanted.is_set(), timeout=10, what="the flusher woken")
        woke_mid_message.set()

    commits.handle(inbound_message("p/messages/in", b"{}", 2), waits_on_redis)
    assert woke_mid_message.is_set()
    wait_for(lambda: ("ack", 2) in journal, timeout=10, what="the commit after the message")
    assert journal == ["commit", ("ack", 1), "commit", ("ack", 2)]  # no commit while it was mid-message
    commits.close()
    flusher.join(timeout=5)


def test_a_held_commit_gives_up_when_the_bridge_stops(monkeypatch):
    """SIGTERM while the store is away: the commit retrying in the flusher gives up at once
    (no PUBACK: the broker keeps the messages), so shutdown goes on."""
    from mqtt_service import group_commit

    monkeypatch.setattr(group_commit, "FIRST_RETRY", 30.0)  # it would sleep long: stop must wake it
    journal: list = []
    commits = GroupCommit(AwayStoreRooms(journal, away=10**6), BridgeStats(), max_batch=100)
    commits.attach(AckingClient(journal))
    commits.handle(inbound_message("p/messages/in", b"{}", 4), lambda message: None)
    outcome: list = []

    def held() -> None:
        try:
            commits.commit_and_ack()
        except Unavailable:
            outcome.append("gave up")

    worker = threading.Thread(target=held, daemon=True)
    worker.start()
    wait_for(lambda: journal == ["away"], timeout=10, what="the commit held, in its backoff")
    commits.stop_retrying()
    worker.join(timeout=10)
    assert not worker.is_alive() and outcome == ["gave up"] and ("ack", 4) not in journal


def test_without_group_commit_no_flusher_and_paho_acknowledges():
    commits = GroupCommit(FakeRooms([], group_commit=False), BridgeStats(), max_batch=100)
    before = threading.active_count()
    commits.start()
    assert not commits.enabled and threading.active_count() == before


# --- dispatch -------------------------------------------------------------------------


def make_dispatcher(handle, group_commit: GroupCommit | None = None, stopping=None):
    stats = BridgeStats()
    statuses: list[bytes] = []
    commits = group_commit or GroupCommit(FakeRooms([], group_commit=False), stats, max_batch=100)
    dispatcher = Dispatcher(stats, handle, "homeassistant/status", statuses.append, commits,
                            stopping or threading.Event())
    return dispatcher, stats, statuses


def test_home_assistant_status_goes_to_the_device_topics_not_the_intake():
    handled = []
    dispatcher, stats, statuses = make_dispatcher(lambda topic, payload: handled.append(topic))
    dispatcher.on_message(None, None, inbound_message("homeassistant/status", b"online"))
    dispatcher.on_message(None, None, inbound_message("p/messages/in", b"{}"))
    assert statuses == [b"online"] and handled == ["p/messages/in"]
    assert stats.snapshot()["messages_received"] == 2


def test_a_message_is_held_while_the_store_is_away(monkeypatch):
    monkeypatch.setattr(dispatch, "FIRST_RETRY", 0.001)
    tries = []

    def handle(topic, payload):
        tries.append(payload)
        if len(tries) < 3:
            raise Unavailable("redis", "connection refused")

    dispatcher, stats, _ = make_dispatcher(handle)
    dispatcher.on_message(None, None, inbound_message("p/messages/in", b'{"message": "x"}'))
    assert tries == [b'{"message": "x"}'] * 3  # returned only once handled: then acknowledged
    assert stats.snapshot()["handler_errors"] == 2


def test_a_held_message_is_given_up_when_the_bridge_stops(caplog):
    stopping = threading.Event()
    stopping.set()

    def handle(topic, payload):
        raise Unavailable("postgresql")

    dispatcher, stats, _ = make_dispatcher(handle, stopping=stopping)
    with caplog.at_level(logging.ERROR, logger="mqtt_service.bridge"):
        dispatcher.on_message(None, None, inbound_message("p/messages/in", b"{}"))  # the guard catches it
    assert stats.snapshot()["handler_errors"] == 1
    assert "MQTT on_message handler failed" in caplog.text


def test_with_group_commit_the_dispatcher_handles_inside_the_batch():
    journal: list = []
    rooms = FakeRooms(journal)
    commits = GroupCommit(rooms, BridgeStats(), max_batch=1)
    commits.attach(AckingClient(journal))
    seen = []
    dispatcher, _, _ = make_dispatcher(lambda topic, payload: seen.append(rooms.in_batch), group_commit=commits)
    dispatcher.on_message(None, None, inbound_message("p/messages/in", b"{}", mid=9))
    assert seen == [True] and journal == ["commit", ("ack", 9)]


def test_guarded_counts_and_logs_instead_of_raising(caplog):
    class Part:
        stats = BridgeStats()

        @guarded
        def on_thing(self, value):
            raise ValueError(value)

    part = Part()
    with caplog.at_level(logging.ERROR, logger="mqtt_service.bridge"):
        part.on_thing("boom")
    assert part.stats.snapshot()["handler_errors"] == 1 and "MQTT on_thing handler failed" in caplog.text


# --- outbound -------------------------------------------------------------------------


class RecordingOutbox:
    def __init__(self):
        self.items = []

    def publish(self, item):
        self.items.append(item)


def test_outbound_publishes_messages_and_events_on_their_topics():
    outbox = RecordingOutbox()
    topics = Topics("p")
    outbound = Outbound(topics, outbox, qos=1)
    message = Message(username="esp", content="hi", room="lab", source=Source.MQTT)
    outbound.on_room_event(message)
    outbound.on_room_event(SystemEvent("join", "esp joined", "lab", "esp"))
    outbound.on_room_event(object())  # anything else is not published
    outbound.publish_retained("p/devices/esp/state", b"{}")
    assert [(i.topic, i.qos, i.retain) for i in outbox.items] == [
        (topics.messages_out("lab"), 1, False), (topics.system("lab"), 1, False),
        ("p/devices/esp/state", 1, True)]
    assert outbox.items[0].payload == message.to_json().encode()


def test_outbound_compact_format():
    outbox = RecordingOutbox()
    message = Message(username="esp", content="hi", room="general", source=Source.MQTT)
    Outbound(Topics("p"), outbox, qos=0, compact=True).on_room_event(message)
    assert outbox.items[0].payload == message.to_compact_json().encode()


# --- status ---------------------------------------------------------------------------


def test_status_caps_the_member_list_and_survives_redis_away(tmp_path, monkeypatch):
    monkeypatch.setattr(status, "STATUS_USERS_SHOWN", 2)
    settings = settings_for(tmp_path)
    stats = BridgeStats()
    outbox = Outbox(10, stats, ConnectionWatch(stats, "bridge-1", ()))
    devices = SimpleNamespace(tracked=1, cleared=2, deferred=3)
    members = [(("general", f"d{n}"), User(f"d{n}", Source.MQTT, "general", client_id=f"d{n}")) for n in range(3)]
    report = StatusReport(settings, FakeRooms([], members=members), stats, outbox, devices)
    snapshot = report.snapshot(True, ["p/messages/in"])
    assert snapshot["mqtt_users_count"] == 3 and len(snapshot["mqtt_users"]) == 2
    assert snapshot["mqtt_users_truncated"] is True
    assert snapshot["active_topics"] == []  # not connected
    assert snapshot["devices"] == {"tracked": 1, "cleared": 2, "deferred": 3}
    assert snapshot["broker_info"]["client_id"] == "bridge-1" and snapshot["is_running"] is True
    away = StatusReport(settings, FakeRooms([], members=Unavailable("redis")), stats, outbox, devices)
    assert away.snapshot(False, [])["mqtt_users_count"] is None


# --- connection -----------------------------------------------------------------------


def make_connection(tmp_path, **env):
    settings = settings_for(tmp_path, **env)
    stats = BridgeStats()
    watch = ConnectionWatch(stats, settings.mqtt_client_id, ())
    outbox = Outbox(100, stats, watch)
    client = AckingClient()
    outbox._client = client  # attached without its pump thread: every publication is sent at once
    said: list = []
    connection = Connection(
        settings, Topics(settings.mqtt_topic_prefix), stats, watch, outbox, state_topic="chatroom/bridge/state",
        qos=1, extra_filters=["homeassistant/status"], on_message=lambda *args: None,
        announce=lambda event, text: said.append((event, text)), after_online=lambda: said.append("after"),
        stopping=threading.Event())
    return connection, client, stats, said


CONNACK_OK = ReasonCode(PacketTypes.CONNACK, "Success")


def test_on_connect_subscribes_says_online_first_and_announces(tmp_path):
    connection, client, stats, said = make_connection(tmp_path)
    connection.on_connect(client, None, ConnectFlags(session_present=False), CONNACK_OK, None)
    assert client.subscribed == [[(f, 1) for f in connection.subscriptions]]
    assert "homeassistant/status" in connection.subscriptions
    assert client.published[0] == ("chatroom/bridge/state", dumps({"state": "online"}).encode(), 1, True)
    assert said == [("bridge_online", "MQTT service connected"), "after"]
    connection.on_disconnect(client, None, DisconnectFlags(False), ReasonCode(PacketTypes.DISCONNECT), None)
    assert said[-1] == ("bridge_offline", "MQTT bridge lost the broker; device messages wait")
    connection.on_connect(client, None, ConnectFlags(session_present=True), CONNACK_OK, None)
    assert said[-2:] == [("bridge_online", "MQTT bridge is back online"), "after"]
    assert stats.snapshot()["reconnect_count"] == 1 and stats.last_error is None


def test_a_refused_connection_is_counted_and_logged_once(tmp_path, caplog):
    connection, client, stats, said = make_connection(tmp_path)
    refused = ReasonCode(PacketTypes.CONNACK, "Not authorized")
    with caplog.at_level(logging.ERROR, logger="mqtt_service.bridge"):
        for _ in range(3):
            connection.on_connect(client, None, ConnectFlags(session_present=False), refused, None)
    assert stats.snapshot()["connections_refused"] == 3 and "refused" in stats.last_error
    assert len([r for r in caplog.records if "broker refused the connection" in r.getMessage()]) == 1
    assert client.subscribed == [] and said == []


def test_losing_the_connection_while_stopping_announces_nothing(tmp_path):
    connection, client, stats, said = make_connection(tmp_path)
    connection.on_connect(client, None, ConnectFlags(session_present=False), CONNACK_OK, None)
    connection.stopping.set()
    connection.on_disconnect(client, None, DisconnectFlags(False), ReasonCode(PacketTypes.DISCONNECT), None)
    assert ("bridge_offline", "MQTT bridge lost the broker; device messages wait") not in said
    assert not connection.outbox.is_connected


def test_a_failing_connect_callback_does_not_escape(tmp_path):
    connection, client, stats, _ = make_connection(tmp_path)

    def broken(filters):
        raise OSError("socket gone")

    client.subscribe = broken
    connection.on_connect(client, None, ConnectFlags(session_present=False), CONNACK_OK, None)
    assert stats.snapshot()["handler_errors"] == 1


def test_the_stale_filters_of_another_mode_are_dropped_on_connect(tmp_path):
    connection, client, _, _ = make_connection(tmp_path)
    connection.on_connect(client, None, ConnectFlags(session_present=False), CONNACK_OK, None)
    moved, client2, _, _ = make_connection(tmp_path, MQTT_DEVICE_TOPICS_ONLY="true")
    moved.on_connect(client2, None, ConnectFlags(session_present=True), CONNACK_OK, None)
    assert "chatroom/messages/in" in client2.unsubscribed[0]


# --- the facade -----------------------------------------------------------------------


def test_the_facade_builds_without_a_broker(tmp_path):
    from chatroom.core.intake import Intake
    from chatroom.core.limits import DedupWindow, RateLimiter
    from chatroom.core.names import NameRules

    rooms = FakeRooms([], group_commit=False)
    intake = Intake(rooms, NameRules(), RateLimiter(0, 1), DedupWindow(), 2000)  # type: ignore[arg-type]
    bridge = MqttBridge(settings_for(tmp_path), rooms, intake)  # type: ignore[arg-type]
    assert bridge.state_topic == "chatroom/bridge/state" and bridge.ha_status_topic == "homeassistant/status"
    assert not bridge.is_running and not bridge.is_connected and bridge.outbox_size == 0
    bridge.stop()  # never started: nothing to do
    assert bridge.status()["is_running"] is False


def test_a_shared_group_on_an_unnamed_3_1_1_broker_is_warned_about_at_start(caplog):
    """Issue 26: MQTT_SHARED_GROUP is refused with MQTT_BROKER_KIND=rabbitmq/nats, but with `auto`
    on MQTT 3.1.1 nothing tells (RabbitMQ and NATS grant `$share/…` and deliver nothing): one
    WARNING line at start; none once the broker is named or MQTT 5's CONNACK can tell."""
    from mqtt_service.broker_profile import plan_for

    def warned(*args: str) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mqtt_service.bridge"):
            plan_for(args[0], args[1], 1, *args[2:])
        return [r.getMessage() for r in caplog.records if "MQTT_SHARED_GROUP" in r.getMessage()]

    said = warned("auto", "3.1.1", "relays")
    assert len(said) == 1 and "MQTT_SHARED_GROUP=relays with MQTT_BROKER_KIND=auto on MQTT 3.1.1" in said[0]
    assert warned("mosquitto", "3.1.1", "relays") == warned("auto", "5", "relays") == warned("auto", "3.1.1") == []


def test_a_broker_that_closes_each_connection_as_it_opens_is_said_once(tmp_path, caplog):
    """Issue 26: a connect-then-close loop (NATS closing on a QoS 2 publication) logged "connection
    lost" and told every room bridge_offline/online on every retry. The same loss right after
    connecting again is the same state: one line, one offline, one online; a connection that
    lasted is news again."""
    connection, client, stats, said = make_connection(tmp_path)
    lost = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    offline = ("bridge_offline", "MQTT bridge lost the broker; device messages wait")
    with caplog.at_level(logging.WARNING, logger="mqtt_service.bridge"):
        for _ in range(4):
            connection.on_connect(client, None, ConnectFlags(session_present=True), CONNACK_OK, None)
            connection.on_disconnect(client, None, DisconnectFlags(False), lost, None)
        assert said == [("bridge_online", "MQTT service connected"), "after", offline,
                        ("bridge_online", "MQTT bridge is back online"), "after", "after", "after"]
        assert len([r for r in caplog.records if "connection lost" in r.getMessage()]) == 1
        # ... and the loop explained (connection_watch.py), in last_error and one ERROR line
        assert "closed 4 connections" in stats.last_error and stats.snapshot()["reconnect_count"] == 3
        assert len([r for r in caplog.records if "right after they opened" in r.getMessage()]) == 1
        # A connection that lasted, then lost: said again, and its return too.
        connection.on_connect(client, None, ConnectFlags(session_present=True), CONNACK_OK, None)
        connection.watch._connected_at -= 60
        connection.on_disconnect(client, None, DisconnectFlags(False), lost, None)
        connection.on_connect(client, None, ConnectFlags(session_present=True), CONNACK_OK, None)
    assert said[-4:] == ["after", offline, ("bridge_online", "MQTT bridge is back online"), "after"]
    assert len([r for r in caplog.records if "connection lost" in r.getMessage()]) == 2
