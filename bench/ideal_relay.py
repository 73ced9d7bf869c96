"""The yardstick: the least a Python relay can do (parse, add id + timestamp + seq, re-publish).

`python bench/ideal_relay.py PORT PREFIX` relays PREFIX/messages/in to
PREFIX/messages/out at QoS 1 with the same paho settings as our bridge, until
SIGTERM. No validation, no storage, no web: anything the real server does on
top of this costs throughput, and the benchmark reports the ratio.

With `--eventlet` it runs the same code on eventlet's green threads and sockets, as
our server does by default: the difference between the two is what eventlet costs,
before any of our own code.
"""
import sys

if "--eventlet" in sys.argv:
    import eventlet

    eventlet.monkey_patch()

import json
import os
import signal
import threading
import uuid
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mqtt_service.callbacks import set_tcp_nodelay  # noqa: E402


def main() -> int:
    port, prefix = int(sys.argv[1]), sys.argv[2]
    out_topic = f"{prefix}/messages/out"
    seq = 0
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"ideal-relay-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(0)  # the same window as our bridge
    client.max_queued_messages_set(0)

    def on_connect(client, userdata, flags, reason_code, properties):
        client.subscribe(f"{prefix}/messages/in", qos=1)

    def on_message(client, userdata, message):
        nonlocal seq
        seq += 1
        body = json.loads(message.payload)
        body.update(message_id=str(uuid.uuid4()), seq=seq,
                    timestamp=datetime.now(timezone.utc).isoformat(timespec="milliseconds"))
        client.publish(out_topic, json.dumps(body, ensure_ascii=False), qos=1)

    client.on_socket_open = lambda client, userdata, sock: set_tcp_nodelay(sock)
    client.on_connect = on_connect
    client.on_message = on_message
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *args: stop.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    stop.wait()
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
