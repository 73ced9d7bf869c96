"""`make cluster`: several instances on this machine (docs/SCALING.md).

A broker (as `make run`: the configured one, or mosquitto started here), a Redis
(REDIS_URL from the environment/.env, else a redis-server started here on a
free port, keeping nothing on disk), and N servers (`--instances`, default 2) on
ports PORT, PORT+1, ... sharing one history: DATABASE_URL when set
(PostgreSQL), else one SQLite file. Ctrl-C stops everything this started, by PID.

Put a load balancer with sticky sessions in front for one URL (docs/SCALING.md
has an nginx block); each instance also serves the page on its own port.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading

from dotenv import load_dotenv

from chatroom.config import ConfigError
from tools.ensure_broker import ROOT, ensure, load_settings, wait_reachable

log = logging.getLogger("make-cluster")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_redis() -> tuple[subprocess.Popen, str]:
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    if not os.path.exists(binary):
        raise SystemExit("redis-server is not installed: sudo apt-get install -y redis-server "
                         "(or set REDIS_URL to a Redis you have)")
    port = free_port()
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL)
    if not wait_reachable("127.0.0.1", port, 10):
        proc.kill()
        raise SystemExit("redis-server did not start")
    log.info("Redis started at 127.0.0.1:%s (pid %s)", port, proc.pid)
    return proc, f"redis://127.0.0.1:{port}/0"


def instance_env(base: dict, index: int, port: int, redis_url: str) -> dict:
    env = {**base, "PORT": str(port), "REDIS_URL": redis_url, "INSTANCE_ID": f"{socket.gethostname()}-{port}"}
    # Each instance its own MQTT session (the default id has host and port in it); the
    # shared group hands each device message to one of them.
    if base.get("MQTT_CLIENT_ID"):
        env["MQTT_CLIENT_ID"] = f"{base['MQTT_CLIENT_ID']}-{index}"
    if not env.get("DATABASE_URL"):
        env["DATABASE_PATH"] = base.get("DATABASE_PATH") or str(ROOT / "data" / "cluster.db")
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=2)
    parser.add_argument("--ports", type=int, nargs="+", help="the instances' web ports (default PORT, PORT+1, ...)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    load_dotenv(ROOT / ".env", override=False)
    started: list[subprocess.Popen] = []
    if not os.environ.get("REDIS_URL", "").strip():
        redis_proc, os.environ["REDIS_URL"] = start_redis()
        started.append(redis_proc)
    redis_url = os.environ["REDIS_URL"]
    os.environ.setdefault("MQTT_SHARED_GROUP", "chatroom")
    try:
        settings = load_settings()
        status, broker_pid = ensure(settings)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        status, broker_pid = 2, None
    if status != 0:
        for proc in started:
            proc.terminate()
        return status
    ports = args.ports or [settings.port + index for index in range(args.instances)]
    servers = []
    for index, port in enumerate(ports):
        env = instance_env(dict(os.environ), index, port, redis_url)
        servers.append(subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=str(ROOT), env=env))
    started = servers + started
    stop = threading.Event()
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("cluster: %s | Redis %s | Ctrl-C stops it",
             " ".join(f"http://127.0.0.1:{port}" for port in ports), redis_url)
    while not stop.wait(1.0):
        if any(server.poll() is not None for server in servers):
            log.error("an instance exited; stopping the cluster")
            break
    for proc in started:  # servers first (they say goodbye through Redis), then Redis
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
    if broker_pid is not None:
        try:
            os.kill(broker_pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
