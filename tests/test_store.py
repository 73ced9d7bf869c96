"""History and readings: the SQLite store (default) and the PostgreSQL one (DATABASE_URL)
give the same answers."""
import pytest

from chatroom.core.model import Message
from chatroom.topology import open_history


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        history = open_history("", str(tmp_path / "c.db"))
    else:
        url = request.getfixturevalue("postgres_url")
        history = open_history(url, "")
        history._fetch("TRUNCATE messages", rows=False)  # one database for the session
    yield history
    history.close()


def test_readings_are_a_time_series_of_one_key(store):
    """Values of data[key] from one device, oldest first, types kept."""
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


def test_history_retention_deletes_old_messages_but_keeps_each_rooms_newest(store):
    """HISTORY_RETENTION_DAYS bounds the disk; seq still continues from the room's newest message."""
    from datetime import datetime, timedelta, timezone

    from chatroom.core.model import utc_timestamp
    from chatroom.ops.housekeeping import HistoryRetention

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


def test_recent_rooms_and_their_last_messages(store):
    """The room list's data: rooms of the newest messages (newest first), and each room's last seq."""
    for seq, room in enumerate(["a", "b", "a", "c", "b"], start=1):
        store.append(Message(username="u", content=str(seq), room=room, source="http", seq=seq))
    assert store.recent_rooms(2) == ["b", "c"]
    assert store.recent_rooms(10, scan=2) == ["b", "c"]
    last = store.last_messages(["a", "b", "nothing here"])
    assert {room: entry["last_seq"] for room, entry in last.items()} == {"a": 3, "b": 5}
    assert last["a"]["last_timestamp"]


def test_latest_data_keys_and_size(store):
    """What the device topics read: each key's latest value, every key ever sent; and the size."""
    for seq, data in enumerate([{"t": 1, "h": 40}, {"t": 2}, None, {"ok": False}], start=1):
        store.append(Message(username="k", content="r", room="lobby", source="mqtt", seq=seq,
                             client_id="esp", data=data))
    latest, newest = store.latest_data("esp")
    assert latest == {"t": 2, "h": 40, "ok": False} and newest
    assert sorted(store.data_keys("esp")) == ["h", "ok", "t"]
    assert store.latest_data("nobody") == ({}, None)
    assert store.size_bytes() > 0
    assert [m.seq for m in store.recent("lobby", 2)] == [3, 4]
    assert [m.seq for m in store.recent("lobby", 10, before_seq=3)] == [1, 2]
    assert store.last_seq("lobby") == 4 and store.last_seq("nowhere") == 0


def test_append_next_numbers_a_room_without_gaps_across_writers(store):
    """Several instances: each takes the room's next seq in the transaction that stores."""
    import threading

    from chatroom.topology import open_history

    other = open_history(store.url, "") if hasattr(store, "url") else open_history("", store.path)
    try:
        def write(history, name):
            for number in range(60):
                history.append_next("lobby", lambda seq, n=number: Message(
                    username=name, content=str(n), room="lobby", source="mqtt", seq=seq))

        threads = [threading.Thread(target=write, args=(history, name))
                   for history, name in ((store, "a"), (other, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert [m.seq for m in store.recent("lobby", 500)] == list(range(1, 121))
    finally:
        other.close()


def test_dedup_lookup_finds_messages_that_carried_their_senders_id(store):
    """has_message serves the dedup check: it knows every message stored with a client_message_id."""
    store.append(Message(username="d", content="with id", room="lobby", source="mqtt", seq=1,
                         client_id="esp", client_message_id="r1", message_id="server-1"))
    assert store.has_message("server-1") and not store.has_message("server-2")


def _database_before_12_04(path: str, messages: list[Message] = ()) -> None:
    """A history file as made before 2026-12-04: message_id UNIQUE."""
    import sqlite3

    old = sqlite3.connect(path)
    old.executescript("""CREATE TABLE messages (room TEXT NOT NULL, seq INTEGER NOT NULL,
        message_id TEXT NOT NULL UNIQUE, client_id TEXT, timestamp TEXT NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (room, seq));
        CREATE INDEX messages_by_client ON messages (client_id, seq);""")
    old.executemany("INSERT INTO messages VALUES (?, ?, ?, ?, ?, ?)",
                    [(m.room, m.seq, m.message_id, m.client_id, m.timestamp, m.to_json()) for m in messages])
    old.commit()
    old.close()


def test_a_database_with_the_old_unique_message_id_is_rebuilt_once_keeping_its_rows(tmp_path):
    """Before 2026-12-04 message_id was UNIQUE (an index of random uuids on every insert)."""
    from chatroom.storage.sqlite import MessageStore

    path = str(tmp_path / "old.db")
    messages = [Message(username="d", content=f"m{seq}", room=room, source="mqtt", seq=seq, client_id="esp",
                        client_message_id=f"r{seq}" if seq == 2 else None)
                for room, seq in (("b", 1), ("a", 1), ("a", 2))]
    _database_before_12_04(path, messages)
    for _ in range(2):  # the second open finds nothing to do
        store = MessageStore(path)
        assert [m.content for m in store.recent("a", 10)] == ["m1", "m2"]
        assert store.recent_rooms(10) == ["a", "b"]  # insertion order kept
        assert store.has_message(messages[2].message_id)
        unique = [row for row in store._db.execute("PRAGMA index_list(messages)") if row[3] == "u"]
        assert unique == []
        store.close()


def test_instances_starting_together_on_an_old_database_rebuild_it_once(tmp_path, monkeypatch, caplog):
    """Two instances on one old file both see the UNIQUE index before either takes the
    write lock: the second asks again under the lock and leaves the rebuilt table alone."""
    import logging

    from chatroom.storage.sqlite import MessageStore

    path = str(tmp_path / "old.db")
    _database_before_12_04(path)
    first = MessageStore(path)  # rebuilds
    first.append(Message(username="d", content="kept", room="a", source="mqtt", seq=1))
    rowids = list(first._db.execute("SELECT rowid, seq FROM messages"))
    answers = iter([True])  # what the second one saw before the first one's rebuild

    def stale_then_real(self):
        return next(answers, None) or real(self)

    real = MessageStore._has_unique_message_id
    monkeypatch.setattr(MessageStore, "_has_unique_message_id", stale_then_real)
    with caplog.at_level(logging.INFO, logger="chatroom.storage.sqlite"):
        second = MessageStore(path)
    assert not [r for r in caplog.records if "rebuilding" in r.getMessage()]
    assert list(second._db.execute("SELECT rowid, seq FROM messages")) == rowids
    assert not second._db.in_transaction  # the lock it took is given back
    second.close()
    first.close()


def _open_store_at_the_barrier(path, barrier, results):
    from chatroom.storage.sqlite import MessageStore

    barrier.wait()
    try:
        MessageStore(path).close()
        results.put("ok")
    except Exception as exc:  # the test reports what went wrong
        results.put(f"{type(exc).__name__}: {exc}")


def test_instances_opening_a_new_database_at_the_same_moment_all_start(tmp_path):
    """make cluster starts its instances together on one new SQLite file. Switching the file
    to WAL answered "database is locked" at once (SQLite does not wait on its busy handler
    for it) to about half the instances that collided, which then exited at start."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    failures = []
    for trial in range(12):
        path = str(tmp_path / f"new-{trial}.db")
        barrier, results = context.Barrier(3), context.Queue()
        openers = [context.Process(target=_open_store_at_the_barrier, args=(path, barrier, results))
                   for _ in range(3)]
        for opener in openers:
            opener.start()
        try:
            answers = [results.get(timeout=60) for _ in openers]
        finally:
            for opener in openers:  # each stopped by its PID, whatever happened
                opener.join(30)
                if opener.is_alive():
                    opener.kill()
                    opener.join()
        failures += [answer for answer in answers if answer != "ok"]
    assert failures == []


def test_wal_checkpoints_run_on_their_own_thread_not_in_commits(tmp_path):
    """With a checkpoint thread, commits never copy the WAL into the database file (their
    fsyncs would stall the writer); the thread does, soon after."""
    import os
    import threading

    from chatroom.storage.sqlite import MessageStore
    from support import wait_for

    path = str(tmp_path / "c.db")
    store = MessageStore(path, checkpoint_threads=threading)
    assert store._db.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    empty = os.path.getsize(path)
    for seq in range(1, 2001):
        store.append(Message(username="d", content="x" * 200, room="lobby", source="mqtt", seq=seq))
    wait_for(lambda: os.path.getsize(path) > empty + 400_000, what="the WAL copied into the database file")
    store.close()
    assert MessageStore(path).last_seq("lobby") == 2000


def test_the_publish_cursor_never_checkpoints_the_history_in_its_own_commits(tmp_path):
    """Issue 26: the cursor's own SQLite connection kept SQLite's automatic checkpoint, so its
    commit past 1 000 WAL pages copied the history's WAL into the file inline (under eventlet,
    every green thread waited). Checkpoints are the history's checkpoint thread's alone."""
    import os
    import threading
    from types import SimpleNamespace

    from chatroom.storage.publish_cursor import SqlitePublishCursor
    from chatroom.storage.sqlite import MessageStore

    class NeverStarted:  # the history's checkpoint thread, held back so the WAL stays uncopied
        def __init__(self, **kwargs):
            pass

        def start(self) -> None:
            pass

        def join(self, timeout: float | None = None) -> None:
            pass

    path = str(tmp_path / "c.db")
    store = MessageStore(path, checkpoint_threads=SimpleNamespace(Event=threading.Event, Thread=NeverStarted))
    cursor = SqlitePublishCursor(path)
    try:
        cursor.load("p")
        for seq in range(1, 801):
            store.append(Message(username="d", content="x" * 1500, room="lobby", source="mqtt", seq=seq))
        assert os.path.getsize(path + "-wal") > 1000 * 4096  # past SQLite's automatic checkpoint
        before = os.path.getsize(path)
        cursor.save("p", {"lobby": 800})
        assert os.path.getsize(path) == before
        assert cursor.load("p") == {"lobby": 800}
    finally:
        cursor.close()
        store.close()


def test_both_stores_list_recent_device_message_ids_for_the_dedup_window(store):
    """What a restart rebuilds the in-process dedup window from: device messages that
    carried their own message_id, at or after a moment, oldest first — the same on both."""
    older = Message(username="d", content="old", room="lobby", source="mqtt", seq=1, client_id="esp",
                    client_message_id="r0", message_id="server-0", timestamp="2026-01-01T00:00:00.000+00:00")
    store.append(older)
    for seq, (client_message_id, client_id) in enumerate([("r1", "esp"), (None, "esp"), ("r2", None)], start=2):
        store.append(Message(username="d", content="x", room="lobby", source="mqtt", seq=seq, client_id=client_id,
                             client_message_id=client_message_id, message_id=f"server-{seq}",
                             timestamp="2026-06-01T00:00:00.000+00:00"))
    assert store.device_message_ids("2026-03-01T00:00:00.000+00:00") == [("lobby", "esp", "r1", "server-2")]


def test_a_numbered_message_is_stored_as_its_own_json_and_a_seq_in_its_data_stays(store):
    """append_next numbers and stores in one step; the stored body is the message's JSON with
    its seq, and a data key named seq (even -1) is left alone."""
    def build(seq: int) -> Message:
        return Message(username="d", content='"seq":-1', room="lobby", source="mqtt", seq=seq, client_id="esp",
                       data={"seq": -1})  # a fresh message_id each build, as the room's

    first = store.append_next("lobby", build)
    second = store.append_next("lobby", build)
    assert (first.seq, second.seq) == (1, 2)
    stored = store.recent("lobby", 10)
    assert [m.to_json() for m in stored] == [first.to_json(), second.to_json()]
    assert stored[0].data == {"seq": -1} and stored[0].content == '"seq":-1'


def _draft(room: str, name: str, n: int) -> Message:
    from chatroom.core.model import UNNUMBERED

    return Message(username=name, content=f'"seq":-1 {n}', room=room, source="mqtt", seq=UNNUMBERED,
                   client_id=name, data={"n": n, "seq": -1})


def test_a_batch_is_numbered_per_room_after_the_stored_messages_in_its_own_order(store):
    """append_numbered (group commit when the store numbers): one transaction, each room's drafts
    numbered after its newest stored seq, in the batch's order; each draft learns its seq and its
    JSON says it (the stored body too, a data key named seq left alone)."""
    store.append(Message(username="k", content="before", room="lobby", source="http", seq=5))
    drafts = [_draft(room, "d", n) for n, room in enumerate(["lobby", "attic", "lobby", "lobby", "attic"])]
    store.append_numbered(drafts)
    assert [(d.room, d.seq) for d in drafts] == [("lobby", 6), ("attic", 1), ("lobby", 7), ("lobby", 8), ("attic", 2)]
    stored = store.recent("lobby", 10)
    assert [m.seq for m in stored] == [5, 6, 7, 8]
    assert [m.to_json() for m in stored[1:]] == [d.to_json() for d in drafts if d.room == "lobby"]
    assert '"seq": 6' in stored[1].to_json() or '"seq":6' in stored[1].to_json()
    assert stored[1].data == {"n": 0, "seq": -1} and stored[1].content == '"seq":-1 0'


def test_batches_and_single_messages_of_two_writers_number_a_room_without_gaps(store):
    """Two instances commit batches into one room at once (and single messages in between): every
    message stored once, seq 1..N without a gap, each writer's own messages in its own order."""
    import threading

    from chatroom.topology import open_history

    other = open_history(store.url, "") if hasattr(store, "url") else open_history("", store.path)
    errors: list[BaseException] = []
    try:
        def write(history, name):
            try:
                for batch in range(15):
                    history.append_numbered([_draft("lobby", name, batch * 4 + i) for i in range(4)])
                    history.append_next("lobby", lambda seq, b=batch: Message(
                        username=name, content="single", room="lobby", source="mqtt", seq=seq,
                        client_id=name, data={"n": 1000 + b}))
            except BaseException as exc:  # reported below: a thread's failure must fail the test
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(history, name)) for history, name in ((store, "a"), (other, "b"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert errors == []
        stored = store.recent("lobby", 500)
        assert [m.seq for m in stored] == list(range(1, 151))
        for name in ("a", "b"):
            batched = [m.data["n"] for m in stored if m.client_id == name and m.content != "single"]
            assert batched == list(range(60))
    finally:
        other.close()


def test_a_batch_whose_commit_reply_was_lost_is_read_back_not_lost_or_stored_twice(postgres_url):
    """PostgreSQL commits a batch and the connection drops before its answer arrives (a restart
    or failover at that moment): the store reconnects, finds the batch's messages stored, and
    numbers the drafts from them; the room publishes them, loses none, stores none twice."""
    from pg_commit_cut import CommitCuttingProxy

    from chatroom.core.presence import LocalPresence
    from chatroom.core.room import Rooms

    truncate = open_history(postgres_url, "")
    truncate._fetch("TRUNCATE messages", rows=False)
    truncate.close()
    from urllib.parse import urlsplit

    parts = urlsplit(postgres_url)
    proxy = CommitCuttingProxy(parts.port or 5432)
    # sslmode=disable: the proxy reads the protocol's messages (no TLS, one untyped start-up message).
    url = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}", query="sslmode=disable").geturl()
    store = open_history(url, "")
    rooms = Rooms(store, presence=LocalPresence(numbers_rooms=False), group_commit=True)
    seen: list = []
    rooms.subscribe("test", seen.append)
    try:
        with rooms.batch():
            for number in range(3):
                rooms.post("lobby", "dev", f"m{number}", "mqtt", client_id="d1")
        proxy.cut_next_commit.set()
        rooms.flush()
        assert rooms.drain()
        assert not proxy.cut_next_commit.is_set()  # the cut happened
        assert [(m.content, m.seq) for m in seen] == [("m0", 1), ("m1", 2), ("m2", 3)]
        assert [(m.content, m.seq) for m in store.recent("lobby", 10)] == [("m0", 1), ("m1", 2), ("m2", 3)]
        assert rooms.messages_lost == 0
    finally:
        rooms.close()
        store.close()
        proxy.close()
