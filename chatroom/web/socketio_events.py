"""Socket.IO: web clients in, room events out.

`ChatNamespace` turns client events into room calls and returns the ack;
`SocketIOPublisher` is the room listener that pushes room events to browsers.
"""
from __future__ import annotations

import logging
import threading

import socketio as python_socketio
from flask import request
from flask_socketio import ConnectionRefusedError, Namespace, SocketIO, join_room, leave_room

from chatroom.config import Settings
from chatroom.core.errors import RelayError, Unavailable, ValidationError
from chatroom.core.intake import Intake
from chatroom.core.model import Message, SystemEvent
from chatroom.core.room import Rooms
from chatroom.core.room_types import AssistantDelta, PresenceChanged
from chatroom.core.submission import Source, Submission
from chatroom.core.validation import optional
from chatroom.web.access import Access

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


def _sid() -> str:
    """The Socket.IO session of the event being handled (Flask-SocketIO sets it on the request)."""
    return request.sid  # type: ignore[attr-defined]


def _error(exc: RelayError) -> dict:
    return {"ok": False, "error": exc.message, "code": exc.code}


def _payload(data) -> dict:
    """PROTOCOL 5: an event with a missing or non-object payload is `bad_field`."""
    if not isinstance(data, dict):
        raise ValidationError("bad_field", "the event's payload must be an object")
    return data


class ChatNamespace(Namespace):
    """The `/` namespace of the chat page: Socket.IO events in, intake calls, acks out."""

    def __init__(self, rooms: Rooms, intake: Intake, settings: Settings, access: Access, namespace: str = "/"):
        super().__init__(namespace)
        self.rooms = rooms
        self.intake = intake
        self.settings = settings
        self.access = access
        self._room_of_sid: dict[str, str] = {}  # a web client is in one room at a time
        self._lock = threading.Lock()
        self.connected_clients = 0

    def on_connect(self, auth=None):
        """A page opened its socket; it is in no room until it sends `join`."""
        if not self.access.allows_socket(auth):
            # The page shows this and asks for the token (PROTOCOL 9).
            raise ConnectionRefusedError("unauthorized")
        with self._lock:
            self.connected_clients += 1

    def on_join(self, data=None):
        """Sent by the page when the user picks a name (and on every reconnect)."""
        sid = _sid()
        previous = self._current_room(sid)
        try:
            payload = _payload(data)
            accepted = self.intake.join(
                Submission(Source.WEB, room=payload.get("room"), username=payload.get("username"),
                           client_id=optional(payload, "client_id"), connection=sid,
                           address=request.remote_addr),
                switch_from=previous)
        except RelayError as exc:
            return _error(exc)
        room = accepted.room
        if previous is not None and previous != room:
            self._forget_socket_room(sid, previous)
        if accepted.replaced is not None:  # the same page's old socket, not yet gone
            old_sid = str(accepted.replaced[1])  # a web key: ("web", sid)
            self._forget_socket_room(old_sid, room)
        with self._lock:
            self._room_of_sid[sid] = room
        join_room(room)
        history = self.rooms.history_of(room, self.settings.history_limit)
        assert accepted.user is not None  # a join always names its member
        return {"ok": True, "user": accepted.user.to_dict(), "room": room,
                "history": [message.to_dict() for message in history],
                "users": self.rooms.users(room)}

    def on_send_message(self, data=None):
        """Sent by the page to chat. The message reaches the room (sender included) once."""
        sid = _sid()
        room = self._current_room(sid)
        try:
            payload = _payload(data)
            if room is None:
                raise ValidationError("not_joined", "join a room first")
            accepted = self.intake.post(Submission(
                Source.WEB, room=room, text=payload.get("message"), data=optional(payload, "data"),
                message_id=optional(payload, "client_message_id"), connection=sid,
                client_id=self._page_id(room, sid), address=request.remote_addr))
        except RelayError as exc:
            return _error(exc)
        if accepted.message is None:  # a resend of what was already posted
            return {"ok": True, "message_id": accepted.message_id, "duplicate": True}
        return {"ok": True, "message_id": accepted.message_id, "seq": accepted.message.seq}

    def on_leave(self, data=None):
        """Sent by the page to leave its room."""
        try:
            _payload(data)
        except RelayError as exc:
            return _error(exc)
        self._leave(_sid())
        return {"ok": True}

    def on_disconnect(self, reason=None):
        """A closed tab leaves its room."""
        with self._lock:
            self.connected_clients -= 1
        self._leave(_sid())

    def connected_keys(self, keys: list) -> set:
        """Which of these web member keys have a socket in a room here (InstanceWatch)."""
        with self._lock:
            return {key for key in keys if key[1] in self._room_of_sid}

    def room_of(self, sid: str) -> str | None:
        """The room a socket is in (web/commands_api.py's `send_command`)."""
        return self._current_room(sid)

    def _current_room(self, sid: str) -> str | None:
        with self._lock:
            return self._room_of_sid.get(sid)

    def _page_id(self, room: str, sid: str) -> str | None:
        member = self.rooms.member(room, (Source.WEB, sid))
        return member.private_id if member else None

    def _leave(self, sid: str) -> None:
        room = self._current_room(sid)
        if room is None:
            return
        self._forget_socket_room(sid, room)
        try:
            self.intake.leave(Submission(Source.WEB, room=room, connection=sid))
        except Unavailable as exc:  # several instances: InstanceWatch removes the entry later
            log.warning("leave of %s from %s not recorded: %s", sid, room, exc.message)

    def _forget_socket_room(self, sid: str, room: str) -> None:
        with self._lock:
            if self._room_of_sid.get(sid) == room:
                del self._room_of_sid[sid]
        try:
            leave_room(room, sid=sid)
        except Exception:  # the socket may already be gone on disconnect
            log.debug("leave_room(%r) for a closed socket", room)


def internal_error_ack(exc: Exception) -> dict:
    """Any unexpected handler error: logged with the event name, never a dead socket."""
    log.exception("Socket.IO handler for %r failed", getattr(request, "event", {}).get("message"))
    return {"ok": False, "error": "internal error", "code": "internal"}


class SocketIOPublisher:
    """Room listener: pushes room events to the browsers in that room.

    `user_list` is coalesced: after a presence change the room's list is sent
    once, PRESENCE_DELAY seconds later, with whatever changed meanwhile. A burst
    of N joins so costs each browser N small join events and a few lists, O(N)
    bytes, instead of N lists of up to N members (PROTOCOL section 9).
    """

    PRESENCE_DELAY = 0.25

    def __init__(self, socketio: SocketIO, rooms: Rooms):
        self.socketio = socketio
        self.rooms = rooms
        self._lock = threading.Lock()
        self._changed_rooms: set[str] = set()
        self._flush_pending = False

    def __call__(self, event) -> None:
        emit = self._emit_of(event)
        if emit is not None:
            self.socketio.emit(emit[0], emit[1], to=emit[2])

    def publish_all(self, events: list) -> None:
        """A backlog of room events in one Redis publication (several instances: the
        listener hands over what queued up while the last publication was on its way)."""
        emits = [emit for emit in map(self._emit_of, events) if emit is not None]
        if len(emits) == 1:
            self.socketio.emit(emits[0][0], emits[0][1], to=emits[0][2])
        elif emits:
            manager = self.socketio.server.manager
            assert isinstance(manager, OneOrderRedisManager)  # wired only with it (app.py)
            manager.emit_all(emits)

    def _emit_of(self, event) -> tuple[str, dict, str] | None:
        """(Socket.IO event, payload, room) of a room event; presence changes are coalesced."""
        if isinstance(event, Message):
            return "chat_message", event.to_dict(), event.room
        if isinstance(event, SystemEvent):
            return "system_message", event.to_dict(), event.room
        if isinstance(event, AssistantDelta):
            return "ai_stream", {"reply_to": event.reply_to, "message_id": event.message_id,
                                 "delta": event.delta}, event.room
        if isinstance(event, PresenceChanged):
            with self._lock:
                self._changed_rooms.add(event.room)
                if self._flush_pending:
                    return None
                self._flush_pending = True
            self.socketio.start_background_task(self._send_user_lists)
        return None

    def _send_user_lists(self) -> None:
        self.socketio.sleep(self.PRESENCE_DELAY)
        with self._lock:
            rooms, self._changed_rooms = self._changed_rooms, set()
            self._flush_pending = False
        for room in rooms:
            self.socketio.emit("user_list", {"room": room, "users": self.rooms.users(room)}, to=room)


class OneOrderRedisManager(python_socketio.RedisManager):
    """Several instances (PROTOCOL 8): every emit goes through the Redis channel, this
    instance's own included.

    python-socketio delivers an emit to this instance's clients at once and to the
    other instances' through Redis, so two instances emitting together would show
    their clients the two messages in different orders. Delivering everything from
    the one channel gives every client on every instance the same order, for one
    Redis round trip more on local emits.
    """

    def emit(self, event, data, namespace=None, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        if kwargs.get("ignore_queue") or callback is not None or python_socketio.packet.Packet.data_is_binary(data):
            return super().emit(event, data, namespace=namespace, room=room, skip_sid=skip_sid,
                                callback=callback, to=to, **kwargs)
        # host_id None: no instance takes it for its own, so each one, this one too,
        # handles it when it comes back from Redis (pubsub_manager._thread).
        self._publish({"method": "emit", "event": event, "data": list(data) if isinstance(data, tuple) else [data],
                       "binary": False, "namespace": namespace or "/", "room": to or room,
                       "skip_sid": skip_sid, "callback": None, "host_id": None})

    def emit_all(self, emits: list[tuple[str, dict, str]]) -> None:
        """(event, payload, room) emits, in order, in one publication: one Redis round trip and
        one message for every instance to read, whatever the backlog. Every instance must run
        a version that knows `emits` (docs/SCALING.md: upgrade all instances together)."""
        self._publish({"method": "emit", "emits": [[event, data, room] for event, data, room in emits],
                       "namespace": "/", "host_id": None})

    def _handle_emit(self, message):
        if "emits" not in message:
            return super()._handle_emit(message)
        for event, data, room in message["emits"]:
            super()._handle_emit({"event": event, "data": [data], "namespace": message.get("namespace"),
                                  "room": room, "binary": False, "callback": None, "skip_sid": None})
