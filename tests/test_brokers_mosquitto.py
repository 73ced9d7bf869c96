"""MQTT 5 on Mosquitto (PROTOCOL 12): reason codes in logs and last_error, and what a broker's
CONNACK says it lacks. Brokers configured per test (a password file; retained messages off)."""
import logging

from conftest import RunningApp, app_env

from support import Mosquitto, MqttProbe, password_file, wait_for


def test_a_refused_mqtt5_login_shows_its_reason_code(tmp_path, caplog):
    """A wrong password under MQTT 5: 503, last_error with the CONNACK's reason code, one line."""
    passwords = password_file(tmp_path / "passwd", {"chatroom-bridge": "right"})
    broker = Mosquitto(tmp_path / "auth", anonymous=False, extra_conf=f"password_file {passwords}\n").start()
    try:
        app = RunningApp(app_env(broker, tmp_path, MQTT_PROTOCOL="5", MQTT_USERNAME="chatroom-bridge",
                                 MQTT_PASSWORD="wrong"))
        with caplog.at_level(logging.ERROR, logger="mqtt_service.bridge"):
            app.components.start()
            try:
                error = wait_for(lambda: app.status()["mqtt_status"]["last_error"], what="the refusal")
                assert error.startswith("broker refused the connection: ") and "(0x8" in error, error
                wait_for(lambda: app.status()["mqtt_status"]["connections_refused"] >= 2, what="a retry")
                assert app.http.get("/mqtt/status").status_code == 503
                lines = [r for r in caplog.records if "broker refused the connection" in r.getMessage()]
                assert len(lines) == 1
            finally:
                app.stop()
    finally:
        broker.kill()


def test_a_broker_without_retained_messages_gets_them_unretained(tmp_path, caplog):
    """mosquitto with `retain_available false` and `max_qos 1` refuses a retained will (0x9A)
    and says so in its CONNACK: the bridge says what it lacks once, drops retain, and relays."""
    broker = Mosquitto(tmp_path / "no-retain", extra_conf="retain_available false\nmax_qos 1\n").start()
    try:
        with caplog.at_level(logging.WARNING, logger="mqtt_service.bridge"):
            app = RunningApp(app_env(broker, tmp_path, MQTT_PROTOCOL="5", MQTT_QOS="2")).start()
            try:
                lacks = [r.getMessage() for r in caplog.records if "the broker lacks" in r.getMessage()]
                assert len(lacks) == 1 and "no retained messages" in lacks[0] and "QoS at most 1" in lacks[0]
                assert any("unretained" in r.getMessage() for r in caplog.records)
                with MqttProbe(broker.port, f"{app.prefix}/messages/out", protocol="5") as device:
                    device.publish(f"{app.prefix}/messages/in", {"client_id": "d5", "message": "no retain"})
                    assert device.wait(f"{app.prefix}/messages/out")[0].json()["content"] == "no retain"
                app.drain()
                status = app.status()["mqtt_status"]
                assert status["is_connected"] and status["reconnect_count"] == 0, status
            finally:
                app.stop()
    finally:
        broker.kill()
