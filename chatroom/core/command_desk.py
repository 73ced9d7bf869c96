"""Sending a declared command to a device and waiting for its answer (PROTOCOL 11).

`submit` checks the command against the device's declaration, records the `command`
event in its room (stored: the audit trail), and hands the command to the transport (the
MQTT bridge, attached by app.py); `wait` blocks the caller (an HTTP request, a Socket.IO
event, the assistant's worker, a Home Assistant command's waiter) until the device's ack
or the timeout, and records the `command_result`. Waiters are bounded: at most
`max_pending` commands wait at once (`per_device` per device), beyond that a command is
refused `rate_limited` before anything is sent. An ack after the timeout is recorded as
`late` (the last few hundred timed-out commands are remembered). Stdlib only.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

from chatroom.core.commands import CommandSpec, Declared, DeclaredCommands
from chatroom.core.errors import RelayError, ValidationError
from chatroom.core.model import Message, Source, SystemEvent, dumps, new_message_id, utc_timestamp
from chatroom.core.room import Rooms

log = logging.getLogger(__name__)

MAX_PENDING = 64
PER_DEVICE = 4
LATE_MEMORY = 256
MAX_RESULT_BYTES = 1024
MAX_ERROR_CHARS = 256
RECORD = "system_message"  # the history type of a stored command event


def _base_name(name: str) -> str:
    """"Heater (2)" -> "Heater": the name a fleet of identical devices shares (PROTOCOL 2)."""
    head, _, tail = name.rpartition(" (")
    return head if head and tail.endswith(")") and tail[:-1].isdigit() else name


class Transport(Protocol):
    """What sends commands to devices (mqtt_service/device_commands.py)."""

    def connected(self) -> bool: ...
    def send_command(self, client_id: str, payload: bytes) -> None: ...


class CommandTimeout(RelayError):
    def __init__(self, command_id: str, seconds: float):
        super().__init__("timeout", f"the device did not answer within {seconds:g} s")
        self.command_id = command_id


@dataclass(frozen=True)
class Asker:
    """Who asks: the name shown in the room and sent as `from`, and by which way."""

    name: str
    source: str


@dataclass(frozen=True)
class Answer:
    command_id: str
    ok: bool
    result: Any = None
    error: str | None = None

    def to_dict(self) -> dict:
        body: dict[str, Any] = {"ok": self.ok}
        if self.ok:
            body["result"] = self.result
        else:
            body["error"] = self.error
        body["command_id"] = self.command_id
        return body


@dataclass
class Pending:
    command_id: str
    client_id: str
    device: str
    room: str
    command: str
    value: Any
    asker: Asker
    seconds: float
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None


@dataclass
class DeskStats:
    sent: int = 0
    answered: int = 0
    timed_out: int = 0
    late: int = 0
    refused_busy: int = 0
    acks_ignored: int = 0   # an unknown command_id, or one sent to another device
    acks_invalid: int = 0


class CommandDesk:
    METRICS = {
        "sent": ("counter", "Commands sent to devices"),
        "answered": ("counter", "Commands a device answered in time"),
        "timed_out": ("counter", "Commands no answer came for in time"),
        "late": ("counter", "Answers that came after their command timed out"),
        "refused_busy": ("counter", "Commands refused because too many were waiting"),
        "acks_ignored": ("counter", "Acks for no command of that device (unknown or foreign command_id)"),
        "acks_invalid": ("counter", "Acks that were not a valid answer"),
        "pending": ("gauge", "Commands waiting for their answer"),
        "declarations_evicted": ("counter", "Declarations of devices not present evicted for a newcomer (MAX_DEVICES)"),
        "declarations_left_out": ("counter", "Newcomers' declarations left out: every declaring device was present"),
    }

    def __init__(self, rooms: Rooms, declared: DeclaredCommands, max_pending: int = MAX_PENDING,
                 per_device: int = PER_DEVICE):
        self.rooms = rooms
        self.declared = declared
        self.max_pending = max_pending
        self.per_device = per_device
        self.transport: Transport | None = None
        self.stats = DeskStats()
        self._pending: dict[str, Pending] = {}
        self._late: OrderedDict[str, Pending] = OrderedDict()
        self._lock = threading.Lock()
        self._on_done: list[Callable[[Pending, Answer], None]] = []
        # A full declaration table evicts only devices that are not present (chatroom/core/commands.py).
        declared.present = lambda: {user.client_id for _, user in rooms.members(Source.MQTT) if user.client_id}

    def on_done(self, listener: Callable[[Pending, Answer], None]) -> None:
        """`listener(pending, answer)` for every answer that came, in time or late (the
        device's state changed, whoever asked: Home Assistant's entity state follows)."""
        self._on_done.append(listener)

    # --- asking --------------------------------------------------------------------

    def device(self, client_id: str) -> Declared:
        """The device's declaration: unknown_device when never seen, bad_field when it declares nothing."""
        declared = self.declared.get(client_id)
        if declared is not None:
            return declared
        if any(user.client_id == client_id for _, user in self.rooms.members(Source.MQTT)):
            raise ValidationError("bad_field", "that device declares no commands")
        raise ValidationError("unknown_device", "no device with that client_id has been seen")

    def resolve(self, room: str, device: Any) -> str:
        """The client_id of the declaring device of `room` that `device` names: its client_id,
        its display name, or the name a fleet shares ("Heater" for "Heater" and "Heater (2)":
        ambiguous, so refused). A text that is one device's client_id and another's name is
        ambiguous too: a device may choose its client_id, so naming itself after another
        device's name must not take that device's commands."""
        if not isinstance(device, str) or not device.strip():
            raise ValidationError("bad_field", "name the device (its name or client_id)")
        candidates = self.declared.in_room(room)
        key = self.rooms.name_key(device.strip())
        found = [d for d in candidates if d.client_id == device
                 or key in (self.rooms.name_key(d.username), self.rooms.name_key(_base_name(d.username)))]
        if len(found) == 1:
            return found[0].client_id
        if found:
            raise ValidationError("bad_field", f"{device.strip()[:32]!r} is ambiguous: it names "
                                               f"{', '.join(f'{d.username} ({d.client_id})' for d in found[:5])}; "
                                               "say which")
        raise ValidationError("bad_field", f"no device {device.strip()[:32]!r} with commands in {room}")

    def online(self, declared: Declared) -> bool:
        return self.rooms.member(declared.room, (Source.MQTT, declared.client_id)) is not None

    def submit(self, client_id: str, command: Any, value: Any, asker: Asker, seconds: float,
               from_text: bool = False, admit: Callable[[], None] | None = None) -> Pending:
        """Check, record and send a command. `from_text`: a text value is read as the
        command's type (Home Assistant's plain payloads, `/cmd`); `admit`: the caller's rate
        limit, spent once the command is found valid (a refused one takes no token)."""
        declared = self.device(client_id)
        spec = declared.commands.get(command) if isinstance(command, str) else None
        if spec is None:
            raise ValidationError("bad_field", f"the device declares no command {str(command)[:32]!r}; it has "
                                               f"{', '.join(declared.commands) or 'none'}")
        value = self._value(spec, value, from_text)
        if not self.online(declared):
            raise ValidationError("device_offline", f"{declared.username} is not online; the command is not sent")
        transport = self.transport
        if transport is None or not transport.connected():
            raise ValidationError("bridge_off", "the MQTT bridge is not connected to the broker")
        pending = Pending(new_message_id(), client_id, declared.username, declared.room, command, value, asker,
                          seconds)
        self._reserve(pending)  # before the caller's token: a command refused as "too many waiting" takes none
        try:
            if admit is not None:
                admit()
            self._record_command(pending)
            payload = {"command_id": pending.command_id, "command": command, "value": value,
                       "from": asker.name, "timestamp": utc_timestamp()}
            transport.send_command(client_id, dumps(payload).encode("utf-8"))
        except BaseException:
            with self._lock:
                self._pending.pop(pending.command_id, None)
            raise
        with self._lock:
            self.stats.sent += 1
        return pending

    @staticmethod
    def _value(spec: CommandSpec, value: Any, from_text: bool) -> Any:
        if from_text and isinstance(value, str) and spec.type in ("bool", "number"):
            return spec.coerce(value)
        return spec.check(value)

    def _reserve(self, pending: Pending) -> None:
        with self._lock:
            mine = sum(1 for other in self._pending.values() if other.client_id == pending.client_id)
            if len(self._pending) >= self.max_pending or mine >= self.per_device:
                self.stats.refused_busy += 1
                raise ValidationError("rate_limited", "too many commands are waiting for an answer; try again",
                                      retry_after=1.0)
            self._pending[pending.command_id] = pending

    def wait(self, pending: Pending) -> Answer:
        """The device's answer (recorded in the room), or CommandTimeout (recorded too)."""
        try:
            pending.done.wait(pending.seconds)
        finally:  # the slot is freed however the wait ends (a killed green thread too)
            with self._lock:  # an ack sets the answer under this lock: it came, or it is late
                self._pending.pop(pending.command_id, None)
                if pending.answer is None:
                    self.stats.timed_out += 1
                    self._late[pending.command_id] = pending
                    while len(self._late) > LATE_MEMORY:
                        self._late.popitem(last=False)
        if pending.answer is None:
            self._record_result(pending, "timeout", None)
            raise CommandTimeout(pending.command_id, pending.seconds)
        self._record_result(pending, "ok" if pending.answer.ok else "error", pending.answer)
        self._done(pending, pending.answer)
        return pending.answer

    def _done(self, pending: Pending, answer: Answer) -> None:
        for listener in self._on_done:
            try:
                listener(pending, answer)
            except Exception:  # a listener's failure must not turn an answer into an error
                log.exception("command answer listener failed")

    def run(self, client_id: str, command: Any, value: Any, asker: Asker, seconds: float,
            from_text: bool = False, admit: Callable[[], None] | None = None) -> Answer:
        return self.wait(self.submit(client_id, command, value, asker, seconds, from_text, admit))

    # --- answers ---------------------------------------------------------------------

    def on_ack(self, client_id: str, ack: dict) -> str:
        """An ack from the device's own topic: 'answered', 'late' or 'ignored'.
        Raises bad_field for an ack that is not a valid answer."""
        answer = self._parse_ack(ack)
        with self._lock:
            pending = self._pending.get(answer.command_id)
            if pending is not None and pending.client_id == client_id and pending.answer is None:
                pending.answer = answer
                self.stats.answered += 1
                pending.done.set()
                return "answered"
            late = self._late.get(answer.command_id)
            if late is not None and late.client_id == client_id:
                del self._late[answer.command_id]
                self.stats.late += 1
            else:
                self.stats.acks_ignored += 1
                return "ignored"
        self._record_result(late, "late", answer)
        self._done(late, answer)
        return "late"

    def _parse_ack(self, ack: dict) -> Answer:
        try:
            command_id, ok = ack.get("command_id"), ack.get("ok")
            if not isinstance(command_id, str) or not 1 <= len(command_id) <= 64:
                raise ValidationError("bad_field", "an ack needs the command_id it answers")
            if not isinstance(ok, bool):
                raise ValidationError("bad_field", "an ack's ok must be true or false")
            if ok:
                result = ack.get("result")
                if len(dumps(result).encode("utf-8")) > MAX_RESULT_BYTES:
                    raise ValidationError("bad_field", f"an ack's result must be at most {MAX_RESULT_BYTES} bytes of JSON")
                return Answer(command_id, True, result=result)
            error = ack.get("error", "refused")
            if not isinstance(error, str) or len(error) > MAX_ERROR_CHARS or not error.isprintable():
                raise ValidationError("bad_field", f"an ack's error must be a text of at most {MAX_ERROR_CHARS} "
                                                   "printable characters")
            return Answer(command_id, False, error=error or "refused")
        except ValidationError:
            with self._lock:
                self.stats.acks_invalid += 1
            raise

    # --- the audit trail ------------------------------------------------------------------

    def _record_command(self, pending: Pending) -> None:
        text = f"{pending.asker.name} → {pending.device}: {pending.command} = {dumps(pending.value)}"
        details = {"event": "command", **self._common(pending), "from": pending.asker.name,
                   "source": pending.asker.source}
        self._record(pending.room, pending.asker.name, text, pending.asker.source, details)

    def _record_result(self, pending: Pending, status: str, answer: Answer | None) -> None:
        if status == "timeout":
            text = f"{pending.device} did not answer {pending.command} within {pending.seconds:g} s"
        elif answer is not None and answer.ok:
            shown = "" if answer.result is None else f": {dumps(answer.result)[:200]}"
            text = f"{pending.device} → {pending.asker.name}: {pending.command} done{shown}"
        else:
            text = f"{pending.device} → {pending.asker.name}: {pending.command} refused: {answer.error if answer else ''}"
        if status == "late":
            text += " (late)"
        details: dict[str, Any] = {"event": "command_result", **self._common(pending), "from": pending.asker.name,
                                   "status": status, "ok": bool(answer and answer.ok)}
        if answer is not None:
            details["result" if answer.ok else "error"] = answer.result if answer.ok else answer.error
        self._record(pending.room, pending.device, text, Source.MQTT, details)

    @staticmethod
    def _common(pending: Pending) -> dict:
        return {"command_id": pending.command_id, "client_id": pending.client_id, "device": pending.device,
                "command": pending.command, "value": pending.value}

    def _record(self, room: str, username: str, text: str, source: str, details: dict) -> None:
        """Stored in history (type system_message, the details in `data`) and seen live as a
        system event carrying the details and its seq."""
        event = details["event"]

        def as_event(message: Message) -> SystemEvent:
            return SystemEvent(event, text, room, username, timestamp=message.timestamp, details=details,
                               record=message)

        # client_id stays None: the record is not the device's reading (state, /api/readings).
        self.rooms.post(room, username, text, source, type=RECORD, data=details, event_of=as_event)

    # --- status ------------------------------------------------------------------------

    def status(self) -> dict:
        with self._lock:
            return {**vars(self.stats), "pending": len(self._pending),
                    "declarations_evicted": self.declared.evicted, "declarations_left_out": self.declared.left_out}
