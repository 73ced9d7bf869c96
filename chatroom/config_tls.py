"""The TLS files of the MQTT connection, loaded once at start-up as paho will load them.

A file that exists but cannot be used (not PEM, a key of another certificate, an encrypted
key, unreadable) would otherwise fail inside the bridge's start with a traceback; here it is
one `NAME: reason` line of the configuration error (exit code 2, README "Configuration").
"""
from __future__ import annotations

import ssl


class _Encrypted(Exception):
    """The key asked for a passphrase: refused rather than prompted for on the terminal."""


def _no_passphrase() -> str:
    raise _Encrypted


def _why(exc: OSError) -> str:
    """` (OpenSSL's reason)` or ` (the system's)`, or nothing when OpenSSL gave none ("PEM lib")."""
    if isinstance(exc, ssl.SSLError):
        return f" ({exc.reason.lower().replace('_', ' ')})" if exc.reason else ""
    return f" ({exc.strerror or exc})"


def tls_file_problems(ca_certs: str, certfile: str, keyfile: str) -> list[str]:
    """Problems with the given files (each already known to exist), one line each."""
    problems = []
    if ca_certs:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca_certs)
        except OSError as exc:
            problems.append(f"MQTT_CA_CERTS: no PEM CA certificate could be read from {ca_certs!r}{_why(exc)}")
    if not certfile:
        return problems
    try:  # the certificate alone first, so a bad one is told apart from a bad key
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=certfile)
    except OSError as exc:
        return [*problems, f"MQTT_CERTFILE: no PEM certificate could be read from {certfile!r}{_why(exc)}"]
    key_name, key_path = ("MQTT_KEYFILE", keyfile) if keyfile else ("MQTT_CERTFILE", certfile)
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(certfile, keyfile or None, password=_no_passphrase)
    except _Encrypted:
        problems.append(f"{key_name}: the private key in {key_path!r} is encrypted; a passphrase is not "
                        "supported (decrypt it: openssl pkey -in KEY -out KEY.plain)")
    except ssl.SSLError as exc:
        if exc.reason == "KEY_VALUES_MISMATCH":
            problems.append(f"{key_name}: the key in {key_path!r} does not belong to the certificate "
                            f"in {certfile!r}")
        elif not keyfile:
            problems.append(f"MQTT_KEYFILE: required: no private key in MQTT_CERTFILE {certfile!r}{_why(exc)}")
        else:
            problems.append(f"MQTT_KEYFILE: no PEM private key could be read from {keyfile!r}{_why(exc)}")
    except OSError as exc:
        problems.append(f"{key_name}: cannot read {key_path!r}{_why(exc)}")
    return problems
