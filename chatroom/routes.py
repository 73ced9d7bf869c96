"""HTTP: the chat page, /api/*, /healthz and /metrics."""
from __future__ import annotations

import hmac
import logging

from flask import Blueprint, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException

from .config import Settings
from .limits import RateLimiter
from .messages import ValidationError, validate_data, validate_room, validate_text, validate_username
from .room import Rooms

log = logging.getLogger(__name__)

MAX_PAGE = 500
MAX_BODY_BYTES = 16 * 1024

STATUS_OF_CODE = {"rate_limited": 429, "too_large": 413}


def error_response(status: int, message: str, code: str | None = None):
    body = {"success": False, "error": message}
    if code:
        body["code"] = code
    return jsonify(body), status


def _limit_arg(default: int) -> int:
    raw = request.args.get("limit", default)
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ValidationError("bad_field", "limit must be a whole number") from None
    return max(0, min(value, MAX_PAGE))


def _optional_int_arg(name: str) -> int | None:
    raw = request.args.get(name)
    if raw in (None, ""):
        return None
    try:
        return int(raw)
    except ValueError:
        raise ValidationError("bad_field", f"{name} must be a whole number") from None


def create_chat_blueprint(rooms: Rooms, store, settings: Settings, rate_limiter: RateLimiter,
                          reserved_names: tuple[str, ...], metrics_text) -> Blueprint:
    bp = Blueprint("chat", __name__)

    @bp.errorhandler(ValidationError)
    def on_validation_error(exc: ValidationError):
        return error_response(STATUS_OF_CODE.get(exc.code, 400), exc.message, exc.code)

    @bp.app_errorhandler(HTTPException)
    def on_http_error(exc: HTTPException):
        # Every API error is JSON, including 404/405 and malformed bodies.
        if request.path.startswith(("/api/", "/mqtt/", "/healthz", "/metrics")):
            return error_response(exc.code or 500, exc.description or exc.name)
        return exc

    @bp.get("/")
    def index():
        return render_template("index.html", ai_name=settings.ai_name,
                               max_message_chars=settings.max_message_chars)

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
        messages = rooms.history_of(room, _limit_arg(settings.history_limit),
                                    _optional_int_arg("before_seq"))
        return jsonify({"success": True, "messages": [m.to_dict() for m in messages]})

    @bp.post("/api/messages")
    def post_message():
        if settings.api_token:
            supplied = request.headers.get("Authorization", "")
            if not hmac.compare_digest(supplied.encode(), f"Bearer {settings.api_token}".encode()):
                return error_response(401, "missing or wrong API token (Authorization: Bearer <token>)")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            return error_response(413, f"body is larger than {MAX_BODY_BYTES} bytes", "too_large")
        if not request.is_json:
            return error_response(415, "body must be application/json")
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return error_response(400, "body must be a JSON object", "invalid_json")
        if body.get("username") in (None, ""):
            raise ValidationError("missing_field", "username is required")
        username = validate_username(body.get("username"), reserved_names)
        text = validate_text(body.get("message"), settings.max_message_chars)
        room = validate_room(body.get("room"))
        readings = validate_data(body.get("data"))
        rooms.check_name_free(room, username)
        if not rate_limiter.allow(("http", request.remote_addr)):
            raise ValidationError("rate_limited", "too many messages; slow down")
        message = rooms.post(room, username, text, "http", data=readings)
        return jsonify({"success": True, "message": message.to_dict()}), 201

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
        readings = store.readings(client_id, key, _limit_arg(100))
        return jsonify({"success": True, "client_id": client_id, "key": key, "readings": readings})

    return bp
