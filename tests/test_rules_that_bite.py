"""Rules a review found unguarded: one-line mutations of the product code that the rest of the
suite let through. Each test here fails when its rule is broken (docs/TESTING.md lists them).

- The intake's order: validate -> name rules -> rate limit. An input refused by the name
  rules takes no token, and is refused for its name even when the sender has no token left.
- The dedup window is 10 minutes (PROTOCOL): the same message_id 5 minutes later is a
  duplicate, in the intake, in the app's wiring and after a restart.
- The API token goes in `Authorization: Bearer <token>`: the raw token, or another scheme,
  is refused; forgetting a device needs the token like every other route.
- Size limits are inclusive: a text or payload of exactly the limit is accepted, one more
  character or byte is refused.

No broker, no server process: the intake is built directly and the apps come from
create_app with the Flask test client (a bridge that is built but never started).
"""
from __future__ import annotations

import json
import sqlite3
import uuid
from datetime import datetime, timedelta, timezone

import flask
import pytest
from conftest import RunningApp

from chatroom.core.errors import ValidationError
from chatroom.core.intake import DEDUP_SECONDS, Intake
from chatroom.core.limits import DedupWindow, RateLimiter
from chatroom.core.model import utc_timestamp
from chatroom.core.names import NameRules, name_key
from chatroom.core.room import Rooms
from chatroom.core.submission import Outcome, Source, Submission
from chatroom.core.validation import MAX_PAYLOAD_BYTES, parse_json_object, validate_text
from chatroom.storage.sqlite import MessageStore
from chatroom.web.access import Access
from support import free_port

TOKEN = "s3cret-token"
BUCKET = 20  # the intake below: 20 inputs per 10 s
MAX_CHARS = 2000


@pytest.fixture
def intake(clock):
    """An intake with a 20/10 rate limit and the product's dedup window, on a fake clock."""
    store = MessageStore(":memory:")
    rooms = Rooms(store, name_key=name_key, clock=clock)
    yield Intake(rooms, NameRules(reserved=("AI",)), RateLimiter(BUCKET, 10, now=clock),
                 DedupWindow(ttl=DEDUP_SECONDS, now=clock), max_message_chars=MAX_CHARS)
    rooms.close()
    store.close()


def code_of(call) -> str:
    with pytest.raises(ValidationError) as info:
        call()
    return info.value.code


def device(client_id="esp32-1", message="hi", **fields):
    return Submission(Source.MQTT, client_id=client_id, text=message, **fields)


def http(username, message="hi", address="10.0.0.9", **fields):
    return Submission(Source.HTTP, username=username, text=message, address=address, **fields)


def web_join(sid, name, room=None):
    return Submission(Source.WEB, room=room, username=name, connection=sid)


def posts_until_refused(post, limit=100) -> int:
    """How many posts `post()` gets accepted before the first rate_limited refusal."""
    for accepted in range(limit):
        try:
            post()
        except ValidationError as exc:
            assert exc.code == "rate_limited", exc.code
            return accepted
    return limit


# --- 1. name rules before the rate limit ---------------------------------------------------

BAD_NAMES = ["AI", "System", "x" * 33, "Bob\u202e", "ab\x07c", "\u200b", 7]


def test_device_messages_refused_for_their_name_take_no_token(intake):
    """40 messages with bad names, then the whole bucket is still there: 20 good ones pass."""
    for number in range(40):
        assert code_of(lambda: intake.post(device(username=BAD_NAMES[number % len(BAD_NAMES)]))) == "bad_name"
    assert posts_until_refused(lambda: intake.post(device(username="Kitchen"))) == BUCKET


def test_http_posts_refused_for_a_taken_name_take_no_token(intake):
    intake.join(web_join("s1", "Alice"))
    for lookalike in ["Alice", "alice", "ALICE", "Аlice"] * 10:  # the last one has a Cyrillic А
        assert code_of(lambda: intake.post(http(lookalike))) == "name_taken"
    assert posts_until_refused(lambda: intake.post(http("cron"))) == BUCKET


def test_web_joins_refused_for_their_name_take_no_token(intake):
    """A page trying taken and bad names 40 times still has its bucket: the join it gets
    takes one token, its messages the other 19."""
    intake.join(web_join("s1", "Alice"))
    for number in range(40):
        name = "Alice" if number % 2 else "AI"
        assert code_of(lambda: intake.join(web_join("s2", name))) in ("name_taken", "bad_name")
    assert intake.join(web_join("s2", "Bob")).outcome == Outcome.JOINED
    assert posts_until_refused(lambda: intake.post(Submission(Source.WEB, text="hi", connection="s2"))) == BUCKET - 1


def test_the_name_rules_answer_before_the_rate_limit(intake):
    """A sender out of tokens still hears what is wrong with its input, not `rate_limited`."""
    assert posts_until_refused(lambda: intake.post(device(username="Kitchen"))) == BUCKET
    assert code_of(lambda: intake.post(device(username="AI"))) == "bad_name"
    assert code_of(lambda: intake.post(device(message="x" * (MAX_CHARS + 1)))) == "too_long"
    assert code_of(lambda: intake.post(device(username="Kitchen"))) == "rate_limited"

    intake.join(web_join("s1", "Alice"))
    assert posts_until_refused(lambda: intake.post(http("cron"))) == BUCKET
    assert code_of(lambda: intake.post(http("Alice"))) == "name_taken"
    assert code_of(lambda: intake.post(http("AI"))) == "bad_name"


# --- 2. the dedup window is 10 minutes ------------------------------------------------------

def test_the_same_message_id_five_minutes_later_is_a_duplicate(intake, clock):
    first = intake.post(device(message_id="m-1"))
    clock.t += 5 * 60
    again = intake.post(device(message_id="m-1"))
    assert again.outcome == Outcome.DUPLICATE and again.message_id == first.message_id
    clock.t += 4 * 60 + 59  # 9 min 59 s after the first
    assert intake.post(device(message_id="m-1")).outcome == Outcome.DUPLICATE
    clock.t += 2  # past 10 minutes: a new message
    assert intake.post(device(message_id="m-1")).outcome == Outcome.POSTED


def offline_env(tmp_path, **overrides) -> dict:
    """An app's environment for create_app without a broker: with MQTT_ENABLE (the default) its
    bridge is built but never started, and the port it would use has nobody listening."""
    env = {
        "ASYNC_MODE": "threading",
        "MQTT_BROKER": "127.0.0.1",
        "MQTT_PORT": str(free_port()),
        "MQTT_TOPIC_PREFIX": f"bite{uuid.uuid4().hex[:8]}",
        "MQTT_CLIENT_ID": f"bridge-{uuid.uuid4().hex[:8]}",
        "DATABASE_PATH": str(tmp_path / "chat.db"),
        "RATE_LIMIT": "0",
        "SECRET_KEY": "test-secret",
    }
    env.update({key: str(value) for key, value in overrides.items()})
    return env


@pytest.fixture
def offline_app(tmp_path):
    """Build apps with create_app (not started: no broker, no server); stopped at the end."""
    apps: list[RunningApp] = []

    def make(**overrides) -> RunningApp:
        running = RunningApp(offline_env(tmp_path, **overrides))
        apps.append(running)
        return running

    yield make
    for running in apps:
        running.stop()


def test_the_app_wires_a_ten_minute_dedup_window(offline_app):
    """The app's own window (its clock is not ours to move: the intake test above covers the
    time; this one that create_app hands the intake a window of that length)."""
    app = offline_app(MQTT_ENABLE="false")
    assert DEDUP_SECONDS == 10 * 60  # PROTOCOL: "within 10 minutes"
    assert app.components.intake.dedup.ttl == DEDUP_SECONDS


def test_after_a_restart_a_message_stored_five_minutes_ago_is_still_a_duplicate(offline_app, tmp_path):
    """The window rebuilt from history reaches 10 minutes back, not one."""
    before = offline_app(MQTT_ENABLE="false")
    first = before.components.intake.post(device(message_id="m-1"))
    before.drain()
    before.stop()
    five_minutes_ago = utc_timestamp(datetime.now(timezone.utc) - timedelta(minutes=5))
    with sqlite3.connect(tmp_path / "chat.db") as db:
        assert db.execute("UPDATE messages SET timestamp = ?", (five_minutes_ago,)).rowcount == 1
    db.close()

    after = offline_app(MQTT_ENABLE="false")
    again = after.components.intake.post(device(message_id="m-1"))
    assert again.outcome == Outcome.DUPLICATE and again.message_id == first.message_id


# --- 3. Authorization: Bearer <token> -----------------------------------------------------------

REFUSED_HEADERS = [TOKEN, f"Basic {TOKEN}", f"Token {TOKEN}", f"Bearer{TOKEN}", f"{TOKEN} {TOKEN}",
                   "Bearer wrong", f"Bearer {TOKEN[:-1]}", "Bearer", "", f"Bearer {TOKEN}x"]
ACCEPTED_HEADERS = [f"Bearer {TOKEN}", f"bearer {TOKEN}", f"BEARER {TOKEN}", f"Bearer {TOKEN} "]


@pytest.mark.parametrize("header", REFUSED_HEADERS)
def test_access_refuses_a_token_without_the_bearer_scheme(header):
    with flask.Flask(__name__).test_request_context(headers={"Authorization": header}):
        assert not Access(TOKEN).allows_request()


@pytest.mark.parametrize("header", ACCEPTED_HEADERS)
def test_access_takes_the_token_with_the_bearer_scheme(header):
    with flask.Flask(__name__).test_request_context(headers={"Authorization": header}):
        assert Access(TOKEN).allows_request()


def test_without_api_token_every_request_is_allowed():
    with flask.Flask(__name__).test_request_context():
        assert Access("").allows_request()
    with flask.Flask(__name__).test_request_context(headers={"Authorization": "Basic x"}):
        assert Access("").allows_request()


def test_the_api_refuses_the_raw_token_and_other_schemes(offline_app):
    app = offline_app(MQTT_ENABLE="false", API_TOKEN=TOKEN)
    for header in REFUSED_HEADERS:
        response = app.http.get("/api/messages", headers={"Authorization": header})
        assert response.status_code == 401 and response.get_json()["code"] == "unauthorized", header
    assert app.http.get("/api/messages").status_code == 401
    for header in ACCEPTED_HEADERS:
        assert app.http.get("/api/messages", headers={"Authorization": header}).status_code == 200, header


# --- 4. forgetting a device needs the token -------------------------------------------------

def test_forgetting_a_device_needs_the_token(offline_app):
    app = offline_app(API_TOKEN=TOKEN)
    app.components.intake.post(device("esp-1", data={"t": 21.5}))
    app.drain()
    for header in [None, TOKEN, f"Basic {TOKEN}", "Bearer wrong"]:
        headers = {"Authorization": header} if header else {}
        response = app.http.post("/api/devices/esp-1/forget", headers=headers)
        assert response.status_code == 401 and response.get_json()["code"] == "unauthorized", header
        assert app.http.post("/api/devices/nobody/forget", headers=headers).status_code == 401, header
    # Refused before anything was done; with the token the route answers (not 401).
    assert app.http.post("/api/devices/nobody/forget",
                         headers={"Authorization": f"Bearer {TOKEN}"}).status_code != 401


def test_forgetting_a_device_with_the_token_works(offline_app):
    app = offline_app(API_TOKEN=TOKEN)
    app.components.intake.post(device("esp-1", data={"t": 21.5}))
    app.drain()
    assert app.http.post("/api/devices/esp-1/forget").status_code == 401
    response = app.http.post("/api/devices/esp-1/forget", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200, response.get_data(as_text=True)[:300]
    assert response.get_json()["client_id"] == "esp-1" and response.get_json()["cleared_topics"]
    unknown = app.http.post("/api/devices/nobody/forget", headers={"Authorization": f"Bearer {TOKEN}"})
    assert unknown.status_code == 404 and unknown.get_json()["code"] == "unknown_device"


def test_the_open_paths_are_only_the_page_health_and_static_files(offline_app):
    """Everything under /api/, /mqtt/ and /metrics needs the token; the page and /healthz do not."""
    app = offline_app(API_TOKEN=TOKEN)
    for method, path in [("get", "/api/messages"), ("get", "/api/users"), ("post", "/api/messages"),
                         ("post", "/api/devices/esp-1/forget"), ("get", "/mqtt/status"), ("get", "/metrics"),
                         ("get", "/api/devices/esp-1/forget"), ("get", "/api/readings?client_id=a&key=t")]:
        response = getattr(app.http, method)(path, json={"username": "cron", "message": "hi"} if method == "post" else None)
        assert response.status_code == 401, (method, path)
    assert app.http.get("/healthz").status_code == 200
    assert app.http.get("/").status_code == 200


# --- 5. size limits are inclusive ----------------------------------------------------------

def test_a_text_of_exactly_the_limit_is_accepted_and_one_more_is_too_long():
    assert validate_text("x" * 50, 50) == "x" * 50
    assert validate_text("  " + "é" * 50 + "\n", 50) == "é" * 50  # counted after trimming, in characters
    assert code_of(lambda: validate_text("x" * 51, 50)) == "too_long"
    assert validate_text("x", 1) == "x"
    assert code_of(lambda: validate_text("xy", 1)) == "too_long"


def test_a_device_message_of_exactly_max_message_chars_is_posted(intake):
    assert intake.post(device(message="x" * MAX_CHARS)).outcome == Outcome.POSTED
    assert code_of(lambda: intake.post(device(message="x" * (MAX_CHARS + 1)))) == "too_long"


def padded_object(size: int) -> bytes:
    """A JSON object of exactly `size` bytes (padded with JSON whitespace)."""
    body = json.dumps({"client_id": "esp32-1", "message": "hi"}).encode()
    padded = body[:-1] + b" " * (size - len(body)) + b"}"
    assert len(padded) == size
    return padded


def test_a_payload_of_exactly_max_payload_bytes_is_read_and_one_more_is_too_large():
    assert parse_json_object(padded_object(MAX_PAYLOAD_BYTES)) == {"client_id": "esp32-1", "message": "hi"}
    assert code_of(lambda: parse_json_object(padded_object(MAX_PAYLOAD_BYTES + 1))) == "too_large"
    assert parse_json_object(padded_object(100), max_bytes=100)["message"] == "hi"
    assert code_of(lambda: parse_json_object(padded_object(101), max_bytes=100)) == "too_large"


def test_an_http_body_of_exactly_the_limit_is_posted_and_one_more_byte_is_413(offline_app):
    from chatroom.web.routes import MAX_BODY_BYTES

    app = offline_app(MQTT_ENABLE="false")
    headers = {"Content-Type": "application/json"}
    body = json.dumps({"username": "cron", "message": "hi"}).encode()
    exact = body[:-1] + b" " * (MAX_BODY_BYTES - len(body)) + b"}"
    assert app.http.post("/api/messages", data=exact, headers=headers).status_code == 201
    response = app.http.post("/api/messages", data=exact[:-1] + b" }", headers=headers)
    assert response.status_code == 413 and response.get_json()["code"] == "too_large"


# --- gaps `make mutate` found (docs/TESTING.md) ----------------------------------------------

def test_access_without_a_token_lets_sockets_in_and_with_one_checks_their_auth():
    assert Access("").allows_token(None) and Access("").allows_socket(None)
    guarded = Access(TOKEN)
    assert guarded.allows_socket({"token": TOKEN})
    for auth in [None, {}, {"token": "nope"}, {"token": TOKEN[:-1]}, {"token": 5}, TOKEN, {"auth": TOKEN}]:
        assert not guarded.allows_socket(auth), auth


def test_every_response_carries_the_security_headers(offline_app):
    app = offline_app(MQTT_ENABLE="false", API_TOKEN=TOKEN)
    for response in (app.http.get("/healthz"), app.http.get("/api/messages")):  # 200, and a 401
        assert response.headers["Content-Security-Policy"] == "default-src 'self'; frame-ancestors 'none'"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["X-Frame-Options"] == "DENY"
        assert response.headers["Referrer-Policy"] == "same-origin"


def test_the_wait_a_rate_limited_sender_is_told_is_exact(clock):
    """20/10: a token every 0.5 s. retry_after is what the sender needs to wait, not more or less."""
    limiter = RateLimiter(BUCKET, 10, now=clock)
    for _ in range(BUCKET):
        assert limiter.wait_time("a") == 0.0
        limiter.take("a")
    assert limiter.wait_time("a") == pytest.approx(0.5)
    clock.t += 0.2
    assert limiter.wait_time("a") == pytest.approx(0.3)
    clock.t += 0.55  # 1.5 tokens now: may send, and the answer is 0, not a negative wait
    assert limiter.wait_time("a") == 0.0
    single = RateLimiter(1, 10, now=clock)  # RATE_LIMIT=1/10 refills too
    single.take("b")
    assert single.wait_time("b") == pytest.approx(10.0)
    clock.t += 10
    assert single.wait_time("b") == 0.0


def test_the_rate_limiter_forgets_the_least_recently_active_sender_first(clock):
    limiter = RateLimiter(1, 60, now=clock, max_senders=2)
    limiter.take("a")
    limiter.take("b")
    limiter.take("a")  # a is the most recent now
    limiter.take("c")  # the table is full: b goes, a stays limited
    assert limiter.wait_time("a") > 0 and limiter.wait_time("c") > 0
    assert limiter.wait_time("b") == 0.0


def test_a_device_rate_limited_is_named_in_the_refusal_with_the_wait(intake):
    assert posts_until_refused(lambda: intake.post(device())) == BUCKET
    with pytest.raises(ValidationError) as info:
        intake.post(device())
    assert info.value.client_id == "esp32-1" and info.value.retry_after == pytest.approx(0.5)


def test_refusals_of_web_and_http_input_name_no_client_id(intake):
    """A page's id is private: a refusal of its input must not carry it (only devices are named)."""
    intake.join(Submission(Source.WEB, username="Alice", connection="s1", client_id="page-1"))
    with pytest.raises(ValidationError) as info:
        intake.post(Submission(Source.WEB, text="", connection="s1", client_id="page-1"))
    assert info.value.client_id is None
    with pytest.raises(ValidationError) as info:
        intake.join(Submission(Source.WEB, username="AI", connection="s2", client_id="page-2"))
    assert info.value.client_id is None
    with pytest.raises(ValidationError) as info:
        intake.join(Submission(Source.MQTT, client_id="esp-9", username="AI"))
    assert info.value.client_id == "esp-9"


def test_http_callers_have_a_bucket_per_address(intake):
    assert posts_until_refused(lambda: intake.post(http("cron", address="10.0.0.1"))) == BUCKET
    assert posts_until_refused(lambda: intake.post(http("cron", address="10.0.0.2"))) == BUCKET


def test_pages_from_one_address_share_its_bucket(clock):
    """PROTOCOL 9: a new socket or page id is not a fresh allowance; the address bucket holds."""
    store = MessageStore(":memory:")
    rooms = Rooms(store, name_key=name_key, clock=clock)
    intake = Intake(rooms, NameRules(), RateLimiter(BUCKET, 10, now=clock), DedupWindow(ttl=600, now=clock),
                    max_message_chars=MAX_CHARS, address_limiter=RateLimiter(30, 10, now=clock))
    try:
        accepted = 0
        for number in range(5):
            sid = f"s{number}"
            try:
                intake.join(Submission(Source.WEB, username=f"user{number}", connection=sid, address="10.0.0.1"))
            except ValidationError as exc:
                assert exc.code == "rate_limited" and number >= 2
                continue
            accepted += 1 + posts_until_refused(
                lambda: intake.post(Submission(Source.WEB, text="hi", connection=sid, address="10.0.0.1")))
        assert accepted == 30  # page 0: 20 (its own bucket), page 1: the address's last 10, then none
    finally:
        rooms.close()
        store.close()


def test_an_empty_message_id_is_no_id_so_nothing_is_a_duplicate(intake):
    assert intake.post(device(message_id="")).outcome == Outcome.POSTED
    assert intake.post(device(message_id="")).outcome == Outcome.POSTED


def test_accepted_tells_the_room_the_member_and_the_units(intake):
    accepted = intake.post(device(room="kitchen", username="Oven", data={"t": 180}, units={"t": "°C"}))
    assert accepted.room == "kitchen" and accepted.user.username == "Oven"
    assert accepted.message.units == {"t": "°C"} and accepted.message.data == {"t": 180}
    assert accepted.message.content == "hi" and accepted.message.username == "Oven"
    assert accepted.message.source == Source.MQTT and accepted.message.client_id == "esp32-1"
    assert accepted.message.room == "kitchen" and accepted.message_id == accepted.message.message_id
    left = intake.leave(Submission(Source.MQTT, client_id="esp32-1", room="kitchen"))
    assert left.outcome == Outcome.LEFT and left.room == "kitchen" and left.user.username == "Oven"
    gone = intake.leave(Submission(Source.MQTT, client_id="esp32-1", room="kitchen"))
    assert gone.outcome == Outcome.NOT_PRESENT and gone.room == "kitchen" and gone.user is None


def test_an_id_proven_on_its_own_topic_cannot_be_claimed_on_the_shared_ones(intake):
    intake.post(device("esp-own", proven=True))
    assert code_of(lambda: intake.post(device("esp-own"))) == "bad_field"
    assert code_of(lambda: intake.join(Submission(Source.MQTT, client_id="esp-own"))) == "bad_field"
    assert intake.post(device("esp-other")).outcome == Outcome.POSTED


def test_throttle_acts_count_times_per_window_then_reports_what_it_held_back(clock):
    from chatroom.core.limits import Throttle

    throttle = Throttle(count=3, seconds=60, now=clock, max_keys=2)
    assert [throttle.allow("k") for _ in range(5)] == [(True, 0)] * 3 + [(False, 0)] * 2
    clock.t += 59.9
    assert throttle.allow("k") == (False, 0)
    clock.t += 0.1  # a new window: acts, and says 3 were held back
    assert throttle.allow("k") == (True, 3)
    assert throttle.allow("k") == (True, 0)
    throttle.allow("j")
    throttle.allow("k")  # k is the most recent: a third key pushes j out, not k
    throttle.allow("m")
    assert throttle.allow("k") == (False, 0)
    assert throttle.allow("j") == (True, 0)


def test_recent_set_forgets_the_least_recently_added_first():
    from chatroom.core.limits import RecentSet

    recent = RecentSet(max_items=2)
    recent.add("a")
    recent.add("b")
    recent.add("a")  # refreshed
    recent.add("c")
    assert "a" in recent and "c" in recent and "b" not in recent and len(recent) == 2
    recent.discard("a")
    recent.discard("nobody")
    assert "a" not in recent and len(recent) == 1


@pytest.mark.parametrize("name", ["A", "x" * 32, "  Bob  ", "Ali", "Aïda", "AIda"])
def test_names_from_one_to_32_characters_are_valid(name):
    assert NameRules(reserved=("AI",)).display_name(name) == name.strip()


@pytest.mark.parametrize("name", ["A.I", "A I", "ȦI", "Ǎl", "A|", "A1", "S-y-s-t-e-m", "\ud800x", "x" * 33, ""])
def test_look_alikes_of_reserved_names_and_broken_text_are_bad_names(name):
    assert code_of(lambda: NameRules(reserved=("AI",)).display_name(name)) == "bad_name"


@pytest.mark.parametrize("client_id, ok", [("a", True), ("x" * 64, True), ("x" * 65, False), ("", False)])
def test_client_ids_are_1_to_64_characters(client_id, ok):
    from chatroom.core.validation import validate_client_id

    if ok:
        assert validate_client_id(client_id) == client_id
    else:
        assert code_of(lambda: validate_client_id(client_id)) == "bad_field"


def test_a_message_with_a_lone_surrogate_is_bad_field():
    assert code_of(lambda: validate_text("caf\ud800", 50)) == "bad_field"
    assert validate_text("café 😀", 50) == "café 😀"


def test_data_limits_are_inclusive():
    from chatroom.core.model import dumps
    from chatroom.core.validation import MAX_DATA_BYTES, MAX_DATA_KEYS, validate_data

    keys = {f"k{i}": i for i in range(MAX_DATA_KEYS)}
    assert validate_data(keys) == keys
    assert code_of(lambda: validate_data({**keys, "one_more": 1})) == "bad_field"
    assert validate_data({"k" * 64: 1}) and code_of(lambda: validate_data({"k" * 65: 1})) == "bad_field"
    assert code_of(lambda: validate_data({"": 1})) == "bad_field"
    assert code_of(lambda: validate_data({"tab\tkey": 1})) == "bad_field"
    filler = MAX_DATA_BYTES - len(dumps({"s": ""}).encode())
    exact = {"s": "x" * filler}
    assert len(dumps(exact).encode()) == MAX_DATA_BYTES and validate_data(exact) == exact
    assert code_of(lambda: validate_data({"s": "x" * (filler + 1)})) == "bad_field"


def test_units_and_message_ids_are_checked_field_by_field():
    from chatroom.core.validation import MAX_DATA_KEYS, MAX_MESSAGE_ID_CHARS, validate_message_id, validate_units

    units = {f"k{i}": "°C" for i in range(MAX_DATA_KEYS)}
    assert validate_units(units) == units
    for bad in [{**units, "one_more": "V"}, ["°C"], "°C", {"t": 5}, {"t": ""}, {"t": "x" * 17}, {"t": "a\nb"}]:
        assert code_of(lambda: validate_units(bad)) == "bad_field", bad
    assert validate_message_id("m" * MAX_MESSAGE_ID_CHARS) == "m" * MAX_MESSAGE_ID_CHARS
    assert validate_message_id(7) == "7"
    for bad in ["m" * (MAX_MESSAGE_ID_CHARS + 1), "a\nb", "tab\t", True, 1.5, [1]]:
        assert code_of(lambda: validate_message_id(bad)) == "bad_field", bad


def test_optional_fields_null_or_empty_are_absent():
    from chatroom.core.validation import optional

    assert optional({"a": None, "b": ""}, "a") is None and optional({"b": ""}, "b") is None
    assert optional({}, "c") is None and optional({"d": 0}, "d") == 0 and optional({"e": "x"}, "e") == "x"


def test_only_a_lone_surrogate_escape_makes_a_payload_invalid():
    assert parse_json_object(b'{"message": "line\\nbreak \\u00e9"}')["message"] == "line\nbreak é"
    assert parse_json_object(b'{"message": "\\ud83d\\ude00"}')["message"] == "😀"
    for body in [b'{"message": "\\ud800"}', b'{"data": {"\\udc00": 1}}', b'{"m": ["ok", "\\uDBFF"]}']:
        assert code_of(lambda: parse_json_object(body)) == "invalid_json", body


def test_a_device_keeps_the_name_it_gave_when_it_stops_sending_one(intake):
    intake.post(device(username="Kitchen"))
    assert intake.post(device()).message.username == "Kitchen"
    assert intake.post(device("esp-2")).message.username == "esp-2"  # never named: its client_id


def test_a_repeated_join_that_changes_nothing_is_not_refused_when_out_of_tokens(intake):
    """A device's heartbeat join (same room, same name) costs nothing and is never rate_limited."""
    assert posts_until_refused(lambda: intake.post(device(username="Kitchen"))) == BUCKET
    again = intake.join(Submission(Source.MQTT, client_id="esp32-1", username="Kitchen"))
    assert again.outcome == Outcome.UNCHANGED
    assert code_of(lambda: intake.join(Submission(Source.MQTT, client_id="esp32-1", username="Oven"))) == "rate_limited"


def test_leaving_when_not_present_costs_a_device_nothing(intake):
    for _ in range(40):
        assert intake.leave(Submission(Source.MQTT, client_id="esp32-1")).outcome == Outcome.NOT_PRESENT
    assert posts_until_refused(lambda: intake.post(device())) == BUCKET


def test_each_device_has_its_own_bucket(intake):
    assert posts_until_refused(lambda: intake.post(device("esp-a"))) == BUCKET
    assert posts_until_refused(lambda: intake.post(device("esp-b"))) == BUCKET


def test_members_are_who_and_what_they_are(intake):
    member = intake.post(device(username="Oven")).user
    assert member.username == "Oven" and member.source == Source.MQTT and member.client_id == "esp32-1"
    intake.join(Submission(Source.WEB, username="Alice", connection="s1", client_id="page-1"))
    posted = intake.post(Submission(Source.WEB, text="hello", connection="s1", client_id="page-1"))
    assert posted.message.username == "Alice" and posted.message.source == Source.WEB
    assert posted.message.client_id is None and posted.user.client_id is None  # a page's id stays private


def test_a_switch_of_rooms_leaves_the_old_room_only_once_the_new_one_took_the_member(intake):
    intake.join(Submission(Source.WEB, username="Alice", connection="s1", room="kitchen"))
    moved = intake.join(Submission(Source.WEB, username="Alice", connection="s1", room="garden"), switch_from="kitchen")
    assert moved.room == "garden"
    assert intake.rooms.users("kitchen") == [] and [u["username"] for u in intake.rooms.users("garden")] == ["Alice"]
    intake.join(Submission(Source.WEB, username="Alice", connection="s1", room="garden"), switch_from="garden")
    assert [u["username"] for u in intake.rooms.users("garden")] == ["Alice"]


def test_an_id_remembered_but_never_stored_is_posted_not_dropped(intake):
    """Whoever remembered it died before storing it: the retry is the only copy."""
    assert intake.recall([("lobby", "esp32-1", "m-9", "never-stored")]) == 1
    assert intake.post(device(message_id="m-9")).outcome == Outcome.POSTED
    again = intake.post(device(message_id="m-9"))
    assert again.outcome == Outcome.DUPLICATE and again.room == "lobby"


def test_data_text_must_be_valid_unicode_and_integers_javascript_safe():
    from chatroom.core.validation import MAX_SAFE_INTEGER, validate_data

    assert validate_data({"low": -MAX_SAFE_INTEGER, "high": MAX_SAFE_INTEGER, "s": "é"})
    for bad in [{"s": "caf\ud800"}, {"n": MAX_SAFE_INTEGER + 1}, {"n": -MAX_SAFE_INTEGER - 1}]:
        assert code_of(lambda: validate_data(bad)) == "bad_field", bad


def test_unit_keys_and_texts_have_inclusive_limits():
    from chatroom.core.validation import validate_units

    assert validate_units({"k" * 64: "V", "t": "x" * 16}) == {"k" * 64: "V", "t": "x" * 16}
    assert code_of(lambda: validate_units({"k" * 65: "V"})) == "bad_field"


def test_join_rename_and_leave_announcements_say_who_and_where(intake):
    """The system lines people read in the chat, and the device id the listeners (MQTT, HA) use."""
    from chatroom.core.model import SystemEvent

    events = []
    intake.rooms.subscribe("test", events.append)
    intake.post(device(room="kitchen", username="Oven"))
    intake.post(device(room="kitchen", username="Stove"))
    intake.leave(Submission(Source.MQTT, client_id="esp32-1", room="kitchen"))
    assert intake.rooms.drain()
    said = [(e.event, e.message, e.room, e.username, e.client_id, e.previous) for e in events if isinstance(e, SystemEvent)]
    assert said == [("join", "Oven joined", "kitchen", "Oven", "esp32-1", None),
                    ("rename", "Oven is now Stove", "kitchen", "Stove", "esp32-1", "Oven"),
                    ("leave", "Stove left", "kitchen", "Stove", "esp32-1", None)]


def test_history_reads_back_every_field_a_message_was_stored_with(intake):
    """What the store keeps (to_dict) comes back whole (from_dict): ids, reply, type, time."""
    from chatroom.core.model import AI_RESPONSE, Message

    stored = Message(username="AI", content="42", room="r", source="ai", seq=9, type=AI_RESPONSE,
                     timestamp="2024-01-02T03:04:05.678+00:00", client_id="esp-1", client_message_id="m-1",
                     data={"t": 1}, reply_to="0f3c")
    again = Message.from_dict(stored.to_dict())
    assert again == stored and (again.client_id, again.client_message_id, again.reply_to) == ("esp-1", "m-1", "0f3c")
    posted = intake.post(device(message_id="m-2", data={"t": 2}))
    [read] = intake.rooms.history_of("lobby", 10)
    assert (read.message_id, read.client_id, read.client_message_id, read.data) == (
        posted.message_id, "esp32-1", "m-2", {"t": 2})


def test_an_announcement_is_a_system_event_of_its_room(intake):
    from chatroom.core.model import SystemEvent

    events = []
    intake.rooms.subscribe("test", events.append)
    said = intake.rooms.announce("kitchen", "ai_busy", "one at a time", "AI")
    assert intake.rooms.drain()
    assert (said.event, said.message, said.room, said.username) == ("ai_busy", "one at a time", "kitchen", "AI")
    assert [e for e in events if isinstance(e, SystemEvent)] == [said]


def test_the_device_timeout_expires_silent_devices_only(intake, clock):
    intake.join(web_join("s1", "Alice"))
    intake.post(device("esp-quiet"))
    clock.t += 100
    intake.post(device("esp-talking"))
    gone = intake.rooms.expire_silent(Source.MQTT, silent_since=clock.t - 50)
    assert [user.username for user in gone] == ["esp-quiet"]
    assert sorted(u["username"] for u in intake.rooms.users("lobby")) == ["Alice", "esp-talking"]


def test_a_members_messages_are_counted(intake):
    """/mqtt/status lists each member's message_count."""
    for _ in range(3):
        intake.post(device())
    intake.join(web_join("s1", "Alice"))
    intake.post(Submission(Source.WEB, text="hi", connection="s1"))
    assert intake.rooms.member("lobby", (Source.MQTT, "esp32-1")).message_count == 3
    assert intake.rooms.member("lobby", (Source.WEB, "s1")).message_count == 1
    intake.post(http("cron"))  # an HTTP poster is no member: nobody's count moves
    assert intake.rooms.member("lobby", (Source.MQTT, "esp32-1")).message_count == 3
