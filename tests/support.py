"""Real parts for the tests: a mosquitto process, an MQTT probe, a server process.

Everything waits on events or conditions with generous timeouts; nothing sleeps
a fixed time. Every process started here is stopped by its PID.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import engineio
import paho.mqtt.client as mqtt
import requests
import socketio
from paho.mqtt.enums import CallbackAPIVersion

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 20.0  # generous: the machine is shared and noisy


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float = TIMEOUT, what: str = "condition",
              interval: float = 0.05):
    """Poll `condition` until it returns something truthy; fail with `what` on timeout."""
    deadline = time.monotonic() + timeout
    event = threading.Event()
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        event.wait(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def wait_listening(proc: subprocess.Popen, port: int, name: str, log: Path, timeout: float = TIMEOUT) -> None:
    """Wait until a service we started listens on `port`; if it exited, fail with its log."""
    wait_for(lambda: port_open(port) or proc.poll() is not None, timeout=timeout, what=f"{name} on port {port}")
    if proc.poll() is not None:
        raise RuntimeError(f"{name} failed to start: {log.read_text()[-2000:]}")


def stop_process(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
    """Signal a process by PID, wait, then kill it if it does not go."""
    if proc.poll() is None:
        os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout)
    return proc.returncode


class Mosquitto:
    """A mosquitto broker on a free port, with its own config and persistence dir."""

    def __init__(self, workdir: Path, extra_conf: str = "", port: int | None = None, verbose: bool = False,
                 anonymous: bool = True, shipped: bool = False):
        self.binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not os.path.exists(self.binary):
            raise RuntimeError("mosquitto is not installed: apt-get install mosquitto (make test does it)")
        self.workdir = workdir
        self.port = port or free_port()
        self.extra_conf = extra_conf
        self.anonymous = anonymous
        self.shipped = shipped  # start from clients/mosquitto/mosquitto.conf
        self.verbose = verbose  # -v logs every packet: handy when debugging, slow under load
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"

    def base_conf(self) -> str:
        """The test broker's settings; a test may start from another file (the shipped one)."""
        if self.shipped:
            from tools.ensure_broker import shipped_conf
            return shipped_conf(self.port, self.workdir)
        return (f"listener {self.port} 127.0.0.1\n"
                f"allow_anonymous {'true' if self.anonymous else 'false'}\n"
                "set_tcp_nodelay true\n"
                "max_queued_messages 0\n"
                "persistence true\n"
                f"persistence_location {self.workdir}/\n")

    def write_conf(self) -> None:
        self.conf.write_text(
            self.base_conf()
            # As root mosquitto would switch to user "mosquitto", who cannot read our tmp files.
            + ("user root\n" if os.geteuid() == 0 else "")
            + f"{self.extra_conf}\n"
        )

    def start(self) -> "Mosquitto":
        self.write_conf()
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)] + (["-v"] if self.verbose else []), stdout=log,
                                     stderr=subprocess.STDOUT)
        log.close()
        wait_listening(self.proc, self.port, "mosquitto", self.log)
        return self

    def stop(self) -> None:
        """Clean stop: SIGTERM makes mosquitto save its persistent sessions."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)
            self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file for `users` (user -> password), made with mosquitto_passwd."""
    path.write_text("")
    for user, password in users.items():
        subprocess.run(["mosquitto_passwd", "-b", str(path), user, password], check=True, timeout=30)
    path.chmod(0o600)
    return path


class RedisServer:
    """A redis-server on a free port that keeps nothing on disk (several-instance tests)."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(self.binary):
            raise RuntimeError("redis-server is not installed: apt-get install redis-server (make test does it)")
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.log = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir), "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        wait_listening(self.proc, self.port, "redis-server", self.log)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool = False
    properties: object = None  # MQTT 5: paho's Properties of the publication

    def json(self):
        return json.loads(self.payload.decode("utf-8"))


class MqttProbe:
    """A real paho client that records everything under a topic filter."""

    def __init__(self, port: int, subscribe: str | list[str] | None = None,
                 client_id: str | None = None, will: tuple[str, str] | None = None,
                 clean_session: bool = True, protocol: str = "3.1.1"):
        """`protocol`: "3.1.1" or "5" (MQTT 5: clean start, a session that ends with the connection)."""
        self.port = port
        self.received: list[Received] = []
        self._cond = threading.Condition()
        self.connected = threading.Event()
        client_id = client_id or f"probe-{uuid.uuid4().hex[:8]}"
        if protocol == "5":
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        else:
            self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session)
        self.client.reconnect_delay_set(0.1, 1)
        if will:
            self.client.will_set(will[0], will[1], qos=1)
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.filters = [subscribe] if isinstance(subscribe, str) else (subscribe or [])
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: self._subscribed.set()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if self.filters:
            client.subscribe([(topic, 1) for topic in self.filters])
        else:
            self._subscribed.set()
        self.connected.set()

    def _on_message(self, client, userdata, message):
        with self._cond:
            self.received.append(Received(message.topic, message.payload, message.retain,
                                          getattr(message, "properties", None)))
            self._cond.notify_all()

    def start(self) -> "MqttProbe":
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        assert self.connected.wait(TIMEOUT), "probe did not connect"
        assert self._subscribed.wait(TIMEOUT), "probe did not subscribe"
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def publish(self, topic: str, payload, qos: int = 1) -> None:
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload, ensure_ascii=False)
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(TIMEOUT)

    def on(self, topic: str) -> list[Received]:
        with self._cond:
            return [r for r in self.received if r.topic == topic]

    def wait(self, topic: str, count: int = 1, match: Callable[[dict], bool] | None = None,
             timeout: float = TIMEOUT) -> list[Received]:
        """Wait until `count` messages on `topic` (matching `match`) have arrived."""
        def found():
            hits = [r for r in self.received if r.topic == topic and (match is None or match(r.json()))]
            return hits if len(hits) >= count else None

        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = found()
                if hits:
                    return hits
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(r.topic, r.payload[:200]) for r in self.received[-10:]]
                    raise AssertionError(f"timed out waiting for {count} on {topic}; last seen: {seen}")
                self._cond.wait(remaining)

    def __enter__(self) -> "MqttProbe":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class ServerProcess:
    """`python app.py` as a real process with its own env and port."""

    env: dict
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    root: Path = ROOT  # the checkout whose app.py runs (benchmarks compare an older one)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_connected: bool = True) -> "ServerProcess":
        env = {**os.environ, **self.env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        if "OPENAI_API_KEY" not in self.env:  # a developer's own key must not leak into tests
            env.pop("OPENAI_API_KEY", None)
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen([sys.executable, str(self.root / "app.py")], cwd=str(self.root), env=env,
                                     stdout=log, stderr=subprocess.STDOUT)
        if log is not subprocess.DEVNULL:
            log.close()
        wait_for(lambda: self._healthy() or self.proc.poll() is not None, what="server /healthz")
        assert self.proc.poll() is None, f"server exited: {self.logs()}"
        if wait_connected:
            wait_for(lambda: self.status_code() == 200, what="bridge connected")
        return self

    def _healthy(self) -> bool:
        try:
            return requests.get(self.url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def status(self) -> tuple[int, dict]:
        response = requests.get(self.url + "/mqtt/status", timeout=5)
        return response.status_code, response.json()

    def status_code(self) -> int:
        try:
            return self.status()[0]
        except requests.RequestException:
            return 0

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None:
            return None
        code = stop_process(self.proc, sig, timeout=15)
        self.proc = None
        return code

    def logs(self, whole: bool = False) -> str:
        """The server's log: its last 4 000 characters, or all of it."""
        if not (self.log_path and self.log_path.exists()):
            return ""
        text = self.log_path.read_text(errors="replace")
        return text if whole else text[-4000:]


def unique_prefix() -> str:
    """A topic prefix of one's own keeps tests on a shared broker apart."""
    return f"t{uuid.uuid4().hex[:10]}"


class _WireOrderEngineIO(engineio.Client):
    """engineio.Client hands each message to a new thread; this one hands it over on its reader
    thread, so Socket.IO sees events (and acks) in the order the server sent them."""

    def _trigger_event(self, event, *args, **kwargs):
        kwargs.pop("run_async", None)
        return super()._trigger_event(event, *args, **kwargs)


class _WireOrderClient(socketio.Client):
    def _engineio_client_class(self):
        return _WireOrderEngineIO


class SocketIOClient:
    """The tests' Socket.IO client: python-socketio over a websocket, every event the server
    pushes recorded in wire order. Refused connects raise socketio.exceptions.ConnectionError,
    unanswered calls socketio.exceptions.TimeoutError (the library's own behaviour)."""

    def __init__(self, url: str, token: str | None = None, headers: dict | None = None):
        self.events: list[tuple[str, object]] = []
        self._cond = threading.Condition()
        self.sio = _WireOrderClient(reconnection=False)
        self.sio.on("*", self._record)
        self.sio.connect(url, headers=headers or {}, auth={"token": token} if token is not None else None,
                         transports=["websocket"], wait_timeout=TIMEOUT)

    def _record(self, name: str, *args) -> None:
        with self._cond:
            self.events.append((name, args[0] if len(args) == 1 else args))
            self._cond.notify_all()

    @property
    def connected(self) -> bool:
        return self.sio.connected

    def call(self, event: str, *args, timeout: float = TIMEOUT):
        """Emit `event` with `args` (none, one, or several) and return the server's ack."""
        data = args[0] if len(args) == 1 else (args or None)
        return self.sio.call(event, data, timeout=timeout)

    def received(self, name: str, match=lambda data: True) -> list:
        """The data of every `name` event so far that matches, in wire order."""
        with self._cond:
            return [data for got, data in self.events if got == name and match(data)]

    def until_count(self, name: str, count: int, match=lambda data: True, timeout: float = TIMEOUT) -> list:
        """Wait until `count` matching `name` events came; all of them so far, in wire order."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received(name, match)) >= count, timeout):
                raise AssertionError(f"timed out after {timeout}s waiting for {count} {name} events; "
                                     f"got {len(self.received(name, match))}")
            return self.received(name, match)

    def until(self, name: str, match=lambda data: True, timeout: float = TIMEOUT):
        """Wait for the first matching `name` event (counting those already recorded)."""
        return self.until_count(name, 1, match, timeout)[0]

    def close(self) -> None:
        if self.sio.connected:
            self.sio.disconnect()

    def __enter__(self) -> "SocketIOClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Clock:
    """A clock the test sets (`clock.t += 200`): limiters, windows and rooms take it as `now`."""

    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


class RabbitMQServer:
    """A RabbitMQ node of the test's own (name, ports, data, logs and epmd in `workdir`) with
    its MQTT plugin on a free port; the machine's own node (5672) is never touched."""

    def __init__(self, workdir: Path):
        self.script = "/usr/lib/rabbitmq/bin/rabbitmq-server"  # Debian's /usr/sbin one switches users
        if not os.path.exists(self.script):
            raise RuntimeError("rabbitmq-server is not installed: apt-get install rabbitmq-server (make test does it)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port, self.amqp_port, self.dist_port, self.epmd_port = (free_port() for _ in range(4))
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "rabbitmq.out"
        (workdir / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{self.amqp_port}\n"
            f"mqtt.listeners.tcp.default = 127.0.0.1:{self.port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\nlog.console = false\n")
        (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (workdir / "rabbitmq-env.conf").write_text("")  # not the machine's (it names its own node)

    def env(self) -> dict:
        w = self.workdir
        return {**os.environ, "HOME": str(w), "RABBITMQ_NODENAME": f"chat-test-{self.port}@localhost",
                "RABBITMQ_NODE_PORT": str(self.amqp_port), "RABBITMQ_DIST_PORT": str(self.dist_port),
                "ERL_EPMD_PORT": str(self.epmd_port), "ERL_EPMD_ADDRESS": "127.0.0.1",
                "RABBITMQ_MNESIA_BASE": str(w / "mnesia"), "RABBITMQ_LOG_BASE": str(w / "log"),
                "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
                "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq"), "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
                "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"), "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config")}

    def start(self, timeout: float = 90) -> "RabbitMQServer":
        (self.workdir / "rabbitmq.pid").unlink(missing_ok=True)
        log = open(self.log, "ab")
        # A process group of its own: a start that fails is stopped whole (the script, the Erlang VM).
        self.proc = subprocess.Popen([self.script], cwd=str(self.workdir), env=self.env(), stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        try:
            wait_for(lambda: port_open(self.port) or self.proc.poll() is not None, timeout=timeout,
                     what=f"RabbitMQ's MQTT listener on {self.port}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"RabbitMQ failed to start: {self.log.read_text()[-2000:]}")
        except BaseException:
            self._abandon()
            raise
        return self

    def _abandon(self) -> None:
        """A start that failed: kill what it started (its process group, the VM by its PID file
        if it wrote one, the epmd on its own port), so nothing outlives the test."""
        assert self.proc is not None
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        self.proc = None
        pid_file = self.workdir / "rabbitmq.pid"
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._kill_epmd()

    def _kill_epmd(self) -> None:
        """Stop the epmd on our port; it refuses while a node is still registered (a VM just
        killed), so asked again until its port is closed."""
        def stopped() -> bool:
            subprocess.run(["epmd", "-port", str(self.epmd_port), "-kill"], env=self.env(), capture_output=True,
                           timeout=30)
            return not port_open(self.epmd_port)
        wait_for(stopped, interval=0.2, what=f"epmd on port {self.epmd_port} stopped")

    def stop(self) -> None:
        """A clean stop: SIGTERM to the Erlang VM (its PID from RABBITMQ_PID_FILE), then the script ends."""
        if self.proc is None:
            return
        pid_file = self.workdir / "rabbitmq.pid"
        if pid_file.exists() and pid_file.read_text().strip():
            try:
                os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, signal.SIGKILL)
        self.proc = None
        wait_for(lambda: not port_open(self.port), what="RabbitMQ's MQTT listener closed")

    def close(self) -> None:
        """Stop the node and the epmd it started on its own port."""
        self.stop()
        self._kill_epmd()

    def restart(self) -> None:
        self.stop()
        self.start()


class NatsServer:
    """nats-server with JetStream and its MQTT listener, on free ports, data in `workdir`."""

    def __init__(self, workdir: Path):
        self.binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not os.path.exists(self.binary):
            raise RuntimeError("nats-server is not installed: apt-get install nats-server (make test does it)")
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.port, self.client_port = free_port(), free_port()
        self.proc: subprocess.Popen | None = None
        self.log = workdir / "nats.log"
        self.conf = workdir / "nats.conf"
        self.conf.write_text(
            f"listen: 127.0.0.1:{self.client_port}\nserver_name: chat-test-{self.port}\n"
            f'jetstream {{ store_dir: "{workdir / "jetstream"}" }}\n'
            f"mqtt {{ listen: 127.0.0.1:{self.port} }}\n")

    def start(self, timeout: float = TIMEOUT) -> "NatsServer":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf), "-l", str(self.log)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            wait_listening(self.proc, self.port, "nats-server", self.log, timeout)
        except BaseException:  # never listening: stopped here, not left running past the test
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)
            self.proc = None

    close = stop

    def restart(self) -> None:
        self.stop()
        self.start()
