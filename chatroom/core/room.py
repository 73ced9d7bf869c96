"""Rooms: presence, seq numbers, names and the hand-off to history and listeners.

The heart of the relay. Input reaches it through the intake (chatroom/core/intake.py),
which decides what is accepted; the room does it atomically (`join` with its
name rules, `leave`, `post`, `announce`) and keeps members' liveness. Every
transport that wants output subscribes a listener. Rooms without members are
forgotten. Stdlib only: no Flask, Socket.IO or paho.

Each listener has its own queue and thread (the bus, chatroom/core/listeners.py), fed
in `seq` order while the room lock is held. Group commit (`batch`, `flush`) is
chatroom/core/batch.py's: a thread relaying a burst posts into one open transaction.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from typing import Callable

from chatroom.core.batch import OpenBatch, ThreadBatch
from chatroom.core.errors import Unavailable, ValidationError
from chatroom.core.fair_shares import longest_silent_device, room_to_free
from chatroom.core.listeners import ListenerBus
from chatroom.core.model import UNNUMBERED, USER_MESSAGE, Message, Source, SystemEvent, User
from chatroom.core.name_clash import free_variant, holder_of
from chatroom.core.ports import History, MemberKey, Presence
from chatroom.core.presence import LocalPresence
from chatroom.core.room_types import JoinResult, Listener, NameClash, Outcome, PresenceChanged, RoomEvent

log = logging.getLogger(__name__)

class Rooms:
    """All rooms of this server. Thread-safe.

    `name_key` says when two names are the same (injected: the room itself
    knows no Unicode tables); `clock` is seconds, for liveness (monotonic in one
    process; wall-clock when the presence is shared by several); `presence`
    stores members and seq (this process by default, Redis for several instances).
    `group_commit`: `batch()` really batches (one process on a SQLite file); off, it
    changes nothing and every message is committed on its own.
    """

    def __init__(self, history: History, name_key: Callable[[str], str] = str.casefold,
                 max_members: int = 1000, clock: Callable[[], float] = time.monotonic,
                 max_rooms: int = 1000, presence: Presence | None = None, group_commit: bool = False,
                 device_source: str = Source.MQTT):
        self.history = history
        # Members of this source give way, longest-silent first, when a room or the room
        # table is full (PROTOCOL 9: a stranger with many device ids cannot lock people out).
        self.device_source = device_source
        self.name_key = name_key
        self.max_members = max_members
        self.max_rooms = max_rooms
        self.clock = clock
        self.presence: Presence = presence if presence is not None else LocalPresence()
        self._posted_total = 0
        # Not re-entrant (cheaper under eventlet): methods that take it call only the
        # unlocked helpers (_join, _publish, open_batch.flush), never each other.
        self._lock = threading.Lock()
        self.bus = ListenerBus()
        self._posted: Counter[str] = Counter()
        self.group_commit = group_commit
        self.open_batch = OpenBatch(history, self.bus, self.presence)
        self.evictions = 0                  # devices that gave way in a full room or room table

    # --- listeners ------------------------------------------------------------

    def subscribe(self, name: str, listener: Listener, events: tuple[type, ...] = (),
                  many: Callable[[list[RoomEvent]], None] | None = None) -> None:
        """Call `listener(event)` for every room event (or only those of the types in
        `events`), on a thread of its own."""
        with self._lock:
            self.bus.subscribe(name, listener, events, many)

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every listener has handled every event published so far (False when the
        store holds a batch back: its events wait for it)."""
        try:
            self.flush()
        except Unavailable as exc:
            log.warning("drain: a batch waits for the store (%s)", exc.detail)
            self.bus.drain(timeout)
            return False
        return self.bus.drain(timeout)

    def close(self, timeout: float = 5.0) -> None:
        try:
            self.flush()
        except Unavailable as exc:  # the store is away at shutdown: its broker messages stay unacknowledged
            log.warning("closing with %d messages not stored: %s", len(self.open_batch.drafts), exc.detail)
        self.bus.stop(timeout)

    @property
    def listener_failures(self) -> int:
        return self.bus.failures

    @property
    def messages_lost(self) -> int:
        return self.open_batch.messages_lost

    def _publish(self, event: RoomEvent) -> None:
        # Called with the lock held: the queues receive events in seq order.
        if self.open_batch.holds_this_thread():
            self.open_batch.staged.append(event)
            return
        try:
            self.open_batch.flush()  # another thread's open batch goes first
        except Unavailable:
            # The store holds that batch back: this event (a join, a leave, a stream chunk)
            # already happened, so it waits behind the batch rather than being lost.
            self.open_batch.staged.append(event)
            return
        self.bus.deliver(event)

    # --- group commit (chatroom/core/batch.py) ---------------------------------

    def batch(self) -> "ThreadBatch":
        """Posts and events of this thread join the open batch until `flush` (called by
        anyone) commits it and publishes its events. Never holds the lock across the
        block: other threads post in between (flushing the batch first)."""
        return ThreadBatch(self)

    @property
    def pending_events(self) -> int:
        """Events of the open batch, not yet handed to the listeners."""
        return len(self.open_batch.staged)

    def flush(self) -> None:
        """Commit the open batch, then hand its events to the listeners (stored before published)."""
        with self._lock:
            self.open_batch.flush()

    # --- rooms and presence ---------------------------------------------------

    def join(self, room: str, key: MemberKey, name: str, source: str, *,
             client_id: str | None = None, private_id: str | None = None,
             on_clash: str = NameClash.REFUSE) -> JoinResult:
        """Add a member, rename it, or only note it is alive. Atomic.

        `name` is the name asked for. When another present member holds it (the
        same name key), `on_clash` decides: REFUSE raises `name_taken`, SUFFIX
        shows the newcomer as `<name> (2)`, `<name> (3)`, ... A member with the
        same `private_id` (a page reconnecting) takes its old entry back.
        """
        with self._lock:
            current = self.presence.member(room, key)
            if current is not None and current.requested == name:
                current.last_seen = self.clock()
                self.presence.touch(room, key, current.last_seen)
                return JoinResult(current, Outcome.UNCHANGED)
            return self._join(room, self.presence.members(room), key, name, source, client_id,
                              private_id, on_clash)

    def _join(self, room: str, members: dict[MemberKey, User], key: MemberKey, name: str, source: str,
              client_id: str | None, private_id: str | None, on_clash: str) -> JoinResult:
        current = members.get(key)
        held = holder_of(members, self.name_key(name), except_key=key)
        display = name
        if held is not None:
            holder_key, holder = held
            if (private_id is not None and holder.private_id == private_id
                    and holder.source == source and current is None):
                return self._reclaim(room, holder_key, key, holder)
            if on_clash == NameClash.SUFFIX:
                display = free_variant(members, name, self.name_key, except_key=key)
            else:
                raise ValidationError("name_taken", f"the name {name!r} is taken in {room}; choose another")
        if current is not None:
            previous, current.username, current.requested = current.username, display, name
            current.name_key = self.name_key(display)
            current.last_seen = self.clock()
            self.presence.put(room, key, current)
            if previous != display:
                self._publish(SystemEvent("rename", f"{previous} is now {display}", room, display,
                                          previous=previous, client_id=current.client_id))
                self._publish(PresenceChanged(room))
            return JoinResult(current, Outcome.RENAMED)
        if len(members) >= self.max_members:
            self._make_way_in(room, members)
        if not members and self.presence.room_count() >= self.max_rooms:
            self._free_a_room()
        user = User(username=display, source=source, room=room, client_id=client_id,
                    private_id=private_id, requested=name, last_seen=self.clock(),
                    name_key=self.name_key(display))
        self.presence.put(room, key, user)
        self._publish(SystemEvent("join", f"{display} joined", room, display, client_id=client_id))
        self._publish(PresenceChanged(room))
        return JoinResult(user, Outcome.JOINED)

    # --- fair shares: the longest-silent device gives way ----------------------------

    def _make_way_in(self, room: str, members: dict[MemberKey, User]) -> None:
        """A full room: its longest-silent device leaves, or the join is room_full."""
        key = longest_silent_device(members, self.device_source)
        if key is None:
            raise ValidationError("room_full", f"{room} has {self.max_members} members; try later")
        self._evict(room, key, "to make room")

    def _free_a_room(self) -> None:
        """A full room table: a room of devices only is emptied (its devices leave), or the
        join is room_full. One read of every member (one pipeline with Redis)."""
        found = room_to_free(self.presence.all_members(), self.device_source)
        if found is None:
            raise ValidationError("room_full", f"this server has {self.max_rooms} rooms in use; "
                                               "join one of them or try later")
        room, keys = found
        for key in keys:
            self._evict(room, key, "to free a room")

    def _evict(self, room: str, key: MemberKey, why: str) -> None:
        user = self._remove(room, key)
        if user is not None:  # one line per device would be one per stranger's id: debug only
            self.evictions += 1
            log.debug("device %r left %r %s", user.client_id, room, why)

    def _remove(self, room: str, key: MemberKey) -> User | None:
        # Called with the lock held. Only the caller that removed it announces the leave.
        user = self.presence.remove(room, key)
        if user is not None:
            self._publish(SystemEvent("leave", f"{user.username} left", room, user.username,
                                      client_id=user.client_id))
            self._publish(PresenceChanged(room))
        return user

    def _reclaim(self, room: str, old_key: MemberKey, key: MemberKey, user: User) -> JoinResult:
        """A page that reconnected (same private id) takes over its old entry: no events."""
        if self.presence.remove(room, old_key) is None:  # another instance took it first
            raise ValidationError("name_taken", f"the name {user.username!r} is taken in {room}; "
                                                "choose another")
        user.last_seen = self.clock()
        self.presence.put(room, key, user)
        return JoinResult(user, Outcome.RECLAIMED, replaced=old_key)

    def leave(self, room: str, key: MemberKey) -> User | None:
        """Remove a member. Atomic across instances: only the caller that removed it
        announces the leave."""
        with self._lock:
            return self._remove(room, key)

    def holds_name(self, room: str, name: str) -> bool:
        """True when a present member of `room` holds `name` (by name key)."""
        return holder_of(self.presence.members(room), self.name_key(name)) is not None

    def touch_present(self, room: str, key: MemberKey, requested: str | None = None) -> User | None:
        """A member about to post, if present (under the name it asked for, when given):
        marked alive and its message counted. None: it must join or rename first."""
        user = self.presence.touch_present(room, key, requested, self.clock())
        if user is not None and not self.open_batch.holds_this_thread():
            self.presence.write_touches(force=True)  # no batch commit will write them: now
        return user

    def expire_silent(self, source: str, silent_since: float) -> list[User]:
        """Members of `source` not heard from since `silent_since` (the room's clock) leave."""
        silent = [(user.room, key) for key, user in self.presence.all_members(source)
                  if user.last_seen < silent_since]
        return [user for room, key in silent if (user := self.leave(room, key)) is not None]

    def member(self, room: str, key: MemberKey) -> User | None:
        return self.presence.member(room, key)

    def holds_message(self, message_id: str) -> bool:
        """Is the message with this server id stored, or waiting in this process's open batch?
        (The dedup window's question: a duplicate of either is not a new message.)"""
        return (any(draft.message_id == message_id for draft in list(self.open_batch.drafts))
                or self.history.has_message(message_id))

    def members(self, source: str | None = None) -> list[tuple[MemberKey, User]]:
        """Every present member of every room, optionally of one source."""
        return self.presence.all_members(source)

    def users(self, room: str) -> list[dict]:
        return [user.to_dict() for user in self.presence.members(room).values()]

    # --- messages -------------------------------------------------------------

    def post(self, room: str, username: str, content: str, source: str, *,
             sender: MemberKey | None = None, client_id: str | None = None,
             data: dict | None = None, client_message_id: str | None = None,
             type: str = USER_MESSAGE, reply_to: str | None = None,
             message_id: str | None = None, units: dict | None = None,
             event_of: Callable[[Message], RoomEvent] | None = None) -> Message:
        """Store a chat message, give it the room's next seq and hand it to listeners
        (`event_of(message)` instead, when given: a stored record listeners see as an event)."""
        # A caller may choose the id: the assistant streams under the id its reply will have,
        # the intake remembers a message's id for dedup before it is stored.
        given_id = {} if message_id is None else {"message_id": message_id}

        def build(seq: int) -> Message:
            return Message(
                username=username, content=content, room=room, source=source,
                seq=seq, type=type, client_id=client_id,
                client_message_id=client_message_id, data=data, reply_to=reply_to, units=units,
                **given_id,
            )

        with self._lock:
            # Stored before anyone sees it: history never lacks a published message.
            batched = self.open_batch.holds_this_thread()
            if not batched:
                self.open_batch.flush()  # an open batch is committed before this message is stored
            if not self.presence.numbers_rooms:  # the store numbers (gap-free across instances)
                if batched:
                    message = build(UNNUMBERED)  # numbered and stored when the batch commits
                    self.open_batch.append_draft(message)
                else:
                    message = self.history.append_next(room, build)
            else:
                message = build(self.presence.next_seq(room, lambda: self.history.last_seq(room)))
                if batched:
                    self.open_batch.append(message)
                else:
                    self.history.append(message)
            self._posted[room] += 1
            self._posted_total += 1
            try:
                if sender is not None:
                    self.presence.count_message(room, sender)
                if len(self._posted) > self.max_rooms:  # posts to rooms nobody is in (HTTP)
                    self._drop_posted_of_empty_rooms()
            except Unavailable:  # stored already: lost bookkeeping must not make the sender retry
                log.warning("bookkeeping of a message in %s skipped: shared state unavailable", room)
            self._publish(message if event_of is None else event_of(message))
            return message

    def announce(self, room: str, event: str, text: str, username: str | None = None) -> SystemEvent:
        """Send a system event (not a chat message: no seq, not stored)."""
        system_event = SystemEvent(event, text, room, username)
        self.stream(system_event)
        return system_event

    def stream(self, event) -> None:
        """Hand a passing event (a system event, a reply being written) to listeners; not stored."""
        with self._lock:
            self._publish(event)

    def history_of(self, room: str, limit: int, before_seq: int | None = None) -> list[Message]:
        self.flush()  # history shows only what is committed
        return self.history.recent(room, limit, before_seq)

    # --- numbers for /mqtt/status and /metrics ----------------------------------

    @property
    def posted_total(self) -> int:
        """Messages posted through this instance since it started."""
        return self._posted_total

    def summary(self) -> dict:
        return {
            "rooms": self.presence.room_count(),
            "web_users": len(self.presence.all_members(Source.WEB)),
            "messages_total": self._posted_total,  # this instance's own
        }

    def posted_per_room(self) -> dict[str, int]:
        """Messages posted here since start, for the rooms that have members now."""
        with self._lock:
            self._drop_posted_of_empty_rooms()
            return dict(self._posted)

    def _drop_posted_of_empty_rooms(self) -> None:
        """Keeps the per-room counts bounded by the live rooms (strangers choose room names)."""
        live = set(self.presence.rooms())
        for room in [room for room in self._posted if room not in live]:
            del self._posted[room]

    def member_counts(self) -> dict[str, dict[str, int]]:
        """For each room with members: how many of each source (web, mqtt)."""
        counts: dict[str, Counter] = {}
        for _, user in self.presence.all_members():
            counts.setdefault(user.room, Counter())[user.source] += 1
        return {room: dict(counter) for room, counter in counts.items()}

    def rooms_with_members(self) -> list[str]:
        return self.presence.rooms()
