"""Engine.IO sessions: fair shares before the token, and no traceback for a malformed event
(PROTOCOL section 9, transport and logs).

A session (polling or websocket) is counted when Engine.IO opens it, before the Socket.IO
connect that carries the token: per address (REMOTE_ADDR, which ProxyFix has already
rewritten behind TRUSTED_PROXIES) and in total. At the total cap the oldest session that has
not completed its Socket.IO connect gives way to the newcomer; only when every session is a
connected client is the newcomer refused (Engine.IO answers 401). A session that has not
connected to "/" within CONNECT_DEADLINE seconds is closed by a sweeper task. Works the same
in eventlet and threading mode: it only hooks python-socketio's Server.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import socketio as python_socketio

from chatroom.core.limits import Throttle
from chatroom.ops.logs import FloodEpisode

log = logging.getLogger(__name__)

# A page or client sends its Socket.IO CONNECT right after Engine.IO's open (one round trip);
# a page whose token was refused closes its own session. Ten seconds is generous for both.
CONNECT_DEADLINE = 10.0
SWEEP_INTERVAL = 1.0
REFUSED_ADDRESS = "too many sessions from this address"
REFUSED_FULL = "the server is full"


@dataclass
class _Session:
    address: str
    since: float  # admitted, or fell back to unconnected


class WebSessions:
    """Admission, accounting and the connect deadline of one Socket.IO server's sessions."""

    # /metrics: chatroom_engineio_<name> for each number of status().
    METRICS = {
        "sessions": ("gauge", "Engine.IO sessions open (polling and websocket)"),
        "unconnected": ("gauge", "Engine.IO sessions without a Socket.IO connect yet"),
        "refused_address": ("counter", "Sessions refused: MAX_WEB_SESSIONS_PER_ADDRESS reached"),
        "refused_full": ("counter", "Sessions refused: MAX_WEB_SESSIONS reached, every session connected"),
        "evicted": ("counter", "Unconnected sessions closed to admit a newcomer at MAX_WEB_SESSIONS"),
        "dropped_unconnected": ("counter", "Sessions closed for no Socket.IO connect within the deadline"),
    }

    def __init__(self, server: python_socketio.Server, max_sessions: int, max_per_address: int,
                 connect_deadline: float = CONNECT_DEADLINE, clock: Callable[[], float] = time.monotonic):
        self.server = server
        self.eio = server.eio
        self.max_sessions = max_sessions
        self.max_per_address = max_per_address
        self.connect_deadline = connect_deadline
        self.clock = clock
        self._pending: OrderedDict[str, _Session] = OrderedDict()  # oldest first
        self._connected: dict[str, _Session] = {}
        self._per_address: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopped = False
        self.counts = Counter({"refused_address": 0, "refused_full": 0, "evicted": 0, "dropped_unconnected": 0})
        self.episode = FloodEpisode(log, "Engine.IO session caps")

    def install(self) -> "WebSessions":
        """Hook Engine.IO's connect/disconnect and python-socketio's namespace connect/disconnect."""
        eio_connect = self.eio.handlers["connect"]
        eio_disconnect = self.eio.handlers["disconnect"]
        sio_connect = self.server._handle_connect
        sio_disconnect = self.server._handle_disconnect

        def on_eio_connect(eio_sid: str, environ: dict) -> Any:
            refusal = self.admit(eio_sid, str(environ.get("REMOTE_ADDR") or ""))
            if refusal is not None:
                return refusal  # engineio answers 401 with it and forgets the session
            result = eio_connect(eio_sid, environ)
            if result is not None and result is not True:
                self.forget(eio_sid)
            return result

        def on_eio_disconnect(eio_sid: str, *reason: Any) -> Any:
            self.forget(eio_sid)
            return eio_disconnect(eio_sid, *reason)

        def handle_connect(eio_sid: str, namespace: str | None, data: Any) -> None:
            sio_connect(eio_sid, namespace, data)
            if (namespace or "/") == "/" and self._is_connected(eio_sid):
                self._mark(eio_sid, connected=True)

        def handle_disconnect(eio_sid: str, namespace: str | None, reason: Any = None) -> None:
            sio_disconnect(eio_sid, namespace, reason)
            if (namespace or "/") == "/":
                self._mark(eio_sid, connected=False)  # the session stays: the deadline starts again

        self.eio.on("connect", on_eio_connect)
        self.eio.on("disconnect", on_eio_disconnect)
        self.server._handle_connect = handle_connect
        self.server._handle_disconnect = handle_disconnect
        return self

    def admit(self, eio_sid: str, address: str) -> str | None:
        """None when the session may open (maybe after evicting an unconnected one), else why not."""
        with self._lock:
            victim = None
            if self._per_address[address] >= self.max_per_address:
                refusal, kind = REFUSED_ADDRESS, "refused_address"
            elif len(self._pending) + len(self._connected) >= self.max_sessions and not self._pending:
                refusal, kind = REFUSED_FULL, "refused_full"
            else:
                refusal, kind = None, "evicted"
                if len(self._pending) + len(self._connected) >= self.max_sessions:
                    victim, record = self._pending.popitem(last=False)
                    self._release(record.address)
                self._pending[eio_sid] = _Session(address, self.clock())
                self._per_address[address] += 1
            if refusal is not None or victim is not None:
                self.counts[kind] += 1
        if refusal is not None:
            self.episode.record(kind.replace("_", " "), f"{refusal}: {address!r}")
        if victim is not None:
            self.episode.record("evicted", "an unconnected session gave way to a newcomer")
            self._close(victim)
        return refusal

    def forget(self, eio_sid: str) -> None:
        with self._lock:
            record = self._pending.pop(eio_sid, None) or self._connected.pop(eio_sid, None)
            if record is not None:
                self._release(record.address)

    def sweep(self) -> int:
        """Close the sessions that did not connect to "/" in time; forget those Engine.IO lost."""
        deadline = self.clock() - self.connect_deadline
        overdue: list[str] = []
        with self._lock:
            while self._pending:
                eio_sid, record = next(iter(self._pending.items()))
                if record.since > deadline:
                    break
                overdue.append(eio_sid)
                del self._pending[eio_sid]
                self._release(record.address)
            lost = [eio_sid for eio_sid in self._connected if eio_sid not in self.eio.sockets]
        for eio_sid in lost:  # closed without a disconnect event: never expected, never a leak
            self.forget(eio_sid)
        for eio_sid in overdue:
            self._close(eio_sid)
        if overdue:
            self.counts["dropped_unconnected"] += len(overdue)
            self.episode.record("dropped unconnected", f"no Socket.IO connect within {self.connect_deadline:.0f} s",
                               count=len(overdue))
        return len(overdue)

    def start(self, start_task: Callable[..., Any], sleep: Callable[[float], Any]) -> None:
        """Run the sweeper as a background task of the server's async mode."""
        self._stopped = False

        def run() -> None:
            while not self._stopped:
                sleep(SWEEP_INTERVAL)
                try:
                    self.sweep()
                    self.episode.tick()
                except Exception:  # the sweeper must outlive any surprise
                    log.exception("session sweeper failed")
        start_task(run)

    def stop(self) -> None:
        self._stopped = True

    def status(self) -> dict[str, float]:
        with self._lock:
            return {"sessions": len(self._pending) + len(self._connected), "unconnected": len(self._pending),
                    **self.counts}

    def _release(self, address: str) -> None:  # with the lock held
        self._per_address[address] -= 1
        if not self._per_address[address]:
            del self._per_address[address]

    def _is_connected(self, eio_sid: str) -> bool:
        sid = self.server.manager.sid_from_eio_sid(eio_sid, "/")
        return sid is not None and self.server.manager.is_connected(sid, "/")

    def _mark(self, eio_sid: str, connected: bool) -> None:
        with self._lock:
            source, target = (self._pending, self._connected) if connected else (self._connected, self._pending)
            record = source.pop(eio_sid, None)
            if record is not None:
                record.since = self.clock()
                target[eio_sid] = record

    def _close(self, eio_sid: str) -> None:
        # Not eio.disconnect(): it waits for the session's queue to drain, which an abandoned
        # polling session never does. Closing fires the disconnect event (and so forget()).
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            socket.close(wait=False, abort=False, reason=self.eio.reason.SERVER_DISCONNECT)
            self.eio.sockets.pop(eio_sid, None)


class EventGuard:
    """Drops an EVENT packet python-socketio would choke on, before it is dispatched.

    python-socketio hands `data[0]` to the handlers in a background task: a name that is not
    a string (`42[{"a":1}]`) raises there, and the hub prints a traceback per packet. Our
    events (PROTOCOL 5) carry a string name and at most one payload; the reserved names
    (connect, disconnect) are the server's, never a client's to send.
    """

    def __init__(self, server: python_socketio.Server, throttle: Throttle | None = None):
        self.server = server
        self.throttle = throttle or Throttle(count=10, seconds=60.0)
        self.dropped = 0

    def install(self) -> "EventGuard":
        handle_event = self.server._handle_event

        def guarded(eio_sid: str, namespace: str | None, id: int | None, data: Any) -> Any:
            problem = self.problem(data)
            if problem is None:
                return handle_event(eio_sid, namespace, id, data)
            self.dropped += 1
            allowed, held_back = self.throttle.allow("event")
            if allowed:
                log.warning("dropped a malformed Socket.IO event: %s%s", problem,
                            f" ({held_back} more were not logged)" if held_back else "")
            return None

        self.server._handle_event = guarded
        return self

    def problem(self, data: Any) -> str | None:
        if not isinstance(data, list) or not data:
            return "no event name"
        if not isinstance(data[0], str):
            return f"an event name of type {type(data[0]).__name__}"
        if data[0] in getattr(self.server, "reserved_events", ("connect", "disconnect")):
            return f"the reserved event name {data[0]!r}"
        if len(data) > 2:
            return f"{len(data) - 1} arguments to {data[0][:40]!r} (one payload at most)"
        return None
