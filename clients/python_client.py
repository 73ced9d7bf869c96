#!/usr/bin/env python3
"""Chat room client over MQTT (paho-mqtt 2.x): join, talk, listen.

    python clients/python_client.py --broker localhost --name Alice            # interactive
    python clients/python_client.py --name cron --send "backup done"           # send once, exit 0
    python clients/python_client.py --listen                                   # print the room
    python clients/python_client.py --username esp-a --password s3cret --send "hi"  # a broker login
    python clients/python_client.py --client-id lamp-1 --commands '{"led":{"type":"bool"}}' --on-command ./led.sh
    python clients/python_client.py --server http://localhost:5000 --command lamp-1 led true
    python clients/python_client.py --client-id lamp-1 --history-since 120

It publishes on its own device topics (PROTOCOL 10): messages/in/<client_id>,
users/join/<client_id>, users/leave/<client_id>, which a broker ACL can bind to its
login; --shared-topics publishes on messages/in, users/join, users/leave instead
(servers older than device topics). With --username and no --client-id, the login
is the client_id. It joins on connect (again after every reconnect, and every
--heartbeat seconds so a client that only listens stays present), leaves on exit,
and sets an MQTT will on its users/leave topic so the room sees it go if the
connection dies. `--send` waits for the room to confirm the message. Exit status:
0 done, 1 the server rejected something we sent (or no broker, or the broker
refused our login), 2 bad arguments, 3 no confirmation from the server.
Text from the room is printed with control characters escaped.
Commands and requests (PROTOCOL 11, docs/CLIENTS.md): --on-command makes this client a
device that declares --commands in its join and runs a handler for each command;
--command asks the server (HTTP) to command a device and prints its answer;
--history-since asks the server over MQTT for the room's messages after a seq.
Needs only `pip install paho-mqtt`, and device_commands.py and command_line.py next to this file.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import socket
import sys
import threading
import unicodedata
import uuid
from datetime import datetime
from typing import Callable

import command_line
import device_commands
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

log = logging.getLogger("chat-client")

HEARTBEAT_SECONDS = 200  # the server's MQTT_USER_TIMEOUT (600 s) / 3
CONFIRM_SECONDS = 10


def topic_level_problem(client_id: str) -> str | None:
    """Why `client_id` cannot be the last level of a device topic (None when it can)."""
    if not client_id:
        return "an empty client id cannot be a topic level"
    bad = sorted({char for char in client_id if char in "/+#"})
    if bad:
        return (f"client id {client_id!r} cannot be a topic level (it contains {' '.join(bad)}); "
                "choose one without '/', '+' or '#', or use --shared-topics")
    return None


def safe(text) -> str:
    """Room text for a terminal: control and format characters escaped (no escape
    sequences, no bidi overrides reach the screen)."""
    return "".join(_escape(char) if unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") else char
                   for char in str(text))


def _escape(char: str) -> str:
    code = ord(char)  # the same spelling as the Node.js client's
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


class ChatClient:
    """One room member over MQTT. Call start(), then say()/close()."""

    def __init__(self, broker: str, port: int, name: str, client_id: str, room: str = "lobby",
                 prefix: str = "chatroom", listen: bool = False, output=sys.stdout,
                 heartbeat: float = HEARTBEAT_SECONDS, device_topics: bool = True,
                 username: str | None = None, password: str | None = None, commands: dict | None = None,
                 on_command: Callable[[bytes], None] | None = None, member: bool = True):
        if device_topics and topic_level_problem(client_id):
            raise ValueError(topic_level_problem(client_id))
        self.name, self.client_id, self.room = name, client_id, room
        base = prefix if room == "lobby" else f"{prefix}/{room}"
        self.topics = {kind: f"{base}/{kind}" for kind in
                       ("messages/in", "messages/out", "users/join", "users/leave", "system")}
        if device_topics:
            # PROTOCOL 10: the topic names the sender, so a broker ACL can bind it to our login.
            # client_id stays in the payloads too (the same value; older servers log it).
            for kind in ("messages/in", "users/join", "users/leave"):
                self.topics[kind] += f"/{client_id}"
        self.errors_topic = f"{prefix}/errors"
        # PROTOCOL 11: commands for us, our acks, our requests and their answers.
        own = f"{prefix}/devices/{device_commands.topic_id(client_id)}"
        self.commands_topic, self.ack_topic = f"{own}/commands", f"{own}/commands/ack"
        self.requests_topic, self.responses_topic = f"{own}/requests", f"{own}/responses"
        self.commands, self.on_command = commands, on_command
        self.member = member  # False: only asks (--history-since); never joins, so no will either
        self._answers: dict[str, dict | None] = {}  # request_id -> its response, once it came
        self.listen = listen
        self.output = output
        self.heartbeat = heartbeat
        self.joined = threading.Event()
        self.refused: str | None = None  # why the broker refused our connection (bad login)
        self.rejections: list[dict] = []  # errors the server sent for our client_id
        self._sent: dict[str, threading.Event] = {}  # our message_id -> seen on messages/out
        self._verdict = threading.Condition()
        self._closing = threading.Event()
        self.broker, self.port = broker, port
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
        if username:
            self.client.username_pw_set(username, password or None)
        if member:
            self.client.will_set(self.topics["users/leave"], json.dumps({"client_id": client_id}), qos=1)
        self.client.reconnect_delay_set(1, 30)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_subscribe

    def start(self, timeout: float = 15) -> bool:
        self.client.connect_async(self.broker, self.port, keepalive=30)
        self.client.loop_start()
        if self.heartbeat > 0 and self.member:
            threading.Thread(target=self._heartbeats, name="heartbeat", daemon=True).start()
        self.joined.wait(timeout)
        return self.joined.is_set() and self.refused is None

    def _join(self):
        body = {"client_id": self.client_id, "username": self.name}
        if self.commands:
            body["commands"] = self.commands  # declared again with every join and heartbeat
        return self.client.publish(self.topics["users/join"], json.dumps(body, ensure_ascii=False), qos=1)

    def _heartbeats(self) -> None:
        # The server counts a repeated join as a sign of life and says nothing about it.
        while not self._closing.wait(self.heartbeat):
            if self.client.is_connected():
                self._join()

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            if not self.joined.is_set():  # at start: a refused login does not get better by retrying
                self.refused = str(reason_code)
                client.disconnect()
                self.joined.set()  # start() returns at once
            return
        # messages/out always: it is how --send learns that the room took the message.
        subscriptions = [(self.errors_topic, 1), (self.topics["messages/out"], 1)]
        if self.listen:
            subscriptions.append((self.topics["system"], 1))
        if self.on_command:
            subscriptions.append((self.commands_topic, 1))
        if not self.member:
            subscriptions = [(self.errors_topic, 1), (self.responses_topic, 1)]
        client.subscribe(subscriptions)
        if self.member:
            # Join (again) on every connect: the server ignores a repeat join. The
            # subscriptions above come first, so no command or answer can pass us by.
            threading.Thread(target=self._confirm_join, args=(self._join(),), daemon=True).start()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if not self.member:
            self.joined.set()  # subscribed to our answers: requests may go

    def _confirm_join(self, info) -> None:
        info.wait_for_publish(15)
        self.joined.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if reason_code != 0:
            log.warning("connection lost (%s); reconnecting", reason_code)

    def _on_message(self, client, userdata, message):
        if message.topic == self.commands_topic and self.on_command:
            self.on_command(message.payload)  # it reads (and answers) the payload itself
            return
        try:
            event = json.loads(message.payload)
        except ValueError:
            return
        if not isinstance(event, dict):
            return
        if message.topic == self.responses_topic:
            with self._verdict:
                if event.get("request_id") in self._answers:
                    self._answers[event["request_id"]] = event
                    self._verdict.notify_all()
            return
        if message.topic == self.errors_topic:
            if event.get("client_id") == self.client_id:
                print(f"! rejected ({safe(event.get('code'))}): {safe(event.get('error'))}",
                      file=sys.stderr, flush=True)
                with self._verdict:
                    self.rejections.append(event)
                    self._verdict.notify_all()
            return
        if event.get("client_id") == self.client_id and event.get("client_message_id") in self._sent:
            with self._verdict:
                self._sent[event["client_message_id"]].set()
                self._verdict.notify_all()
        if self.listen:
            print(format_event(event), file=self.output, flush=True)

    def say(self, text: str, data: dict | None = None) -> str:
        """Publish a chat message; returns its message_id (see confirmed())."""
        message_id = str(uuid.uuid4())
        body = {"client_id": self.client_id, "username": self.name, "message": text, "message_id": message_id}
        if data:
            body["data"] = data
        self._sent[message_id] = threading.Event()
        self.client.publish(self.topics["messages/in"], json.dumps(body, ensure_ascii=False),
                            qos=1).wait_for_publish(15)
        return message_id

    def confirmed(self, message_id: str, timeout: float = CONFIRM_SECONDS) -> bool | None:
        """True once the room published it, False if the server rejected something of ours,
        None if neither happened within `timeout`."""
        with self._verdict:
            self._verdict.wait_for(lambda: self._sent[message_id].is_set() or self.rejections, timeout)
            if self.rejections:
                return False
            return True if self._sent[message_id].is_set() else None

    def request(self, body: dict, timeout: float) -> dict | None:
        """Ask on our requests topic; the answer with the same request_id, None if none came."""
        request_id = str(uuid.uuid4())
        with self._verdict:
            self._answers[request_id] = None
        self.client.publish(self.requests_topic, json.dumps({"request_id": request_id, **body}),
                            qos=1).wait_for_publish(timeout)
        with self._verdict:
            self._verdict.wait_for(lambda: self._answers[request_id] is not None, timeout)
            return self._answers.pop(request_id)

    def acknowledge(self, ack: dict) -> None:
        """Our answer to a command (PROTOCOL 11), on our commands/ack topic."""
        self.client.publish(self.ack_topic, json.dumps(ack, ensure_ascii=False), qos=1)

    def close(self) -> None:
        """Leave the room, then disconnect cleanly (no will is sent)."""
        self._closing.set()
        if self.client.is_connected() and self.member:
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
        # A live event says it in `message`; a stored one (a command's audit record, on
        # messages/out and in history) in `content`.
        return f"[{stamp}] * {safe(event.get('message') or event.get('content') or '')}"
    readings = event.get("data")
    extra = ("  (" + ", ".join(f"{safe(k)}={safe(v)}" for k, v in readings.items()) + ")"
             if isinstance(readings, dict) and readings else "")
    return f"[{stamp}] {safe(event.get('username', '?'))}: {safe(event.get('content', ''))}{extra}"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Chat room client over MQTT.")
    parser.add_argument("--broker", default="localhost", help="MQTT broker host (default localhost)")
    parser.add_argument("--port", type=int, default=1883, help="MQTT broker port (default 1883)")
    parser.add_argument("--name", default=f"py-{socket.gethostname()}"[:32], help="display name")
    parser.add_argument("--client-id", default=None,
                        help="MQTT client id, your identity in the room (default: --username, else py-<random>)")
    parser.add_argument("--room", default="lobby", help="room (default lobby)")
    parser.add_argument("--prefix", default="chatroom", help="topic prefix (default chatroom)")
    parser.add_argument("--send", metavar="TEXT", help="join, send TEXT once, leave and exit")
    parser.add_argument("--listen", action="store_true", help="print room messages until Ctrl-C")
    parser.add_argument("--heartbeat", type=float, default=HEARTBEAT_SECONDS, metavar="SECONDS",
                        help=f"re-send join every SECONDS so the server keeps us present "
                             f"(default {HEARTBEAT_SECONDS}; 0 = off)")
    parser.add_argument("--username", default=os.environ.get("MQTT_USERNAME") or None,
                        help="broker login (default: $MQTT_USERNAME); also the default client id")
    parser.add_argument("--password", default=os.environ.get("MQTT_PASSWORD") or None,
                        help="broker password (default: $MQTT_PASSWORD, which keeps it out of `ps`)")
    parser.add_argument("--shared-topics", action="store_true",
                        help="publish on the shared messages/in, users/join, users/leave topics with the "
                             "client id in the payload (servers older than device topics), instead of "
                             "messages/in/<client_id>, ...")
    command_line.add_arguments(parser)
    args = parser.parse_args(argv)
    command_line.check_arguments(parser, args)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    if args.command:  # HTTP only: no broker needed
        return command_line.run_command(args.server, args.token, args.name, *args.command, args.timeout)
    client_id = args.client_id if args.client_id is not None else args.username or f"py-{uuid.uuid4().hex[:8]}"
    device_topics = not args.shared_topics
    if device_topics and topic_level_problem(client_id):
        print(topic_level_problem(client_id), file=sys.stderr)
        return 2
    if device_topics and args.username and client_id != args.username:
        print(f"note: a broker that binds logins to device topics (clients/mosquitto/acl.example) lets "
              f"user {args.username!r} publish only as client id {args.username!r}, not {client_id!r}",
              file=sys.stderr)
    asking = args.history_since is not None
    client = ChatClient(args.broker, args.port, args.name, client_id, args.room, args.prefix,
                        listen=args.listen or not (args.send or args.on_command or asking),
                        heartbeat=args.heartbeat, device_topics=device_topics, username=args.username,
                        password=args.password, commands=args.commands, member=not asking)
    if args.on_command:
        runner = device_commands.CommandRunner(args.on_command, args.commands, client.acknowledge,
                                               sys.stdout, safe)
        client.on_command = runner.submit
    if not client.start():
        if client.refused:
            print(f"the broker at {args.broker}:{args.port} refused the connection: {client.refused} "
                  "(check --username/--password)", file=sys.stderr)
        else:
            print(f"cannot reach the broker at {args.broker}:{args.port}", file=sys.stderr)
        client.client.loop_stop()
        return 1
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())
    status = 0
    try:
        if args.send:
            verdict = client.confirmed(client.say(args.send))
            if verdict is None:
                print(f"no confirmation from the chat server within {CONFIRM_SECONDS} s "
                      "(is it running and bridged to this broker?)", file=sys.stderr)
                status = 3
        elif asking:
            status = command_line.print_history(client.request, args.room, args.history_since,
                                                   args.timeout, format_event)
        elif args.listen or args.on_command:
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
    return 1 if client.rejections else status


if __name__ == "__main__":
    sys.exit(main())
