"""One instance to a cluster and back under one client id (issue 22, finding 3): the
persistent session keeps the other configuration's subscriptions on the broker, so the
bridge drops them on connect and every device message is stored once. Real mosquitto,
real redis-server, in-process apps sharing one history file."""
import os
import uuid

from mqtt_service.subscriptions import FILE_NAME
from support import MqttProbe, wait_for


def send_and_count(app, broker, texts):
    """Publish device messages; once the last is stored, how many of them history holds."""
    with MqttProbe(broker.port) as device:
        for text in texts:
            device.publish(f"{app.prefix}/messages/in", {"client_id": "esp-1", "message": text})
    wait_for(lambda: any(m["content"] == texts[-1] for m in history(app)), what="the last one stored")
    # The stream has settled when a marker sent after them is stored too.
    with MqttProbe(broker.port) as device:
        device.publish(f"{app.prefix}/messages/in/esp-2", {"message": f"marker {texts[-1]}"})
    wait_for(lambda: any(m["content"] == f"marker {texts[-1]}" for m in history(app)), what="marker stored")
    app.drain()
    return sum(1 for m in history(app) if m["content"] in texts)


def history(app):
    return app.http.get("/api/messages?limit=500").get_json()["messages"]


def test_single_to_cluster_to_single_stores_each_message_once(make_app, broker, redis_server, tmp_path):
    same = {"MQTT_CLIENT_ID": f"bridge-{uuid.uuid4().hex[:6]}", "MQTT_TOPIC_PREFIX": f"t{uuid.uuid4().hex[:8]}",
            "DATABASE_PATH": str(tmp_path / "chat.db"), "HA_DISCOVERY": "false"}
    single = make_app(**same)
    assert send_and_count(single, broker, [f"single {n}" for n in range(3)]) == 3
    single.stop()
    # A deployment from before this fix has no memory of its subscriptions: the plain
    # filters are dropped all the same.
    os.remove(tmp_path / FILE_NAME)
    shared = {"REDIS_URL": redis_server.url, "MQTT_SHARED_GROUP": "relays"}
    cluster = make_app(**same, **shared)
    second = make_app(**{**same, "MQTT_CLIENT_ID": f"bridge-{uuid.uuid4().hex[:6]}"}, **shared)
    assert any(t.startswith("$share/relays/") for t in cluster.status()["mqtt_status"]["active_topics"])
    # With the old plain subscription left on the broker, the moved instance heard all 8 and
    # the second its share: 12 stored (the operator's finding).
    assert send_and_count(cluster, broker, [f"cluster {n}" for n in range(8)]) == 8
    cluster.stop()
    second.stop()
    back = make_app(**same)  # the $share group is remembered beside the history: dropped too
    assert send_and_count(back, broker, [f"back {n}" for n in range(5)]) == 5


def test_a_remembered_share_group_is_dropped_on_the_way_back(tmp_path):
    """A `$share` group name cannot be guessed: what this client id subscribed is remembered."""
    from mqtt_service.subscriptions import SubscriptionMemory, stale_filters
    from mqtt_service.topics import Topics

    topics = Topics("chatroom")
    memory = SubscriptionMemory(str(tmp_path))
    memory.remember("bridge-1", topics.subscriptions("relays"))
    again = SubscriptionMemory(str(tmp_path))  # the next start reads the file
    plain = topics.subscriptions("")
    stale = stale_filters(topics, plain, "", again.previous("bridge-1"))
    assert set(stale) == set(topics.subscriptions("relays"))
    only_devices = topics.subscriptions("", device_topics_only=True)
    assert set(stale_filters(topics, only_devices, "", [])) == set(plain) - set(only_devices)
