"""GET /mqtt/status (the bridge's health and exact counters for monitoring) and
POST /api/devices/<client_id>/forget (clear a device's retained topics).

HTTP is the web side's, the bridge the MQTT side's: this module sees the bridge only as
the two functions app.py hands it (`bridge_status`, `forget`), so neither side
imports the other (docs/ARCHITECTURE.md)."""
from __future__ import annotations

from typing import Callable

from flask import Blueprint, jsonify, request

from chatroom.core.errors import Unavailable
from chatroom.core.intake import Intake
from chatroom.core.model import utc_timestamp
from chatroom.core.room import Rooms
from chatroom.core.submission import Source, Submission
from chatroom.core.validation import validate_client_id
from chatroom.web.errors import error_response


def create_status_blueprint(bridge_status: Callable[[], dict] | None,
                            forget: Callable[[str], list[str] | None] | None,
                            rooms: Rooms, intake: Intake, assistant_status: Callable[[], dict],
                            instance_id: str = "", database_bytes: Callable[[], int] | None = None) -> Blueprint:
    """`bridge_status` and `forget` are None with MQTT_ENABLE=false."""
    bp = Blueprint("mqtt_status", __name__)

    @bp.get("/mqtt/status")
    def mqtt_status():
        if bridge_status is None:  # MQTT_ENABLE=false: healthy by design
            mqtt_status = {"is_connected": False, "is_running": False}
        else:
            mqtt_status = bridge_status()
        # Counters are this instance's own; presence numbers are global (PROTOCOL 8).
        body = {"success": True, "timestamp": utc_timestamp(), "instance_id": instance_id,
                "mqtt_status": mqtt_status, "room": None, "assistant": assistant_status()}
        problems = []
        try:
            body["room"] = rooms.summary()
            if database_bytes is not None:
                body["database_size_bytes"] = database_bytes()
        except Unavailable as exc:  # monitoring must still get an answer, and know why
            problems.append(exc.message)
        if bridge_status is not None and not mqtt_status["is_connected"]:
            problems.insert(0, f"MQTT bridge not connected: {mqtt_status['last_error'] or 'connecting'}")
        if problems:
            body["success"] = False
            body["error"] = "; ".join(problems)
            return jsonify(body), 503
        return jsonify(body)

    @bp.post("/api/devices/<path:client_id>/forget")
    def forget_device(client_id: str):
        """A device gone for good: clear its retained state, availability and HA entities.
        Rate-limited like a message (each call publishes a few dozen empty retained messages);
        404 for a device neither the bridge nor history knows; a second call clears nothing."""
        client_id = validate_client_id(client_id)  # a ValidationError is a JSON 400 (chatroom/web/errors.py)
        if forget is None:
            return error_response(503, "the MQTT bridge is off (MQTT_ENABLE=false)", "bridge_off")
        intake.spend(Submission(Source.HTTP, address=request.remote_addr))
        cleared = forget(client_id)
        if cleared is None:
            return error_response(404, f"no device {client_id!r} is known", "unknown_device")
        return jsonify({"success": True, "client_id": client_id, "cleared_topics": cleared})

    return bp
