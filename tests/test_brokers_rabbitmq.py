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
