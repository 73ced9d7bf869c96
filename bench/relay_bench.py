"""Relay benchmark: our server vs an ideal minimal paho relay, same broker, same run.

    make bench                      # or: .venv/bin/python -m bench.relay_bench --runs 3
    BENCH_QUICK=1 make bench        # a smoke run of every scenario (seconds; the tests run it)

Measures, against a mosquitto started here (nodelay, unlimited queue):
- throughput: N QoS 1 messages published as fast as paho allows (at most
  100 in flight), time until the last one arrives on messages/out; lossless
  or it says how many were lost;
- the same ideal relay on eventlet's green threads and sockets (our default
  async mode): what eventlet itself costs, before any of our code;
- latency p50/p99 at a fixed rate: MQTT in -> MQTT out, and for our server
  also MQTT in -> a Socket.IO client in the room;
- throughput of 1 and 2 instances with Redis and a shared subscription
  (docs/SCALING.md) beside one instance without (`--instances`, none to skip).
Prints markdown tables with the medians of the runs and the ratios.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing
import os
import statistics
import subprocess
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
from bench import nodered  # noqa: E402
from bench.ws_receivers import receiver_process  # noqa: E402
from mqtt_service.callbacks import set_tcp_nodelay  # noqa: E402
from support import Mosquitto, RedisServer, ServerProcess, free_port, stop_process, wait_for  # noqa: E402


class OutCollector:
    """Subscribes to `<prefix>/messages/out` and records when each message number arrives."""

    def __init__(self, port: int, prefix: str):
        self.arrivals: dict[int, tuple[float, float]] = {}  # n -> (sent, received)
        self.done = threading.Event()
        self.expected = 0
        self._ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-sub-{uuid.uuid4().hex[:6]}")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/messages/out", qos=1)
        self.client.on_subscribe = lambda *a: self._ready.set()
        self.client.on_message = self._on_message
        self.client.on_socket_open = lambda client, userdata, sock: set_tcp_nodelay(sock)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self._ready.wait(20)

    def _on_message(self, client, userdata, message):
        received = time.perf_counter()
        body = json.loads(message.payload)
        n, sent = parse_content(body.get("content") or body.get("message"))
        self.arrivals[n] = (sent, received)
        if len(self.arrivals) >= self.expected:
            self.done.set()

    def reset(self, expected: int) -> None:
        self.arrivals = {}
        self.expected = expected
        self.done.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def parse_content(text: str) -> tuple[int, float]:
    n, sent = text.split()
    return int(n), float(sent)


class Publisher:
    def __init__(self, port: int, prefix: str, in_flight: int = 100):
        self.topic = f"{prefix}/messages/in"
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:6]}")
        self.client.max_inflight_messages_set(in_flight)  # bounded in flight: no broker queue overflow
        self.client.max_queued_messages_set(0)
        self.client.on_socket_open = lambda client, userdata, sock: set_tcp_nodelay(sock)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, n: int) -> None:
        # With a username: Node-RED's flow (../shared/bench/nodered) drops messages without one.
        payload = json.dumps({"client_id": "bench-device", "username": "bench-device",
                              "message": f"{n} {time.perf_counter():.6f}"})
        self.client.publish(self.topic, payload, qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class IdPublisher(Publisher):
    """The benchmark's publisher, each message with its own message_id (exactly-once devices)."""

    def send(self, n: int) -> None:
        payload = json.dumps({"client_id": "bench-device", "username": "bench-device", "message_id": f"m{n}",
                              "message": f"{n} {time.perf_counter():.6f}"})
        self.client.publish(self.topic, payload, qos=1)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@contextlib.contextmanager
def no_collector_pauses():
    """The measuring process's own garbage collector paused ~20-30 ms once per run, and
    the messages sent or received meanwhile were ~1 % of a 3 s run: the p99 of every relay
    measured this process. Collected before, paused during."""
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def throughput(publisher: Publisher, collector: OutCollector, count: int, first: int) -> tuple[float, int]:
    with no_collector_pauses():
        return _throughput(publisher, collector, count, first)


def _throughput(publisher: Publisher, collector: OutCollector, count: int, first: int) -> tuple[float, int]:
    collector.reset(count)
    start = time.perf_counter()
    for n in range(first, first + count):
        publisher.send(n)
    collector.done.wait(120)
    got = len(collector.arrivals)
    last = max((received for _, received in collector.arrivals.values()), default=start)
    return got / (last - start), count - got


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used (Linux /proc)."""
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced(publisher: Publisher, rate: int, seconds: float, first: int) -> int:
    """Publish at `rate` msg/s for `seconds`; returns how many were sent."""
    count = int(rate * seconds)
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # pacing the load generator
        publisher.send(first + i)
    return count


def latency(publisher: Publisher, collector: OutCollector, rate: int, seconds: float, first: int):
    count = int(rate * seconds)
    collector.reset(count)
    with no_collector_pauses():
        paced(publisher, rate, seconds, first)
        collector.done.wait(60)
    delays = [(received - sent) * 1000 for sent, received in collector.arrivals.values()]
    return percentile(delays, 0.5), percentile(delays, 0.99), count - len(delays)


class SocketLatency:
    """A web client in the lobby, in a process of its own (bench/ws_receivers.py: Engine.IO
    frames read on one thread, its own CPU reported).

    python-socketio's threaded client runs each event on a new thread (~290 µs of CPU
    per event here, and out of order): at 1 000 msg/s it measured itself, not the server
    (BASELINES trap 5). perf_counter is CLOCK_MONOTONIC on Linux, shared by all processes.
    """

    def __init__(self, url: str):
        context = multiprocessing.get_context("spawn")
        self.commands, child_end = context.Pipe()
        self.process = context.Process(target=receiver_process, args=(url, 1, True, child_end), daemon=True)
        self.process.start()
        assert self.commands.poll(30) and self.commands.recv() == "joined"

    def measure(self, publisher: Publisher, rate: int, seconds: float, first: int):
        """(p50 ms, p99 ms, lost, receiver CPU µs per event)."""
        expected = int(rate * seconds)
        self.commands.send(expected)
        with no_collector_pauses():
            paced(publisher, rate, seconds, first)
        got, _, delays, cpu = self.commands.recv() if self.commands.poll(120) else (0, 0.0, [], 0.0)
        return (percentile(delays, 0.5), percentile(delays, 0.99), expected - got, cpu * 1e6 / max(1, got))

    def close(self):
        self.commands.send(None)
        self.process.join(10)


def run_target(name: str, broker: Mosquitto, args, workdir: Path) -> dict:
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    server = relay = None
    if name in ("ideal", "ideal-eventlet"):
        relay = subprocess.Popen([sys.executable, str(ROOT / "bench" / "ideal_relay.py"), str(broker.port), prefix]
                                 + (["--eventlet"] if name == "ideal-eventlet" else []))
    elif name == "nodered":
        relay = nodered.start(args.red_js, broker.port, prefix, workdir, free_port())
    else:
        env = {"ASYNC_MODE": args.async_mode, "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port),
               "MQTT_TOPIC_PREFIX": prefix, "MQTT_CLIENT_ID": f"bench-bridge-{prefix}",
               "DATABASE_PATH": str(workdir / f"{prefix}.db"), "RATE_LIMIT": "0", "LOG_LEVEL": "WARNING"}
        server = ServerProcess(env, log_path=workdir / f"{prefix}.log").start()
    collector = OutCollector(broker.port, prefix)
    publisher = Publisher(broker.port, prefix)
    results: dict = {}
    try:
        # Warm up (and, for the ideal relay, wait until it has subscribed).
        collector.reset(1)
        wait_for(lambda: (publisher.send(0), collector.done.wait(0.5))[1], timeout=30, what=f"{name} relaying")
        next_n = 1
        relay_pid = relay.pid if relay is not None else server.proc.pid
        cpu_before = cpu_seconds(relay_pid)
        results["throughput"], results["lost"] = throughput(publisher, collector, args.messages, next_n)
        results["cpu_us"] = (cpu_seconds(relay_pid) - cpu_before) * 1e6 / args.messages
        next_n += args.messages
        for rate in args.rates:
            results[f"mqtt@{rate}"] = latency(publisher, collector, rate, args.seconds, next_n)
            next_n += int(rate * args.seconds)
        if server is not None:
            web = SocketLatency(server.url)
            try:
                for rate in args.rates:
                    results[f"socketio@{rate}"] = web.measure(publisher, rate, args.seconds, next_n)
                    next_n += int(rate * args.seconds)
            finally:
                web.close()
    finally:
        publisher.close()
        collector.close()
        if relay is not None:
            stop_process(relay)
        if server is not None:
            server.stop()
    return results


def run_cluster(instances: int, broker: Mosquitto, redis: RedisServer | None, args, workdir: Path,
                with_ids: bool = False) -> dict:
    """Throughput of N instances sharing the inbound topics (PROTOCOL 8), with Redis and one
    history: CPU per message is the instances' and Redis's together. Without `redis`: one
    instance alone (the baseline of the message_id rows)."""
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    servers = []
    for index in range(instances):
        env = {"ASYNC_MODE": args.async_mode, "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port),
               "MQTT_TOPIC_PREFIX": prefix, "MQTT_CLIENT_ID": f"bench-bridge-{prefix}-{index}",
               "DATABASE_PATH": str(workdir / f"{prefix}.db"), "DATABASE_URL": args.database_url,
               "RATE_LIMIT": "0", "LOG_LEVEL": "WARNING"}
        if redis is not None:
            env.update({"REDIS_URL": redis.url, "MQTT_SHARED_GROUP": prefix, "INSTANCE_ID": f"i{index}"})
        servers.append(ServerProcess(env, log_path=workdir / f"{prefix}-{index}.log").start())
    collector = OutCollector(broker.port, prefix)
    publisher = (IdPublisher if with_ids else Publisher)(broker.port, prefix)
    pids = [server.proc.pid for server in servers] + ([redis.proc.pid] if redis is not None else [])
    try:
        collector.reset(1)
        wait_for(lambda: (publisher.send(0), collector.done.wait(0.5))[1], timeout=30, what="cluster relaying")
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        rate, lost = throughput(publisher, collector, args.messages, 1)
        cpu_us = (sum(cpu_seconds(pid) for pid in pids) - cpu_before) * 1e6 / args.messages
        return {"throughput": rate, "lost": lost, "cpu_us": cpu_us}
    finally:
        publisher.close()
        collector.close()
        for server in servers:
            server.stop()


def cluster_report(single: list[dict], clusters: dict[int, list[dict]], with_ids: dict[str, list[dict]]) -> str:
    """The several-instance table, with issue 24's targets beside the ratios."""
    t_one, cpu_one = median_of(single, "throughput"), median_of(single, "cpu_us")
    lines = ["", "Several instances (Redis + `$share` subscription + one history), throughput run only "
             "(targets: throughput of 2 ≥ 0.8× one instance; CPU per message ≤ 1.5× one instance):", "",
             "| set-up | throughput MQTT in → out (msg/s) | vs one instance | lost | CPU per message, "
             "instances + Redis (µs) | CPU vs one instance |", "|---|---|---|---|---|---|",
             f"| one instance, no Redis (above) | {t_one:,.0f} | 1.00 | {sum(r['lost'] for r in single)} | "
             f"{cpu_one:.0f} | 1.00 |"]

    def row(label: str, runs: list[dict], base_rate: float, base_cpu: float) -> None:
        rate, cpu = median_of(runs, "throughput"), median_of(runs, "cpu_us")
        lines.append(f"| {label} | {rate:,.0f} | {rate / base_rate:.2f} | {sum(r['lost'] for r in runs)} | "
                     f"{cpu:.0f} | {cpu / base_cpu:.2f} |")

    for count, runs in clusters.items():
        row(f"{count} instance{'s' if count > 1 else ''} with Redis", runs, t_one, cpu_one)
    if with_ids:
        alone = with_ids["alone"]
        base_rate, base_cpu = median_of(alone, "throughput"), median_of(alone, "cpu_us")
        row("devices with message_id: one instance, no Redis", alone, base_rate, base_cpu)
        for count in clusters:
            row(f"devices with message_id: {count} instance{'s' if count > 1 else ''} with Redis",
                with_ids[str(count)], base_rate, base_cpu)
    return "\n".join(lines)


def median_of(runs: list[dict], key: str, index: int | None = None) -> float:
    values = [run[key][index] if index is not None else run[key] for run in runs if key in run]
    return statistics.median(values)


def report(ideal: list[dict], ours: list[dict], args, peers: list[tuple[str, str, list[dict]]]) -> str:
    """The main table: the ideal relay, this server and their ratio, then for each peer
    (the ideal relay on eventlet; Node-RED with BENCH_NODERED=1) its figure and ours/its."""
    header = "| measurement | ideal paho relay | this server | ratio (server/ideal) |"
    rule = "|---|---|---|---|"
    for label, short, _ in peers:
        header += f" {label} | ratio (server/{short}) |"
        rule += "---|---|"
    lines = [
        f"Runs: {args.runs} (medians), async mode `{args.async_mode}`, {args.messages} messages per throughput run, "
        f"{args.seconds:g} s per latency rate, QoS 1, mosquitto with `set_tcp_nodelay true`.",
        "",
        header,
        rule,
    ]

    def row(label: str, key: str, index: int | None, fmt: str, ours_key: str | None = None) -> None:
        # The server's web path is compared with the others' MQTT in -> out.
        via = " (MQTT out)" if ours_key else ""
        base, mine = median_of(ideal, key, index), median_of(ours, ours_key or key, index)
        line = f"| {label} | {fmt.format(base)}{via} | {fmt.format(mine)} | {mine / base:.2f} |"
        for _, _, runs in peers:
            peer = median_of(runs, key, index)
            line += f" {fmt.format(peer)}{via} | {mine / peer:.2f} |"
        lines.append(line)

    def total(label: str, count) -> None:
        lines.append(f"| {label} | {count(ideal)} | {count(ours)} | |"
                     + "".join(f" {count(runs)} | |" for _, _, runs in peers))

    row("throughput MQTT in → out (msg/s)", "throughput", None, "{:,.0f}")
    total("messages lost in throughput runs", lambda runs: sum(r["lost"] for r in runs))
    # CPU per message is steadier than msg/s on a shared machine: it ignores time spent waiting.
    row("relay CPU per message in the throughput run (µs)", "cpu_us", None, "{:.0f}")
    for rate in args.rates:
        for label, index in (("p50", 0), ("p99", 1)):
            row(f"latency MQTT in → out {label} at {rate} msg/s (ms)", f"mqtt@{rate}", index, "{:.2f}")
    for rate in args.rates:
        for label, index in (("p50", 0), ("p99", 1)):
            row(f"latency MQTT in → Socket.IO client {label} at {rate} msg/s (ms)", f"mqtt@{rate}", index,
                "{:.2f}", ours_key=f"socketio@{rate}")
    for rate in args.rates:
        lines.append(f"| Socket.IO receiver's own CPU per event at {rate} msg/s (µs) | | "
                     f"{median_of(ours, f'socketio@{rate}', 3):.0f} | |" + " | |" * len(peers))
    total("messages lost in latency runs", lambda runs: sum(run[k][2] for run in runs for k in run if "@" in k))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=5000)
    parser.add_argument("--rates", type=int, nargs="+", default=[200, 1000])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--async-mode", default="eventlet", choices=["eventlet", "threading"])
    parser.add_argument("--instances", type=int, nargs="*", default=[1, 2],
                        help="also measure throughput of these numbers of instances with Redis (none: skip)")
    parser.add_argument("--database-url", default="", help="PostgreSQL history for the several-instance runs")
    parser.add_argument("--no-message-ids", dest="message_ids", action="store_false",
                        help="skip the several-instance rows of devices that send a message_id")
    args = parser.parse_args()
    if os.environ.get("BENCH_QUICK"):
        # A smoke run (the test suite runs it): every scenario, tiny loads, one run.
        args.runs, args.messages, args.rates, args.seconds = 1, 300, [100], 0.5
        args.instances = [2] if args.instances else []
    workdir = Path(tempfile.mkdtemp(prefix="relay-bench-"))
    args.red_js = nodered.install(workdir) if os.environ.get("BENCH_NODERED") else None
    red: list[dict] = []
    broker = Mosquitto(workdir / "mosquitto").start()
    redis = RedisServer(workdir / "redis").start() if args.instances else None
    ideal: list[dict] = []
    green: list[dict] = []
    ours: list[dict] = []
    clusters: dict[int, list[dict]] = {count: [] for count in args.instances}
    with_ids: dict[str, list[dict]] = {}  # "alone" and each count: devices sending message_id
    try:
        for run in range(args.runs):
            ideal.append(run_target("ideal", broker, args, workdir))
            green.append(run_target("ideal-eventlet", broker, args, workdir))
            ours.append(run_target("server", broker, args, workdir))
            if args.red_js:
                red.append(run_target("nodered", broker, args, workdir))
            for count in args.instances:
                clusters[count].append(run_cluster(count, broker, redis, args, workdir))
            if args.instances and args.message_ids:
                with_ids.setdefault("alone", []).append(run_cluster(1, broker, None, args, workdir, with_ids=True))
                for count in args.instances:
                    with_ids.setdefault(str(count), []).append(
                        run_cluster(count, broker, redis, args, workdir, with_ids=True))
            print(f"run {run + 1}: ideal {ideal[-1]['throughput']:,.0f} msg/s, "
                  f"ideal on eventlet {green[-1]['throughput']:,.0f} msg/s, "
                  f"server {ours[-1]['throughput']:,.0f} msg/s"
                  + "".join(f", {count} with Redis {runs[-1]['throughput']:,.0f} msg/s"
                            for count, runs in clusters.items()), file=sys.stderr, flush=True)
    finally:
        broker.stop()
        if redis is not None:
            redis.stop()
    peers = [("ideal relay on eventlet", "ideal on eventlet", green)] + ([("Node-RED 4.1.8", "Node-RED", red)] if red else [])
    sys.stdout.write(report(ideal, ours, args, peers) + "\n")
    if args.instances:
        sys.stdout.write(cluster_report(ours, clusters, with_ids) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
