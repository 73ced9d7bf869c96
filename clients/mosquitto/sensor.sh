#!/usr/bin/env bash
# A fake temperature/humidity sensor: joins, sends a reading every INTERVAL seconds.
#   ./sensor.sh [client_id] [name]          COUNT=3 INTERVAL=1 ./sensor.sh   (stop after 3)
# Environment: BROKER (localhost), PORT (1883), MQTT_USERNAME / MQTT_PASSWORD (broker login; the
#              client_id defaults to MQTT_USERNAME), PREFIX (chatroom), ROOM (lobby),
#              INTERVAL (30), COUNT (0 = forever), SHARED_TOPICS (0).
# It publishes on its device topics (users/join/<client_id>, messages/in/<client_id>,
# users/leave/<client_id>); SHARED_TOPICS=1 uses the shared ones (older servers).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
client_id=${1:-${MQTT_USERNAME:-sensor-$(hostname)}}
name=${2:-Fake sensor}
check_client_id "$client_id"
pub users/join "$client_id" "$(json client_id="$client_id" username="$name")"
trap 'pub users/leave "$client_id" "$(json client_id="$client_id")"; exit 0' INT TERM
sent=0
while [ "${COUNT:-0}" = 0 ] || [ "$sent" -lt "${COUNT:-0}" ]; do
  temperature=$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", 20 + (r % 60) / 10 }')
  humidity=$(( 35 + RANDOM % 20 ))
  pub messages/in "$client_id" "$(json client_id="$client_id" username="$name" message="$temperature °C, $humidity %" \
                                       data:="{\"temperature\": $temperature, \"humidity\": $humidity}" \
                                       message_id="$client_id-$(date +%s)-$sent")"
  sent=$((sent + 1))
  if [ "${COUNT:-0}" = 0 ] || [ "$sent" -lt "${COUNT:-0}" ]; then sleep "${INTERVAL:-30}"; fi
done
pub users/leave "$client_id" "$(json client_id="$client_id")"
