"""What tests/test_brokers_*.py check on each broker (PROTOCOL 12): one server per module,
a few checks each. `server` is support.RabbitMQServer or support.NatsServer: `.port`, `.restart()`."""
from __future__ import annotations

import socket
from pathlib import Path

from conftest import RunningApp, app_env

from support import MqttProbe, wait_for


class PortOnly:
    """app_env wants something with a `.port`."""

    def __init__(self, port: int):
        self.port = port


def start_app(server, tmp_path: Path, kind: str, **overrides) -> RunningApp:
    return RunningApp(app_env(PortOnly(server.port), tmp_path, MQTT_BROKER_KIND=kind, **overrides)).start()


def relays_both_ways_and_says_what_the_broker_lacks(server, tmp_path: Path, kind: str, caplog, lacks: str) -> None:
    app = start_app(server, tmp_path, kind)
    try:
        status = app.status()["mqtt_status"]
        assert status["broker_info"]["protocol"] == "3.1.1" and status["broker_info"]["broker_kind"] == kind
        said = [r.getMessage() for r in caplog.records if f"MQTT broker {kind} lacks" in r.getMessage()]
        assert len(said) == 1 and lacks in said[0], said
        with MqttProbe(server.port, f"{app.prefix}/messages/out") as device:
            device.publish(f"{app.prefix}/messages/in", {"client_id": "dev-1", "message": "from the device"})
            assert device.wait(f"{app.prefix}/messages/out")[0].json()["content"] == "from the device"
            assert app.http.post("/api/messages", json={"username": "ops", "message": "to the devices"}
                                 ).status_code == 201
            out = device.wait(f"{app.prefix}/messages/out", count=2)[1].json()
            assert (out["content"], out["source"], out["seq"]) == ("to the devices", "http", 2)
        app.drain()
        assert app.status()["mqtt_status"]["messages_dropped"] == 0
    finally:
        app.stop()


def bridge_state_is_retained_and_its_will_says_offline(server, tmp_path: Path, kind: str) -> None:
    """A late subscriber of the exact state topic reads `online`; a connection that dies
    without DISCONNECT makes the broker publish the will (`offline`), and the bridge comes back."""
    app = start_app(server, tmp_path, kind)
    try:
        state = f"{app.prefix}/bridge/state"
        wait_for(lambda: app.status()["mqtt_status"]["messages_sent"] >= 1, what="online acknowledged")
        with MqttProbe(server.port, state) as late:
            first = late.wait(state)[0]
            assert first.retain and first.json() == {"state": "online"}
            # The bridge's socket dies under it: the broker publishes the will, paho reconnects.
            app.components.bridge.connection.client.socket().shutdown(socket.SHUT_RDWR)
            late.wait(state, match=lambda s: s["state"] == "offline", timeout=60)
            late.wait(state, count=2, match=lambda s: s["state"] == "online", timeout=60)
        wait_for(lambda: app.status()["mqtt_status"]["reconnect_count"] == 1, timeout=30, what="reconnected")
    finally:
        app.stop()


def qos1_loses_nothing_across_a_broker_restart(server, tmp_path: Path, kind: str) -> None:
    """Device messages queued for the stopped bridge's session and web messages posted while
    the broker restarts: every one on P/messages/out once, in seq order."""
    env = {"MQTT_CLIENT_ID": f"bridge-{kind}-restart", "DATABASE_PATH": str(tmp_path / "restart.db")}
    first = start_app(server, tmp_path, kind, **env)
    prefix = first.prefix
    first.stop()
    watcher = MqttProbe(server.port, f"{prefix}/messages/out", client_id=f"watcher-{kind}", clean_session=False)
    watcher.client.reconnect_delay_set(0.2, 1)
    watcher.start()
    try:
        with MqttProbe(server.port) as device:
            for i in range(5):
                device.publish(f"{prefix}/messages/in", {"client_id": "dev-q", "message": f"queued {i}"})
        server.stop()
        app = RunningApp(app_env(PortOnly(server.port), tmp_path, MQTT_BROKER_KIND=kind, MQTT_TOPIC_PREFIX=prefix,
                                 **env))
        app.components.start()  # the broker is down: the server starts anyway
        try:
            for i in range(5):
                assert app.http.post("/api/messages", json={"username": "ops", "message": f"posted {i}"}
                                     ).status_code == 201
            server.start()
            wait_for(lambda: app.components.bridge.is_connected, timeout=60, what="bridge reconnected")
            watcher.wait(f"{prefix}/messages/out", count=10, timeout=60)
            app.drain()
            wait_for(lambda: app.status()["mqtt_status"]["outbox_size"] == 0, what="outbox drained")
            outs = [r.json() for r in watcher.on(f"{prefix}/messages/out")]
            assert sorted(m["content"] for m in outs) == sorted([f"queued {i}" for i in range(5)]
                                                                 + [f"posted {i}" for i in range(5)])
            assert [m["seq"] for m in outs] == sorted(m["seq"] for m in outs) == list(range(1, 11))
        finally:
            app.stop()
    finally:
        watcher.stop()


def device_will_makes_it_leave(server, tmp_path: Path, kind: str) -> None:
    app = start_app(server, tmp_path, kind)
    try:
        with MqttProbe(server.port, f"{app.prefix}/system") as watcher:
            device = MqttProbe(server.port, client_id=f"esp-lwt-{kind}",
                               will=(f"{app.prefix}/users/leave", '{"client_id": "esp-lwt"}')).start()
            device.publish(f"{app.prefix}/users/join", {"client_id": "esp-lwt", "username": "Porch"})
            watcher.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "join")
            device.client.loop_stop()
            device.client.socket().close()  # no DISCONNECT: the broker publishes the will
            leave = watcher.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "leave", timeout=60)
            assert leave[0].json()["username"] == "Porch"
    finally:
        app.stop()


def mqtt5_without_a_kind_is_one_clear_error(server, tmp_path: Path, expected: str) -> None:
    """MQTT_PROTOCOL=5 at a broker that speaks 3.1.1 only, its kind not named: not connected,
    503, last_error says why (`expected`), the bridge keeps retrying."""
    app = RunningApp(app_env(PortOnly(server.port), tmp_path, MQTT_PROTOCOL="5"))
    app.components.start()
    try:
        error = wait_for(lambda: app.status()["mqtt_status"]["last_error"], timeout=30, what="the refusal")
        assert expected in error, error
        assert app.http.get("/mqtt/status").status_code == 503
    finally:
        app.stop()
