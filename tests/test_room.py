"""The room on its own: seq, presence, history, listeners. No transport."""
import threading

import pytest

from chatroom.core.errors import ValidationError
from chatroom.core.model import Message, SystemEvent
from chatroom.core.room import Rooms
from chatroom.core.room_types import NameClash, Outcome, PresenceChanged
from chatroom.storage.sqlite import MessageStore


@pytest.fixture
def rooms(tmp_path):
    store = MessageStore(str(tmp_path / "chat.db"))
    rooms = Rooms(store)
    yield rooms
    rooms.close()
    store.close()


def collect(rooms):
    events = []
    rooms.subscribe("test", events.append)
    return events


def test_seq_rises_by_one_per_message_per_room(rooms):
    """Each room numbers its chat messages 1, 2, 3…"""
    assert [rooms.post("lobby", "a", str(i), "web").seq for i in range(3)] == [1, 2, 3]
    assert rooms.post("kitchen", "a", "x", "web").seq == 1


def test_seq_continues_across_restart(tmp_path):
    """A new Rooms on the same database carries on from the last seq."""
    path = str(tmp_path / "chat.db")
    store = MessageStore(path)
    first = Rooms(store)
    first.post("lobby", "a", "one", "web")
    first.post("lobby", "a", "two", "web")
    first.close()
    store.close()
    store = MessageStore(path)
    again = Rooms(store)
    assert again.post("lobby", "a", "three", "web").seq == 3
    assert [m.content for m in again.history_of("lobby", 10)] == ["one", "two", "three"]
    again.close()
    store.close()


def test_join_and_leave_emit_system_events_and_presence(rooms):
    """Join and leave each give one system event and one new user list."""
    events = collect(rooms)
    rooms.join("lobby", ("web", "s1"), "Alice", "web")
    rooms.join("lobby", ("web", "s1"), "Alice", "web")  # repeat: no new event
    rooms.leave("lobby", ("web", "s1"))
    assert rooms.drain()
    kinds = [(type(e).__name__, getattr(e, "event", None)) for e in events]
    assert kinds == [("SystemEvent", "join"), ("PresenceChanged", None),
                     ("SystemEvent", "leave"), ("PresenceChanged", None)]
    assert events[1].room == "lobby" and rooms.users("lobby") == []


def test_names_are_unique_per_room_ignoring_case(rooms):
    """A second 'alice' is refused (name_taken) while 'Alice' is present, but fine elsewhere."""
    rooms.join("lobby", ("web", "s1"), "Alice", "web")
    with pytest.raises(ValidationError) as info:
        rooms.join("lobby", ("web", "s3"), "alice", "web")
    assert info.value.code == "name_taken"
    rooms.join("kitchen", ("web", "s2"), "alice", "web")


def test_a_device_with_a_held_name_is_shown_with_a_number(rooms):
    """SUFFIX: the first free `<name> (n)`; the device keeps it while it repeats its join."""
    rooms.join("lobby", ("web", "s1"), "Kitchen", "web")
    second = rooms.join("lobby", ("mqtt", "a"), "Kitchen", "mqtt", client_id="a", on_clash=NameClash.SUFFIX)
    third = rooms.join("lobby", ("mqtt", "b"), "kitchen", "mqtt", client_id="b", on_clash=NameClash.SUFFIX)
    assert (second.user.username, third.user.username) == ("Kitchen (2)", "kitchen (3)")
    again = rooms.join("lobby", ("mqtt", "a"), "Kitchen", "mqtt", client_id="a", on_clash=NameClash.SUFFIX)
    assert again.outcome == Outcome.UNCHANGED and again.user.username == "Kitchen (2)"


def test_rooms_are_bounded_in_members(tmp_path):
    """MAX_ROOM_MEMBERS: one more join is room_full; a present member's rename is not."""
    store = MessageStore(":memory:")
    small = Rooms(store, max_members=2)
    small.join("lobby", ("web", "1"), "a", "web")
    small.join("lobby", ("web", "2"), "b", "web")
    with pytest.raises(ValidationError) as info:
        small.join("lobby", ("web", "3"), "c", "web")
    assert info.value.code == "room_full"
    assert small.join("lobby", ("web", "2"), "bee", "web").outcome == Outcome.RENAMED
    small.close()


def test_listeners_see_events_in_seq_order_even_from_many_threads(rooms):
    """Concurrent posters: every listener still receives seq 1..N in order."""
    events = collect(rooms)

    def poster(n):
        for i in range(50):
            rooms.post("lobby", f"u{n}", str(i), "web")

    threads = [threading.Thread(target=poster, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rooms.drain()
    assert [e.seq for e in events if isinstance(e, Message)] == list(range(1, 201))


def test_failing_listener_does_not_stop_others(rooms):
    """An exception in one listener is counted; the others still get every event."""
    def broken(event):
        raise RuntimeError("boom")

    rooms.subscribe("broken", broken)
    events = collect(rooms)
    rooms.post("lobby", "a", "one", "web")
    rooms.post("lobby", "a", "two", "web")
    assert rooms.drain()
    assert [e.content for e in events] == ["one", "two"]
    assert rooms.listener_failures == 2


def test_slow_listener_does_not_delay_others(rooms):
    """A blocked listener holds only its own queue."""
    release = threading.Event()
    rooms.subscribe("slow", lambda event: release.wait(30))
    got = threading.Event()
    rooms.subscribe("fast", lambda event: got.set())
    rooms.post("lobby", "a", "x", "web")
    assert got.wait(10), "fast listener waited for the slow one"
    release.set()


def test_history_pages_with_before_seq(rooms):
    """The newest `limit` before `before_seq`, oldest first."""
    for i in range(1, 11):
        rooms.post("lobby", "a", str(i), "web")
    assert [m.seq for m in rooms.history_of("lobby", 3)] == [8, 9, 10]
    assert [m.seq for m in rooms.history_of("lobby", 3, before_seq=5)] == [2, 3, 4]


def test_announce_is_not_a_chat_message(rooms):
    """System events have no seq and are not stored."""
    events = collect(rooms)
    rooms.announce("lobby", "bridge_online", "back")
    assert rooms.drain()
    assert isinstance(events[0], SystemEvent) and rooms.history_of("lobby", 10) == []


def test_presence_changed_lists_sources(rooms):
    """The user list tells where each user is from."""
    events = collect(rooms)
    rooms.join("lobby", ("mqtt", "esp"), "Kitchen", "mqtt", client_id="esp")
    assert rooms.drain()
    assert [e.room for e in events if isinstance(e, PresenceChanged)] == ["lobby"]
    users = rooms.users("lobby")
    assert users == [{"username": "Kitchen", "source": "mqtt", "client_id": "esp",
                      "join_time": users[0]["join_time"]}]


def test_empty_rooms_are_forgotten_and_seq_continues(rooms):
    """No members: the room's state goes (strangers cannot grow it); its seq comes back from history."""
    rooms.join("kitchen", ("web", "s1"), "Alice", "web")
    rooms.post("kitchen", "Alice", "one", "web")
    rooms.leave("kitchen", ("web", "s1"))
    rooms.post("attic", "cron", "into an empty room", "http")
    assert rooms.summary()["rooms"] == 0 and rooms.posted_per_room() == {}
    assert rooms.summary()["messages_total"] == 2
    assert rooms.post("kitchen", "cron", "two", "http").seq == 2


def test_rooms_in_use_are_bounded(tmp_path):
    """MAX_ROOMS: a join that would open one more room is room_full and leaves nothing behind."""
    small = Rooms(MessageStore(":memory:"), max_rooms=2)
    small.join("a", ("web", "1"), "x", "web")
    small.join("b", ("web", "2"), "y", "web")
    with pytest.raises(ValidationError) as info:
        small.join("c", ("web", "3"), "z", "web")
    assert info.value.code == "room_full" and small.summary()["rooms"] == 2
    small.join("a", ("web", "3"), "z", "web")  # an existing room still takes members
    small.close()


def test_listener_can_ask_for_some_event_types_only(rooms):
    """A listener subscribed to Message events never sees presence or system events."""
    messages_only = []
    rooms.subscribe("messages-only", messages_only.append, events=(Message,))
    rooms.join("lobby", ("web", "s1"), "Alice", "web")
    rooms.post("lobby", "Alice", "hi", "web")
    rooms.announce("lobby", "bridge_online", "back")
    assert rooms.drain()
    assert [type(e).__name__ for e in messages_only] == ["Message"]


def test_per_room_counts_stay_bounded_by_posts_to_rooms_nobody_is_in(tmp_path):
    """PROTOCOL 9: strangers choose room names (HTTP posts need no membership); the per-room
    message counts behind /metrics keep only rooms with members, however many are posted to."""
    rooms = Rooms(MessageStore(str(tmp_path / "c.db")), max_rooms=3)
    rooms.join("kept", ("web", "s1"), "Ana", "web")
    for number in range(50):
        rooms.post(f"room{number}", "op", "hi", "http")
    rooms.post("kept", "Ana", "hi", "web")
    assert len(rooms._posted) <= 4  # the counts table itself, not only what /metrics shows
    assert rooms.posted_per_room() == {"kept": 1}
    rooms.close()


# --- group commit -------------------------------------------------------------------

@pytest.fixture
def batching(tmp_path):
    store = MessageStore(str(tmp_path / "chat.db"))
    rooms = Rooms(store, group_commit=True)
    yield rooms, str(tmp_path / "chat.db")
    rooms.close()
    store.close()


def committed_contents(path, room="lobby"):
    """What another connection (another process) sees: only committed rows."""
    other = MessageStore(path)
    try:
        return [m.content for m in other.recent(room, 100)]
    finally:
        other.close()


def test_a_batch_is_neither_published_nor_committed_before_flush(batching):
    """Posts in `batch()` wait in one transaction; `flush` commits, then publishes them in order."""
    rooms, path = batching
    events = collect(rooms)
    with rooms.batch():
        for i in range(3):
            rooms.post("lobby", "dev", f"m{i}", "mqtt")
    assert rooms.pending_events == 3 and committed_contents(path) == []
    rooms.flush()
    assert rooms.pending_events == 0
    assert committed_contents(path) == ["m0", "m1", "m2"]
    assert rooms.drain()
    assert [(e.content, e.seq) for e in events] == [("m0", 1), ("m1", 2), ("m2", 3)]


def test_another_thread_posting_during_a_batch_lands_after_it(batching):
    """A web post while an MQTT batch is open commits and publishes the batch first: one order."""
    rooms, path = batching
    events = collect(rooms)
    with rooms.batch():
        rooms.join("lobby", ("mqtt", "d"), "dev", "mqtt", client_id="d")
        rooms.post("lobby", "dev", "from the device", "mqtt")
    web = threading.Thread(target=lambda: rooms.post("lobby", "Alice", "from the web", "web"))
    web.start()
    web.join(10)
    assert committed_contents(path) == ["from the device", "from the web"]
    assert rooms.drain()
    assert [getattr(e, "content", getattr(e, "event", None)) for e in events if not isinstance(e, PresenceChanged)] \
        == ["join", "from the device", "from the web"]
    assert [e.seq for e in events if isinstance(e, Message)] == [1, 2]


def test_history_shows_an_open_batch_only_once_committed(batching):
    rooms, path = batching
    events = collect(rooms)
    with rooms.batch():
        rooms.post("lobby", "dev", "reading", "mqtt")
    assert [m.content for m in rooms.history_of("lobby", 10)] == ["reading"]
    assert committed_contents(path) == ["reading"]
    assert rooms.drain() and [e.content for e in events] == ["reading"]


def test_a_failed_commit_publishes_none_of_the_batch_and_counts_it(batching, monkeypatch):
    """Not stored, so not published (the system events still are); the loss is counted."""
    rooms, path = batching
    events = collect(rooms)
    with rooms.batch():
        rooms.join("lobby", ("mqtt", "d"), "dev", "mqtt", client_id="d")
        rooms.post("lobby", "dev", "one", "mqtt")
        rooms.post("lobby", "dev", "two", "mqtt")

    def full_disk():
        rooms.history._db.execute("ROLLBACK")  # what SQLite does on SQLITE_FULL
        raise __import__("sqlite3").OperationalError("database or disk is full")
    monkeypatch.setattr(rooms.history, "commit_batch", full_disk)
    rooms.flush()
    monkeypatch.undo()
    assert rooms.drain()
    assert rooms.messages_lost == 2
    assert [type(e).__name__ for e in events] == ["SystemEvent", "PresenceChanged"]
    assert committed_contents(path) == []
    assert rooms.post("lobby", "Alice", "after", "web").content == "after"  # the store still works
    assert committed_contents(path) == ["after"]


def test_without_group_commit_a_batch_changes_nothing(rooms):
    events = collect(rooms)
    with rooms.batch():
        rooms.post("lobby", "dev", "at once", "mqtt")
    assert rooms.pending_events == 0
    assert rooms.drain() and [e.content for e in events] == ["at once"]


# --- fair shares (PROTOCOL 9) -------------------------------------------------------------

def test_a_person_joining_a_room_full_of_devices_takes_the_longest_silent_ones_place(tmp_path):
    """Finding 4 of the trust review: strangers' device ids filled the lobby and a person got
    room_full. Now the longest-silent device leaves (with its leave event) to make room."""
    clock = [0.0]
    small = Rooms(MessageStore(":memory:"), max_members=3, clock=lambda: clock[0])
    events = collect(small)
    for number in range(3):
        clock[0] += 1
        small.join("lobby", ("mqtt", f"d{number}"), f"dev{number}", "mqtt", client_id=f"d{number}")
    clock[0] += 1
    small.join("lobby", ("mqtt", "d0"), "dev0", "mqtt", client_id="d0")  # d0 alive again: d1 is the quietest
    small.join("lobby", ("web", "s1"), "Alice", "web")
    assert small.drain()
    assert sorted(u["username"] for u in small.users("lobby")) == ["Alice", "dev0", "dev2"]
    leaves = [e for e in events if isinstance(e, SystemEvent) and e.event == "leave"]
    assert [(e.username, e.client_id) for e in leaves] == [("dev1", "d1")]
    small.join("lobby", ("mqtt", "d9"), "dev9", "mqtt", client_id="d9")  # a device gets in the same way
    assert sorted(u["username"] for u in small.users("lobby")) == ["Alice", "dev0", "dev9"]
    assert small.evictions == 2
    small.close()


def test_a_room_full_of_people_still_refuses(tmp_path):
    small = Rooms(MessageStore(":memory:"), max_members=2)
    small.join("lobby", ("web", "1"), "a", "web")
    small.join("lobby", ("web", "2"), "b", "web")
    for key, source in ((("web", "3"), "web"), (("mqtt", "d"), "mqtt")):
        with pytest.raises(ValidationError) as info:
            small.join("lobby", key, "c", source, client_id="d" if source == "mqtt" else None)
        assert info.value.code == "room_full"
    small.close()


def test_a_full_room_table_frees_the_quietest_room_of_devices_only(tmp_path):
    """Finding 4: 1 000 device joins to new rooms made every new room room_full. Now the room
    whose devices were heard from longest ago is emptied for a newcomer; rooms with a person stay."""
    clock = [0.0]
    small = Rooms(MessageStore(":memory:"), max_rooms=3, clock=lambda: clock[0])
    events = collect(small)
    small.join("people", ("web", "s1"), "Ana", "web")
    clock[0] += 1
    small.join("r1", ("mqtt", "a"), "a", "mqtt", client_id="a")
    small.join("r1", ("mqtt", "b"), "b", "mqtt", client_id="b")
    clock[0] += 1
    small.join("r2", ("mqtt", "c"), "c", "mqtt", client_id="c")
    clock[0] += 1
    small.join("r1", ("mqtt", "b"), "b", "mqtt", client_id="b")  # r1 heard from last: r2 is the quietest
    small.join("new", ("web", "s2"), "Bo", "web")
    assert sorted(small.rooms_with_members()) == ["new", "people", "r1"]
    assert small.drain()
    assert [(e.room, e.username) for e in events if isinstance(e, SystemEvent) and e.event == "leave"] == [("r2", "c")]
    small.join("r9", ("mqtt", "z"), "z", "mqtt", client_id="z")  # r1 (devices only) gives way to a device too
    assert sorted(small.rooms_with_members()) == ["new", "people", "r9"]
    with pytest.raises(ValidationError) as info:  # only rooms with people left: room_full
        small.join("r10", ("web", "s3"), "Cy", "web")
        small.join("r11", ("web", "s4"), "Di", "web")
    assert info.value.code == "room_full"
    small.close()


def test_the_room_freed_first_is_the_one_with_the_fewest_devices(tmp_path):
    """Review of issue 21: one stranger's join emptied a real room of 15 sensors that had been
    quiet a little longer than the stranger's one-device rooms."""
    clock = [0.0]
    small = Rooms(MessageStore(":memory:"), max_rooms=3, clock=lambda: clock[0])
    for number in range(5):
        small.join("garage", ("mqtt", f"g{number}"), f"g{number}", "mqtt", client_id=f"g{number}")
    clock[0] += 1
    small.join("s1", ("mqtt", "s1"), "s1", "mqtt", client_id="s1")
    small.join("s2", ("mqtt", "s2"), "s2", "mqtt", client_id="s2")
    small.join("s3", ("mqtt", "s3"), "s3", "mqtt", client_id="s3")
    assert sorted(small.rooms_with_members()) == ["garage", "s2", "s3"]
    small.close()


def test_failed_commits_add_up_and_an_empty_flush_commits_nothing(batching, monkeypatch):
    """messages_lost counts every failed batch's messages; a flush with no batch open touches
    the store not at all (it runs before every post of another thread)."""
    rooms, _ = batching
    commits = []

    def full_disk():
        commits.append("failed")
        rooms.history._db.execute("ROLLBACK")
        rooms.history._batch_open = False  # as the store's own commit_batch leaves it
        raise __import__("sqlite3").OperationalError("database or disk is full")
    monkeypatch.setattr(rooms.history, "commit_batch", full_disk)
    for texts in (("one", "two"), ("three",)):
        with rooms.batch():
            for text in texts:
                rooms.post("lobby", "dev", text, "mqtt")
        rooms.flush()
    assert rooms.messages_lost == 3 and commits == ["failed", "failed"]
    rooms.flush()
    rooms.flush()
    assert commits == ["failed", "failed"]


def test_a_batch_the_store_numbers_survives_the_store_being_away_and_is_published_once(tmp_path):
    """When the store numbers the rooms (PostgreSQL, several instances), a batch's messages wait as
    drafts and are stored and numbered in one go at flush. A store that is away keeps the whole
    batch (drafts and their events) for the next flush: nothing lost, nothing published twice,
    nothing published before it is stored."""
    from chatroom.core.errors import Unavailable
    from chatroom.core.presence import LocalPresence
    from chatroom.storage.sqlite import MessageStore

    class AwayOnce(MessageStore):
        away = 2

        def append_numbered(self, drafts):
            if self.away:
                self.away -= 1
                raise Unavailable("PostgreSQL", "connection refused")
            super().append_numbered(drafts)

    store = AwayOnce(str(tmp_path / "h.db"))
    rooms = Rooms(store, presence=LocalPresence(numbers_rooms=False), group_commit=True)
    seen: list = []
    rooms.subscribe("test", seen.append)
    with rooms.batch():
        for text in ("a", "b", "c"):
            rooms.post("lobby", "esp", text, "mqtt")
    with pytest.raises(Unavailable):
        rooms.flush()
    assert rooms.bus.drain(5) and seen == [] and store.last_seq("lobby") == 0  # (drain would flush)
    # Meanwhile a web user joins (another thread, its flush refused too): the join happened, so its
    # event waits behind the held batch instead of being lost.
    rooms.join("lobby", ("web", "sid-1"), "Ana", "web")
    assert rooms.member("lobby", ("web", "sid-1")) is not None and seen == []
    rooms.flush()
    assert rooms.drain()
    assert [(m.content, m.seq) for m in seen if isinstance(m, Message)] == [("a", 1), ("b", 2), ("c", 3)]
    joins = [e for e in seen if isinstance(e, SystemEvent) and e.event == "join"]
    assert [e.username for e in joins] == ["Ana"] and seen.index(joins[0]) > 2
    assert [(m.content, m.seq) for m in store.recent("lobby", 10)] == [("a", 1), ("b", 2), ("c", 3)]
    rooms.post("lobby", "web", "after", "web")  # outside the batch: numbered by the store at once
    assert rooms.drain() and [m.seq for m in seen if isinstance(m, Message)] == [1, 2, 3, 4]
    rooms.close()
    store.close()
