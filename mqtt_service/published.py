"""Per room: which chat messages went to the broker, and which come from history instead.

The history is the outbox (PROTOCOL 12). A room message handed to the outbox is *admitted*;
the broker's acknowledgement moves the room's cursor, which history_replay.py writes down.
A room is *behind* when its stream must come from history: at start when history holds
messages after the cursor, and whenever the in-memory outbox lets go of one of its
messages (full, or a QoS 0 publication paho forgot on a reconnect). While a room is
behind, its live messages are not admitted: the replay reads them from history, in seq
order, and the room catches up. Each seq is admitted once per process (`handed`).

Called by the outbox under its lock (admit, let_go, caught_up: never calling back), and
by paho's thread on an acknowledgement (its own lock only).
"""
from __future__ import annotations

import threading
from collections import deque

Mark = tuple[str, int]  # (room, seq) of a chat message on P/…/messages/out


class PublishedRooms:
    def __init__(self, cursors: dict[str, int], behind: set[str]):
        """`cursors`: each room's acknowledged seq as stored; `behind`: rooms whose history
        holds messages after it."""
        self._lock = threading.Lock()
        self.handed: dict[str, int] = dict(cursors)  # newest seq admitted to the outbox
        self.acked: dict[str, int] = dict(cursors)   # newest seq acknowledged with all before it
        self.behind: dict[str, int] = {room: 0 for room in behind}  # room -> generation of its replay
        self._outstanding: dict[str, deque[int]] = {}  # admitted, not yet acknowledged, in order
        self._acked_early: dict[str, set[int]] = {}    # acknowledged before an older one
        self._dirty: set[str] = set()
        self.changed = threading.Event()  # the cursor moved: history_replay.py writes it
        self.let_go_count = 0  # room messages the outbox let go of, read again from history

    # --- the outbox's side (under its lock) -----------------------------------------

    def admit(self, mark: Mark, generation: int | None = None) -> bool:
        """May this message enter the outbox now? `generation`: a replayed message, read
        from history during that generation of the room's replay."""
        room, seq = mark
        with self._lock:
            if seq <= self.handed.get(room, 0):
                return False  # handed already (the replay read it first, or a repeat)
            if room in self.behind and (generation is None or generation != self.behind[room]):
                return False  # live while behind: the replay reads it; an old replay page: stale
            self.handed[room] = seq
            self._outstanding.setdefault(room, deque()).append(seq)
            return True

    def let_go(self, mark: Mark) -> bool:
        """The outbox let go of this message (and must drop the room's newer ones it holds):
        the room is read from history from here on. False if it was not admitted."""
        room, seq = mark
        with self._lock:
            outstanding = self._outstanding.get(room)
            if not outstanding or seq not in outstanding:
                return False
            while outstanding and outstanding[-1] >= seq:
                outstanding.pop()
            early = self._acked_early.get(room)
            if early:
                early.difference_update([done for done in early if done >= seq])
            self.handed[room] = seq - 1
            self.behind[room] = self.behind.get(room, 0) + 1
            self.let_go_count += 1
            return True

    def is_behind(self, room: str) -> bool:
        return room in self.behind

    def caught_up(self, room: str, generation: int, newest_stored: int) -> bool:
        """The replay of `room` reached history's newest message: live messages may enter again."""
        with self._lock:
            if self.behind.get(room) != generation or newest_stored > self.handed.get(room, 0):
                return False
            del self.behind[room]
            return True

    # --- the replay's side -----------------------------------------------------------

    def replay_points(self) -> list[tuple[str, int, int]]:
        """(room, the seq to read after, generation) of every room behind."""
        with self._lock:
            return [(room, self.handed.get(room, 0), generation) for room, generation in self.behind.items()]

    def take_changes(self) -> dict[str, int]:
        """The cursors that moved since last asked."""
        with self._lock:
            changes = {room: self.acked[room] for room in self._dirty}
            self._dirty.clear()
            self.changed.clear()
            return changes

    def retry_changes(self, changes: dict[str, int]) -> None:
        """These were not written: write them with the next change."""
        with self._lock:
            self._dirty.update(changes)
            self.changed.set()

    # --- paho's side -------------------------------------------------------------------

    def acknowledged(self, mark: Mark) -> None:
        """The broker acknowledged it (or it was given up: never sent again). The cursor moves
        to the newest seq acknowledged with every older admitted one."""
        room, seq = mark
        with self._lock:
            outstanding = self._outstanding.get(room)
            if not outstanding or seq not in outstanding:
                return
            early = self._acked_early.setdefault(room, set())
            early.add(seq)
            moved = False
            while outstanding and outstanding[0] in early:
                done = outstanding.popleft()
                early.discard(done)
                self.acked[room] = max(self.acked.get(room, 0), done)
                moved = True
            if not outstanding:
                del self._outstanding[room]
                self._acked_early.pop(room, None)
            if moved:
                self._dirty.add(room)
                self.changed.set()

    def outstanding(self) -> int:
        with self._lock:
            return sum(len(seqs) for seqs in self._outstanding.values())
