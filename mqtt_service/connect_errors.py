"""Why a connection attempt failed, in words an operator can act on.

paho swallows the exception of a failed connect (on_connect_fail gets none) and logs
the error of a failed read on every retry; with TLS 1.3 a broker refuses a
client certificate exactly there, after the handshake. `RecordingClient` keeps both, and
`describe` turns them into one line: an untrusted broker certificate, a client
certificate the broker refused or did not get, a refused TCP connection.
"""
from __future__ import annotations

import ssl
from typing import Any

import paho.mqtt.client as mqtt

# OpenSSL's alert names for a client certificate the broker refused (or wanted and did not get).
CLIENT_CERTIFICATE_ALERTS = ("CERTIFICATE_REQUIRED", "BAD_CERTIFICATE", "UNKNOWN_CA", "CERTIFICATE_UNKNOWN",
                             "HANDSHAKE_FAILURE", "CERTIFICATE_EXPIRED", "UNSUPPORTED_CERTIFICATE")


class RecordingClient(mqtt.Client):
    """paho's client, remembering the last transport error of a connection attempt."""

    last_transport_error: str | None = None

    def reconnect(self) -> mqtt.MQTTErrorCode:
        try:
            result = super().reconnect()
        except OSError as exc:
            self.last_transport_error = describe(exc)
            raise
        self.last_transport_error = None
        return result

    def _easy_log(self, level: int, fmt: str, *args: Any) -> None:
        # A failed read (TLS 1.3 refuses our certificate there) is kept for the bridge's own
        # line, which says it once per state change; paho would say it on every retry.
        if level == mqtt.MQTT_LOG_ERR and fmt.startswith("failed to receive on socket") and args:
            self.last_transport_error = describe_text(str(args[0]))
            return
        super()._easy_log(level, fmt, *args)  # type: ignore[arg-type]


def describe(exc: OSError) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS: the broker's certificate is not trusted ({exc.verify_message}; check MQTT_CA_CERTS)"
    if isinstance(exc, ssl.SSLError):
        return describe_text(str(exc))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused (nothing listens there)"
    return str(exc) or type(exc).__name__


def describe_text(text: str) -> str:
    upper = text.upper()
    if "CERTIFICATE_VERIFY_FAILED" in upper:
        return f"TLS: the broker's certificate is not trusted ({text}; check MQTT_CA_CERTS)"
    if any(alert in upper for alert in CLIENT_CERTIFICATE_ALERTS):
        return (f"TLS: the broker refused the client certificate ({text}; check MQTT_CERTFILE/MQTT_KEYFILE "
                "and that the broker trusts their CA)")
    return text


def reason_text(reason_code: Any, mqtt5: bool = True) -> str:
    """A reason code with its number, `Not authorized (0x87)`, as an MQTT 5 broker sent it
    (with 3.1.1 paho makes one up for a lost connection: the words only)."""
    value = getattr(reason_code, "value", None)
    return f"{reason_code} (0x{value:02X})" if mqtt5 and isinstance(value, int) else str(reason_code)
