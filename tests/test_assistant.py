"""The assistant through the real openai SDK against a fake OpenAI-compatible server."""
import logging
import threading

import pytest
from conftest import app_env
from fake_openai import FakeOpenAI

from support import MqttProbe, SocketIOClient, wait_for

API_KEY = "sk-test-not-a-real-key-0123"


@pytest.fixture
def fake():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture
def ai_app(make_app, fake):
    def make(**overrides):
        return make_app(OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=fake.base_url, AI_MODEL="fake-model",
                        **overrides)
    return make


def joined(app, name="Alice"):
    web = app.socket()
    assert web.emit("join", {"username": name}, callback=True)["ok"]
    return web


def system_events(app, web):
    app.drain()
    return [p["args"][0] for p in web.get_received() if p["name"] == "system_message"]


def test_web_mention_streams_then_posts_one_reply(ai_app, fake, probe_for):
    """`@AI …` from the web: ai_stream deltas, then one ai_response; published once on MQTT."""
    fake.behave(reply="It is 23.5 degrees in the kitchen.", chunk_size=4)
    app = ai_app()
    probe = probe_for(app.prefix)
    web = joined(app)
    ack = web.emit("send_message", {"message": "@AI how warm is the kitchen?"}, callback=True)
    reply = probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["type"] == "ai_response")[0].json()
    assert (reply["username"], reply["source"], reply["content"], reply["reply_to"]) == (
        "AI", "ai", "It is 23.5 degrees in the kitchen.", ack["message_id"])
    app.drain()
    received = web.get_received()
    streamed = [p["args"][0] for p in received if p["name"] == "ai_stream"]
    final = [p["args"][0] for p in received if p["name"] == "chat_message" and p["args"][0]["type"] == "ai_response"]
    assert "".join(d["delta"] for d in streamed) == reply["content"] and len(streamed) > 1
    assert {d["message_id"] for d in streamed} == {reply["message_id"]}
    assert {d["reply_to"] for d in streamed} == {ack["message_id"]}
    names = [p["name"] for p in received]
    assert names.index("ai_stream") < max(i for i, n in enumerate(names) if n == "chat_message"), "deltas first"
    assert final == [reply]
    assert len([r for r in probe.on(f"{app.prefix}/messages/out") if r.json()["type"] == "ai_response"]) == 1
    history = app.http.get("/api/messages").get_json()["messages"]
    assert history[-1]["message_id"] == reply["message_id"]
    assert fake.auth_headers[0] == f"Bearer {API_KEY}" and fake.requests[0]["model"] == "fake-model"


def test_device_mention_over_mqtt_is_answered_on_mqtt(ai_app, fake, probe_for):
    """A device's `/ai …` gets an ai_response on messages/out replying to its message."""
    app = ai_app()
    probe = probe_for(app.prefix)
    probe.publish(f"{app.prefix}/messages/in", {"client_id": "esp32-1", "message": "/ai is 30 C too hot?",
                                                "data": {"temperature": 30}})
    outs = probe.wait(f"{app.prefix}/messages/out", count=2)
    asked, reply = outs[0].json(), outs[1].json()
    assert reply["type"] == "ai_response" and reply["reply_to"] == asked["message_id"]
    last_turn = fake.requests[0]["messages"][-1]
    assert last_turn["role"] == "user" and last_turn["content"].startswith("esp32-1: is 30 C too hot?")
    assert "temperature" in last_turn["content"]


def test_context_has_recent_messages_with_names_and_own_replies_as_assistant(ai_app, fake):
    """Context: system prompt, last AI_CONTEXT_MESSAGES messages as `name: text`, replies as assistant."""
    app = ai_app(AI_CONTEXT_MESSAGES="4", AI_SYSTEM_PROMPT="Be terse.")
    for i in range(5):
        app.http.post("/api/messages", json={"username": "bob", "message": f"note {i}"})
    web = joined(app)
    web.emit("send_message", {"message": "@ai first?"}, callback=True)
    fake.wait_requests(1)
    wait_for(lambda: app.components.assistant.status()["in_flight"] == 0, what="first answer done")
    web.emit("send_message", {"message": "@AI second?"}, callback=True)
    second = fake.wait_requests(2)[1]["messages"]
    assert second[0] == {"role": "system", "content": "Be terse."}
    assert second[1:] == [
        {"role": "user", "content": "bob: note 4"},
        {"role": "user", "content": "Alice: first?"},
        {"role": "assistant", "content": fake.reply},
        {"role": "user", "content": "Alice: second?"},
    ]


def test_only_mentions_trigger_in_mention_mode(ai_app, fake, probe_for):
    """Plain messages and mid-sentence mentions are not questions for the assistant."""
    app = ai_app()
    probe = probe_for(app.prefix)
    web = joined(app)
    for text in ("hello", "ask @AI later", "@AIRPORT is closed", "/aim high"):
        web.emit("send_message", {"message": text}, callback=True)
    web.emit("send_message", {"message": "@AI: yes?"}, callback=True)
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["type"] == "ai_response")
    assert len(fake.requests) == 1


def test_all_mode_answers_everyone_but_never_itself(ai_app, fake, probe_for):
    """AI_REPLY_MODE=all: one user message, one reply, and the reply triggers nothing."""
    app = ai_app(AI_REPLY_MODE="all")
    probe = probe_for(app.prefix)
    app.http.post("/api/messages", json={"username": "cron", "message": "backup done"})
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["type"] == "ai_response")
    app.drain()
    app.drain()  # a reply to the reply would have been requested by now
    assert len(fake.requests) == 1
    assert app.components.assistant.status()["requests"] == 1


def test_off_mode_never_answers(ai_app, fake, probe_for):
    """AI_REPLY_MODE=off: mentions are ordinary messages."""
    app = ai_app(AI_REPLY_MODE="off")
    web = joined(app)
    web.emit("send_message", {"message": "@AI hello?"}, callback=True)
    app.drain()
    assert fake.requests == [] and app.components.assistant.status()["enabled"] is False


def test_at_most_two_requests_at_once(ai_app, fake, probe_for):
    """Three senders mention at once: two requests run, the third waits its turn, all answered."""
    gate = threading.Event()
    fake.behave(gate=gate)
    app = ai_app()
    probe = probe_for(app.prefix)
    clients = [joined(app, name) for name in ("A", "B", "C")]
    for client in clients:
        client.emit("send_message", {"message": "@AI hi"}, callback=True)
    fake.wait_in_flight(2)
    assert app.components.assistant.status()["in_flight"] == 2 and len(fake.requests) == 2
    gate.set()
    probe.wait(f"{app.prefix}/messages/out", count=3, match=lambda m: m["type"] == "ai_response")
    assert fake.max_in_flight == 2


def test_second_mention_while_pending_gets_a_polite_notice(ai_app, fake, probe_for):
    """One request per sender: a second mention while the first is pending gets ai_busy, no request."""
    gate = threading.Event()
    fake.behave(gate=gate)
    app = ai_app()
    probe = probe_for(app.prefix)
    web = joined(app)
    web.emit("send_message", {"message": "@AI one"}, callback=True)
    fake.wait_in_flight(1)
    web.emit("send_message", {"message": "@AI two"}, callback=True)
    busy = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "ai_busy")[0].json()
    assert "still answering" in busy["message"] and "Alice" in busy["message"]
    gate.set()
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["type"] == "ai_response")
    assert len(fake.requests) == 1


def test_timeout_gives_ai_error_and_the_next_question_works(ai_app, fake, probe_for):
    """A model slower than AI_TIMEOUT: ai_error event, counted; no crash; then it answers again."""
    fake.behave(delay=3)
    app = ai_app(AI_TIMEOUT="0.5")
    probe = probe_for(app.prefix)
    web = joined(app)
    web.emit("send_message", {"message": "@AI slow?"}, callback=True)
    error = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "ai_error", timeout=40)[0].json()
    assert "did not answer within 0.5 s" in error["message"]
    fake.behave(delay=0)
    web.emit("send_message", {"message": "@AI fast?"}, callback=True)
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["type"] == "ai_response", timeout=40)
    status = app.status()["assistant"]
    assert status["failures"] == 1 and status["requests"] == 2 and status["average_latency_ms"] > 0


@pytest.mark.parametrize("status, words", [(429, "busy"), (500, "HTTP 500"), (401, "API key")])
def test_api_errors_give_a_short_reason_and_never_the_key(ai_app, fake, probe_for, caplog, status, words):
    """429/500/401 from the endpoint: ai_error with a human reason; the key is in no log or message."""
    caplog.set_level(logging.DEBUG)
    fake.behave(fail_status=status)
    app = ai_app()
    probe = probe_for(app.prefix)
    web = joined(app)
    web.emit("send_message", {"message": "@AI hello"}, callback=True)
    error = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "ai_error", timeout=40)[0]
    assert words in error.json()["message"]
    assert all(API_KEY not in r.payload.decode() for r in probe.received)
    assert API_KEY not in caplog.text
    assert app.status()["assistant"]["failures"] == 1


def test_without_a_key_a_mention_says_not_configured(make_app, probe_for):
    """No OPENAI_API_KEY: the server runs, the assistant is off, a mention gets a system event."""
    app = make_app(OPENAI_API_KEY="")
    probe = probe_for(app.prefix)
    web = joined(app)
    web.emit("send_message", {"message": "@AI are you there?"}, callback=True)
    event = probe.wait(f"{app.prefix}/system", match=lambda e: e["event"] == "ai_error")[0].json()
    assert "not configured" in event["message"]
    assert app.status()["assistant"] == {"enabled": False, "model": None, "reply_mode": "mention",
                                         "requests": 0, "failures": 0, "refused": 0, "waiting": 0,
                                         "in_flight": 0, "average_latency_ms": None}


def test_slow_model_does_not_delay_the_relay(ai_app, fake, broker):
    """While a 5 s answer is pending, 50 MQTT messages relay (all arrive before the answer)."""
    gate = threading.Event()
    fake.behave(gate=gate)
    app = ai_app()
    with MqttProbe(broker.port, f"{app.prefix}/messages/out") as probe:
        probe.publish(f"{app.prefix}/messages/in", {"client_id": "asker", "message": "@AI think hard"})
        fake.wait_in_flight(1)
        for i in range(50):
            probe.publish(f"{app.prefix}/messages/in", {"client_id": "sensor", "message": f"reading {i}"})
        probe.wait(f"{app.prefix}/messages/out", count=51)
        assert fake.in_flight == 1, "the assistant is still thinking while all 50 went through"
        assert not [r for r in probe.received if r.json()["type"] == "ai_response"]
        gate.set()
        probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["type"] == "ai_response")


def test_metrics_count_assistant_requests(ai_app, fake, probe_for):
    """/metrics exposes the assistant's counters."""
    app = ai_app()
    probe = probe_for(app.prefix)
    joined(app).emit("send_message", {"message": "@AI count me"}, callback=True)
    probe.wait(f"{app.prefix}/messages/out", match=lambda m: m["type"] == "ai_response")
    text = app.http.get("/metrics").get_data(as_text=True)
    assert "chatroom_assistant_requests_total 1.0" in text and "chatroom_assistant_failures_total 0.0" in text


@pytest.mark.parametrize("mode", ["eventlet", "threading"])
def test_assistant_in_a_real_server_process(mode, broker, tmp_path, server_for, fake):
    """Both async modes: a web client's mention is streamed and answered by the real server."""
    fake.behave(reply="Streaming works in every mode.", chunk_size=3)
    env = app_env(broker, tmp_path, ASYNC_MODE=mode, OPENAI_API_KEY=API_KEY, OPENAI_BASE_URL=fake.base_url)
    server = server_for(env)
    assert server.status()[1]["assistant"]["enabled"] is True
    with SocketIOClient(server.url) as client:
        assert client.call("join", {"username": "Alice"})["ok"]
        ack = client.call("send_message", {"message": "@AI stream please"})
        first = client.until("ai_stream")
        assert first["reply_to"] == ack["message_id"]
        reply = client.until("chat_message", lambda m: m["type"] == "ai_response")
        assert reply["content"] == "Streaming works in every mode." and reply["message_id"] == first["message_id"]
    assert "assistant on (gpt-4o-mini)" in server.logs() or "assistant on" in server.logs()


def test_forty_mentions_from_forty_devices_stay_within_the_queue_and_budget(ai_app, fake, probe_for):
    """PROTOCOL 9: 2 in flight + AI_QUEUE_SIZE waiting; the rest get ai_busy, and no request
    carries more than max_tokens or AI_CONTEXT_BYTES of context."""
    gate = threading.Event()
    fake.behave(gate=gate)
    app = ai_app(AI_QUEUE_SIZE="3", AI_MAX_TOKENS="64", AI_CONTEXT_BYTES="2048")
    probe = probe_for(app.prefix)
    for number in range(40):
        probe.publish(f"{app.prefix}/messages/in", {"client_id": f"dev-{number}", "message": "@AI " + "x" * 1500})
    probe.wait(f"{app.prefix}/messages/out", count=40)
    busy = probe.wait(f"{app.prefix}/system", count=35, match=lambda e: e["event"] == "ai_busy")
    assert "too many questions waiting" in busy[0].json()["message"]
    fake.wait_in_flight(2)
    status = app.components.assistant.status()
    assert (status["in_flight"], status["waiting"], status["refused"], status["requests"]) == (2, 3, 35, 5)
    gate.set()
    probe.wait(f"{app.prefix}/messages/out", count=5, match=lambda m: m["type"] == "ai_response")
    app.drain()
    assert len(fake.requests) == 5
    for body in fake.requests:
        assert body["max_tokens"] == 64
        assert sum(len(turn["content"].encode()) for turn in body["messages"]) <= 2048


def test_the_per_minute_budget_holds_whatever_the_number_of_senders(ai_app, fake, probe_for):
    app = ai_app(AI_REQUESTS_PER_MINUTE="3")
    probe = probe_for(app.prefix)
    for number in range(5):
        probe.publish(f"{app.prefix}/messages/in", {"client_id": f"dev-{number}", "message": "@AI hi"})
    busy = probe.wait(f"{app.prefix}/system", count=2, match=lambda e: e["event"] == "ai_busy")
    assert "its share for this minute" in busy[0].json()["message"]
    probe.wait(f"{app.prefix}/messages/out", count=3, match=lambda m: m["type"] == "ai_response")
    app.drain()
    assert len(fake.requests) == 3
