"""The page people enjoy (issue 27), in Debian's chromium under Playwright: axe-core finds no
serious or critical WCAG 2 A/AA violation on the chat (desktop, phone, phone panel open, dark)
and on /status; the phone panel is a dialog a keyboard can use; /status fits a phone and does
not move; dark mode and reduced motion follow the system. One server and one browser for the
module; screenshots go to test-artifacts/ for a person to look at (docs/PAGE.md)."""
import re

import pytest
import requests
from browser_support import (
    axe_violations,
    installed_axe,
    open_chat,
    page_server_with_assistant,
    post_as_device,
    post_as_script,
    send,
)
from command_device import Device
from playwright.sync_api import expect

from support import ROOT, TIMEOUT, SocketIOClient, wait_for

ARTIFACTS = ROOT / "test-artifacts"
PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
DESKTOP = {"viewport": {"width": 1280, "height": 800}}
ANSWER = "The kitchen is at 41 % humidity."
# What a device may declare (PROTOCOL 11), at its longest: a 64-character option, a long answer.
LONG_OPTION = "eco-" + "x" * 60
HEATER_COMMANDS = {"power": {"type": "bool"}, "level": {"type": "number", "min": 0, "max": 100},
                   "note": {"type": "text", "max": 200}, "mode": {"type": "enum", "options": ["day", LONG_OPTION]}}


@pytest.fixture(scope="module")
def axe():
    return installed_axe()


@pytest.fixture(scope="module")
def server(broker, tmp_path_factory):
    """The page with the assistant on (a fake OpenAI streaming in small chunks)."""
    yield from page_server_with_assistant(broker, tmp_path_factory.mktemp("page-a11y"), ANSWER, chunk_size=4)


post, device = post_as_script, post_as_device


def shot(page, name):
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), animations="disabled", caret="hide")


def new_page(browser, url, **options):
    context = browser.new_context(**options)
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    page.goto(url)
    return page


def no_violations(page, axe, where):
    found = axe_violations(page, axe)
    assert not found, f"axe on {where}:\n" + "\n".join(found)


def focused(page) -> str:
    return page.evaluate("document.activeElement.id || document.activeElement.className || document.activeElement.localName")


@pytest.fixture(scope="module")
def heater(server, broker):
    """A device declaring a bool, a number, a text and an enum (the trailing control), in room
    "axe"; it answers every command with its value."""
    made = Device(broker.port, server.env["MQTT_TOPIC_PREFIX"], "heater-axe", HEATER_COMMANDS, name="Heater",
                  room="axe")
    made.join()
    yield made
    made.stop()


def controls_of(page, client_id):
    return page.locator(f'#device-commands li.device-controls[data-device="{client_id}"]')


def panel_fits(page):
    """Nothing in the side panel (a column or the phone's dialog) is wider than it."""
    sizes = page.evaluate("""() => { const side = document.getElementById('side');
        const wide = [...side.querySelectorAll('#device-commands *')].filter((n) => {
            const box = n.getBoundingClientRect(), outer = side.getBoundingClientRect();
            return box.width && (box.right > outer.right + 0.5 || box.left < outer.left - 0.5); });
        return [side.scrollWidth, side.clientWidth, wide.map((n) => n.className || n.localName)]; }""")
    assert sizes[0] <= sizes[1] and not sizes[2], f"the device controls overflow the panel: {sizes}"


def a_full_room(server, broker, room):
    """People, a script, a device with readings: what the screenshots and axe look at."""
    for text, name in (("Good morning!", "Ana"), ("Coffee is ready", "Ana"), ("Kitchen is warm", "Ben")):
        post(server, text, room, username=name)
    for temperature, humidity in ((22.0, 44), (22.8, 42), (23.5, 41)):
        device(server, broker, room, {"client_id": "esp32-kitchen", "username": "Kitchen",
                                      "message": f"{temperature} °C, {humidity} %",
                                      "data": {"temperature": temperature, "humidity": humidity}})


def test_axe_finds_nothing_serious_on_the_chat_desktop_phone_panel_and_dark(browser, server, broker, axe, heater):
    room = "axe"
    a_full_room(server, broker, room)
    # A second declaring device that has left: listed offline, its controls disabled.
    fan = Device(broker.port, server.env["MQTT_TOPIC_PREFIX"], "fan-axe", {"speed": {"type": "number"}},
                 name="Fan", room=room)
    fan.join()
    wait_for(lambda: "fan-axe" in requests.get(f"{server.url}/api/commands?room={room}", timeout=TIMEOUT).text,
             what="fan-axe declared")
    fan.leave()
    fan.stop()
    desktop = open_chat(browser, server, "Dana", **DESKTOP)
    desktop.fill("#new-room", room)
    desktop.press("#new-room", "Enter")
    expect(desktop.locator("#room-name")).to_have_text(room)
    send(desktop, "@AI what is the humidity?")
    expect(desktop.locator(".msg-ai .text")).to_have_text(ANSWER)
    expect(desktop.locator("#readings .spark polyline")).to_have_count(2)
    controls = controls_of(desktop, "heater-axe")
    expect(controls.locator(".command-row")).to_have_count(4)
    # Every control is named by its label (the checkbox nested, the others by for/id).
    assert controls.get_by_label("power").is_visible() and controls.get_by_label("mode").is_visible()
    unnamed = desktop.evaluate("""() => [...document.querySelectorAll('#device-commands input, #device-commands select')]
        .filter((n) => !n.labels.length).map((n) => n.outerHTML)""")
    assert not unnamed, unnamed
    offline = controls_of(desktop, "fan-axe")
    expect(offline.locator(".device-state")).to_have_text("offline")
    expect(offline.locator("input")).to_be_disabled()
    expect(offline.locator("input")).to_have_attribute("aria-disabled", "true")
    assert desktop.evaluate("getComputedStyle(document.querySelector('li.offline')).opacity") == "1"
    # A long answer and a 64-character option stay inside the panel.
    controls.get_by_label("note").fill("y" * 200)
    controls.locator('[data-command="note"] button').click()
    expect(controls.locator('[data-command="note"] output')).to_contain_text("ok: ")
    panel_fits(desktop)
    no_violations(desktop, axe, "the chat, desktop")
    shot(desktop, "page-desktop")
    desktop.evaluate("() => window.chatPage.socket.disconnect()")  # "sending…" stays until it is back
    send(desktop, "waiting for the network")
    expect(desktop.locator("#messages .msg.pending")).to_have_count(1)
    no_violations(desktop, axe, "the chat, desktop, a message being sent")
    desktop.context.close()

    phone = open_chat(browser, server, "Eli", **PHONE)
    phone.click("#panels-toggle")
    phone.locator("#rooms .room-button", has_text=room).click()
    expect(phone.locator("#room-name")).to_have_text(room)
    expect(phone.locator(".msg-ai .text")).to_have_text(ANSWER)
    no_violations(phone, axe, "the chat, phone")
    shot(phone, "page-phone")
    phone.click("#panels-toggle")
    expect(phone.locator("#side")).to_be_visible()
    expect(phone.locator("#readings .reading")).to_have_count(1)
    expect(controls_of(phone, "heater-axe").locator(".command-row")).to_have_count(4)
    panel_fits(phone)
    no_violations(phone, axe, "the chat, phone, panel open")
    shot(phone, "page-phone-panel")
    # The dialog's Tab loop counts a select: Tab on the trailing one goes round to Close.
    controls_of(phone, "heater-axe").get_by_label("mode").focus()
    phone.keyboard.press("Tab")
    assert focused(phone) == "panels-close"
    phone.keyboard.press("Shift+Tab")
    assert phone.evaluate("document.activeElement.localName") == "select"
    controls_of(phone, "heater-axe").locator("select").scroll_into_view_if_needed()
    shot(phone, "page-phone-panel-controls")
    phone.context.close()

    for name, options in (("page-dark", DESKTOP), ("page-dark-phone", PHONE)):
        dark = open_chat(browser, server, name, color_scheme="dark", **options)
        if options is PHONE:
            dark.click("#panels-toggle")
        dark.locator("#rooms .room-button", has_text=room).click()
        expect(dark.locator(".msg-ai .text")).to_have_text(ANSWER)
        expect(controls_of(dark, "fan-axe").locator(".device-state")).to_have_text("offline")
        background = dark.evaluate("getComputedStyle(document.body).backgroundColor")
        channels = [int(part) for part in re.findall(r"\d+", background)[:3]]
        assert max(channels) < 60, f"dark mode keeps a light background: {background}"
        assert dark.evaluate("getComputedStyle(document.documentElement).colorScheme") == "light dark"
        no_violations(dark, axe, f"the chat, dark, {name}")
        shot(dark, name)
        dark.context.close()


def test_presence_and_room_polls_keep_focus_what_is_typed_and_the_switch(browser, server, broker, heater):
    """A user_list (someone joins) and the 5-second room poll update the panel in place: the
    focused control keeps focus and its typed value, the switch keeps its acknowledged state,
    a focused room button stays focused."""
    room = "axe"
    page = open_chat(browser, server, "Gil", **DESKTOP)
    page.fill("#new-room", room)
    page.press("#new-room", "Enter")
    expect(page.locator("#room-name")).to_have_text(room)
    controls = controls_of(page, "heater-axe")
    controls.get_by_label("power").check()
    expect(controls.locator('[data-command="power"] output')).to_have_text('ok: {"now":true}')
    level = controls.get_by_label("level")
    level.fill("42")
    level.evaluate("(node) => { node.focus(); node.kept = true; }")
    lamp = Device(broker.port, server.env["MQTT_TOPIC_PREFIX"], "lamp-keep", {"on": {"type": "bool"}},
                  name="Lamp", room=room)
    try:
        lamp.join()  # a user_list, then the page's controls are fetched again
        expect(controls_of(page, "lamp-keep")).to_have_count(1)
    finally:
        lamp.stop()
    assert level.evaluate("(node) => node.kept === true && document.activeElement === node"), focused(page)
    expect(level).to_have_value("42")
    expect(controls.get_by_label("power")).to_be_checked()

    lobby = page.locator("#rooms .room", has_text="lobby")
    lobby.locator("button").focus()
    before = lobby.locator(".unread").all_inner_texts()
    post(server, "news in the lobby", "lobby")
    expect(lobby.locator(".unread")).to_have_text(str(int(before[0]) + 1 if before else 1))  # a poll came
    assert page.evaluate("document.activeElement.textContent") == "lobby", focused(page)
    page.context.close()


# Counts the page's join requests and their answers on its own socket (chat.js emits them).
COUNT_JOINS = """() => { const socket = window.chatPage.socket, emit = socket.emit.bind(socket);
    window.joinsAsked = 0; window.joinsAnswered = 0;
    socket.emit = (name, data, ack) => name !== 'join' ? emit(name, data, ack)
        : (window.joinsAsked++, emit(name, data, (answer) => { ack(answer); window.joinsAnswered++; })); }"""
DROP_THE_SOCKET = "() => window.chatPage.socket.io.engine.close()"  # as a network drop: it reconnects


def test_command_records_are_shown_once_read_and_a_reconnect_leaves_the_dialog_and_leave_alone(
        browser, server, heater):
    room = "axe"
    with SocketIOClient(server.url) as watcher:
        assert watcher.call("join", {"username": "Watcher", "room": room})["ok"]
        page = new_page(browser, server.url, **PHONE)
        page.fill("#username", "Hal")
        page.fill("#room", room)
        page.click("#join-form button[type=submit]")
        expect(page.locator("#send-form")).to_be_visible()
        page.evaluate(COUNT_JOINS)
        send(page, "/cmd heater-axe level 7")
        live = watcher.until("system_message", lambda e: e["event"] == "command_result" and e.get("client_id") == "heater-axe")
    results = page.locator("#messages .system-command_result", has_text="level done")
    asks = page.locator("#messages .system-command", has_text="level = 7")
    expect(results).to_have_count(1)
    # The live event names its stored record (PROTOCOL 11): the same message_id as the history's.
    history = requests.get(f"{server.url}/api/messages", params={"room": room, "limit": 100}, timeout=TIMEOUT).json()
    record = next(m for m in history["messages"] if m["seq"] == live["seq"])
    assert live["message_id"] == record["message_id"] and record["type"] == "system_message"
    newest = max(m["seq"] for m in history["messages"])
    assert page.evaluate(f"JSON.parse(localStorage.getItem('chat-last-read'))[{room!r}]") == newest  # read

    page.click("#panels-toggle")
    expect(page.locator("#side")).to_have_attribute("role", "dialog")
    page.evaluate(DROP_THE_SOCKET)
    page.wait_for_function("() => window.joinsAnswered >= 1")  # the reconnect's rejoin, with the history
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#side")).to_be_visible()  # the dialog stays open, focus stays in it
    assert page.evaluate("document.getElementById('side').contains(document.activeElement)"), focused(page)
    expect(results).to_have_count(1)  # not again from the history
    expect(asks).to_have_count(1)
    page.keyboard.press("Escape")

    # Leave pressed while the socket is down: left at once, and the reconnect does not rejoin.
    page.evaluate("() => { window.chatPage.socket.io.engine.close(); document.getElementById('leave').click(); }")
    expect(page.locator("#join-form")).to_be_visible()
    expect(page.locator("#connection")).to_have_text("connected")
    assert page.evaluate("window.joinsAsked") == 1
    expect(page.locator("#leave")).to_be_hidden()
    assert page.evaluate("localStorage.getItem('chat-username')") is None
    page.context.close()


def test_status_page_fits_a_phone_does_not_move_and_charts_the_last_minutes(browser, server, axe):
    for number in range(6):
        post(server, f"rate {number}", "status-room")
    rates = requests.get(server.url + "/api/rates", timeout=TIMEOUT).json()
    assert rates["success"] and rates["interval_seconds"] == 1 and rates["window_seconds"] == 300
    assert set(rates["series"]) == {"received", "room", "sent"}
    assert rates["instance_id"] == requests.get(server.url + "/mqtt/status", timeout=TIMEOUT).json()["instance_id"]
    page = new_page(browser, server.url + "/status", **PHONE)
    page.evaluate("""() => { window.shifts = 0; new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) if (!entry.hadRecentInput) window.shifts += entry.value;
    }).observe({type: 'layout-shift', buffered: true}); }""")
    expect(page.locator("#updated")).to_contain_text("updated")
    expect(page.locator("#rooms tr", has_text="status-room")).to_have_count(1)
    # The server's history, not the page's: the chart has its points at the first answer.
    line = page.locator("#rates polyline.rate-room")
    expect(line).to_have_attribute("points", re.compile(r"\d.* \d"))
    expect(page.locator(".x-axis span").first).to_have_text("5 min ago")
    expect(page.locator(".x-axis span").last).to_have_text("now")
    expect(page.locator(".axis-name")).to_have_text("per s")
    expect(page.locator("#rates-instance")).to_have_text(f"· instance {rates['instance_id']}")  # whose counts
    assert float(page.locator("#y-top").inner_text()) >= 1
    expect(page.locator("#rates")).to_have_attribute("aria-label", re.compile(r"room messages: \d+ now, peak [1-9]"))
    width = page.evaluate("[document.documentElement.scrollWidth, document.documentElement.clientWidth, innerWidth]")
    assert width == [390, 390, 390], f"/status is wider than the phone: {width}"
    first = page.locator("#updated").inner_text()
    expect(page.locator("#updated")).not_to_have_text(first)  # a second refresh has been drawn too
    shifts = page.evaluate("window.shifts")
    assert shifts < 0.02, f"/status moves as it fills: layout shift {shifts}"
    no_violations(page, axe, "/status on a phone")
    shot(page, "status-phone")
    page.context.close()
    desktop = new_page(browser, server.url + "/status", color_scheme="dark", **DESKTOP)
    expect(desktop.locator("#updated")).to_contain_text("updated")
    no_violations(desktop, axe, "/status, desktop, dark")
    shot(desktop, "status-desktop-dark")
    desktop.context.close()


def visible_to_the_eye(page) -> bool:
    """The focused element is on screen and nothing covers its middle."""
    return page.evaluate("""() => {
        const node = document.activeElement;
        const box = node.getBoundingClientRect();
        if (!box.width || !box.height || box.bottom < 0 || box.top > innerHeight) return false;
        const hit = document.elementFromPoint(box.left + box.width / 2, box.top + box.height / 2);
        return hit !== null && (hit === node || node.contains(hit) || hit.contains(node));
    }""")


def tab_to(page, element_id, limit=30):
    """Tab (keyboard only) until `element_id` has focus; every stop on the way is visible."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        assert visible_to_the_eye(page), f"focus on {focused(page)!r} is hidden"
        if focused(page) == element_id:
            return
    raise AssertionError(f"Tab never reached #{element_id}")


def test_phone_panel_is_a_dialog_a_keyboard_can_use(browser, server, broker):
    post(server, "over here", "garden")
    page = new_page(browser, server.url, **PHONE)
    expect(page.locator("#connection")).to_have_text("connected")
    page.keyboard.press("Tab")
    assert focused(page) == "skip-link" and visible_to_the_eye(page)
    page.keyboard.press("Enter")
    assert focused(page) == "chat"
    tab_to(page, "username")
    page.keyboard.type("Kim")
    page.keyboard.press("Enter")
    expect(page.locator("#send-form")).to_be_visible()
    assert focused(page) == "message"
    toggle = page.locator("#panels-toggle")
    side = page.locator("#side")

    def open_panel():
        page.focus("#message")
        for _ in range(10):  # back through the header, by keyboard
            page.keyboard.press("Shift+Tab")
            if focused(page) == "panels-toggle":
                break
        assert focused(page) == "panels-toggle" and visible_to_the_eye(page)
        page.keyboard.press("Enter")
        expect(side).to_be_visible()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        expect(side).to_have_attribute("role", "dialog")
        expect(side).to_have_attribute("aria-modal", "true")
        assert focused(page) == "side-title"  # focus moved in
        assert page.evaluate("['topbar', 'chat'].every((id) => document.getElementById(id).inert)")

    def closed_with_focus_back():
        expect(side).to_be_hidden()
        expect(toggle).to_have_attribute("aria-expanded", "false")
        assert focused(page) == "panels-toggle"
        assert page.evaluate("['topbar', 'chat'].every((id) => !document.getElementById(id).inert)")

    open_panel()
    for _ in range(12):  # Tab stays in the dialog: nothing under it takes focus
        page.keyboard.press("Tab")
        assert page.evaluate("document.getElementById('side').contains(document.activeElement)"), focused(page)
        assert visible_to_the_eye(page), f"focus on {focused(page)!r} is hidden"
    page.keyboard.press("Escape")
    closed_with_focus_back()

    open_panel()
    page.keyboard.press("Tab")
    assert focused(page) == "panels-close"
    page.keyboard.press("Enter")
    closed_with_focus_back()

    open_panel()
    page.mouse.click(20, 400)  # a tap outside the panel, on the dimmed chat
    closed_with_focus_back()

    open_panel()
    for _ in range(20):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent") == "garden":
            break
    page.keyboard.press("Enter")  # a room switch closes the panel: aria-expanded follows
    expect(page.locator("#room-name")).to_have_text("garden")
    expect(side).to_be_hidden()
    expect(toggle).to_have_attribute("aria-expanded", "false")
    assert focused(page) == "message"
    expect(page.locator(".msg .text", has_text="over here")).to_have_count(1)

    page.focus("#message")
    for _ in range(10):
        page.keyboard.press("Shift+Tab")
        if focused(page) == "leave":
            break
    assert focused(page) == "leave" and visible_to_the_eye(page)
    page.keyboard.press("Enter")  # Leave: the view is cleared and focus is on the join form
    expect(page.locator("#join-form")).to_be_visible()
    expect(page.locator("#messages .msg")).to_have_count(0)
    expect(page.locator("#room-name")).to_have_text("")
    expect(page.locator("#rooms .room.current")).to_have_count(0)
    assert focused(page) == "username"
    page.context.close()


def test_dark_mode_and_reduced_motion_follow_the_system(browser, server):
    caret = """() => {
        const item = document.createElement('li');
        item.className = 'msg msg-ai streaming';
        const text = document.createElement('div');
        text.className = 'text';
        item.appendChild(text);
        document.getElementById('messages').appendChild(item);
        const name = getComputedStyle(text, '::after').animationName;
        item.remove();
        return name;
    }"""
    light = new_page(browser, server.url)
    assert light.evaluate(caret) == "blink"
    light_bg = light.evaluate("getComputedStyle(document.body).backgroundColor")
    light.context.close()
    calm = new_page(browser, server.url, reduced_motion="reduce", color_scheme="dark")
    assert calm.evaluate(caret) == "none"
    dark_bg = calm.evaluate("getComputedStyle(document.body).backgroundColor")
    assert dark_bg != light_bg
    assert calm.evaluate("getComputedStyle(document.body).color") != "rgb(29, 35, 48)"
    calm.context.close()
