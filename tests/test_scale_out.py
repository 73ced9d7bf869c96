"""Several instances (PROTOCOL 8): two `python app.py` processes in eventlet mode on one
mosquitto, one redis-server and one history (PostgreSQL, or one SQLite file on one host),
with real paho, python-socketio and HTTP clients.

"Once" is counted after the stream has settled: a last marker message is waited for
on every output, and only then is everything counted.
"""
from __future__ import annotations

import json
import signal
import uuid
from collections import Counter

import paho.mqtt.client as mqtt
import pytest
import requests
from conftest import app_env
from paho.mqtt.enums import CallbackAPIVersion

from support import TIMEOUT, MqttProbe, RedisServer, SocketIOClient, wait_for

STREAM = 1000
SETTLE = 120.0  # 1 000 messages through two instances on a noisy 2-core machine


class Cluster:
    def __init__(self, broker, redis_server, tmp_path, server_for, database_url: str = ""):
        self.prefix = f"t{uuid.uuid4().hex[:10]}"
        self.group = f"g{uuid.uuid4().hex[:6]}"
        self.base = app_env(broker, tmp_path, ASYNC_MODE="eventlet", MQTT_TOPIC_PREFIX=self.prefix,
                            REDIS_URL=redis_server.url, MQTT_SHARED_GROUP=self.group, INSTANCE_TTL=3,
                            DATABASE_PATH=str(tmp_path / "shared.db"), DATABASE_URL=database_url)
        self.server_for = server_for
        self.broker = broker
        self.servers = [self.start(0), self.start(1)]

    def env(self, index: int) -> dict:
        return {**self.base, "INSTANCE_ID": f"i{index}", "MQTT_CLIENT_ID": f"{self.prefix}-bridge-{index}"}

    def start(self, index: int):
        return self.server_for(self.env(index))

    def restart(self, index: int):
        self.servers[index] = self.start(index)
        return self.servers[index]

    def history(self, server=None) -> list[dict]:
        """Every message of the lobby, oldest first, read page by page over HTTP."""
        server = server or self.servers[-1]
        messages, before = [], None
        while True:
            params = {"limit": 500, **({"before_seq": before} if before else {})}
            page = requests.get(f"{server.url}/api/messages", params=params, timeout=TIMEOUT).json()["messages"]
            messages = page + messages
            if len(page) < 500:
                return messages
            before = page[0]["seq"]

    def topic(self, kind: str) -> str:
        return f"{self.prefix}/{kind}"


class Devices:
    """A paho client that publishes readings at QoS 1; `accepted` = the broker's PUBACK came."""

    def __init__(self, port: int):
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:6]}")
        self.client.max_inflight_messages_set(100)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.accepted: list[str] = []

    def send(self, topic: str, numbers) -> None:
        pending = []
        for number in numbers:
            body = {"client_id": f"esp-{number % 5}", "message": f"reading {number}",
                    "message_id": f"m-{number}", "data": {"n": number}}
            pending.append((f"m-{number}", self.client.publish(topic, json.dumps(body), qos=1)))
        for message_id, info in pending:
            info.wait_for_publish(SETTLE)
            self.accepted.append(message_id)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def chat_ids(web: SocketIOClient) -> list[str]:
    """The chat messages a client got, in the order they came over its websocket."""
    return [data["client_message_id"] for data in web.received("chat_message")]


def drain_until(web: SocketIOClient, message_id: str) -> None:
    web.until("chat_message", lambda data: data.get("client_message_id") == message_id)


@pytest.fixture
def devices(broker):
    made = []

    def make():
        made.append(Devices(broker.port))
        return made[-1]

    yield make
    for device in made:
        device.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def cluster(request, broker, redis_server, tmp_path, server_for):
    url = request.getfixturevalue("postgres_url") if request.param == "postgresql" else ""
    if url:  # a fresh table for this cluster
        import psycopg

        with psycopg.connect(url, autocommit=True) as connection:
            connection.execute("DROP TABLE IF EXISTS messages")
    return Cluster(broker, redis_server, tmp_path, server_for, url)


def test_a_device_stream_enters_once_and_every_web_client_sees_it_in_one_order(cluster, devices, web_for, broker):
    first, second = cluster.servers
    ana, bo = web_for(first.url), web_for(second.url)
    assert ana.call("join", {"room": "lobby", "username": "Ana"})["ok"]
    assert bo.call("join", {"room": "lobby", "username": "Bo"})["ok"]
    out = MqttProbe(broker.port, cluster.topic("messages/out")).start()
    try:
        devices().send(cluster.topic("messages/in"), range(STREAM))
        stream = {f"m-{n}" for n in range(STREAM)}
        # Settled: every message reached every output (the two instances finish at
        # their own pace), then markers flush both, then everything is counted.
        wait_for(lambda: stream <= {json.loads(r.payload)["client_message_id"]
                                    for r in out.on(cluster.topic("messages/out"))},
                 timeout=SETTLE, what="the stream on messages/out", interval=0.2)
        for web in (ana, bo):
            wait_for(lambda web=web: stream <= set(chat_ids(web)), timeout=SETTLE,
                     what="the stream on both web clients", interval=0.2)
        # Each instance relays in order from its own queue: a marker through each settles both.
        for index, server in enumerate(cluster.servers):
            marker = web_for(server.url)
            assert marker.call("join", {"room": "lobby", "username": f"Marker {index}"})["ok"]
            end = f"end-{index}"
            assert marker.call("send_message", {"message": "end", "client_message_id": end})["ok"]
            for web in (ana, bo):
                drain_until(web, end)
            out.wait(cluster.topic("messages/out"), match=lambda body, end=end: body.get("client_message_id") == end)
    finally:
        out.stop()
    wanted = Counter([f"m-{n}" for n in range(STREAM)] + ["end-0", "end-1"])
    published = [json.loads(r.payload) for r in out.on(cluster.topic("messages/out"))]
    assert Counter(body["client_message_id"] for body in published) == wanted  # each once on `out`
    history = cluster.history()
    assert Counter(m["client_message_id"] for m in history) == wanted  # each once in history
    assert [m["seq"] for m in history] == list(range(1, STREAM + 3))   # one gap-free seq
    # Both web clients saw everything once, in the same order.
    assert Counter(chat_ids(ana)) == Counter(chat_ids(bo)) == wanted
    assert chat_ids(ana) == chat_ids(bo)
    # The broker shared the stream between the instances: each counts its own.
    statuses = [server.status()[1] for server in cluster.servers]
    assert [s["instance_id"] for s in statuses] == ["i0", "i1"]
    received = [s["mqtt_status"]["messages_received"] for s in statuses]
    assert sum(received) == STREAM and min(received) > 0, received
    assert all(s["database_size_bytes"] > 0 for s in statuses)
    metrics = requests.get(first.url + "/metrics", timeout=TIMEOUT).text
    assert 'chatroom_instance_info{instance_id="i0"} 1.0' in metrics


def test_web_message_on_one_instance_reaches_devices_and_the_other_instance_once(cluster, web_for, broker):
    first, second = cluster.servers
    ana, bo = web_for(first.url), web_for(second.url)
    assert ana.call("join", {"room": "lobby", "username": "Ana"})["ok"]
    # A name held on instance 0 is refused on instance 1 (names are global).
    taken = bo.call("join", {"room": "lobby", "username": "ana"})
    assert taken["ok"] is False and taken["code"] == "name_taken"
    assert bo.call("join", {"room": "lobby", "username": "Bo"})["ok"]
    users = requests.get(f"{first.url}/api/users", timeout=TIMEOUT).json()["users"]
    assert sorted(u["username"] for u in users) == ["Ana", "Bo"]  # instance 0 lists instance 1's user
    with MqttProbe(broker.port, cluster.topic("#")) as probe:
        assert bo.call("send_message", {"message": "hi from 1", "client_message_id": "w-1"})["ok"]
        assert bo.call("send_message", {"message": "end", "client_message_id": "w-end"})["ok"]
        probe.wait(cluster.topic("messages/out"), match=lambda body: body["client_message_id"] == "w-end")
        drain_until(ana, "w-end")
        drain_until(bo, "w-end")
        outs = [r.json()["content"] for r in probe.on(cluster.topic("messages/out"))]
    assert outs == ["hi from 1", "end"]
    assert chat_ids(ana) == chat_ids(bo) == ["w-1", "w-end"]


def test_a_killed_instance_loses_no_accepted_message_and_leaves_no_ghosts(cluster, devices, web_for, broker):
    """SIGKILL one instance in the middle of a stream, restart it: every message the broker
    accepted is in the room once; the killed instance's web users leave within INSTANCE_TTL."""
    first, second = cluster.servers
    ghost = web_for(first.url)
    assert ghost.call("join", {"room": "lobby", "username": "Ghost"})["ok"]
    watcher = web_for(second.url)
    assert watcher.call("join", {"room": "lobby", "username": "Watcher"})["ok"]
    device = devices()
    topic = cluster.topic("messages/in")
    device.send(topic, range(0, 300))
    first.stop(signal.SIGKILL)
    device.send(topic, range(300, 600))
    # The survivor makes the dead instance's web user leave (TTL 3 s, checked every second).
    watcher.until("system_message", lambda data: data["event"] == "leave" and data["username"] == "Ghost")
    users = requests.get(f"{second.url}/api/users", timeout=TIMEOUT).json()["users"]
    assert [u["username"] for u in users if u["source"] == "web"] == ["Watcher"]
    cluster.restart(0)  # its persistent session gets what the broker kept for it
    device.send(topic, range(600, 700))
    wanted = Counter(f"m-{n}" for n in range(700))
    assert Counter(device.accepted) == wanted

    def settled():
        seen = Counter(m.get("client_message_id") for m in cluster.history() if m["source"] == "mqtt")
        return seen if set(seen) >= set(wanted) else None

    seen = wait_for(settled, timeout=SETTLE, what="every accepted message in history", interval=0.5)
    assert seen == wanted  # each once: a redelivery after the kill is a duplicate, not a second copy
    history = cluster.history()
    assert [m["seq"] for m in history] == list(range(1, len(history) + 1))


def test_device_messages_wait_while_redis_is_down_and_none_is_lost(broker, tmp_path, server_for, devices, web_for):
    """Redis stops in the middle of a stream and comes back: the bridges hold what they
    were handling (unacknowledged), the broker keeps the rest, and every accepted message
    ends up in the room once. A web input meanwhile gets a clear `unavailable`."""
    own_redis = RedisServer(tmp_path / "own-redis").start()
    try:
        cluster = Cluster(broker, own_redis, tmp_path, server_for)
        watcher = web_for(cluster.servers[1].url)
        assert watcher.call("join", {"room": "lobby", "username": "Watcher"})["ok"]
        device = devices()
        topic = cluster.topic("messages/in")
        device.send(topic, range(0, 100))
        own_redis.stop()
        device.send(topic, range(100, 200))  # the broker accepts them; the bridges wait
        refused = watcher.call("send_message", {"message": "while down"})
        assert refused == {"ok": False, "code": "unavailable", "error": refused["error"]}
        status_code, status = cluster.servers[0].status()
        assert status_code == 503 and status["error"] == "Redis is unavailable; try again shortly"
        metrics = requests.get(cluster.servers[0].url + "/metrics", timeout=TIMEOUT)
        assert metrics.status_code == 200 and "chatroom_shared_state_up 0.0" in metrics.text
        wait_for(lambda: sum(server.status()[1]["mqtt_status"]["handler_errors"] for server in cluster.servers),
                 what="a message held by a bridge", timeout=60)
        own_redis.start()
        wanted = Counter(f"m-{n}" for n in range(200))

        def settled():
            seen = Counter(m.get("client_message_id") for m in cluster.history() if m["source"] == "mqtt")
            return seen if set(seen) >= set(wanted) else None

        assert wait_for(settled, timeout=SETTLE, what="every message after Redis came back",
                        interval=0.5) == wanted
    finally:
        own_redis.stop()


def test_make_cluster_runs_two_instances_and_stops_all_it_started(broker, tmp_path):
    """`make cluster` (tools.cluster): a Redis of its own and two instances sharing the rooms;
    SIGTERM stops the instances and that Redis."""
    import os
    import re
    import subprocess
    import sys

    from support import ROOT, free_port, port_open

    # PORT, PORT+1 (the default) may be taken on a busy machine: two free ports, never one twice.
    ports: list[int] = []
    while len(ports) < 2:
        port = free_port()
        if port not in ports:
            ports.append(port)
    env = {**os.environ, "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port),
           "MQTT_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:10]}", "DATABASE_PATH": str(tmp_path / "cluster.db"),
           "ASYNC_MODE": "eventlet"}
    for name in ("REDIS_URL", "MQTT_SHARED_GROUP", "OPENAI_API_KEY", "MQTT_CLIENT_ID", "INSTANCE_ID"):
        env.pop(name, None)
    log = tmp_path / "cluster.log"
    with open(log, "wb") as output:
        runner = subprocess.Popen([sys.executable, "-m", "tools.cluster", "--ports", *map(str, ports)],
                                  cwd=str(ROOT), env=env,
                                  stdout=output, stderr=subprocess.STDOUT)
    try:
        urls = [f"http://127.0.0.1:{port}" for port in ports]

        def statuses():
            if not all(port_open(port) for port in ports):
                return None
            answers = [requests.get(url + "/mqtt/status", timeout=2) for url in urls]
            return [a.json() for a in answers] if all(a.status_code == 200 for a in answers) else None

        try:
            ready = wait_for(statuses, timeout=60, what="two instances connected")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; make cluster said:\n{log.read_text()[-4000:]}") from None
        ids = [s["instance_id"] for s in ready]
        assert ids[0] != ids[1]
        # They share one history: posted on one, read on the other.
        assert requests.post(urls[0] + "/api/messages", json={"username": "op", "message": "hi"},
                             timeout=TIMEOUT).status_code == 201
        history = requests.get(urls[1] + "/api/messages", timeout=TIMEOUT).json()["messages"]
        assert [m["content"] for m in history] == ["hi"]
        redis_pid = int(re.search(r"Redis started at \S+ \(pid (\d+)\)", log.read_text()).group(1))
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(60) == 0, log.read_text()
        wait_for(lambda: not os.path.exists(f"/proc/{redis_pid}"), what="its Redis gone")
        assert not any(port_open(port) for port in ports)
    finally:
        if runner.poll() is None:
            runner.send_signal(signal.SIGTERM)  # it stops what it started (instances, Redis) by PID
            try:
                runner.wait(30)
            except subprocess.TimeoutExpired:
                runner.kill()
                runner.wait()


@pytest.mark.parametrize("env, variable", [
    ({"REDIS_URL": "redis://127.0.0.1:1/0", "MQTT_SHARED_GROUP": "g"}, "REDIS_URL"),
    ({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/chat"}, "DATABASE_URL"),
])
def test_an_unreachable_redis_or_postgresql_stops_start_up_with_one_line(env, variable, tmp_path):
    import subprocess
    import sys

    from support import ROOT, free_port

    result = subprocess.run([sys.executable, str(ROOT / "app.py")], cwd=str(tmp_path), capture_output=True,
                            text=True, timeout=60,
                            env={"PATH": "/usr/bin:/bin", "ASYNC_MODE": "threading", "PORT": str(free_port()),
                                 "DATABASE_PATH": str(tmp_path / "c.db"), **env})
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert variable in lines[0] and "Traceback" not in result.stderr
