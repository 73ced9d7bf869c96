"""Who may read and write room content: the API token (PROTOCOL section 9).

With `API_TOKEN` set, HTTP callers send `Authorization: Bearer <token>` and
Socket.IO clients the connect `auth` `{"token": "<token>"}`; without it the
server is for a trusted network (docs/SECURITY.md). Compared in constant time.
"""
from __future__ import annotations

import hmac

from flask import Flask, request

from chatroom.web.errors import error_response

# The page, its files, liveness and the Socket.IO handshake (which checks the token in its
# own connect handler); every other route needs the token.
OPEN_PATHS = ("/", "/status", "/healthz", "/favicon.ico")
OPEN_PREFIXES = ("/static/", "/socket.io")

# Every response: no inline or foreign code runs in the page, nothing sniffs a
# JSON body into HTML, and no other site frames the chat.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
}


class Access:
    def __init__(self, api_token: str):
        self.api_token = api_token

    @property
    def required(self) -> bool:
        return bool(self.api_token)

    def allows_token(self, token) -> bool:
        if not self.required:
            return True
        return isinstance(token, str) and hmac.compare_digest(token.encode(), self.api_token.encode())

    def allows_request(self) -> bool:
        """The current Flask request carries the token (or none is needed)."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return not self.required or (scheme.lower() == "bearer" and self.allows_token(token.strip()))

    def allows_socket(self, auth) -> bool:
        return self.allows_token(auth.get("token") if isinstance(auth, dict) else None)


def add_security_headers(response):
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def install(app: Flask, access: Access) -> None:
    """The token guard and the response headers, for every route of the app (every
    blueprint's): a route is protected unless it is listed open above."""

    @app.before_request
    def require_token():
        if request.path in OPEN_PATHS or request.path.startswith(OPEN_PREFIXES):
            return None
        if not access.allows_request():
            return error_response(401, "missing or wrong API token (Authorization: Bearer <token>)",
                                  "unauthorized")
        return None

    app.after_request(add_security_headers)
