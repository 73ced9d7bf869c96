"""The one intake on its own: every accept rule, in order, with no broker and no web server.

PROTOCOL section 2 ("Members, names and identity") and section 1's rule that a
rejected input leaves no trace.
"""
import pytest

from chatroom.core.errors import ValidationError
from chatroom.core.intake import Intake
from chatroom.core.limits import DedupWindow, RateLimiter
from chatroom.core.model import Message, SystemEvent
from chatroom.core.names import NameRules, name_key
from chatroom.core.room import Rooms
from chatroom.core.room_types import PresenceChanged
from chatroom.core.submission import Outcome, Source, Submission
from chatroom.ops.housekeeping import DeviceTimeout
from chatroom.storage.sqlite import MessageStore


@pytest.fixture
def world(clock):
    """A room, its event log and an intake with 20/10 rate limit on a fake clock."""
    store = MessageStore(":memory:")
    rooms = Rooms(store, name_key=name_key, clock=clock)
    events = []
    rooms.subscribe("test", events.append)
    intake = Intake(rooms, NameRules(reserved=("AI",)), RateLimiter(20, 10, now=clock),
                    DedupWindow(ttl=600, now=clock), max_message_chars=2000)

    class World:
        pass

    w = World()
    w.rooms, w.intake, w.events, w.clock = rooms, intake, events, clock

    def settled():
        assert rooms.drain()
        return events
    w.settled = settled
    yield w
    rooms.close()
    store.close()


def device(client_id="esp32-1", message="hi", **fields):
    return Submission(Source.MQTT, client_id=client_id, text=message, **fields)


def web_join(sid, name, room=None, page_id=None):
    return Submission(Source.WEB, room=room, username=name, connection=sid, client_id=page_id)


def code_of(call):
    with pytest.raises(ValidationError) as info:
        call()
    return info.value.code


def system(events, kind=None):
    return [e for e in events if isinstance(e, SystemEvent) and (kind is None or e.event == kind)]


def chat(events):
    return [e for e in events if isinstance(e, Message)]


# --- validation -----------------------------------------------------------------

@pytest.mark.parametrize("fields, code", [
    ({"client_id": None}, "missing_field"),
    ({"client_id": ""}, "bad_field"),
    ({"client_id": "x" * 65}, "bad_field"),
    ({"client_id": "tab\there"}, "bad_field"),
    ({"client_id": "new\nline"}, "bad_field"),
    ({"client_id": 5}, "bad_field"),
    ({"message": None}, "missing_field"),
    ({"message": "   "}, "missing_field"),
    ({"message": 42}, "bad_field"),
    ({"message": "x" * 2001}, "too_long"),
    ({"username": "AI"}, "bad_name"),
    ({"username": "System"}, "bad_name"),
    ({"username": "x" * 33}, "bad_name"),
    ({"username": 7}, "bad_name"),
    ({"data": [1]}, "bad_field"),
    ({"data": {"nested": {"a": 1}}}, "bad_field"),
    ({"data": {f"k{i}": i for i in range(33)}}, "bad_field"),
    ({"data": {"big": "x" * 1100}}, "bad_field"),
    ({"message_id": {"a": 1}}, "bad_field"),
    ({"message_id": True}, "bad_field"),
    ({"room": "kitchen\n"}, "bad_field"),
])
def test_bad_device_messages_get_the_protocol_code(world, fields, code):
    """Each kind of bad field maps to its PROTOCOL error code, and nothing is posted."""
    base = {"client_id": "esp32-1", "message": "hi"}
    base.update(fields)
    sub = Submission(Source.MQTT, client_id=base.pop("client_id"), text=base.pop("message"), **base)
    assert code_of(lambda: world.intake.post(sub)) == code
    assert chat(world.settled()) == [] and world.rooms.users("lobby") == []


def test_a_rejection_names_the_device_when_its_client_id_was_valid(world):
    with pytest.raises(ValidationError) as info:
        world.intake.post(device(message=""))
    assert info.value.client_id == "esp32-1"


# --- names ----------------------------------------------------------------------

@pytest.mark.parametrize("lookalike", ["Аlice", "ＡＬＩＣＥ", "Alice\u3164", "alice", "ALICE", "A\u200blice",
                                       "Alice "])
def test_look_alike_names_are_the_same_name(world, lookalike):
    """NFKC + case folding + the UTS #39 skeleton: a person cannot pass as Alice."""
    world.intake.join(web_join("s1", "Alice"))
    assert code_of(lambda: world.intake.join(web_join("s2", lookalike))) == "name_taken"
    assert code_of(lambda: world.intake.post(Submission(Source.HTTP, username=lookalike, text="hi",
                                                        address="10.0.0.1"))) == "name_taken"


@pytest.mark.parametrize("blank", ["\u3164", "\u200b", "   ", "\u200b\u200d", "\u2800", "ab\x07c", "Bob\u202e",
                                   "", "АI", "ѕystem"])
def test_blank_control_and_reserved_names_are_bad_names(world, blank):
    assert code_of(lambda: world.intake.join(web_join("s1", blank))) == "bad_name"


def test_a_fleet_of_identical_devices_all_get_through(world):
    """The original sketch hard-codes one name: every device relays, shown as `<name> (n)`."""
    for number in range(1, 4):
        accepted = world.intake.post(device(f"esp32-{number}", "23.5 °C", username="温度传感器"))
        assert accepted.outcome == Outcome.POSTED
    names = [m.username for m in chat(world.settled())]
    assert names == ["温度传感器", "温度传感器 (2)", "温度传感器 (3)"]
    joins = [e.username for e in system(world.events, "join")]
    assert joins == names


def test_a_device_never_locks_a_person_out_of_a_name_it_does_not_hold(world):
    """A device named Bob shows as `Bob (2)` next to web user Bob, who keeps the plain name."""
    world.intake.join(web_join("s1", "Bob"))
    assert world.intake.join(Submission(Source.MQTT, client_id="dev", username="Bob")).user.username == "Bob (2)"
    world.intake.leave(Submission(Source.WEB, connection="s1"))
    assert world.intake.join(web_join("s9", "Bob")).user.username == "Bob"


def test_a_new_username_from_the_same_device_is_one_rename_event(world):
    world.intake.post(device(username="Kitchen"))
    world.intake.post(device(username="Pantry", message="moved"))
    renames = system(world.settled(), "rename")
    assert [(r.previous, r.username) for r in renames] == [("Kitchen", "Pantry")]
    assert renames[0].to_dict()["previous"] == "Kitchen"
    assert [m.username for m in chat(world.events)] == ["Kitchen", "Pantry"]


def test_a_repeated_join_is_silent_and_refreshes_liveness(world, clock):
    """The shipped clients re-send join as a heartbeat: no event, no token, still present."""
    world.intake.join(Submission(Source.MQTT, client_id="listener", username="Quiet"))
    timeout = DeviceTimeout(world.rooms, timeout=600)
    for _ in range(30):  # more heartbeats than the rate limit's 20 tokens
        clock.t += 200
        assert world.intake.join(Submission(Source.MQTT, client_id="listener", username="Quiet")).outcome == Outcome.UNCHANGED
        assert timeout.expire() == []
    assert len(system(world.settled(), "join")) == 1
    clock.t += 601
    assert [u.client_id for u in timeout.expire()] == ["listener"]
    assert world.rooms.users("lobby") == []


# --- rate limit and dedup ----------------------------------------------------------

def test_a_join_leave_flood_is_limited_by_the_rate_limit(world):
    """100 join/leave cycles from one device: at most the bucket's 20 presence changes show."""
    refused = 0
    for _ in range(100):
        try:
            world.intake.join(Submission(Source.MQTT, client_id="flappy"))
        except ValidationError as exc:
            assert exc.code == "rate_limited" and exc.retry_after > 0
            refused += 1
        world.intake.leave(Submission(Source.MQTT, client_id="flappy"))
    presence = system(world.settled(), "join") + system(world.events, "leave")
    assert len(presence) <= 20 and refused >= 90


def test_duplicates_are_dropped_and_ids_compare_by_json_text(world):
    """QoS 1 redelivery is dropped; `7` and `"7"` are different ids; rooms are separate."""
    assert world.intake.post(device(message_id=7)).outcome == Outcome.POSTED
    assert world.intake.post(device(message_id=7)).outcome == Outcome.DUPLICATE
    assert world.intake.post(device(message_id="7")).outcome == Outcome.POSTED
    assert world.intake.post(device(message_id=7, room="kitchen")).outcome == Outcome.POSTED
    assert len(chat(world.settled())) == 3


def test_after_a_restart_the_window_is_rebuilt_from_history(tmp_path, clock):
    """A device message stored just before a crash (never acknowledged) comes again from
    the broker: recalled from history, it is a duplicate, not a second copy."""
    path = str(tmp_path / "chat.db")
    before = MessageStore(path)
    first = Intake(Rooms(before, name_key=name_key, clock=clock), NameRules(), RateLimiter(0, 1),
                   DedupWindow(ttl=600, now=clock), max_message_chars=2000)
    stored = [first.post(device(message_id=mid)).message_id for mid in ("m1", 7, "08")]
    first.post(device(message="no id"))
    first.post(Submission(Source.HTTP, username="ops", text="not a device", message_id="m1", address="10.0.0.1"))
    before.close()

    store = MessageStore(path)
    rooms = Rooms(store, name_key=name_key, clock=clock)
    again = Intake(rooms, NameRules(), RateLimiter(0, 1), DedupWindow(ttl=600, now=clock),
                   max_message_chars=2000)
    assert again.recall(store.device_message_ids("2000-01-01T00:00:00.000+00:00")) == 3
    assert [again.post(device(message_id=mid)).message_id for mid in ("m1", 7, "08")] == stored
    assert again.post(device(message_id="m2")).outcome == Outcome.POSTED
    assert again.post(device(message_id=8)).outcome == Outcome.POSTED  # "08" is not the number 8
    assert store.device_message_ids("2999-01-01T00:00:00.000+00:00") == []  # older than the window
    rooms.close()
    store.close()


def test_a_rejected_message_is_not_remembered_so_the_corrected_resend_goes_through(world):
    """Refused for its name: the same message_id with a good name is posted, not a 'duplicate'."""
    assert code_of(lambda: world.intake.post(device(username="AI", message_id="m1"))) == "bad_name"
    assert world.intake.post(device(username="Kitchen", message_id="m1")).outcome == Outcome.POSTED


def test_a_rejected_input_takes_no_token(world):
    """20 bad messages then 20 good ones: all good ones pass (20/10 bucket)."""
    for _ in range(20):
        code_of(lambda: world.intake.post(device(message="x" * 3000)))
    for number in range(20):
        assert world.intake.post(device(message=str(number))).outcome == Outcome.POSTED
    assert code_of(lambda: world.intake.post(device(message="one too many"))) == "rate_limited"


def test_a_duplicate_takes_no_token(world):
    world.intake.post(device(message_id="same"))
    for _ in range(50):
        assert world.intake.post(device(message_id="same")).outcome == Outcome.DUPLICATE
    assert world.intake.post(device(message_id="other")).outcome == Outcome.POSTED


# --- web members --------------------------------------------------------------------

def test_a_refused_room_switch_keeps_the_old_room(world):
    world.intake.join(web_join("s1", "Alice", room="kitchen"))
    world.intake.join(web_join("s2", "Bob", room="garden"))
    with pytest.raises(ValidationError):
        world.intake.join(web_join("s2", "Alice", room="kitchen"), switch_from="garden")
    assert [u["username"] for u in world.rooms.users("garden")] == ["Bob"]
    world.intake.post(Submission(Source.WEB, room="garden", text="still here", connection="s2"))


def test_a_reconnecting_page_gets_its_name_back_before_the_old_socket_is_gone(world):
    first = world.intake.join(web_join("old-sid", "Alice", page_id="page-1"))
    assert code_of(lambda: world.intake.join(web_join("other", "Alice", page_id="page-2"))) == "name_taken"
    again = world.intake.join(web_join("new-sid", "Alice", page_id="page-1"))
    assert again.outcome == Outcome.RECLAIMED and again.replaced == (Source.WEB, "old-sid") and again.user is first.user
    world.intake.leave(Submission(Source.WEB, connection="old-sid"))  # the old socket's late disconnect
    assert [u["username"] for u in world.rooms.users("lobby")] == ["Alice"]
    assert first.user.to_dict()["client_id"] is None, "the page's id stays private"


def test_a_web_resend_with_the_same_client_message_id_is_posted_once(world):
    world.intake.join(web_join("s1", "Alice", page_id="page-1"))
    first = world.intake.post(Submission(Source.WEB, text="hello", connection="s1", client_id="page-1",
                                         message_id="c-1"))
    world.intake.join(web_join("s2", "Alice", page_id="page-1"))  # reconnected
    again = world.intake.post(Submission(Source.WEB, text="hello", connection="s2", client_id="page-1",
                                         message_id="c-1"))
    assert again.outcome == Outcome.DUPLICATE and again.message_id == first.message_id
    assert len(chat(world.settled())) == 1


def test_http_posters_are_not_members_and_need_a_name(world):
    assert code_of(lambda: world.intake.post(Submission(Source.HTTP, text="hi", address="a"))) == "missing_field"
    world.intake.post(Submission(Source.HTTP, username="cron", text="backup done", address="a"))
    assert world.rooms.users("lobby") == []
    assert not [e for e in world.settled() if isinstance(e, PresenceChanged)]
