#!/usr/bin/env bash
# Print the room as "[HH:MM:SS] user: text" until Ctrl-C: ./listen.sh
# Environment: BROKER (localhost), PORT (1883), PREFIX (chatroom), ROOM (lobby).
set -euo pipefail
base=${PREFIX:-chatroom}
[ "${ROOM:-lobby}" = lobby ] || base="$base/$ROOM"
mosquitto_sub -h "${BROKER:-localhost}" -p "${PORT:-1883}" -q 1 -t "$base/messages/out" -t "$base/system" |
  python3 -u -c '
import json, sys
from datetime import datetime
for line in sys.stdin:
    try:
        event = json.loads(line)
        stamp = datetime.fromisoformat(event["timestamp"]).astimezone().strftime("%H:%M:%S")
    except (ValueError, KeyError):
        continue
    if event.get("type") == "system_message":
        text = "* " + str(event.get("message"))
    else:
        text = str(event.get("username")) + ": " + str(event.get("content"))
    print("[" + stamp + "] " + text)
'
