"""Debian's chromium driven by Playwright, for the page tests (never a downloaded browser)."""
from __future__ import annotations

import os

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
