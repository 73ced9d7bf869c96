"""Inbound MQTT: a publication on an inbound topic becomes a Submission to the intake;
a refusal becomes one error reply on `P/errors` (throttled) and, within a budget, one log line.

Two kinds of inbound topic (PROTOCOL 2 and 10):
- shared topics (`P/messages/in`, ...): the sender is whoever the payload's `client_id`
  claims to be;
- device topics (`P/messages/in/<client_id>`, ...): the topic names the sender, and the
  broker's ACL can bind that level to the device's login, so the id is proven. A payload
  `client_id` there may be absent; a different one is `bad_field`.
"""
from __future__ import annotations

import logging
from typing import Callable, Hashable, Protocol

from chatroom.core.errors import ClaimRefused, Unavailable, ValidationError
from chatroom.core.intake import Intake
from chatroom.core.limits import Throttle
from chatroom.core.model import Source, dumps, utc_timestamp
from chatroom.core.submission import Accepted, Outcome, Submission
from chatroom.core.validation import client_id_of, optional, parse_json_object
from mqtt_service.stats import BridgeStats
from mqtt_service.topics import MESSAGES_IN, USERS_JOIN, USERS_LEAVE, Topics

log = logging.getLogger("mqtt_service.bridge")

# Error replies (and their log lines) per sender per minute; the rest are only counted.
REPLIES_PER_MINUTE = 10
# Rejection log lines per minute from all senders together: strangers with many ids
# must not turn a flood into a flood of log lines (PROTOCOL 9).
LOG_LINES_PER_MINUTE = 60

Reply = Callable[[str, bytes], None]  # (topic, payload): publish an error reply


class Extras(Protocol):
    """What a device may add to a message or join (PROTOCOL 11: declared commands, a receipt):
    checked before the intake (a bad one rejects the input whole), acted on once accepted."""

    def prepare(self, kind: str, obj: dict, client_id: object) -> object: ...
    def accepted(self, kind: str, submission: Submission, accepted: Accepted, obj: dict, prepared: object) -> None: ...


def _object_or_empty(payload: bytes) -> dict:
    """Best-effort decode, only to address an error reply to its sender."""
    try:
        return parse_json_object(payload)
    except ValidationError:
        return {}


def _sender_key(exc: ValidationError, claimed: object, topic: str) -> Hashable:
    """Whose allowance of replies a rejection spends. A valid id is its own sender; an
    invalid one is a sender too (ten strangers' bad ids must not silence everyone's
    replies); a payload naming nobody shares its topic's allowance."""
    if exc.client_id is not None:
        return ("id", exc.client_id)
    if claimed is not None:
        return ("claimed", (claimed if isinstance(claimed, str) else repr(claimed))[:64])
    return ("topic", topic[:200])


class Inbound:
    def __init__(self, topics: Topics, intake: Intake, stats: BridgeStats, reply: Reply,
                 log_budget: Throttle | None = None):
        self.topics = topics
        self.intake = intake
        self.stats = stats
        self.reply = reply
        self._reply_throttle = Throttle(count=REPLIES_PER_MINUTE, seconds=60.0)
        self._log_budget = log_budget or Throttle(count=LOG_LINES_PER_MINUTE, seconds=60.0, max_keys=1)
        self.extras: Extras | None = None  # mqtt_service/device_extras.py, set by the bridge

    def handle(self, topic: str, payload: bytes) -> None:
        """Payload -> Submission -> intake; a refusal -> one reply on P/errors.
        Raises Unavailable (not the message's fault): the bridge holds and retries it."""
        obj: dict | None = None
        parsed = None
        try:
            parsed = self.topics.parse(topic)
            if parsed is None:
                raise ValidationError("bad_field", "not an inbound topic of a valid room")
            # On a device topic the topic says everything: an empty payload (a bare will) is {}.
            obj = {} if parsed.client_id is not None and not payload.strip() else parse_json_object(payload)
            submission = self._submission(parsed.room, obj, parsed.client_id)
            prepared = self.extras.prepare(parsed.kind, obj, submission.client_id) if self.extras is not None else None
            accepted = self._dispatch(parsed.kind, submission)
            if self.extras is not None and accepted is not None:
                self.extras.accepted(parsed.kind, submission, accepted, obj, prepared)
        except Unavailable:
            raise
        except ValidationError as exc:
            claimed = self._address(exc, parsed, obj, payload)
            self.reject(topic, exc, _sender_key(exc, claimed, topic))

    def _address(self, exc: ValidationError, parsed, obj: dict | None, payload: bytes) -> object:
        """Whom the reply names (exc.client_id: a valid id, or None) and the claimed id it
        was refused for. As PROTOCOL 2 says, the payload's valid client_id — except an id
        proven on its device topic (a claim of it is somebody else, whose reply must not
        look to the real device's client like an error of its own) and an invalid topic
        level."""
        if isinstance(exc, ClaimRefused):
            exc.client_id = None
            return None
        if parsed is not None and parsed.client_id is not None:  # a device topic names its sender
            if exc.client_id is None:
                exc.client_id = self._plain_id(parsed.client_id)
            return parsed.client_id
        if obj is None:
            obj = _object_or_empty(payload)
        if exc.client_id is None:
            exc.client_id = client_id_of(obj)
        if exc.client_id in self.intake.proven_ids:
            exc.client_id = None  # a topic that is not inbound still must not reach a proven id
            return None
        return obj.get("client_id")

    def _submission(self, room: str, obj: dict, device_id: str | None) -> Submission:
        claimed = obj.get("client_id")
        if device_id is not None and claimed is not None and claimed != device_id:
            raise ValidationError("bad_field", "client_id differs from the device topic's sender",
                                  self._plain_id(device_id))
        return Submission(Source.MQTT, room=room, client_id=device_id if device_id is not None else claimed,
                          username=optional(obj, "username"), text=obj.get("message"),
                          data=optional(obj, "data"), message_id=optional(obj, "message_id"),
                          units=optional(obj, "units"), proven=device_id is not None)

    @staticmethod
    def _plain_id(device_id: str) -> str | None:
        """The topic's id for an error reply, if it is a valid one."""
        return client_id_of({"client_id": device_id})

    def _dispatch(self, kind: str, submission: Submission) -> Accepted | None:
        if kind == MESSAGES_IN:
            accepted = self.intake.post(submission)
            if accepted.outcome == Outcome.DUPLICATE:
                self.stats.add("messages_duplicate")
            return accepted
        if kind == USERS_JOIN:
            return self.intake.join(submission)
        if kind == USERS_LEAVE:
            return self.intake.leave(submission)
        return None

    def reject(self, topic: str, exc: ValidationError, sender: Hashable) -> None:
        """Count every rejection; answer it on P/errors at most a few times a minute per
        sender, and log it within a budget shared by all senders (PROTOCOL 9)."""
        self.stats.rejected(exc.code)
        answer, held_back = self._reply_throttle.allow(sender)
        if not answer:
            self.stats.add("errors_suppressed")
            return
        error = {"type": "error", "code": exc.code, "error": exc.message, "topic": topic,
                 "client_id": exc.client_id, "timestamp": utc_timestamp()}
        self.reply(self.topics.errors(), dumps(error).encode())
        logged, unlogged = self._log_budget.allow("client errors")
        if logged:
            log.warning("MQTT rejected %s on %r from %r: %s%s%s", exc.code, topic[:200], exc.client_id,
                        exc.message,
                        f" ({held_back} more from this sender were not logged or answered)" if held_back else "",
                        f" ({unlogged} rejections of all senders were not logged in the last minute)"
                        if unlogged else "")
