"""CPU per inbound MQTT message inside the server, without a broker or the network.

    .venv/bin/python -m bench.inbound_cpu                 # µs of process CPU per message
    .venv/bin/python -m bench.inbound_cpu --profile 30    # and cProfile's top 30 by own time
    .venv/bin/python -m bench.inbound_cpu --redis-url redis://127.0.0.1:6379/0   # the shared path

Builds the real app (eventlet, SQLite in a temp dir, every listener), puts a stand-in
for the paho client under the bridge (each publication acknowledged at once), and feeds
`on_message` device messages in bursts of 100, as paho's read loop does under load
(`--burst 1 --gap 0.002`: one at a time, as at a steady rate below saturation).
What it measures is our own path: parsing, the intake's rules, the history write and
the group commit, the listeners, the bridge's bookkeeping. paho's packet work and the
sockets are not in it (`make bench` measures the whole). Steadier than a live run on a
shared machine, so it is the tool for changes worth a few µs: run it alternately
before and after, several times, and compare the best runs.
"""
import eventlet

eventlet.monkey_patch()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

from paho.mqtt.enums import MQTTErrorCode  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import app as server  # noqa: E402
from chatroom.config import Settings  # noqa: E402
from chatroom.core.validation import DEFAULT_ROOM  # noqa: E402
from chatroom.ops.startup import settle_garbage_collector  # noqa: E402

BURST = 100


class _Info:
    rc = MQTTErrorCode.MQTT_ERR_SUCCESS

    def __init__(self, mid: int):
        self.mid = mid


class _Message:
    """What paho hands on_message."""

    def __init__(self, topic: str, payload: bytes, mid: int):
        self.topic, self.payload, self.mid, self.qos = topic, payload, mid, 1


class _AckingClient:
    """Stands in for paho.Client: every publication is acknowledged at once."""

    def __init__(self, bridge):
        self.bridge = bridge
        self.mid = 0
        self.published: Counter[str] = Counter()

    def publish(self, topic, payload, qos=0, retain=False):
        self.mid += 1
        self.published[topic] += 1
        self.bridge.on_publish(self, None, self.mid, None, None)
        return _Info(self.mid)

    def ack(self, mid, qos):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--burst", type=int, default=BURST, help="messages read in one go (1: a steady trickle)")
    parser.add_argument("--gap", type=float, default=0.0, help="seconds between bursts (a steady rate: 0.002)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's top N")
    parser.add_argument("--redis-url", default="", help="several instances' path: presence, locks, dedup "
                        "and the Socket.IO channel in this Redis (a key prefix of its own)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = tempfile.mkdtemp(prefix="inbound-cpu-")
    shared = ({"REDIS_URL": args.redis_url, "MQTT_SHARED_GROUP": "g", "INSTANCE_ID": "i0",
               "MQTT_TOPIC_PREFIX": f"cpu{os.getpid()}"} if args.redis_url else {})
    settings = Settings.from_env({"DATABASE_PATH": os.path.join(workdir, "history.db"), "RATE_LIMIT": "0",
                                  "LOG_LEVEL": "WARNING", **shared})
    app = server.create_app(settings)
    bridge = app.extensions["chatroom"].bridge
    # The parts of MqttBridge.start() that are not the network.
    client = _AckingClient(bridge)
    bridge._client, bridge._running = client, True
    bridge.outbox.attach(client)
    bridge.outbox.connected(after_drain=lambda: None)
    threading.Thread(target=bridge._run_flusher, daemon=True).start()

    warm_up = 2000
    payloads = [json.dumps({"client_id": "bench-device", "username": "bench-device",
                            "message": f"{n} reading"}).encode() for n in range(warm_up + args.messages)]
    topic = f"{settings.mqtt_topic_prefix}/messages/in"

    def feed(first: int, last: int) -> None:
        for n in range(first, last):
            bridge.on_message(None, None, _Message(topic, payloads[n], n % 65535 + 1))
            if n % args.burst == args.burst - 1:
                eventlet.sleep(args.gap)  # the read loop waits for the socket: the flusher and listeners run
        eventlet.sleep(0)
        bridge.rooms.drain(60)

    feed(0, warm_up)
    settle_garbage_collector()  # as main() does before serving
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile(time.process_time)  # CPU, not the waits of a shared machine
        profiler.enable()
    start = time.process_time()
    feed(warm_up, warm_up + args.messages)
    used = time.process_time() - start
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats(os.environ.get("PROFILE_SORT", "tottime")).print_stats(args.profile)
    # A figure for a path that did not run would be worse than none.
    total = warm_up + args.messages
    stored = bridge.rooms.history.last_seq(DEFAULT_ROOM)
    relayed = client.published[bridge.topics.messages_out(DEFAULT_ROOM)]
    if stored != total or relayed != total:
        print(f"the path did not run: {stored} stored and {relayed} relayed of {total}", file=sys.stderr)
        os._exit(1)
    print(f"{used * 1e6 / args.messages:.1f} µs of CPU per inbound message ({args.messages} messages"
          f"{', under cProfile' if profiler else ''})", flush=True)
    os._exit(0)  # the listener and flusher threads never end on their own


if __name__ == "__main__":
    sys.exit(main())
