"""Declared device commands (PROTOCOL 11): what a device says it can be told, checked and kept.

A device declares `"commands": {"<name>": {"type": "bool"|"number"|"enum"|"text", ...}}` in
its join or any message. `parse_declaration` checks it whole (a bad one rejects the input
it came with, `bad_field`); `CommandSpec.check` checks a value against its command;
`CommandSpec.coerce` reads a plain text (Home Assistant's payloads, `/cmd` in the chat).
`DeclaredCommands` keeps the declarations, at most `max_devices` of them (a stranger
inventing ids cannot grow it: the least recently heard device that is not present gives
way; with every one present the newcomer's declaration is left out, so strangers can never
push out a device that is there). Stdlib only.
"""
from __future__ import annotations

import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Collection

from chatroom.core.errors import ValidationError
from chatroom.core.limits import Throttle
from chatroom.core.validation import MAX_SAFE_INTEGER, has_lone_surrogate

log = logging.getLogger(__name__)

MAX_COMMANDS = 16
MAX_OPTIONS = 16
MAX_OPTION_CHARS = 64
MAX_TEXT_CHARS = 255
# A topic level for Home Assistant's command topic and one word of `/cmd`.
COMMAND_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
TYPES = ("bool", "number", "enum", "text")
KEYS = {"bool": {"type"}, "number": {"type", "min", "max", "step"}, "enum": {"type", "options"},
        "text": {"type", "max"}}
TRUE_WORDS = frozenset({"on", "true", "1", "yes"})
FALSE_WORDS = frozenset({"off", "false", "0", "no"})


def _finite(value: Any, what: str) -> float | int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not math.isfinite(value)) or abs(value) > MAX_SAFE_INTEGER:
        raise ValidationError("bad_field", f"{what} must be a finite number")
    return value


def _printable_text(value: Any, max_chars: int, what: str) -> str:
    if not isinstance(value, str) or len(value) > max_chars or not value.isprintable() or (
            not value.isascii() and has_lone_surrogate(value)):
        raise ValidationError("bad_field", f"{what} must be a text of at most {max_chars} printable characters")
    return value


@dataclass(frozen=True)
class CommandSpec:
    """One declared command: its type and bounds."""

    type: str
    min: float | int | None = None
    max: float | int | None = None
    step: float | int | None = None
    options: tuple[str, ...] = ()

    def check(self, value: Any, name: str = "value") -> Any:
        """The value if it fits this command, else bad_field."""
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValidationError("bad_field", f"{name} must be true or false")
            return value
        if self.type == "number":
            number = _finite(value, name)
            if (self.min is not None and number < self.min) or (self.max is not None and number > self.max):
                raise ValidationError("bad_field", f"{name} must be from {self.min} to {self.max}")
            return number
        if self.type == "enum":
            if not isinstance(value, str) or value not in self.options:
                raise ValidationError("bad_field", f"{name} must be one of {', '.join(self.options)}")
            return value
        return _printable_text(value, int(self.max or MAX_TEXT_CHARS), name)

    def coerce(self, text: str, name: str = "value") -> Any:
        """A plain text (Home Assistant, `/cmd`) as this command's value, then checked."""
        if self.type == "bool":
            word = text.strip().lower()
            if word in TRUE_WORDS or word in FALSE_WORDS:
                return word in TRUE_WORDS
            raise ValidationError("bad_field", f"{name} must be on or off")
        if self.type == "number":
            try:
                number = float(text.strip())
            except ValueError:
                raise ValidationError("bad_field", f"{name} must be a number") from None
            return self.check(int(number) if number.is_integer() and abs(number) <= MAX_SAFE_INTEGER else number,
                              name)
        return self.check(text.strip() if self.type == "enum" else text, name)

    def to_dict(self) -> dict:
        """As the device declared it (normalised): for the page, the API and the assistant."""
        body: dict[str, Any] = {"type": self.type}
        if self.type == "number":
            body.update({key: getattr(self, key) for key in ("min", "max", "step") if getattr(self, key) is not None})
        elif self.type == "enum":
            body["options"] = list(self.options)
        elif self.type == "text":
            body["max"] = int(self.max or MAX_TEXT_CHARS)
        return body


def parse_spec(name: str, raw: Any) -> CommandSpec:
    where = f"commands.{name}"
    if not isinstance(raw, dict) or raw.get("type") not in TYPES:
        raise ValidationError("bad_field", f"{where} must be an object with a type of {', '.join(TYPES)}")
    kind = raw["type"]
    unknown = set(raw) - KEYS[kind]
    if unknown:
        raise ValidationError("bad_field", f"{where} has keys a {kind} command does not take: "
                                           f"{', '.join(sorted(map(str, unknown)))[:100]}")
    if kind == "number":
        low = _finite(raw["min"], f"{where}.min") if raw.get("min") is not None else None
        high = _finite(raw["max"], f"{where}.max") if raw.get("max") is not None else None
        step = _finite(raw["step"], f"{where}.step") if raw.get("step") is not None else None
        if low is not None and high is not None and low > high:
            raise ValidationError("bad_field", f"{where}.min is above its max")
        if step is not None and step <= 0:
            raise ValidationError("bad_field", f"{where}.step must be above 0")
        return CommandSpec(kind, low, high, step)
    if kind == "enum":
        options = raw.get("options")
        if not isinstance(options, list) or not 1 <= len(options) <= MAX_OPTIONS:
            raise ValidationError("bad_field", f"{where}.options must be a list of 1 to {MAX_OPTIONS} texts")
        checked = tuple(_printable_text(option, MAX_OPTION_CHARS, f"{where}.options[]") for option in options)
        if any(not option.strip() for option in checked) or len(set(checked)) != len(checked):
            raise ValidationError("bad_field", f"{where}.options must be distinct, non-blank texts")
        return CommandSpec(kind, options=checked)
    if kind == "text":
        limit = raw.get("max", MAX_TEXT_CHARS)
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_TEXT_CHARS:
            raise ValidationError("bad_field", f"{where}.max must be a whole number from 1 to {MAX_TEXT_CHARS}")
        return CommandSpec(kind, max=limit)
    return CommandSpec(kind)


def parse_declaration(raw: Any) -> dict[str, CommandSpec] | None:
    """A payload's `commands` field: None when absent, else every command checked (bad_field)."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ValidationError("bad_field", "commands must be an object of name: {type, ...}")
    if len(raw) > MAX_COMMANDS:
        raise ValidationError("bad_field", f"commands declares more than {MAX_COMMANDS} commands")
    declared = {}
    for name, spec in raw.items():
        if not COMMAND_NAME.fullmatch(name):
            raise ValidationError("bad_field", "a command name must be 1-32 letters, digits, '_', '-' or '.'")
        declared[name] = parse_spec(name, spec)
    return declared


@dataclass
class Declared:
    """A device's declaration and where it was last heard."""

    client_id: str
    username: str
    room: str
    commands: dict[str, CommandSpec] = field(default_factory=dict)

    def to_dict(self, online: bool) -> dict:
        return {"client_id": self.client_id, "username": self.username, "room": self.room, "online": online,
                "commands": {name: spec.to_dict() for name, spec in self.commands.items()}}


Changed = Callable[[str, "Declared | None", dict[str, CommandSpec]], None]  # (client_id, now, before)


class DeclaredCommands:
    """The declarations, per client_id, least recently heard first, at most `max_devices`."""

    def __init__(self, max_devices: int = 500):
        self.max_devices = max_devices
        # Where a device is told (its topic level, set by the transport: mqtt_service/
        # device_commands.py): two declaring devices never share one, the first keeps it.
        self.address: Callable[[str], str] = lambda client_id: client_id
        self._owners: dict[str, str] = {}  # address -> client_id
        self._devices: OrderedDict[str, Declared] = OrderedDict()
        self._lock = threading.Lock()
        self._listeners: list[Changed] = []
        # The client_ids of the devices present now, in any room (set by the command desk):
        # asked only when the table is full, once per newcomer.
        self.present: Callable[[], Collection[str]] = lambda: ()
        self.evicted = 0
        self.left_out = 0  # newcomers' declarations not kept: every tracked device was present
        self._log_budget = Throttle(count=5, seconds=60.0, max_keys=1)

    def on_change(self, listener: Changed) -> None:
        """`listener(client_id, declared or None when it went, the commands before)`."""
        self._listeners.append(listener)

    def declare(self, client_id: str, username: str, room: str,
                commands: dict[str, CommandSpec] | None) -> None:
        """A device spoke: its declaration replaced (`commands` not None) or only refreshed."""
        changes: list[tuple[str, Declared | None, dict[str, CommandSpec]]] = []
        with self._lock:
            device = self._devices.pop(client_id, None)
            if device is None:
                if commands is None or not commands:
                    return  # a device that declares nothing costs nothing
                self._check_address(client_id)
                device = Declared(client_id, username, room)
                if len(self._devices) >= self.max_devices and not self._make_room(changes):
                    self._left_out(client_id)
                    return
            before = device.commands
            device.username, device.room = username, room
            if commands is not None:
                device.commands = commands
            if device.commands:
                self._devices[client_id] = device
                self._owners[self.address(client_id)] = client_id
            else:
                self._owners.pop(self.address(client_id), None)
            if commands is not None and commands != before:
                changes.append((client_id, device if device.commands else None, before))
        for change in changes:
            for listener in self._listeners:
                listener(*change)

    def _make_room(self, changes: list) -> bool:
        """Evict the least recently heard devices that are not present until one more fits
        (False: every tracked device is present, nobody is evicted). Caller holds _lock."""
        present = set(self.present())
        while len(self._devices) >= self.max_devices:
            gone_id = next((client_id for client_id in self._devices if client_id not in present), None)
            if gone_id is None:
                return False
            gone = self._devices.pop(gone_id)
            self._owners.pop(self.address(gone_id), None)
            self.evicted += 1
            changes.append((gone_id, None, gone.commands))
        return True

    def _left_out(self, client_id: str) -> None:
        self.left_out += 1
        logged, unlogged = self._log_budget.allow("left out")
        if logged:
            log.warning("the declaration of %r is left out: all %d declaring devices are present (MAX_DEVICES)%s",
                        client_id[:64], self.max_devices,
                        f" ({unlogged} more were not logged in the last minute)" if unlogged else "")

    def _check_address(self, client_id: str) -> None:
        """bad_field when another declaring device is told where this one would be. Caller holds _lock."""
        owner = self._owners.get(self.address(client_id))
        if owner is not None and owner != client_id:
            raise ValidationError("bad_field", "this client_id is told on the topics of another device "
                                               "that declares commands; use a plain client_id")

    def check_address(self, client_id: str) -> None:
        """bad_field when declaring would be refused: another device is told at this one's address."""
        with self._lock:
            self._check_address(client_id)

    def owner(self, address: str) -> str | None:
        """The declaring device told at `address` (its topic level), if any."""
        with self._lock:
            return self._owners.get(address)

    def seen(self, client_id: str, username: str, room: str) -> None:
        """A declaring device spoke without a declaration: where it is now (cheap when it declared nothing)."""
        if client_id in self._devices:
            self.declare(client_id, username, room, None)

    def get(self, client_id: str) -> Declared | None:
        with self._lock:
            return self._devices.get(client_id)

    def in_room(self, room: str) -> list[Declared]:
        with self._lock:
            return [device for device in self._devices.values() if device.room == room]

    def all(self) -> list[Declared]:
        with self._lock:
            return list(self._devices.values())

    def forget(self, client_id: str) -> None:
        with self._lock:
            device = self._devices.pop(client_id, None)
            if device is not None:
                self._owners.pop(self.address(client_id), None)
        if device is not None:
            for listener in self._listeners:
                listener(client_id, None, device.commands)

    def __len__(self) -> int:
        return len(self._devices)

    def __contains__(self, client_id: object) -> bool:
        return client_id in self._devices
