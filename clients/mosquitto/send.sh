#!/usr/bin/env bash
# Send one chat message, then leave: ./send.sh "backup done" [name] [client_id]
# Environment: BROKER (localhost), PORT (1883), MQTT_USERNAME / MQTT_PASSWORD (broker login; the
# client_id defaults to MQTT_USERNAME), PREFIX (chatroom), ROOM (lobby), SHARED_TOPICS (0).
# It publishes on its device topics (messages/in/<client_id>, users/leave/<client_id>);
# SHARED_TOPICS=1 uses messages/in and users/leave (servers older than device topics).
# The message joins the room implicitly; the leave right after it frees the name,
# so the script leaves no member behind.
set -euo pipefail
. "$(dirname "$0")/lib.sh"
text=${1:?usage: send.sh "message text" [name] [client_id]}
name=${2:-$(hostname | cut -c1-32)}
client_id=${3:-${MQTT_USERNAME:-sh-$(hostname)-$$}}
check_client_id "$client_id"
pub messages/in "$client_id" "$(json client_id="$client_id" username="$name" message="$text" \
                                     message_id="$(cat /proc/sys/kernel/random/uuid)")"
pub users/leave "$client_id" "$(json client_id="$client_id")"
