#!/usr/bin/env bash
# Print the room as "[HH:MM:SS] user: text" until Ctrl-C: ./listen.sh
# Environment: BROKER (localhost), PORT (1883), MQTT_USERNAME / MQTT_PASSWORD (broker login),
# PREFIX (chatroom), ROOM (lobby). A broker with use_username_as_clientid (the shipped
# mosquitto-devices.conf) lets one connection per login: listen with a login of its own,
# not that of a device that is running.
# Control characters in what people send are printed escaped, never run by the terminal.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
base=$(topic_base)
mosquitto_sub "${MQTT_OPTS[@]}" -q 1 -t "$base/messages/out" -t "$base/system" |
  python3 -u -c '
import json, sys, unicodedata
from datetime import datetime

def escape(c):
    code = ord(c)
    return "\\x%02x" % code if code <= 0xFF else "\\u%04x" % code if code <= 0xFFFF else "\\U%08x" % code

def safe(text):
    return "".join(escape(c) if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") else c for c in str(text))

for line in sys.stdin:
    try:
        event = json.loads(line)
        stamp = datetime.fromisoformat(event["timestamp"]).astimezone().strftime("%H:%M:%S")
    except (ValueError, KeyError, TypeError):
        continue
    if event.get("type") == "system_message":
        text = "* " + safe(event.get("message"))
    else:
        text = safe(event.get("username")) + ": " + safe(event.get("content"))
    print("[" + stamp + "] " + text)
'
