"""Fixtures: a real mosquitto per session, apps built by create_app, servers as processes."""
from __future__ import annotations

import sys
import uuid
from pathlib import Path

import pytest

from support import (
    ROOT,
    TIMEOUT,
    Clock,
    Mosquitto,
    MqttProbe,
    RedisServer,
    ServerProcess,
    SocketIOClient,
    unique_prefix,
    wait_for,
)

sys.path.insert(0, str(ROOT))

from app import create_app  # noqa: E402
from chatroom.config import Settings  # noqa: E402


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Mosquitto:
    """One mosquitto for the session (tests keep apart by topic prefix)."""
    mosquitto = Mosquitto(tmp_path_factory.mktemp("mosquitto")).start()
    yield mosquitto
    mosquitto.stop()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory) -> RedisServer:
    """One redis-server for the session (tests keep apart by key prefix: the topic prefix)."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """A fresh database on the machine's PostgreSQL, dropped at the end.

    Skipped with the reason when no PostgreSQL answers, except in CI (CI=true),
    where a missing PostgreSQL fails: a test that skips in CI proves nothing.
    """
    import os

    import psycopg

    admin = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
    try:
        connection = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        reason = f"no PostgreSQL at {admin} (set TEST_POSTGRES_URL): {str(exc).strip()[:200]}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    name = f"chat_test_{uuid.uuid4().hex[:10]}"
    connection.execute(f"CREATE DATABASE {name}")
    yield admin.rsplit("/", 1)[0] + "/" + name
    connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    connection.close()


@pytest.fixture
def own_broker(tmp_path) -> Mosquitto:
    """A mosquitto for one test, free to be killed and restarted."""
    mosquitto = Mosquitto(tmp_path / "mosquitto").start()
    yield mosquitto
    mosquitto.kill()


def app_env(broker: Mosquitto, tmp_path: Path, **overrides) -> dict:
    """Environment for one app: its own prefix, client id and database."""
    env = {
        "ASYNC_MODE": "threading",
        "MQTT_BROKER": "127.0.0.1",
        "MQTT_PORT": str(broker.port),
        "MQTT_TOPIC_PREFIX": unique_prefix(),
        "MQTT_CLIENT_ID": f"bridge-{uuid.uuid4().hex[:8]}",
        "DATABASE_PATH": str(tmp_path / f"chat-{uuid.uuid4().hex[:6]}.db"),
        "RATE_LIMIT": "0",
        "SECRET_KEY": "test-secret",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


class RunningApp:
    """An app from create_app with its bridge started, plus its test clients."""

    def __init__(self, env: dict):
        self.env = env
        self.settings = Settings.from_env(env)
        self.app = create_app(self.settings)
        self.components = self.app.extensions["chatroom"]
        self.prefix = self.settings.mqtt_topic_prefix
        self.http = self.app.test_client()

    def start(self) -> "RunningApp":
        self.components.start()
        if self.components.bridge is not None:
            wait_for(lambda: self.components.bridge.is_connected, what="bridge connected")
        return self

    def stop(self) -> None:
        self.components.stop()

    def socket(self):
        return self.components.socketio.test_client(self.app, flask_test_client=self.http)

    def drain(self) -> None:
        assert self.components.rooms.drain(TIMEOUT)

    def status(self) -> dict:
        return self.http.get("/mqtt/status").get_json()


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium (Playwright), one per test module."""
    from browser_support import launched_chromium  # Playwright only where a test needs a browser

    yield from launched_chromium()


@pytest.fixture
def clock():
    """A fake clock (support.Clock) for the in-process tests: they move time, never sleep."""
    return Clock()


@pytest.fixture
def make_app(broker, tmp_path):
    """Build (and later stop) apps: make_app(RATE_LIMIT="2/60", ...)."""
    apps: list[RunningApp] = []

    def make(start: bool = True, **overrides) -> RunningApp:
        running = RunningApp(app_env(broker, tmp_path, **overrides))
        apps.append(running)
        return running.start() if start else running

    yield make
    for running in apps:
        running.stop()


@pytest.fixture
def probe_for(broker):
    """Connected MQTT probes subscribed to `<prefix>/#`."""
    probes: list[MqttProbe] = []

    def make(prefix: str, subscribe: str | None = None) -> MqttProbe:
        probe = MqttProbe(broker.port, subscribe or f"{prefix}/#").start()
        probes.append(probe)
        return probe

    yield make
    for probe in probes:
        probe.stop()


@pytest.fixture
def server_for(tmp_path):
    """Start `python app.py` processes; each is stopped (SIGTERM, then SIGKILL) at the end."""
    servers: list[ServerProcess] = []

    def make(env: dict, wait_connected: bool = True) -> ServerProcess:
        server = ServerProcess(env, log_path=tmp_path / f"server-{len(servers)}.log")
        servers.append(server)
        return server.start(wait_connected=wait_connected)

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def web_for():
    """Connected Socket.IO clients: web_for(server.url, token=...); each is closed at the end."""
    clients: list[SocketIOClient] = []

    def make(url: str, **options) -> SocketIOClient:
        clients.append(SocketIOClient(url, **options))
        return clients[-1]

    yield make
    for client in clients:
        client.close()
