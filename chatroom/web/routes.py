"""HTTP: the chat page, /api/*, /healthz, /metrics and the favicon."""
from __future__ import annotations

import logging
from typing import Callable

from flask import Blueprint, Response, current_app, jsonify, render_template, request, send_from_directory
from werkzeug.exceptions import RequestEntityTooLarge, UnsupportedMediaType

from chatroom.config import Settings
from chatroom.core.errors import ValidationError
from chatroom.core.intake import Intake
from chatroom.core.room import Rooms
from chatroom.core.submission import Source, Submission
from chatroom.core.validation import DEFAULT_ROOM, optional, parse_json_object, validate_room
from chatroom.web.access import Access

log = logging.getLogger(__name__)

MAX_PAGE = 500
MAX_BODY_BYTES = 16 * 1024

MAX_SEQ = 2**63 - 1  # SQLite's INTEGER; anything larger is not a seq we could have given

def _positive_int_arg(name: str, default: int | None, maximum: int) -> int | None:
    """A query parameter that must be a whole number in 1..maximum (400 otherwise)."""
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not 1 <= int(raw) <= maximum:
        raise ValidationError("bad_field", f"{name} must be a whole number from 1 to {maximum}")
    return int(raw)


def _json_body() -> dict:
    """The request body as a JSON object, refusing oversized (chunked too) and non-JSON bodies."""
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        raise ValidationError("too_large", f"body is larger than {MAX_BODY_BYTES} bytes")
    if not request.is_json:
        raise UnsupportedMediaType("body must be application/json")
    try:
        raw = request.get_data(cache=False) if request.content_length is not None else _chunked_body()
    except RequestEntityTooLarge:
        raise ValidationError("too_large", f"body is larger than {MAX_BODY_BYTES} bytes") from None
    except (ValueError, OSError):  # malformed chunks, or a body that did not arrive in time
        raise ValidationError("invalid_json", "the request body is malformed or incomplete") from None
    return parse_json_object(raw, MAX_BODY_BYTES)


def _chunked_body() -> bytes:
    """A body without Content-Length (chunked), read to its end but never past the limit.

    Werkzeug only reads such a body when the server marks the stream as
    terminated; eventlet's does not, so the server's own (de-chunking) input is
    read here, in pieces, and a body over the limit is refused, not truncated.
    """
    stream = request.environ.get("wsgi.input")
    if stream is None or "chunked" not in request.headers.get("Transfer-Encoding", "").lower():
        return b""
    parts: list[bytes] = []
    size = 0
    while size <= MAX_BODY_BYTES:
        piece = stream.read(MAX_BODY_BYTES + 1 - size)
        if not piece:
            return b"".join(parts)
        parts.append(piece)
        size += len(piece)
    raise RequestEntityTooLarge()


def _address() -> str | None:
    return request.remote_addr


# Open without the token: the pages must load to ask for it, and health checks must work.
RECENT_ROOMS = 20  # rooms listed for their recent messages, besides the rooms with members


def create_chat_blueprint(rooms: Rooms, store, settings: Settings, intake: Intake, metrics_text,
                          access: Access, rates: Callable[[], dict] | None = None) -> Blueprint:
    """`rates`: the per-second message counts of the last minutes (chatroom/ops/rate_history.py)."""
    bp = Blueprint("chat", __name__)

    @bp.get("/")
    def index():
        return render_template("index.html", ai_name=settings.ai_name,
                               assistant_on=settings.assistant_enabled,
                               max_message_chars=settings.max_message_chars,
                               token_required=access.required)

    @bp.get("/favicon.ico")
    def favicon():
        """Browsers and tools ask for it whatever the page links: the page's SVG icon."""
        assert current_app.static_folder is not None
        return send_from_directory(current_app.static_folder, "favicon.svg", mimetype="image/svg+xml",
                                   max_age=86400)

    @bp.get("/api/rates")
    def message_rates():
        """Messages per second over the last minutes, from the server's ring (the status chart)."""
        # instance_id: which instance counted them (several may answer behind a balancer).
        if rates is None:
            return jsonify({"success": True, "interval_seconds": 1, "window_seconds": 0, "end": None,
                            "series": {}, "instance_id": settings.instance_id})
        return jsonify({"success": True, **rates(), "instance_id": settings.instance_id})

    @bp.get("/healthz")
    def healthz():
        return jsonify({"status": "ok"})

    @bp.get("/metrics")
    def metrics():
        body, content_type = metrics_text()
        return Response(body, content_type=content_type)

    @bp.get("/api/messages")
    def list_messages():
        room = validate_room(request.args.get("room"))
        limit = _positive_int_arg("limit", settings.history_limit, MAX_PAGE) or settings.history_limit
        messages = rooms.history_of(room, limit, _positive_int_arg("before_seq", None, MAX_SEQ))
        return jsonify({"success": True, "messages": [m.to_dict() for m in messages]})

    @bp.post("/api/messages")
    def post_message():
        body = _json_body()
        accepted = intake.post(Submission(
            Source.HTTP, room=body.get("room"), username=optional(body, "username"), text=body.get("message"),
            data=optional(body, "data"), address=_address()))
        assert accepted.message is not None  # HTTP posts are never duplicates (no message_id)
        return jsonify({"success": True, "message": accepted.message.to_dict()}), 201

    @bp.get("/api/rooms")
    def list_rooms():
        """Rooms with members and rooms with recent messages: members by source, last seq and time.
        The page shows unread counts from `last_seq` (seq rises by one per chat message)."""
        counts = rooms.member_counts()
        names = list(dict.fromkeys([DEFAULT_ROOM, *counts, *store.recent_rooms(RECENT_ROOMS)]))
        last = store.last_messages(names)
        listed = []
        for room in names:
            sources = counts.get(room, {})
            newest = last.get(room, {})
            listed.append({"room": room, "members": sum(sources.values()), "sources": sources,
                           "last_seq": newest.get("last_seq", 0),
                           "last_timestamp": newest.get("last_timestamp")})
        return jsonify({"success": True, "rooms": listed})

    @bp.get("/status")
    def status_page():
        return render_template("status.html", token_required=access.required)

    @bp.get("/api/users")
    def list_users():
        room = validate_room(request.args.get("room"))
        return jsonify({"success": True, "room": room, "users": rooms.users(room)})

    @bp.get("/api/readings")
    def list_readings():
        client_id = request.args.get("client_id", "")
        key = request.args.get("key", "")
        if not client_id or not key:
            raise ValidationError("missing_field", "client_id and key are required")
        readings = store.readings(client_id, key, _positive_int_arg("limit", 100, MAX_PAGE))
        return jsonify({"success": True, "client_id": client_id, "key": key, "readings": readings})

    return bp
