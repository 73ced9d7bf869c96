"""HTTP and Socket.IO ways to tell a device something (PROTOCOL 11).

- `POST /api/devices/<client_id>/commands` `{"command", "value", "timeout"?, "username"?}`:
  waits for the device's ack (200), or 504 `timeout`; token-guarded like every `/api` route
  (web/access.py) and rate-limited per caller (a valid command spends a token).
- `GET /api/devices/<client_id>/commands`, `GET /api/commands?room=R`: declarations, for
  the page (static/commands.js) and scripts.
- Socket.IO `send_command` `{"device", "command", "value"}` from a page joined to a room:
  the device is named as in that room, the asker is the page's member.

Waiting holds a green thread (eventlet) or a thread (threading mode) per command; the
command desk bounds how many wait (chatroom/core/command_desk.py).
"""
from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from flask_socketio import SocketIO

from chatroom.core.command_desk import Asker, CommandDesk, CommandTimeout
from chatroom.core.errors import RelayError, ValidationError
from chatroom.core.intake import Intake
from chatroom.core.model import Source
from chatroom.core.submission import Submission
from chatroom.core.validation import optional, validate_client_id, validate_room
from chatroom.web.routes import _json_body
from chatroom.web.socketio_events import ChatNamespace

MAX_LISTED = 50  # /api/commands: the most recently heard declaring devices (the page shows 50)
DEFAULT_TIMEOUT = 10.0
MAX_TIMEOUT = 60.0
HTTP_ASKER = "HTTP"


def _timeout(raw: Any) -> float:
    if raw is None:
        return DEFAULT_TIMEOUT
    if isinstance(raw, bool) or not isinstance(raw, (int, float)) or not 1 <= raw <= MAX_TIMEOUT:
        raise ValidationError("bad_field", f"timeout must be a number of seconds from 1 to {MAX_TIMEOUT:g}")
    return float(raw)


def _timed_out(exc: CommandTimeout):
    return jsonify({"success": False, "error": exc.message, "code": exc.code, "command_id": exc.command_id}), 504


def _asker_name(desk: CommandDesk, intake: Intake, client_id: str, username: Any) -> str:
    """The name the room sees as the asker: the rules of a name posting over HTTP (`POST
    /api/messages`): reserved names refused (`bad_name`, "<AI name> for …" included), and a
    name a present member of the device's room holds is `name_taken`."""
    if username is None:
        return HTTP_ASKER
    name = intake.names.display_name(username)
    declared = desk.declared.get(client_id)
    if declared is not None and intake.rooms.holds_name(declared.room, name):
        raise ValidationError("name_taken", f"the name {name!r} is held by a member of {declared.room}; "
                                            "choose another")
    return name


def create_commands_blueprint(desk: CommandDesk, intake: Intake) -> Blueprint:
    bp = Blueprint("commands", __name__)

    @bp.post("/api/devices/<client_id>/commands")
    def send_command(client_id: str):
        client_id = validate_client_id(client_id)
        body = _json_body()
        if "value" not in body:
            raise ValidationError("missing_field", "value is required")
        asker = Asker(_asker_name(desk, intake, client_id, optional(body, "username")), Source.HTTP)
        address = request.remote_addr
        try:
            answer = desk.run(client_id, body.get("command"), body["value"], asker, _timeout(body.get("timeout")),
                              admit=lambda: intake.spend(Submission(Source.HTTP, address=address)))
        except CommandTimeout as exc:
            return _timed_out(exc)
        return jsonify({"success": True, **answer.to_dict()})

    @bp.get("/api/devices/<client_id>/commands")
    def device_commands(client_id: str):
        declared = desk.device(validate_client_id(client_id))
        return jsonify({"success": True, **declared.to_dict(desk.online(declared))})

    @bp.get("/api/commands")
    def room_commands():
        room = validate_room(request.args.get("room"))
        found = desk.declared.in_room(room)  # least recently heard first
        devices = [declared.to_dict(desk.online(declared)) for declared in found[-MAX_LISTED:]]
        return jsonify({"success": True, "room": room, "devices": devices, "truncated": len(found) > MAX_LISTED})

    return bp


def install_socket_commands(socketio: SocketIO, namespace: ChatNamespace, desk: CommandDesk,
                            intake: Intake) -> None:
    """`send_command` beside the chat namespace's own events (python-socketio tries event
    handlers before the class-based namespace)."""

    @socketio.on("send_command")
    def on_send_command(data=None):
        sid = request.sid  # type: ignore[attr-defined]
        room = namespace.room_of(sid)
        try:
            if not isinstance(data, dict):
                raise ValidationError("bad_field", "the event's payload must be an object")
            member = namespace.rooms.member(room, (Source.WEB, sid)) if room is not None else None
            if room is None or member is None:
                raise ValidationError("not_joined", "join a room first")
            client_id = desk.resolve(room, data.get("device"))
            spend = Submission(Source.WEB, connection=sid, client_id=member.private_id, address=request.remote_addr)
            answer = desk.run(client_id, data.get("command"), data.get("value"), Asker(member.username, Source.WEB),
                              DEFAULT_TIMEOUT, from_text=True, admit=lambda: intake.spend(spend))
        except CommandTimeout as exc:
            return {"ok": False, "code": exc.code, "error": exc.message, "command_id": exc.command_id}
        except RelayError as exc:
            return {"ok": False, "code": exc.code, "error": exc.message}
        if not answer.ok:
            return {"ok": False, "code": "refused", "error": answer.error, "command_id": answer.command_id}
        return {"ok": True, "result": answer.result, "command_id": answer.command_id}
