"""What a stranger on the broker can cost the relay through the command topics (PROTOCOL 11).

    .venv/bin/python -m bench.command_flood

Starts its own mosquitto and `python app.py` (eventlet, RATE_LIMIT=0 so only the bounds
under test act, HA_DISCOVERY on) and publishes, anonymously:
1. 20 000 acks with invented command_ids on 2 000 invented device topics, and 5 000 acks
   that are not JSON;
2. 2 000 new client_ids joining with a declaration near the 16 KiB payload limit (16 enum
   commands of 16 options of 50 characters; the largest one allowed does not fit a payload);
3. 5 000 history requests (limit 100, a room of 300 messages) from 500 device topics;
4. 5 000 Home Assistant set publications for devices that declared nothing.
For each: the server's RSS before and after, its log lines, what the bridge counted, and
what it published in answer. Every process it starts is stopped by its PID.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from bench.hostile_load import rss_mb  # noqa: E402
from bench.hostile_mqtt import DISCOVERY, Setup, count_on, publish_all  # noqa: E402


def measure(setup: Setup, name: str, items: list[tuple[str, object]], answers: list[str]) -> dict:
    assert setup.server.proc is not None
    counted, _ = count_on(setup.broker.port, answers)
    lines_before, _ = setup.log_size()
    rss_before = rss_mb(setup.server.proc.pid)
    started = time.monotonic()
    client = setup.client()
    publish_all(client, items)
    setup.settle()
    status = setup.status() or {}
    lines_after, _ = setup.log_size()
    client.loop_stop()
    client.disconnect()
    counted["client"].loop_stop()
    result = {"scenario": name, "publications": len(items), "seconds": round(time.monotonic() - started, 1),
              "rss_mb": f"{rss_before:.1f} -> {rss_mb(setup.server.proc.pid):.1f}",
              "log_lines": lines_after - lines_before, "answers_published": counted["messages"],
              **{key: status.get(key) for key in ("acks_ignored", "messages_rejected", "errors_suppressed",
                                                  "requests_answered", "ha_commands_ignored",
                                                  "ha_controls_deferred", "outbox_size", "messages_dropped")}}
    print(json.dumps(result), flush=True)
    return result


def main() -> int:
    with tempfile.TemporaryDirectory() as work:
        setup = Setup(ROOT, Path(work))
        try:
            p = setup.prefix
            devices = f"{p}/devices"
            # 1. bogus acks
            acks: list[tuple[str, object]] = [(f"{devices}/ghost-{n % 2000}/commands/ack",
                                               {"command_id": f"invented-{n}", "ok": True}) for n in range(20_000)]
            acks += [(f"{devices}/ghost-{n % 2000}/commands/ack", b"not json") for n in range(5_000)]
            measure(setup, "bogus acks", acks, [f"{p}/errors"])
            # 2. the largest declarations, from new ids
            options = [f"{n:02d}" + "o" * 48 for n in range(16)]
            declaration = {f"command_{c}": {"type": "enum", "options": options} for c in range(16)}
            joins = [(f"{p}/users/join/decl-{n}", {"commands": declaration}) for n in range(2000)]
            result = measure(setup, "declarations", joins, [f"{DISCOVERY}/#"])
            declared = requests.get(f"{setup.server.url}/api/commands", timeout=30).json()["devices"]
            print(json.dumps({"declaring devices kept": len(declared), "discovery publications":
                              result["answers_published"]}), flush=True)
            # 3. history requests
            for n in range(300):
                requests.post(f"{setup.server.url}/api/messages", json={"username": "cron", "message": f"{n} " * 200},
                              timeout=30)
            asks = [(f"{devices}/asker-{n % 500}/requests",
                     {"request_id": n, "request": "history", "limit": 100}) for n in range(5000)]
            measure(setup, "history requests", asks, [f"{devices}/+/responses"])
            # 4. Home Assistant set topics of nobody
            sets = [(f"{devices}/nobody-{n % 1000}/set/power", b"ON") for n in range(5000)]
            measure(setup, "HA set topics of nobody", sets, [f"{devices}/+/commands"])
            print(json.dumps({"unanswered status requests": setup.unanswered}), flush=True)
        finally:
            setup.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
