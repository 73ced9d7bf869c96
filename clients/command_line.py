"""The flags for commands and requests of python_client.py (PROTOCOL 11), and the two
modes that ask: --command (over HTTP, the server answers with the device's ack) and
--history-since (over MQTT, on the client's own requests/responses topics).
Keep it next to python_client.py and device_commands.py. Standard library only.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from typing import Any, Callable

from device_commands import handler_problem, parse_declaration, parse_value

HISTORY_PAGE = 100  # the most one request may ask for
# Requests spend the device's RATE_LIMIT bucket (20 per 10 s by default, so 2 000 messages
# at once): a rate_limited page is asked again after a pause, this many times in a row at most.
RATE_LIMITED_RETRIES = 30
RATE_LIMITED_PAUSE = 1.0


def send_command(server: str, token: str | None, device: str, command: str, value: Any,
                 timeout: float, username: str) -> tuple[int, dict]:
    """POST /api/devices/<device>/commands; (HTTP status, JSON body). Status 0: no server."""
    url = f"{server.rstrip('/')}/api/devices/{urllib.request.quote(device, safe='')}/commands"
    body = json.dumps({"command": command, "value": value, "timeout": timeout, "username": username},
                      ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        # The server waits up to `timeout` for the device; give the HTTP round trip a margin.
        with urllib.request.urlopen(request, timeout=timeout + 10) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        try:
            return error.code, json.loads(error.read() or b"{}")
        except ValueError:
            return error.code, {"error": error.reason}
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return 0, {"error": str(getattr(exc, "reason", exc))}


def run_command(server: str, token: str | None, username: str, device: str, command: str, value_text: str,
                timeout: float) -> int:
    """--command: print the server's answer (one JSON line); the exit status says how it went:
    0 the device did it, 1 it refused or the server did, 3 no answer in time. `username`
    is who asks, as the room's audit trail shows it."""
    status, body = send_command(server, token, device, command, parse_value(value_text), timeout, username)
    if status == 0:
        print(f"cannot reach the chat server at {server}: {body.get('error')}", file=sys.stderr)
        return 1
    if status == 200:
        print(json.dumps(body, ensure_ascii=False), flush=True)
        if body.get("ok") is True:
            return 0
        print(f"! {device} answered: {body.get('error')}", file=sys.stderr)
        return 1
    if status == 504:
        print(f"! no answer from {device} within {timeout:g} s (timeout)", file=sys.stderr)
        return 3
    print(f"! refused ({body.get('code', status)}): {body.get('error')}", file=sys.stderr)
    return 1


def print_history(request: Callable[[dict, float], dict | None], room: str, after_seq: int,
                  timeout: float, format_event: Callable[[dict], str]) -> int:
    """--history-since: page through the room's messages after `after_seq` (100 per request,
    the contract's most) up to the answer's `last_seq`; 0 done, 1 refused, 3 no answer."""
    printed = retries = 0
    while True:
        answer = request({"request": "history", "room": room, "after_seq": after_seq, "limit": HISTORY_PAGE}, timeout)
        if answer is not None and answer.get("code") == "rate_limited" and retries < RATE_LIMITED_RETRIES:
            retries += 1
            time.sleep(RATE_LIMITED_PAUSE)  # the bucket refills; the same page again
            continue
        retries = 0
        if answer is None:
            print(f"no answer from the chat server within {timeout:g} s "
                  "(is it running, bridged to this broker, and does it answer requests?)", file=sys.stderr)
            return 3
        if answer.get("ok") is not True:
            print(f"! request refused ({answer.get('code')}): {answer.get('error')}", file=sys.stderr)
            return 1
        result = answer.get("result") if isinstance(answer.get("result"), dict) else {}
        messages = [m for m in result.get("messages") or [] if isinstance(m, dict)]
        seqs = [m["seq"] for m in messages if isinstance(m.get("seq"), int)]
        if not seqs or max(seqs) <= after_seq:
            break
        for message in messages:
            print(format_event(message), flush=True)
        printed += len(messages)
        after_seq = max(seqs)
        last_seq = result.get("last_seq")
        if isinstance(last_seq, int) and after_seq >= last_seq:
            break  # that was the newest: no need to ask for an empty page
    print(f"{printed} messages; the last seq is {after_seq} (next time: --history-since {after_seq})",
          file=sys.stderr)
    return 0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The client's flags for commands and requests."""
    own = parser.add_argument_group("commands and requests (PROTOCOL 11)")
    own.add_argument("--on-command", metavar="HANDLER",
                     help="be a device: declare --commands in the join and run the program HANDLER for each "
                          "command (argv: COMMAND VALUE-as-JSON; stdin: the command JSON); its exit status "
                          "and output are the ack")
    own.add_argument("--commands", metavar="JSON",
                     help='the commands this device declares, e.g. \'{"led": {"type": "bool"}}\' '
                          "(types bool, number with min/max, enum with options, text)")
    own.add_argument("--command", nargs=3, metavar=("DEVICE", "COMMAND", "VALUE"),
                     help="ask the chat server (--server, HTTP) to send COMMAND with VALUE (JSON, or else "
                          "text) to the device with client id DEVICE; print its answer")
    own.add_argument("--history-since", type=int, metavar="SEQ",
                     help="ask the server over MQTT for the room's messages after SEQ, print them, exit")
    own.add_argument("--server", default=os.environ.get("CHATROOM_URL") or "http://localhost:5000",
                     help="the chat server for --command (default: $CHATROOM_URL, else http://localhost:5000)")
    own.add_argument("--token", default=os.environ.get("API_TOKEN") or None,
                     help="the server's API_TOKEN for --command (default: $API_TOKEN)")
    own.add_argument("--timeout", type=float, default=10.0, metavar="SECONDS",
                     help="how long --command and --history-since wait for an answer (default 10)")


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """The combinations that make no sense end with exit 2 and a clear message."""
    modes = [flag for flag, value in (("--send", args.send), ("--command", args.command),
                                      ("--history-since", args.history_since is not None),
                                      ("--on-command", args.on_command)) if value]
    if len(modes) > 1:
        parser.error(f"{' and '.join(modes)} cannot be combined")
    if bool(args.on_command) != bool(args.commands):
        parser.error("--on-command HANDLER and --commands JSON go together")
    if args.commands:
        try:
            args.commands = parse_declaration(args.commands)
        except ValueError as exc:
            parser.error(str(exc))
        if handler_problem(args.on_command):
            parser.error(handler_problem(args.on_command))
    if args.history_since is not None and args.history_since < 0:
        parser.error("--history-since needs a seq of 0 or more")
    if not 0 < args.timeout <= 120:
        parser.error("--timeout must be more than 0 and at most 120 seconds")
