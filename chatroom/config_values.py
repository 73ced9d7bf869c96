"""How one configuration value is read and checked: the parsers Settings.from_env
(chatroom/config.py) applies to each environment variable, and the reader that collects
every problem instead of stopping at the first."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable, Mapping

# Relative paths in the configuration are taken from the project directory (where app.py
# and .env are), never from wherever the server was started: run from `/`, `data/chat.db`
# must not become `/data/chat.db` (issue 22).
PROJECT_DIR = Path(__file__).resolve().parent.parent
PLAIN_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class Reader:
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


def non_empty(raw: str) -> str:
    if not raw:
        raise ValueError("must not be empty")
    return raw


def project_path(raw: str) -> str:
    """A file path; a relative one is taken from the project directory. `:memory:` stays."""
    if not raw or raw == ":memory:" or os.path.isabs(raw):
        return raw
    return str(PROJECT_DIR / raw)


def whole_number(raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError("must be a whole number") from None


def port_number(raw: str) -> int:
    value = whole_number(raw)
    if not 1 <= value <= 65535:
        raise ValueError("must be a port number 1-65535")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = whole_number(raw)
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value
    return parse


def positive_float(raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError("must be a number") from None
    if not value > 0:
        raise ValueError("must be greater than 0")
    return value


def boolean(raw: str) -> bool:
    lowered = raw.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def choice(options: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"must be one of {', '.join(options)}")
        return raw.lower()
    return parse


def choice_int(options: tuple[int, ...]) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        value = whole_number(raw)
        if value not in options:
            raise ValueError(f"must be one of {', '.join(map(str, options))}")
        return value
    return parse


def comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def rate(raw: str) -> tuple[int, float] | None:
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


def topic_prefix(raw: str) -> str:
    if (any(ch in raw for ch in "+#") or not raw.isprintable() or raw.startswith("/")
            or raw.endswith("/") or raw.startswith("$")):
        raise ValueError("must be a plain topic prefix without +, #, $, control characters "
                         "or leading/trailing /")
    return raw


def url_with_scheme(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw and not raw.startswith(schemes):
            raise ValueError(f"must start with {' or '.join(schemes)}")
        return raw
    return parse


def plain_id(raw: str) -> str:
    if raw and not PLAIN_ID.fullmatch(raw):
        raise ValueError("must be 1-64 letters, digits, '_', '.' or '-'")
    return raw


def plain_default(raw: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "-", raw)[-64:]


def ai_name(raw: str) -> str:
    if not 1 <= len(raw) <= 32 or any(ch.isspace() for ch in raw):
        raise ValueError("must be 1-32 characters without spaces")
    return raw


def log_level(raw: str) -> str:
    if raw.upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return raw.upper()
