"""A small OpenAI-compatible server (stdlib only) for the assistant's tests.

Serves POST /v1/chat/completions with and without `stream`. Tell it how to
behave with `behave(...)`: the reply text, a delay before answering or between
chunks, an HTTP status to fail with, a gate to hold replies until released, or
`tool_calls` ([{"name", "arguments": dict}]) to answer with instead of text
(streamed in pieces, as OpenAI streams them).
It records every request body and Authorization header it saw.
"""
from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self):
        self.requests: list[dict] = []
        self.auth_headers: list[str] = []
        self.reply = "Hello from the fake model."
        self.chunk_size = 5
        self.delay = 0.0          # seconds before the first byte
        self.chunk_delay = 0.0    # seconds between streamed chunks
        self.fail_status: int | None = None
        self.tool_calls: list[dict] = []  # answered instead of the reply text when set
        self.gate: threading.Event | None = None  # hold answers until set
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> "FakeOpenAI":
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.gate is not None:
            self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def behave(self, **settings) -> None:
        for key, value in settings.items():
            setattr(self, key, value)

    def wait_requests(self, count: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while len(self.requests) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"fake OpenAI saw {len(self.requests)} requests, wanted {count}")
                self._cond.wait(remaining)
            return list(self.requests)

    def wait_in_flight(self, count: int, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while self.in_flight < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{self.in_flight} requests in flight, wanted {count}")
                self._cond.wait(remaining)

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                with fake._cond:
                    fake.requests.append(body)
                    fake.auth_headers.append(self.headers.get("Authorization", ""))
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                    fake._cond.notify_all()
                try:
                    self._answer(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): fine
                finally:
                    with fake._cond:
                        fake.in_flight -= 1
                        fake._cond.notify_all()

            def _answer(self, body):
                if self.path != "/v1/chat/completions":
                    return self._json(404, {"error": {"message": "not found"}})
                if fake.gate is not None:
                    fake.gate.wait(60)
                if fake.delay:
                    time.sleep(fake.delay)  # the fake model being slow, on purpose
                if fake.fail_status:
                    return self._json(fake.fail_status, {"error": {"message": "fake failure", "type": "server_error"}})
                if body.get("stream") and fake.tool_calls:
                    return self._stream_tool_calls(body)
                if body.get("stream"):
                    return self._stream(body)
                return self._json(200, {
                    "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
                    "model": body.get("model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": fake.reply},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                })

            def _stream(self, body):
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                pieces = [fake.reply[i:i + fake.chunk_size] for i in range(0, len(fake.reply), fake.chunk_size)]
                for index, piece in enumerate(pieces):
                    if index and fake.chunk_delay:
                        time.sleep(fake.chunk_delay)
                    self._event({"choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]},
                                body)
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}, body)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _stream_tool_calls(self, body):
                """Each call's name in its first piece, its arguments in two more (as OpenAI does)."""
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Connection", "close")
                self.end_headers()
                for index, call in enumerate(fake.tool_calls):
                    arguments = json.dumps(call["arguments"])
                    half = len(arguments) // 2
                    first = {"index": index, "id": f"call_{index}", "type": "function",
                             "function": {"name": call["name"], "arguments": ""}}
                    self._event({"choices": [{"index": 0, "delta": {"role": "assistant", "tool_calls": [first]},
                                              "finish_reason": None}]}, body)
                    for piece in (arguments[:half], arguments[half:]):
                        self._event({"choices": [{"index": 0, "delta": {"tool_calls": [
                            {"index": index, "function": {"arguments": piece}}]}, "finish_reason": None}]}, body)
                self._event({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}, body)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
                self.close_connection = True

            def _event(self, fields, body):
                chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()),
                         "model": body.get("model"), **fields}
                self.wfile.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
                self.wfile.flush()

            def _json(self, status, payload):
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
