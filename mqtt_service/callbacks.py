"""What every paho client of ours needs around its callbacks."""
from __future__ import annotations

import functools
import logging
import socket
from typing import Any, Callable, Protocol, TypeVar, cast

from mqtt_service.stats import BridgeStats

log = logging.getLogger("mqtt_service.bridge")

Callback = TypeVar("Callback", bound=Callable[..., None])


class _Counted(Protocol):
    stats: BridgeStats


def set_tcp_nodelay(sock: object) -> None:
    """Turn Nagle off on a paho socket (plain or TLS); a no-op for others (websockets)."""
    raw = getattr(sock, "_sock", sock)  # TLS sockets are socket subclasses already
    if isinstance(raw, socket.socket) and raw.family in (socket.AF_INET, socket.AF_INET6):
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def guarded(callback: Callback) -> Callback:
    """Catch-all for paho callbacks (methods of an object with `stats`): an escaped
    exception would kill the network loop."""

    @functools.wraps(callback)
    def wrapper(self: _Counted, *args: Any, **kwargs: Any) -> None:
        try:
            callback(self, *args, **kwargs)
        except Exception:
            self.stats.add("handler_errors")
            log.exception("MQTT %s handler failed", callback.__name__)
    return cast(Callback, wrapper)
