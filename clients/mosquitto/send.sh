#!/usr/bin/env bash
# Send one chat message, then leave: ./send.sh "backup done" [name] [client_id]
# Environment: BROKER (localhost), PORT (1883), PREFIX (chatroom), ROOM (lobby).
# The message joins the room implicitly; the leave right after it frees the name,
# so the script leaves no member behind.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
text=${1:?usage: send.sh "message text" [name] [client_id]}
name=${2:-$(hostname | cut -c1-32)}
client_id=${3:-sh-$(hostname)-$$}
pub messages/in "$(json client_id="$client_id" username="$name" message="$text" \
                        message_id="$(cat /proc/sys/kernel/random/uuid)")"
pub users/leave "$(json client_id="$client_id")"
