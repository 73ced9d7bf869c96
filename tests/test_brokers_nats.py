"""The bridge on NATS's MQTT support, a real server started here on ports of its own
(PROTOCOL 12, docs/BROKERS.md): relay both ways, QoS 1 across a broker restart, the retained
bridge state and wills. One server for the module; each test keeps to its own topic prefix."""
import logging

import pytest
from broker_checks import (
    bridge_state_is_retained_and_its_will_says_offline,
    device_will_makes_it_leave,
    mqtt5_without_a_kind_is_one_clear_error,
    qos1_loses_nothing_across_a_broker_restart,
    relays_both_ways_and_says_what_the_broker_lacks,
)

from support import NatsServer

KIND = "nats"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = NatsServer(tmp_path_factory.mktemp("nats")).start()
    yield server
    server.close()


def test_relays_both_ways_and_says_what_nats_lacks(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mqtt_service.bridge"):
        relays_both_ways_and_says_what_the_broker_lacks(server, tmp_path, KIND, caplog, "QoS at most 1")


def test_bridge_state_is_retained_and_its_will_says_offline(server, tmp_path):
    bridge_state_is_retained_and_its_will_says_offline(server, tmp_path, KIND)


def test_device_will_makes_it_leave(server, tmp_path):
    device_will_makes_it_leave(server, tmp_path, KIND)


def test_qos1_loses_nothing_across_a_broker_restart(server, tmp_path):
    qos1_loses_nothing_across_a_broker_restart(server, tmp_path, KIND)



def test_a_dotted_device_id_relays_and_a_dotted_prefix_is_refused(server, tmp_path):
    """NATS closes the connection on a '.' in a topic: device ids are slugged in topics (no
    reconnect, nothing dropped), and a prefix with a '.' stops the start with one line."""
    import pytest as _pytest
    from broker_checks import start_app

    from chatroom.config import ConfigError, Settings
    from support import MqttProbe

    app = start_app(server, tmp_path, KIND)
    try:
        with MqttProbe(server.port, f"{app.prefix}/messages/out") as device:
            device.publish(f"{app.prefix}/messages/in", {"client_id": "esp.kitchen", "message": "dotted",
                                                         "data": {"temperature": 21}})
            assert device.wait(f"{app.prefix}/messages/out")[0].json()["client_id"] == "esp.kitchen"
        app.drain()
        status = app.status()["mqtt_status"]
        assert (status["messages_dropped"], status["reconnect_count"], status["is_connected"]) == (0, 0, True)
    finally:
        app.stop()
    with _pytest.raises(ConfigError, match="MQTT_TOPIC_PREFIX: nats refuses"):
        Settings.from_env({"MQTT_BROKER_KIND": "nats", "MQTT_TOPIC_PREFIX": "home.chat"})


def test_mqtt5_without_the_broker_kind_is_one_clear_error(server, tmp_path):
    mqtt5_without_a_kind_is_one_clear_error(server, tmp_path, "Unsupported protocol version (0x84) (MQTT_PROTOCOL=5")


def test_a_start_that_fails_stops_the_server_it_started(tmp_path):
    """tests/support.py: a nats-server that never listens where it was told fails its start and
    is stopped by its PID, not left running past the test."""
    import os
    import re

    from support import free_port

    broken = NatsServer(tmp_path / "never")
    broken.port = free_port()  # the MQTT listener is configured elsewhere: never open here
    with pytest.raises(AssertionError, match="timed out"):
        broken.start(timeout=3)
    pid = re.match(r"\[(\d+)\]", broken.log.read_text()).group(1)  # nats logs "[pid] …"
    assert broken.proc is None and not os.path.exists(f"/proc/{pid}")


def test_a_connection_the_broker_closes_on_every_retry_is_said_once(server, tmp_path, caplog):
    """Issue 26: MQTT_BROKER_KIND unset and MQTT_QOS=2: NATS closes every connection at the first
    QoS 2 publication. One "connection lost" line (and the loop explained once), and the rooms
    told bridge_offline once, not on every retry."""
    from broker_checks import PortOnly
    from conftest import RunningApp, app_env

    from chatroom.core.model import SystemEvent
    from support import wait_for

    app = RunningApp(app_env(PortOnly(server.port), tmp_path, MQTT_QOS="2"))
    told: list[str] = []
    app.components.rooms.subscribe("test-bridge-events", lambda event: told.append(event.event),
                                   events=(SystemEvent,))
    with caplog.at_level(logging.WARNING, logger="mqtt_service.bridge"):
        app.components.start()
        try:
            wait_for(lambda: app.status()["mqtt_status"]["reconnect_count"] >= 3, timeout=60, what="3 retries")
            app.drain()
            said = [r.getMessage() for r in caplog.records]
            assert len([line for line in said if "connection lost" in line]) == 1, said
            assert len([line for line in said if "right after they opened" in line]) == 1, said
            assert told.count("bridge_offline") == 1 and told.count("bridge_online") <= 2, told
        finally:
            app.stop()
