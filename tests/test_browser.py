"""The chat page in a real headless Chromium (Debian's, driven by Playwright)."""
import pytest
import requests
from browser_support import open_chat, send
from conftest import app_env
from playwright.sync_api import expect

from support import TIMEOUT


@pytest.fixture
def server(broker, tmp_path, server_for):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet"))


def test_two_tabs_chat_live_and_see_each_other_online(browser, server):
    """Alice and Bob join; each sees the other's message and both in the online list."""
    alice = open_chat(browser, server, "Alice")
    bob = open_chat(browser, server, "Bob")
    send(alice, "hello Bob")
    expect(bob.locator(".msg-web .text").last).to_have_text("hello Bob")
    expect(alice.locator("#users .who")).to_have_text(["Alice", "Bob"])
    expect(alice.locator("#bridge")).to_have_text("MQTT online")
    expect(alice.locator("#user-count")).to_have_text("2")
    bob.context.close()
    expect(alice.locator("#users .who")).to_have_text(["Alice"])
    expect(alice.locator(".msg-system .text").last).to_have_text("Bob left")
    alice.context.close()


def test_device_message_shows_readings_and_source(browser, server, probe_for):
    """An MQTT device appears online as MQTT with its readings as chips and in the readings panel."""
    page = open_chat(browser, server, "Alice")
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    probe.publish(f"{prefix}/messages/in", {"client_id": "esp32-kitchen", "username": "Kitchen",
                                            "message": "23.5 °C", "data": {"temperature": 23.5, "humidity": 41}})
    message = page.locator(".msg-mqtt").last
    expect(message.locator(".text")).to_have_text("23.5 °C")
    expect(message.locator(".chip")).to_have_text(["temperature: 23.5", "humidity: 41"])
    expect(page.locator("#readings .who")).to_have_text(["Kitchen"])
    expect(page.locator("#readings .chip")).to_have_text(["temperature: 23.5", "humidity: 41"])
    device = page.locator("#users .user-mqtt")
    expect(device.locator(".who")).to_have_text("Kitchen")
    expect(device.locator(".src")).to_have_text("device · esp32-kitchen")  # the friendly word (issue 27)
    expect(device.locator(".src")).to_have_attribute("title", "MQTT device")  # the technical one on hover
    expect(page.locator(".system-join .text").last).to_have_text("Kitchen joined")
    page.context.close()


def test_script_text_is_shown_as_text_never_run(browser, server, probe_for):
    """HTML and script from any transport are displayed literally; nothing executes."""
    page = open_chat(browser, server, "Alice")
    page.evaluate("window.pwned = false")
    evil = '<img src=x onerror="window.pwned=true"><script>window.pwned=true</script>'
    requests.post(server.url + "/api/messages", json={"username": "<b>bold</b>", "message": evil},
                  timeout=TIMEOUT)
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe_for(prefix).publish(f"{prefix}/messages/in", {"client_id": "x", "message": "ok",
                                                        "data": {"<i>k</i>": "<svg onload=alert(1)>"}})
    send(page, evil)
    expect(page.locator(".msg-web .text").last).to_have_text(evil)
    expect(page.locator(".msg-http .who").last).to_have_text("<b>bold</b>")
    expect(page.locator(".msg-mqtt .chip").last).to_have_text("<i>k</i>: <svg onload=alert(1)>")
    # The only pictures in messages are the page's own source icons (svg.src-icon).
    assert page.locator(".messages img, .messages script, .messages b, .messages svg:not(.src-icon)").count() == 0
    assert page.evaluate("window.pwned") is False
    page.context.close()


def test_newcomer_sees_history(browser, server):
    """A new page gets the last messages on join."""
    for i in range(3):
        requests.post(server.url + "/api/messages", json={"username": "cron", "message": f"job {i} done"},
                      timeout=TIMEOUT)
    page = open_chat(browser, server, "Late")
    expect(page.locator(".msg-http .text")).to_have_text(["job 0 done", "job 1 done", "job 2 done"])
    page.context.close()


def test_taken_name_is_explained(browser, server):
    """Joining with a name in use shows the reason and keeps the form."""
    first = open_chat(browser, server, "Alice")
    context = browser.new_context()
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_text("connected")
    page.fill("#username", "alice")
    page.click("#join-form button[type=submit]")
    expect(page.locator("#join-error")).to_contain_text("is taken")
    expect(page.locator("#send-form")).to_be_hidden()
    context.close()
    first.context.close()


def test_page_fits_a_phone(browser, server, tmp_path):
    """On a 390x844 phone screen nothing overflows sideways and the send box is reachable."""
    page = open_chat(browser, server, "Mobile", viewport={"width": 390, "height": 844},
                     is_mobile=True, has_touch=True)
    send(page, "from my phone " + "long-word-" * 20)
    expect(page.locator(".msg-web .text").last).to_contain_text("from my phone")
    overflow = page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0
    box = page.locator("#send-form").bounding_box()
    assert box and box["y"] + box["height"] <= 844 and box["width"] <= 390
    page.screenshot(path=str(tmp_path / "phone.png"))
    page.context.close()


def test_assistant_answer_appears_on_the_page(browser, broker, tmp_path, server_for):
    """`@AI …` on the page: the answer is streamed into one assistant bubble."""
    from fake_openai import FakeOpenAI

    fake = FakeOpenAI().start()
    try:
        fake.behave(reply="Sure, <b>here</b> is the answer.", chunk_size=4)
        server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", OPENAI_API_KEY="sk-fake",
                                    OPENAI_BASE_URL=fake.base_url))
        page = open_chat(browser, server, "Alice")
        send(page, "@AI help me")
        bubble = page.locator(".msg-ai")
        expect(bubble.locator(".text")).to_have_text("Sure, <b>here</b> is the answer.")
        expect(bubble).to_have_count(1)
        expect(bubble.locator(".who")).to_have_text("AI")
        expect(bubble).not_to_have_class("msg msg-ai streaming")
        page.context.close()
    finally:
        fake.stop()


def test_readings_panel_plots_a_devices_history(browser, server, probe_for):
    """Earlier readings (from /api/readings) and live ones draw one sparkline per key."""
    prefix = server.env["MQTT_TOPIC_PREFIX"]
    probe = probe_for(prefix)
    for t in (20.0, 21.0, 22.5):
        probe.publish(f"{prefix}/messages/in", {"client_id": "esp-plot", "message": f"{t} C",
                                                "data": {"temperature": t}})
    probe.wait(f"{prefix}/messages/out", count=3)
    page = open_chat(browser, server, "Plotter", viewport={"width": 1200, "height": 800})
    probe.publish(f"{prefix}/messages/in", {"client_id": "esp-plot", "message": "23 C", "data": {"temperature": 23}})
    expect(page.locator("#readings .chip")).to_have_text(["temperature: 23"])
    line = page.locator("#readings svg.spark polyline")
    expect(line).to_have_count(1)
    page.wait_for_function("document.querySelector('#readings polyline').getAttribute('points').split(' ').length == 4")
    page.screenshot(path=str(server.log_path.parent / "desktop.png"))
    page.context.close()


def test_page_shows_when_the_mqtt_side_goes_away_and_returns(browser, own_broker, tmp_path, server_for):
    """Broker killed: the MQTT badge turns offline with a notice; broker back: online again."""
    server = server_for(app_env(own_broker, tmp_path, ASYNC_MODE="eventlet"))
    page = open_chat(browser, server, "Watcher")
    expect(page.locator("#bridge")).to_have_text("MQTT online")
    own_broker.kill()
    expect(page.locator("#bridge")).to_have_text("MQTT offline", timeout=TIMEOUT * 1000)
    expect(page.locator(".system-bridge_offline")).to_have_count(1)
    own_broker.start()
    expect(page.locator("#bridge")).to_have_text("MQTT online", timeout=60_000)
    page.context.close()


def test_a_message_typed_while_the_server_restarts_is_delivered_once(browser, server):
    """The page keeps its client_id, rejoins by itself and sends what waited, once (PROTOCOL 5)."""
    page = open_chat(browser, server, "Patient")
    send(page, "before the restart")
    server.stop()
    expect(page.locator("#connection")).to_have_text("reconnecting…")
    page.fill("#message", "typed while the server was away")
    page.click("#send-form button[type=submit]")
    expect(page.locator("#send-error")).to_contain_text("1 waiting")
    server.start()
    expect(page.locator("#connection")).to_have_text("connected", timeout=60_000)
    expect(page.locator("#send-error")).to_have_text("", timeout=TIMEOUT * 1000)
    send(page, "after the restart")  # a marker: everything before it has been handled
    expect(page.locator(".msg .text", has_text="after the restart")).to_have_count(1)
    expect(page.locator(".msg .text", has_text="typed while the server was away")).to_have_count(1)
    history = requests.get(server.url + "/api/messages", timeout=TIMEOUT).json()["messages"]
    assert [m["content"] for m in history] == ["before the restart", "typed while the server was away",
                                               "after the restart"]
    users = requests.get(server.url + "/api/users", timeout=TIMEOUT).json()["users"]
    assert [(u["username"], u["client_id"]) for u in users] == [("Patient", None)]
    page.context.close()


def test_with_an_api_token_the_page_asks_once_and_keeps_it(browser, broker, tmp_path, server_for):
    server = server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", API_TOKEN="page-token"),
                        wait_connected=False)
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#join-form")).to_be_hidden()  # the prompt alone, not the join form beside it
    page.fill("#token", "wrong")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#connection")).to_have_text("token needed")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#join-form")).to_be_hidden()
    page.fill("#token", "page-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#token-form")).to_be_hidden()
    expect(page.locator("#join-form")).to_be_visible()
    page.fill("#username", "Keyholder")
    page.click("#join-form button[type=submit]")
    expect(page.locator("#send-form")).to_be_visible()
    send(page, "behind a token")
    expect(page.locator(".msg .text", has_text="behind a token")).to_have_count(1)
    page.reload()  # kept: no second prompt
    expect(page.locator("#connection")).to_have_text("connected")
    expect(page.locator("#token-form")).to_be_hidden()
    context.close()

    # /status without a token asks for it, focused, and polls nothing until one is given (no
    # 401 every 2 s); a refused token stops the polling; the alert is written when it changes.
    status = browser.new_context()
    status.set_default_timeout(TIMEOUT * 1000)
    status.add_init_script(WATCH_POLLS)
    page = status.new_page()
    asked = []
    page.on("request", lambda request: asked.append(request.url) if "/api/" in request.url
            or "/mqtt/status" in request.url else None)
    page.goto(server.url + "/status")
    expect(page.locator("#token-form")).to_be_visible()
    expect(page.locator("#error")).to_have_text("An access token is needed.")
    assert page.evaluate("document.activeElement.id") == "token"
    assert page.evaluate("window.polls()") == 0 and asked == []
    assert page.locator("#updated").get_attribute("aria-live") is None  # not read out every 2 s
    page.fill("#token", "wrong")
    page.click("#token-form button[type=submit]")
    page.wait_for_function("() => document.activeElement.id === 'token'")  # the 401 asked again
    expect(page.locator("#token-form")).to_be_visible()
    assert page.evaluate("window.polls()") == 0, "a refused token keeps polling"
    assert page.evaluate("window.errorWrites") == 0  # the same words: not written (read out) again
    page.fill("#token", "page-token")
    page.click("#token-form button[type=submit]")
    expect(page.locator("#updated")).to_contain_text("updated")
    expect(page.locator("#error")).to_have_text("")
    assert page.evaluate("window.polls()") == 1
    status.close()


# Before the page's scripts: which intervals run, and how often #error's text is written.
WATCH_POLLS = """
const running = new Set(), setEvery = window.setInterval, stop = window.clearInterval;
window.setInterval = (fn, ms, ...rest) => { const id = setEvery(fn, ms, ...rest); running.add(id); return id; };
window.clearInterval = (id) => { running.delete(id); stop(id); };
window.polls = () => running.size;
window.errorWrites = 0;
document.addEventListener('DOMContentLoaded', () => new MutationObserver(() => { window.errorWrites++; })
    .observe(document.getElementById('error'), {childList: true, characterData: true, subtree: true}));
"""
