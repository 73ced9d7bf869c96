"""Room state shared by several instances, in Redis (PROTOCOL 8, docs/ARCHITECTURE.md).

The same interfaces as the in-process defaults: `RedisPresence` (members and
their liveness; `seq` is numbered by the shared history store) for chatroom/core/presence.py's `Presence`, `RedisLocks` for the
intake's per-room decisions, `RedisDedup` for the dedup window, and
`InstanceRegistry`, which tells which instances are alive so that the web
members of a dead one can be made to leave.

Keys (all under one prefix, so deployments can share a Redis):
    members:<room>  hash  member key -> user JSON
    seen:<room>     hash  member key -> last sign of life (wall clock)
    counts:<room>   hash  member key -> messages posted
    rooms           set   rooms with members
    lock:<room>     the intake's lock of the room
    dedup:<sha1>    the message id of an accepted client message_id (EX 600)
    instance:<id>   this instance is alive (EX ttl); instances: every id seen
    web:<id>        set of "<room>\\t<member key>" of the web members it holds
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
from dataclasses import asdict, fields
from typing import Callable, Hashable, Iterator

import redis

from chatroom.core.errors import Unavailable
from chatroom.core.model import Source, User
from chatroom.core.ports import MemberKey

log = logging.getLogger(__name__)

_USER_FIELDS = {f.name for f in fields(User)} - {"last_seen", "message_count"}

# Atomic steps: a remove that only one instance wins; liveness written only for a
# present member (never a stray field).
_REMOVE = """
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return false end
local seen = redis.call('HGET', KEYS[2], ARGV[1])
local count = redis.call('HGET', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[4], ARGV[2]) end
return {user, seen or '0', count or '0'}
"""
_IF_MEMBER_SET = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end
"""
# A present member posts: one round trip says it is there (under the name it asked
# for), marks it alive and counts the message.
_TOUCH_PRESENT = """
local user = redis.call('HGET', KEYS[1], ARGV[1])
if not user then return false end
if ARGV[2] ~= '' and cjson.decode(user)['requested'] ~= ARGV[2] then return false end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
local count = redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
return {user, ARGV[3], tostring(count)}
"""
_IF_MEMBER_INCR = """
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1 then redis.call('HINCRBY', KEYS[2], ARGV[1], 1) end
"""


def _unavailable_when_redis_is_down(cls):
    """Every public method: a Redis that does not answer is `Unavailable`, not a traceback."""
    for name, method in list(vars(cls).items()):
        if callable(method) and not name.startswith("_"):
            @functools.wraps(method)
            def wrapper(*args, __method=method, **kwargs):
                try:
                    return __method(*args, **kwargs)
                except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
                    raise Unavailable("Redis", exc) from exc
            setattr(cls, name, wrapper)
    return cls


def connect(url: str) -> redis.Redis:
    """A client for REDIS_URL; fails at start-up (not at the first message) when Redis is away."""
    client = redis.Redis.from_url(url, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30)
    client.ping()
    return client


def _text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes; its types allow str too)."""
    return value.decode() if isinstance(value, bytes) else value


def _field(key: MemberKey) -> str:
    return json.dumps(list(key) if isinstance(key, tuple) else key, ensure_ascii=False)


def _key(field: bytes | str) -> MemberKey:
    value = json.loads(field)
    return tuple(value) if isinstance(value, list) else value


def _web_entry(room: str, field: str) -> str:
    """An entry of an instance's set of web members (InstanceRegistry.web_members reads it)."""
    return f"{room}\t{field}"


@_unavailable_when_redis_is_down
class RedisPresence:
    def __init__(self, client: redis.Redis, prefix: str, instance_id: str):
        self.redis = client
        self.prefix = prefix
        self.instance_id = instance_id
        self._remove = client.register_script(_REMOVE)
        self._set_if_member = client.register_script(_IF_MEMBER_SET)
        self._incr_if_member = client.register_script(_IF_MEMBER_INCR)
        self._touch_present = client.register_script(_TOUCH_PRESENT)

    def _keys(self, room: str) -> tuple[str, str, str]:
        p = self.prefix
        return f"{p}members:{room}", f"{p}seen:{room}", f"{p}counts:{room}"

    @staticmethod
    def _user(raw: bytes, seen, count) -> User:
        data = json.loads(raw)
        user = User(**{name: value for name, value in data.items() if name in _USER_FIELDS})
        user.last_seen = float(seen or 0)
        user.message_count = int(count or 0)
        return user

    def member(self, room: str, key: MemberKey) -> User | None:
        field = _field(key)
        pipe = self.redis.pipeline(transaction=False)
        for name in self._keys(room):
            pipe.hget(name, field)
        raw, seen, count = pipe.execute()
        return self._user(raw, seen, count) if raw is not None else None

    def members(self, room: str) -> dict[MemberKey, User]:
        return self._members_of([room])[room]

    def _members_of(self, rooms: list[str]) -> dict[str, dict[MemberKey, User]]:
        pipe = self.redis.pipeline(transaction=False)
        for room in rooms:
            for name in self._keys(room):
                pipe.hgetall(name)
        replies = pipe.execute()
        result = {}
        for index, room in enumerate(rooms):
            users, seen, counts = replies[3 * index: 3 * index + 3]
            result[room] = {_key(field): self._user(raw, seen.get(field), counts.get(field))
                            for field, raw in users.items()}
        return result

    def put(self, room: str, key: MemberKey, user: User) -> None:
        field = _field(key)
        data = {name: value for name, value in asdict(user).items() if name in _USER_FIELDS}
        if user.source == Source.WEB:
            data["instance"] = self.instance_id  # whose socket it is: its members go when it dies
        members, seen, counts = self._keys(room)
        pipe = self.redis.pipeline(transaction=True)
        pipe.hset(members, field, json.dumps(data, ensure_ascii=False))
        pipe.hset(seen, field, repr(user.last_seen))
        pipe.hset(counts, field, user.message_count)
        pipe.sadd(f"{self.prefix}rooms", room)
        if user.source == Source.WEB:
            pipe.sadd(f"{self.prefix}web:{self.instance_id}", _web_entry(room, field))
        pipe.execute()

    def remove(self, room: str, key: MemberKey) -> User | None:
        field = _field(key)
        reply = self._remove(keys=[*self._keys(room), f"{self.prefix}rooms"], args=[field, room])
        if not reply:
            return None
        raw, seen, count = reply
        owner = json.loads(raw).get("instance")
        if owner:
            self.redis.srem(f"{self.prefix}web:{owner}", _web_entry(room, field))
        return self._user(raw, seen, count)

    def touch(self, room: str, key: MemberKey, when: float) -> None:
        members, seen, _ = self._keys(room)
        self._set_if_member(keys=[members, seen], args=[_field(key), repr(when)])

    def touch_present(self, room: str, key: MemberKey, requested: str | None, when: float) -> User | None:
        reply = self._touch_present(keys=list(self._keys(room)), args=[_field(key), requested or "", repr(when)])
        return self._user(*reply) if reply else None

    def count_message(self, room: str, key: MemberKey) -> None:
        members, _, counts = self._keys(room)
        self._incr_if_member(keys=[members, counts], args=[_field(key)])

    def rooms(self) -> list[str]:
        return sorted(_text(room) for room in self.redis.smembers(f"{self.prefix}rooms"))

    def room_count(self) -> int:
        return self.redis.scard(f"{self.prefix}rooms")

    def all_members(self, source: str | None = None) -> list[tuple[MemberKey, User]]:
        rooms = self.rooms()
        if not rooms:
            return []
        return [(key, user) for members in self._members_of(rooms).values() for key, user in members.items()
                if source is None or user.source == source]

    def next_seq(self, room: str, stored_last: Callable[[], int]) -> None:
        """None: the store numbers the room, in the transaction that stores the message.
        A Redis counter would leave a gap whenever an instance died between taking a
        number and storing its message; the database's own numbering cannot."""
        return None


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


@_unavailable_when_redis_is_down
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
        return _text(value) if value is not None else None

    def remember(self, key: Hashable, value: object = True) -> None:
        self.redis.set(self._name(key), str(value), ex=self.ttl)


@_unavailable_when_redis_is_down
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
        others = [_text(raw) for raw in self.redis.smembers(f"{self.prefix}instances")]
        others = [instance for instance in others if instance != self.instance_id]
        if not others:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for instance in others:
            pipe.exists(self._alive(instance))
        return [instance for instance, alive in zip(others, pipe.execute(), strict=True) if not alive]

    def web_members(self, instance: str) -> list[tuple[str, MemberKey]]:
        entries = self.redis.smembers(f"{self.prefix}web:{instance}")
        return [(room, _key(field)) for room, _, field in (_text(entry).partition("\t") for entry in entries)]

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
        self.client.close()
