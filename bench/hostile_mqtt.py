"""What a stranger on the broker can cost the relay: scenarios 3, 4 and 6 of the trust review.

    .venv/bin/python -m bench.hostile_mqtt [--root DIR]   # DIR: another checkout to measure

Each scenario starts its own mosquitto and `python app.py` (eventlet, the shipped defaults,
RATE_LIMIT=0 so only the bounds under test act) and publishes, anonymously, what a
stranger would:
3. 300 fake devices x 64 data keys, then 16 x `homeassistant/status online`; then 2 000
   new devices in a burst: the outbox's largest size, RSS, log lines and bytes, discovery
   configs the broker received, what is left in the outbox once it settles;
4. 1 000 users/join with new client_ids in the lobby, then 1 000 joins to new rooms: can a
   person still join the lobby, and open a room of their own?
6. 2 300 fresh client_ids x 2 messages x 32 keys, then their leave: retained messages and
   bytes left in the broker, the broker's RSS.
Bounded in count and time; every process it starts is stopped by its PID.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import requests
import socketio
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from bench.hostile_load import rss_mb  # noqa: E402
from support import Mosquitto, ServerProcess  # noqa: E402

DISCOVERY = "homeassistant"



class Setup:
    """A broker and a server of `root`'s code, with a log file we can count."""

    def __init__(self, root: Path, work: Path, **env):
        self.work = work
        self.broker = Mosquitto(work / "mosquitto").start()
        self.prefix = f"h{uuid.uuid4().hex[:6]}"
        self.log = work / "server.log"
        self.unanswered = 0  # status requests that got no answer within 10 s
        self.server = ServerProcess(
            {"ASYNC_MODE": "eventlet", "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(self.broker.port),
             "MQTT_TOPIC_PREFIX": self.prefix, "MQTT_CLIENT_ID": f"hostile-{uuid.uuid4().hex[:6]}",
             "DATABASE_PATH": str(work / "chat.db"), "RATE_LIMIT": "0", **env},
            log_path=self.log, root=root).start()

    def client(self) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"stranger-{uuid.uuid4().hex[:6]}")
        client.max_inflight_messages_set(200)
        client.connect("127.0.0.1", self.broker.port)
        client.loop_start()
        return client

    def status(self) -> dict | None:
        """The bridge's status; None when the server does not answer within 10 s (counted)."""
        try:
            return requests.get(self.server.url + "/mqtt/status", timeout=10).json()["mqtt_status"]
        except requests.RequestException:
            self.unanswered += 1
            return None

    def log_size(self) -> tuple[int, int]:
        text = self.log.read_bytes()
        return text.count(b"\n"), len(text)

    def settle(self, seconds: float = 120.0) -> None:
        """Until the bridge has received everything and its outbox no longer shrinks."""
        last = None
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            status = self.status()
            if status is None:
                continue
            now = (status["messages_received"], status["messages_sent"], status["outbox_size"])
            if now == last and status["outbox_size"] == 0:
                return
            last = now
            time.sleep(1.0)  # a benchmark polling a status page, not a test

    def stop(self) -> None:
        self.server.stop()
        self.broker.stop()


def publish_all(client: mqtt.Client, items: list[tuple[str, object]]) -> None:
    infos = [client.publish(topic, payload if isinstance(payload, bytes) else json.dumps(payload), qos=1)
             for topic, payload in items]
    for info in infos:
        info.wait_for_publish(60)


def count_on(port: int, filters: list[str]) -> tuple[dict, threading.Event]:
    """Counts what arrives on `filters` from now on (a subscriber in the background)."""
    counted = {"messages": 0}
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"counter-{uuid.uuid4().hex[:6]}")
    client.on_message = lambda *args: counted.__setitem__("messages", counted["messages"] + 1)
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.on_connect = lambda c, *args: c.subscribe([(f, 0) for f in filters])
    client.connect("127.0.0.1", port)
    client.loop_start()
    subscribed.wait(10)
    counted["client"] = client
    return counted, subscribed


def retained(port: int, filters: list[str]) -> tuple[int, int]:
    """(messages, payload bytes) the broker retains under `filters`, proven complete by a marker."""
    marker = f"marker/{uuid.uuid4().hex}"
    found = {"count": 0, "bytes": 0}
    done = threading.Event()

    def on_message(client, userdata, message):
        if message.topic == marker:
            done.set()
        elif message.retain:
            found["count"] += 1
            found["bytes"] += len(message.payload)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"inventory-{uuid.uuid4().hex[:6]}")
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe([(f, 0) for f in filters + [marker]])
    subscribed.wait(10)
    client.publish(marker, b"end", qos=0)
    done.wait(120)
    client.loop_stop()
    client.disconnect()
    return found["count"], found["bytes"]


def sixty_four_keys(name: str, devices: int, prefix: str) -> list[tuple[str, dict]]:
    """Two messages of 32 keys each (a message holds at most 32) per device: 64 keys."""
    return [(f"{prefix}/messages/in", {"client_id": f"{name}-{n:04d}", "message": "x",
                                       "data": {f"k{half}_{k}": k for k in range(32)}})
            for n in range(devices) for half in range(2)]


def discovery_flood(root: Path, work: Path) -> dict:
    """Scenario 3."""
    setup = Setup(root, work)
    try:
        counted, _ = count_on(setup.broker.port, [f"{DISCOVERY}/+/+/+/config"])
        client = setup.client()
        rss_before, (lines_before, bytes_before) = rss_mb(setup.server.proc.pid), setup.log_size()
        publish_all(client, sixty_four_keys("fake", 300, setup.prefix))
        setup.settle()
        configs_first = counted["messages"]
        peak = {"outbox": 0}
        stop = threading.Event()

        def watch():
            while not stop.is_set():
                status = setup.status()
                peak["outbox"] = max(peak["outbox"], status["outbox_size"] if status else 0)
                stop.wait(0.2)
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        publish_all(client, [(f"{DISCOVERY}/status", b"online")] * 16)
        setup.settle()
        configs_births = counted["messages"] - configs_first
        publish_all(client, sixty_four_keys("burst", 2000, setup.prefix))
        setup.settle()
        stop.set()
        watcher.join()
        status = setup.status() or {"outbox_size": None, "messages_dropped": None}
        lines_after, bytes_after = setup.log_size()
        warnings = setup.log.read_text(errors="replace").count(" WARNING ")
        client.loop_stop()
        counted["client"].loop_stop()
        return {"configs_for_300_devices": configs_first, "configs_for_16_births": configs_births,
                "outbox_peak": peak["outbox"], "outbox_after": status["outbox_size"],
                "dropped": status["messages_dropped"], "rss_before_mb": rss_before,
                "rss_after_mb": rss_mb(setup.server.proc.pid), "log_lines": lines_after - lines_before,
                "log_bytes": bytes_after - bytes_before, "warning_lines": warnings,
                "status_unanswered_10s": setup.unanswered}
    finally:
        setup.stop()


def lockout(root: Path, work: Path) -> dict:
    """Scenario 4."""
    setup = Setup(root, work)
    try:
        client = setup.client()
        publish_all(client, [(f"{setup.prefix}/users/join", {"client_id": f"s{n:04d}"}) for n in range(1000)])
        publish_all(client, [(f"{setup.prefix}/r{n}/users/join", {"client_id": f"t{n:04d}"}) for n in range(1000)])
        setup.settle()
        person = socketio.Client(reconnection=False)
        person.connect(setup.server.url, transports=["websocket"])
        lobby = person.call("join", {"username": "Alice"}, timeout=30)
        own_room = person.call("join", {"username": "Alice", "room": "family"}, timeout=30)
        person.disconnect()
        client.loop_stop()
        return {"lobby": "joined" if lobby.get("ok") else lobby.get("code"),
                "own_room": "joined" if own_room.get("ok") else own_room.get("code")}
    finally:
        setup.stop()


def retained_footprint(root: Path, work: Path, devices: int = 2300) -> dict:
    """Scenario 6."""
    setup = Setup(root, work)
    try:
        broker_before = rss_mb(setup.broker.proc.pid)
        client = setup.client()
        items = []
        for n in range(devices):
            for half in range(2):
                items.append((f"{setup.prefix}/messages/in",
                              {"client_id": f"fresh-{n:04d}", "message": "x",
                               "data": {f"k{half}_{k}": k for k in range(32)}}))
            items.append((f"{setup.prefix}/users/leave", {"client_id": f"fresh-{n:04d}"}))
        publish_all(client, items)
        setup.settle(300)
        client.loop_stop()
        count, size = retained(setup.broker.port, [f"{DISCOVERY}/#", f"{setup.prefix}/devices/#"])
        return {"retained": count, "retained_mb": size / 1e6, "broker_rss_before_mb": broker_before,
                "broker_rss_after_mb": rss_mb(setup.broker.proc.pid)}
    finally:
        setup.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app.py is measured")
    parser.add_argument("--only", choices=("3", "4", "6"), action="append")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-mqtt-"))
    wanted = args.only or ["3", "4", "6"]
    print(f"code under test: {args.root}")
    if "3" in wanted:
        flood = discovery_flood(args.root, work / "s3")
        print("3. 300 devices x 64 keys, 16 births, then 2 000 new devices:",
              json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in flood.items()}))
    if "4" in wanted:
        print("4. 1 000 device joins in the lobby and 1 000 in new rooms; a person then:",
              json.dumps(lockout(args.root, work / "s4")))
    if "6" in wanted:
        footprint = retained_footprint(args.root, work / "s6")
        print("6. 2 300 fresh ids x 2 messages x 32 keys, then leave:",
              json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in footprint.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
