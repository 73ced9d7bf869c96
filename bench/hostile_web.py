"""What a stranger on the web side can cost the server: figures for docs/SECURITY.md
(PROTOCOL section 9, transport; issue 21 findings 1 and 2).

    .venv/bin/python -m bench.hostile_web [--root DIR]

Starts its own mosquitto and `python DIR/app.py` (eventlet, API_TOKEN set, default caps;
DIR defaults to this checkout: point it at a worktree of an older commit to compare), then,
on loopback only, with /healthz probed from 127.0.0.1 throughout:
1. polling flood: 4 threads loop `GET /socket.io/?EIO=4&transport=polling` with no token
   for 20 s from one address (127.0.0.2): Engine.IO sessions created (2xx) and refused,
   server RSS before, at the end and 30 s later, /healthz latency (median, max);
2. trickling sockets: 10 100 connections send a request line, then one header line every
   ~15 s, for 45 s, from one address (127.0.0.2) and spread over 127.0.0.2-127.0.0.101:
   /healthz latency (max; a probe that gets no answer counts as its 5 s timeout), and how
   many connections the server closed.
`polling_flood` and `trickling_sockets` can be called by another bench module with any
object that has `url`, `port` and `proc.pid` (tests/support.py's ServerProcess).
Bounded in count and time; every process it starts is stopped by its PID.
"""
from __future__ import annotations

import argparse
import http.client
import importlib
import resource
import selectors
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import requests

from bench.hostile_load import rss_mb

ROOT = Path(__file__).resolve().parent.parent
PROBE_TIMEOUT = 5.0
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"



class HealthProbe:
    """Probes /healthz from 127.0.0.1 on a fresh connection every `interval` seconds, in a thread."""

    def __init__(self, url: str, interval: float = 0.2):
        self.url, self.interval = url + "/healthz", interval
        self.latencies_ms: list[float] = []
        self.failures = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            try:
                ok = requests.get(self.url, timeout=PROBE_TIMEOUT).status_code == 200
            except requests.RequestException:
                ok = False
            self.latencies_ms.append((time.perf_counter() - started) * 1000)
            self.failures += not ok
            self._stop.wait(self.interval)

    def __enter__(self) -> "HealthProbe":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def figures(self) -> dict:
        values = self.latencies_ms or [0.0]
        return {"probes": len(self.latencies_ms), "failed": self.failures,
                "median_ms": statistics.median(values), "max_ms": max(values)}


def polling_flood(server: Any, seconds: float = 20.0, threads: int = 4, source: str = "127.0.0.2",
                  after: float = 30.0) -> dict:
    """Finding 1: token-less Engine.IO handshakes in a loop; sessions created vs refused, RSS, /healthz."""
    statuses: dict[str, int] = {"created": 0, "refused": 0, "other": 0, "errors": 0}
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def flood() -> None:
        counts = dict.fromkeys(statuses, 0)
        connection = None
        while time.monotonic() < deadline:
            try:
                if connection is None:
                    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10,
                                                            source_address=(source, 0))
                connection.request("GET", HANDSHAKE)
                response = connection.getresponse()
                response.read()
                kind = "created" if 200 <= response.status < 300 else "refused" if response.status == 401 else "other"
                counts[kind] += 1
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException):
                counts["errors"] += 1
                if connection is not None:
                    connection.close()
                connection = None
        if connection is not None:
            connection.close()
        with lock:
            for kind, count in counts.items():
                statuses[kind] += count

    before = rss_mb(server.proc.pid)
    with HealthProbe(server.url) as probe:
        workers = [threading.Thread(target=flood) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    at_end = rss_mb(server.proc.pid)
    time.sleep(after)  # a benchmark, not a test: what the flood leaves behind
    return {**statuses, "rss_before_mb": before, "rss_end_mb": at_end, "rss_after_mb": rss_mb(server.proc.pid),
            "after_s": after, "healthz": probe.figures()}


def trickling_sockets(server: Any, count: int = 10_100, sources: list[str] | None = None,
                      seconds: float = 45.0, interval: float = 15.0) -> dict:
    """Finding 2: `count` connections send a request line, then a header line every `interval`
    seconds; how many the server closed in `seconds`, and /healthz meanwhile."""
    sources = sources or ["127.0.0.2"]
    selector = selectors.DefaultSelector()
    opened: dict[socket.socket, float] = {}
    closed_after: list[float] = []
    not_connected = 0

    def close(sock: socket.socket) -> None:
        closed_after.append(time.monotonic() - opened.pop(sock))
        selector.unregister(sock)
        sock.close()

    def drain(timeout: float) -> None:
        for key, _ in selector.select(timeout):
            sock = key.fileobj
            try:
                if sock.recv(4096):
                    continue  # an answer: the server closes after it
            except BlockingIOError:
                continue
            except OSError:
                pass
            close(sock)  # type: ignore[arg-type]

    def send_all(line: bytes) -> None:
        for sock in list(opened):
            try:
                sock.send(line)
            except BlockingIOError:
                pass
            except OSError:
                close(sock)

    started = time.monotonic()
    with HealthProbe(server.url) as probe:
        for number in range(count):
            sock = socket.socket()
            sock.bind((sources[number % len(sources)], 0))
            sock.settimeout(PROBE_TIMEOUT)
            try:
                sock.connect(("127.0.0.1", server.port))
            except OSError:  # the backlog is full: never accepted
                not_connected += 1
                sock.close()
                continue
            sock.setblocking(False)
            opened[sock] = time.monotonic()
            selector.register(sock, selectors.EVENT_READ)
            try:
                sock.send(b"GET /healthz HTTP/1.1\r\n")
            except BlockingIOError:
                pass
            except OSError:
                close(sock)
            if number % 200 == 0:
                drain(0)
        connected_in = time.monotonic() - started
        header = 0
        next_line = started + interval
        while time.monotonic() < started + seconds:
            drain(max(0.0, min(0.5, next_line - time.monotonic())))
            if time.monotonic() >= next_line:
                send_all(b"X-Trickle-%d: 1\r\n" % header)
                header += 1
                next_line += interval
    still_open = len(opened)
    for sock in list(opened):
        selector.unregister(sock)
        sock.close()
    selector.close()
    return {"count": count, "addresses": len(sources), "connect_s": connected_in,
            "not_connected": not_connected, "closed": len(closed_after), "still_open": still_open,
            "median_close_s": statistics.median(closed_after) if closed_after else None,
            "healthz": probe.figures(), "rss_mb": rss_mb(server.proc.pid)}


def raise_open_files_limit(wanted: int = 12_000) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout whose app.py is started")
    parser.add_argument("--flood-seconds", type=float, default=20.0)
    parser.add_argument("--sockets", type=int, default=10_100)
    parser.add_argument("--trickle-seconds", type=float, default=45.0)
    parser.add_argument("--after", type=float, default=30.0, help="RSS again this long after the flood")
    args = parser.parse_args()
    if raise_open_files_limit(args.sockets + 1_000) < args.sockets + 200:
        print(f"not enough file descriptors for {args.sockets} sockets (ulimit -n)", file=sys.stderr)
        return 2
    sys.path.insert(0, str(args.root.resolve() / "tests"))
    support = importlib.import_module("support")  # its ServerProcess starts ROOT/app.py of that checkout
    work = Path(tempfile.mkdtemp(prefix="hostile-web-"))
    broker = support.Mosquitto(work / "mosquitto").start()
    results: dict[str, dict] = {}
    try:
        scenarios = [("flood", lambda s: polling_flood(s, args.flood_seconds, after=args.after)),
                     ("one", lambda s: trickling_sockets(s, args.sockets, seconds=args.trickle_seconds)),
                     ("spread", lambda s: trickling_sockets(s, args.sockets, [f"127.0.0.{n}" for n in range(2, 102)],
                                                            seconds=args.trickle_seconds))]
        for name, run in scenarios:
            env = {"ASYNC_MODE": "eventlet", "MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port),
                   "MQTT_TOPIC_PREFIX": f"w{uuid.uuid4().hex[:6]}", "MQTT_CLIENT_ID": f"web-{uuid.uuid4().hex[:6]}",
                   "DATABASE_PATH": str(work / f"{name}.db"), "API_TOKEN": "bench-token", "RATE_LIMIT": "0"}
            server = support.ServerProcess(env, log_path=work / f"server-{name}.log").start(wait_connected=False)
            try:
                results[name] = run(server)
            finally:
                server.stop()
    finally:
        broker.stop()
    print_table(results, args, work)
    return 0


def print_table(results: dict[str, dict], args: argparse.Namespace, work: Path) -> None:
    flood, one, spread = results["flood"], results["one"], results["spread"]
    health = flood["healthz"]
    print(f"server: {args.root.resolve()} (logs in {work})\n")
    print("| scenario | figure |\n|---|---|")
    print(f"| polling flood, 4 threads × {args.flood_seconds:.0f} s, no token, one address | "
          f"sessions created {flood['created']}, refused {flood['refused']} (other {flood['other']}, "
          f"errors {flood['errors']}); RSS {flood['rss_before_mb']:.0f} → {flood['rss_end_mb']:.0f} MB, "
          f"{flood['rss_after_mb']:.0f} MB {flood['after_s']:.0f} s later; /healthz median "
          f"{health['median_ms']:.0f} ms, max {health['max_ms']:.0f} ms ({health['failed']} of "
          f"{health['probes']} probes failed) |")
    for label, result in (("one address", one), ("100 addresses", spread)):
        health = result["healthz"]
        median = f"{result['median_close_s']:.1f} s" if result["median_close_s"] is not None else "-"
        print(f"| {result['count']} trickling sockets, {label}, {args.trickle_seconds:.0f} s | /healthz max "
              f"{health['max_ms']:.0f} ms, median {health['median_ms']:.0f} ms ({health['failed']} of "
              f"{health['probes']} probes failed); server closed {result['closed']} (median after {median}), "
              f"{result['still_open']} still open at the end, {result['not_connected']} never connected; "
              f"RSS {result['rss_mb']:.0f} MB |")


if __name__ == "__main__":
    sys.exit(main())
