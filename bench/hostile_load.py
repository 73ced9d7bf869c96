"""What a stranger can cost the server: figures for docs/SECURITY.md (PROTOCOL section 9).

    .venv/bin/python -m bench.hostile_load            # or: make bench-hostile

Starts its own mosquitto and `python app.py` (eventlet), then on loopback only:
- N distinct client_ids join (default 2 000, one room and spread over rooms):
  the server's RSS before and after, and the bytes one watching web page receives;
- M half-sent HTTP connections (default 1 100) held open: does /healthz answer, and how fast.
Bounded in count and time; every process it starts is stopped by its PID.
"""
from __future__ import annotations

import argparse
import json
import socket
import sys
import tempfile
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import requests
import socketio
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from support import Mosquitto, ServerProcess, wait_for  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def joins(server: ServerProcess, broker_port: int, prefix: str, count: int, rooms: int) -> dict:
    received = {"bytes": 0, "joins": 0}
    watcher = socketio.Client(reconnection=False)
    watcher.on("user_list", lambda data: received.__setitem__("bytes", received["bytes"] + len(json.dumps(data))))

    def on_system(data):
        received["bytes"] += len(json.dumps(data))
        received["joins"] += data["event"] == "join"
    watcher.on("system_message", on_system)
    watcher.connect(server.url, transports=["websocket"])
    watcher.call("join", {"username": "Watcher"})
    before = rss_mb(server.proc.pid)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-{uuid.uuid4().hex[:6]}")
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    in_lobby = 0
    for number in range(count):
        room = number % rooms
        topic = f"{prefix}/users/join" if room == 0 else f"{prefix}/r{room}/users/join"
        in_lobby += room == 0
        client.publish(topic, json.dumps({"client_id": f"stranger-{number:05d}"}), qos=1)
    wait_for(lambda: received["joins"] >= min(in_lobby, 999), timeout=300, what="joins seen by the page")
    time.sleep(1.0)  # a benchmark, not a test: let the last coalesced list arrive
    client.loop_stop()
    client.disconnect()
    after = rss_mb(server.proc.pid)
    watcher.disconnect()
    return {"rss_before_mb": before, "rss_after_mb": after, "page_bytes": received["bytes"],
            "joins_seen": received["joins"]}


def idle_connections(server: ServerProcess, count: int) -> dict:
    held = []
    try:
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x")
            held.append(sock)
        started = time.perf_counter()
        try:
            status = requests.get(server.url + "/healthz", timeout=10).status_code
        except requests.RequestException as exc:
            status = f"no answer ({type(exc).__name__})"
        return {"idle": len(held), "healthz": status, "healthz_ms": (time.perf_counter() - started) * 1000}
    finally:
        for sock in held:
            sock.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=2000)
    parser.add_argument("--idle", type=int, default=1100)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    broker = Mosquitto(work / "mosquitto").start()
    prefix = f"h{uuid.uuid4().hex[:6]}"
    env = {"ASYNC_MODE": "eventlet", "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port),
           "MQTT_TOPIC_PREFIX": prefix, "MQTT_CLIENT_ID": f"hostile-{uuid.uuid4().hex[:6]}",
           "DATABASE_PATH": str(work / "chat.db"), "RATE_LIMIT": "0"}
    server = ServerProcess(env, log_path=work / "server.log").start()
    try:
        one_room = joins(server, broker.port, prefix, args.clients, rooms=1)
        idle = idle_connections(server, args.idle)
    finally:
        server.stop()
    server = ServerProcess(env | {"MQTT_CLIENT_ID": f"hostile-{uuid.uuid4().hex[:6]}"},
                           log_path=work / "server2.log").start()
    try:
        spread = joins(server, broker.port, prefix, args.clients, rooms=50)
    finally:
        server.stop()
        broker.stop()
    print("| scenario | figure |\n|---|---|")
    print(f"| {args.clients} client_ids join one room (MAX_ROOM_MEMBERS 1000) | RSS {one_room['rss_before_mb']:.0f} → "
          f"{one_room['rss_after_mb']:.0f} MB; one page received {one_room['page_bytes'] / 1e6:.2f} MB "
          f"({one_room['joins_seen']} join events) |")
    print(f"| {args.clients} client_ids join 50 rooms | RSS {spread['rss_before_mb']:.0f} → {spread['rss_after_mb']:.0f} MB; "
          f"the lobby page received {spread['page_bytes'] / 1e6:.2f} MB ({spread['joins_seen']} join events) |")
    print(f"| {idle['idle']} half-sent HTTP connections held open | /healthz: {idle['healthz']} in "
          f"{idle['healthz_ms']:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
