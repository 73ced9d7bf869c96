#!/usr/bin/env python3
"""Chat room client over MQTT (paho-mqtt 2.x): join, talk, listen.

    python clients/python_client.py --broker localhost --name Alice            # interactive
    python clients/python_client.py --name cron --send "backup done"           # send once, exit 0
    python clients/python_client.py --listen                                   # print the room

It joins on connect (again after every reconnect), leaves on exit, and sets
an MQTT will on users/leave so the room sees it go if the connection dies.
Needs only `pip install paho-mqtt`.
"""
from __future__ import annotations

import argparse
import json
import logging
import signal
import socket
import sys
import threading
import uuid
from datetime import datetime

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("chat-client")


class ChatClient:
    """One room member over MQTT. Call start(), then say()/close()."""

    def __init__(self, broker: str, port: int, name: str, client_id: str, room: str = "lobby",
                 prefix: str = "chatroom", listen: bool = False, output=sys.stdout):
        self.name, self.client_id, self.room = name, client_id, room
        base = prefix if room == "lobby" else f"{prefix}/{room}"
        self.topics = {kind: f"{base}/{kind}" for kind in
                       ("messages/in", "messages/out", "users/join", "users/leave", "system")}
        self.errors_topic = f"{prefix}/errors"
        self.listen = listen
        self.output = output
        self.joined = threading.Event()
        self.broker, self.port = broker, port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        self.client.will_set(self.topics["users/leave"], json.dumps({"client_id": client_id}), qos=1)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect

    def start(self, timeout: float = 15) -> bool:
        self.client.connect_async(self.broker, self.port, keepalive=30)
        self.client.loop_start()
        return self.joined.wait(timeout)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        subscriptions = [(self.errors_topic, 1)]
        if self.listen:
            subscriptions += [(self.topics["messages/out"], 1), (self.topics["system"], 1)]
        client.subscribe(subscriptions)
        # Join (again) on every connect: the server ignores a repeat join.
        info = client.publish(self.topics["users/join"],
                              json.dumps({"client_id": self.client_id, "username": self.name}), qos=1)
        threading.Thread(target=self._confirm_join, args=(info,), daemon=True).start()

    def _confirm_join(self, info) -> None:
        info.wait_for_publish(15)
        self.joined.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if reason_code != 0:
            log.warning("connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message):
        try:
            event = json.loads(message.payload)
        except ValueError:
            return
        if message.topic == self.errors_topic:
            if event.get("client_id") == self.client_id:
                print(f"! rejected ({event.get('code')}): {event.get('error')}", file=sys.stderr, flush=True)
            return
        print(format_event(event), file=self.output, flush=True)

    def say(self, text: str, data: dict | None = None) -> None:
        body = {"client_id": self.client_id, "username": self.name, "message": text,
                "message_id": str(uuid.uuid4())}
        if data:
            body["data"] = data
        self.client.publish(self.topics["messages/in"], json.dumps(body, ensure_ascii=False),
                            qos=1).wait_for_publish(15)

    def close(self) -> None:
        """Leave the room, then disconnect cleanly (no will is sent)."""
        if self.client.is_connected():
            self.client.publish(self.topics["users/leave"], json.dumps({"client_id": self.client_id}),
                                qos=1).wait_for_publish(5)
        self.client.disconnect()
        self.client.loop_stop()


def format_event(event: dict) -> str:
    """`[HH:MM:SS] user: text` for messages, `[HH:MM:SS] * text` for system events."""
    try:
        stamp = datetime.fromisoformat(event["timestamp"]).astimezone().strftime("%H:%M:%S")
    except (KeyError, TypeError, ValueError):
        stamp = datetime.now().strftime("%H:%M:%S")
    if event.get("type") == "system_message":
        return f"[{stamp}] * {event.get('message', '')}"
    readings = event.get("data")
    extra = "  (" + ", ".join(f"{k}={v}" for k, v in readings.items()) + ")" if readings else ""
    return f"[{stamp}] {event.get('username', '?')}: {event.get('content', '')}{extra}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat room client over MQTT.")
    parser.add_argument("--broker", default="localhost", help="MQTT broker host (default localhost)")
    parser.add_argument("--port", type=int, default=1883, help="MQTT broker port (default 1883)")
    parser.add_argument("--name", default=f"py-{socket.gethostname()}"[:32], help="display name")
    parser.add_argument("--client-id", default=None, help="MQTT client id (default: py-<random>)")
    parser.add_argument("--room", default="lobby", help="room (default lobby)")
    parser.add_argument("--prefix", default="chatroom", help="topic prefix (default chatroom)")
    parser.add_argument("--send", metavar="TEXT", help="join, send TEXT once, leave and exit")
    parser.add_argument("--listen", action="store_true", help="print room messages until Ctrl-C")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    client_id = args.client_id or f"py-{uuid.uuid4().hex[:8]}"
    client = ChatClient(args.broker, args.port, args.name, client_id, args.room, args.prefix,
                        listen=args.listen or not args.send)
    if not client.start():
        print(f"cannot reach the broker at {args.broker}:{args.port}", file=sys.stderr)
        client.client.loop_stop()
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    try:
        if args.send:
            client.say(args.send)
        elif args.listen:
            stop.wait()
        else:
            print(f"joined {args.room} as {args.name}; type to send, Ctrl-D to leave", file=sys.stderr)
            for line in sys.stdin:
                if line.strip():
                    client.say(line.strip())
    except KeyboardInterrupt:
        pass
    finally:
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
