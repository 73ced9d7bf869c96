"""Settings: the one place configuration values are parsed and checked.

`Settings.from_env(mapping)` takes a plain mapping so tests pass dicts; app.py
passes `os.environ` after loading `.env`. Every bad value is collected and
reported at once as `NAME: reason (got 'value')`.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Mapping

# Relative paths in the configuration are taken from the project directory (where app.py
# and .env are), never from wherever the server was started: run from `/`, `data/chat.db`
# must not become `/data/chat.db` (issue 22).
PROJECT_DIR = Path(__file__).resolve().parent.parent

ASYNC_MODES = ("eventlet", "threading")
# One MQTT topic level, and a Redis key part: no separators, wildcards or spaces.
PLAIN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
AI_REPLY_MODES = ("mention", "all", "off")
OUT_FORMATS = ("full", "compact")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ConfigError(ValueError):
    """Raised with every problem found in the configuration, one per line."""

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 5000
    secret_key: str = ""
    async_mode: str = "eventlet"
    cors_origins: tuple[str, ...] = ()

    mqtt_enable: bool = True
    mqtt_broker: str = "localhost"
    mqtt_port: int = 1883
    mqtt_username: str = ""
    mqtt_password: str = ""
    mqtt_tls: bool = False
    mqtt_ca_certs: str = ""
    mqtt_client_id: str = ""
    mqtt_topic_prefix: str = "chatroom"
    mqtt_qos: int = 1
    mqtt_user_timeout: int = 600
    mqtt_outbox_size: int = 10_000
    mqtt_out_format: str = "full"
    # PROTOCOL 10: only P/[R/]messages/in/<client_id> (and users/join|leave/<client_id>) enter.
    mqtt_device_topics_only: bool = False
    # PROTOCOL 9: the broker's retained footprint (device state, availability, HA configs).
    max_device_keys: int = 32
    max_devices: int = 500
    device_retention_days: int = 30

    database_path: str = str(PROJECT_DIR / "data" / "chat.db")
    history_limit: int = 50
    max_message_chars: int = 2000
    max_room_members: int = 1000
    max_rooms: int = 1000
    history_retention_days: int = 0
    rate_limit_count: int = 20
    rate_limit_seconds: float = 10.0
    api_token: str = ""
    trusted_proxies: int = 0
    # PROTOCOL 9 transport caps: Engine.IO sessions (counted before the token is checked),
    # TCP connections per address, and the whole time a request may take to send its headers.
    max_web_sessions: int = 2000
    max_web_sessions_per_address: int = 100
    max_connections_per_address: int = 256
    header_timeout: float = 10.0

    openai_api_key: str = ""
    openai_base_url: str = ""
    ai_model: str = "gpt-4o-mini"
    ai_name: str = "AI"
    ai_reply_mode: str = "mention"
    ai_context_messages: int = 20
    ai_timeout: float = 30.0
    ai_system_prompt: str = ""
    ai_max_tokens: int = 512
    ai_context_bytes: int = 16 * 1024
    ai_queue_size: int = 8
    ai_requests_per_minute: int = 20
    log_level: str = "INFO"
    ha_discovery: bool = True
    ha_discovery_prefix: str = "homeassistant"

    # Several instances (PROTOCOL 8). Empty: one instance, state in this process.
    redis_url: str = ""
    mqtt_shared_group: str = ""
    database_url: str = ""
    instance_id: str = ""
    instance_ttl: int = 15

    @property
    def rate_limit_enabled(self) -> bool:
        return self.rate_limit_count > 0

    @property
    def several_instances(self) -> bool:
        """Presence, seq and dedup live in Redis; Socket.IO fans out through it."""
        return bool(self.redis_url)

    @property
    def assistant_enabled(self) -> bool:
        return bool(self.openai_api_key) and self.ai_reply_mode != "off"

    def redacted(self) -> dict:
        """The settings as a dict with secrets hidden, safe to log."""
        hidden = {"secret_key", "mqtt_password", "api_token", "openai_api_key", "redis_url", "database_url"}
        return {
            f.name: ("***" if f.name in hidden and getattr(self, f.name) else getattr(self, f.name))
            for f in fields(self)
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Settings":
        reader = _Reader(env)
        rate = reader.get("RATE_LIMIT", "20/10", _parse_rate)
        port = reader.get("PORT", "5000", _port)
        settings = cls(
            host=reader.get("HOST", "127.0.0.1", _non_empty),
            port=port,
            secret_key=reader.get("SECRET_KEY", "", str) or secrets.token_hex(32),
            async_mode=reader.get("ASYNC_MODE", "eventlet", _choice(ASYNC_MODES)),
            cors_origins=reader.get("CORS_ORIGINS", "", _csv),
            mqtt_enable=reader.get("MQTT_ENABLE", "true", _bool),
            mqtt_broker=reader.get("MQTT_BROKER", "localhost", _non_empty),
            mqtt_port=reader.get("MQTT_PORT", "1883", _port),
            mqtt_username=reader.get("MQTT_USERNAME", "", str),
            mqtt_password=reader.get("MQTT_PASSWORD", "", str),
            mqtt_tls=reader.get("MQTT_TLS", "false", _bool),
            mqtt_ca_certs=reader.get("MQTT_CA_CERTS", "", _project_path),
            # The port is in the default: two servers on one host must not share a session.
            mqtt_client_id=reader.get("MQTT_CLIENT_ID", "", str)
            or f"chatroom-bridge-{socket.gethostname()}-{port}",
            mqtt_topic_prefix=reader.get("MQTT_TOPIC_PREFIX", "chatroom", _topic_prefix),
            mqtt_qos=reader.get("MQTT_QOS", "1", _choice_int((0, 1, 2))),
            mqtt_user_timeout=reader.get("MQTT_USER_TIMEOUT", "600", _int_at_least(0)),
            mqtt_outbox_size=reader.get("MQTT_OUTBOX_SIZE", "10000", _int_at_least(1)),
            mqtt_out_format=reader.get("MQTT_OUT_FORMAT", "full", _choice(OUT_FORMATS)),
            mqtt_device_topics_only=reader.get("MQTT_DEVICE_TOPICS_ONLY", "false", _bool),
            max_device_keys=reader.get("MAX_DEVICE_KEYS", "32", _int_at_least(1)),
            max_devices=reader.get("MAX_DEVICES", "500", _int_at_least(1)),
            device_retention_days=reader.get("DEVICE_RETENTION_DAYS", "30", _int_at_least(0)),
            database_path=reader.get("DATABASE_PATH", "data/chat.db", _project_path),
            history_limit=reader.get("HISTORY_LIMIT", "50", _int_at_least(0)),
            max_message_chars=reader.get("MAX_MESSAGE_CHARS", "2000", _int_at_least(1)),
            max_room_members=reader.get("MAX_ROOM_MEMBERS", "1000", _int_at_least(1)),
            max_rooms=reader.get("MAX_ROOMS", "1000", _int_at_least(1)),
            history_retention_days=reader.get("HISTORY_RETENTION_DAYS", "0", _int_at_least(0)),
            rate_limit_count=rate[0] if rate else 0,
            rate_limit_seconds=rate[1] if rate else 1.0,
            api_token=reader.get("API_TOKEN", "", str),
            trusted_proxies=reader.get("TRUSTED_PROXIES", "0", _int_at_least(0)),
            max_web_sessions=reader.get("MAX_WEB_SESSIONS", "2000", _int_at_least(1)),
            max_web_sessions_per_address=reader.get("MAX_WEB_SESSIONS_PER_ADDRESS", "100", _int_at_least(1)),
            max_connections_per_address=reader.get("MAX_CONNECTIONS_PER_ADDRESS", "256", _int_at_least(1)),
            header_timeout=reader.get("HEADER_TIMEOUT", "10", _positive_float),
            openai_api_key=reader.get("OPENAI_API_KEY", "", str),
            openai_base_url=reader.get("OPENAI_BASE_URL", "", str),
            ai_model=reader.get("AI_MODEL", "gpt-4o-mini", _non_empty),
            ai_name=reader.get("AI_NAME", "AI", _ai_name),
            ai_reply_mode=reader.get("AI_REPLY_MODE", "mention", _choice(AI_REPLY_MODES)),
            ai_context_messages=reader.get("AI_CONTEXT_MESSAGES", "20", _int_at_least(0)),
            ai_timeout=reader.get("AI_TIMEOUT", "30", _positive_float),
            ai_system_prompt=reader.get("AI_SYSTEM_PROMPT", "", str),
            ai_max_tokens=reader.get("AI_MAX_TOKENS", "512", _int_at_least(1)),
            ai_context_bytes=reader.get("AI_CONTEXT_BYTES", "16384", _int_at_least(1024)),
            ai_queue_size=reader.get("AI_QUEUE_SIZE", "8", _int_at_least(0)),
            ai_requests_per_minute=reader.get("AI_REQUESTS_PER_MINUTE", "20", _int_at_least(1)),
            log_level=reader.get("LOG_LEVEL", "INFO", _log_level),
            ha_discovery=reader.get("HA_DISCOVERY", "true", _bool),
            ha_discovery_prefix=reader.get("HA_DISCOVERY_PREFIX", "homeassistant", _topic_prefix),
            redis_url=reader.get("REDIS_URL", "", _url(("redis://", "rediss://", "unix://"))),
            mqtt_shared_group=reader.get("MQTT_SHARED_GROUP", "", _plain_id),
            database_url=reader.get("DATABASE_URL", "", _url(("postgresql://", "postgres://"))),
            instance_id=reader.get("INSTANCE_ID", "", _plain_id)
            or _plain_default(f"{socket.gethostname()}-{port}"),
            instance_ttl=reader.get("INSTANCE_TTL", "15", _int_at_least(2)),
        )
        # Half a multi-instance set-up would duplicate device messages (every instance
        # hears every one) or split presence: refuse it clearly (PROTOCOL 8).
        if settings.redis_url and settings.mqtt_enable and not settings.mqtt_shared_group:
            reader.problems.append("MQTT_SHARED_GROUP: required with REDIS_URL (several instances share "
                                   "the inbound topics; see docs/SCALING.md), or set MQTT_ENABLE=false")
        if settings.mqtt_shared_group and not settings.redis_url:
            reader.problems.append("REDIS_URL: required with MQTT_SHARED_GROUP (presence, seq and dedup "
                                   "must be shared; see docs/SCALING.md)")
        if settings.mqtt_tls is False and settings.mqtt_ca_certs:
            reader.problems.append("MQTT_CA_CERTS: set, but MQTT_TLS is false (set MQTT_TLS=true)")
        elif settings.mqtt_ca_certs and not os.path.isfile(settings.mqtt_ca_certs):
            reader.problems.append(f"MQTT_CA_CERTS: no readable file at {settings.mqtt_ca_certs!r}")
        if reader.problems:
            raise ConfigError(reader.problems)
        return settings


class _Reader:
    """Reads variables, collecting problems instead of stopping at the first."""

    def __init__(self, env: Mapping[str, str]):
        self.env = env
        self.problems: list[str] = []

    def get(self, name: str, default: str, parse: Callable[[str], object]):
        raw = self.env.get(name)
        raw = default if raw is None or raw.strip() == "" else raw.strip()
        try:
            return parse(raw)
        except ValueError as exc:
            self.problems.append(f"{name}: {exc} (got {raw!r})")
            return parse(default)


def _non_empty(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def _project_path(raw: str) -> str:
    """A file path; a relative one is taken from the project directory. `:memory:` stays."""
    if not raw or raw == ":memory:" or os.path.isabs(raw):
        return raw
    return str(PROJECT_DIR / raw)


def _int(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def _port(raw: str) -> int:
    value = _int(raw)
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number 1-65535")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = _int(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    return parse


def _positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def _bool(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw.lower()
    return parse


def _choice_int(options: tuple[int, ...]) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = _int(raw)
        if value not in options:
            raise ValueError(f"must be one of {', '.join(map(str, options))}")
        return value
    return parse


def _csv(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _parse_rate(raw: str) -> tuple[int, float] | None:
    """`N/S` = N messages per S seconds; `0` turns rate limiting off."""
    if raw == "0":
        return None
    count, sep, seconds = raw.partition("/")
    try:
        if not sep:
            raise ValueError
        parsed = (int(count), float(seconds))
    except ValueError:
        raise ValueError("must look like 20/10 (messages/seconds) or 0 for off") from None
    if parsed[0] < 0 or parsed[1] <= 0:
        raise ValueError("count must be >= 0 and seconds > 0")
    return parsed if parsed[0] > 0 else None


def _topic_prefix(raw: str) -> str:
    if (any(ch in raw for ch in "+#") or not raw.isprintable() or raw.startswith("/")
            or raw.endswith("/") or raw.startswith("$")):
        raise ValueError("must be a plain topic prefix without +, #, $, control characters "
                         "or leading/trailing /")
    return raw


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw and not raw.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)}")
        return raw
    return parse


def _plain_id(raw: str) -> str:
    if raw and not PLAIN_ID.fullmatch(raw):
        raise ValueError("must be 1-64 letters, digits, '_', '.' or '-'")
    return raw


def _plain_default(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)[-64:]


def _ai_name(raw: str) -> str:
    if not 1 <= len(raw) <= 32 or any(ch.isspace() for ch in raw):
        raise ValueError("must be 1-32 characters without spaces")
    return raw


def _log_level(raw: str) -> str:
    if raw.upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return raw.upper()
