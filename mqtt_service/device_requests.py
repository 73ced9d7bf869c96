"""Devices that ask (PROTOCOL 11): requests answered on `P/devices/<id>/responses`, and
receipts for stored messages on `P/devices/<id>/receipts`.

Requests come on the device's own `P/devices/<id>/requests` (a broker ACL binds it to the
device's login): `history` (the room's messages after `after_seq`, oldest first, as
`GET /api/messages` gives them) and `members` (as `GET /api/users`). Answers stay under
64 KiB (cut, with `truncated: true`); requests spend the device's own rate-limit bucket,
and all answers together a byte budget (`AnswerBudget`): 5 000 requests for 64 KiB answers
from 500 invented ids otherwise parked 300 MB of answers in paho and the outbox.
An MQTT 5 request's Response Topic (the device's own `responses` or below: the bridge writes
nowhere a device chooses, not even its `set/` topics, which the bridge itself hears as
Home Assistant's commands) and Correlation Data are honoured.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from chatroom.core.errors import ValidationError
from chatroom.core.model import UNNUMBERED, Message, dumps
from chatroom.core.room import Rooms
from chatroom.core.room_types import Outcome
from chatroom.core.submission import Accepted
from chatroom.core.validation import MAX_MESSAGE_ID_CHARS, MAX_SAFE_INTEGER, parse_json_object, validate_room
from mqtt_service.outbox import Outbox, Outgoing
from mqtt_service.stats import BridgeStats
from mqtt_service.topics import Topics, topic_name_problem

log = logging.getLogger("mqtt_service.bridge")

MAX_ANSWER_BYTES = 64 * 1024
MAX_LIMIT = 100
DEFAULT_LIMIT = 50
SEQS_REMEMBERED = 10_000  # server message id -> seq, for the receipts of duplicates
UNNUMBERED_SWEEP = 1024   # drafts waiting for their seq (a batch holds at most a few hundred)
REQUESTS = ("history", "members")
# All devices together: answer bytes per second, and the burst (docs/SECURITY.md, measured).
ANSWER_BYTES_PER_SECOND = 512 * 1024
ANSWER_BURST_BYTES = 4 * 1024 * 1024

Reject = Callable[[str, ValidationError], None]


class AnswerBudget:
    """A token bucket of answer bytes for all devices together."""

    def __init__(self, per_second: float = ANSWER_BYTES_PER_SECOND, burst: float = ANSWER_BURST_BYTES,
                 clock: Callable[[], float] = time.monotonic):
        self.per_second, self.burst, self.clock = per_second, burst, clock
        self._tokens, self._last = burst, clock()
        self._lock = threading.Lock()

    def has(self, size: int) -> bool:
        with self._lock:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._last) * self.per_second)
            self._last = now
            return self._tokens >= size

    def spend(self, size: int) -> None:
        with self._lock:
            self._tokens -= size


def _request_id(raw: Any) -> str | int:
    if isinstance(raw, bool) or not (
            (isinstance(raw, int) and abs(raw) <= MAX_SAFE_INTEGER)
            or (isinstance(raw, str) and 1 <= len(raw) <= MAX_MESSAGE_ID_CHARS and raw.isprintable())):
        raise ValidationError("bad_field", f"request_id must be 1-{MAX_MESSAGE_ID_CHARS} printable characters "
                                           "or a whole number")
    return raw


def _whole(raw: Any, name: str, default: int, low: int, high: int) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int) or not low <= raw <= high:
        raise ValidationError("bad_field", f"{name} must be a whole number from {low} to {high}")
    return raw


class DeviceRequests:
    def __init__(self, topics: Topics, outbox: Outbox, qos: int, rooms: Rooms, stats: BridgeStats,
                 reject: Reject, admit: Callable[[str], None]):
        """`admit(device)`: the intake's decision on a device's request (a token, or rate_limited)."""
        self.topics = topics
        self.outbox = outbox
        self.qos = qos
        self.rooms = rooms
        self.stats = stats
        self.reject = reject
        self.admit = admit
        self.budget = AnswerBudget()
        self._seqs: OrderedDict[str, int] = OrderedDict()
        self._unnumbered: OrderedDict[str, Message] = OrderedDict()
        self._lock = threading.Lock()

    # --- requests ----------------------------------------------------------------------

    def handle(self, level: str, topic: str, payload: bytes, properties: Any = None) -> None:
        try:
            request = parse_json_object(payload)
            request_id = _request_id(request.get("request_id"))
        except ValidationError as exc:
            self.reject(topic, exc)
            return
        try:
            if not self.budget.has(MAX_ANSWER_BYTES):
                raise ValidationError("rate_limited", "the server answers too many requests just now; try again")
            self.admit(level)
            answer: dict[str, Any] = {"request_id": request_id, "ok": True, "result": self._answer(request)}
        except ValidationError as exc:
            answer = {"request_id": request_id, "ok": False, "code": exc.code, "error": exc.message}
        self.stats.add("requests_answered")
        self.budget.spend(self._respond(level, answer, properties))

    def _answer(self, request: dict) -> dict:
        kind = request.get("request")
        if kind not in REQUESTS:
            raise ValidationError("bad_field", f"request must be one of {', '.join(REQUESTS)}")
        room = validate_room(request.get("room"))
        if kind == "members":
            users = self.rooms.users(room)
            return _fitting({"room": room, "users": users, "truncated": False}, "users")
        after_seq = _whole(request.get("after_seq"), "after_seq", 0, 0, 2**63 - 2)
        limit = _whole(request.get("limit"), "limit", DEFAULT_LIMIT, 1, MAX_LIMIT)
        last_seq = self.rooms.history.last_seq(room)
        messages = [message.to_dict() for message in self._after(room, after_seq, limit, last_seq)]
        return _fitting({"room": room, "messages": messages, "last_seq": last_seq, "truncated": False}, "messages")

    def _after(self, room: str, after_seq: int, limit: int, last_seq: int) -> list[Message]:
        """The first `limit` messages with a seq above `after_seq`, oldest first. The store
        pages backwards (`before_seq`); seqs are consecutive, so one look usually does."""
        if after_seq >= last_seq:
            return []
        found = self._below(room, after_seq, after_seq + limit + 1, limit)
        if found:
            return found
        # A gap after after_seq (retention deleted the start, a lost batch): find the first
        # stored seq above it by bisection (each look is one indexed query).
        low, high = after_seq + limit + 1, last_seq + 1  # nothing in (after_seq, low); something below high
        while high - low > 1:
            middle = (low + high) // 2
            if self._below(room, after_seq, middle, 1):
                high = middle
            else:
                low = middle
        return self._below(room, after_seq, high - 1 + limit, limit)

    def _below(self, room: str, after_seq: int, before_seq: int, limit: int) -> list[Message]:
        return [m for m in self.rooms.history_of(room, limit, before_seq=before_seq) if m.seq > after_seq]

    def _respond(self, level: str, answer: dict, properties: Any) -> int:
        # The level as the device published it (a hashed id's level is already plain).
        topic, reply_properties = f"{self.topics.devices_root}{level}/responses", None
        response_topic = getattr(properties, "ResponseTopic", None)
        if isinstance(response_topic, str) and (response_topic == topic or response_topic.startswith(topic + "/")) \
                and topic_name_problem(response_topic) is None:
            topic = response_topic
            correlation = getattr(properties, "CorrelationData", None)
            if correlation is not None:
                reply_properties = Properties(PacketTypes.PUBLISH)
                reply_properties.CorrelationData = correlation
        payload = dumps(answer).encode("utf-8")
        self.outbox.publish(Outgoing(topic, payload, self.qos, properties=reply_properties))
        return len(payload)

    # --- receipts --------------------------------------------------------------------------

    def remember(self, accepted: Accepted) -> None:
        """A device message that carried its own id was stored: its seq, for a later duplicate's
        receipt. Where the store numbers a batch when it commits (several instances) the message
        waits here until it has its seq."""
        message = accepted.message
        if message is None or message.client_message_id is None:
            return
        with self._lock:
            if message.seq == UNNUMBERED:
                self._unnumbered[message.message_id] = message
                if len(self._unnumbered) >= UNNUMBERED_SWEEP:
                    self._sweep()
            else:
                self._keep(message.message_id, message.seq)

    def _keep(self, message_id: str, seq: int) -> None:
        self._seqs[message_id] = seq
        while len(self._seqs) > SEQS_REMEMBERED:
            self._seqs.popitem(last=False)

    def _sweep(self) -> None:
        """Numbered drafts join the seqs; the oldest still unnumbered beyond the bound are
        forgotten (a batch that was lost). Caller holds _lock."""
        for message_id, message in list(self._unnumbered.items()):
            if message.seq != UNNUMBERED:
                del self._unnumbered[message_id]
                self._keep(message_id, message.seq)
        while len(self._unnumbered) >= UNNUMBERED_SWEEP:
            self._unnumbered.popitem(last=False)

    def _seq_of(self, message_id: str) -> int | None:
        with self._lock:
            self._sweep()
            return self._seqs.get(message_id)

    def receipt(self, client_id: str, message_id: Any, accepted: Accepted) -> None:
        """Once stored: `{message_id, seq, room, status}` on the sender's receipts topic."""
        # Group commit: "once stored" means committed (and numbered), not only in the open batch.
        self.rooms.flush()
        if accepted.outcome == Outcome.DUPLICATE:
            seq = self._seq_of(accepted.message_id or "")
            status = "duplicate"
        else:
            assert accepted.message is not None  # a posted message
            seq, status = accepted.message.seq, "stored"
            if seq == UNNUMBERED or not self.rooms.holds_message(accepted.message.message_id):
                # Its batch was not committed (the store was away, the batch lost): "stored"
                # would be a lie; the device's retry is the message's only copy.
                self.stats.add("receipts_withheld")
                return
        body = {"message_id": message_id, "seq": seq, "room": accepted.room, "status": status}
        self.stats.add("receipts_sent")
        self.outbox.publish(Outgoing(self.topics.device_receipts(client_id), dumps(body).encode("utf-8"), self.qos))


def _fitting(result: dict, key: str) -> dict:
    """The result with its list cut from the end until the answer fits MAX_ANSWER_BYTES."""
    items = result[key]
    size = len(dumps(result).encode("utf-8")) + 200  # the envelope: request_id, ok
    while items and size > MAX_ANSWER_BYTES:
        size -= len(dumps(items.pop()).encode("utf-8")) + 1
        result["truncated"] = True
    return result

