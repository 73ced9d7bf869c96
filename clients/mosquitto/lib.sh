# Shared by send.sh, sensor.sh and listen.sh. Source it; do not run it.
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

# The topic base of ROOM under PREFIX (the default room has no room segment).
topic_base() {
  local base=${PREFIX:-chatroom}
  [ "${ROOM:-lobby}" = lobby ] || base="$base/$ROOM"
  printf '%s' "$base"
}

pub() {  # pub TOPIC_SUFFIX PAYLOAD
  mosquitto_pub -h "${BROKER:-localhost}" -p "${PORT:-1883}" -q 1 -t "$(topic_base)/$1" -m "$2"
}
