"""The bridge's publish cursor: per room, the newest `seq` the broker acknowledged on
`P/…/messages/out`, kept beside the history it points into (PROTOCOL 12: the history is the outbox).

A table of its own (`mqtt_publish_cursor`), in the history's SQLite file or PostgreSQL
database, on a connection of its own: the history store (sqlite.py, postgres.py) is not
touched. It reads the `messages` table those stores write (room, seq, body) to find what
was stored after the cursor. Rows are per (scope, room): scope is the topic prefix the
bridge publishes under; the row with room '' (no room is named so) marks a scope whose
cursor exists, so a database older than the cursor is not replayed from its first message.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from typing import Any, Callable, Protocol, TypeVar

from chatroom.core.command_desk import RECORD
from chatroom.core.model import Message, dumps

log = logging.getLogger(__name__)
T = TypeVar("T")

TABLE = """
CREATE TABLE IF NOT EXISTS mqtt_publish_cursor (
    scope TEXT   NOT NULL,
    room  TEXT   NOT NULL,
    seq   BIGINT NOT NULL,
    PRIMARY KEY (scope, room)
)
"""
MARK = ""  # the room of the row that says a scope's cursor exists
# A command record (command_desk.py) is stored with a seq but published live as a system event
# on P/…/system, never on messages/out: the cursor does not count it, or it would be replayed as
# chat after a restart and, as a room's newest row, keep the room behind for ever. A body is
# the message's own JSON, `type` first (Message.to_dict), so a record's starts with this text.
RECORD_BODY_START = dumps({"type": RECORD})[:-1] + ","
CHAT = f"substr(body, 1, {len(RECORD_BODY_START)}) <> '{RECORD_BODY_START}'"
# Each room's newest chat seq, one index look-up per room (a loose index scan on (room, seq),
# read backwards past the room's newest command records).
NEWEST_PER_ROOM = f"""
WITH RECURSIVE rooms(room) AS (
    SELECT MIN(room) FROM messages
    UNION ALL
    SELECT (SELECT MIN(room) FROM messages WHERE room > rooms.room) FROM rooms WHERE rooms.room IS NOT NULL
)
SELECT room, (SELECT seq FROM messages WHERE messages.room = rooms.room AND {CHAT} ORDER BY seq DESC LIMIT 1)
FROM rooms WHERE room IS NOT NULL
"""


class Busy(Exception):
    """The database's write lock is taken (the history's open batch): try again shortly."""


class Database(Protocol):
    """The few calls the cursor needs from a DB-API connection (sqlite3 or psycopg)."""

    def execute(self, sql: str, params: Any = ...) -> Any: ...


class PublishCursor:
    """The cursor's SQL, one connection guarded by a lock (the bridge's cursor writer and
    its history reader use it from two threads)."""

    def __init__(self, db: Any, placeholder: str, path: str):
        self._db = db
        self._lock = threading.Lock()
        self._p = placeholder
        self.path = path
        with self._lock:
            self._db.execute(TABLE)

    def _sql(self, sql: str) -> str:
        return sql.replace("?", self._p)

    def _rows(self, sql: str, params: tuple = ()) -> list:
        with self._lock:
            return self._retrying(lambda: list(self._db.execute(self._sql(sql), params).fetchall()))

    def _retrying(self, work: Callable[[], T]) -> T:
        """Run `work` on the connection (the lock held); PostgreSQL opens a lost one again."""
        return work()

    def load(self, scope: str) -> dict[str, int]:
        """The cursor of every room of `scope`. The first time, every room starts at its newest
        stored message: the history the database held before the cursor existed is not replayed."""
        rows = self._rows("SELECT room, seq FROM mqtt_publish_cursor WHERE scope = ?", (scope,))
        if rows:
            return {room: seq for room, seq in rows if room != MARK}
        newest = self.newest_per_room()
        self.save(scope, {MARK: 0, **newest})
        log.info("publish cursor for %r created at the newest message of %d rooms", scope, len(newest))
        return newest

    def save(self, scope: str, cursors: dict[str, int]) -> None:
        """Move rooms' cursors forward (never back), in one transaction."""
        upsert = self._sql("INSERT INTO mqtt_publish_cursor (scope, room, seq) VALUES (?, ?, ?) "
                           "ON CONFLICT (scope, room) DO UPDATE SET seq = excluded.seq "
                           "WHERE excluded.seq > mqtt_publish_cursor.seq")
        rows = [(scope, room, seq) for room, seq in cursors.items()]
        with self._lock:
            self._retrying(lambda: self._transaction(upsert, rows))

    def _transaction(self, sql: str, rows: list[tuple]) -> None:
        raise NotImplementedError

    def newest_per_room(self) -> dict[str, int]:
        return {room: seq for room, seq in self._rows(NEWEST_PER_ROOM) if seq is not None}

    def newest(self, room: str) -> int:
        """The room's newest chat seq (0: none)."""
        rows = self._rows(f"SELECT seq FROM messages WHERE room = ? AND {CHAT} ORDER BY seq DESC LIMIT 1", (room,))
        return rows[0][0] if rows else 0

    def after(self, room: str, seq: int, limit: int) -> list[Message]:
        """The room's stored chat messages after `seq`, in seq order, at most `limit` (a
        command record is skipped: its seq leaves a gap, as in the live stream)."""
        rows = self._rows(f"SELECT body FROM messages WHERE room = ? AND seq > ? AND {CHAT} ORDER BY seq LIMIT ?",
                          (room, seq, limit))
        return [Message.from_dict(json.loads(body)) for (body,) in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


class SqlitePublishCursor(PublishCursor):
    def __init__(self, path: str):
        # The history store made the file and switched it to WAL: readers never wait for its writer.
        db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        db.execute("PRAGMA synchronous=NORMAL")
        # Never checkpoint inside this connection's commits: SQLite's automatic checkpoint would
        # copy the history's WAL into the file here, on the bridge's thread, and under eventlet
        # stop every green thread; the history's own checkpoint thread does it (sqlite_wal.py).
        db.execute("PRAGMA wal_autocheckpoint=0")
        super().__init__(db, "?", path)
        # From here on a write never waits for the store's open batch: SQLite's busy wait
        # sleeps in C, which under eventlet stops every green thread, the one that would
        # commit the batch too. A busy write fails at once (`Busy`) and is tried again later.
        db.execute("PRAGMA busy_timeout = 0")

    def save(self, scope: str, cursors: dict[str, int]) -> None:
        try:
            super().save(scope, cursors)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                raise Busy(str(exc)) from exc
            raise

    def _transaction(self, sql: str, rows: list[tuple]) -> None:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(sql, rows)
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise


class PostgresPublishCursor(PublishCursor):
    def __init__(self, url: str, path: str):
        self._url = url
        super().__init__(self._connect(), "%s", path)

    def _connect(self) -> Any:
        import psycopg  # only with DATABASE_URL

        return psycopg.connect(self._url, autocommit=True, connect_timeout=10,
                               application_name="chatroom-publish-cursor")

    def _retrying(self, work: Callable[[], T]) -> T:
        """A connection PostgreSQL closed (a restart, a failover, an idle kill) is opened again
        and the statement run once more, as the history store does (postgres.py): every
        statement here may run twice (reads, and an upsert that only moves forward). Still
        failing: the error goes to the caller (history_replay.py tries again later), and the
        next call connects again."""
        import psycopg

        for attempt in (1, 2):
            try:
                return work()
            except psycopg.OperationalError:
                if attempt == 2 or not self._db.closed:
                    raise
                log.warning("PostgreSQL connection of the publish cursor lost; connecting again to %s", self.path)
                self._db = self._connect()
        raise AssertionError("unreachable")

    def _transaction(self, sql: str, rows: list[tuple]) -> None:
        with self._db.transaction():
            with self._db.cursor() as cursor:
                cursor.executemany(sql, rows)


def open_publish_cursor(database_url: str, database_path: str, path: str) -> PublishCursor | None:
    """The cursor beside the history (None for an in-memory SQLite history: nothing to point into)."""
    if database_url:
        return PostgresPublishCursor(database_url, path)
    if database_path == ":memory:":
        return None
    return SqlitePublishCursor(database_path)
