"""Text and numbers from strangers (PROTOCOL 9 "Text"; issue 21 findings 7, 9 and 11).

- A lone surrogate (a `\\uD800`-`\\uDFFF` JSON escape that is not half of a pair) anywhere in
  an MQTT payload or an HTTP body is `invalid_json` (HTTP 400); in a Socket.IO field it is
  `bad_field` (`bad_name` for a name). Never a 500, a traceback or a ghost member.
- Integers in `data` beyond JavaScript's Number.MAX_SAFE_INTEGER (2^53 - 1) are `bad_field`.
- Reserved names (the assistant's AI_NAME and `system`) are compared after folding the
  look-alikes of I / l / | / 1; ordinary names keep their equality.
"""
from __future__ import annotations

import json
import logging

import pytest
import requests
from conftest import app_env

from chatroom.core.errors import ValidationError
from chatroom.core.submission import Source, Submission
from chatroom.core.validation import parse_json_object
from support import TIMEOUT, SocketIOClient

LONE = "\ud800"          # a high surrogate with no low one after it
LONE_LOW = "\udc80"      # a low surrogate with no high one before it
PAIR = "\U0001F600"      # 😀, sent as the escape pair \ud83d\ude00
NINE_HUNDRED_DIGITS = 10**899
# JavaScript's Number.MAX_SAFE_INTEGER: the largest integer `data` may carry (the test says
# it itself rather than importing it, so that it also runs against the code before the fix).
MAX_SAFE_INTEGER = 2**53 - 1


def escaped(obj) -> bytes:
    """JSON with every non-ASCII character as a \\u escape: how a lone surrogate travels."""
    return json.dumps(obj, ensure_ascii=True).encode("ascii")


def code_of(call) -> str | None:
    try:
        call()
    except ValidationError as exc:
        return exc.code
    return None


# --- parse_json_object: the door for MQTT payloads and HTTP bodies ------------------------

@pytest.mark.parametrize("body", [
    {"client_id": "d", "message": LONE},
    {"client_id": "d", "message": "hi", "username": LONE_LOW + "x"},
    {"client_id": "d", "message": "hi", "data": {"t": "a" + LONE}},
    {"client_id": "d", "message": "hi", "data": {LONE: 1}},
    {"client_id": "d", "message": "hi", "ignored": [{"deep": [LONE]}]},
    {"client_id": "d", "message": "\ude00\ud83d"},   # a pair in the wrong order
    {"client_id": "d", "message": "\ud83dA"},        # a high surrogate before a plain letter
], ids=["message", "username", "data-value", "data-key", "unknown-field", "reversed-pair", "high-then-letter"])
def test_a_lone_surrogate_anywhere_in_a_payload_is_invalid_json(body):
    with pytest.raises(ValidationError) as refused:
        parse_json_object(escaped(body))
    assert refused.value.code == "invalid_json"


def test_an_upper_case_surrogate_escape_is_invalid_json_too():
    with pytest.raises(ValidationError) as refused:
        parse_json_object(b'{"client_id": "d", "message": "\\uDBFF"}')
    assert refused.value.code == "invalid_json"


def test_surrogate_pairs_and_escaped_backslashes_stay_accepted():
    """`\\ud83d\\ude00` is 😀; `\\\\ud800` is six characters of text, not an escape."""
    assert parse_json_object(b'{"message": "\\ud83d\\ude00"}') == {"message": PAIR}
    assert parse_json_object(b'{"message": "\\\\ud800"}') == {"message": "\\ud800"}


# --- the validators and the intake (the Socket.IO path: its JSON is decoded by Engine.IO) ---

@pytest.fixture
def intake_app(make_app):
    """An app from create_app, with one web member `Alice` (connection `sid-a`) in the lobby."""
    app = make_app()
    intake = app.components.intake
    intake.join(Submission(Source.WEB, username="Alice", connection="sid-a"))
    return app


def web_post(**fields) -> Submission:
    return Submission(Source.WEB, room="lobby", connection="sid-a", **{"text": "hi", **fields})


@pytest.mark.parametrize("fields", [
    {"text": LONE},
    {"text": "fine " + LONE_LOW},
    {"data": {"t": LONE}},
    {"data": {LONE: 1}},
    {"message_id": "id-" + LONE},
    {"client_id": "page-" + LONE},
], ids=["text", "text-low", "data-value", "data-key", "message_id", "client_id"])
def test_a_lone_surrogate_in_a_web_field_is_bad_field(intake_app, fields):
    intake = intake_app.components.intake
    assert code_of(lambda: intake.post(web_post(**fields))) == "bad_field"
    assert intake_app.components.rooms.history_of("lobby", 10) == []


def test_a_lone_surrogate_in_a_room_is_bad_field(intake_app):
    intake = intake_app.components.intake
    assert code_of(lambda: intake.join(Submission(Source.WEB, username="Bob", room="r" + LONE, connection="s"))) == "bad_field"


@pytest.mark.parametrize("name", [LONE_LOW + "x", "Bob" + LONE, LONE])
def test_a_lone_surrogate_in_a_name_is_bad_name_and_joins_nobody(intake_app, name):
    components = intake_app.components
    assert code_of(lambda: components.intake.join(Submission(Source.WEB, username=name, connection="sid-b"))) == "bad_name"
    assert code_of(lambda: components.intake.post(Submission(Source.MQTT, client_id="dev-1", username=name,
                                                             text="hi"))) == "bad_name"
    assert [user["username"] for user in components.rooms.users("lobby")] == ["Alice"]


def test_a_surrogate_pair_is_text_like_any_other(intake_app):
    intake = intake_app.components.intake
    accepted = intake.post(web_post(text="smile " + PAIR, data={"mood": PAIR}))
    assert accepted.message.content == "smile " + PAIR and accepted.message.data == {"mood": PAIR}
    assert intake.join(Submission(Source.WEB, username="Bob " + PAIR, connection="sid-b")).user.username == "Bob " + PAIR


@pytest.mark.parametrize("value, code", [
    (MAX_SAFE_INTEGER, None),
    (-MAX_SAFE_INTEGER, None),
    (2**53, "bad_field"),
    (-(2**53), "bad_field"),
    (NINE_HUNDRED_DIGITS, "bad_field"),
    (0, None),
    (1.5e300, None),   # a double: every client reads it
    (True, None),
], ids=["max-safe", "min-safe", "2^53", "-2^53", "900-digits", "zero", "big-double", "boolean"])
def test_data_integers_stay_within_javascripts_safe_range(intake_app, value, code):
    intake = intake_app.components.intake
    assert code_of(lambda: intake.post(web_post(data={"t": value}))) == code


def test_the_bound_is_javascripts_max_safe_integer():
    from chatroom.core import validation as messages

    assert getattr(messages, "MAX_SAFE_INTEGER", None) == MAX_SAFE_INTEGER == 9007199254740991


def test_numeric_message_ids_are_kept_as_text(intake_app):
    """A device's numeric message_id beyond 2^53 is not a number we send: it comes back as text."""
    intake = intake_app.components.intake
    accepted = intake.post(Submission(Source.MQTT, client_id="dev-1", text="hi", message_id=2**64))
    assert accepted.message.client_message_id == "18446744073709551616"
    assert json.loads(accepted.message.to_json())["client_message_id"] == "18446744073709551616"
    # Longer than a message_id may be: refused, not carried.
    assert code_of(lambda: intake.post(Submission(Source.MQTT, client_id="dev-1", text="hi",
                                                  message_id=NINE_HUNDRED_DIGITS))) == "bad_field"


# --- reserved names ------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["AI", "ai", "Al", "AL", "A|", "A\u01c0", "A\u04c0", "A1", "\u0391\u0399",
                                  "ＡＩ", "system", "sysTem",
                                  # review of issue 21: marks, spaces and punctuation between the letters
                                  "A\u0307I", "\u01cdl", "A\u01c0\u0301", "A.I", "A I", "A-I", "sys tem"])
def test_look_alikes_of_the_assistants_name_are_reserved(make_app, name):
    app = make_app()
    intake = app.components.intake
    assert code_of(lambda: intake.join(Submission(Source.WEB, username=name, connection="sid-x"))) == "bad_name"
    assert code_of(lambda: intake.post(Submission(Source.MQTT, client_id="dev-1", username=name, text="hi"))) == "bad_name"
    response = app.http.post("/api/messages", json={"username": name, "message": "hi"})
    assert response.status_code == 400 and response.get_json()["code"] == "bad_name"


@pytest.mark.parametrize("name", ["Alice", "Ali", "Bill", "Lily", "A2", "Al Green"])
def test_names_that_only_share_letters_with_the_assistants_stay_valid(make_app, name):
    app = make_app()
    accepted = app.components.intake.join(Submission(Source.WEB, username=name, connection="sid-x"))
    assert accepted.user.username == name


def test_folding_follows_ai_name(make_app):
    """AI_NAME=Bill: "BiII", "B1ll" and "bi|l" are Bill; "AI" and "Al" are ordinary names again."""
    app = make_app(AI_NAME="Bill")
    intake = app.components.intake
    for name in ("Bill", "BiII", "B1ll", "bi|l", "B\u0131ll"):
        assert code_of(lambda: intake.join(Submission(Source.WEB, username=name, connection="sid-x"))) == "bad_name", name
    for sid, name in enumerate(("AI", "Al", "Alice")):
        assert intake.join(Submission(Source.WEB, username=name, connection=f"sid-{sid}")).user.username == name


def test_ordinary_names_keep_their_equality(make_app):
    """The fold is for reserved names only: "All" and "Ail" are two people's names."""
    app = make_app()
    intake = app.components.intake
    intake.join(Submission(Source.WEB, username="All", connection="sid-1"))
    assert intake.join(Submission(Source.WEB, username="Ail", connection="sid-2")).user.username == "Ail"
    assert code_of(lambda: intake.join(Submission(Source.WEB, username="ALL", connection="sid-3"))) == "name_taken"


# --- end to end: a real server process (eventlet), real mosquitto, paho and python-socketio ---

@pytest.fixture
def server(broker, tmp_path, server_for):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet"))


def no_traceback(server) -> bool:
    return "Traceback" not in server.log_path.read_text(errors="replace")


def post_json(server, body: bytes) -> requests.Response:
    return requests.post(server.url + "/api/messages", data=body, timeout=TIMEOUT,
                         headers={"Content-Type": "application/json"})


def test_http_lone_surrogates_are_400_invalid_json(server):
    for body in ({"username": "cron", "message": "x" + LONE},
                 {"username": LONE_LOW + "x", "message": "hi"},
                 {"username": "cron", "message": "hi", "data": {"t": LONE}}):
        response = post_json(server, escaped(body))
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "invalid_json"
    response = post_json(server, escaped({"username": "cron", "message": "pair " + PAIR}))
    assert response.status_code == 201 and response.json()["message"]["content"] == "pair " + PAIR
    assert no_traceback(server)


def test_mqtt_lone_surrogates_are_one_invalid_json_error_and_no_ghost(server, probe_for):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    inbound = f"{prefix}/messages/in"
    bad = [(inbound, {"client_id": "ghost-1", "message": LONE}),
           (inbound, {"client_id": "ghost-2", "username": LONE_LOW + "x", "message": "hi"}),
           (inbound, {"client_id": "ghost-3", "message": "hi", "data": {"t": "a" + LONE}}),
           (f"{prefix}/users/join", {"client_id": "ghost-4", "username": LONE})]
    for topic, body in bad:
        probe.publish(topic, escaped(body))
    errors = [error.json() for error in probe.wait(f"{prefix}/errors", count=len(bad))]
    assert [e["code"] for e in errors] == ["invalid_json"] * len(bad)

    # The bridge goes on: the next good message is relayed, and a pair is just text.
    probe.publish(inbound, escaped({"client_id": "dev-ok", "message": "after " + PAIR}))
    out = probe.wait(f"{prefix}/messages/out")
    assert [o.json()["content"] for o in out] == ["after " + PAIR]
    joins = [s.json()["username"] for s in probe.on(f"{prefix}/system") if s.json()["event"] == "join"]
    assert joins == ["dev-ok"]
    users = requests.get(server.url + "/api/users", timeout=TIMEOUT).json()["users"]
    assert [u["client_id"] for u in users] == ["dev-ok"]
    assert len(probe.on(f"{prefix}/errors")) == len(bad)
    assert no_traceback(server)


def test_socketio_lone_surrogates_are_refused_in_the_ack(server, probe_for):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    with SocketIOClient(server.url) as web:
        ack = web.call("join", {"username": LONE_LOW + "x"})
        assert ack["ok"] is False and ack["code"] == "bad_name"
        assert web.call("join", {"username": "Alice"})["ok"]
        for payload in ({"message": LONE}, {"message": "hi", "data": {"t": LONE}},
                        {"message": "hi", "client_message_id": LONE}):
            ack = web.call("send_message", payload)
            assert ack["ok"] is False and ack["code"] == "bad_field", payload
        assert web.call("send_message", {"message": "pair " + PAIR})["ok"]
    out = probe.wait(f"{prefix}/messages/out")
    assert [o.json()["content"] for o in out] == ["pair " + PAIR]
    joins = [s.json()["username"] for s in probe.on(f"{prefix}/system") if s.json()["event"] == "join"]
    assert joins == ["Alice"]
    assert no_traceback(server)


def test_huge_integers_are_refused_and_the_room_stays_readable(server, probe_for):
    """A 900-digit integer once made every python-socketio client fail to decode the history."""
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    response = post_json(server, escaped({"username": "cron", "message": "big", "data": {"t": NINE_HUNDRED_DIGITS}}))
    assert response.status_code == 400 and response.json()["code"] == "bad_field"
    response = post_json(server, escaped({"username": "cron", "message": "edge", "data": {"t": 2**53}}))
    assert response.status_code == 400 and response.json()["code"] == "bad_field"
    probe.publish(f"{prefix}/messages/in", escaped({"client_id": "dev-big", "message": "big",
                                                    "data": {"t": NINE_HUNDRED_DIGITS}}))
    assert probe.wait(f"{prefix}/errors")[0].json()["code"] == "bad_field"
    response = post_json(server, escaped({"username": "cron", "message": "safe", "data": {"t": 2**53 - 1}}))
    assert response.status_code == 201

    with SocketIOClient(server.url) as web:
        ack = web.call("join", {"username": "Reader"})
        assert ack["ok"] and [(m["content"], m["data"]) for m in ack["history"]] == [("safe", {"t": 2**53 - 1})]
        # Within engineio's 100-digit packet limit, but still beyond what a browser can read.
        ack = web.call("send_message", {"message": "big", "data": {"t": 10**99}})
        assert ack["ok"] is False and ack["code"] == "bad_field"
    assert no_traceback(server)


def test_mqtt_look_alike_of_the_assistant_is_bad_name(server, probe_for):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    for n, name in enumerate(("Al", "A|", "A\u01c0", "A\u04c0", "A1")):
        probe.publish(f"{prefix}/messages/in", escaped({"client_id": f"fake-ai-{n}", "username": name,
                                                        "message": "I am the assistant"}))
    errors = [e.json() for e in probe.wait(f"{prefix}/errors", count=5)]
    assert {e["code"] for e in errors} == {"bad_name"}
    assert requests.get(server.url + "/api/users", timeout=TIMEOUT).json()["users"] == []


def test_no_error_is_logged_for_a_strangers_surrogate(make_app, probe_for, caplog):
    """In process (threading mode): the refusal is one warning line, never an exception log."""
    caplog.set_level(logging.WARNING)
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in", escaped({"client_id": "ghost", "message": LONE}))
    assert probe.wait(f"{app.prefix}/errors")[0].json()["code"] == "invalid_json"
    app.drain()
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert app.http.get("/api/users").get_json()["users"] == []


def test_a_lone_surrogate_on_a_device_topic_is_answered_to_that_device(make_app, probe_for):
    """PROTOCOL 10's device topics read the payload the same way; the reply names the topic's id.
    (Device topics came after ff77678: there this test fails for want of them.)"""
    app = make_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in/dev-proven", escaped({"message": "hot " + LONE}))
    error = probe.wait(f"{app.prefix}/errors")[0].json()
    assert (error["code"], error["client_id"]) == ("invalid_json", "dev-proven")
    probe.publish(f"{app.prefix}/messages/in/dev-proven", escaped({"message": "hot " + PAIR}))
    assert probe.wait(f"{app.prefix}/messages/out")[0].json()["content"] == "hot " + PAIR
    assert [u["client_id"] for u in app.http.get("/api/users").get_json()["users"]] == ["dev-proven"]
