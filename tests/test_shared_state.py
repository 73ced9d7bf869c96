"""Room state in Redis (PROTOCOL 8): two instances, built in one process on one real
redis-server and one history file, behave as one room."""
from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import pytest

from chatroom.core.errors import Unavailable, ValidationError
from chatroom.core.intake import Intake
from chatroom.core.limits import RateLimiter
from chatroom.core.model import Message, SystemEvent
from chatroom.core.names import NameRules, name_key
from chatroom.core.room import Rooms
from chatroom.core.submission import Outcome, Source, Submission
from chatroom.ops.housekeeping import InstanceWatch
from chatroom.storage.redis_coordination import SharedState
from chatroom.storage.sqlite import MessageStore
from support import wait_for


class Instance:
    def __init__(self, redis_url: str, prefix: str, db_path: str, name: str, ttl: int = 2):
        self.shared = SharedState(redis_url, prefix, name, ttl, dedup_seconds=600)
        self.store = MessageStore(db_path)
        self.rooms = Rooms(self.store, name_key=name_key, presence=self.shared.presence, clock=time.time)
        self.events: list = []
        self.rooms.subscribe("test", self.events.append)
        self.intake = Intake(self.rooms, NameRules(), RateLimiter(0, 1), self.shared.dedup, 2000,
                             locks=self.shared.locks)
        self.watch = InstanceWatch(self.rooms, self.shared.registry)

    def system(self, kind: str) -> list[SystemEvent]:
        self.rooms.drain()
        return [e for e in self.events if isinstance(e, SystemEvent) and e.event == kind]

    def messages(self) -> list[Message]:
        self.rooms.drain()
        return [e for e in self.events if isinstance(e, Message)]

    def close(self) -> None:
        self.rooms.close()
        self.store.close()
        self.shared.close()


@pytest.fixture
def pair(redis_server, tmp_path):
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    db = str(tmp_path / "shared.db")
    a = Instance(redis_server.url, prefix, db, "a")
    b = Instance(redis_server.url, prefix, db, "b")
    yield a, b
    a.close()
    b.close()


def test_a_name_held_on_one_instance_is_refused_on_the_other(pair):
    a, b = pair
    a.intake.join(Submission(Source.WEB, room="lobby", username="Ana", connection="sid-a"))
    with pytest.raises(ValidationError) as refused:
        b.intake.join(Submission(Source.WEB, room="lobby", username="ANA", connection="sid-b"))
    assert refused.value.code == "name_taken"
    # A device asking for it is shown with a suffix, whichever instance hears it.
    device = b.intake.join(Submission(Source.MQTT, room="lobby", username="Ana", client_id="esp-1"))
    assert device.user.username == "Ana (2)"
    assert sorted(u["username"] for u in a.rooms.users("lobby")) == ["Ana", "Ana (2)"]
    assert a.rooms.users("lobby") == b.rooms.users("lobby")


@pytest.mark.parametrize("with_ids", [True, False], ids=["message_id", "no_message_id"])
def test_seq_is_gap_free_and_a_device_joins_once_across_instances(pair, with_ids):
    """Both instances take messages of one device at once: one join, seq 1..N, each stored once.
    Without a message_id a present device posts without the room lock: the same holds."""
    a, b = pair
    count = 200

    def send(instance: Instance, start: int) -> None:
        for number in range(start, count, 2):
            instance.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text=f"m{number}",
                                            message_id=f"id-{number}" if with_ids else None))

    threads = [threading.Thread(target=send, args=(a, 0)), threading.Thread(target=send, args=(b, 1))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(a.system("join")) + len(b.system("join")) == 1
    seqs = sorted(m.seq for m in a.messages() + b.messages())
    assert seqs == list(range(1, count + 1))
    stored = a.store.recent("lobby", 1000)
    assert [m.seq for m in stored] == list(range(1, count + 1))
    assert Counter(m.content for m in stored) == Counter(f"m{n}" for n in range(count))
    member = a.rooms.member("lobby", (Source.MQTT, "esp-1"))
    assert member.message_count == count
    # A new name still goes through the lock: renamed once, wherever it arrives.
    b.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", username="Kitchen", text="renamed"))
    assert [e.username for e in a.system("rename") + b.system("rename")] == ["Kitchen"]


def test_a_retry_through_the_other_instance_is_a_duplicate(pair):
    a, b = pair
    first = a.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text="t=21", message_id="r-1"))
    again = b.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text="t=21", message_id="r-1"))
    assert again.outcome == Outcome.DUPLICATE and again.message_id == first.message_id
    assert len(a.store.recent("lobby", 10)) == 1


def test_a_member_leaves_once_when_both_instances_remove_it(pair):
    a, b = pair
    a.intake.join(Submission(Source.MQTT, room="lobby", username="Kitchen", client_id="esp-1"))
    gone = [a.rooms.leave("lobby", (Source.MQTT, "esp-1")), b.rooms.leave("lobby", (Source.MQTT, "esp-1"))]
    assert sum(user is not None for user in gone) == 1
    assert len(a.system("leave")) + len(b.system("leave")) == 1
    assert a.rooms.rooms_with_members() == []  # an empty room is forgotten


def test_silent_devices_expire_on_wall_clock_whichever_instance_checks(pair):
    a, b = pair
    a.intake.join(Submission(Source.MQTT, room="lobby", username="Kitchen", client_id="esp-1"))
    assert [u.client_id for u in b.rooms.expire_silent("mqtt", time.time() + 1)] == ["esp-1"]
    assert a.rooms.members() == []


def test_web_members_of_a_dead_instance_leave_within_the_ttl(pair):
    """An instance that stops beating (killed) leaves no ghosts: a survivor makes its web users leave."""
    a, b = pair
    a.watch.start()
    b.watch.start()
    a.intake.join(Submission(Source.WEB, room="lobby", username="Ana", connection="sid-a"))
    b.intake.join(Submission(Source.WEB, room="lobby", username="Bo", connection="sid-b"))
    a.watch._stop.set()  # a's thread stops beating, as if the process died: no clean-up runs
    wait_for(lambda: [u["username"] for u in b.rooms.users("lobby")] == ["Bo"], timeout=30,
             what="Ana's entry to go when a's heartbeat expired")
    assert [e.username for e in b.system("leave")] == ["Ana"]
    b.watch.stop()  # a clean stop: b's own web users leave at once
    assert b.rooms.users("lobby") == []


def test_a_restarted_instance_drops_the_web_members_of_its_previous_life(pair, redis_server, tmp_path):
    a, b = pair
    a.intake.join(Submission(Source.WEB, room="lobby", username="Ana", connection="sid-old"))
    again = Instance(redis_server.url, a.shared.presence.prefix, str(tmp_path / "shared.db"), "a")
    try:
        again.watch.start()
        assert b.rooms.users("lobby") == []
    finally:
        again.watch._stop.set()
        again.close()


def _present(instance: Instance, client_id: str, requested: str | None = None):
    return instance.rooms.touch_present("lobby", (Source.MQTT, client_id), requested)


def test_a_device_left_or_renamed_on_one_instance_is_no_longer_present_on_the_others_cache(pair):
    """Each instance answers "is this device present" from its own cache (no Redis round trip per
    message); a leave or a rename on another instance reaches that cache through Redis, so the
    device's next message there joins or renames through the locked path instead."""
    a, b = pair
    for text in ("hello", "joined already: read from Redis once, then cached"):
        a.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text=text))
    wait_for(lambda: a.shared.presence.cache.get("lobby", '["mqtt", "esp-1"]') is not None, timeout=10,
             what="the device cached on a")
    assert _present(a, "esp-1") is not None
    b.intake.leave(Submission(Source.MQTT, room="lobby", client_id="esp-1"))
    wait_for(lambda: _present(a, "esp-1") is None, timeout=10, what="a hears of the leave")
    a.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text="back"))
    assert len(a.system("join")) + len(b.system("join")) == 2  # joined again, through the lock
    wait_for(lambda: _present(a, "esp-1") is not None, timeout=10, what="cached again")
    b.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", username="Kitchen", text="renamed"))
    wait_for(lambda: _present(a, "esp-1", "esp-1") is None, timeout=10, what="a hears of the rename")
    assert _present(a, "esp-1", "Kitchen").username == "Kitchen"


def test_a_batch_writes_its_senders_liveness_and_counts_in_one_go(redis_server, tmp_path):
    """With group commit, present devices' messages leave their touches pending; a batch's commit
    writes them all in one call (message counts exact, last seen the newest), at most once a
    second, and a touch no later batch writes is written anyway."""
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    shared = SharedState(redis_server.url, prefix, "a", 2, dedup_seconds=600)
    store = MessageStore(str(tmp_path / "h.db"))
    rooms = Rooms(store, name_key=name_key, presence=shared.presence, clock=time.time, group_commit=True)
    intake = Intake(rooms, NameRules(), RateLimiter(0, 1), shared.dedup, 2000, locks=shared.locks)
    try:
        for text in ("first", "second"):  # a join, then a present device read once from Redis
            intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text=text))
        wait_for(lambda: shared.presence.cache.get("lobby", '["mqtt", "esp-1"]') is not None, timeout=10,
                 what="the device cached")
        with rooms.batch():
            for number in range(50):
                intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text=f"m{number}"))
        assert store.last_seq("lobby") == 2  # drafts wait for the commit
        assert shared.presence.member("lobby", (Source.MQTT, "esp-1")).message_count == 2
        rooms.flush()
        assert [m.seq for m in store.recent("lobby", 100)] == list(range(1, 53))
        # Written with a batch at most once a second; what is left, by the cache's own thread.
        wait_for(lambda: shared.presence.member("lobby", (Source.MQTT, "esp-1")).message_count == 52,
                 timeout=10, what="the batch's touches written")
        with rooms.batch():
            intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text="one more"))
        rooms.flush()
        wait_for(lambda: shared.presence.member("lobby", (Source.MQTT, "esp-1")).message_count == 53,
                 timeout=10, what="a late touch written without another batch")
    finally:
        rooms.close()
        store.close()
        shared.close()


def test_the_cache_is_off_while_redis_is_away_and_starts_empty_when_it_is_back(tmp_path):
    """A lost subscription could have missed a leave: nothing is believed until it is back."""
    from support import RedisServer

    server = RedisServer(tmp_path / "redis").start()
    instance = Instance(server.url, f"test:{uuid.uuid4().hex[:8]}:", str(tmp_path / "h.db"), "a")
    try:
        for text in ("hello", "again"):
            instance.intake.post(Submission(Source.MQTT, room="lobby", client_id="esp-1", text=text))
        cache = instance.shared.presence.cache
        wait_for(lambda: cache.get("lobby", '["mqtt", "esp-1"]') is not None, timeout=10, what="cached")
        server.stop()
        wait_for(lambda: cache.get("lobby", '["mqtt", "esp-1"]') is None, timeout=15, what="cache off")
        server.start()  # the same port, empty: the member is gone, and no cache may say otherwise

        def answer():
            try:
                return _present(instance, "esp-1") is None
            except Unavailable:  # still reconnecting
                return False

        wait_for(answer, timeout=20, what="Redis back, the device not present")
    finally:
        instance.close()
        server.stop()


def _device_message(number: int, text: str | None = None) -> Submission:
    return Submission(Source.MQTT, room="lobby", client_id="esp-1", text=text or f"m{number}",
                      message_id=f"id-{number}")


def test_the_same_messages_through_both_instances_at_once_are_stored_once(pair):
    """A redelivery storm: every message arrives on both instances at the same time. The present
    device's path takes no room lock; the message_id's claim in the dedup window decides."""
    a, b = pair
    for instance in (a, b):  # alive, as their InstanceWatch says from start-up on
        instance.shared.registry.ttl = 60
        instance.shared.registry.beat()
    a.intake.post(_device_message(-1, "joins"))  # present from here on
    count = 100
    answers: dict[str, list] = {"a": [], "b": []}

    def send(instance: Instance, name: str) -> None:
        for number in range(count):
            answers[name].append(instance.intake.post(_device_message(number)).outcome)

    threads = [threading.Thread(target=send, args=(a, "a")), threading.Thread(target=send, args=(b, "b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    stored = a.store.recent("lobby", 1000)
    assert Counter(m.content for m in stored) == Counter(["joins"] + [f"m{n}" for n in range(count)])
    assert [m.seq for m in stored] == list(range(1, count + 2))
    outcomes = Counter(answers["a"] + answers["b"])
    assert outcomes == {Outcome.POSTED: count, Outcome.DUPLICATE: count}


def test_a_copy_waits_while_another_live_instance_stores_the_first_then_is_a_duplicate(redis_server, tmp_path):
    """Instance b holds the first copy in its open batch (claimed, not yet stored); the copy
    reaching a waits for it instead of storing a second, and is a duplicate once b commits."""
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    db = str(tmp_path / "shared.db")
    a, b = Instance(redis_server.url, prefix, db, "a"), Instance(redis_server.url, prefix, db, "b")
    b.rooms.group_commit = True  # b batches as the bridge does
    try:
        b.shared.registry.ttl = 60
        b.shared.registry.beat()
        for instance in (a, b):
            instance.intake.post(_device_message(-2, "joins"))
        with b.rooms.batch():
            first = b.intake.post(_device_message(1))
        assert first.outcome == Outcome.POSTED and b.store.last_seq("lobby") == 1  # a draft in b's batch
        answer: list = []
        copy = threading.Thread(target=lambda: answer.append(a.intake.post(_device_message(1))))
        copy.start()
        copy.join(0.3)
        assert copy.is_alive() and answer == []  # waiting for b (a live instance holds the claim)
        b.rooms.flush()
        copy.join(30)
        assert answer[0].outcome == Outcome.DUPLICATE and answer[0].message_id == first.message_id
        assert [m.content for m in a.store.recent("lobby", 10)] == ["joins", "m1"]
    finally:
        a.close()
        b.close()


def test_a_claim_left_by_a_dead_instance_is_taken_over_by_the_retry(pair):
    """The instance that claimed a message died before storing it (no heartbeat): the redelivery
    reaching another instance is the message's only copy, and is stored."""
    a, b = pair
    a.intake.post(_device_message(-1, "joins"))
    key = a.intake._dedup_key(_device_message(7), "lobby", "esp-1")
    a.shared.client.set(a.shared.dedup._name(key), f"lost-id|ghost|{time.time():.3f}")
    again = a.intake.post(_device_message(7))
    assert again.outcome == Outcome.POSTED and again.message_id != "lost-id"
    assert [m.content for m in a.store.recent("lobby", 10)] == ["joins", "m7"]
    assert b.intake.post(_device_message(7)).outcome == Outcome.DUPLICATE
