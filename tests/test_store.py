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


def test_history_retention_deletes_old_messages_but_keeps_each_rooms_newest(tmp_path):
    """HISTORY_RETENTION_DAYS bounds the disk; seq still continues from the room's newest message."""
    from datetime import datetime, timedelta, timezone

    from chatroom.housekeeping import HistoryRetention
    from chatroom.messages import utc_timestamp

    store = MessageStore(str(tmp_path / "c.db"))
    now = datetime(2026, 12, 2, tzinfo=timezone.utc)
    for seq, age_days in enumerate([40, 35, 31, 2], start=1):
        store.append(Message(username="k", content=str(seq), room="lobby", source="http", seq=seq,
                             timestamp=utc_timestamp(now - timedelta(days=age_days))))
    store.append(Message(username="k", content="old but newest", room="attic", source="http", seq=7,
                         timestamp=utc_timestamp(now - timedelta(days=90))))
    assert HistoryRetention(store, days=30, now=lambda: now).apply() == 3
    assert [m.content for m in store.recent("lobby", 10)] == ["4"]
    assert [m.content for m in store.recent("attic", 10)] == ["old but newest"]
    assert store.last_seq("lobby") == 4 and store.last_seq("attic") == 7
    store.close()


def test_recent_rooms_and_their_last_messages(tmp_path):
    """The room list's data: rooms of the newest messages (newest first), and each room's last seq."""
    store = MessageStore(str(tmp_path / "c.db"))
    for seq, room in enumerate(["a", "b", "a", "c", "b"], start=1):
        store.append(Message(username="u", content=str(seq), room=room, source="http", seq=seq))
    assert store.recent_rooms(2) == ["b", "c"]
    assert store.recent_rooms(10, scan=2) == ["b", "c"]
    last = store.last_messages(["a", "b", "nothing here"])
    assert {room: entry["last_seq"] for room, entry in last.items()} == {"a": 3, "b": 5}
    assert last["a"]["last_timestamp"]
    store.close()
