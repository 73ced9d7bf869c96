"""Mutual TLS (PROTOCOL 12): the bridge shows a client certificate (MQTT_CERTFILE/MQTT_KEYFILE).

A CA, a server and client certificates are made with the `openssl` command in a temp dir;
one mosquitto per module wants a certificate from every client (`require_certificate`) and
takes its CN as the user name (`use_identity_as_username`), which its ACL then checks.
"""
import logging
import re
import subprocess
from pathlib import Path

import pytest
from conftest import RunningApp, app_env

from support import Mosquitto, MqttProbe, wait_for

PREFIX = "mtls"
BRIDGE_CN, DEVICE_CN = "chatroom-bridge", "esp-mtls"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def make_ca(directory: Path, name: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}", cwd=directory)
    return directory / f"{name}.crt"


def issue(directory: Path, ca: str, name: str, cn: str, server: bool = False) -> tuple[Path, Path]:
    """A certificate for `cn` signed by `ca` (in `directory`): (certificate, key)."""
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout",
            f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}", cwd=directory)
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n" if server
                          else "extendedKeyUsage=clientAuth\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", extensions.name, cwd=directory)
    return directory / f"{name}.crt", directory / f"{name}.key"


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict:
    directory = tmp_path_factory.mktemp("pki")
    ca = make_ca(directory, "ca")
    make_ca(directory, "stranger-ca")
    return {
        "dir": directory, "ca": ca,
        "server": issue(directory, "ca", "server", "localhost", server=True),
        "bridge": issue(directory, "ca", "bridge", BRIDGE_CN),
        "device": issue(directory, "ca", "device", DEVICE_CN),
        "stranger": issue(directory, "stranger-ca", "stranger", BRIDGE_CN),  # the right name, the wrong CA
    }


@pytest.fixture(scope="module")
def mtls_broker(pki, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("mtls-broker")
    acl = workdir / "acl"
    # Only the bridge's certificate may write the room's output: proves the broker took the CN as user.
    acl.write_text(f"user {BRIDGE_CN}\ntopic readwrite {PREFIX}/#\ntopic readwrite homeassistant/#\n"
                   f"user {DEVICE_CN}\ntopic write {PREFIX}/messages/in\ntopic read {PREFIX}/#\n")
    cert, key = pki["server"]
    broker = Mosquitto(workdir, anonymous=False, extra_conf=(
        f"cafile {pki['ca']}\ncertfile {cert}\nkeyfile {key}\nrequire_certificate true\n"
        f"use_identity_as_username true\nacl_file {acl}\n")).start()
    yield broker
    broker.kill()


def mtls_app(broker: Mosquitto, tmp_path: Path, pki: dict, client: str | None) -> RunningApp:
    files = {"MQTT_CERTFILE": str(pki[client][0]), "MQTT_KEYFILE": str(pki[client][1])} if client else {}
    return RunningApp(app_env(broker, tmp_path, MQTT_TLS="true", MQTT_CA_CERTS=str(pki["ca"]),
                              MQTT_BROKER="localhost", MQTT_TOPIC_PREFIX=PREFIX, **files))


def test_bridge_relays_both_ways_with_its_client_certificate(mtls_broker, pki, tmp_path):
    """The bridge's certificate is its identity: device → room → out, and web → out → device."""
    app = mtls_app(mtls_broker, tmp_path, pki, "bridge").start()
    try:
        device = MqttProbe(mtls_broker.port, f"{PREFIX}/messages/out")
        device.client.tls_set(ca_certs=str(pki["ca"]), certfile=str(pki["device"][0]), keyfile=str(pki["device"][1]))
        with device:
            device.publish(f"{PREFIX}/messages/in", {"client_id": "esp-mtls", "message": "signed in"})
            assert device.wait(f"{PREFIX}/messages/out")[0].json()["content"] == "signed in"
            assert app.http.post("/api/messages", json={"username": "ops", "message": "to the device"}
                                 ).status_code == 201
            out = device.wait(f"{PREFIX}/messages/out", count=2)[1].json()
            assert (out["content"], out["source"]) == ("to the device", "http")
        app.drain()
        status = app.status()["mqtt_status"]
        assert status["is_connected"] and status["reconnect_count"] == 0 and status["last_error"] is None
    finally:
        app.stop()


# One line per TLS connection attempt, whichever way mosquitto 2.0 refuses it: no certificate
# is refused after the TLS 1.3 handshake ("New connection from …", then "OpenSSL Error" and
# "Client <unknown> disconnected": counting those too made one attempt look like two), a
# certificate of another CA during it ("Client connection from … failed: … certificate verify
# failed", no "New connection"). A bare TCP probe's "unexpected eof" is not an attempt.
ATTEMPT = re.compile(r"New connection from |Client connection from \S+ failed: .*certificate")


def connection_attempts(broker: Mosquitto) -> int:
    """TLS connection attempts mosquitto has logged (the module's broker: one client at a time)."""
    return len(ATTEMPT.findall(broker.log.read_text(errors="replace")))


@pytest.mark.parametrize("client", [None, "stranger"], ids=["no-certificate", "certificate-of-another-ca"])
def test_a_missing_or_wrong_client_certificate_is_one_clear_line_and_retried(mtls_broker, pki, tmp_path, caplog,
                                                                               client):
    """Refused by the broker: /mqtt/status is 503 and says why; one log line however many retries; no crash."""
    app = mtls_app(mtls_broker, tmp_path, pki, client)
    before = connection_attempts(mtls_broker)
    with caplog.at_level(logging.ERROR, logger="mqtt_service.bridge"):
        app.components.start()
        try:
            error = wait_for(lambda: app.status()["mqtt_status"]["last_error"], what="the refusal explained")
            assert "client certificate" in error and "MQTT_CERTFILE" in error, error
            # paho retries with backoff (1 s, then 2 s): wait for a second refused attempt.
            wait_for(lambda: connection_attempts(mtls_broker) >= before + 2,
                     what="a second attempt")
            response = app.http.get("/mqtt/status")
            assert response.status_code == 503
            assert response.get_json()["mqtt_status"]["is_running"] is True
            lines = [r for r in caplog.records if "client certificate" in r.getMessage()]
            assert len(lines) == 1, [r.getMessage() for r in lines]
            assert app.components.bridge.connection.client.is_connected() is False
        finally:
            app.stop()
