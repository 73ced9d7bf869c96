"""Every HTTP error is a JSON body with the PROTOCOL code: `{"success": false, "error", "code"}`.

`install(app)` makes it so app-wide, for every blueprint's routes: a `RelayError` raised
anywhere (bad input, rate limit, an outage) and werkzeug's own 404/405/413 alike.
"""
from __future__ import annotations

import math

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from chatroom.core.errors import RelayError

STATUS_OF_CODE = {"rate_limited": 429, "too_large": 413, "name_taken": 409, "unavailable": 503,
                  "unauthorized": 401, "unknown_device": 404, "bridge_off": 503, "device_offline": 409,
                  "timeout": 504}
API_PATHS = ("/api/", "/mqtt/", "/healthz", "/metrics")


def error_response(status: int, message: str, code: str | None = None) -> tuple[Response, int]:
    body = {"success": False, "error": message}
    if code:
        body["code"] = code
    return jsonify(body), status


def install(app: Flask) -> None:
    @app.errorhandler(RelayError)
    def on_refusal(exc: RelayError):
        response, status = error_response(STATUS_OF_CODE.get(exc.code, 400), exc.message, exc.code)
        if exc.retry_after is not None:
            response.headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
        return response, status

    @app.errorhandler(HTTPException)
    def on_http_error(exc: HTTPException):
        # Every API error is JSON, including 404/405 and malformed bodies.
        if request.path.startswith(API_PATHS):
            return error_response(exc.code or 500, exc.description or exc.name)
        return exc
