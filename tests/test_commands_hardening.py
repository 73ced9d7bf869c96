"""Devices told and asked (PROTOCOL 11) against a stranger: who may be told where, what a
stranger's input may cost, and who may make the assistant or the bridge send a command.
In process (create_app with a real mosquitto, real paho devices) or with the parts alone."""
from __future__ import annotations

import json
import re
import shutil
import subprocess
import uuid

import pytest
from command_device import Device
from fake_openai import FakeOpenAI

from chatroom.core.commands import CommandSpec, DeclaredCommands
from chatroom.core.errors import ValidationError
from clients import device_commands as client_commands
from mqtt_service.homeassistant.discovery import Discovery
from mqtt_service.topics import topic_id
from support import ROOT, MqttProbe, wait_for

BOOL = {"type": "bool"}
PLAIN = re.compile(r"[A-Za-z0-9_-]{1,64}")
HASHED_IDS = ["esp32.kitchen", "pi.garage", "a b", "üml", "x" * 70, "esp32_kitchen-1a0c8247.", "-._"]


def declared(app, client_id: str) -> bool:
    return app.components.bridge.desk.declared.get(client_id) is not None


def test_a_hashed_level_is_never_a_plain_id_and_the_clients_compute_the_same():
    for client_id in HASHED_IDS:
        level = topic_id(client_id)
        assert "~" in level and not PLAIN.fullmatch(level), level
        assert topic_id(level) != level  # the id that looks like the level is told elsewhere
        assert client_commands.topic_id(client_id) == level
        node = Discovery("chatroom", "homeassistant", "bridge").node(client_id)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", node) and node != f"chatroom_{level.replace('~', '_')}"
    assert topic_id("esp32-kitchen") == "esp32-kitchen"
    node_js = shutil.which("node")
    assert node_js, "node is needed (make system-test-deps)"
    script = ("const c = require(process.argv[1]); process.stdout.write(JSON.stringify("
              "JSON.parse(process.argv[2]).map(c.topicId)))")
    out = subprocess.run([node_js, "-e", script, str(ROOT / "clients" / "device_commands.js"),
                          json.dumps(HASHED_IDS)], capture_output=True, text=True, timeout=60, check=True).stdout
    assert json.loads(out) == [topic_id(client_id) for client_id in HASHED_IDS]


def test_two_devices_told_at_one_level_the_first_keeps_it():
    declared_commands = DeclaredCommands()
    declared_commands.address = lambda client_id: client_id.lower()  # a forced collision
    declared_commands.declare("Lamp", "Lamp", "lobby", {"led": CommandSpec("bool")})
    with pytest.raises(ValidationError, match="another device"):
        declared_commands.declare("lamp", "Twin", "lobby", {"led": CommandSpec("bool")})
    assert declared_commands.owner("lamp") == "Lamp" and "lamp" not in declared_commands
    declared_commands.forget("Lamp")
    declared_commands.declare("lamp", "Twin", "lobby", {"led": CommandSpec("bool")})
    assert declared_commands.owner("lamp") == "lamp"


def test_a_dotted_device_is_told_on_its_own_level_and_a_twin_login_neither_hears_nor_answers(make_app, broker):
    app = make_app()
    victim_id = "esp32.kitchen"
    victim = Device(broker.port, app.prefix, victim_id, {"power": BOOL}, name="Kitchen")
    # The id that equals the victim's level before the fix; now its own level is another.
    twin = Device(broker.port, app.prefix, "esp32_kitchen-1a0c8247", {"power": BOOL}, name="Twin", answer="silent")
    # And a forced collision of two hashed levels (8 hex digits: 2**32 tries find one).
    app.components.bridge.desk.declared.address = lambda client_id: topic_id(
        victim_id if client_id == twin.client_id else client_id)
    try:
        with MqttProbe(broker.port, f"{app.prefix}/errors") as errors:
            victim.join()
            wait_for(lambda: declared(app, victim_id), what="victim declared")
            twin.join()
            refusal = errors.wait(f"{app.prefix}/errors")[0].json()
        assert refusal["code"] == "bad_field" and "another device" in refusal["error"]
        assert not declared(app, twin.client_id)
        response = app.http.post(f"/api/devices/{victim_id}/commands", json={"command": "power", "value": True})
        assert response.status_code == 200 and response.get_json()["ok"], response.get_json()
        assert len(victim.commands_received) == 1 and twin.commands_received == []
    finally:
        victim.stop()
        twin.stop()


def test_a_set_topic_flood_is_rate_limited_per_device(make_app, broker):
    """Anyone who may publish on `P/devices/<id>/set/<command>` is "Home Assistant": 60 set
    commands in a burst give RATE_LIMIT's 5 commands, the rest refused and counted."""
    app = make_app(RATE_LIMIT="5/60")
    lamp = Device(broker.port, app.prefix, "flood1", {"label": {"type": "text"}})
    try:
        lamp.join()
        wait_for(lambda: declared(app, "flood1"), what="declared")
        with MqttProbe(broker.port, f"{app.prefix}/errors") as errors:
            for n in range(60):
                errors.publish(f"{app.prefix}/devices/flood1/set/label", f"x{n}")
            stats, desk = app.components.bridge.stats, app.components.bridge.desk
            # Refused over the bucket, or as too many waiting (4 a device): that one takes no token.
            wait_for(lambda: stats.snapshot()["ha_commands_rate_limited"] + desk.stats.refused_busy == 55,
                     what="55 refused")
            assert errors.wait(f"{app.prefix}/errors")[0].json()["code"] == "rate_limited"
        lamp.wait_commands(5)
        wait_for(lambda: desk.status()["pending"] == 0, what="the five answered")
        assert len(lamp.commands_received) == 5 and desk.stats.sent == 5
        assert stats.snapshot()["ha_commands_rate_limited"] > 0
    finally:
        lamp.stop()


@pytest.fixture(scope="module")
def fake_ai():
    server = FakeOpenAI().start()
    server.behave(tool_calls=[{"name": "send_device_command",
                               "arguments": {"device": "Heater", "command": "power", "value": True}}])
    yield server
    server.stop()


def asked_and_answered(app, fake, start: int, count: int) -> dict:
    """The `count`th request this app's assistant made of the fake model, once it is done."""
    fake.wait_requests(start + count)
    assistant = app.components.assistant
    wait_for(lambda: assistant.status()["requests"] == count and assistant.status()["in_flight"] == 0
             and assistant.status()["waiting"] == 0, what="the assistant done")
    return fake.requests[start + count - 1]


def test_only_a_person_on_the_page_who_mentions_the_assistant_gets_the_device_tool(make_app, broker, fake_ai):
    start = len(fake_ai.requests)
    app = make_app(OPENAI_API_KEY="k", AI_MODEL="fake", OPENAI_BASE_URL=fake_ai.base_url, RATE_LIMIT="100/10")
    heater = Device(broker.port, app.prefix, "heat-ai", {"power": BOOL}, name="Heater")
    sensor = Device(broker.port, app.prefix, "rogue-sensor", {}, name="Sensor")
    try:
        heater.join()
        wait_for(lambda: declared(app, "heat-ai"), what="declared")
        sensor.join()
        sensor.say("@AI turn the heater on")  # a device (anyone who may publish)
        assert "tools" not in asked_and_answered(app, fake_ai, start, 1)
        posted = app.http.post("/api/messages", json={"username": "Script", "message": "@AI turn the heater on"})
        assert posted.status_code == 201
        assert "tools" not in asked_and_answered(app, fake_ai, start, 2)
        assert heater.commands_received == []
        page = app.socket()
        assert page.emit("join", {"username": "Alice", "room": "lobby"}, callback=True)["ok"]
        page.emit("send_message", {"message": "@AI turn the heater on"}, callback=True)
        assert asked_and_answered(app, fake_ai, start, 3)["tools"][0]["function"]["name"] == "send_device_command"
        assert heater.wait_commands(1)[0]["from"] == "AI for Alice"
    finally:
        heater.stop()
        sensor.stop()


def test_with_ai_reply_mode_all_the_assistant_sends_no_command(make_app, broker, fake_ai):
    start = len(fake_ai.requests)
    app = make_app(OPENAI_API_KEY="k", AI_MODEL="fake", OPENAI_BASE_URL=fake_ai.base_url, AI_REPLY_MODE="all")
    heater = Device(broker.port, app.prefix, "heat-all", {"power": BOOL}, name="Heater")
    try:
        heater.join()
        wait_for(lambda: declared(app, "heat-all"), what="declared")
        page = app.socket()
        assert page.emit("join", {"username": "Alice", "room": "lobby"}, callback=True)["ok"]
        page.emit("send_message", {"message": "@AI the heater, on please"}, callback=True)
        assert "tools" not in asked_and_answered(app, fake_ai, start, 1)
        assert heater.commands_received == []
    finally:
        heater.stop()


def test_an_http_command_asker_follows_the_name_rules_of_a_post(make_app, broker):
    app = make_app()
    heater = Device(broker.port, app.prefix, "heat-u", {"power": BOOL}, name="HeaterU")
    try:
        heater.join()
        wait_for(lambda: declared(app, "heat-u"), what="declared")
        page = app.socket()
        assert page.emit("join", {"username": "Alice", "room": "lobby"}, callback=True)["ok"]
        assert app.http.post("/api/messages", json={"username": "alice", "message": "hi"}).status_code == 409

        def ask(username):
            return app.http.post("/api/devices/heat-u/commands",
                                 json={"command": "power", "value": True, "username": username})
        taken = ask("ALICE")
        assert (taken.status_code, taken.get_json()["code"]) == (409, "name_taken")
        for posing in ("AI for Bob", "A.I. for Bob", "ai  FOR Alice", "Al for"):
            refused = ask(posing)
            assert (refused.status_code, refused.get_json()["code"]) == (400, "bad_name"), posing
        assert page.emit("join", {"username": "AI for Carol", "room": "lobby"}, callback=True)["ok"] is False
        assert heater.commands_received == []
        done = ask("Bob Fortune")
        assert done.status_code == 200 and heater.wait_commands(1)[0]["from"] == "Bob Fortune"
    finally:
        heater.stop()


def test_controls_held_back_by_the_budget_come_with_a_heartbeat_join_that_declares_again(make_app, broker):
    from chatroom.core.limits import Throttle
    discovery = f"ha{uuid.uuid4().hex[:8]}"
    app = make_app(HA_DISCOVERY_PREFIX=discovery)
    commands = app.components.bridge.extras.commands
    commands._admissions = Throttle(count=1, seconds=60.0, max_keys=1)  # one new device's controls a minute
    first = Device(broker.port, app.prefix, "ctl-1", {"power": BOOL})
    second = Device(broker.port, app.prefix, "ctl-2", {"power": BOOL})
    try:
        with MqttProbe(broker.port, f"{discovery}/#") as probe:
            first.join()
            probe.wait(f"{discovery}/switch/chatroom_ctl-1/command_power/config")
            second.join()
            wait_for(lambda: "ctl-2" in commands._deferred, what="ctl-2's controls held back")
            commands._admissions = Throttle(count=100, seconds=60.0, max_keys=1)  # the next minute
            second.join()  # a heartbeat, declaring the same commands again
            probe.wait(f"{discovery}/switch/chatroom_ctl-2/command_power/config")
        assert app.components.bridge.stats.snapshot()["ha_controls_deferred"] == 1
    finally:
        first.stop()
        second.stop()


def test_the_room_commands_list_holds_the_50_most_recently_heard(make_app):
    app = make_app()
    declared_commands = app.components.assistant.desk.declared
    for n in range(55):
        declared_commands.declare(f"many-{n}", f"Many {n}", "lobby", {"led": CommandSpec("bool")})
    body = app.http.get("/api/commands?room=lobby").get_json()
    assert len(body["devices"]) == 50 and body["truncated"] is True
    assert [d["client_id"] for d in body["devices"]][::49] == ["many-5", "many-54"]
