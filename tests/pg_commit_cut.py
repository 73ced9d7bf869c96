"""A TCP proxy in front of PostgreSQL that can cut the connection right after forwarding a
COMMIT: the server commits, its answer never reaches the client (a restart or failover at that
moment). For the store's "a lost reply is not a lost batch" test."""
from __future__ import annotations

import socket
import struct
import threading


class CommitCuttingProxy:
    def __init__(self, target_port: int = 5432):
        self.target_port = target_port
        self.cut_next_commit = threading.Event()
        self._listener = socket.socket()
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(8)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        server = socket.create_connection(("127.0.0.1", self.target_port))
        muted, committed = threading.Event(), threading.Event()
        threading.Thread(target=self._answers, args=(server, client, muted, committed), daemon=True).start()
        buffer, started = b"", False
        try:
            while data := client.recv(65536):
                buffer += data
                while True:
                    if not started:  # the startup message: a length, no type byte
                        if len(buffer) < 4 or len(buffer) < struct.unpack("!I", buffer[:4])[0]:
                            break
                        size = struct.unpack("!I", buffer[:4])[0]
                        server.sendall(buffer[:size])
                        buffer, started = buffer[size:], True
                        continue
                    if len(buffer) < 5 or len(buffer) < struct.unpack("!I", buffer[1:5])[0] + 1:
                        break
                    size = struct.unpack("!I", buffer[1:5])[0] + 1
                    message, buffer = buffer[:size], buffer[size:]
                    commit = message[:1] == b"Q" and message[5:11] == b"COMMIT" and self.cut_next_commit.is_set()
                    if commit:
                        muted.set()  # the server's answer to it is not forwarded
                    server.sendall(message)
                    if commit:
                        self.cut_next_commit.clear()
                        committed.wait(10)  # the server answered: it committed; the client never hears it
                        raise OSError("cut after COMMIT")
        except OSError:
            pass
        for end in (client, server):
            try:
                end.close()
            except OSError:
                pass

    @staticmethod
    def _answers(server: socket.socket, client: socket.socket, muted: threading.Event,
                 committed: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if muted.is_set():
                    committed.set()
                    return
                client.sendall(data)
        except OSError:
            pass
