"""Chatroom relay: Flask-SocketIO chat rooms bridged to MQTT and HTTP.

`python app.py` runs the server. `create_app(settings)` builds a fresh,
unconnected app (tests build several); `main()` loads `.env`, starts the MQTT
bridge and serves until SIGTERM/SIGINT.
"""
if __name__ == "__main__":
    # eventlet must patch the standard library before anything else imports it,
    # or emits from the MQTT thread are silently lost. Only ASYNC_MODE is read
    # this early; the full configuration is parsed below.
    import os as _os
    import re as _re

    def _early_async_mode() -> str:
        if _os.environ.get("ASYNC_MODE", "").strip():
            return _os.environ["ASYNC_MODE"].strip().lower()
        try:
            with open(_os.path.join(_os.path.dirname(_os.path.abspath(__file__)), ".env"),
                      encoding="utf-8") as env_file:
                found = _re.search(r"^\s*ASYNC_MODE\s*=\s*['\"]?(\w+)", env_file.read(), _re.M)
        except OSError:
            found = None
        return found.group(1).lower() if found else "eventlet"

    if _early_async_mode() == "eventlet":
        import warnings

        # eventlet announces its maintenance mode on import; the choice is deliberate (docs/ARCHITECTURE.md).
        warnings.filterwarnings("ignore", message="\\s*Eventlet is deprecated")
        import eventlet

        eventlet.monkey_patch()

import logging
import os
import signal
import sqlite3
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Callable

from dotenv import load_dotenv
from flask import Flask
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix

from chatroom.assistant.listener import Assistant
from chatroom.assistant.openai_backend import OpenAIBackend
from chatroom.config import ConfigError, Settings
from chatroom.core.command_desk import CommandDesk
from chatroom.core.commands import DeclaredCommands
from chatroom.core.intake import DEDUP_SECONDS, Intake
from chatroom.core.limits import RateLimiter
from chatroom.core.model import Message, SystemEvent, utc_timestamp
from chatroom.core.names import NameRules, name_key
from chatroom.core.ports import HistoryStore
from chatroom.core.room import Rooms
from chatroom.ops.housekeeping import DeviceTimeout, HistoryRetention, InstanceWatch
from chatroom.ops.logs import quiet_library_loggers
from chatroom.ops.metrics import ChatMetrics
from chatroom.ops.rate_history import RateHistory, rate_totals
from chatroom.ops.startup import real_threading, settle_garbage_collector, startup_service_problem
from chatroom.storage.publish_cursor import open_publish_cursor
from chatroom.topology import Topology, build_topology
from chatroom.web import access as web_access
from chatroom.web import compression as web_compression
from chatroom.web import errors as web_errors
from chatroom.web.access import Access
from chatroom.web.commands_api import create_commands_blueprint, install_socket_commands
from chatroom.web.mqtt_status import create_status_blueprint
from chatroom.web.routes import MAX_BODY_BYTES, create_chat_blueprint
from chatroom.web.serving import ConnectionGate, connection_gate, port_problem, serve
from chatroom.web.sessions import EventGuard, WebSessions
from chatroom.web.socketio_events import (
    ChatNamespace,
    OneOrderRedisManager,
    SocketIOPublisher,
    internal_error_ack,
    origin_checker,
)
from mqtt_service.bridge import MqttBridge
from mqtt_service.stats import COUNTERS

log = logging.getLogger("chatroom.app")
MAX_SOCKET_PACKET_BYTES = 64 * 1024
# Web pages and HTTP callers from one address may together send this many times RATE_LIMIT
# (people behind one NAT share an address; a stranger's new sockets share it too).
ADDRESS_SHARE = 5
ENV_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".env")  # beside app.py, whatever the cwd
BRIDGE_METRICS = {
    **{name: ("counter", f"MQTT bridge {name.replace('_', ' ')}") for name in COUNTERS},
    "connected": ("gauge", "1 while the bridge is connected to the broker"),
    "outbox_size": ("gauge", "Messages waiting for the broker"),
}


@dataclass
class Components:
    """Everything create_app wired, for main() and the tests."""

    settings: Settings
    topology: Topology
    socketio: SocketIO
    rooms: Rooms
    namespace: ChatNamespace
    bridge: MqttBridge | None
    assistant: Assistant
    intake: Intake
    device_timeout: DeviceTimeout
    retention: HistoryRetention
    instance_watch: InstanceWatch | None     # several instances only
    web_sessions: WebSessions                # Engine.IO session caps and connect deadline
    connections: ConnectionGate              # the eventlet server's header deadline and shares
    rate_history: RateHistory                # per-second counts for the status page's chart
    stopped: bool = False

    @property
    def store(self) -> HistoryStore:
        return self.topology.store

    def start(self) -> None:
        self.web_sessions.start(self.socketio.start_background_task, self.socketio.sleep)
        if self.instance_watch is not None:
            self.instance_watch.start()
        self.device_timeout.start()
        self.retention.start()
        self.rate_history.start()
        if self.bridge is not None:
            self.bridge.start()

    def stop(self) -> None:
        """Offline state, outbox flush (<= 5 s), listeners drained, SQLite closed. Once."""
        if self.stopped:
            return
        self.stopped = True
        self.web_sessions.stop()
        self.device_timeout.stop()
        self.retention.stop()
        self.rate_history.stop()
        if self.instance_watch is not None:
            self.instance_watch.stop()  # our web users leave now, not after INSTANCE_TTL
        self.rooms.drain(timeout=5.0)  # events already posted reach MQTT and the web
        if self.bridge is not None:
            self.bridge.stop(timeout=5.0)
        self.rooms.close()
        self.topology.close()


def create_app(settings: Settings) -> Flask:
    """A fresh, unconnected app: every part built and wired here, in one place."""
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.ensure_ascii = False  # type: ignore[attr-defined]  # UTF-8 bodies: 3 bytes per CJK character
    app.json.sort_keys = False  # type: ignore[attr-defined]  # keep PROTOCOL's field order
    topology = build_topology(settings, real_threading(settings.async_mode))

    # Several instances: every emit goes through Redis, so a web client on any instance
    # gets every room event, in one order (PROTOCOL 8).
    client_manager = (OneOrderRedisManager(topology.redis_url, channel=f"chatroom-{settings.mqtt_topic_prefix}")
                      if topology.several_instances else None)
    socketio = SocketIO(
        async_mode=settings.async_mode, client_manager=client_manager,
        cors_allowed_origins=origin_checker(settings.cors_origins), logger=False, engineio_logger=False,
        # PROTOCOL 9: a packet over 64 KiB is refused by Engine.IO before anyone parses it.
        max_http_buffer_size=MAX_SOCKET_PACKET_BYTES,
    )
    socketio.init_app(app)
    quiet_library_loggers()  # after init_app: that is when Engine.IO adds its own handler
    # PROTOCOL 9: Engine.IO sessions are counted and capped before the token is checked, and
    # an event python-socketio would choke on is dropped with a throttled warning.
    web_sessions = WebSessions(socketio.server, settings.max_web_sessions,
                               settings.max_web_sessions_per_address).install()
    EventGuard(socketio.server).install()
    if settings.trusted_proxies:
        # Outermost, so Socket.IO connections see the forwarded address too (per-client limits).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies,  # type: ignore[method-assign]
                                x_proto=settings.trusted_proxies, x_host=settings.trusted_proxies)

    store = topology.store
    rooms = Rooms(store, name_key=name_key, max_members=settings.max_room_members, max_rooms=settings.max_rooms,
                  presence=topology.presence, clock=topology.clock, group_commit=True)
    intake = Intake(rooms, NameRules(reserved=(settings.ai_name,)),
                    RateLimiter(settings.rate_limit_count, settings.rate_limit_seconds), topology.dedup,
                    settings.max_message_chars,
                    RateLimiter(settings.rate_limit_count * ADDRESS_SHARE, settings.rate_limit_seconds),
                    locks=topology.locks)
    if topology.one_process_on_sqlite:
        recall_dedup_window(intake, store)

    access = Access(settings.api_token)
    namespace = ChatNamespace(rooms, intake, settings, access)
    socketio.on_namespace(namespace)
    socketio.on_error_default(internal_error_ack)
    publisher = SocketIOPublisher(socketio, rooms)
    # Several instances: a backlog goes to the Redis channel in one publication (issue 24).
    rooms.subscribe("socketio", publisher, many=publisher.publish_all if topology.several_instances else None)

    # Declared device commands (PROTOCOL 11): the bridge sends them, the web side and the assistant ask.
    desk = CommandDesk(rooms, DeclaredCommands(settings.max_devices))
    install_socket_commands(socketio, namespace, desk, intake)
    assistant = Assistant(settings, rooms, OpenAIBackend(settings) if settings.assistant_enabled else None,
                          desk=desk)
    rooms.subscribe("assistant", assistant, events=(Message,))

    bridge = None
    if settings.mqtt_enable:
        # The history is the outbox (PROTOCOL 12): one instance keeps a durable publish cursor.
        # With several, each publishes what it accepted and none replays (docs/RELIABILITY.md).
        cursor = (None if topology.several_instances
                  else open_publish_cursor(settings.database_url, settings.database_path, store.path))
        bridge = MqttBridge(settings, rooms, intake,
                            device_history=(store.latest_data, store.data_keys, store.recent_devices),
                            publish_cursor=cursor, desk=desk)
        rooms.subscribe("mqtt", bridge.on_room_event, events=(Message, SystemEvent))
        # Device state, availability and Home Assistant discovery: after `mqtt`, on a queue of its own.
        rooms.subscribe("devices", bridge.devices, events=(Message, SystemEvent))

    connections = connection_gate(settings)
    metrics = ChatMetrics(rooms, web_clients=lambda: namespace.connected_clients,
                          instance_id=settings.instance_id, database_bytes=store.size_bytes)
    if bridge is not None:
        metrics.add_source("chatroom_mqtt", bridge_numbers(bridge), BRIDGE_METRICS)
    metrics.add_source("chatroom_engineio", web_sessions.status, WebSessions.METRICS)
    if settings.async_mode == "eventlet":
        metrics.add_source("chatroom_http", connections.status, ConnectionGate.METRICS)
    metrics.add_source("chatroom_assistant", assistant.status, Assistant.METRICS)
    metrics.add_source("chatroom_commands", desk.status, CommandDesk.METRICS)

    rate_history = RateHistory(rate_totals(lambda: rooms.posted_total, bridge.stats.snapshot if bridge else None))
    web_access.install(app, access)
    web_errors.install(app)
    web_compression.install(app)
    app.register_blueprint(create_chat_blueprint(rooms, store, settings, intake, metrics.render, access,
                                                 rate_history.snapshot))
    app.register_blueprint(create_commands_blueprint(desk, intake))
    app.register_blueprint(create_status_blueprint(bridge.status if bridge else None,
                                                   bridge.forget if bridge else None,
                                                   rooms, intake, assistant.status, settings.instance_id,
                                                   store.size_bytes))
    app.extensions["chatroom"] = Components(
        settings, topology, socketio, rooms, namespace, bridge, assistant, intake,
        device_timeout=DeviceTimeout(rooms, settings.mqtt_user_timeout),
        retention=HistoryRetention(store, settings.history_retention_days),
        instance_watch=(InstanceWatch(rooms, topology.registry, namespace.connected_keys)
                        if topology.registry is not None else None),
        web_sessions=web_sessions, connections=connections, rate_history=rate_history)
    return app


def recall_dedup_window(intake: Intake, store: HistoryStore) -> None:
    """The dedup window lives in this process: rebuilt from history, so the broker's
    redelivery of a message stored but not acknowledged before a crash is a duplicate."""
    since = utc_timestamp(datetime.now(timezone.utc) - timedelta(seconds=DEDUP_SECONDS))
    recalled = intake.recall(store.device_message_ids(since))
    if recalled:
        log.info("dedup window: %d recent device message ids recalled from history", recalled)


def bridge_numbers(bridge: MqttBridge) -> Callable[[], dict[str, float]]:
    return lambda: {**bridge.stats.snapshot(), "connected": int(bridge.is_connected),
                    "outbox_size": bridge.outbox_size}


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # One line per request from the threading-mode dev server is noise next to our own events.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    try:
        load_dotenv(ENV_FILE, override=False)  # the real environment wins over .env
    except OSError as exc:  # a .env the service user may not read: one line, not a traceback
        log.error("cannot read %s: %s (its owner must be the user the server runs as; "
                  "docs/DEPLOYMENT.md)", ENV_FILE, exc.strerror or exc)
        return 2
    try:
        settings = Settings.from_env(os.environ)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    logging.getLogger().setLevel(settings.log_level)

    log.debug("settings: %s", settings.redacted())
    problem = port_problem(settings.host, settings.port)
    if problem:
        log.error("cannot serve on %s:%s: %s (set HOST/PORT)", settings.host, settings.port, problem)
        return 2
    try:
        app = create_app(settings)
    except (sqlite3.Error, OSError) as exc:
        log.error("cannot open the history database %s: %s (set DATABASE_PATH)", settings.database_path, exc)
        return 2
    except Exception as exc:  # Redis or PostgreSQL away: one clear line, not a traceback
        problem = startup_service_problem(exc)
        if problem is None:
            raise
        log.error("%s", problem)
        return 2
    components: Components = app.extensions["chatroom"]

    def shutdown_and_exit(signal_name: str) -> None:
        log.info("%s: shutting down", signal_name)
        components.stop()
        logging.shutdown()
        os._exit(0)  # the web server has no clean stop from outside a request in every async mode

    stopping: list[int] = []

    def on_signal(signum: int, frame: object) -> None:
        # Raising here would land in whatever greenlet runs (and be swallowed
        # there), so shutdown runs as a background task of its own.
        if not stopping:
            stopping.append(signum)
            components.socketio.start_background_task(shutdown_and_exit, signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    components.start()
    broker = (f"{settings.mqtt_broker}:{settings.mqtt_port}" if settings.mqtt_enable
              else "off (MQTT_ENABLE=false)")
    log.info("serving http://%s:%s (async mode %s) | MQTT broker %s | assistant %s",
             settings.host, settings.port, settings.async_mode, broker,
             f"on ({settings.ai_model})" if settings.assistant_enabled else "off")
    if settings.several_instances:
        log.info("instance %s | shared state in Redis | MQTT shared group %r | history %s",
                 settings.instance_id, settings.mqtt_shared_group, components.store.path)
    settle_garbage_collector()
    try:
        serve(app, settings, components.socketio, components.connections)
    finally:
        components.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
