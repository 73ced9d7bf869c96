"""Where the state lives: one instance (this process, SQLite) or several (Redis and a shared
history), decided once from the settings so that nothing else forks on the mode.

`build_topology` picks the implementations of core's ports (chatroom/core/ports.py): the
history store, presence, the per-room locks and the dedup window, and the clock presence
is measured with. app.py wires the rest from the answer (docs/ARCHITECTURE.md, docs/SCALING.md).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Callable

from chatroom.config import Settings
from chatroom.core.intake import DEDUP_SECONDS
from chatroom.core.limits import DedupWindow
from chatroom.core.ports import Dedup, HistoryStore, Presence, RoomLocks
from chatroom.core.presence import LocalLocks, LocalPresence
from chatroom.storage.sqlite import MessageStore

if TYPE_CHECKING:
    from chatroom.storage.redis_coordination import InstanceRegistry, SharedState


def open_history(database_url: str, database_path: str, checkpoint_threads: ModuleType | None = None) -> HistoryStore:
    """The history store: PostgreSQL when DATABASE_URL is set (several instances), else SQLite."""
    if database_url:
        from chatroom.storage.postgres import PostgresStore  # psycopg is needed only then

        return PostgresStore(database_url)
    return MessageStore(database_path, checkpoint_threads)


@dataclass
class Topology:
    store: HistoryStore
    presence: Presence
    locks: RoomLocks
    dedup: Dedup
    # Liveness compared across processes needs the wall clock; in one process, the monotonic one.
    clock: Callable[[], float]
    # One process writing a SQLite file alone: the dedup window, kept in this process, is
    # rebuilt from history at start. (MQTT bursts are committed in groups in every mode.)
    one_process_on_sqlite: bool
    redis_url: str = ""
    shared: SharedState | None = None  # several instances: the Redis connection and its parts

    @property
    def several_instances(self) -> bool:
        return self.shared is not None

    @property
    def registry(self) -> InstanceRegistry | None:
        """Which instances are alive (several instances only)."""
        return self.shared.registry if self.shared is not None else None

    def close(self) -> None:
        """After the rooms: the history store, then the Redis connection."""
        self.store.close()
        if self.shared is not None:
            self.shared.close()


def build_topology(settings: Settings, checkpoint_threads: ModuleType | None = None) -> Topology:
    if not settings.several_instances:
        store = open_history(settings.database_url, settings.database_path, checkpoint_threads)
        # PostgreSQL numbers each room itself (in the transaction that stores a message or a
        # batch), as for several instances; this process numbers a SQLite file it writes alone.
        presence = LocalPresence(numbers_rooms=not settings.database_url)
        return Topology(store, presence, LocalLocks(), DedupWindow(ttl=DEDUP_SECONDS), time.monotonic,
                        one_process_on_sqlite=not settings.database_url)
    from chatroom.storage.redis_coordination import SharedState  # redis is needed only then

    # Redis first: when it does not answer, start-up stops with one line and opens nothing.
    # Keys and the Socket.IO channel carry the topic prefix: deployments may share a Redis.
    shared = SharedState(settings.redis_url, f"chatroom:{settings.mqtt_topic_prefix}:", settings.instance_id,
                         settings.instance_ttl, DEDUP_SECONDS)
    try:
        store = open_history(settings.database_url, settings.database_path, checkpoint_threads)
    except Exception:
        shared.close()
        raise
    return Topology(store, shared.presence, shared.locks, shared.dedup, time.time, one_process_on_sqlite=False,
                    redis_url=settings.redis_url, shared=shared)
