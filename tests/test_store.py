"""SQLite history and readings."""
from chatroom.messages import Message
from chatroom.store import MessageStore


def test_readings_are_a_time_series_of_one_key(tmp_path):
    """Values of data[key] from one device, oldest first, types kept."""
    store = MessageStore(str(tmp_path / "c.db"))
    for seq, data in enumerate([{"temperature": 20.5, "ok": True}, {"humidity": 40},
                                {"temperature": 21}, {"temperature": 22.25, "ok": False}], start=1):
        store.append(Message(username="k", content="r", room="lobby", source="mqtt", seq=seq,
                             client_id="esp", data=data))
    store.append(Message(username="o", content="r", room="lobby", source="mqtt", seq=9,
                         client_id="other", data={"temperature": 99}))
    assert [r["value"] for r in store.readings("esp", "temperature", 10)] == [20.5, 21, 22.25]
    assert [r["value"] for r in store.readings("esp", "temperature", 2)] == [21, 22.25]
    assert [r["value"] for r in store.readings("esp", "ok", 10)] == [True, False]
    assert store.readings("esp", "pressure", 10) == []
    store.close()
