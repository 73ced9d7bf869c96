"""Logging that strangers cannot flood or forge (PROTOCOL section 9).

Engine.IO and python-socketio add a handler of their own to their loggers (so
every line came out twice) and log a full traceback for every packet they
cannot decode. Here their records go through the root handler only, and a
malformed packet becomes one warning line, at most a few per minute. A flood of
refusals (sessions, connections) is two lines: when it starts and when it is over.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from chatroom.core.limits import Throttle

LIBRARY_LOGGERS = ("engineio.server", "socketio.server")
# What a packet that is not Socket.IO raises while being decoded: a client's mistake, not ours.
CLIENT_MISTAKES = (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError)


class ClientMistakeFilter(logging.Filter):
    def __init__(self, throttle: Throttle | None = None):
        super().__init__()
        self.throttle = throttle or Throttle(count=10, seconds=60.0)

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if not isinstance(error, CLIENT_MISTAKES):
            return True
        allowed, held_back = self.throttle.allow(record.name)
        if not allowed:
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.msg = "dropped a malformed Socket.IO packet: %s: %r%s"
        record.args = (type(error).__name__, str(error)[:200],
                       f" ({held_back} more were not logged)" if held_back else "")
        record.exc_info = record.exc_text = None
        return True


class FloodEpisode:
    """A flood of refusals as two log lines: one when it starts, one with the counts once it
    has been quiet for `quiet` seconds (`tick` is called by a periodic task). Never a line
    per refused request: the refusals are what a stranger controls."""

    def __init__(self, logger: logging.Logger, what: str, quiet: float = 10.0,
                 now: Callable[[], float] = time.monotonic):
        self.logger, self.what, self.quiet, self.now = logger, what, quiet, now
        self._counts: Counter[str] = Counter()
        self._started: float | None = None
        self._last = 0.0
        self._lock = threading.Lock()

    def record(self, kind: str, detail: str = "", count: int = 1) -> None:
        with self._lock:
            self._counts[kind] += count
            self._last = self.now()
            first = self._started is None
            if first:
                self._started = self._last
        if first:
            self.logger.warning("%s: %s%s", self.what, kind, f" ({detail})" if detail else "")

    def tick(self) -> None:
        with self._lock:
            if self._started is None or self.now() - self._last < self.quiet:
                return
            counts, lasted = self._counts, self._last - self._started
            self._counts, self._started = Counter(), None
        self.logger.warning("%s: over after %.0f s: %s", self.what, lasted,
                            ", ".join(f"{count} {kind}" for kind, count in counts.most_common()))


class ThrottledErrorStream:
    """`wsgi.errors` for eventlet's server: it writes there directly, once per closed websocket
    ("socket shutdown error") with the client's Host header in the line and no newline, out of
    reach of logging. Here each write is one log line, cut short, at most a few a minute."""

    def __init__(self, logger: logging.Logger, throttle: Throttle | None = None):
        self.logger = logger
        self.throttle = throttle or Throttle(count=10, seconds=60.0, max_keys=1)

    def write(self, text: str) -> int:
        line = " ".join(str(text).split())
        allowed, held_back = self.throttle.allow("wsgi.errors")
        if line and allowed:
            self.logger.warning("web server: %r%s", line[:200],
                                f" ({held_back} more were not logged)" if held_back else "")
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        pass


def quiet_library_loggers() -> None:
    """One handler (the root's) for the Socket.IO libraries, and no tracebacks for bad packets."""
    for name in LIBRARY_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
        if not any(isinstance(f, ClientMistakeFilter) for f in logger.filters):
            logger.addFilter(ClientMistakeFilter())
