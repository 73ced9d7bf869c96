"""Fan-out benchmark: MQTT in → many web clients, this server beside the stock
Flask-SocketIO eventlet relay (bench/bare_socketio_relay.py: paho's on_message calls
socketio.emit(..., to=room), as the docs show) on the same harness.

    .venv/bin/python -m bench.fanout_bench        # make bench runs it after relay_bench

Scenarios, each against both relays, one after the other on one mosquitto:
- max fan-out: 50 web clients; 2 000 messages published as fast as paho allows (100
  in flight); deliveries/s = deliveries / (last arrival - first publication), and the
  relay's CPU per delivery (its kernel share too). The receivers only count here
  (bytes.count over each read, in C), so they cost a few µs per delivery and keep up;
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
import signal
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

# `--profile DIR`: a sitecustomize put on the relays' PYTHONPATH; SIGUSR1 starts yappi
# (CPU clock, greenlet-aware: eventlet runs everything on one thread), SIGUSR2 saves the
# profile of the max fan-out window as a pstats file.
PROFILER = """
import os, signal
_out = os.environ.get("FANOUT_PROFILE")
if _out:
    def _start(*_):
        import yappi
        yappi.set_clock_type("cpu")
        yappi.set_context_backend("greenlet")
        yappi.start(builtins=True)
    def _stop(*_):
        import yappi
        yappi.stop()
        yappi.get_func_stats().save(_out, type="pstat")
        yappi.clear_stats()
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
"""


def user_system(pid: int) -> tuple[float, float]:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(fields[11]) / os.sysconf("SC_CLK_TCK"), int(fields[12]) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class WebClients:
    def __init__(self, url: str, count: int, join: bool = True, count_only: bool = False):
        context = multiprocessing.get_context("spawn")
        self.pipes, self.processes = [], []
        for index in range(RECEIVER_PROCESSES):
            share = count // RECEIVER_PROCESSES + (1 if index < count % RECEIVER_PROCESSES else 0)
            if share == 0:
                continue
            parent, child = context.Pipe()
            process = context.Process(target=receiver_process, args=(url, share, join, child, count_only),
                                      daemon=True)
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


def start_relay(kind: str, broker: Mosquitto, prefix: str, workdir: Path, bare_script: str = ""):
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
    proc = subprocess.Popen([sys.executable, bare_script or str(ROOT / "bench" / "bare_socketio_relay.py"), str(broker.port),
                             prefix, str(port)])
    wait_for(lambda: port_open(port), timeout=30, what="bare relay")
    return f"http://127.0.0.1:{port}", proc.pid, lambda: stop_process(proc)


def scenario(kind: str, broker: Mosquitto, args, workdir: Path, run: int = 0) -> dict:
    results: dict = {}
    prefix = f"fan{uuid.uuid4().hex[:6]}"
    if args.profile:
        os.environ["FANOUT_PROFILE"] = str(Path(args.profile).resolve() / f"{kind}-{run + 1}.pstat")
    url, pid, stop = start_relay(kind, broker, prefix, workdir, args.bare)
    publisher = None
    n = 0
    try:
        # Inside the try: a publisher that cannot connect must not leave the relay running.
        publisher = Publisher(broker.port, prefix, in_flight=args.in_flight)
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
        web = WebClients(url, args.clients, count_only=True)
        try:
            web.expect(args.messages)
            if args.profile:
                os.kill(pid, signal.SIGUSR1)
                time.sleep(0.5)
            cpu, (user, system) = cpu_seconds(pid), user_system(pid)
            start = time.perf_counter()
            for _ in range(args.messages):
                publisher.send(n)
                n += 1
            got, last, _, receiver_cpu = web.results()
            if args.profile:
                os.kill(pid, signal.SIGUSR2)
                saved = Path(os.environ["FANOUT_PROFILE"])
                wait_for(saved.exists, timeout=120, what="the profile saved")
                time.sleep(1)
            results["deliveries_per_s"] = got / max(last - start, 1e-9)
            results["cpu_us_per_delivery"] = (cpu_seconds(pid) - cpu) * 1e6 / max(got, 1)
            user_after, system_after = user_system(pid)
            results["system_share"] = (system_after - system) / max(user_after - user + system_after - system, 1e-9)
            results["fanout_lost"] = args.messages * args.clients - got
            results["receiver_cpu_us"] = receiver_cpu * 1e6 / max(got, 1)
        finally:
            web.close()
        if args.max_only:
            return results
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
        if publisher is not None:
            publisher.close()
        stop()
    return results


def report(bare: list[dict], ours: list[dict], args) -> str:
    def med(runs, key):
        return statistics.median(run[key] for run in runs)

    rows = [
        ("", "deliveries_per_s", f"max fan-out to {args.clients} web clients (deliveries/s)", "{:,.0f}"),
        ("", "cpu_us_per_delivery", "relay CPU per delivery (µs)", "{:.1f}"),
        ("", "system_share", "  of which in the kernel", "{:.0%}"),
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
             "| measurement | stock Flask-SocketIO relay | this server | ratio (server/stock) |", "|---|---|---|---|"]
    for kind, key, label, fmt in rows:
        if key not in bare[0] or key not in ours[0]:  # --max-only
            continue
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
    parser.add_argument("--in-flight", type=int, default=100, help="QoS 1 messages the publisher keeps in flight "
                        "(BASELINES.md measured the stock relay with 500)")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--steady-clients", type=int, default=200)
    parser.add_argument("--steady-rate", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--idle-clients", type=int, default=500)
    parser.add_argument("--bare", default="", help="another bare relay script (to compare variants)")
    parser.add_argument("--max-only", action="store_true", help="the max fan-out scenario alone")
    parser.add_argument("--only", choices=("bare", "server"), help="one side alone (exploring)")
    parser.add_argument("--profile", metavar="DIR", help="yappi (must be importable) profiles each relay during "
                        "the max fan-out run: DIR/<bare|server>-<run>.pstat")
    args = parser.parse_args()
    if os.environ.get("BENCH_QUICK"):
        args.runs, args.clients, args.messages = 1, 5, 20
        args.steady_clients, args.steady_rate, args.seconds, args.idle_clients = 5, 20, 0.5, 10
    workdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    if args.profile:
        Path(args.profile).mkdir(parents=True, exist_ok=True)
        (workdir / "profiler").mkdir()
        (workdir / "profiler" / "sitecustomize.py").write_text(PROFILER)
        os.environ["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(workdir / "profiler"), os.environ.get("PYTHONPATH", "")]))
    broker = Mosquitto(workdir / "mosquitto").start()
    bare, ours = [], []
    try:
        for run in range(args.runs):
            for kind, runs in (("bare", bare), ("server", ours)):
                if args.only in (None, kind):
                    runs.append(scenario(kind, broker, args, workdir, run))
                    r = runs[-1]
                    print(f"fan-out run {run + 1}: {kind} {r['deliveries_per_s']:,.0f} deliveries/s, "
                          f"{r['cpu_us_per_delivery']:.1f} µs CPU/delivery ({r['system_share']:.0%} kernel), "
                          f"receivers {r['receiver_cpu_us']:.1f} µs, lost {r['fanout_lost']}",
                          file=sys.stderr, flush=True)
    finally:
        broker.stop()
    if bare and ours:
        sys.stdout.write(report(bare, ours, args) + "\n")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
