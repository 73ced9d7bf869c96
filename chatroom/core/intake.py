"""The one way into a room, for every transport (docs/ARCHITECTURE.md).

A transport turns its input into a `Submission` and calls `post`, `join` or
`leave`; it turns the answer (an `Accepted`, or a `ValidationError` with the
PROTOCOL code) into an ack, an HTTP status or a `P/errors` message. The rules
run here, in the contract's order:

    validate -> name rules -> rate limit -> dedup -> implicit join / rename -> post

and only what is accepted leaves a trace: a rejected input takes no rate-limit
token, is not remembered for de-duplication and joins nobody. The rules need no
broker, no Flask and no Socket.IO, so they are tested on their own.
"""
from __future__ import annotations

from typing import Hashable, Iterable

from chatroom.core.errors import ClaimRefused, RelayError, ValidationError
from chatroom.core.limits import RateLimiter, RecentSet
from chatroom.core.model import Source, new_message_id
from chatroom.core.names import NameRules
from chatroom.core.ports import Dedup, MemberKey, RoomLocks
from chatroom.core.presence import LocalLocks
from chatroom.core.room import Rooms
from chatroom.core.room_types import JoinResult, NameClash, Outcome
from chatroom.core.submission import Accepted, Submission
from chatroom.core.validation import (
    dedup_text,
    validate_client_id,
    validate_data,
    validate_message_id,
    validate_room,
    validate_text,
    validate_units,
)

DEDUP_SECONDS = 600.0
PROVEN_IDS = 100_000
HOME_ASSISTANT_COMMANDS_PER_MINUTE = 120  # every device's together (PROTOCOL 11)


class Intake:
    def __init__(self, rooms: Rooms, names: NameRules, rate_limiter: RateLimiter,
                 dedup: Dedup, max_message_chars: int, address_limiter: RateLimiter | None = None,
                 locks: RoomLocks | None = None):
        self.rooms = rooms
        self.names = names
        self.rate_limiter = rate_limiter
        # Web pages and HTTP callers from one address share a second, larger bucket:
        # a new socket or a new page id is not a fresh allowance (PROTOCOL 9).
        self.address_limiter = address_limiter or RateLimiter(0, 1)
        self.dedup = dedup
        self.max_message_chars = max_message_chars
        # One decision per room at a time: "is there a token / is it a duplicate / is
        # the name free" and acting on the answer must not interleave with another
        # input (on any instance, when the locks live in Redis).
        self.locks: RoomLocks = locks or LocalLocks()
        # Devices that spoke on their own topic (PROTOCOL 10): nobody may claim their id on
        # the shared topics. Bounded; minting proven ids takes the broker's permission.
        self.proven_ids = RecentSet(max_items=PROVEN_IDS)
        # Inputs that post nothing in a room (PROTOCOL 11) have buckets of their own, at the
        # messages' rate: a device's requests; Home Assistant's commands per device, and all of
        # them together.
        self.request_limiter = _at_the_rate_of(rate_limiter)
        self.home_assistant_limiter = _at_the_rate_of(rate_limiter)
        self.home_assistant_all = RateLimiter(HOME_ASSISTANT_COMMANDS_PER_MINUTE, 60.0, max_senders=1)

    # --- chat messages ----------------------------------------------------------

    def post(self, sub: Submission) -> Accepted:
        """A chat message. Devices join implicitly (or are renamed) on the way."""
        client_id = self._client_id(sub)
        try:
            return self._post(sub, client_id)
        except RelayError as exc:
            exc.client_id = exc.client_id or (client_id if sub.from_device else None)
            raise

    def _post(self, sub: Submission, client_id: str | None) -> Accepted:
        room = validate_room(sub.room)
        text = validate_text(sub.text, self.max_message_chars)
        data = validate_data(sub.data)
        units = validate_units(sub.units)
        message_id = validate_message_id(sub.message_id)
        if self.locks.shared and sub.from_device and client_id is not None:
            accepted = self._post_as_present_device(sub, room, client_id, text, data, units, message_id)
            if accepted is not None:
                return accepted
        with self.locks.hold(room):
            member_key, name, on_clash = self._author(sub, room, client_id)
            buckets = self._buckets(sub, client_id)
            self._check_rate(buckets, client_id)
            dedup_key = self._dedup_key(sub, room, client_id)
            if dedup_key is not None:
                original = self.dedup.get(dedup_key)
                # Remembered but not stored: whoever took it died before storing (the
                # room's lock is ours now), so this retry is the message's only copy.
                if isinstance(original, str) and self.rooms.holds_message(original):
                    return Accepted(Outcome.DUPLICATE, room, message_id=original)
            user = None
            if sub.from_device:
                user = self.rooms.join(room, member_key, name, Source.MQTT, client_id=client_id,
                                       on_clash=on_clash).user
                name = user.username
            elif sub.source == Source.WEB:
                user = self.rooms.member(room, member_key)
                if user is None:  # _author found it under this lock; a shared presence may still lose it
                    raise ValidationError("not_joined", "join a room first")
                name = user.username
            self._take(buckets)
            server_id = None
            if dedup_key is not None:
                # Remembered before it is stored: a process killed between the two leaves
                # a redelivery recognised as a duplicate, never a second copy. A claim, not
                # a plain write: another instance's lock-free path may have claimed it since.
                server_id = new_message_id()
                original = self.dedup.claim(dedup_key, server_id, self.rooms.holds_message)
                if original is not None:
                    return Accepted(Outcome.DUPLICATE, room, message_id=original)
            message = self.rooms.post(room, name, text, sub.source, sender=member_key,
                                      client_id=client_id if sub.from_device else None,
                                      data=data, client_message_id=message_id, units=units,
                                      message_id=server_id)
        return Accepted(Outcome.POSTED, room, user=user, message=message, message_id=message.message_id)

    def _post_as_present_device(self, sub: Submission, room: str, client_id: str, text: str,
                                data, units, message_id: str | None) -> Accepted | None:
        """Several instances: a device already present under the name it asks for needs no
        decision another instance could race (no join, no rename), so it posts without the
        room's Redis lock; its message_id, if any, is claimed in the dedup window atomically
        (one round trip). None: the locked path decides."""
        name = self.names.display_name(sub.username) if sub.username is not None else None
        buckets = self._buckets(sub, client_id)
        self._check_rate(buckets, client_id)
        user = self.rooms.touch_present(room, (Source.MQTT, client_id), name)
        if user is None:
            return None
        server_id = None
        dedup_key = self._dedup_key(sub, room, client_id)
        if dedup_key is not None:
            server_id = new_message_id()
            original = self.dedup.claim(dedup_key, server_id, self.rooms.holds_message)
            if original is not None:
                return Accepted(Outcome.DUPLICATE, room, message_id=original)
        self._take(buckets)
        message = self.rooms.post(room, user.username, text, Source.MQTT, client_id=client_id, data=data,
                                  units=units, client_message_id=message_id, message_id=server_id)
        return Accepted(Outcome.POSTED, room, user=user, message=message, message_id=message.message_id)

    def _author(self, sub: Submission, room: str, client_id: str | None):
        """(member key, name asked for, what to do on a name clash) of a message's author."""
        if sub.from_device:
            assert client_id is not None  # a device always names itself (_client_id)
            key = member_key(sub, client_id)
            if sub.username is not None:
                return key, self.names.display_name(sub.username), NameClash.SUFFIX
            current = self.rooms.member(room, key)
            name = current.requested if current else self.names.device_name(client_id, None)
            return key, name, NameClash.SUFFIX
        if sub.source == Source.WEB:
            key = member_key(sub, client_id)
            if self.rooms.member(room, key) is None:
                raise ValidationError("not_joined", "join a room first")
            return key, None, NameClash.REFUSE
        if sub.username is None:
            raise ValidationError("missing_field", "username is required")
        name = self.names.display_name(sub.username)
        if self.rooms.holds_name(room, name):
            raise ValidationError("name_taken", f"the name {name!r} is held by a member of {room}; "
                                                "choose another")
        return None, name, NameClash.REFUSE

    def recall(self, stored: Iterable[tuple[str, str, str, str]]) -> int:
        """After a restart, remember the device messages stored within the dedup window:
        a message stored but not yet acknowledged when the process died comes again from
        the broker, and must be a duplicate, not a second copy.

        `stored`: (room, client_id, client_message_id, message_id). The stored id lost its
        JSON type, so an id of digits is remembered both as the number and as the string.
        """
        count = 0
        for room, client_id, text, server_id in stored:
            forms = (text, int(text)) if text.isdigit() and str(int(text)) == text else (text,)
            for raw in forms:
                self.dedup.remember(self._dedup_key(Submission(Source.MQTT, message_id=raw), room, client_id), server_id)
            count += 1
        return count

    # --- presence -----------------------------------------------------------------

    def join(self, sub: Submission, switch_from: str | None = None) -> Accepted:
        """A web user or a device joins (or renames itself, or says it is alive).

        A web user switching rooms leaves `switch_from` only once the new room
        accepted it: a refused switch keeps the old room.
        """
        client_id = self._client_id(sub)
        try:
            room = validate_room(sub.room)
            key = member_key(sub, client_id)
            if sub.from_device:
                assert client_id is not None  # a device always names itself (_client_id)
                name, on_clash = self.names.device_name(client_id, sub.username), NameClash.SUFFIX
            else:
                name, on_clash = self.names.display_name(sub.username), NameClash.REFUSE
            with self.locks.hold(room):
                current = self.rooms.member(room, key)
                changes = current is None or current.requested != name
                buckets = self._buckets(sub, client_id)
                if changes:
                    self._check_rate(buckets, client_id)
                result: JoinResult = self.rooms.join(
                    room, key, name, sub.source, on_clash=on_clash,
                    client_id=client_id if sub.from_device else None,
                    private_id=client_id if sub.source == Source.WEB else None)
                if result.outcome != Outcome.UNCHANGED:
                    self._take(buckets)
                if switch_from is not None and switch_from != room:
                    self.rooms.leave(switch_from, key)
        except RelayError as exc:
            exc.client_id = exc.client_id or (client_id if sub.from_device else None)
            raise
        return Accepted(result.outcome, room, user=result.user, replaced=result.replaced)

    def leave(self, sub: Submission) -> Accepted:
        """A member leaves. Never refused (a refused leave would leave a ghost), but
        it spends a token when it has one: join/leave floods are limited."""
        client_id = self._client_id(sub)
        room = validate_room(sub.room)
        key = member_key(sub, client_id)
        with self.locks.hold(room):
            user = self.rooms.leave(room, key)
            if user is not None and sub.from_device:
                buckets = self._buckets(sub, client_id)
                if all(limiter.wait_time(key) == 0 for limiter, key in buckets):
                    self._take(buckets)
        return Accepted(Outcome.LEFT if user else Outcome.NOT_PRESENT, room, user=user)

    def admit_request(self, device: str) -> None:
        """A device's request (history, members) spends a token of its own bucket, or is refused."""
        self._charge([(self.request_limiter, device)], "too many requests; slow down")

    def admit_home_assistant_command(self, client_id: str) -> None:
        """A command Home Assistant sends a device spends a token of that device's bucket and of
        all devices' together, or is refused (a refused one takes none)."""
        self._charge([(self.home_assistant_limiter, client_id), (self.home_assistant_all, "all")],
                     "too many Home Assistant commands; slow down")

    def _charge(self, buckets: list[tuple[RateLimiter, Hashable]], message: str) -> None:
        wait = max(limiter.wait_time(key) for limiter, key in buckets)
        if wait > 0:
            raise ValidationError("rate_limited", message, retry_after=wait)
        self._take(buckets)

    def spend(self, sub: Submission) -> None:
        """An HTTP action that posts nothing but costs publications (forgetting a device)
        spends a token of its caller's buckets like a message, or is refused rate_limited."""
        buckets = self._buckets(sub, None)
        self._check_rate(buckets, None)
        self._take(buckets)

    # --- the parts of each rule ---------------------------------------------------

    def _client_id(self, sub: Submission) -> str | None:
        """A device must name itself; a page may (its stable id, optional). A device id
        proven on its own topic cannot be claimed on the shared ones."""
        if not sub.from_device:
            return validate_client_id(sub.client_id) if sub.client_id is not None else None
        client_id = validate_client_id(sub.client_id)
        if sub.proven:
            self.proven_ids.add(client_id)
        elif client_id in self.proven_ids:
            raise ClaimRefused(client_id)
        return client_id

    def _buckets(self, sub: Submission, client_id: str | None) -> list[tuple[RateLimiter, Hashable]]:
        """The rate-limit buckets an input spends: its sender's, and for web and HTTP its address's."""
        if sub.from_device:
            return [(self.rate_limiter, member_key(sub, client_id))]
        own: Hashable = (Source.WEB, client_id or sub.connection) if sub.source == Source.WEB else (Source.HTTP, sub.address)
        buckets: list[tuple[RateLimiter, Hashable]] = [(self.rate_limiter, own)]
        if sub.address is not None:
            buckets.append((self.address_limiter, ("address", sub.address)))
        return buckets

    @staticmethod
    def _take(buckets: list[tuple[RateLimiter, Hashable]]) -> None:
        for limiter, key in buckets:
            limiter.take(key)

    @staticmethod
    def _dedup_key(sub: Submission, room: str, client_id: str | None) -> Hashable | None:
        if sub.message_id in (None, ""):
            return None
        # Scoped by room and sender; a web page without a stable id is scoped by its socket.
        return (room, sub.source, client_id or sub.connection, dedup_text(sub.message_id))

    def _check_rate(self, buckets: list[tuple[RateLimiter, Hashable]], client_id: str | None) -> None:
        wait = max(limiter.wait_time(key) for limiter, key in buckets)
        if wait > 0:
            raise ValidationError("rate_limited", "too many messages; slow down", client_id,
                                  retry_after=wait)


def _at_the_rate_of(limiter: RateLimiter) -> RateLimiter:
    """A bucket of its own with the same count and period (RATE_LIMIT)."""
    if not limiter.enabled:
        return RateLimiter(0, 1.0)
    return RateLimiter(limiter.count, limiter.count / limiter.refill_per_second)


def member_key(sub: Submission, client_id: str | None) -> MemberKey:
    """Who a member is: a device by its client_id, a web page by its connection (several tabs
    of one page are several members)."""
    return (Source.MQTT, client_id) if sub.from_device else (Source.WEB, sub.connection)
