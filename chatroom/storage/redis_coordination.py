"""What several instances coordinate through Redis besides presence: the intake's per-room
locks, the dedup window, the registry of live instances, and `SharedState`, which opens
them all from the settings' values (chatroom/topology.py). Presence is redis_state.py's."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import time
from typing import Callable, Hashable, Iterator

import redis

from chatroom.core.errors import Unavailable
from chatroom.core.ports import MemberKey
from chatroom.storage.redis_state import RedisPresence, as_text, connect, member_key_from_field, unavailable_when_redis_is_down

log = logging.getLogger("chatroom.storage.redis_state")


class RedisLocks:
    """The intake's per-room lock, shared by every instance.

    A lock is released after `hold_seconds` even if its holder died, and a caller
    that cannot get one in `wait_seconds` gets a clear error, not a hang.
    """

    shared = True  # two round trips: the intake takes it only for decisions that need it

    def __init__(self, client: redis.Redis, prefix: str, hold_seconds: float = 10.0,
                 wait_seconds: float = 20.0):
        self.redis = client
        self.prefix = prefix
        self.hold_seconds = hold_seconds
        self.wait_seconds = wait_seconds

    @contextlib.contextmanager
    def hold(self, room: str) -> Iterator[None]:
        # sleep: the default 0.1 s between tries would add 100 ms whenever two
        # instances take turns on one room.
        lock = self.redis.lock(f"{self.prefix}lock:{room}", timeout=self.hold_seconds, sleep=0.002,
                               blocking_timeout=self.wait_seconds)
        try:
            acquired = lock.acquire()
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise Unavailable("Redis", exc) from exc
        if not acquired:
            raise Unavailable(f"the room {room}", "its lock stayed taken")
        try:
            yield
        finally:
            try:
                lock.release()
            except redis.exceptions.LockError:  # held past hold_seconds and taken over
                log.warning("the lock of room %s expired while held", room)
            except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
                log.warning("Redis went away holding the lock of room %s (it expires by itself)", room)


# Remember a claim unless one is there (then answer it): one round trip, atomic.
_CLAIM = """
local held = redis.call('GET', KEYS[1])
if held then return held end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""
WAIT_SECONDS = 20.0        # for another instance to store the first copy, then `unavailable`


@unavailable_when_redis_is_down
class RedisDedup:
    """The dedup window (DedupWindow's interface), shared: a retry that reaches another
    instance is still recognised. Entries expire after `ttl` seconds.

    `claim` needs no room lock: the entry itself is claimed atomically, as
    "<message id>|<instance>|<wall clock>". A second copy finds the first's claim and is a
    duplicate once the first is stored (or in the open batch of this process); while a live
    instance is storing it, the second waits; a claim whose instance is dead (or this one,
    without the message: it died before storing, in an earlier life or a failed commit) is
    taken over, since the retry is then the message's only copy."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: float, instance_id: str = "",
                 alive: Callable[[str], bool] = lambda instance: False):
        self.redis = client
        self.prefix = prefix
        self.ttl = int(ttl)
        self.instance_id = instance_id
        self.alive = alive
        self._claim = client.register_script(_CLAIM)
        self._take_over = client.register_script(_TAKE_OVER)

    def _name(self, key: Hashable) -> str:
        text = json.dumps(key, ensure_ascii=False, default=str)
        return f"{self.prefix}dedup:{hashlib.sha1(text.encode('utf-8')).hexdigest()}"

    def get(self, key: Hashable):
        value = self.redis.get(self._name(key))
        return _claimed_id(as_text(value)) if value is not None else None

    def remember(self, key: Hashable, value: object = True) -> None:
        self.redis.set(self._name(key), f"{value}|{self.instance_id}|{time.time():.3f}", ex=self.ttl)

    def claim(self, key: Hashable, message_id: str, holds: Callable[[str], bool]) -> str | None:
        name = self._name(key)
        mine = f"{message_id}|{self.instance_id}|{time.time():.3f}"
        give_up = time.monotonic() + WAIT_SECONDS
        while True:
            held = self._claim(keys=[name], args=[mine, self.ttl])
            if held is None:
                return None
            text = as_text(held)
            original = _claimed_id(text)
            if holds(original):
                return original
            if self._abandoned(text):
                if self._take_over(keys=[name], args=[text, mine, self.ttl]):
                    return None
                continue  # someone else changed it meanwhile: look again
            if time.monotonic() > give_up:
                raise Unavailable("the first copy of this message", "another instance is still storing it")
            time.sleep(0.005)  # the other instance is storing it (a batch takes milliseconds)

    def _abandoned(self, claim: str) -> bool:
        parts = claim.split("|")
        if len(parts) != 3 or parts[1] in ("", self.instance_id):
            return True  # an entry of before claims, or ours without the message: lost
        # Never by age: a live instance holding its batch while the store is away stores it
        # when the store is back, however long that takes.
        return not self.alive(parts[1])


def _claimed_id(claim: str) -> str:
    return claim.split("|", 1)[0]


@unavailable_when_redis_is_down
class InstanceRegistry:
    """Which instances are alive (a key with a TTL each, renewed by `beat`), and the
    web members each one holds, so survivors can make a dead one's members leave."""

    def __init__(self, client: redis.Redis, prefix: str, instance_id: str, ttl: float):
        self.redis = client
        self.prefix = prefix
        self.instance_id = instance_id
        self.ttl = max(1, int(ttl))

    def _alive(self, instance: str) -> str:
        return f"{self.prefix}instance:{instance}"

    def beat(self) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.set(self._alive(self.instance_id), "1", ex=self.ttl)
        pipe.sadd(f"{self.prefix}instances", self.instance_id)
        pipe.execute()

    def is_alive(self, instance: str) -> bool:
        return bool(self.redis.exists(self._alive(instance)))

    def was_alive(self) -> bool:
        """True when this id beat within the TTL: a restart after a crash, or a twin."""
        return bool(self.redis.exists(self._alive(self.instance_id)))

    def dead(self) -> list[str]:
        others = [as_text(raw) for raw in self.redis.smembers(f"{self.prefix}instances")]
        others = [instance for instance in others if instance != self.instance_id]
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for instance in others:
            pipe.exists(self._alive(instance))
        return [instance for instance, alive in zip(others, pipe.execute(), strict=True) if not alive]

    def web_members(self, instance: str) -> list[tuple[str, MemberKey]]:
        entries = self.redis.smembers(f"{self.prefix}web:{instance}")
        return [(room, member_key_from_field(field)) for room, _, field in (as_text(entry).partition("\t") for entry in entries)]

    def forget(self, instance: str) -> None:
        pipe = self.redis.pipeline(transaction=False)
        pipe.delete(f"{self.prefix}web:{instance}")
        pipe.srem(f"{self.prefix}instances", instance)
        if instance == self.instance_id:
            pipe.delete(self._alive(instance))
        pipe.execute()


class SharedState:
    """Everything an instance shares through Redis, opened from the settings' values."""

    def __init__(self, url: str, key_prefix: str, instance_id: str, instance_ttl: float, dedup_seconds: float):
        self.url = url
        self.client = connect(url)
        self.presence = RedisPresence(self.client, key_prefix, instance_id)
        self.locks = RedisLocks(self.client, key_prefix)
        self.registry = InstanceRegistry(self.client, key_prefix, instance_id, instance_ttl)
        self.dedup = RedisDedup(self.client, key_prefix, dedup_seconds, instance_id, self.registry.is_alive)

    def close(self) -> None:
        self.presence.close()
        self.client.close()
