#!/usr/bin/env bash
# A fake temperature/humidity sensor: joins, sends a reading every INTERVAL seconds.
#   ./sensor.sh [client_id] [name]          COUNT=3 INTERVAL=1 ./sensor.sh   (stop after 3)
# Environment: BROKER (localhost), PORT (1883), PREFIX (chatroom), ROOM (lobby),
#              INTERVAL (30), COUNT (0 = forever).
set -euo pipefail
. "$(dirname "$0")/lib.sh"
client_id=${1:-sensor-$(hostname)}
name=${2:-Fake sensor}
pub users/join "$(json client_id="$client_id" username="$name")"
trap 'pub users/leave "$(json client_id="$client_id")"; exit 0' INT TERM
sent=0
while [ "${COUNT:-0}" = 0 ] || [ "$sent" -lt "${COUNT:-0}" ]; do
  temperature=$(awk -v r="$RANDOM" 'BEGIN { printf "%.1f", 20 + (r % 60) / 10 }')
  humidity=$(( 35 + RANDOM % 20 ))
  pub messages/in "$(json client_id="$client_id" username="$name" message="$temperature °C, $humidity %" \
                          data:="{\"temperature\": $temperature, \"humidity\": $humidity}" \
                          message_id="$client_id-$(date +%s)-$sent")"
  sent=$((sent + 1))
  if [ "${COUNT:-0}" = 0 ] || [ "$sent" -lt "${COUNT:-0}" ]; then sleep "${INTERVAL:-30}"; fi
done
pub users/leave "$(json client_id="$client_id")"
