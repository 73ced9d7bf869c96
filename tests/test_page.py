"""The chat page as a finished app, and the status page (Playwright + Debian chromium).
Screenshots (phone and desktop) are saved to test-artifacts/ for a person to look at."""
import re

import pytest
import requests
from browser_support import open_chat, send
from conftest import app_env
from playwright.sync_api import expect

from support import ROOT, TIMEOUT, MqttProbe

ARTIFACTS = ROOT / "test-artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}


@pytest.fixture
def server(broker, tmp_path, server_for):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", RATE_LIMIT="0"))


def post(server, message, room="lobby", username="cron", **fields):
    response = requests.post(server.url + "/api/messages", timeout=TIMEOUT,
                             json={"username": username, "message": message, "room": room, **fields})
    assert response.status_code == 201, response.text


def device(server, broker, payload, room=None):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    topic = f"{prefix}/messages/in" if room is None else f"{prefix}/{room}/messages/in"
    with MqttProbe(broker.port) as probe:
        probe.publish(topic, payload)


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=False)


def test_room_switch_moves_every_per_room_panel(browser, server, broker):
    page = open_chat(browser, server, "Alice")
    device(server, broker, {"client_id": "esp-lobby", "username": "Lobby sensor", "message": "20 °C",
                            "data": {"temperature": 20}})
    expect(page.locator("#readings .reading")).to_have_count(1)
    page.fill("#send-form #message", "x" * 3000)  # an error that must not follow us into the next room
    page.click("#send-form button[type=submit]")
    expect(page.locator("#send-error")).not_to_be_empty()
    page.fill("#new-room", "kitchen")
    page.click("#room-form button[type=submit]")
    expect(page.locator("#room-name")).to_have_text("kitchen")
    expect(page.locator("#rooms .room.current")).to_contain_text("kitchen")
    expect(page.locator(".msg .text", has_text="20 °C")).to_have_count(0)
    expect(page.locator("#readings .reading")).to_have_count(0)
    expect(page.locator("#no-readings")).to_be_visible()
    expect(page.locator("#send-error")).to_be_empty()
    device(server, broker, {"client_id": "esp-oven", "username": "Oven", "message": "180 °C",
                            "data": {"temperature": 180}}, room="kitchen")
    expect(page.locator("#readings .reading")).to_have_count(1)
    expect(page.locator("#readings")).to_contain_text("Oven")
    post(server, "meanwhile in the lobby")  # the room list counts it as unread
    expect(page.locator("#rooms .room", has_text="lobby").locator(".unread")).to_have_text("1",
                                                                                       timeout=TIMEOUT * 1000)
    page.locator("#rooms .room-button", has_text="lobby").click()
    expect(page.locator("#room-name")).to_have_text("lobby")
    expect(page.locator(".msg .text", has_text="meanwhile in the lobby")).to_have_count(1)
    expect(page.locator("#rooms .room", has_text="lobby").locator(".unread")).to_have_count(0)
    page.context.close()


def test_paging_back_through_200_messages(browser, server):
    for number in range(200):
        post(server, f"m{number:03d}", room="archive")
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    page.goto(server.url)
    page.fill("#username", "Reader")
    page.fill("#room", "archive")
    page.click("#join-form button[type=submit]")
    messages = page.locator("#messages .msg:not(.msg-system)")
    expect(messages).to_have_count(50)
    for expected in (100, 150, 200):
        page.evaluate("document.getElementById('messages').scrollTop = 0")
        expect(messages).to_have_count(expected)
    texts = page.locator("#messages .msg:not(.msg-system) .text").all_text_contents()
    assert texts == [f"m{number:03d}" for number in range(200)]
    context.close()


def test_a_reader_scrolled_up_is_not_moved_by_new_messages(browser, server, broker):
    for number in range(60):
        post(server, f"old {number}")
    page = open_chat(browser, server, "Reader")
    page.evaluate("document.getElementById('messages').scrollTop = 0")
    expect(page.locator("#messages .msg:not(.msg-system)")).to_have_count(60)  # the first page and the rest
    page.evaluate("document.getElementById('messages').scrollTop = 300")
    before = page.evaluate("document.getElementById('messages').scrollTop")
    for number in range(5):
        device(server, broker, {"client_id": "chatty", "message": f"new {number}"})
    expect(page.locator(".msg .text", has_text="new 4")).to_have_count(1)
    expect(page.locator("#new-marker")).to_be_visible()
    assert page.evaluate("document.getElementById('messages').scrollTop") == before
    page.click("#new-marker")
    expect(page.locator("#new-marker")).to_be_hidden()
    assert page.evaluate("(l => l.scrollHeight - l.scrollTop - l.clientHeight)(document.getElementById('messages'))") < 60
    page.context.close()


def test_reload_rejoins_by_itself_and_own_messages_are_set_apart(browser, server):
    page = open_chat(browser, server, "Bea")
    send(page, "mine")
    post(server, "theirs")
    expect(page.locator(".msg.own .text", has_text="mine")).to_have_count(1)
    expect(page.locator(".msg:not(.own) .text", has_text="theirs")).to_have_count(1)
    page.reload()
    expect(page.locator("#send-form")).to_be_visible()  # no Join click
    expect(page.locator("#room-name")).to_have_text("lobby")
    users = requests.get(server.url + "/api/users", timeout=TIMEOUT).json()["users"]
    assert [u["username"] for u in users] == ["Bea"]
    page.context.close()


def test_unread_count_in_the_title_while_the_tab_is_hidden(browser, server):
    page = open_chat(browser, server, "Away")
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    post(server, "one")
    post(server, "two")
    expect(page).to_have_title("(2) Chatroom relay")
    page.evaluate("""() => {
        Object.defineProperty(document, 'hidden', {configurable: true, get: () => false});
        document.dispatchEvent(new Event('visibilitychange'));
    }""")
    expect(page).to_have_title("Chatroom relay")
    page.context.close()


def test_status_page_shows_the_counters_of_mqtt_status(browser, server, broker):
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    with MqttProbe(broker.port, f"{prefix}/errors") as probe:
        for number in range(3):
            probe.publish(f"{prefix}/messages/in", {"client_id": "esp-status", "message": f"r{number}",
                                                    "data": {"temperature": 20 + number}})
        probe.publish(f"{prefix}/messages/in", b"not json")
        probe.wait(f"{prefix}/errors")
    chat = open_chat(browser, server, "Operator")
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    page.goto(server.url + "/status")
    expect(page.locator("#bridge")).to_have_text("MQTT online")
    status = requests.get(server.url + "/mqtt/status", timeout=TIMEOUT).json()["mqtt_status"]
    counters = page.locator("#counters")
    for label, key in (("received", "messages_received"), ("rejected", "messages_rejected")):
        expect(counters.locator(f"dt:text-is('{label}') + dd")).to_have_text(str(status[key]))
    assert status["messages_received"] == 4 and status["messages_rejected"] == 1
    lobby = page.locator("#rooms tr", has_text="lobby")
    expect(lobby.locator("td").nth(1)).to_have_text("2")  # Operator (web) and esp-status (MQTT)
    expect(lobby.locator("td").nth(2)).to_have_text("1")
    expect(lobby.locator("td").nth(3)).to_have_text("1")
    expect(page.locator("#rates polyline")).to_have_count(3)
    # The server's per-second history draws the line from the first answer (issue 27).
    expect(page.locator("#rates polyline.rate-in")).to_have_attribute("points", re.compile(r"\d.* \d"))
    shot(page, "status-desktop")
    chat.context.close()
    context.close()


def test_screenshots_phone_and_desktop(browser, server, broker):
    """For a person to look at: the chat on a 390 px phone (panels behind a toggle) and a desktop."""
    for number, text in enumerate(["Good morning!", "Kitchen is warm", "@AI what is the humidity?"]):
        post(server, text, username=["Ana", "Ben", "Cleo"][number])
    device(server, broker, {"client_id": "esp32-kitchen", "username": "Kitchen", "message": "23.5 °C, 41 %",
                            "data": {"temperature": 23.5, "humidity": 41}})
    desktop = open_chat(browser, server, "Dana", viewport={"width": 1280, "height": 800})
    send(desktop, "Hello from the desktop")
    expect(desktop.locator("#readings .reading")).to_have_count(1)
    shot(desktop, "chat-desktop")
    phone = open_chat(browser, server, "Eli", **PHONE)
    expect(phone.locator("#side")).to_be_hidden()
    expect(phone.locator("#panels-toggle")).to_be_visible()
    badge_height = phone.evaluate("document.getElementById('bridge').getBoundingClientRect().height")
    assert badge_height < 30, "the MQTT badge must not wrap"
    shot(phone, "chat-phone")
    phone.click("#panels-toggle")
    expect(phone.locator("#side")).to_be_visible()
    expect(phone.locator("#readings .reading")).to_have_count(1)
    shot(phone, "chat-phone-panels")
    desktop.context.close()
    phone.context.close()


def test_readings_are_shown_as_the_device_sent_them(browser, server, broker):
    """21.0 stays 21.0 (JSON.parse alone would show 21), in the message chips and the readings panel.
    (The relay re-serialises numbers as values, so 40.50 travels as 40.5: docs/PROTOCOL.md.)"""
    page = open_chat(browser, server, "Precise")
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    with MqttProbe(broker.port) as probe:
        probe.publish(f"{prefix}/messages/in", b'{"client_id":"esp-precise","message":"reading",'
                                               b'"data":{"temperature":21.0,"humidity":40.5,"count":7}}')
    chips = page.locator(".msg .chip")
    expect(chips).to_have_text(["temperature: 21.0", "humidity: 40.5", "count: 7"])
    expect(page.locator("#readings .chip")).to_have_text(["temperature: 21.0", "humidity: 40.5", "count: 7"])
    page.reload()  # history comes through the same decoder
    expect(page.locator(".msg .chip")).to_have_text(["temperature: 21.0", "humidity: 40.5", "count: 7"])
    page.context.close()
