"""The chat page against hostile text (issue 21, findings 12 and 13; PROTOCOL 9 "Text").

Data keys named like Object.prototype's members show the values sent; stacked combining
marks are capped and cannot paint over other messages or the Online panel; bidirectional
overrides stay inside the text that carries them. Playwright + Debian chromium."""
import pytest
from browser_support import open_chat
from conftest import app_env
from playwright.sync_api import expect

from support import MqttProbe

PHONE = {"viewport": {"width": 390, "height": 844}, "device_scale_factor": 2, "is_mobile": True, "has_touch": True}
ISOLATING = ("isolate", "isolate-override", "plaintext")


@pytest.fixture
def server(broker, tmp_path, server_for):
    return server_for(app_env(broker, tmp_path, ASYNC_MODE="eventlet", RATE_LIMIT="0"))


def device(server, broker, payload):
    with MqttProbe(broker.port) as probe:
        probe.publish(f"{server.env['MQTT_TOPIC_PREFIX']}/messages/in", payload)


def box(locator):
    found = locator.bounding_box()
    assert found is not None, f"{locator} is not rendered"
    return found


def overlaps(a, b):
    return (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
            and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])


def pixels(page, area):
    # One pixel in from each edge: at fractional positions the edge rows are shared with the neighbour.
    inside = {"x": area["x"] + 1, "y": area["y"] + 1, "width": area["width"] - 2, "height": area["height"] - 2}
    return page.screenshot(clip=inside, animations="disabled", caret="hide")


def paints_over(page, hostile, area):
    """Does `hostile` paint anything inside `area`? Its layout boxes do not show ink (stacked
    marks draw outside them), so `area` is photographed with it shown and with it hidden."""
    shown = pixels(page, area)
    hostile.evaluate("node => { node.style.visibility = 'hidden'; }")
    hidden = pixels(page, area)
    hostile.evaluate("node => { node.style.visibility = ''; }")
    return shown != hidden


def is_isolated(scope, text):
    """Is the innermost element holding `text` a bidi isolate whose direction comes from
    that text? (Every div isolates already: the text's own element must, not its block.)"""
    return scope.evaluate("""(scope, [text, isolating]) => {
        const holders = [scope, ...scope.querySelectorAll('*')].filter((n) => n.textContent.includes(text));
        const node = holders[holders.length - 1];
        return node.localName === 'bdi'
            || (isolating.includes(getComputedStyle(node).unicodeBidi) && node.getAttribute('dir') === 'auto');
    }""", [text, list(ISOLATING)])


def test_data_keys_named_like_object_members_show_the_values_sent(browser, server, broker):
    """Finding 12: `constructor` showed `function Object() { [native code] }`."""
    page = open_chat(browser, server, "Keys")
    device(server, broker, b'{"client_id":"esp-proto","username":"Proto","message":"keys",'
                           b'"data":{"constructor":5,"toString":6,"__proto__":7.0,"valueOf":8,"hasOwnProperty":9}}')
    expected = ["constructor: 5", "toString: 6", "__proto__: 7.0", "valueOf: 8", "hasOwnProperty: 9"]
    expect(page.locator(".msg .chip")).to_have_text(expected)
    expect(page.locator("#readings .chip")).to_have_text(expected)
    expect(page.locator("#readings .spark")).to_have_count(5)  # every key has its own sparkline
    expect(page.locator("body")).not_to_contain_text("native code")
    expect(page.locator("body")).not_to_contain_text("[object Object]")
    page.reload()  # history goes through the same decoder
    expect(page.locator(".msg .chip")).to_have_text(expected)
    expect(page.locator("body")).not_to_contain_text("native code")
    page.context.close()


@pytest.mark.parametrize("options", [{"viewport": {"width": 1280, "height": 800}}, PHONE], ids=["desktop", "phone"])
def test_stacked_combining_marks_stay_inside_their_message(browser, server, broker, options):
    """Finding 13: 31 marks on a name and 1 999 in a message painted over other messages and
    the Online panel, and made one message tens of thousands of pixels tall."""
    page = open_chat(browser, server, "Reader", **options)
    stacked = "Z" + "\u0301\u0300\u0302\u0303" * 7 + "\u0308\u0304\u0306"  # 31 marks on one letter
    device(server, broker, {"client_id": "esp-before", "username": "Before", "message": "the message before"})
    device(server, broker, {"client_id": "esp-zalgo", "username": stacked, "message": "a" + "\u0301" * 1999})
    device(server, broker, {"client_id": "esp-after", "username": "After", "message": "the message after"})
    messages = page.locator("#messages .msg:not(.msg-system)")
    expect(messages).to_have_count(3)
    # Everyone's arrival is shown before pixels are compared (nothing moves between two pictures).
    expect(page.locator("#user-count")).to_have_text("4")
    expect(page.locator("#messages .msg-system")).to_have_count(4)
    before, hostile, after = messages.nth(0), messages.nth(1), messages.nth(2)
    assert box(hostile)["height"] < 200
    assert not overlaps(box(hostile), box(before)) and not overlaps(box(hostile), box(after))
    assert not paints_over(page, hostile, box(before)), "marks paint over the message before"
    assert not paints_over(page, hostile, box(after)), "marks paint over the message after"
    if options is PHONE:
        page.click("#panels-toggle")
    expect(page.locator("#users .user")).to_have_count(4)
    named = page.locator("#users .user", has_text="Z")
    others = page.locator("#users .user:not(:has-text('Z'))")
    assert box(named)["height"] < 100
    for number in range(others.count()):
        other = box(others.nth(number))
        assert not overlaps(box(named), other)
        assert not paints_over(page, named, other), "marks paint over the Online panel"
    panel = box(page.locator("#users").locator("xpath=.."))
    summary = box(page.locator("#users-title"))
    assert not paints_over(page, named, summary), "marks paint over the Online panel's title"
    assert box(named)["x"] + box(named)["width"] <= panel["x"] + panel["width"] + 1
    page.context.close()


def test_a_right_to_left_override_stays_inside_its_message(browser, server, broker):
    """Finding 13: an RLO (U+202E) reversed the text around it."""
    page = open_chat(browser, server, "Reader")
    device(server, broker, {"client_id": "esp-bidi", "username": "Bidi", "message": "plain words"})
    # Another sender between them: one sender's next message within minutes is drawn without
    # its header (grouped, issue 27), and the header is what is compared here.
    device(server, broker, {"client_id": "esp-other", "username": "Other", "message": "in between"})
    device(server, broker, {"client_id": "esp-bidi", "username": "Bidi", "message": "\u202ereversed words",
                            "data": {"mode": "\u202eoverride"}})
    messages = page.locator("#messages .msg:not(.msg-system)")
    expect(messages).to_have_count(3)
    plain, hostile = messages.nth(0), messages.nth(2)
    for text in ("\u202ereversed words", "Bidi", "\u202eoverride", "mode"):
        assert is_isolated(hostile, text), f"{text!r} is not bidi-isolated"
    expect(page.locator("#users .user", has_text="Bidi")).to_have_count(1)  # the list follows the message
    assert is_isolated(page.locator("#users"), "Bidi"), "Online names are not bidi-isolated"
    expect(page.locator("#readings .reading", has_text="Bidi")).to_have_count(1)
    assert is_isolated(page.locator("#readings"), "Bidi"), "device names are not bidi-isolated"
    assert is_isolated(page.locator("#readings"), "\u202eoverride"), "readings are not bidi-isolated"
    # A right-to-left message reads right to left, whatever the page's direction.
    device(server, broker, {"client_id": "esp-bidi", "username": "Bidi", "message": "שלום, world!"})
    expect(page.locator(".msg .text", has_text="world")).to_have_js_property("dir", "auto")
    assert page.locator(".msg .text", has_text="world").evaluate("node => node.matches(':dir(rtl)')")
    # The name, its source and the time keep their places, as in the plain message.
    for message in (plain, hostile):
        who, src, when = (box(message.locator(part)) for part in (".who", ".src", ".when"))
        assert who["x"] + who["width"] <= src["x"] and src["x"] + src["width"] <= when["x"]
    for part in (".who", ".when", ".text"):
        assert abs(box(plain.locator(part))["x"] - box(hostile.locator(part))["x"]) < 1, part
    page.context.close()
