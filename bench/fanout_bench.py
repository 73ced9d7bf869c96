"""Fan-out benchmark: MQTT in → many web clients, this server beside a bare
Flask-SocketIO eventlet relay (bench/bare_socketio_relay.py) on the same harness.

    .venv/bin/python -m bench.fanout_bench        # make bench runs it after relay_bench

Scenarios, each against both relays, one after the other on one mosquitto:
- max fan-out: 50 web clients; messages published as fast as paho allows (100 in
  flight); deliveries/s until every client has every message, and the relay's CPU
  per delivery;
- steady: 200 web clients at 100 msg/s: p50/p99 MQTT in → web client, lost;
- idle: 500 connected web clients: the relay's resident memory.
Web clients are minimal WebSocket/Engine.IO receivers (bench/ws_receivers.py), many
per thread, in several processes so the harness is not the bottleneck; their CPU is
reported.
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from bench.relay_bench import Publisher, cpu_seconds, no_collector_pauses, percentile  # noqa: E402
from bench.ws_receivers import Receivers, receiver_process  # noqa: E402
from support import Mosquitto, ServerProcess, free_port, port_open, stop_process, wait_for  # noqa: E402

RECEIVER_PROCESSES = 4


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class WebClients:
    def __init__(self, url: str, count: int, join: bool = True):
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for index in range(RECEIVER_PROCESSES):
            share = count // RECEIVER_PROCESSES + (1 if index < count % RECEIVER_PROCESSES else 0)
            if share == 0:
                continue
            parent, child = context.Pipe()
            process = context.Process(target=receiver_process, args=(url, share, join, child), daemon=True)
            process.start()
            self.pipes.append((parent, share))
            self.processes.append(process)
        for parent, _ in self.pipes:
            assert parent.poll(120) and parent.recv() == "joined", "web clients did not join"

    def expect(self, messages: int) -> None:
        for parent, share in self.pipes:
            parent.send(messages * share)

    def results(self) -> tuple[int, float, list[float], float]:
        """(deliveries, last arrival, delays ms, receivers' CPU s)."""
        got, last, delays, cpu = 0, 0.0, [], 0.0
        for parent, _ in self.pipes:
            assert parent.poll(120), "web clients did not answer"
            g, newest, d, c = parent.recv()
            got, last, cpu = got + g, max(last, newest), cpu + c
            delays.extend(d)
        return got, last, delays, cpu

    def close(self) -> None:
        for parent, _ in self.pipes:
            parent.send(None)
        for process in self.processes:
            process.join(15)


def start_relay(kind: str, broker: Mosquitto, prefix: str, workdir: Path):
    """(url, pid, stop) of our server or the bare relay."""
    if kind == "server":
        env = {"ASYNC_MODE": "eventlet", "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port),
               "MQTT_TOPIC_PREFIX": prefix, "MQTT_CLIENT_ID": f"fanout-{prefix}", "RATE_LIMIT": "0",
               "DATABASE_PATH": str(workdir / f"{prefix}.db"), "LOG_LEVEL": "WARNING",
               # Every web client of the benchmark comes from 127.0.0.1: one address playing
               # hundreds of people, past the per-address shares meant for strangers.
               "MAX_WEB_SESSIONS_PER_ADDRESS": "1000", "MAX_CONNECTIONS_PER_ADDRESS": "2000"}
        server = ServerProcess(env, log_path=workdir / f"{prefix}.log").start()
        return server.url, server.proc.pid, server.stop
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "bare_socketio_relay.py"), str(broker.port),
                             prefix, str(port)])
    wait_for(lambda: port_open(port), timeout=30, what="bare relay")
    return f"http://127.0.0.1:{port}", proc.pid, lambda: stop_process(proc)


def scenario(kind: str, broker: Mosquitto, args, workdir: Path) -> dict:
    results: dict = {}
    prefix = f"fan{uuid.uuid4().hex[:6]}"
    url, pid, stop = start_relay(kind, broker, prefix, workdir)
    publisher = Publisher(broker.port, prefix)
    n = 0
    try:
        # Max fan-out to `clients` web clients.
        probe = Receivers(url, 1)  # warm-up: the relay has subscribed and relays
        try:
            def relayed() -> bool:
                publisher.send(0)
                probe.run_until(1, 0.5)
                return probe.got > 0
            wait_for(relayed, timeout=30, what=f"{kind} relaying")
        finally:
            probe.close()
        n = 1
        web = WebClients(url, args.clients)
        try:
            web.expect(args.messages)
            cpu = cpu_seconds(pid)
            start = time.perf_counter()
            for _ in range(args.messages):
                publisher.send(n)
                n += 1
            got, last, _, receiver_cpu = web.results()
            results["deliveries_per_s"] = got / max(last - start, 1e-9)
            results["cpu_us_per_delivery"] = (cpu_seconds(pid) - cpu) * 1e6 / max(got, 1)
            results["fanout_lost"] = args.messages * args.clients - got
            results["receiver_cpu_us"] = receiver_cpu * 1e6 / max(got, 1)
        finally:
            web.close()
        # Steady load to many clients.
        web = WebClients(url, args.steady_clients)
        try:
            count = int(args.steady_rate * args.seconds)
            web.expect(count)
            with no_collector_pauses():
                start = time.perf_counter()
                for i in range(count):
                    delay = start + i / args.steady_rate - time.perf_counter()
                    if delay > 0:
                        time.sleep(delay)  # pacing the load generator
                    publisher.send(n)
                    n += 1
            got, _, delays, _ = web.results()
            results["steady_p50"], results["steady_p99"] = percentile(delays, 0.5), percentile(delays, 0.99)
            results["steady_lost"] = count * args.steady_clients - got
        finally:
            web.close()
        # Idle connected clients. Connected, not joined: 500 joins cost every member every
        # join event (O(N²) frames), which measures the Python receivers, not the relay.
        web = WebClients(url, args.idle_clients, join=False)
        try:
            results["idle_rss_mb"] = rss_mb(pid)
        finally:
            web.close()
    finally:
        publisher.close()
        stop()
    return results


def report(bare: list[dict], ours: list[dict], args) -> str:
    def med(runs, key):
        return statistics.median(run[key] for run in runs)

    rows = [
        ("", "deliveries_per_s", f"max fan-out to {args.clients} web clients (deliveries/s)", "{:,.0f}"),
        ("", "cpu_us_per_delivery", "relay CPU per delivery (µs)", "{:.1f}"),
        ("", "receiver_cpu_us", "receivers' CPU per delivery, all processes (µs)", "{:.1f}"),
        ("sum", "fanout_lost", "deliveries lost in the max fan-out run", "{:.0f}"),
        ("", "steady_p50", f"{args.steady_clients} clients at {args.steady_rate} msg/s: p50 MQTT in → client (ms)",
         "{:.2f}"),
        ("", "steady_p99", f"{args.steady_clients} clients at {args.steady_rate} msg/s: p99 (ms)", "{:.2f}"),
        ("sum", "steady_lost", f"{args.steady_clients} clients at {args.steady_rate} msg/s: deliveries lost",
         "{:.0f}"),
        ("", "idle_rss_mb", f"relay RSS with {args.idle_clients} idle web clients (MB)", "{:.0f}"),
    ]
    lines = ["", f"Fan-out: runs {args.runs} (medians), eventlet, {args.messages} messages in the max fan-out "
             f"run, {args.seconds:g} s of steady load; web clients are minimal websocket receivers in "
             f"{RECEIVER_PROCESSES} processes.", "",
             "| measurement | bare Flask-SocketIO relay | this server | ratio (server/bare) |", "|---|---|---|---|"]
    for kind, key, label, fmt in rows:
        if kind == "sum":
            b, o = sum(r[key] for r in bare), sum(r[key] for r in ours)
        else:
            b, o = med(bare, key), med(ours, key)
        ratio = f"{o / b:.2f}" if kind != "sum" and b else ""
        lines.append(f"| {label} | {fmt.format(b)} | {fmt.format(o)} | {ratio} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--steady-clients", type=int, default=200)
    parser.add_argument("--steady-rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--idle-clients", type=int, default=500)
    args = parser.parse_args()
    if os.environ.get("BENCH_QUICK"):
        args.runs, args.clients, args.messages = 1, 5, 20
        args.steady_clients, args.steady_rate, args.seconds, args.idle_clients = 5, 20, 0.5, 10
    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    broker = Mosquitto(workdir / "mosquitto").start()
    bare, ours = [], []
    try:
        for run in range(args.runs):
            bare.append(scenario("bare", broker, args, workdir))
            ours.append(scenario("server", broker, args, workdir))
            print(f"fan-out run {run + 1}: bare {bare[-1]['deliveries_per_s']:,.0f}/s, "
                  f"server {ours[-1]['deliveries_per_s']:,.0f}/s", file=sys.stderr, flush=True)
    finally:
        broker.stop()
    sys.stdout.write(report(bare, ours, args) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
