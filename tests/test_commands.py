"""Devices that can be told (PROTOCOL 11), end to end: `python app.py` (eventlet) with a
real mosquitto, real paho devices, the fake OpenAI server, Home Assistant's topics and
Debian's chromium. One server for the module; each test keeps to its own devices and room."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid

import jinja2
import pytest
import requests
from command_device import Device
from conftest import app_env
from fake_openai import FakeOpenAI
from ha_schema import validate

from support import ROOT, TIMEOUT, MqttProbe, ServerProcess, SocketIOClient, wait_for

BOOL = {"type": "bool"}


@pytest.fixture(scope="module")
def fake_ai():
    server = FakeOpenAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def server(broker, tmp_path_factory, fake_ai):
    workdir = tmp_path_factory.mktemp("commands")
    env = app_env(broker, workdir, ASYNC_MODE="eventlet", OPENAI_API_KEY="test-key", AI_MODEL="fake-model",
                  OPENAI_BASE_URL=fake_ai.base_url, HA_DISCOVERY_PREFIX=f"ha{uuid.uuid4().hex[:8]}")
    process = ServerProcess(env, log_path=workdir / "server.log").start()
    yield process
    process.stop()


@pytest.fixture
def device(broker, server):
    made: list[Device] = []

    def make(client_id: str, commands: dict, join: bool = True, **options) -> Device:
        made.append(Device(broker.port, server.env["MQTT_TOPIC_PREFIX"], client_id, commands, **options))
        if join:
            made[-1].join()
            wait_for(lambda: declared(server, client_id), what=f"{client_id}'s commands declared")
        return made[-1]

    yield make
    for one in made:
        one.stop()


@pytest.fixture
def probe(broker, server):
    with MqttProbe(broker.port, f"{server.env['MQTT_TOPIC_PREFIX']}/#") as mqtt_probe:
        yield mqtt_probe


def declared(server, client_id: str) -> dict | None:
    response = requests.get(f"{server.url}/api/devices/{client_id}/commands", timeout=TIMEOUT)
    return response.json() if response.status_code == 200 and response.json()["commands"] else None


def command(server, client_id: str, **body) -> requests.Response:
    return requests.post(f"{server.url}/api/devices/{client_id}/commands", json=body, timeout=TIMEOUT + 60)


def events(probe, topic: str, event: str, count: int = 1) -> list[dict]:
    return [hit.json() for hit in probe.wait(topic, count, match=lambda body: body.get("event") == event)]


def test_an_http_command_reaches_the_device_and_its_ack_is_the_answer(server, device, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    heater = device("heater-1", {"power": BOOL, "setpoint": {"type": "number", "min": 5, "max": 30}},
                    name="Heater", room="kitchen")
    response = command(server, "heater-1", command="power", value=False, username="Alice")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] and answer["ok"] and answer["result"] == {"now": False}
    sent = heater.wait_commands(1)[0]
    assert (sent["command_id"], sent["command"], sent["value"], sent["from"]) == (
        answer["command_id"], "power", False, "Alice")
    assert sent["timestamp"].endswith("+00:00")
    # The room's audit trail: live on P/R/system, and stored in history in the same order.
    asked = events(probe, f"{prefix}/kitchen/system", "command")[0]
    result = events(probe, f"{prefix}/kitchen/system", "command_result")[0]
    assert (asked["client_id"], asked["device"], asked["command"], asked["value"], asked["from"]) == (
        "heater-1", "Heater", "power", False, "Alice")
    assert (result["status"], result["ok"], result["result"], result["command_id"]) == (
        "ok", True, {"now": False}, answer["command_id"])
    history = requests.get(f"{server.url}/api/messages?room=kitchen", timeout=TIMEOUT).json()["messages"]
    records = [m for m in history if m["type"] == "system_message"]
    assert [m["data"]["event"] for m in records] == ["command", "command_result"]
    assert records[0]["seq"] < records[1]["seq"] and records[0]["client_id"] is None
    assert records[1]["content"] == result["message"]
    metrics = requests.get(f"{server.url}/metrics", timeout=TIMEOUT).text
    answered = [line for line in metrics.splitlines() if line.startswith("chatroom_commands_answered_total ")]
    assert answered and float(answered[0].split()[1]) >= 1


def test_bad_commands_are_refused_with_their_code_and_reach_no_device(server, device):
    thermostat = device("thermo-1", {"setpoint": {"type": "number", "min": 5, "max": 30},
                                     "mode": {"type": "enum", "options": ["eco", "comfort"]}}, room="hall")
    cases = [
        ("nobody-ever", {"command": "setpoint", "value": 20}, 404, "unknown_device"),
        ("thermo-1", {"command": "boost", "value": True}, 400, "bad_field"),
        ("thermo-1", {"command": "setpoint", "value": 31}, 400, "bad_field"),
        ("thermo-1", {"command": "setpoint", "value": True}, 400, "bad_field"),
        ("thermo-1", {"command": "mode", "value": "turbo"}, 400, "bad_field"),
        ("thermo-1", {"command": "setpoint"}, 400, "missing_field"),
        ("thermo-1", {"command": "setpoint", "value": 20, "timeout": 0}, 400, "bad_field"),
    ]
    for client_id, body, status, code in cases:
        response = command(server, client_id, **body)
        assert (response.status_code, response.json()["code"]) == (status, code), (body, response.text)
    assert command(server, "thermo-1", command="mode", value="eco").json()["ok"]
    assert [sent["value"] for sent in thermostat.wait_commands(1)] == ["eco"]


def test_a_silent_device_times_out_and_a_late_answer_is_recorded(server, device, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    sleepy = device("sleepy-1", {"power": BOOL}, room="attic", answer="silent")
    other = device("other-1", {"power": BOOL}, room="attic", answer="silent")
    response = command(server, "sleepy-1", command="power", value=True, timeout=1)
    assert (response.status_code, response.json()["code"]) == (504, "timeout")
    command_id = response.json()["command_id"]
    assert sleepy.wait_commands(1)[0]["command_id"] == command_id
    timed_out = events(probe, f"{prefix}/attic/system", "command_result")[0]
    assert (timed_out["status"], timed_out["ok"]) == ("timeout", False)
    # Another device answering it on its own topic is not the device the command went to.
    ignored_before = server.status()[1]["mqtt_status"]["acks_ignored"]
    other.ack(command_id, True)
    wait_for(lambda: server.status()[1]["mqtt_status"]["acks_ignored"] == ignored_before + 1,
             what="the foreign ack counted as ignored")
    sleepy.ack(command_id, True, result="finally")
    late = events(probe, f"{prefix}/attic/system", "command_result", 2)[1]
    assert (late["status"], late["ok"], late["result"], late["command_id"]) == ("late", True, "finally", command_id)
    assert other.commands_received == []


def test_an_offline_device_is_refused_and_nothing_is_sent(server, device):
    gone = device("gone-1", {"power": BOOL}, room="garage")
    gone.leave()
    wait_for(lambda: not declared(server, "gone-1")["online"], what="gone-1 offline")
    response = command(server, "gone-1", command="power", value=True)
    assert (response.status_code, response.json()["code"]) == (409, "device_offline")
    gone.join()  # back: commands work again
    wait_for(lambda: declared(server, "gone-1")["online"], what="gone-1 online")
    assert command(server, "gone-1", command="power", value=True).json()["ok"]
    assert [sent["value"] for sent in gone.wait_commands(1)] == [True]


def test_a_bad_declaration_refuses_the_whole_join(server, device, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    broken = device("broken-1", {"power": {"type": "bool", "colour": "red"}}, join=False, room="cellar")
    broken.join()
    error = probe.wait(f"{prefix}/errors", match=lambda body: body.get("client_id") == "broken-1")[0].json()
    assert error["code"] == "bad_field" and "commands.power" in error["error"]
    users = requests.get(f"{server.url}/api/users?room=cellar", timeout=TIMEOUT).json()["users"]
    assert users == []
    assert requests.get(f"{server.url}/api/devices/broken-1/commands", timeout=TIMEOUT).status_code == 404


def test_home_assistant_controls_drive_the_device_and_follow_its_acks(server, device, broker):
    ha = server.env["HA_DISCOVERY_PREFIX"]
    lamp = device("lamp-ha", {"power": BOOL, "level": {"type": "number", "min": 0, "max": 100},
                              "scene": {"type": "enum", "options": ["day", "night"]},
                              "label": {"type": "text", "max": 40}}, name="Lamp", room="den")
    with MqttProbe(broker.port, f"{ha}/+/chatroom_lamp-ha/#") as ha_probe:
        configs = {component: ha_probe.wait(f"{ha}/{component}/chatroom_lamp-ha/command_{name}/config")[0].json()
                   for component, name in (("switch", "power"), ("number", "level"), ("select", "scene"),
                                           ("text", "label"))}
        # Home Assistant's birth announces the controls again; a narrower declaration clears the rest.
        ha_probe.publish(f"{ha}/status", "online")
        ha_probe.wait(f"{ha}/switch/chatroom_lamp-ha/command_power/config", 2)
        lamp.join({"power": BOOL, "level": {"type": "number", "min": 0, "max": 100}})
        for gone in (f"{ha}/text/chatroom_lamp-ha/command_label/config",
                     f"{ha}/select/chatroom_lamp-ha/command_scene/config"):
            wait_for(lambda: any(r.payload == b"" for r in ha_probe.on(gone)), what=f"{gone} cleared")
        assert all(r.payload for r in ha_probe.on(f"{ha}/number/chatroom_lamp-ha/command_level/config"))
    for component, config in configs.items():
        validate(component, config)
    switch = configs["switch"]
    assert configs["select"]["options"] == ["day", "night"]
    assert (configs["number"]["min"], configs["number"]["max"]) == (0, 100)
    with MqttProbe(broker.port, switch["state_topic"]) as state_probe:
        state_probe.publish(switch["command_topic"], "ON")  # what Home Assistant sends
        sent = lamp.wait_commands(1)[0]
        assert (sent["command"], sent["value"], sent["from"]) == ("power", True, "Home Assistant")
        state = state_probe.wait(switch["state_topic"], match=lambda body: "power" in body)[-1]
    assert state.json() == {"power": True}
    rendered = jinja2.Environment().from_string(switch["value_template"]).render(value_json=state.json())
    assert rendered == switch["state_on"] == "ON"
    unknown = jinja2.Environment().from_string(configs["number"]["value_template"]).render(value_json=state.json())
    assert unknown == "None"  # Home Assistant's "unknown", until the level is first acknowledged


def test_the_assistant_sends_a_declared_command_when_asked(server, device, fake_ai, probe):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    heater = device("kheater", {"power": BOOL}, name="Kitchen heater", room="ai-home")
    fake_ai.behave(tool_calls=[{"name": "send_device_command",
                                "arguments": {"device": "Kitchen heater", "command": "power", "value": False}}])
    try:
        with SocketIOClient(server.url) as alice:
            assert alice.call("join", {"username": "Alice", "room": "ai-home"})["ok"]
            assert alice.call("send_message", {"message": "@AI turn the kitchen heater off"})["ok"]
            sent = heater.wait_commands(1)[0]
            reply = alice.until("chat_message", lambda m: m["type"] == "ai_response")
    finally:
        fake_ai.behave(tool_calls=[])
    assert (sent["command"], sent["value"], sent["from"]) == ("power", False, "AI for Alice")
    assert "Done: Kitchen heater power = false" in reply["content"]
    tools = fake_ai.requests[-1]["tools"]
    assert tools[0]["function"]["name"] == "send_device_command"
    assert "\"Kitchen heater\" (client_id \"kheater\")" in tools[0]["function"]["description"]
    asked = events(probe, f"{prefix}/ai-home/system", "command")[0]
    assert (asked["from"], asked["source"]) == ("AI for Alice", "ai")


def test_the_assistant_refuses_an_ambiguous_device_and_says_so(server, device, fake_ai):
    fans = [device(f"fan-{n}", {"power": BOOL}, name="Fan", room="ai-fans") for n in (1, 2)]
    fake_ai.behave(tool_calls=[{"name": "send_device_command",
                                "arguments": {"device": "Fan", "command": "power", "value": True}}])
    try:
        with SocketIOClient(server.url) as bob:
            assert bob.call("join", {"username": "Bob", "room": "ai-fans"})["ok"]
            assert bob.call("send_message", {"message": "@AI switch the fan on"})["ok"]
            reply = bob.until("chat_message", lambda m: m["type"] == "ai_response")
    finally:
        fake_ai.behave(tool_calls=[])
    assert "did not send it" in reply["content"] and "ambiguous" in reply["content"]
    assert all(fan.commands_received == [] for fan in fans)


def test_a_page_toggle_and_cmd_drive_a_device(server, device, browser):
    from browser_support import open_chat, send
    from playwright.sync_api import expect

    lamp = device("lamp-page", {"power": BOOL, "level": {"type": "number", "min": 0, "max": 100},
                                "scene": {"type": "enum", "options": ["day", "night", "<img src=x onerror=alert(1)>"]}},
                  name="Desk <b>lamp</b>")
    page = open_chat(browser, server, "Pat")
    controls = page.locator('li.device-controls[data-device="lamp-page"]')
    expect(controls.locator(".who")).to_have_text("Desk <b>lamp</b>")  # text, never markup
    controls.locator('[data-command="power"] input[type=checkbox]').check()
    assert lamp.wait_commands(1)[0]["value"] is True
    expect(controls.locator('[data-command="power"] output')).to_have_text('ok: {"now":true}')
    expect(controls.locator('[data-command="scene"] option').last).to_have_text("<img src=x onerror=alert(1)>")
    assert controls.locator("img").count() == 0
    controls.locator('[data-command="scene"] select').select_option("night")
    assert lamp.wait_commands(2)[1]["value"] == "night"
    send(page, "/cmd lamp-page level 40")
    third = lamp.wait_commands(3)[2]
    assert (third["command"], third["value"], third["from"]) == ("level", 40, "Pat")
    expect(page.locator("#messages .system-command_result").last).to_contain_text("level done")
    page.context.close()
    # A page that joins later reads the audit trail from history as system lines, not as readings.
    later = open_chat(browser, server, "Quinn")
    expect(later.locator("#messages .system-command_result").last).to_contain_text("level done")
    expect(later.locator("#readings")).not_to_contain_text("command_id")
    later.context.close()


def test_a_device_that_declares_nothing_has_no_commands(server, broker):
    with MqttProbe(broker.port) as plain:
        plain.publish(f"{server.env['MQTT_TOPIC_PREFIX']}/messages/in/plain-1", json.dumps({"message": "hi"}))
        wait_for(lambda: requests.get(f"{server.url}/api/users", timeout=TIMEOUT).json()["users"],
                 what="plain-1 joined")
    response = command(server, "plain-1", command="power", value=True)
    assert (response.status_code, response.json()["code"]) == (400, "bad_field")
    listed = requests.get(f"{server.url}/api/commands", timeout=TIMEOUT).json()["devices"]
    assert "plain-1" not in [d["client_id"] for d in listed]


def test_the_command_route_is_token_guarded_and_rate_limited(make_app, broker):
    app = make_app(API_TOKEN="s3cret", RATE_LIMIT="1/60")
    auth = {"Authorization": "Bearer s3cret"}
    lamp = Device(broker.port, app.prefix, "rl-1", {"power": BOOL})
    try:
        lamp.join()
        wait_for(lambda: app.http.get("/api/devices/rl-1/commands", headers=auth).status_code == 200,
                 what="rl-1 declared")
        body = {"command": "power", "value": True}
        assert app.http.post("/api/devices/rl-1/commands", json=body).status_code == 401
        assert app.http.post("/api/devices/rl-1/commands", json={**body, "value": "hot"},
                             headers=auth).status_code == 400  # refused: takes no token
        assert app.http.post("/api/devices/rl-1/commands", json=body, headers=auth).get_json()["ok"]
        limited = app.http.post("/api/devices/rl-1/commands", json=body, headers=auth)
        assert (limited.status_code, limited.get_json()["code"]) == (429, "rate_limited")
        assert int(limited.headers["Retry-After"]) > 0
        assert len(lamp.wait_commands(1)) == 1
    finally:
        lamp.stop()


def test_the_readme_command_round_trip_works_as_written(server, broker, probe):
    """README's three lines (mosquitto_pub, a mosquitto_sub | jq loop, curl), run by the shell
    against this server: only the prefix, the broker's port and the server's address change."""
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if "lamp-1" in line]
    assert len(lines) == 3, lines

    def ours(line: str) -> str:
        return (line.replace("chatroom/", f"{prefix}/").replace("localhost:5000", server.url)
                .replace("mosquitto_pub ", f"mosquitto_pub -p {broker.port} ")
                .replace("mosquitto_sub ", f"mosquitto_sub -p {broker.port} "))

    join, loop, curl = map(ours, lines)
    subprocess.run(["sh", "-c", join], check=True, timeout=TIMEOUT)
    wait_for(lambda: declared(server, "lamp-1"), what="lamp-1 declared")
    device = subprocess.Popen(["sh", "-c", loop.rstrip("& ")], start_new_session=True)
    try:
        # The loop answers once it is subscribed: a stray command's ack proves it listens.
        ignored = server.status()[1]["mqtt_status"]["acks_ignored"]
        stray = json.dumps({"command_id": "stray", "command": "power", "value": False})
        wait_for(lambda: probe.publish(f"{prefix}/devices/lamp-1/commands", stray) or
                 server.status()[1]["mqtt_status"]["acks_ignored"] > ignored, what="the shell device listening")
        answer = subprocess.run(["sh", "-c", curl], check=True, capture_output=True, timeout=TIMEOUT + 30)
        assert json.loads(answer.stdout)["ok"] is True and json.loads(answer.stdout)["result"] is True
    finally:
        os.killpg(device.pid, signal.SIGTERM)
        device.wait(TIMEOUT)


def test_the_page_stops_asking_about_a_device_that_declares_nothing(server, browser, broker):
    """A device's message makes the page look for its controls once; when it declares
    nothing, its next messages make none (page clock faked: no waiting out the 2 s gap).
    A user list (sent a moment after any presence change) makes a look of its own: those
    are counted apart."""
    from playwright.sync_api import expect

    prefix = server.env["MQTT_TOPIC_PREFIX"]
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    page.clock.install()
    looks: list[str] = []
    page.on("request", lambda request: looks.append(request.url) if "/api/commands" in request.url else None)
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_text("connected")
    page.evaluate("window.userLists = 0; window.chatPage.socket.on('user_list', () => { window.userLists++; })")
    page.fill("#username", "Quiet watcher")
    page.fill("#room", "quiet-room")  # its own room: the module's other tests cause no look here
    page.click("#join-form button[type=submit]")
    expect(page.locator("#send-form")).to_be_visible()
    page.clock.run_for(3000)
    wait_for(lambda: looks, what="the page's first look")
    page.evaluate("1")  # a round trip: a look the timers started is reported before its answer
    before, lists_before = len(looks), page.evaluate("window.userLists")
    with MqttProbe(broker.port) as talker:
        for n in range(4):
            talker.publish(f"{prefix}/quiet-room/messages/in/plain-talker", {"message": f"just talk {n}"})
            expect(page.locator("#messages")).to_contain_text(f"just talk {n}")
            page.clock.run_for(3000)  # past the gap between two looks, and the look's delay
            if n == 0:  # one look for the new device; its answer (listing it not) makes it quiet
                wait_for(lambda: page.evaluate("window.chatCommands.quietIds()") == ["plain-talker"],
                         what="the device found declaring nothing")
        page.evaluate("1")
        for_lists = page.evaluate("window.userLists") - lists_before
        assert len(looks) - before - for_lists <= 1, (looks, for_lists)  # none for messages 2 to 4
        with SocketIOClient(server.url) as other:  # a join: the page looks again
            seen = len(looks)
            assert other.call("join", {"username": "Marker", "room": "quiet-room"})["ok"]
            expect(page.locator("#users")).to_contain_text("Marker")
            wait_for(lambda: page.clock.run_for(1000) or len(looks) > seen, what="the look for the join")
    assert all("room=quiet-room" in url for url in looks), looks
    context.close()
