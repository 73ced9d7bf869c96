"""Rooms: presence, seq numbers, history hand-off and the listener bus.

The heart of the relay. Every transport turns its input into calls here
(`join`, `leave`, `post`, `announce`); every transport that wants output
subscribes a listener. Stdlib only: no Flask, Socket.IO or paho.

Each listener has its own queue and worker thread, fed in `seq` order while the
room lock is held, so a slow listener (the assistant, a broker that is down)
never delays the others, and every listener sees events in the order they
happened.
"""
from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Hashable, Protocol

from .messages import USER_MESSAGE, Message, SystemEvent, User, ValidationError

log = logging.getLogger(__name__)

MemberKey = Hashable  # ("web", sid), ("mqtt", client_id): unique per connection/device


@dataclass(frozen=True)
class PresenceChanged:
    """The member list of `room` changed; `users` is the new list."""

    room: str
    users: list[dict]


RoomEvent = Message | SystemEvent | PresenceChanged
Listener = Callable[[RoomEvent], None]


class History(Protocol):
    def append(self, message: Message) -> None: ...
    def last_seq(self, room: str) -> int: ...
    def recent(self, room: str, limit: int, before_seq: int | None = None) -> list[Message]: ...


@dataclass
class _RoomState:
    name: str
    seq: int
    members: dict[MemberKey, User] = field(default_factory=dict)


class _ListenerWorker:
    """Delivers events to one listener, in order, on its own thread."""

    def __init__(self, name: str, callback: Listener, on_failure: Callable[[], None],
                 events: tuple[type, ...] = ()):
        self.name = name
        self.callback = callback
        self.events = events  # empty: every event
        self.on_failure = on_failure
        self.queue: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=f"room-listener-{name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if isinstance(item, threading.Event):  # a drain() marker
                item.set()
                continue
            try:
                self.callback(item)
            except Exception:
                self.on_failure()
                log.exception("listener %s failed on %s", self.name, type(item).__name__)

    def drain(self, timeout: float) -> bool:
        marker = threading.Event()
        self.queue.put(marker)
        return marker.wait(timeout)

    def stop(self, timeout: float) -> None:
        self.queue.put(None)
        self.thread.join(timeout)


class Rooms:
    """All rooms of this server. Thread-safe."""

    def __init__(self, history: History):
        self.history = history
        self._lock = threading.RLock()
        self._rooms: dict[str, _RoomState] = {}
        self._workers: list[_ListenerWorker] = []
        self._posted: Counter[str] = Counter()
        self.listener_failures = 0

    # --- listeners ------------------------------------------------------------

    def subscribe(self, name: str, listener: Listener, events: tuple[type, ...] = ()) -> None:
        """Call `listener(event)` for every room event (or only those of the types in
        `events`), on a thread of its own."""
        with self._lock:
            self._workers.append(_ListenerWorker(name, listener, self._count_failure, events))

    def drain(self, timeout: float = 5.0) -> bool:
        """Wait until every listener has handled every event published so far."""
        with self._lock:
            workers = list(self._workers)
        return all(worker.drain(timeout) for worker in workers)

    def close(self, timeout: float = 5.0) -> None:
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker.stop(timeout)

    def _count_failure(self) -> None:
        with self._lock:
            self.listener_failures += 1

    def _publish(self, event: RoomEvent) -> None:
        # Called with the lock held: the queues receive events in seq order.
        for worker in self._workers:
            if not worker.events or isinstance(event, worker.events):
                worker.queue.put(event)

    # --- rooms and presence ---------------------------------------------------

    def _state(self, room: str) -> _RoomState:
        state = self._rooms.get(room)
        if state is None:
            # seq continues across restarts: start from the newest stored message.
            state = self._rooms[room] = _RoomState(room, self.history.last_seq(room))
        return state

    def join(self, room: str, key: MemberKey, username: str, source: str,
             client_id: str | None = None) -> tuple[User, bool]:
        """Add a member (or rename it). Returns (user, True if newly joined).

        Names are unique per room among present members, ignoring case.
        """
        with self._lock:
            state = self._state(room)
            self._refuse_taken_name(state, username, except_key=key)
            current = state.members.get(key)
            if current is not None:
                if current.username != username:
                    current.username = username
                    self._publish(PresenceChanged(room, self._user_list(state)))
                return current, False
            user = User(username=username, source=source, room=room, client_id=client_id)
            state.members[key] = user
            self._publish(SystemEvent("join", f"{username} joined", room, username))
            self._publish(PresenceChanged(room, self._user_list(state)))
            return user, True

    def leave(self, room: str, key: MemberKey) -> User | None:
        with self._lock:
            state = self._rooms.get(room)
            user = state.members.pop(key, None) if state else None
            if user is not None:
                self._publish(SystemEvent("leave", f"{user.username} left", room, user.username))
                self._publish(PresenceChanged(room, self._user_list(state)))
            return user

    def check_name_free(self, room: str, username: str) -> None:
        """Refuse a name a present member holds (ignoring case): no speaking as someone else."""
        with self._lock:
            state = self._rooms.get(room)
            if state is not None:
                self._refuse_taken_name(state, username)

    @staticmethod
    def _refuse_taken_name(state: _RoomState, username: str, except_key: MemberKey | None = None) -> None:
        folded = username.casefold()
        for key, member in state.members.items():
            if key != except_key and member.username.casefold() == folded:
                raise ValidationError("bad_name", f"username {username!r} is already in use in {state.name}")

    def member(self, room: str, key: MemberKey) -> User | None:
        with self._lock:
            state = self._rooms.get(room)
            return state.members.get(key) if state else None

    def members(self, source: str | None = None) -> list[tuple[MemberKey, User]]:
        """Every present member of every room, optionally of one source."""
        with self._lock:
            return [
                (key, user)
                for state in self._rooms.values()
                for key, user in state.members.items()
                if source is None or user.source == source
            ]

    def users(self, room: str) -> list[dict]:
        with self._lock:
            state = self._rooms.get(room)
            return self._user_list(state) if state else []

    @staticmethod
    def _user_list(state: _RoomState) -> list[dict]:
        return [user.to_dict() for user in state.members.values()]

    # --- messages -------------------------------------------------------------

    def post(self, room: str, username: str, content: str, source: str, *,
             sender: MemberKey | None = None, client_id: str | None = None,
             data: dict | None = None, client_message_id: str | None = None,
             type: str = USER_MESSAGE, reply_to: str | None = None,
             message_id: str | None = None) -> Message:
        """Store a chat message, give it the room's next seq and hand it to listeners."""
        with self._lock:
            state = self._state(room)
            message = Message(
                username=username, content=content, room=room, source=source,
                seq=state.seq + 1, type=type, client_id=client_id,
                client_message_id=client_message_id, data=data, reply_to=reply_to,
            )
            if message_id is not None:  # the assistant streams under the id its reply will have
                message.message_id = message_id
            # Stored before anyone sees it: history never lacks a published message.
            self.history.append(message)
            state.seq = message.seq
            self._posted[room] += 1
            member = state.members.get(sender) if sender is not None else None
            if member is not None:
                member.message_count += 1
            self._publish(message)
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
        return self.history.recent(room, limit, before_seq)

    # --- numbers for /mqtt/status and /metrics ----------------------------------

    def summary(self) -> dict:
        with self._lock:
            return {
                "rooms": len(self._rooms),
                "web_users": sum(
                    1 for state in self._rooms.values() for user in state.members.values()
                    if user.source == "web"
                ),
                "messages_total": sum(self._posted.values()),
            }

    def posted_per_room(self) -> dict[str, int]:
        with self._lock:
            return dict(self._posted)

    def active_rooms(self) -> list[str]:
        with self._lock:
            return list(self._rooms)
