"""Socket.IO: web clients in, room events out.

`ChatNamespace` turns client events into room calls and returns the ack;
`SocketIOPublisher` is the room listener that pushes room events to browsers.
"""
from __future__ import annotations

import logging
import threading

from flask import request
from flask_socketio import Namespace, SocketIO, join_room, leave_room

from .assistant import AssistantDelta
from .config import Settings
from .limits import RateLimiter
from .messages import Message, SystemEvent, ValidationError, validate_data, validate_room, validate_text, validate_username
from .room import PresenceChanged, Rooms

log = logging.getLogger(__name__)


def origin_checker(extra_origins: tuple[str, ...]):
    """Socket.IO origin policy: the page's own origin, plus CORS_ORIGINS.

    Engine.IO drops the same-origin default as soon as a list is given; a
    dashboard origin must not lock out our own page.
    """
    allowed = set(extra_origins)

    def is_allowed(origin: str | None, environ: dict) -> bool:
        scheme, host = environ.get("wsgi.url_scheme", "http"), environ.get("HTTP_HOST", "")
        own = {f"{scheme}://{host}"}
        if "HTTP_X_FORWARDED_PROTO" in environ or "HTTP_X_FORWARDED_HOST" in environ:
            # Behind a reverse proxy, as Engine.IO's own default allows.
            proxied_scheme = environ.get("HTTP_X_FORWARDED_PROTO", scheme).split(",")[0].strip()
            proxied_host = environ.get("HTTP_X_FORWARDED_HOST", host).split(",")[0].strip()
            own.add(f"{proxied_scheme}://{proxied_host}")
        return origin is None or origin in own or origin in allowed
    return is_allowed


def _error(exc: ValidationError) -> dict:
    return {"ok": False, "error": exc.message, "code": exc.code}


class ChatNamespace(Namespace):
    """The `/` namespace of the chat page."""

    def __init__(self, rooms: Rooms, settings: Settings, rate_limiter: RateLimiter,
                 reserved_names: tuple[str, ...], namespace: str = "/"):
        super().__init__(namespace)
        self.rooms = rooms
        self.settings = settings
        self.rate_limiter = rate_limiter
        self.reserved_names = reserved_names
        self._room_of_sid: dict[str, str] = {}  # a web client is in one room at a time
        self._lock = threading.Lock()
        self.connected_clients = 0

    def on_connect(self, auth=None):
        """A page opened its socket; it is in no room until it sends `join`."""
        with self._lock:
            self.connected_clients += 1

    def on_join(self, data):
        """Sent by the page when the user picks a name. Broadcasts a join event and `user_list`."""
        sid = request.sid
        try:
            payload = data if isinstance(data, dict) else {}
            username = validate_username(payload.get("username"), self.reserved_names)
            room = validate_room(payload.get("room"))
            previous = self._current_room(sid)
            if previous is not None and previous != room:
                self._leave(sid, previous)
            user, _ = self.rooms.join(room, ("web", sid), username, "web")
        except ValidationError as exc:
            return _error(exc)
        with self._lock:
            self._room_of_sid[sid] = room
        join_room(room)
        history = self.rooms.history_of(room, self.settings.history_limit)
        return {"ok": True, "user": user.to_dict(), "room": room,
                "history": [message.to_dict() for message in history],
                "users": self.rooms.users(room)}

    def on_send_message(self, data):
        """Sent by the page to chat. Broadcasts `chat_message` to the room (sender included)."""
        sid = request.sid
        room = self._current_room(sid)
        user = self.rooms.member(room, ("web", sid)) if room else None
        if user is None:
            return {"ok": False, "error": "join a room first", "code": "not_joined"}
        try:
            payload = data if isinstance(data, dict) else {}
            text = validate_text(payload.get("message"), self.settings.max_message_chars)
            readings = validate_data(payload.get("data"))
        except ValidationError as exc:
            return _error(exc)
        if not self.rate_limiter.allow(("web", sid)):
            return {"ok": False, "error": "too many messages; slow down", "code": "rate_limited"}
        message = self.rooms.post(room, user.username, text, "web", sender=("web", sid), data=readings)
        return {"ok": True, "message_id": message.message_id, "seq": message.seq}

    def on_leave(self, data=None):
        """Sent by the page to leave its room. Broadcasts a leave event and `user_list`."""
        sid = request.sid
        room = self._current_room(sid)
        if room is not None:
            self._leave(sid, room)
        return {"ok": True}

    def on_disconnect(self, reason=None):
        """A closed tab leaves its room."""
        sid = request.sid
        with self._lock:
            self.connected_clients -= 1
        room = self._current_room(sid)
        if room is not None:
            self._leave(sid, room)

    def _current_room(self, sid: str) -> str | None:
        with self._lock:
            return self._room_of_sid.get(sid)

    def _leave(self, sid: str, room: str) -> None:
        with self._lock:
            self._room_of_sid.pop(sid, None)
        self.rooms.leave(room, ("web", sid))
        try:
            leave_room(room, sid=sid)
        except Exception:  # the socket may already be gone on disconnect
            log.debug("leave_room(%s) for a closed socket", room)


def internal_error_ack(exc: Exception) -> dict:
    """Any unexpected handler error: logged with the event name, never a dead socket."""
    log.exception("Socket.IO handler for %r failed", getattr(request, "event", {}).get("message"))
    return {"ok": False, "error": "internal error", "code": "internal"}


class SocketIOPublisher:
    """Room listener: pushes room events to the browsers in that room."""

    def __init__(self, socketio: SocketIO):
        self.socketio = socketio

    def __call__(self, event) -> None:
        if isinstance(event, Message):
            self.socketio.emit("chat_message", event.to_dict(), to=event.room)
        elif isinstance(event, SystemEvent):
            self.socketio.emit("system_message", event.to_dict(), to=event.room)
        elif isinstance(event, PresenceChanged):
            self.socketio.emit("user_list", {"room": event.room, "users": event.users}, to=event.room)
        elif isinstance(event, AssistantDelta):
            self.socketio.emit("ai_stream", {"reply_to": event.reply_to, "message_id": event.message_id,
                                             "delta": event.delta}, to=event.room)
