"""Settings: the one place configuration values are parsed and checked.

`Settings.from_env(mapping)` takes a plain mapping so tests pass dicts; app.py
passes `os.environ` after loading `.env`. Every bad value is collected and
reported at once as `NAME: reason (got 'value')`.
"""
from __future__ import annotations

import os
import secrets
import socket
from dataclasses import dataclass, fields
from typing import Mapping

from chatroom import config_values as values
from chatroom.config_tls import tls_file_problems
from chatroom.config_values import PROJECT_DIR

ASYNC_MODES = ("eventlet", "threading")
# One MQTT topic level, and a Redis key part: no separators, wildcards or spaces.
AI_REPLY_MODES = ("mention", "all", "off")
OUT_FORMATS = ("full", "compact")
MQTT_PROTOCOLS = ("3.1.1", "5")
# What the bridge assumes of a broker that cannot tell (MQTT 3.1.1): mqtt_service/broker_profile.py.
BROKER_KINDS = ("auto", "mosquitto", "rabbitmq", "nats")


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
    mqtt_certfile: str = ""
    mqtt_keyfile: str = ""
    mqtt_protocol: str = "3.1.1"
    mqtt_broker_kind: str = "auto"
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
        reader = values.Reader(env)
        rate = reader.get("RATE_LIMIT", "20/10", values.rate)
        port = reader.get("PORT", "5000", values.port_number)
        settings = cls(
            host=reader.get("HOST", "127.0.0.1", values.non_empty),
            port=port,
            secret_key=reader.get("SECRET_KEY", "", str) or secrets.token_hex(32),
            async_mode=reader.get("ASYNC_MODE", "eventlet", values.choice(ASYNC_MODES)),
            cors_origins=reader.get("CORS_ORIGINS", "", values.comma_list),
            mqtt_enable=reader.get("MQTT_ENABLE", "true", values.boolean),
            mqtt_broker=reader.get("MQTT_BROKER", "localhost", values.non_empty),
            mqtt_port=reader.get("MQTT_PORT", "1883", values.port_number),
            mqtt_username=reader.get("MQTT_USERNAME", "", str),
            mqtt_password=reader.get("MQTT_PASSWORD", "", str),
            mqtt_tls=reader.get("MQTT_TLS", "false", values.boolean),
            mqtt_ca_certs=reader.get("MQTT_CA_CERTS", "", values.project_path),
            mqtt_certfile=reader.get("MQTT_CERTFILE", "", values.project_path),
            mqtt_keyfile=reader.get("MQTT_KEYFILE", "", values.project_path),
            mqtt_protocol=reader.get("MQTT_PROTOCOL", "3.1.1", values.choice(MQTT_PROTOCOLS)),
            mqtt_broker_kind=reader.get("MQTT_BROKER_KIND", "auto", values.choice(BROKER_KINDS)),
            # The port is in the default: two servers on one host must not share a session.
            mqtt_client_id=reader.get("MQTT_CLIENT_ID", "", str)
            or f"chatroom-bridge-{socket.gethostname()}-{port}",
            mqtt_topic_prefix=reader.get("MQTT_TOPIC_PREFIX", "chatroom", values.topic_prefix),
            mqtt_qos=reader.get("MQTT_QOS", "1", values.choice_int((0, 1, 2))),
            mqtt_user_timeout=reader.get("MQTT_USER_TIMEOUT", "600", values.int_at_least(0)),
            mqtt_outbox_size=reader.get("MQTT_OUTBOX_SIZE", "10000", values.int_at_least(1)),
            mqtt_out_format=reader.get("MQTT_OUT_FORMAT", "full", values.choice(OUT_FORMATS)),
            mqtt_device_topics_only=reader.get("MQTT_DEVICE_TOPICS_ONLY", "false", values.boolean),
            max_device_keys=reader.get("MAX_DEVICE_KEYS", "32", values.int_at_least(1)),
            max_devices=reader.get("MAX_DEVICES", "500", values.int_at_least(1)),
            device_retention_days=reader.get("DEVICE_RETENTION_DAYS", "30", values.int_at_least(0)),
            database_path=reader.get("DATABASE_PATH", "data/chat.db", values.project_path),
            history_limit=reader.get("HISTORY_LIMIT", "50", values.int_at_least(0)),
            max_message_chars=reader.get("MAX_MESSAGE_CHARS", "2000", values.int_at_least(1)),
            max_room_members=reader.get("MAX_ROOM_MEMBERS", "1000", values.int_at_least(1)),
            max_rooms=reader.get("MAX_ROOMS", "1000", values.int_at_least(1)),
            history_retention_days=reader.get("HISTORY_RETENTION_DAYS", "0", values.int_at_least(0)),
            rate_limit_count=rate[0] if rate else 0,
            rate_limit_seconds=rate[1] if rate else 1.0,
            api_token=reader.get("API_TOKEN", "", str),
            trusted_proxies=reader.get("TRUSTED_PROXIES", "0", values.int_at_least(0)),
            max_web_sessions=reader.get("MAX_WEB_SESSIONS", "2000", values.int_at_least(1)),
            max_web_sessions_per_address=reader.get("MAX_WEB_SESSIONS_PER_ADDRESS", "100", values.int_at_least(1)),
            max_connections_per_address=reader.get("MAX_CONNECTIONS_PER_ADDRESS", "256", values.int_at_least(1)),
            header_timeout=reader.get("HEADER_TIMEOUT", "10", values.positive_float),
            openai_api_key=reader.get("OPENAI_API_KEY", "", str),
            openai_base_url=reader.get("OPENAI_BASE_URL", "", str),
            ai_model=reader.get("AI_MODEL", "gpt-4o-mini", values.non_empty),
            ai_name=reader.get("AI_NAME", "AI", values.ai_name),
            ai_reply_mode=reader.get("AI_REPLY_MODE", "mention", values.choice(AI_REPLY_MODES)),
            ai_context_messages=reader.get("AI_CONTEXT_MESSAGES", "20", values.int_at_least(0)),
            ai_timeout=reader.get("AI_TIMEOUT", "30", values.positive_float),
            ai_system_prompt=reader.get("AI_SYSTEM_PROMPT", "", str),
            ai_max_tokens=reader.get("AI_MAX_TOKENS", "512", values.int_at_least(1)),
            ai_context_bytes=reader.get("AI_CONTEXT_BYTES", "16384", values.int_at_least(1024)),
            ai_queue_size=reader.get("AI_QUEUE_SIZE", "8", values.int_at_least(0)),
            ai_requests_per_minute=reader.get("AI_REQUESTS_PER_MINUTE", "20", values.int_at_least(1)),
            log_level=reader.get("LOG_LEVEL", "INFO", values.log_level),
            ha_discovery=reader.get("HA_DISCOVERY", "true", values.boolean),
            ha_discovery_prefix=reader.get("HA_DISCOVERY_PREFIX", "homeassistant", values.topic_prefix),
            redis_url=reader.get("REDIS_URL", "", values.url_with_scheme(("redis://", "rediss://", "unix://"))),
            mqtt_shared_group=reader.get("MQTT_SHARED_GROUP", "", values.plain_id),
            database_url=reader.get("DATABASE_URL", "", values.url_with_scheme(("postgresql://", "postgres://"))),
            instance_id=reader.get("INSTANCE_ID", "", values.plain_id)
            or values.plain_default(f"{socket.gethostname()}-{port}"),
            instance_ttl=reader.get("INSTANCE_TTL", "15", values.int_at_least(2)),
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
        client_problems = _client_certificate_problems(settings)
        reader.problems.extend(client_problems)
        if settings.mqtt_tls:  # loaded here as paho will: a file that exists but cannot be used is one line
            ca_ok = not any(problem.startswith("MQTT_CA_CERTS") for problem in reader.problems)
            reader.problems.extend(tls_file_problems(settings.mqtt_ca_certs if ca_ok else "",
                                                     "" if client_problems else settings.mqtt_certfile,
                                                     settings.mqtt_keyfile))
        if settings.mqtt_broker_kind == "nats":  # NATS subjects: it closes the connection on these
            for name, prefix in (("MQTT_TOPIC_PREFIX", settings.mqtt_topic_prefix),
                                 ("HA_DISCOVERY_PREFIX", settings.ha_discovery_prefix)):
                if "." in prefix or " " in prefix:
                    reader.problems.append(f"{name}: nats refuses '.' and ' ' in topics (got {prefix!r})")
        if settings.mqtt_shared_group and settings.mqtt_broker_kind in ("rabbitmq", "nats"):
            reader.problems.append(f"MQTT_SHARED_GROUP: {settings.mqtt_broker_kind} has no shared subscriptions: "
                                   "every instance would hear every device message (docs/BROKERS.md)")
        if reader.problems:
            raise ConfigError(reader.problems)
        return settings


def _client_certificate_problems(settings: Settings) -> list[str]:
    """Mutual TLS: a certificate and its key, both readable, with MQTT_TLS on."""
    given = {name: path for name, path in (("MQTT_CERTFILE", settings.mqtt_certfile),
                                           ("MQTT_KEYFILE", settings.mqtt_keyfile)) if path}
    if not given:
        return []
    if not settings.mqtt_tls:
        return [f"{', '.join(given)}: set, but MQTT_TLS is false (set MQTT_TLS=true)"]
    if not settings.mqtt_certfile:
        return ["MQTT_CERTFILE: required with MQTT_KEYFILE (the client certificate the key belongs to)"]
    return [f"{name}: no readable file at {path!r}" for name, path in given.items() if not os.path.isfile(path)]
