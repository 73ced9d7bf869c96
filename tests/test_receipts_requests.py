"""Devices that ask (PROTOCOL 11) through a real mosquitto and `python app.py`: receipts for
stored messages, history and members requests; the MQTT 5 Response Topic path in process."""
from __future__ import annotations

import json

import pytest
import requests
from conftest import app_env
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from chatroom.core.model import UNNUMBERED, Message
from chatroom.core.room import Rooms
from chatroom.core.room_types import Outcome
from chatroom.core.submission import Accepted
from chatroom.storage.sqlite import MessageStore
from mqtt_service.device_requests import MAX_ANSWER_BYTES, AnswerBudget, DeviceRequests
from mqtt_service.stats import BridgeStats
from mqtt_service.topics import Topics
from support import TIMEOUT, MqttProbe, ServerProcess


@pytest.fixture(scope="module")
def server(broker, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("requests")
    process = ServerProcess(app_env(broker, workdir), log_path=workdir / "server.log").start()
    yield process
    process.stop()


@pytest.fixture
def probe(broker, server):
    with MqttProbe(broker.port, f"{server.env['MQTT_TOPIC_PREFIX']}/#") as mqtt_probe:
        yield mqtt_probe


def test_a_stored_message_gets_a_receipt_and_a_repeat_the_original_seq(server, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    receipts = f"{prefix}/devices/rc-1/receipts"
    probe.publish(f"{prefix}/messages/in/rc-1", {"message": "first", "message_id": "m-1", "receipt": True})
    stored = probe.wait(receipts)[0].json()
    assert (stored["message_id"], stored["room"], stored["status"]) == ("m-1", "lobby", "stored")
    history = requests.get(f"{server.url}/api/messages", timeout=TIMEOUT).json()["messages"]
    assert [m["seq"] for m in history if m["client_message_id"] == "m-1"] == [stored["seq"]]
    probe.publish(f"{prefix}/messages/in/rc-1", {"message": "first", "message_id": "m-1", "receipt": True})
    repeat = probe.wait(receipts, 2)[1].json()
    assert (repeat["status"], repeat["seq"]) == ("duplicate", stored["seq"])
    # No receipt unless asked; a number id comes back a number; a rejected message gets its error only.
    probe.publish(f"{prefix}/messages/in/rc-1", {"message": "quiet", "message_id": "m-2"})
    probe.publish(f"{prefix}/messages/in/rc-1", {"message": "", "message_id": "m-3", "receipt": True})
    probe.publish(f"{prefix}/messages/in/rc-1", {"message": "numbered", "message_id": 7, "receipt": True})
    third = probe.wait(receipts, 3)[2].json()
    assert (third["message_id"], third["status"]) == (7, "stored")
    assert third["seq"] == stored["seq"] + 2  # "quiet" took the seq between
    assert len(probe.on(receipts)) == 3
    assert probe.wait(f"{prefix}/errors", match=lambda e: e["client_id"] == "rc-1")[0].json()["code"] == "missing_field"


def test_a_shared_topic_message_gets_its_receipt_on_the_claimed_devices_topic(server, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe.publish(f"{prefix}/kitchen/messages/in", {"client_id": "rc-2", "message": "hello", "message_id": "a",
                                                    "receipt": True})
    receipt = probe.wait(f"{prefix}/devices/rc-2/receipts")[0].json()
    assert (receipt["room"], receipt["status"]) == ("kitchen", "stored")


def test_history_and_members_requests_are_answered_with_the_request_id(server, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    for n in range(1, 6):
        response = requests.post(f"{server.url}/api/messages", timeout=TIMEOUT,
                                 json={"username": "cron", "message": f"line {n}", "room": "asking"})
        assert response.status_code == 201
    probe.publish(f"{prefix}/asking/users/join/asker-1", {"username": "Asker"})
    responses = f"{prefix}/devices/asker-1/responses"
    requests_topic = f"{prefix}/devices/asker-1/requests"
    probe.publish(requests_topic, {"request_id": "h1", "request": "history", "room": "asking", "after_seq": 2,
                                   "limit": 2})
    history = probe.wait(responses, match=lambda r: r["request_id"] == "h1")[0].json()
    assert history["ok"] and [m["content"] for m in history["result"]["messages"]] == ["line 3", "line 4"]
    assert (history["result"]["last_seq"], history["result"]["truncated"]) == (5, False)
    probe.publish(requests_topic, {"request_id": 2, "request": "members", "room": "asking"})
    members = probe.wait(responses, match=lambda r: r["request_id"] == 2)[0].json()
    assert [(u["username"], u["client_id"]) for u in members["result"]["users"]] == [("Asker", "asker-1")]
    probe.publish(requests_topic, {"request_id": "bad", "request": "history", "limit": 101})
    refused = probe.wait(responses, match=lambda r: r["request_id"] == "bad")[0].json()
    assert (refused["ok"], refused["code"]) == (False, "bad_field")
    probe.publish(requests_topic, {"request": "members"})  # no request_id: nothing to answer with
    error = probe.wait(f"{prefix}/errors", match=lambda e: e["client_id"] == "asker-1")[0].json()
    assert error["code"] == "bad_field" and "request_id" in error["error"]


def test_a_history_answer_stays_under_64_kib(server, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    for _ in range(20):  # 20 x 6 000 bytes of CJK text
        assert requests.post(f"{server.url}/api/messages", timeout=TIMEOUT,
                             json={"username": "poet", "message": "诗" * 2000, "room": "long"}).status_code == 201
    probe.publish(f"{prefix}/devices/reader-1/requests", {"request_id": "big", "request": "history",
                                                          "room": "long", "limit": 100})
    answer = probe.wait(f"{prefix}/devices/reader-1/responses")[0]
    result = answer.json()["result"]
    assert len(answer.payload) <= MAX_ANSWER_BYTES and result["truncated"] is True
    assert [m["seq"] for m in result["messages"]] == list(range(1, len(result["messages"]) + 1))


# --- in process: the paging past a gap, and MQTT 5's Response Topic -------------------------


class Captured:
    def __init__(self):
        self.sent = []

    def publish(self, item) -> None:
        self.sent.append(item)


def _requests(rooms: Rooms) -> tuple[DeviceRequests, Captured]:
    outbox = Captured()
    return DeviceRequests(Topics("P"), outbox, 1, rooms, BridgeStats(), lambda topic, exc: None,
                          lambda device: None), outbox


def test_history_pages_past_a_gap_in_the_seqs():
    store = MessageStore(":memory:")
    for seq in [*range(1, 4), *range(400, 406)]:  # retention took 4..399
        store.append(Message(username="u", content=f"m{seq}", room="lobby", source="http", seq=seq))
    device_requests, outbox = _requests(Rooms(store))
    device_requests.handle("dev", "P/devices/dev/requests", json.dumps(
        {"request_id": 1, "request": "history", "after_seq": 3, "limit": 4}).encode())
    result = json.loads(outbox.sent[0].payload)["result"]
    assert [m["seq"] for m in result["messages"]] == [400, 401, 402, 403]


def test_an_mqtt5_request_is_answered_on_its_response_topic_with_its_correlation_data():
    device_requests, outbox = _requests(Rooms(MessageStore(":memory:")))
    asked = Properties(PacketTypes.PUBLISH)
    asked.ResponseTopic = "P/devices/dev/responses/42"
    asked.CorrelationData = b"\x00corr-42"
    payload = json.dumps({"request_id": "r", "request": "members"}).encode()
    device_requests.handle("dev", "P/devices/dev/requests", payload, asked)
    elsewhere = Properties(PacketTypes.PUBLISH)
    elsewhere.ResponseTopic = "P/messages/in"  # not the device's own subtree: never written by the bridge
    elsewhere.CorrelationData = b"x"
    device_requests.handle("dev", "P/devices/dev/requests", payload, elsewhere)
    for own_but_not_responses in ("P/devices/dev/set/power", "P/devices/dev/commands", "P/devices/dev/responsesX"):
        mine = Properties(PacketTypes.PUBLISH)
        mine.ResponseTopic = own_but_not_responses  # its set topic: the bridge would hear it as Home Assistant
        device_requests.handle("dev", "P/devices/dev/requests", payload, mine)
    first, second, *own = outbox.sent
    assert [item.topic for item in own] == ["P/devices/dev/responses"] * 3
    assert first.topic == "P/devices/dev/responses/42" and first.properties.CorrelationData == b"\x00corr-42"
    assert json.loads(first.payload)["request_id"] == "r"
    assert second.topic == "P/devices/dev/responses" and second.properties is None


def test_answers_of_all_devices_together_spend_one_byte_budget():
    device_requests, outbox = _requests(Rooms(MessageStore(":memory:")))
    now = [0.0]
    # Room for one more answer of the largest size, and a small one spends some of it.
    device_requests.budget = AnswerBudget(per_second=1000, burst=MAX_ANSWER_BYTES + 50, clock=lambda: now[0])
    payload = json.dumps({"request_id": 1, "request": "members"}).encode()
    for level in ("a", "b", "c"):
        device_requests.handle(level, f"P/devices/{level}/requests", payload)
    answers = [json.loads(item.payload) for item in outbox.sent]
    assert [answer["ok"] for answer in answers] == [True, False, False]  # the first spent what the rest need
    assert answers[1]["code"] == answers[2]["code"] == "rate_limited"
    now[0] += MAX_ANSWER_BYTES / 1000  # refilled
    device_requests.handle("d", "P/devices/d/requests", payload)
    assert json.loads(outbox.sent[-1].payload)["ok"] is True


def test_a_duplicate_of_a_message_numbered_at_commit_gets_its_seq():
    """Several instances: the store numbers a batch when it commits, after the receipt's seq
    was asked for the first time; a later duplicate still gets the original's seq."""
    device_requests, outbox = _requests(Rooms(MessageStore(":memory:")))
    draft = Message(username="d", content="x", room="lobby", source="mqtt", seq=UNNUMBERED,
                    client_id="d", client_message_id="m-1")
    device_requests.remember(Accepted(Outcome.POSTED, "lobby", message=draft, message_id=draft.message_id))
    draft.number(12)  # the batch committed
    device_requests.receipt("d", "m-1", Accepted(Outcome.DUPLICATE, "lobby", message_id=draft.message_id))
    assert json.loads(outbox.sent[-1].payload) == {"message_id": "m-1", "seq": 12, "room": "lobby",
                                                   "status": "duplicate"}


def test_a_receipt_says_stored_only_for_a_numbered_message_the_store_holds():
    rooms = Rooms(MessageStore(":memory:"))
    device_requests, outbox = _requests(rooms)
    stored = rooms.post("lobby", "d", "kept", "mqtt", client_id="d", client_message_id="m-1")
    lost = Message(username="d", content="x", room="lobby", source="mqtt", seq=UNNUMBERED, client_id="d",
                   client_message_id="m-2")  # its batch never committed
    numbered_not_held = Message(username="d", content="y", room="lobby", source="mqtt", seq=99, client_id="d",
                                client_message_id="m-3")
    for message_id, message in (("m-2", lost), ("m-3", numbered_not_held), ("m-1", stored)):
        device_requests.receipt("d", message_id, Accepted(Outcome.POSTED, "lobby", message=message,
                                                          message_id=message.message_id))
    assert [json.loads(item.payload) for item in outbox.sent] == [
        {"message_id": "m-1", "seq": stored.seq, "room": "lobby", "status": "stored"}]
    assert device_requests.stats.snapshot()["receipts_withheld"] == 2
