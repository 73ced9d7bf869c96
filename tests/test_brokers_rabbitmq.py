"""The bridge on RabbitMQ's MQTT support, a real server started here on ports of its own
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

from support import RabbitMQServer

KIND = "rabbitmq"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = RabbitMQServer(tmp_path_factory.mktemp("rabbitmq")).start()
    yield server
    server.close()


def test_relays_both_ways_and_says_what_rabbitmq_lacks(server, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="mqtt_service.bridge"):
        relays_both_ways_and_says_what_the_broker_lacks(server, tmp_path, KIND, caplog, "no shared subscriptions")


def test_bridge_state_is_retained_and_its_will_says_offline(server, tmp_path):
    bridge_state_is_retained_and_its_will_says_offline(server, tmp_path, KIND)


def test_device_will_makes_it_leave(server, tmp_path):
    device_will_makes_it_leave(server, tmp_path, KIND)


def test_qos1_loses_nothing_across_a_broker_restart(server, tmp_path):
    qos1_loses_nothing_across_a_broker_restart(server, tmp_path, KIND)


def test_mqtt5_without_the_broker_kind_is_one_clear_error(server, tmp_path):
    mqtt5_without_a_kind_is_one_clear_error(server, tmp_path, "does it speak MQTT 5?")


def test_a_start_that_fails_stops_everything_it_started(tmp_path):
    """tests/support.py: a RabbitMQ that never listens where it was told fails its start and
    leaves nothing running (the script, the Erlang VM, its epmd)."""
    import os

    from support import free_port, port_open, wait_for

    broken = RabbitMQServer(tmp_path / "never")
    broken.port = free_port()  # the MQTT listener is configured elsewhere: never open here
    node = f"chat-test-{broken.port}@localhost".encode()

    def ours() -> list[str]:  # processes of this node: read from /proc, never matched to be killed
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmdline, open(f"/proc/{pid}/environ", "rb") as environ:
                    if node in cmdline.read() or node in environ.read():
                        found.append(pid)
            except OSError:
                pass
        return found

    with pytest.raises(AssertionError, match="timed out"):
        broken.start(timeout=5)  # the listener is not what is waited on: it never opens here
    # The Erlang VM was up (it writes its PID file once booting) and its epmd with it.
    assert (broken.workdir / "rabbitmq.pid").read_text().strip().isdigit()
    assert broken.proc is None and not port_open(broken.epmd_port)
    wait_for(lambda: ours() == [], timeout=10, what="every process of the failed start gone")  # SIGKILLed
