"""The web server of `python app.py` (PROTOCOL section 9, transport).

eventlet mode serves with eventlet.wsgi plus two guards it lacks:
- a header deadline: the request line and headers must arrive within HEADER_TIMEOUT in
  total (eventlet's socket timeout restarts on every byte, so a trickle held a connection
  for ever); an idle keep-alive connection waiting for its next request is bounded the same;
- fair connection shares: at most MAX_CONNECTIONS_PER_ADDRESS open connections per peer
  address (off behind a proxy: every peer is the proxy) and MAX_CONNECTIONS in all; at either
  cap the connection that has waited longest for its headers (of that address, or of all)
  is closed for the newcomer, instead of the accept loop blocking while a crowd of slow
  sockets holds every slot. A newcomer is refused only when no connection is waiting.
threading mode runs Flask-SocketIO's development server, which has neither.
"""
from __future__ import annotations

import logging
import socket
import time
from collections import Counter, OrderedDict
from typing import Any, Callable

from flask import Flask
from flask_socketio import SocketIO

from chatroom.config import Settings
from chatroom.ops.logs import FloodEpisode, ThrottledErrorStream

log = logging.getLogger(__name__)

SOCKET_TIMEOUT = 60.0      # seconds of silence before a connection is closed (> Engine.IO's 25 s ping)
MAX_CONNECTIONS = 10_000   # green threads: one per open connection
# Connections the kernel completes before we accept them. A burst of strangers' connects
# overflowing it drops the next SYN, /healthz's too, and its retry waits a whole second
# (capped by net.core.somaxconn, 4096 on current kernels).
BACKLOG = 4096


class ConnectionGate:
    """The green-thread pool of eventlet.wsgi.server (`spawn`, `waitall`), with fair shares.

    A connection "waits" from accept until its headers are read (and again while a keep-alive
    connection waits for its next request). An address at `per_address` open connections (0:
    no cap) and a server at `size` make the oldest waiting connection, of that address or of
    all, give way to the newcomer; the newcomer is refused only when none is waiting.
    Counters feed /metrics.
    """

    # /metrics: chatroom_http_<name> for each number of status() (eventlet mode).
    METRICS = {
        "connections": ("gauge", "Open HTTP connections"),
        "waiting_for_headers": ("gauge", "Connections still sending their request line and headers"),
        "refused_address": ("counter", "Connections refused: MAX_CONNECTIONS_PER_ADDRESS busy with requests"),
        "evicted_address": ("counter", "Connections waiting for headers closed for a newcomer of their address"),
        "refused_full": ("counter", "Connections refused: every connection busy with a request"),
        "evicted_waiting": ("counter", "Connections waiting for headers closed for a newcomer (server full)"),
        "header_timeouts": ("counter", "Connections closed for headers not complete within HEADER_TIMEOUT"),
    }

    def __init__(self, size: int, per_address: int, header_timeout: float):
        self.size = size
        self.per_address = per_address
        self.header_timeout = header_timeout
        self._live: dict[Any, str | None] = {}     # green thread -> peer address
        self._per_address: Counter[str] = Counter()
        self._waiting: OrderedDict[Any, None] = OrderedDict()  # oldest first
        self._waiting_of: dict[str, OrderedDict[Any, None]] = {}  # the same, per address
        self._cancelled: set[Any] = set()  # evicted before they ran
        self.counts = Counter({"refused_address": 0, "evicted_address": 0, "refused_full": 0,
                               "evicted_waiting": 0, "header_timeouts": 0})
        self.episode = FloodEpisode(log, "HTTP connection caps")

    # -- the pool eventlet.wsgi.server calls from its accept loop (never blocks it)
    def spawn(self, function: Callable[[list], Any], conn_state: list) -> Any:
        import eventlet

        peer = conn_state[0]
        address = peer[0] if self.per_address and isinstance(peer, tuple) else None
        if address is not None and self._per_address[address] >= self.per_address:
            if not self._evict_oldest(self._waiting_of.get(address), "evicted_address",
                                      f"{self.per_address} open from {address!r}"):
                return self._refuse("refused_address", f"{self.per_address} busy from {address!r}")
        if len(self._live) >= self.size and not self._evict_oldest(self._waiting, "evicted_waiting",
                                                                   f"{self.size} connections open"):
            return self._refuse("refused_full", f"{self.size} connections, none waiting for headers")
        thread = eventlet.spawn(self._serve, function, conn_state)
        self._live[thread] = address
        if address is not None:
            self._per_address[address] += 1
        self.reading_headers(thread)  # from accept: a burst accepted before any thread ran counts too
        thread.link(self._finished)
        return thread

    def waitall(self) -> None:
        for thread in list(self._live):
            try:
                thread.wait()
            except Exception:  # its own failure, already reported by the hub
                pass

    # -- the protocol's side
    def reading_headers(self, thread: Any) -> None:
        if thread not in self._waiting:
            self._waiting[thread] = None
            address = self._live.get(thread)
            if address is not None:
                self._waiting_of.setdefault(address, OrderedDict())[thread] = None

    def headers_read(self, thread: Any) -> None:
        if self._waiting.pop(thread, False) is None:
            address = self._live.get(thread)
            queue = self._waiting_of.get(address) if address is not None else None
            if address is not None and queue is not None:
                queue.pop(thread, None)
                if not queue:
                    del self._waiting_of[address]

    def status(self) -> dict[str, float]:
        return {"connections": len(self._live), "waiting_for_headers": len(self._waiting), **self.counts}

    def _evict_oldest(self, queue: OrderedDict[Any, None] | None, kind: str, detail: str) -> bool:
        while queue:
            thread = next(iter(queue))
            self.headers_read(thread)  # out of every queue
            if thread.dead:
                continue
            self.counts[kind] += 1
            self.episode.record(kind.replace("_", " "), f"{detail}: the longest waiting for headers goes")
            if thread:  # running: raised where it waits for its headers; process_request closes it quietly
                thread.kill(socket.timeout("closed for a newcomer"))
            else:  # not started yet: it returns at once (eventlet's kill cannot raise into it cleanly)
                self._cancelled.add(thread)
            return True
        return False

    def _serve(self, function: Callable[[list], Any], conn_state: list) -> None:
        from eventlet import getcurrent

        if getcurrent() not in self._cancelled:
            function(conn_state)

    def _finished(self, thread: Any) -> None:
        self.headers_read(thread)
        self._cancelled.discard(thread)
        address = self._live.pop(thread, None)
        if address is not None:
            self._per_address[address] -= 1
            if not self._per_address[address]:
                del self._per_address[address]

    def _refuse(self, kind: str, detail: str) -> "_Refused":
        self.counts[kind] += 1
        self.episode.record(kind.replace("_", " "), detail)
        return _Refused()


class _Refused:
    """What spawn returns for a refused connection: eventlet links its clean-up (which closes
    the socket) to it, so the connection is closed at once, before a byte is read."""

    def link(self, callback: Callable[..., Any], *args: Any) -> None:
        callback(self, *args)


def _closes_instead(*args: Any) -> None:
    """eventlet reads and discards a body the application left unread, to reuse the
    connection: a stranger trickling a body of a gigabyte held it for ever (every byte renews
    the socket timeout). An OSError here makes eventlet close the connection instead."""
    raise OSError("request body left unread: the connection is closed, not drained")


def _within(deadline: float, read: Callable[..., Any]) -> Callable[..., Any]:
    """`read` of the request body, bounded by a total deadline however the bytes trickle."""
    from eventlet import Timeout

    def bounded(*args: Any) -> Any:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("request body not received within HEADER_TIMEOUT")
        with Timeout(remaining, socket.timeout("request body not received within HEADER_TIMEOUT")):
            return read(*args)
    return bounded


def deadline_protocol(gate: ConnectionGate) -> type:
    """An eventlet HttpProtocol whose request line + headers have a total deadline, and
    whose body too (HEADER_TIMEOUT more once the headers are in; our bodies are <= 64 KiB)."""
    from eventlet import Timeout, getcurrent
    from eventlet.wsgi import HttpProtocol

    errors = ThrottledErrorStream(log)

    class DeadlineProtocol(HttpProtocol):
        _deadline: Any = None

        def get_environ(self) -> dict:
            environ = super().get_environ()
            body = environ["eventlet.input"]
            deadline = time.monotonic() + gate.header_timeout
            for name in ("read", "readline", "readlines"):
                setattr(body, name, _within(deadline, getattr(body, name)))
            body.discard = _closes_instead
            environ["wsgi.errors"] = errors
            return environ

        def handle_one_request(self) -> None:
            expired = socket.timeout("no complete request headers within HEADER_TIMEOUT")
            # Starts before the request line (an idle keep-alive connection is bounded too);
            # cancelled once parse_request has the headers, so long-polls and websockets run on.
            self._deadline = Timeout(gate.header_timeout, expired)
            gate.reading_headers(getcurrent())
            try:
                super().handle_one_request()
            except socket.timeout as exc:
                if exc is expired:
                    gate.counts["header_timeouts"] += 1
                raise  # eventlet's process_request closes the socket quietly
            finally:
                self._deadline.cancel()
                gate.headers_read(getcurrent())

        def parse_request(self) -> bool:
            try:
                return super().parse_request()
            finally:
                self._deadline.cancel()
                gate.headers_read(getcurrent())

    return DeadlineProtocol


def address_family(host: str, port: int) -> int:
    """IPv4 or IPv6, as HOST resolves."""
    return socket.getaddrinfo(host, port)[0][0]


def serve_wsgi(wsgi_app: Callable, host: str, port: int, gate: ConnectionGate) -> None:
    """eventlet.wsgi with the header deadline and the gate as its pool, until the process ends."""
    import eventlet
    import eventlet.wsgi

    raise_open_files_limit(gate.size)
    listener = eventlet.listen((host, port), family=address_family(host, port), backlog=BACKLOG)
    # Accepted sockets inherit TCP_NODELAY: without it, small Socket.IO frames
    # wait on the browser's delayed ACK and fan-out latency climbs to seconds
    # at 1 000 msg/s (docs/PERFORMANCE.md).
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def tick() -> None:  # the "flood over" log line
        while True:
            eventlet.sleep(1.0)
            gate.episode.tick()
    eventlet.spawn(tick)
    # A connection that sends nothing for SOCKET_TIMEOUT seconds is closed (a live
    # websocket answers Engine.IO's ping every 25 s).
    eventlet.wsgi.server(listener, wsgi_app, log_output=False, socket_timeout=SOCKET_TIMEOUT,
                         protocol=deadline_protocol(gate), custom_pool=gate)


def serve(app: Flask, settings: Settings, socketio: SocketIO, gate: ConnectionGate) -> None:
    """Serve HTTP + Socket.IO until the process is stopped."""
    if settings.async_mode != "eventlet":
        socketio.run(app, host=settings.host, port=settings.port, allow_unsafe_werkzeug=True,
                     log_output=False)
        return
    serve_wsgi(app, settings.host, settings.port, gate)


def connection_gate(settings: Settings) -> ConnectionGate:
    """Behind a proxy every peer is the proxy: no per-address connection cap then."""
    return ConnectionGate(MAX_CONNECTIONS, 0 if settings.trusted_proxies else settings.max_connections_per_address,
                          settings.header_timeout)


def raise_open_files_limit(connections: int = MAX_CONNECTIONS) -> None:
    """Each connection is a file descriptor; the usual soft limit (1024) is below MAX_CONNECTIONS."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = connections + 256 if hard == resource.RLIM_INFINITY else min(hard, connections + 256)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def port_problem(host: str, port: int) -> str | None:
    """Why the web server could not listen on host:port, found before anything starts."""
    try:
        with socket.socket(address_family(host, port), socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        return exc.strerror or str(exc)
    return None
