"""What a device's message or join may carry besides chat (PROTOCOL 11), for inbound.py:

- `commands`: its declaration, checked whole before the intake (a bad one is `bad_field`
  and nothing of the input is taken), kept once the intake accepted the input;
- `receipt: true` with a `message_id`: a receipt on `P/devices/<id>/receipts` once stored.

A device that declares nothing and asks for no receipt costs one dict look per message.
`route` takes what devices publish on their own subtree (`P/devices/<id>/…`): command acks
and Home Assistant's commands (device_commands.py), requests (device_requests.py).
"""
from __future__ import annotations

from typing import Any

from chatroom.core.commands import DeclaredCommands, parse_declaration
from chatroom.core.submission import Accepted, Submission
from chatroom.core.validation import optional
from mqtt_service.device_commands import DeviceCommands
from mqtt_service.device_requests import DeviceRequests
from mqtt_service.topics import MESSAGES_IN, USERS_JOIN, Topics


class DeviceExtras:
    def __init__(self, topics: Topics, declared: DeclaredCommands, commands: DeviceCommands,
                 requests: DeviceRequests):
        self.topics = topics
        self.declared = declared
        self.commands = commands
        self.requests = requests

    def prepare(self, kind: str, obj: dict, client_id: object) -> object:
        """The declaration the input carries (None: none), or bad_field (also when another
        declaring device is told on this one's topic level: the whole input is refused)."""
        raw = obj.get("commands")
        if raw is None or kind not in (MESSAGES_IN, USERS_JOIN):
            return None
        declaration = parse_declaration(raw)
        if declaration and isinstance(client_id, str):
            self.declared.check_address(client_id)
        return declaration

    def accepted(self, kind: str, submission: Submission, accepted: Accepted, obj: dict, prepared: object) -> None:
        client_id = submission.client_id
        if not isinstance(client_id, str):  # the intake validated it: a device always names itself
            return
        message = accepted.message
        if (prepared is None and client_id not in self.declared and "receipt" not in obj
                and (message is None or message.client_message_id is None)):
            return  # a device that declares nothing and asks for nothing: the usual path, as before
        if accepted.user is not None and kind in (MESSAGES_IN, USERS_JOIN):
            if isinstance(prepared, dict):
                self.declared.declare(client_id, accepted.user.username, accepted.room, prepared)
            elif client_id in self.declared:
                self.declared.seen(client_id, accepted.user.username, accepted.room)
            # Controls the per-minute budget held back come with the next join or message,
            # heartbeat joins that declare again (as the shipped clients do) included.
            self.commands.heard(client_id)
        if kind == MESSAGES_IN:
            self.requests.remember(accepted)
            if obj.get("receipt") is True and optional(obj, "message_id") is not None:
                self.requests.receipt(client_id, obj["message_id"], accepted)

    def route(self, message: Any, payload: bytes) -> bool:
        """A publication on a device's own subtree, handled (True), or not one (False)."""
        found = self.topics.parse_device(message.topic)
        if found is None:
            return False
        level, kind, command = found
        if kind == "requests":
            self.requests.handle(level, message.topic, payload, getattr(message, "properties", None))
        else:
            self.commands.handle(level, kind, command, message.topic, payload)
        return True
