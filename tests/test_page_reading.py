"""The chat reads well (issue 27), in Debian's chromium under Playwright: a labelled composer
whose placeholder offers @AI only when the assistant is on; a log that reads new messages out
but not the history, and the assistant's answer once, when it is complete; headings and a
skip link; rooms listed before joining, a room click filling the join form; messages grouped
by sender, HH:MM times with the full time on hover, friendly source labels, sparklines with
their scale; a favicon, a description and gzip. One server and one browser for the module."""
import gzip
import re

import pytest
import requests
from browser_support import open_chat, page_server_with_assistant, post_as_device, post_as_script, send
from playwright.sync_api import expect

from support import TIMEOUT

ANSWER = "Twenty-three and a half degrees, give or take a little."

# Installed before the page's scripts: every change to the log, and what a screen reader
# would be told about it (the log's aria-live at that moment, the message's aria-busy).
WATCH_THE_LOG = """
window.logEvents = [];
// An attribute as it was when record i happened: the old value of its next change, or now.
const valueAt = (records, i, target, name) => {
  for (let j = i + 1; j < records.length; j++) {
    const r = records[j];
    if (r.type === 'attributes' && r.target === target && r.attributeName === name) return r.oldValue;
  }
  return target.getAttribute(name);
};
new MutationObserver((records) => {
  const log = document.getElementById('log');
  if (!log) return;
  records.forEach((record, i) => {
    if (!log.contains(record.target) || record.target === log) return;
    const item = record.target.nodeType === 1 ? record.target.closest('li') : record.target.parentElement?.closest('li');
    if (record.type === 'childList' && record.target.id === 'messages') {
      for (const node of record.addedNodes) {
        window.logEvents.push({kind: 'added', live: valueAt(records, i, log, 'aria-live'),
                               busy: valueAt(records, i, node, 'aria-busy'), cls: node.className,
                               text: node.querySelector('.text')?.textContent});
      }
    } else if (record.type === 'attributes' && item) {
      window.logEvents.push({kind: 'busy', value: valueAt(records, i, item, 'aria-busy'), cls: item.className});
    } else if (item && item.classList.contains('msg-ai')) {
      window.logEvents.push({kind: 'changed', busy: valueAt(records, i, item, 'aria-busy'), cls: item.className});
    }
  });
}).observe(document, {subtree: true, childList: true, characterData: true, attributes: true,
                      attributeOldValue: true, attributeFilter: ['aria-busy', 'aria-live']});
"""


@pytest.fixture(scope="module")
def server(broker, tmp_path_factory):
    yield from page_server_with_assistant(broker, tmp_path_factory.mktemp("page-reading"), ANSWER, chunk_size=3)


post, device = post_as_script, post_as_device


def join_room(page, room):
    page.fill("#new-room", room)
    page.press("#new-room", "Enter")
    expect(page.locator("#room-name")).to_have_text(room)


def test_the_log_reads_news_once_and_keeps_history_quiet(browser, server):
    for number in range(3):
        post(server, f"old news {number}", "quiet")
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    context.add_init_script(WATCH_THE_LOG)
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#log")).to_have_attribute("role", "log")
    expect(page.get_by_label("Message", exact=True)).to_have_attribute("placeholder", re.compile("@AI"))
    page.fill("#username", "Listener")
    page.fill("#room", "quiet")
    page.press("#room", "Enter")
    expect(page.locator(".msg .text", has_text="old news")).to_have_count(3)
    expect(page.locator("#log")).to_have_attribute("aria-live", "polite")  # quiet only while history goes in
    post(server, "fresh news", "quiet")
    expect(page.locator(".msg .text", has_text="fresh news")).to_have_count(1)
    send(page, "@AI how warm is it?")
    bubble = page.locator(".msg-ai")
    expect(bubble.locator(".text")).to_have_text(ANSWER)
    expect(bubble).not_to_have_attribute("aria-busy", "true")
    send(page, "thanks")  # a marker: everything before it has settled
    expect(page.locator(".msg:not(.pending) .text", has_text="thanks")).to_have_count(1)
    events = page.evaluate("window.logEvents")
    added = [e for e in events if e["kind"] == "added"]
    history = [e for e in added if (e["text"] or "").startswith("old news")]
    assert len(history) == 3 and all(e["live"] == "off" for e in history), history
    fresh = [e for e in added if e["text"] == "fresh news"]
    assert len(fresh) == 1 and fresh[0]["live"] == "polite" and fresh[0]["busy"] is None
    ai = [e for e in events if "msg-ai" in (e.get("cls") or "")]
    assert ai[0]["kind"] == "added" and ai[0]["busy"] == "true", ai[:2]
    assert len([e for e in ai if e["kind"] == "changed"]) > 3, "the answer was not streamed in pieces"
    # Every piece arrived while the bubble was busy; it is read once, when busy ends.
    ends = [i for i, e in enumerate(ai) if e["kind"] == "busy" and e["value"] is None]
    assert len(ends) == 1, ai
    assert all(e["busy"] == "true" for e in ai[:ends[0]] if e["kind"] == "changed")
    assert not [e for e in ai[ends[0] + 1:] if e["kind"] in ("changed", "added")]
    own = [e for e in added if e["text"] == "thanks"]  # "sending…" kept busy, then the room's copy aloud
    assert [(e["live"], e["busy"]) for e in own] == [("polite", "true"), ("polite", None)], own
    context.close()


def test_composer_placeholder_offers_the_assistant_only_when_it_is_on(make_app):
    off = make_app(start=False).http.get("/").get_data(as_text=True)
    assert re.search(r'<label for="message"[^>]*>Message</label>', off)
    assert 'placeholder="Message"' in off and "@AI" not in off
    on = make_app(start=False, OPENAI_API_KEY="sk-fake").http.get("/").get_data(as_text=True)
    assert 'placeholder="Message · @AI asks the assistant"' in on


def test_the_rates_need_the_token_and_the_favicon_does_not(make_app):
    guarded = make_app(start=False, API_TOKEN="page-secret").http
    assert guarded.get("/api/rates").status_code == 401
    assert guarded.get("/api/rates", headers={"Authorization": "Bearer page-secret"}).get_json()["success"]
    assert guarded.get("/favicon.ico").status_code == 200  # the browser asks before any token is known


def test_headings_skip_link_and_rooms_before_joining(browser, server, broker):
    post(server, "seeds are in", "garden")
    device(server, broker, "garden", {"client_id": "esp-soil", "username": "Soil", "message": "dry"})
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT * 1000)
    context.add_init_script("window.setInterval = () => 0;")  # no polling: only what the page loads with
    page = context.new_page()
    page.goto(server.url)
    headings = page.locator("h1, h2").all_inner_texts()
    assert headings[0].startswith("Chatroom")
    for title in ("Join a room", "Rooms", "Online 0", "Device readings"):
        assert any(h.startswith(title.split(" 0")[0]) for h in headings), (title, headings)
    assert page.locator("#chat-title").text_content() == "Messages"
    page.keyboard.press("Tab")
    skip = page.locator(".skip-link")
    expect(skip).to_be_focused()
    assert skip.bounding_box()["y"] >= 0  # shown when focused
    garden = page.locator("#rooms .room-button", has_text="garden")
    expect(garden).to_have_count(1)  # listed on load, before joining
    expect(page.locator("#users .who")).to_have_text([])  # the lobby is empty
    garden.click()
    expect(page.locator("#room")).to_have_value("garden")
    expect(page.locator("#username")).to_be_focused()
    expect(page.locator("#users .who")).to_have_text(["Soil"])  # who is there, before joining
    expect(page.locator("#user-count")).to_have_text("1")
    page.keyboard.type("Gardener")
    page.keyboard.press("Enter")
    expect(page.locator("#room-name")).to_have_text("garden")
    expect(page.locator(".msg .text", has_text="seeds are in")).to_have_count(1)
    expect(page.locator("#rooms .room.current .room-button")).to_have_attribute("aria-current", "true")
    context.close()


def test_messages_grouped_with_times_sources_and_labelled_sparklines(browser, server, broker):
    page = open_chat(browser, server, "Reader", viewport={"width": 1280, "height": 800})
    join_room(page, "reading")
    for text in ("first", "second", "third"):
        post(server, text, "reading")
    for temperature in (20, 21.5, 23):
        device(server, broker, "reading", {"client_id": "esp-r", "username": "Probe", "message": f"{temperature} C",
                                           "data": {"temperature": temperature}})
    messages = page.locator("#messages .msg:not(.msg-system)")
    # The broker's PUBACK is not the room's: wait for the device's last message before the next post.
    expect(messages).to_have_count(6)
    post(server, "after the device", "reading")
    expect(messages).to_have_count(7)
    classes = [("grouped" in c.split()) for c in messages.evaluate_all("nodes => nodes.map((n) => n.className)")]
    assert classes == [False, True, True, False, True, True, False], classes
    # A continued message says its sender to screen readers only (the header is drawn once).
    assert messages.nth(1).locator(".who").bounding_box()["width"] <= 1
    assert messages.nth(0).locator(".who").bounding_box()["width"] > 10
    time = messages.nth(0).locator("time")
    expect(time).to_have_text(re.compile(r"^\d{2}:\d{2}$"))
    expect(time).to_have_attribute("datetime", re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d"))
    expect(time).to_have_attribute("title", re.compile(r"\d{1,2}:\d{2}:\d{2}"))  # the full time on hover
    for kind, label, technical in (("http", "script", "HTTP"), ("mqtt", "device", "MQTT")):
        source = page.locator(f".msg-{kind} .src").first
        expect(source).to_have_text(label)
        expect(source).to_have_attribute("title", re.compile(technical))
        expect(source.locator("svg")).to_have_attribute("aria-hidden", "true")
    expect(page.locator("#users .user-mqtt .src")).to_have_text("device · esp-r")
    spark = page.locator("#readings svg.spark")
    expect(spark).to_have_attribute("role", "img")
    expect(spark).to_have_attribute("aria-label", "temperature: last 3 readings from 20 to 23, latest 23")
    expect(page.locator("#readings .spark-range")).to_have_text("min 20 · max 23")
    page.context.close()


# Lines of a text inside `selector` (its text nodes' line boxes), and whether any overlaps `other`.
LINES = """([selector, other]) => {
    const node = document.querySelector(selector), avoid = other && document.querySelector(other);
    const range = document.createRange();
    range.selectNodeContents(node);
    const rects = [...range.getClientRects()].filter((r) => r.width > 0);
    const box = avoid && avoid.getBoundingClientRect();
    const hit = box ? rects.filter((r) => r.left < box.right && r.right > box.left && r.top < box.bottom
                                         && r.bottom > box.top).length : 0;
    return [new Set(rects.map((r) => Math.round(r.top))).size, hit];
}"""


def test_another_days_grouped_times_and_long_system_lines_keep_their_place(browser, server):
    """A grouped message from another day: its longer time does not cover the text; a long
    system line wraps its text, its time stays on one line (events as the socket delivers them)."""
    page = open_chat(browser, server, "Reader", viewport={"width": 760, "height": 800})
    join_room(page, "old-days")
    page.evaluate("""() => {
        const deliver = window.chatPage.socket.listeners('chat_message')[0];
        const start = Date.now() - 2 * 86400e3;
        const message = (i, text) => ({type: 'chat_message', username: 'Ana', content: text, room: 'old-days',
            timestamp: new Date(start + i * 60e3).toISOString(), message_id: 'old-' + i, seq: 9000 + i,
            source: 'http', client_id: null, data: null});
        deliver(message(1, 'Good morning everyone, the boiler is being serviced today'));
        deliver(message(2, 'The engineer arrives around ten and needs the cellar and the kitchen'));
        window.chatPage.socket.listeners('system_message')[0]({type: 'system_message', event: 'command',
            room: 'old-days', username: 'Ana', timestamp: new Date().toISOString(),
            message: 'Ana → Heater: note = "' + 'y'.repeat(300) + '"'});
    }""")
    grouped = page.locator("#messages .msg.grouped")
    expect(grouped).to_have_count(1)
    expect(grouped.locator("time")).to_have_text(re.compile(r"\d{4}.*\d{2}:\d{2}"))  # with its date
    lines, overlaps = page.evaluate(LINES, ["#messages .msg.grouped .text", "#messages .msg.grouped time"])
    assert lines >= 2 and overlaps == 0, f"the time covers {overlaps} of the text's {lines} lines"
    system = page.locator("#messages .msg-system").last
    expect(system.locator(".text")).to_contain_text("Heater: note")
    time_lines, _ = page.evaluate(LINES, ["#messages .msg-system:last-child time", None])
    text_lines, _ = page.evaluate(LINES, ["#messages .msg-system:last-child .text", None])
    assert time_lines == 1 and text_lines > 2, (time_lines, text_lines)
    page.context.close()


def test_favicon_description_and_gzip(browser, server):
    icon = requests.get(server.url + "/favicon.ico", timeout=TIMEOUT)
    assert icon.status_code == 200 and icon.headers["Content-Type"].startswith("image/svg+xml")
    for path in ("/", "/status", "/static/chat.css", "/static/chat.js", "/static/vendor/socket.io.min.js"):
        raw = requests.get(server.url + path, headers={"Accept-Encoding": "gzip"}, timeout=TIMEOUT, stream=True)
        body = raw.raw.read()
        assert raw.headers.get("Content-Encoding") == "gzip", path
        assert "Accept-Encoding" in raw.headers.get("Vary", ""), path
        plain = requests.get(server.url + path, headers={"Accept-Encoding": "identity"}, timeout=TIMEOUT)
        assert "Content-Encoding" not in plain.headers, path
        assert gzip.decompress(body) == plain.content, path
        assert len(body) < len(plain.content) / 2, path
    etag = requests.get(server.url + "/static/chat.js", headers={"Accept-Encoding": "gzip"},
                        timeout=TIMEOUT).headers["ETag"]
    again = requests.get(server.url + "/static/chat.js", headers={"Accept-Encoding": "gzip", "If-None-Match": etag},
                         timeout=TIMEOUT)
    assert again.status_code == 304 and "Accept-Encoding" in again.headers.get("Vary", "")
    # Each form its own ETag: a plain request naming the gzipped form's gets the plain file, and
    # a gzipped body offers no byte ranges (they would count the plain file's bytes).
    plain = requests.get(server.url + "/static/chat.js", headers={"Accept-Encoding": "identity"}, timeout=TIMEOUT)
    assert plain.headers["ETag"] != etag and plain.headers.get("Accept-Ranges") == "bytes"
    other = requests.get(server.url + "/static/chat.js", headers={"Accept-Encoding": "identity", "If-None-Match": etag},
                         timeout=TIMEOUT)
    assert other.status_code == 200 and "Content-Encoding" not in other.headers
    plain_304 = requests.get(server.url + "/static/chat.js", timeout=TIMEOUT,
                             headers={"Accept-Encoding": "identity", "If-None-Match": plain.headers["ETag"]})
    assert plain_304.status_code == 304 and "Accept-Encoding" in plain_304.headers.get("Vary", "")
    zipped = requests.get(server.url + "/static/chat.js", headers={"Accept-Encoding": "gzip"}, timeout=TIMEOUT)
    assert zipped.headers["Content-Encoding"] == "gzip" and "Accept-Ranges" not in zipped.headers
    context = browser.new_context()
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    problems = []
    page.on("console", lambda message: problems.append(message.text) if message.type == "error" else None)
    page.on("response", lambda response: problems.append(f"{response.status} {response.url}")
            if response.status >= 400 else None)
    for path in ("/", "/status"):
        page.goto(server.url + path)
        expect(page.locator('meta[name="description"]')).to_have_attribute("content", re.compile(r"\w{3,}"))
        expect(page.locator('link[rel="icon"]')).to_have_attribute("href", re.compile(r"favicon"))
        page.wait_for_load_state("networkidle")
    assert not problems, problems
    context.close()
