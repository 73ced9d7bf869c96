"""Present devices read from this process, kept true by Redis (docs/SCALING.md).

A device posting in a room it is present in needs no decision another instance could
race: only "is it there, under the name it asks for". `MemberCache` answers that from
memory, so a burst of device messages costs no Redis round trip per message (which
would also yield eventlet's hub after every message and break the group-commit batch).
What the answer would have written — the member's last sign of life and its message
count — is kept as a pending touch and written for the whole batch in one pipeline
(`write_touches`, called when the batch commits).

True because every change of a member goes through `RedisPresence.put`/`remove`,
which publish "<room>\\t<field>" on the invalidation channel in the same round trip;
each instance's listener drops that entry. Entries are cached only while the listener
is subscribed (a lost subscription clears the cache, and nothing is cached until it is
back), and a reply read while an invalidation arrived is not cached (the generation
check). A TTL bounds how long anything the listener missed could live.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Callable

import redis
from cachetools import TTLCache

from chatroom.core.model import User

log = logging.getLogger("chatroom.storage.redis_state")

MAX_MEMBERS = 100_000       # cached members (bounded: a stranger's many ids only evict)
TTL_SECONDS = 30.0          # the longest a missed invalidation could be believed
MAX_PENDING = 10_000        # touches waiting to be written; more are written at once
WRITE_EVERY = 1.0           # seconds: liveness and counts are written at most this late
RETRY_SECONDS = 1.0         # between two tries of a lost subscription

# One call for every room of the batch: ARGV is, per room, its number of members then
# (field, last seen, messages) of each; KEYS the room's three hashes. Written only for members
# still present (a member removed meanwhile gets no stray field).
TOUCH_MANY = """
local a = 1
for k = 1, #KEYS, 3 do
  local n = tonumber(ARGV[a])
  for i = a + 1, a + 3 * n, 3 do
    if redis.call('HEXISTS', KEYS[k], ARGV[i]) == 1 then
      redis.call('HSET', KEYS[k + 1], ARGV[i], ARGV[i + 1])
      redis.call('HINCRBY', KEYS[k + 2], ARGV[i], ARGV[i + 2])
    end
  end
  a = a + 1 + 3 * n
end
"""

CacheKey = tuple[str, str]  # (room, member field)


class MemberCache:
    def __init__(self, client: redis.Redis, channel: str, keys_of: Callable[[str], tuple[str, str, str]]):
        self.redis = client
        self.channel = channel
        self.keys_of = keys_of  # room -> (members, seen, counts) hash names
        self._members: TTLCache[CacheKey, User] = TTLCache(MAX_MEMBERS, TTL_SECONDS)
        self._lock = threading.Lock()
        self._generation = 0       # invalidations seen so far
        self._subscribed = False   # entries are trusted only while invalidations arrive
        self._pending: dict[CacheKey, list] = {}  # -> [last seen, messages]
        self._next_write = 0.0
        self._touch_many = client.register_script(TOUCH_MANY)
        self._stopped = threading.Event()
        self._listener = threading.Thread(target=self._listen, name="redis-member-cache", daemon=True)
        self._listener.start()

    # --- reads ----------------------------------------------------------------

    def generation(self) -> int:
        return self._generation

    def get(self, room: str, field: str) -> User | None:
        if not self._subscribed:
            return None
        with self._lock:
            return self._members.get((room, field))

    def put_if_unchanged(self, room: str, field: str, user: User, generation: int) -> None:
        """Cache a member read from Redis, unless an invalidation arrived since the read began."""
        with self._lock:
            if self._subscribed and generation == self._generation:
                self._members[(room, field)] = user

    def drop(self, room: str, field: str) -> None:
        with self._lock:
            self._generation += 1
            self._members.pop((room, field), None)

    # --- pending touches --------------------------------------------------------

    def touch(self, room: str, field: str, when: float) -> None:
        """A cached member posted: its liveness and count, written with the batch."""
        with self._lock:
            entry = self._pending.get((room, field))
            if entry is None:
                self._pending[(room, field)] = [when, 1]
            else:
                entry[0] = when
                entry[1] += 1
            full = len(self._pending) >= MAX_PENDING
        if full:
            self.write_touches(force=True)

    def write_touches(self, force: bool = False) -> None:
        """The pending touches, in one round trip. Unless forced, at most once a WRITE_EVERY
        (a steady trickle of one-message batches would otherwise pay it per message); the
        listener thread writes what is left."""
        with self._lock:
            if not self._pending or (not force and time.monotonic() < self._next_write):
                return
            pending, self._pending = self._pending, {}
            self._next_write = time.monotonic() + WRITE_EVERY
        by_room: dict[str, list[str]] = {}
        for (room, field), (when, count) in pending.items():
            by_room.setdefault(room, []).extend((field, repr(when), str(count)))
        keys: list[str] = []
        args: list[str | int] = []
        for room, triples in by_room.items():
            keys.extend(self.keys_of(room))
            args.append(len(triples) // 3)
            args.extend(triples)
        self._touch_many(keys=keys, args=args)

    # --- the invalidation listener ------------------------------------------------

    def close(self) -> None:
        self._stopped.set()

    def _listen(self) -> None:
        while not self._stopped.is_set():
            pubsub = self.redis.pubsub()
            try:
                pubsub.subscribe(self.channel)
                while not self._stopped.is_set():
                    message = pubsub.get_message(timeout=WRITE_EVERY)
                    if message is not None:
                        self._on_message(message)
                    self.write_touches()  # what no batch wrote since
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError, ValueError) as exc:
                # (ValueError: redis-py reading a connection closed under it.)
                if not self._stopped.is_set():
                    log.warning("member cache off until Redis answers again: %s", exc)
            except Exception:  # never leave the cache trusted without its listener
                log.exception("member cache listener failed; cache off")
            finally:
                self._forget_all()
                try:
                    pubsub.close()
                except Exception:  # closing a dead connection: nothing left to do
                    pass
            self._stopped.wait(RETRY_SECONDS)

    def _on_message(self, message: dict) -> None:
        if message["type"] == "subscribe":
            with self._lock:  # from now on every change reaches us: start from empty
                self._generation += 1
                self._members.clear()
                self._subscribed = True
            return
        if message["type"] != "message":
            return
        data = message["data"]
        room, _, field = (data.decode() if isinstance(data, bytes) else data).partition("\t")
        self.drop(room, field)

    def _forget_all(self) -> None:
        with self._lock:
            self._subscribed = False
            self._generation += 1
            self._members.clear()
