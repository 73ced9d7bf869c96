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
    presence-changes  channel: "<room>\t<member key>" of every put/remove (redis_member_cache.py)
    instance:<id>   this instance is alive (EX ttl); instances: every id seen
    web:<id>        set of "<room>\\t<member key>" of the web members it holds
"""
from __future__ import annotations

import functools
import json
import logging
from dataclasses import asdict, fields, replace
from typing import Callable

import redis

from chatroom.core.errors import Unavailable
from chatroom.core.model import Source, User
from chatroom.core.ports import MemberKey
from chatroom.storage.redis_member_cache import MemberCache

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
redis.call('PUBLISH', ARGV[3], ARGV[4])
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


def unavailable_when_redis_is_down(cls):
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


def as_text(value: bytes | str) -> str:
    """A Redis reply as text (the client returns bytes; its types allow str too)."""
    return value.decode() if isinstance(value, bytes) else value


def field_of(key: MemberKey) -> str:
    return json.dumps(list(key) if isinstance(key, tuple) else key, ensure_ascii=False)


def member_key_from_field(field: bytes | str) -> MemberKey:
    value = json.loads(field)
    return tuple(value) if isinstance(value, list) else value


def _web_entry(room: str, field: str) -> str:
    """An entry of an instance's set of web members (InstanceRegistry.web_members reads it)."""
    return f"{room}\t{field}"


@unavailable_when_redis_is_down
class RedisPresence:
    def __init__(self, client: redis.Redis, prefix: str, instance_id: str):
        self.redis = client
        self.prefix = prefix
        self.instance_id = instance_id
        self._remove = client.register_script(_REMOVE)
        self._set_if_member = client.register_script(_IF_MEMBER_SET)
        self._incr_if_member = client.register_script(_IF_MEMBER_INCR)
        self._touch_present = client.register_script(_TOUCH_PRESENT)
        self.changes_channel = f"{prefix}presence-changes"
        self.cache = MemberCache(client, self.changes_channel, self._keys)

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
        field = field_of(key)
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
            result[room] = {member_key_from_field(field): self._user(raw, seen.get(field), counts.get(field))
                            for field, raw in users.items()}
        return result

    def put(self, room: str, key: MemberKey, user: User) -> None:
        field = field_of(key)
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
        pipe.publish(self.changes_channel, _web_entry(room, field))  # every instance's cache drops it
        self.cache.drop(room, field)
        pipe.execute()

    def remove(self, room: str, key: MemberKey) -> User | None:
        field = field_of(key)
        self.cache.drop(room, field)
        reply = self._remove(keys=[*self._keys(room), f"{self.prefix}rooms"],
                             args=[field, room, self.changes_channel, _web_entry(room, field)])
        if not reply:
            return None
        raw, seen, count = reply
        owner = json.loads(raw).get("instance")
        if owner:
            self.redis.srem(f"{self.prefix}web:{owner}", _web_entry(room, field))
        return self._user(raw, seen, count)

    def touch(self, room: str, key: MemberKey, when: float) -> None:
        members, seen, _ = self._keys(room)
        self._set_if_member(keys=[members, seen], args=[field_of(key), repr(when)])

    def touch_present(self, room: str, key: MemberKey, requested: str | None, when: float) -> User | None:
        field = field_of(key)
        cached = self.cache.get(room, field)
        if cached is not None and (not requested or cached.requested == requested):
            self.cache.touch(room, field, when)  # written with the batch (write_touches)
            return replace(cached, last_seen=when)
        generation = self.cache.generation()
        reply = self._touch_present(keys=list(self._keys(room)), args=[field, requested or "", repr(when)])
        if not reply:
            return None
        user = self._user(*reply)
        self.cache.put_if_unchanged(room, field, user, generation)
        return user

    def write_touches(self, force: bool = False) -> None:
        self.cache.write_touches(force)

    def close(self) -> None:
        self.cache.close()

    def count_message(self, room: str, key: MemberKey) -> None:
        members, _, counts = self._keys(room)
        self._incr_if_member(keys=[members, counts], args=[field_of(key)])

    def rooms(self) -> list[str]:
        return sorted(as_text(room) for room in self.redis.smembers(f"{self.prefix}rooms"))

    def room_count(self) -> int:
        return self.redis.scard(f"{self.prefix}rooms")

    def all_members(self, source: str | None = None) -> list[tuple[MemberKey, User]]:
        rooms = self.rooms()
        if not rooms:
            return []
        return [(key, user) for members in self._members_of(rooms).values() for key, user in members.items()
                if source is None or user.source == source]

    # The shared store numbers each room, in the transaction that stores the message: a Redis
    # counter would leave a gap whenever an instance died between taking a number and storing
    # its message; the database's own numbering cannot.
    numbers_rooms = False

    def next_seq(self, room: str, stored_last: Callable[[], int]) -> int:
        raise NotImplementedError("the shared history store numbers rooms (numbers_rooms is False)")
