"""Many Socket.IO web clients in one thread, cheap enough to measure a server's fan-out.

A benchmark receiver in Python easily costs more than the server it measures
(BASELINES trap 5: python-socketio's threaded client ~290 µs per event). These
clients speak just enough of WebSocket (RFC 6455), Engine.IO 4 and Socket.IO 5
over plain sockets and one selector: open, connect to "/", `join` the lobby,
answer pings, and for each `chat_message` note when it arrived and the send time
carried in its content ("<n> <perf_counter>"), without decoding the JSON.
"""
from __future__ import annotations

import base64
import gc
import json
import os
import selectors
import socket
import struct
import time
from urllib.parse import urlsplit

CHAT = b'42["chat_message",'
PING = b"\x81\x012"  # an unmasked text frame of one byte, Engine.IO's "2"
CONTENT = b'"content":"'


def _frame(text: str) -> bytes:
    """A masked client text frame."""
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return header + mask + masked


class _Client:
    def __init__(self, host: str, port: int):
        self.sock = socket.create_connection((host, port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {host}:{port}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buffer = b""
        self.tail = b""
        while b"\r\n\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket upgrade refused")
            self.buffer += chunk
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(head.split(b"\r\n", 1)[0].decode())

    def frames(self) -> list[bytes]:
        """Complete frames' payloads in the buffer (server frames are not masked).

        Walked by offset and cut once: cutting the buffer after each frame copied the
        rest of a 256 KB read every time, which cost the receivers more CPU per
        delivery than the relay they measured."""
        out = []
        buffer, offset, size = self.buffer, 0, len(self.buffer)
        while size - offset >= 2:
            length, start = buffer[offset + 1] & 0x7F, offset + 2
            if length == 126:
                if size - offset < 4:
                    break
                length, start = (buffer[offset + 2] << 8) | buffer[offset + 3], offset + 4
            elif length == 127:
                if size - offset < 10:
                    break
                length, start = struct.unpack_from("!Q", buffer, offset + 2)[0], offset + 10
            if size < start + length:
                break
            out.append(buffer[start:start + length])
            offset = start + length
        if offset:
            self.buffer = buffer[offset:]
        return out


class Receivers:
    """`count` clients, all read by `run_until` on the calling thread."""

    def __init__(self, url: str, count: int, join: bool = True):
        parts = urlsplit(url)
        # Counting alone (`count_only`, for throughput): each read's chat messages are
        # counted by bytes.count, in C, instead of parsing each frame in Python.
        self.count_only = False
        self.selector = selectors.DefaultSelector()
        self.clients = []
        self.delays: list[float] = []
        self.got = 0
        self.last = 0.0
        for index in range(count):
            client = _Client(parts.hostname, parts.port)
            client.sock.setblocking(False)
            self.selector.register(client.sock, selectors.EVENT_READ, client)
            self.clients.append(client)
            self._await(client, b"0")                       # Engine.IO open
            client.sock.sendall(_frame("40"))
            self._await(client, b"40")                      # Socket.IO connected to "/"
            if join:
                name = f"r{os.getpid()}-{index}"
                client.sock.sendall(_frame("420" + json.dumps(["join", {"room": "lobby", "username": name}])))
                self._await(client, b"430")                 # the join's ack

    def _await(self, client: _Client, prefix: bytes, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            for frame in client.frames():
                if frame.startswith(prefix):
                    return
                self._handle(client, frame)
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {prefix!r} frame")
            self._poll(0.5)

    def _handle(self, client: _Client, frame: bytes) -> None:
        if frame == b"2":
            client.sock.sendall(_frame("3"))
        elif frame.startswith(CHAT):
            received = time.perf_counter()
            start = frame.find(CONTENT) + len(CONTENT)
            sent = float(frame[start:frame.find(b'"', start)].split()[1])
            self.delays.append((received - sent) * 1000)
            self.got += 1
            self.last = received

    def _poll(self, timeout: float) -> None:
        for key, _ in self.selector.select(timeout):
            client = key.data
            try:
                chunk = client.sock.recv(262144)
            except BlockingIOError:
                continue
            if not chunk:
                self.selector.unregister(client.sock)
                continue
            if self.count_only:
                data = client.tail + chunk   # a CHAT cut in two by the read is found whole
                found = data.count(CHAT)
                if found:
                    self.got += found
                    self.last = time.perf_counter()
                if PING in data:
                    client.sock.sendall(_frame("3"))
                client.tail = data[-len(CHAT) + 1:]
                continue
            client.buffer += chunk

    def run_until(self, expected: int, timeout: float) -> None:
        """Read until `expected` chat messages arrived in all (or `timeout` passed)."""
        deadline = time.monotonic() + timeout
        while self.got < expected and time.monotonic() < deadline:
            self._poll(0.2)
            if self.count_only:
                continue
            for client in self.clients:
                if client.buffer:
                    for frame in client.frames():
                        self._handle(client, frame)

    def _handle_buffered(self, client: _Client) -> None:
        for frame in client.frames():
            self._handle(client, frame)

    def reset(self) -> None:
        self.delays, self.got, self.last = [], 0, 0.0

    def close(self) -> None:
        for client in self.clients:
            try:
                client.sock.close()
            except OSError:
                pass
        self.selector.close()


def receiver_process(url: str, count: int, join: bool, commands, count_only: bool = False) -> None:
    """A process of `count` web clients, driven through a Pipe: each number received is how
    many chat messages to wait for (90 s at most); it answers (got, last arrival, delays in
    ms, its own CPU seconds). None ends it. `count_only`: no delays, only counts (cheaper)."""
    receivers = Receivers(url, count, join)
    for client in receivers.clients:
        receivers._handle_buffered(client)  # whatever came with the join, before counting
    receivers.count_only = count_only
    commands.send("joined")
    while True:
        expected = commands.recv()
        if expected is None:
            break
        receivers.reset()
        gc.collect()
        gc.disable()  # a collection here would be counted as the server's latency
        cpu = time.process_time()
        receivers.run_until(expected, 90)
        gc.enable()
        commands.send((receivers.got, receivers.last, receivers.delays, time.process_time() - cpu))
    receivers.close()
