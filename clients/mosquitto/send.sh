#!/usr/bin/env bash
# Send one chat message: ./send.sh "backup done" [name] [client_id]
# Environment: BROKER (localhost), PORT (1883), PREFIX (chatroom), ROOM (lobby).
set -euo pipefail
text=${1:?usage: send.sh "message text" [name] [client_id]}
name=${2:-$(hostname | cut -c1-32)}
client_id=${3:-sh-$(hostname)-$$}
base=${PREFIX:-chatroom}
[ "${ROOM:-lobby}" = lobby ] || base="$base/$ROOM"
json_string() { python3 -c 'import json,sys; print(json.dumps(sys.argv[1], ensure_ascii=False))' "$1"; }
payload="{\"client_id\":$(json_string "$client_id"),\"username\":$(json_string "$name"),\"message\":$(json_string "$text"),\"message_id\":\"$(cat /proc/sys/kernel/random/uuid)\"}"
mosquitto_pub -h "${BROKER:-localhost}" -p "${PORT:-1883}" -q 1 -t "$base/messages/in" -m "$payload"
