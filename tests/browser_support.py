"""Debian's chromium driven by Playwright, for the page tests (never a downloaded browser)."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from playwright.sync_api import expect, sync_playwright

from support import TIMEOUT

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def launched_chromium():
    """Debian's chromium under Playwright, for the `browser` fixture (conftest.py)."""
    # Never skipped: a missing browser must fail loudly (`make test` installs Debian's chromium).
    assert os.path.exists(CHROMIUM), "Debian chromium missing at /usr/bin/chromium: run `make test`"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_chat(browser, server, name, **context_options):
    """A new browser context on the chat page, joined as `name`."""
    context = browser.new_context(**context_options)
    context.set_default_timeout(TIMEOUT * 1000)
    page = context.new_page()
    page.goto(server.url)
    expect(page.locator("#connection")).to_have_text("connected")
    page.fill("#username", name)
    page.click("#join-form button[type=submit]")
    expect(page.locator("#send-form")).to_be_visible()
    return page


def send(page, text):
    page.fill("#message", text)
    page.click("#send-form button[type=submit]")
    expect(page.locator("#message")).to_have_value("")


# axe-core (npm, pinned in tests/axe/package-lock.json) checks the pages against WCAG 2 A/AA.
AXE_DIR = Path(__file__).resolve().parent / "axe"
AXE_TAGS = ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa", "wcag22aa"]


def installed_axe() -> str:
    """axe.min.js's source, installed with `npm ci` (never from a CDN); fails loudly without npm."""
    assert shutil.which("npm"), "npm missing: `make test` installs nodejs and npm (system-test-deps)"
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=AXE_DIR, check=True,
                   timeout=300)
    return (AXE_DIR / "node_modules" / "axe-core" / "axe.min.js").read_text()


def axe_violations(page, axe_source: str, impacts=("serious", "critical")) -> list[str]:
    """axe's WCAG 2 A/AA violations of these impacts on the page as it is now, one line each.
    Loaded with evaluate: the page's CSP (script-src 'self') would refuse an inline script tag."""
    if not page.evaluate("typeof window.axe === 'object'"):
        page.evaluate(axe_source)
    found = page.evaluate("""async (tags) => {
        const result = await axe.run(document, {runOnly: {type: 'tag', values: tags}, resultTypes: ['violations']});
        return result.violations.map((v) => ({id: v.id, impact: v.impact, help: v.help,
            nodes: v.nodes.slice(0, 4).map((n) => n.target.join(' ') + ': '
                                                  + (n.failureSummary || '').split('\\n').slice(1).join(' '))}));
    }""", AXE_TAGS)
    return [f"{v['impact']} {v['id']} ({v['help']}): {' | '.join(v['nodes'])}" for v in found if v["impact"] in impacts]


# --- a page server with the (fake) assistant on, and what scripts and devices say in it ----------


def page_server_with_assistant(broker, folder: Path, reply: str, chunk_size: int):
    """A server in eventlet mode whose assistant streams `reply` in `chunk_size` pieces (a fake
    OpenAI server); a generator for a module fixture: yields the server, stops both."""
    from conftest import app_env
    from fake_openai import FakeOpenAI

    from support import ServerProcess

    fake = FakeOpenAI().start()
    fake.behave(reply=reply, chunk_size=chunk_size)
    running = ServerProcess(app_env(broker, folder, ASYNC_MODE="eventlet", OPENAI_API_KEY="sk-fake",
                                    OPENAI_BASE_URL=fake.base_url), log_path=folder / "server.log").start()
    try:
        yield running
    finally:
        running.stop()
        fake.stop()


def post_as_script(server, message: str, room: str, username: str = "cron") -> None:
    import requests

    response = requests.post(server.url + "/api/messages", timeout=TIMEOUT,
                             json={"username": username, "message": message, "room": room})
    assert response.status_code == 201, response.text


def post_as_device(server, broker, room: str, payload: str) -> None:
    from support import MqttProbe

    with MqttProbe(broker.port) as probe:
        probe.publish(f"{server.env['MQTT_TOPIC_PREFIX']}/{room}/messages/in", payload)
