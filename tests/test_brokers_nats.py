"""The bridge on NATS's MQTT support, a real server started here on ports of its own
(PROTOCOL 12, docs/BROKERS.md): relay both ways, QoS 1 across a broker restart, the retained
bridge state and wills. One server for the module; each test keeps to its own topic prefix."""
import logging

import pytest
from broker_checks import (
    bridge_state_is_retained_and_its_will_says_offline,
    device_will_makes_it_leave,
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
