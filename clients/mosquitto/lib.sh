# Shared by send.sh, sensor.sh and listen.sh. Source it; do not run it.
#
# Environment: BROKER (localhost), PORT (1883), MQTT_USERNAME / MQTT_PASSWORD (a broker
# login, passed as -u / -P; the names the Python and Node.js clients read too, not
# USERNAME, which many desktop sessions and Windows set to your own login),
# PREFIX (chatroom), ROOM (lobby), SHARED_TOPICS (1: the shared inbound topics, for
# servers older than device topics).
#
# json KEY=VALUE ... prints one JSON object: KEY=VALUE is a string, KEY:=VALUE is raw
# JSON (a number, true, an object). Built by Python's json module, never by pasting
# strings, so quotes, backslashes and newlines in names and messages stay data.
json() {
  python3 -c '
import json, sys
obj = {}
for arg in sys.argv[1:]:
    key, sep, value = arg.partition("=")
    if key.endswith(":"):
        obj[key[:-1]] = json.loads(value)
    else:
        obj[key] = value
print(json.dumps(obj, ensure_ascii=False))
' "$@"
}

# Options for mosquitto_pub and mosquitto_sub: the broker, and the login if one is set.
# (-P shows the password to other users of this machine in `ps`; on a shared machine put
# it in ~/.config/mosquitto_pub instead, see mosquitto_pub(1).)
MQTT_OPTS=(-h "${BROKER:-localhost}" -p "${PORT:-1883}")
[ -z "${MQTT_USERNAME:-}" ] || MQTT_OPTS+=(-u "$MQTT_USERNAME")
[ -z "${MQTT_PASSWORD:-}" ] || MQTT_OPTS+=(-P "$MQTT_PASSWORD")

shared_topics() {
  case "${SHARED_TOPICS:-0}" in 1|true|yes) return 0 ;; *) return 1 ;; esac
}

# The topic base of ROOM under PREFIX (the default room has no room segment).
topic_base() {
  local base=${PREFIX:-chatroom}
  [ "${ROOM:-lobby}" = lobby ] || base="$base/$ROOM"
  printf '%s' "$base"
}

# check_client_id ID: on the device topics the id is a topic level, so '/', '+' and '#'
# cannot be in it (exit 2 with the reason).
check_client_id() {
  shared_topics && return 0
  case "$1" in
    '' | */* | *+* | *'#'*)
      echo "client id '$1' cannot be a topic level (no '/', '+' or '#', not empty);" \
           "choose another or set SHARED_TOPICS=1" >&2
      exit 2 ;;
  esac
}

# inbound_topic KIND CLIENT_ID: where a message of KIND (messages/in, users/join,
# users/leave) from CLIENT_ID goes: its own device topic KIND/CLIENT_ID (PROTOCOL 10,
# which a broker ACL can bind to its login), or with SHARED_TOPICS=1 the shared KIND.
inbound_topic() {
  if shared_topics; then
    printf '%s/%s' "$(topic_base)" "$1"
  else
    printf '%s/%s/%s' "$(topic_base)" "$1" "$2"
  fi
}

pub() {  # pub KIND CLIENT_ID PAYLOAD
  mosquitto_pub "${MQTT_OPTS[@]}" -q 1 -t "$(inbound_topic "$1" "$2")" -m "$3"
}
