"""What several instances coordinate through Redis besides presence: the intake's per-room
locks, the dedup window, the registry of live instances, and `SharedState`, which opens
them all from the settings' values (chatroom/topology.py). Presence is redis_state.py's."""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from typing import Hashable, Iterator

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


@unavailable_when_redis_is_down
class RedisDedup:
    """The dedup window (DedupWindow's interface), shared: a retry that reaches another
    instance is still recognised. Entries expire after `ttl` seconds."""

    def __init__(self, client: redis.Redis, prefix: str, ttl: float):
        self.redis = client
        self.prefix = prefix
        self.ttl = int(ttl)

    def _name(self, key: Hashable) -> str:
        text = json.dumps(key, ensure_ascii=False, default=str)
        return f"{self.prefix}dedup:{hashlib.sha1(text.encode('utf-8')).hexdigest()}"

    def get(self, key: Hashable):
        value = self.redis.get(self._name(key))
        return as_text(value) if value is not None else None

    def remember(self, key: Hashable, value: object = True) -> None:
        self.redis.set(self._name(key), str(value), ex=self.ttl)


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
        self.dedup = RedisDedup(self.client, key_prefix, dedup_seconds)
        self.registry = InstanceRegistry(self.client, key_prefix, instance_id, instance_ttl)

    def close(self) -> None:
        self.presence.close()
        self.client.close()
