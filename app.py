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

import gc
import logging
import os
import signal
import socket
import sqlite3
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from types import ModuleType

from dotenv import load_dotenv
from flask import Flask
from flask_socketio import SocketIO
from werkzeug.middleware.proxy_fix import ProxyFix

from chatroom.assistant.listener import Assistant
from chatroom.assistant.openai_backend import OpenAIBackend
from chatroom.config import ConfigError, Settings
from chatroom.core.intake import DEDUP_SECONDS, Intake
from chatroom.core.limits import DedupWindow, RateLimiter
from chatroom.core.model import Message, SystemEvent, utc_timestamp
from chatroom.core.names import NameRules, name_key
from chatroom.core.room import Rooms
from chatroom.ops.housekeeping import DeviceTimeout, HistoryRetention, InstanceWatch
from chatroom.ops.logs import quiet_library_loggers
from chatroom.ops.metrics import ChatMetrics
from chatroom.storage.sqlite import MessageStore, open_history
from chatroom.web import access as web_access
from chatroom.web import errors as web_errors
from chatroom.web.access import Access
from chatroom.web.mqtt_status import create_status_blueprint
from chatroom.web.routes import MAX_BODY_BYTES, create_chat_blueprint
from chatroom.web.serving import ConnectionGate, address_family, connection_gate, serve
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


@dataclass
class Components:
    """Everything create_app wired, for main() and the tests."""

    settings: Settings
    socketio: SocketIO
    rooms: Rooms
    store: MessageStore
    namespace: ChatNamespace
    bridge: MqttBridge | None
    assistant: Assistant
    intake: Intake
    device_timeout: DeviceTimeout
    retention: HistoryRetention
    instance_watch: InstanceWatch | None = None  # several instances only
    shared: object | None = None                 # chatroom.redis_state.SharedState
    web_sessions: WebSessions | None = None      # Engine.IO session caps and connect deadline
    connections: ConnectionGate | None = None    # the eventlet server's header deadline and shares
    stopped: bool = False

    def start(self) -> None:
        if self.web_sessions is not None:
            self.web_sessions.start(self.socketio.start_background_task, self.socketio.sleep)
        if self.instance_watch is not None:
            self.instance_watch.start()
        self.device_timeout.start()
        self.retention.start()
        if self.bridge is not None:
            self.bridge.start()

    def stop(self) -> None:
        """Offline state, outbox flush (<= 5 s), listeners drained, SQLite closed. Once."""
        if self.stopped:
            return
        self.stopped = True
        if self.web_sessions is not None:
            self.web_sessions.stop()
        self.device_timeout.stop()
        self.retention.stop()
        if self.instance_watch is not None:
            self.instance_watch.stop()  # our web users leave now, not after INSTANCE_TTL
        self.rooms.drain(timeout=5.0)  # events already posted reach MQTT and the web
        if self.bridge is not None:
            self.bridge.stop(timeout=5.0)
        self.rooms.close()
        self.store.close()
        if self.shared is not None:
            self.shared.close()


def real_threading(async_mode: str) -> ModuleType:
    """A threading module whose threads are OS threads: eventlet makes the usual one green,
    and a green thread that waits on an fsync stops all of them."""
    if async_mode == "eventlet":
        from eventlet.patcher import original

        return original("threading")
    import threading

    return threading


def create_app(settings: Settings) -> Flask:
    app = Flask(__name__)
    app.config["SECRET_KEY"] = settings.secret_key
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.ensure_ascii = False  # UTF-8 bodies: 3 bytes per CJK character, not a \u escape
    app.json.sort_keys = False  # keep PROTOCOL's field order

    shared = None
    if settings.several_instances:
        from chatroom.storage.redis_state import SharedState  # redis is needed only then

        # Keys and the Socket.IO channel carry the topic prefix: deployments may share a Redis.
        key_prefix = f"chatroom:{settings.mqtt_topic_prefix}:"
        shared = SharedState(settings.redis_url, key_prefix, settings.instance_id, settings.instance_ttl,
                             DEDUP_SECONDS)

    socketio = SocketIO(
        async_mode=settings.async_mode,
        # Several instances: every emit goes through Redis, so a web client on any
        # instance gets every room event, in one order (PROTOCOL 8).
        **({"client_manager": OneOrderRedisManager(settings.redis_url,
                                                   channel=f"chatroom-{settings.mqtt_topic_prefix}")}
           if shared else {}),
        cors_allowed_origins=origin_checker(settings.cors_origins),
        logger=False,
        engineio_logger=False,
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
    connections = connection_gate(settings)
    if settings.trusted_proxies:
        # Outermost, so Socket.IO connections see the forwarded address too (per-client limits).
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=settings.trusted_proxies,
                                x_proto=settings.trusted_proxies, x_host=settings.trusted_proxies)

    store = open_history(settings.database_url, settings.database_path, real_threading(settings.async_mode))
    one_process_on_sqlite = not shared and not settings.database_url
    rooms = Rooms(store, name_key=name_key, max_members=settings.max_room_members,
                  max_rooms=settings.max_rooms,
                  # MQTT bursts are committed in groups. Several instances number each
                  # message in its own transaction instead.
                  group_commit=one_process_on_sqlite,
                  # Liveness compared across processes needs the wall clock.
                  **({"presence": shared.presence, "clock": time.time} if shared else {}))
    rate_limiter = RateLimiter(settings.rate_limit_count, settings.rate_limit_seconds)
    address_limiter = RateLimiter(settings.rate_limit_count * ADDRESS_SHARE, settings.rate_limit_seconds)
    intake = Intake(rooms, NameRules(reserved=(settings.ai_name,)), rate_limiter,
                    shared.dedup if shared else DedupWindow(ttl=DEDUP_SECONDS), settings.max_message_chars,
                    address_limiter, locks=shared.locks if shared else None)
    if one_process_on_sqlite:
        # The dedup window lives in this process: rebuilt from history, so the broker's
        # redelivery of a message stored but not acknowledged before a crash is a duplicate.
        since = utc_timestamp(datetime.now(timezone.utc) - timedelta(seconds=DEDUP_SECONDS))
        recalled = intake.recall(store.device_message_ids(since))
        if recalled:
            log.info("dedup window: %d recent device message ids recalled from history", recalled)

    access = Access(settings.api_token)
    namespace = ChatNamespace(rooms, intake, settings, access)
    socketio.on_namespace(namespace)
    socketio.on_error_default(internal_error_ack)
    rooms.subscribe("socketio", SocketIOPublisher(socketio, rooms))

    backend = OpenAIBackend(settings) if settings.assistant_enabled else None
    assistant = Assistant(settings, rooms, backend)
    rooms.subscribe("assistant", assistant, events=(Message,))

    bridge = None
    if settings.mqtt_enable:
        bridge = MqttBridge(settings, rooms, intake,
                            device_history=(store.latest_data, store.data_keys, store.recent_devices))
        rooms.subscribe("mqtt", bridge.on_room_event, events=(Message, SystemEvent))
        # Device state, availability and Home Assistant discovery: after `mqtt`, on a queue of its own.
        rooms.subscribe("devices", bridge.devices, events=(Message, SystemEvent))

    metrics = ChatMetrics(rooms, web_clients=lambda: namespace.connected_clients,
                          instance_id=settings.instance_id, database_bytes=store.size_bytes)
    if bridge is not None:
        metrics.add_source(
            "chatroom_mqtt",
            lambda: {**bridge.stats.snapshot(), "connected": int(bridge.is_connected),
                     "outbox_size": bridge.outbox_size},
            {**{name: ("counter", f"MQTT bridge {name.replace('_', ' ')}") for name in COUNTERS},
             "connected": ("gauge", "1 while the bridge is connected to the broker"),
             "outbox_size": ("gauge", "Messages waiting for the broker")},
        )

    metrics.add_source("chatroom_engineio", web_sessions.status, {
        "sessions": ("gauge", "Engine.IO sessions open (polling and websocket)"),
        "unconnected": ("gauge", "Engine.IO sessions without a Socket.IO connect yet"),
        "refused_address": ("counter", "Sessions refused: MAX_WEB_SESSIONS_PER_ADDRESS reached"),
        "refused_full": ("counter", "Sessions refused: MAX_WEB_SESSIONS reached, every session connected"),
        "evicted": ("counter", "Unconnected sessions closed to admit a newcomer at MAX_WEB_SESSIONS"),
        "dropped_unconnected": ("counter", "Sessions closed for no Socket.IO connect within the deadline"),
    })
    if settings.async_mode == "eventlet":
        metrics.add_source("chatroom_http", connections.status, {
            "connections": ("gauge", "Open HTTP connections"),
            "waiting_for_headers": ("gauge", "Connections still sending their request line and headers"),
            "refused_address": ("counter", "Connections refused: MAX_CONNECTIONS_PER_ADDRESS busy with requests"),
            "evicted_address": ("counter", "Connections waiting for headers closed for a newcomer of their address"),
            "refused_full": ("counter", "Connections refused: every connection busy with a request"),
            "evicted_waiting": ("counter", "Connections waiting for headers closed for a newcomer (server full)"),
            "header_timeouts": ("counter", "Connections closed for headers not complete within HEADER_TIMEOUT"),
        })

    metrics.add_source("chatroom_assistant", assistant.status, {
        "requests": ("counter", "Assistant requests started"),
        "failures": ("counter", "Assistant requests that ended in ai_error"),
        "refused": ("counter", "Mentions turned away by the assistant's queue bound or per-minute budget"),
        "waiting": ("gauge", "Assistant requests waiting for a slot"),
        "in_flight": ("gauge", "Assistant requests running now"),
        "average_latency_ms": ("gauge", "Average time to a complete answer, ms"),
    })

    app.register_blueprint(create_chat_blueprint(rooms, store, settings, intake, metrics.render, access))
    web_access.install(app, access)
    web_errors.install(app)
    app.register_blueprint(create_status_blueprint(bridge.status if bridge else None,
                                                   bridge.devices.forget if bridge else None,
                                                   rooms, intake, assistant.status, settings.instance_id,
                                                   store.size_bytes))
    app.extensions["chatroom"] = Components(settings, socketio, rooms, store, namespace, bridge, assistant,
                                            intake, DeviceTimeout(rooms, settings.mqtt_user_timeout),
                                            HistoryRetention(store, settings.history_retention_days),
                                            InstanceWatch(rooms, shared.registry, namespace.connected_keys) if shared else None,
                                            shared, web_sessions=web_sessions, connections=connections)
    return app


def startup_service_problem(exc: Exception) -> str | None:
    """What to tell the operator when Redis or PostgreSQL did not answer at start."""
    module = type(exc).__module__ or ""
    detail = " ".join(str(exc).split())  # one line: libpq's messages span several
    if module.startswith("redis"):
        return f"cannot reach Redis at REDIS_URL: {detail} (start Redis or fix REDIS_URL; docs/SCALING.md)"
    if module.startswith("psycopg"):
        return f"cannot use PostgreSQL at DATABASE_URL: {detail} (docs/SCALING.md)"
    return None


def port_problem(host: str, port: int) -> str | None:
    """Why the web server could not listen on host:port, found before anything starts."""
    try:
        with socket.socket(address_family(host, port), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


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

    stopping = []

    def on_signal(signum, frame):
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


def settle_garbage_collector() -> None:
    """Start-up objects (Flask, Socket.IO, the openai SDK: hundreds of thousands) are
    frozen out of the collector's scans, and young objects are collected every 50 000
    allocations instead of 700: the collector took ~7 % of the relay's CPU, and a full
    collection stops every green thread at once (docs/PERFORMANCE.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)


if __name__ == "__main__":
    sys.exit(main())
