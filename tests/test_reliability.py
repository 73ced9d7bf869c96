"""Nothing lost: broker outages, server restarts, device drops, shutdown, handler bugs.

Each test kills or restarts a real process (mosquitto, the server, a device's socket).
"""
import json
import signal
import threading

import requests
from conftest import RunningApp, app_env

from support import TIMEOUT, MqttProbe, wait_for


def post(app: RunningApp, text: str, room: str | None = None):
    body = {"username": "ops", "message": text, **({"room": room} if room else {})}
    response = app.http.post("/api/messages", json=body)
    assert response.status_code == 201, response.get_json()
    return response.get_json()["message"]


def persistent_probe(port: int, prefix: str, name: str) -> MqttProbe:
    """A subscriber whose session (and queued QoS 1 messages) survives broker restarts."""
    return MqttProbe(port, f"{prefix}/#", client_id=name, clean_session=False).start()


def start_with_one_message(app: RunningApp, probe: MqttProbe) -> None:
    """Post one message so the lobby exists (outage events go to existing rooms)."""
    post(app, "before")
    probe.wait(f"{app.prefix}/messages/out")


def test_outage_messages_are_kept_in_order_and_published_once_on_reconnect(own_broker, tmp_path):
    """Broker stopped: web/HTTP keep working, 503 + outbox; restarted: all sent in seq order, once."""
    app = RunningApp(app_env(own_broker, tmp_path)).start()
    probe = persistent_probe(own_broker.port, app.prefix, "outage-watcher")
    try:
        start_with_one_message(app, probe)
        own_broker.stop()
        wait_for(lambda: not app.components.bridge.is_connected, what="bridge noticed the outage")
        sent = [post(app, f"during outage {i}") for i in range(20)]
        app.drain()
        status = app.http.get("/mqtt/status")
        assert status.status_code == 503 and status.get_json()["mqtt_status"]["outbox_size"] >= 20
        own_broker.start()
        wait_for(lambda: app.http.get("/mqtt/status").status_code == 200, timeout=60, what="reconnected")
        during = lambda m: m["content"].startswith("during")
        outs = probe.wait(f"{app.prefix}/messages/out", count=20, match=during, timeout=60)
        app.drain()
        assert [r.json()["seq"] for r in outs] == [m["seq"] for m in sent]
        assert [r.json()["message_id"] for r in probe.on(f"{app.prefix}/messages/out")
                if during(r.json())] == [m["message_id"] for m in sent]
        wait_for(lambda: app.status()["mqtt_status"]["outbox_size"] == 0, what="outbox drained")
        status = app.status()["mqtt_status"]
        assert status["reconnect_count"] == 1 and status["messages_dropped"] == 0
        assert status["last_error"] is None
        offline = [r.json() for r in probe.on(f"{app.prefix}/system") if r.json()["event"] == "bridge_offline"]
        online = [r.json() for r in probe.on(f"{app.prefix}/system") if r.json()["event"] == "bridge_online"]
        assert len(offline) == 1 and len(online) == 1
    finally:
        probe.stop()
        app.stop()


def chat_out(probe: MqttProbe, prefix: str) -> list[dict]:
    return [r.json() for r in probe.on(f"{prefix}/messages/out") if r.json()["content"] != "before"]


def test_outbox_overflow_loses_no_chat_message_history_has_them(own_broker, tmp_path):
    """With MQTT_OUTBOX_SIZE=5, 8 messages during an outage: the outbox holds at most 5; what it
    lets go of is a system event (dropped, counted) or a chat message, which history still has
    (PROTOCOL 12): after the reconnect all 8 are published in seq order, once."""
    app = RunningApp(app_env(own_broker, tmp_path, MQTT_OUTBOX_SIZE=5)).start()
    probe = persistent_probe(own_broker.port, app.prefix, "overflow-watcher")
    try:
        start_with_one_message(app, probe)
        own_broker.stop()
        wait_for(lambda: not app.components.bridge.is_connected, what="bridge noticed the outage")
        app.drain()  # the bridge_offline event is queued first
        sent = [post(app, f"m{i}") for i in range(8)]
        app.drain()
        status = app.status()["mqtt_status"]
        assert status["outbox_size"] <= 5 and status["messages_dropped"] == 1  # the offline event
        assert status["history_outbox"]["let_go"] >= 1 and status["history_outbox"]["rooms_behind"] == 1
        own_broker.start()
        probe.wait(f"{app.prefix}/messages/out", count=8, match=lambda m: m["content"] != "before", timeout=60)
        wait_for(lambda: app.status()["mqtt_status"]["outbox_size"] == 0, what="outbox drained")
        app.drain()
        assert [m["seq"] for m in chat_out(probe, app.prefix)] == [m["seq"] for m in sent]
    finally:
        probe.stop()
        app.stop()


def test_the_outbox_bound_holds_while_a_connected_broker_takes_nothing(own_broker, tmp_path, caplog):
    """Finding 3 of the trust review: publications beyond what paho would take piled up in
    the outbox with no bound. The broker is frozen (SIGSTOP: connected, but no PUBACK comes):
    at most `window` go to paho, at most MQTT_OUTBOX_SIZE wait (one log line when full); the
    chat messages it lets go of are read again from history: thawed, all go out in seq order, once."""
    app = RunningApp(app_env(own_broker, tmp_path, MQTT_OUTBOX_SIZE=100)).start()
    probe = persistent_probe(own_broker.port, app.prefix, "frozen-watcher")
    outbox = app.components.bridge.outbox
    outbox.window = 50
    try:
        start_with_one_message(app, probe)
        app.drain()
        wait_for(lambda: outbox.unacked == 0, what="the start-up publications acknowledged")
        own_broker.proc.send_signal(signal.SIGSTOP)
        try:
            sent = [post(app, f"m{i}") for i in range(400)]
            app.drain()
            status = app.status()["mqtt_status"]
            assert status["outbox_size"] <= 100 and outbox.unacked == 50
            assert status["messages_dropped"] == 0  # chat messages only: history has every one
            full = [r for r in caplog.records if "outbox full" in r.getMessage()]
            assert len(full) == 1
        finally:
            own_broker.proc.send_signal(signal.SIGCONT)
        probe.wait(f"{app.prefix}/messages/out", count=400, match=lambda m: m["content"] != "before", timeout=60)
        wait_for(lambda: app.status()["mqtt_status"]["outbox_size"] == 0 and outbox.unacked == 0,
                 what="outbox drained")
        app.drain()
        assert [m["seq"] for m in chat_out(probe, app.prefix)] == [m["seq"] for m in sent]
        assert any("room again" in r.getMessage() for r in caplog.records)
    finally:
        probe.stop()
        app.stop()


def test_the_outbox_bound_holds_when_paho_refuses_publications():
    """paho answers MQTT_ERR_QUEUE_SIZE when its message ids run out: such publications wait
    in the outbox, within its bound (they went back to the front without one), one log line."""
    import logging

    from paho.mqtt.enums import MQTTErrorCode

    from mqtt_service.connection_watch import ConnectionWatch
    from mqtt_service.outbox import Outbox, Outgoing
    from mqtt_service.stats import BridgeStats

    class RefusingClient:  # stands in for paho's Client: only publish() is called
        def publish(self, topic, payload, qos, retain):
            return type("Info", (), {"rc": MQTTErrorCode.MQTT_ERR_QUEUE_SIZE, "mid": 0})()

    stats = BridgeStats()
    outbox = Outbox(10, stats, ConnectionWatch(stats, "bridge", ()))
    outbox.attach(RefusingClient())
    outbox.connected(after_drain=lambda: None)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("mqtt_service.bridge").addHandler(handler)
    try:
        for number in range(1000):
            outbox.publish(Outgoing("chatroom/messages/out", str(number).encode(), 1))
        assert outbox.size == 10 and stats.snapshot()["messages_dropped"] == 990
        assert outbox.unacked == 0
        assert len([r for r in records if r.levelno >= logging.WARNING]) <= 3  # refused once, full once
    finally:
        logging.getLogger("mqtt_service.bridge").removeHandler(handler)
        outbox.stop()


def test_broker_killed_then_restarted_the_bridge_reconnects(own_broker, tmp_path):
    """SIGKILL the broker: 503 with last_error; a new broker: 200, reconnect_count 1, outbox acknowledged."""
    app = RunningApp(app_env(own_broker, tmp_path)).start()
    try:
        post(app, "before")  # the lobby exists: the outage is announced there
        # online state + bridge_online in the lobby (every connect, the first included)
        # + the bridge's Home Assistant config (every connect) + before
        wait_for(lambda: app.status()["mqtt_status"]["messages_sent"] == 4, what="online + before acknowledged")
        own_broker.kill()
        wait_for(lambda: app.http.get("/mqtt/status").status_code == 503, what="503 while down")
        assert app.status()["mqtt_status"]["last_error"]
        for i in range(10):
            post(app, f"while killed {i}")
        own_broker.start()
        wait_for(lambda: app.http.get("/mqtt/status").status_code == 200, timeout=60, what="reconnected")
        # before: 4; after: online state, offline event, 10 messages, online event, HA bridge config
        wait_for(lambda: app.status()["mqtt_status"]["messages_sent"] == 4 + 1 + 1 + 10 + 1 + 1,
                 timeout=30, what="outbox acknowledged by the new broker")
        status = app.status()["mqtt_status"]
        assert status["reconnect_count"] == 1 and status["outbox_size"] == 0 and status["is_connected"]
    finally:
        app.stop()


def test_device_messages_sent_while_the_server_is_stopped_arrive_after_restart(broker, tmp_path, server_for):
    """Persistent session: QoS 1 messages published to messages/in while the server is down are relayed."""
    env = app_env(broker, tmp_path, ASYNC_MODE="eventlet")
    prefix = env["MQTT_TOPIC_PREFIX"]
    first = server_for(env)
    assert first.stop() == 0
    with MqttProbe(broker.port, f"{prefix}/messages/out") as probe:
        for i in range(5):
            probe.publish(f"{prefix}/messages/in", {"client_id": "esp-night", "message": f"reading {i}"})
        server_for(env)
        outs = probe.wait(f"{prefix}/messages/out", count=5, timeout=60)
        assert [r.json()["content"] for r in outs] == [f"reading {i}" for i in range(5)]


def test_server_killed_mid_burst_stores_every_message_exactly_once(broker, tmp_path, server_for):
    """SIGKILL while a burst is being relayed, then a restart: each message is in history once.

    PUBACKs go out only after the batch holding the messages is committed, so the broker
    sends again whatever the dead process had not stored; a message it had stored but not
    yet acknowledged is recognised by its message_id (the window is rebuilt from history).
    """
    env = app_env(broker, tmp_path, ASYNC_MODE="eventlet")
    prefix, count = env["MQTT_TOPIC_PREFIX"], 1500
    server = server_for(env)
    device = MqttProbe(broker.port)
    device.client.max_inflight_messages_set(0)  # a real burst: all of it in flight at once
    with MqttProbe(broker.port, f"{prefix}/messages/out") as probe, device:
        sent = [device.client.publish(f"{prefix}/messages/in", json.dumps(
            {"client_id": "esp-burst", "message": f"reading {i}", "message_id": f"r{i}"}), qos=1)
            for i in range(count)]
        probe.wait(f"{prefix}/messages/out", count=count // 5, timeout=60)
        server.stop(signal.SIGKILL)
        for info in sent:
            info.wait_for_publish(TIMEOUT)  # the broker holds every one of them
        restarted = server_for(env)
        # The stream has settled once a message sent after all the others is relayed
        # (the broker delivers one session's messages in order).
        device.publish(f"{prefix}/messages/in", {"client_id": "esp-burst", "message": "last"})
        probe.wait(f"{prefix}/messages/out", match=lambda m: m["content"] == "last", timeout=120)
    history, before = [], None
    while True:
        page = requests.get(restarted.url + "/api/messages", params={
            "limit": 500, **({"before_seq": before} if before else {})}, timeout=TIMEOUT).json()["messages"]
        if not page:
            break
        history, before = page + history, page[0]["seq"]
    contents = [m["content"] for m in history]
    assert sorted(contents) == sorted([f"reading {i}" for i in range(count)] + ["last"])
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))


def test_device_lwt_makes_it_leave_when_its_connection_dies(make_app, probe_for, broker):
    """A device with an LWT on users/leave leaves when its socket is killed."""
    app = make_app()
    watcher = probe_for(app.prefix)
    device = MqttProbe(broker.port, client_id="esp-lwt",
                       will=(f"{app.prefix}/users/leave", '{"client_id": "esp-lwt"}')).start()
    device.publish(f"{app.prefix}/users/join", {"client_id": "esp-lwt", "username": "Porch"})
    watcher.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "join")
    device.client.loop_stop()
    device.client.socket().close()  # no DISCONNECT: the broker publishes the will
    leave = watcher.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave")[0].json()
    assert leave["username"] == "Porch"
    assert app.http.get("/api/users").get_json()["users"] == []


def test_sigterm_flushes_what_was_just_posted(broker, tmp_path, server_for):
    """Messages posted right before SIGTERM still reach MQTT; the state ends offline; exit 0."""
    env = app_env(broker, tmp_path, ASYNC_MODE="eventlet")
    prefix = env["MQTT_TOPIC_PREFIX"]
    with MqttProbe(broker.port, f"{prefix}/#") as probe:
        server = server_for(env)
        for i in range(30):
            requests.post(server.url + "/api/messages", json={"username": "u", "message": f"last {i}"},
                          timeout=TIMEOUT)
        assert server.stop() == 0
        outs = probe.wait(f"{prefix}/messages/out", count=30)
        assert [r.json()["seq"] for r in outs] == list(range(1, 31))
        states = probe.wait(f"{prefix}/bridge/state", count=2)
        assert states[-1].json() == {"state": "offline"}


def test_handler_bug_does_not_stop_later_relays(make_app, probe_for):
    """An exception while handling one message is logged and counted; the next one relays."""
    app = make_app()
    probe = probe_for(app.prefix)
    rooms = app.components.rooms
    original = rooms.post

    def buggy_post(room, username, content, *args, **kwargs):
        if content == "trigger bug":
            raise RuntimeError("injected handler bug")
        return original(room, username, content, *args, **kwargs)

    rooms.post = buggy_post
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "d", "message": "trigger bug"})
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "d", "message": "after the bug"})
    out = probe.wait(f"{app.prefix}/messages/out")[0].json()
    assert out["content"] == "after the bug"
    status = app.status()["mqtt_status"]
    assert status["handler_errors"] == 1 and status["is_connected"] and status["messages_received"] == 2


def test_many_concurrent_senders_lose_nothing(make_app, probe_for, broker):
    """Web, HTTP and MQTT at once: every message is published once and seq has no gaps."""
    app = make_app()
    probe = probe_for(app.prefix)
    web = app.socket()
    assert web.emit("join", {"username": "W"}, callback=True)["ok"]
    count = 60

    def mqtt_sender():
        with MqttProbe(broker.port) as device:
            for i in range(count):
                device.publish(f"{app.prefix}/messages/in", {"client_id": "dev", "message": f"mqtt {i}"})

    sender = threading.Thread(target=mqtt_sender)
    sender.start()
    for i in range(count):
        post(app, f"http {i}")
        assert web.emit("send_message", {"message": f"web {i}"}, callback=True)["ok"]
    sender.join(TIMEOUT * 3)
    outs = probe.wait(f"{app.prefix}/messages/out", count=3 * count, timeout=60)
    app.drain()
    seqs = [r.json()["seq"] for r in probe.on(f"{app.prefix}/messages/out")]
    assert seqs == list(range(1, 3 * count + 1))
    assert len({r.json()["message_id"] for r in outs}) == 3 * count
