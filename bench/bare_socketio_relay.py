"""The fan-out yardstick: the stock Flask-SocketIO relay a user would write.

`python bench/bare_socketio_relay.py MQTT_PORT PREFIX WEB_PORT` serves Socket.IO on
eventlet, puts every client that sends `join` in the lobby, and emits each
PREFIX/messages/in payload as a `chat_message` of the same shape as ours to the lobby.
No validation, no storage, no MQTT out.

The pattern is the documented one, unchanged:
- Flask-SocketIO "Deployment / Using nginx…" and "Getting Started": with eventlet,
  `eventlet.monkey_patch()` first, `SocketIO(app, async_mode="eventlet")`,
  `socketio.run(app)`;
- Flask-SocketIO "Emitting from an external process / Broadcasting":
  `socketio.emit(event, data, to=room)` from anywhere in the server;
- the Flask-MQTT + Flask-SocketIO example and paho's README: `client.loop_start()`
  and `socketio.emit(...)` inside `on_message`.
One addition, which can only help it: TCP_NODELAY on the MQTT socket, as ours sets.

Issue 24 measured this against the queue + green thread version this file held
before: the same CPU per delivery (~37-40 µs), because paho reads one packet per
green `select()`, so either way every message wakes each client's Engine.IO writer
on its own (one `Socket.poll` per delivery in a yappi profile).
"""
import eventlet

eventlet.monkey_patch()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
import uuid  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import paho.mqtt.client as mqtt  # noqa: E402
from flask import Flask  # noqa: E402
from flask_socketio import SocketIO, join_room  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402


def main() -> int:
    mqtt_port, prefix, web_port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    app = Flask(__name__)
    socketio = SocketIO(app, async_mode="eventlet")
    seq = 0

    @socketio.on("join")
    def on_join(data):
        join_room("lobby")
        return {"ok": True}

    def on_message(client, userdata, message):
        nonlocal seq
        body = json.loads(message.payload)
        seq += 1
        socketio.emit("chat_message", {
            "type": "user_message", "username": body.get("client_id"), "content": body.get("message"),
            "room": "lobby", "timestamp": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
            "message_id": str(uuid.uuid4()), "seq": seq, "source": "mqtt", "client_id": body.get("client_id"),
            "client_message_id": None, "data": None, "reply_to": None}, to="lobby")

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"bare-relay-{uuid.uuid4().hex[:6]}")
    client.on_socket_open = lambda c, u, sock: sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.on_connect = lambda c, u, flags, rc, props: c.subscribe(f"{prefix}/messages/in", qos=1)
    client.on_message = on_message
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    socketio.run(app, host="127.0.0.1", port=web_port, log_output=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
