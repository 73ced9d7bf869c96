"""Checks docs/SCALING.md's capacity model: predicts the CPU of 4 instances and of Redis from
runs of 1 and 2, then measures 4 (issue 24).

    .venv/bin/python -m bench.capacity_check [--rate 1000] [--seconds 60] [--devices 100]

Everything on this machine: a mosquitto, a redis-server, the instances (`$share`
subscription, Redis, one SQLite history; `--database-url` for PostgreSQL) and a publisher
sending `--rate` device messages a second, spread over `--devices` device ids.

The model (per-message terms, µs of CPU, at a steady rate R over N instances, each taking R/N):

    each instance = idle + (R / N) * own + R * read
    Redis         = idle_redis + R * per_message + R * N * per_reader

`own`: handling a message (intake, store, publish); `read`: reading one Socket.IO channel
publication (every instance reads every one; at a steady rate there is about one per
message, bursts share one); `per_reader`: Redis's cost of delivering a publication to one
subscribed instance. Idle is measured with no traffic; 1 instance at R/4 and 2 at R/2 give the
terms (each instance at the per-instance rate of the check: a message costs less in a burst,
where it shares a commit and a publication, than alone); 4 at R are the check (within 25 %).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from bench.relay_bench import cpu_seconds  # noqa: E402
from support import Mosquitto, RedisServer, ServerProcess, wait_for  # noqa: E402


class Counter:
    """Counts what arrives on messages/out (each message once: nothing lost)."""

    def __init__(self, port: int, prefix: str):
        self.seen: set[str] = set()
        self.lock = threading.Lock()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cap-sub-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/messages/out", qos=1)
        self.client.on_subscribe = lambda *a: ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert ready.wait(20)

    def _on_message(self, client, userdata, message) -> None:
        content = json.loads(message.payload).get("content", "")
        with self.lock:
            self.seen.add(content)

    def count(self, tag: str) -> int:
        with self.lock:
            return sum(1 for content in self.seen if content.startswith(tag))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def send_at_rate(port: int, prefix: str, tag: str, rate: int, seconds: float, devices: int) -> int:
    """Device messages at `rate`/s for `seconds`, round-robin over `devices` ids, QoS 1."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cap-pub-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.loop_start()
    total = int(rate * seconds)
    start = time.monotonic()
    infos = []
    try:
        for n in range(total):
            delay = start + n / rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)  # a paced load generator (a benchmark, not a test)
            payload = json.dumps({"client_id": f"dev-{n % devices}", "message": f"{tag} {n}"})
            infos.append(client.publish(f"{prefix}/messages/in", payload, qos=1))
        for info in infos:  # disconnecting earlier would drop what paho still queues
            info.wait_for_publish(timeout=120)
    finally:
        client.disconnect()
        client.loop_stop()
    return total


class Cluster:
    def __init__(self, count: int, broker: Mosquitto, redis: RedisServer, workdir: Path, database_url: str):
        self.prefix = f"cap{uuid.uuid4().hex[:6]}"
        self.servers = []
        for index in range(count):
            env = {"MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port), "MQTT_TOPIC_PREFIX": self.prefix,
                   "MQTT_CLIENT_ID": f"cap-bridge-{self.prefix}-{index}", "REDIS_URL": redis.url,
                   "MQTT_SHARED_GROUP": self.prefix, "INSTANCE_ID": f"i{index}",
                   "DATABASE_PATH": str(workdir / f"{self.prefix}.db"), "DATABASE_URL": database_url,
                   "RATE_LIMIT": "0", "LOG_LEVEL": os.environ.get("CAP_LOG_LEVEL", "WARNING")}
            self.servers.append(ServerProcess(env, log_path=workdir / f"{self.prefix}-{index}.log").start())

    def cpu(self) -> list[float]:
        return [cpu_seconds(server.proc.pid) for server in self.servers]

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def measure(count: int, rate: int, args, broker: Mosquitto, redis: RedisServer, workdir: Path) -> dict:
    """CPU seconds per second of each instance and of Redis: idle, then under the load."""
    cluster = Cluster(count, broker, redis, workdir, args.database_url)
    counter = Counter(broker.port, cluster.prefix)
    try:
        # Warm-up: every device joins (a join costs more than a message) and caches settle.
        warm = send_at_rate(broker.port, cluster.prefix, "warm", rate, 3, args.devices)
        wait_for(lambda: counter.count("warm") >= warm, timeout=120, what="warm-up relayed")
        before, redis_before, t0 = cluster.cpu(), cpu_seconds(redis.proc.pid), time.monotonic()
        time.sleep(args.idle_seconds)  # idle: housekeeping, heartbeats, the channel's pings
        idle_elapsed = time.monotonic() - t0
        mid, redis_mid, t1 = cluster.cpu(), cpu_seconds(redis.proc.pid), time.monotonic()
        sent = send_at_rate(broker.port, cluster.prefix, "load", rate, args.seconds, args.devices)
        wait_for(lambda: counter.count("load") >= sent, timeout=300, what="load relayed")
        after, redis_after, t2 = cluster.cpu(), cpu_seconds(redis.proc.pid), time.monotonic()
        return {
            "instances": count, "sent": sent, "relayed": counter.count("load"),
            "idle": [(m - b) / idle_elapsed for b, m in zip(before, mid, strict=True)],
            "redis_idle": (redis_mid - redis_before) / idle_elapsed,
            "load": [(a - m) / (t2 - t1) for m, a in zip(mid, after, strict=True)],
            "redis_load": (redis_after - redis_mid) / (t2 - t1),
            "rate": sent / (t2 - t1),
        }
    finally:
        counter.close()
        cluster.stop()


def fit(one: dict, two: dict) -> dict:
    """The model's terms (CPU seconds per message) from 1 instance at a rate r and 2 at 2r: both
    at the per-instance rate of the check, since what a message costs depends on it (a burst
    shares one commit, one channel publication and one PUBACK round; a trickle pays each)."""
    idle = (sum(one["idle"]) / 1 + sum(two["idle"]) / 2) / 2
    r1, r2 = one["rate"], two["rate"]              # r and 2r
    a = one["load"][0] - idle                       # r * own + r * read
    b = sum(two["load"]) / 2 - idle                 # r * own + 2r * read
    read = (b - a) / (r2 - r1)
    own = a / r1 - read
    redis_idle = (one["redis_idle"] + two["redis_idle"]) / 2
    ra, rb = one["redis_load"] - redis_idle, two["redis_load"] - redis_idle
    # ra = r1 * (per_message + 1 * per_reader); rb = r2 * (per_message + 2 * per_reader)
    per_reader = rb / r2 - ra / r1
    return {"idle": idle, "own": own, "read": read, "redis_idle": redis_idle,
            "per_message": ra / r1 - per_reader, "per_reader": per_reader}


def predict(model: dict, instances: int, rate: float) -> tuple[float, float]:
    instance = model["idle"] + rate / instances * model["own"] + rate * model["read"]
    redis = model["redis_idle"] + rate * model["per_message"] + rate * instances * model["per_reader"]
    return instance, redis


def report(model: dict, runs: list[dict], args) -> str:
    us = 1e6
    lines = [f"Capacity model check: 4 instances at {args.rate} msg/s (calibrated on 1 at {args.rate // 4} and 2 at "
             f"{args.rate // 2}) from {args.devices} devices, {args.seconds:g} s for the check, "
             f"history {'PostgreSQL' if args.database_url else 'SQLite'}.", "",
             "Model terms (from the 1- and 2-instance runs): "
             f"instance idle {model['idle'] * 100:.1f} % of a core; own {model['own'] * us:.0f} µs/msg; "
             f"read {model['read'] * us:.0f} µs/publication; Redis idle {model['redis_idle'] * 100:.1f} %, "
             f"{model['per_message'] * us:.0f} µs/msg + {model['per_reader'] * us:.1f} µs/msg per instance.", "",
             "| instances | msg/s | lost | each instance, measured (% of a core) | predicted | error | "
             "Redis measured | predicted | error |", "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        inst_pred, redis_pred = predict(model, run["instances"], run["rate"])
        measured = sum(run["load"]) / run["instances"]
        lines.append(
            f"| {run['instances']} | {run['rate']:,.0f} | {run['sent'] - run['relayed']} | "
            f"{measured * 100:.1f} ({', '.join(f'{x * 100:.1f}' for x in run['load'])}) | {inst_pred * 100:.1f} | "
            f"{(measured - inst_pred) / inst_pred * 100:+.0f} % | {run['redis_load'] * 100:.1f} | "
            f"{redis_pred * 100:.1f} | {(run['redis_load'] - redis_pred) / redis_pred * 100:+.0f} % |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=int, default=800, help="total of the 4-instance check (msg/s)")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--calibration-seconds", type=float, default=30.0)
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    parser.add_argument("--devices", type=int, default=100)
    parser.add_argument("--database-url", default="")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="capacity-"))
    broker = Mosquitto(workdir / "mosquitto").start()
    redis = RedisServer(workdir / "redis").start()
    try:
        check_seconds = args.seconds
        args.seconds = args.calibration_seconds
        per_instance = args.rate // 4
        one = measure(1, per_instance, args, broker, redis, workdir)
        two = measure(2, 2 * per_instance, args, broker, redis, workdir)
        args.seconds = check_seconds
        four = measure(4, 4 * per_instance, args, broker, redis, workdir)
    finally:
        broker.stop()
        redis.stop()
    model = fit(one, two)
    sys.stdout.write(report(model, [one, two, four], args) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
