"""The fan-out yardstick: the least a Flask-SocketIO relay can do.

`python bench/bare_socketio_relay.py MQTT_PORT PREFIX WEB_PORT` serves Socket.IO
(eventlet, as our default), puts every client that sends `join` in the lobby,
and emits each PREFIX/messages/in payload as a `chat_message` of the same shape
as ours to the lobby. No validation, no storage, no MQTT out: what our server
does on top of this costs CPU per delivery, and the benchmark reports the ratio.

It emits from a green thread of its own, fed by a queue, as ours does (and as a
Flask-SocketIO app that receives MQTT should): emitting inside paho's callback
made each message wake every client's writer on its own, which measured 2.6x
slower than our server and flattered the ratio.
"""
import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from collections import deque  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import eventlet.event  # noqa: E402
import eventlet.wsgi  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
from flask import Flask  # noqa: E402
from flask_socketio import SocketIO, join_room  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from mqtt_service.callbacks import set_tcp_nodelay  # noqa: E402


def main() -> int:
    mqtt_port, prefix, web_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="eventlet", logger=False, engineio_logger=False)
    seq = [0]

    @socketio.on("join")
    def on_join(data):
        join_room("lobby")
        return {"ok": True}

    waiting: deque[bytes] = deque()
    arrived = eventlet.event.Event()

    def on_message(client, userdata, message):
        waiting.append(message.payload)
        if not arrived.ready():
            arrived.send()

    def emitter():
        nonlocal arrived
        while True:
            arrived.wait()
            arrived = eventlet.event.Event()
            while waiting:
                body = json.loads(waiting.popleft())
                seq[0] += 1
                socketio.emit("chat_message", {
                    "type": "user_message", "username": body.get("client_id"), "content": body.get("message"),
                    "room": "lobby", "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                    "message_id": str(uuid.uuid4()), "seq": seq[0], "source": "mqtt",
                    "client_id": body.get("client_id"), "client_message_id": None, "data": None,
                    "reply_to": None}, to="lobby")

    socketio.start_background_task(emitter)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-relay-{uuid.uuid4().hex[:6]}")
    client.max_inflight_messages_set(0)  # the same paho settings as our bridge
    client.max_queued_messages_set(0)
    client.on_socket_open = lambda client, userdata, sock: set_tcp_nodelay(sock)
    client.on_connect = lambda c, u, f, rc, p: c.subscribe(f"{prefix}/messages/in", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    listener = eventlet.listen(("127.0.0.1", web_port))
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as our server does
    eventlet.wsgi.server(listener, app, log_output=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
