"""What can go wrong with an input, in the PROTOCOL's words (error codes). Stdlib only."""
from __future__ import annotations


class RelayError(Exception):
    """An input the rooms did not take; `code` is the PROTOCOL error code. Transports
    answer every kind the same way (an ack, an HTTP status, a `P/errors` reply)."""

    def __init__(self, code: str, message: str, client_id: str | None = None,
                 retry_after: float | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.client_id = client_id
        self.retry_after = retry_after  # rate_limited: seconds until the sender may try again


class ValidationError(RelayError, ValueError):
    """Bad input from any transport: the sender's to fix."""


class Unavailable(RelayError):
    """A service the rooms depend on (Redis, PostgreSQL) does not answer.

    Not the input's fault: web and HTTP callers get `unavailable` (HTTP 503) and may
    retry; the MQTT bridge holds the message and retries it until the service is back.
    """

    def __init__(self, service: str, detail: object = ""):
        super().__init__("unavailable", f"{service} is unavailable; try again shortly")
        self.service = service
        self.detail = str(detail)[:200]


class ClaimRefused(ValidationError):
    """A shared-topic claim of a client_id that has spoken on its own device topic. The
    reply names nobody: it must not look to the real device like an error of its own."""

    def __init__(self, client_id: str):
        super().__init__("bad_field", f"client_id {client_id!r} publishes on its own device topic; "
                                      "claims of it on the shared topics are refused")
