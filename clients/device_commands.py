"""Commands and requests for python_client.py (PROTOCOL 11): keep it next to that file.

- A device declares its commands in its join and, with --on-command HANDLER, runs
  HANDLER for each command the server (or anyone allowed on the broker) publishes on
  P/devices/<id>/commands, then acknowledges it on P/devices/<id>/commands/ack.
The flags and the modes that ask (--command, --history-since) are in command_line.py.
Standard library only.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import queue
import re
import subprocess
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from typing import Any, Callable, TextIO

COMMAND_TYPES = ("bool", "number", "enum", "text")
MAX_COMMANDS = 16  # the contract's bound
HANDLER_SECONDS = 8.0  # under the server's default command timeout (10 s), so a slow handler is still answered
MAX_RESULT_BYTES = 1024  # the server's bound on an ack's result (as JSON)
MAX_ERROR_CHARS = 256  # ... and on its error text
STALE_SECONDS = 60  # a command queued that long (a broker's persistent session) is not done
MAX_WAITING = 16  # commands queued behind a running handler; more are answered "busy"
REMEMBERED_ACKS = 64  # a QoS 1 redelivery gets the same ack, the handler does not run twice

_SAFE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_COMMAND_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")  # a topic level for Home Assistant, a word in /cmd
_SPEC_KEYS = {"bool": set(), "number": {"min", "max", "step"}, "enum": {"options"}, "text": {"max"}}


def topic_id(client_id: str) -> str:
    """The level the server gives this client_id under P/devices/ (docs/PROTOCOL.md):
    the id itself when it is letters, digits, _ and -, else a slug, `~` and 8 hex digits
    of its SHA-1 (so no id adds topic levels, and no plain id is another's level)."""
    if _SAFE_ID.fullmatch(client_id):
        return client_id
    slug = re.sub(r"[^A-Za-z0-9_-]+", "_", client_id).strip("_")[:48] or "device"
    return f"{slug}~{hashlib.sha1(client_id.encode('utf-8')).hexdigest()[:8]}"


def parse_declaration(text: str) -> dict:
    """`--commands` JSON -> the declaration sent in the join; ValueError says what is wrong.
    The server's rules (docs/PROTOCOL.md), checked here so a typo is not a silent bad_field."""
    try:
        declared = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--commands is not JSON: {exc}") from None
    if not isinstance(declared, dict) or not 1 <= len(declared) <= MAX_COMMANDS:
        raise ValueError(f'--commands must be an object of 1-{MAX_COMMANDS} commands, '
                         'like {"led": {"type": "bool"}}')
    for name, spec in declared.items():
        if not _COMMAND_NAME.fullmatch(name):
            raise ValueError(f"command name {name!r}: 1-32 letters, digits, '_', '-' or '.'")
        if not isinstance(spec, dict) or spec.get("type") not in COMMAND_TYPES:
            raise ValueError(f"command {name!r} needs a type: one of {', '.join(COMMAND_TYPES)}")
        extra = set(spec) - {"type"} - _SPEC_KEYS[spec["type"]]
        if extra:
            raise ValueError(f"command {name!r}: a {spec['type']} takes no {', '.join(sorted(extra))}")
        problem = _spec_problem(spec)
        if problem:
            raise ValueError(f"command {name!r}: {problem}")
    return declared


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _spec_problem(spec: dict) -> str | None:
    kind = spec["type"]
    if kind == "number":
        if any(bound in spec and not _is_number(spec[bound]) for bound in ("min", "max", "step")):
            return "min, max and step must be numbers"
        if "min" in spec and "max" in spec and spec["min"] > spec["max"]:
            return "min is above max"
        if "step" in spec and spec["step"] <= 0:
            return "step must be above 0"
    if kind == "enum":
        options = spec.get("options")
        if not (isinstance(options, list) and 1 <= len(options) <= 16 and len(set(map(str, options))) == len(options)
                and all(isinstance(o, str) and 1 <= len(o) <= 64 and o.isprintable() for o in options)):
            return "options must be 1-16 different texts of 1-64 printable characters"
    if kind == "text" and "max" in spec and not (isinstance(spec["max"], int) and 1 <= spec["max"] <= 255):
        return "max must be a whole number from 1 to 255"
    return None


def value_problem(spec: dict, value: Any) -> str | None:
    """Why `value` does not fit the declared command `spec` (None when it does)."""
    kind = spec.get("type")
    if kind == "bool":
        return None if isinstance(value, bool) else "expects true or false"
    if kind == "number":
        if not _is_number(value):
            return "expects a number"
        if "min" in spec and value < spec["min"] or "max" in spec and value > spec["max"]:
            return f"expects a number from {spec.get('min', '-inf')} to {spec.get('max', 'inf')}"
        return None
    if kind == "enum":
        return None if value in spec.get("options", []) else f"expects one of {', '.join(spec.get('options', []))}"
    if not isinstance(value, str) or len(value) > spec.get("max", 255) or not value.isprintable():
        return f"expects text of at most {spec.get('max', 255)} printable characters"
    return None


def is_stale(command: dict, now: datetime | None = None) -> bool:
    """A command older than STALE_SECONDS: a broker kept it while we were away, and a
    heater must not switch on hours later. No or an unreadable timestamp: not stale."""
    try:
        sent = datetime.fromisoformat(str(command["timestamp"]).replace("Z", "+00:00"))
        age = ((now or datetime.now(timezone.utc)) - sent).total_seconds()
    except (KeyError, ValueError, TypeError):
        return False
    return age > STALE_SECONDS


def parse_value(text: str) -> Any:
    """A command-line value: JSON when it is JSON (true, 21.5, "42"), else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


class CommandRunner:
    """Runs the handler for each command, one at a time on its own thread (never on the
    MQTT network thread), and hands each ack to `publish_ack`."""

    def __init__(self, handler: str, declared: dict, publish_ack: Callable[[dict], None], output: TextIO,
                 safe: Callable[[str], str]):
        self.handler, self.declared, self.publish_ack, self.output = handler, declared, publish_ack, output
        self.safe = safe  # the client's escaping of text from the network
        self._waiting: queue.Queue[dict] = queue.Queue(MAX_WAITING)
        self._acks: OrderedDict[str, dict | None] = OrderedDict()  # command_id -> its ack (None: running)
        self._lock = threading.Lock()
        threading.Thread(target=self._work, name="command-handler", daemon=True).start()

    def submit(self, payload: bytes) -> None:
        """One publication on the commands topic (called on the MQTT thread)."""
        try:
            command = json.loads(payload)
        except ValueError:
            command = None
        if not isinstance(command, dict) or not isinstance(command.get("command_id"), str):
            self._say("ignored a command without a command_id (nothing to answer)")
            return
        with self._lock:
            seen = command["command_id"] in self._acks
            done = self._acks.get(command["command_id"])
            if not seen:
                self._acks[command["command_id"]] = None  # running: a redelivery now is not run twice
        if seen:  # a redelivery: the same answer (or the one still coming); the handler runs once
            if done is not None:
                self.publish_ack(done)
            return
        try:
            self._waiting.put_nowait(command)
        except queue.Full:
            self._finish(command, {"command_id": command["command_id"], "ok": False,
                                   "error": "busy: too many commands waiting"})

    def _work(self) -> None:
        while True:
            command = self._waiting.get()
            try:
                ack = self.run(command)
            except Exception as exc:  # noqa: BLE001 - whatever happens, the command is answered and we go on
                ack = {"command_id": command["command_id"], "ok": False, "error": f"handler failed: {exc}"}
            if not ack["ok"]:
                # The server takes at most 256 printable characters (else it refuses the ack).
                ack["error"] = self.safe(ack["error"])[:MAX_ERROR_CHARS]
            self._finish(command, ack)

    def run(self, command: dict) -> dict:
        """The ack for one command: checked against the declaration, then the handler's verdict."""
        ack: dict[str, Any] = {"command_id": command["command_id"]}
        name, value = command.get("command"), command.get("value")
        spec = self.declared.get(name) if isinstance(name, str) else None
        if spec is None:
            return {**ack, "ok": False, "error": f"unknown command {name!r}"}
        problem = value_problem(spec, value)
        if problem:
            return {**ack, "ok": False, "error": f"{name} {problem}"}
        if is_stale(command):
            return {**ack, "ok": False, "error": f"not done: sent more than {STALE_SECONDS} s ago"}
        try:
            done = subprocess.run([self.handler, name, json.dumps(value, ensure_ascii=False)],
                                  input=json.dumps(command, ensure_ascii=False), capture_output=True,
                                  text=True, errors="replace", timeout=HANDLER_SECONDS)
        except subprocess.TimeoutExpired:
            return {**ack, "ok": False, "error": f"handler took longer than {HANDLER_SECONDS:g} s"}
        except OSError as exc:
            return {**ack, "ok": False, "error": f"handler could not run: {exc.strerror or exc}"}
        out = done.stdout.strip()
        if done.returncode != 0:
            why = (done.stderr.strip().splitlines() or [f"handler exited with status {done.returncode}"])[-1]
            return {**ack, "ok": False, "error": why}
        # The handler's stdout is the result: JSON when it is JSON, else its text; nothing
        # printed means "done", and the result is the value it was given.
        result = parse_value(out) if out else value
        if len(json.dumps(result, ensure_ascii=False).encode()) > MAX_RESULT_BYTES:
            return {**ack, "ok": False, "error": f"handler answer over {MAX_RESULT_BYTES} bytes"}
        return {**ack, "ok": True, "result": result}

    def _finish(self, command: dict, ack: dict) -> None:
        with self._lock:
            self._acks[command["command_id"]] = ack
            while len(self._acks) > REMEMBERED_ACKS:
                self._acks.popitem(last=False)
        self.publish_ack(ack)
        verdict = f"ok {json.dumps(ack.get('result'), ensure_ascii=False)}" if ack["ok"] else f"error: {ack['error']}"
        self._say(f"command {command.get('command')} = {json.dumps(command.get('value'), ensure_ascii=False)}"
                  f" from {command.get('from') or '?'}: {verdict}")

    def _say(self, text: str) -> None:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {self.safe(text)}", file=self.output, flush=True)


def handler_problem(handler: str) -> str | None:
    """Why `handler` cannot be run as a program (None when it can)."""
    if not os.path.isfile(handler):
        return f"--on-command {handler!r}: no such file"
    if not os.access(handler, os.X_OK):
        return f"--on-command {handler!r} is not executable (chmod +x, with a #! line)"
    return None
