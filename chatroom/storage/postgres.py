"""PostgreSQL history (DATABASE_URL): the SQLite store's interface, for several instances.

The same table and the same answers as chatroom/storage/sqlite.py, through psycopg 3.
One connection in autocommit mode, guarded by a lock like SQLite's; a
connection PostgreSQL closed (a restart, a failover) is opened again once and
the statement retried, so a database blip does not cost a message.
"""
from __future__ import annotations

import json
import logging
import threading
from dataclasses import replace
from typing import Callable
from urllib.parse import urlsplit

import psycopg

from chatroom.core.errors import Unavailable
from chatroom.core.model import UNNUMBERED, Message

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    position   BIGINT GENERATED ALWAYS AS IDENTITY UNIQUE,
    room       TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    message_id TEXT   NOT NULL UNIQUE,
    client_id  TEXT,
    timestamp  TEXT   NOT NULL,
    body       TEXT   NOT NULL,
    PRIMARY KEY (room, seq)
);
CREATE INDEX IF NOT EXISTS messages_by_client ON messages (client_id, seq);
"""
INSERT = ("INSERT INTO messages (room, seq, message_id, client_id, timestamp, body)"
          " VALUES (%s, %s, %s, %s, %s, %s)")
# A batch of one room: numbered after the newest stored seq in the order given (ordinality).
INSERT_NUMBERED = ("INSERT INTO messages (room, seq, message_id, client_id, timestamp, body)"
                   " SELECT %(room)s, base.last + t.n, t.message_id, t.client_id, t.timestamp,"
                   " regexp_replace(t.body, '\"seq\":-1', '\"seq\":' || (base.last + t.n))"
                   " FROM (SELECT COALESCE(MAX(seq), 0) AS last FROM messages WHERE room = %(room)s) AS base,"
                   " unnest(%(ids)s::text[], %(clients)s::text[], %(times)s::text[], %(bodies)s::text[])"
                   " WITH ORDINALITY AS t(message_id, client_id, timestamp, body, n)"
                   " RETURNING message_id, seq")
INSERT_NEXT = ("INSERT INTO messages (room, seq, message_id, client_id, timestamp, body)"
               " SELECT %(room)s, next.seq, %(message_id)s, %(client_id)s, %(timestamp)s,"
               " regexp_replace(%(body)s, '\"seq\":-1', '\"seq\":' || next.seq)"
               " FROM (SELECT COALESCE(MAX(seq), 0) + 1 AS seq FROM messages WHERE room = %(room)s) AS next"
               " RETURNING seq")
STORED_SEQS = "SELECT message_id, seq FROM messages WHERE message_id = ANY(%s)"
MESSAGE_ID_KEY = "messages_message_id_key"  # UNIQUE (message_id): a message stored once
# Two instances starting together must not both create the table.
SCHEMA_LOCK = 0x63686174  # "chat"


def describe(url: str) -> str:
    """host:port/db of a URL, without the password, for logs."""
    parts = urlsplit(url)
    return f"postgresql://{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


class PostgresStore:
    def __init__(self, url: str):
        self.url = url
        self.path = describe(url)
        self._lock = threading.Lock()
        self._db = self._connect()
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._db.execute(SCHEMA)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, connect_timeout=10,
                               application_name="chatroom-relay")

    def _fetch(self, sql: str, params=(), rows: bool = True):
        with self._lock:
            for attempt in (1, 2):
                try:
                    cursor = self._db.execute(sql, params)
                    return cursor.fetchall() if rows else cursor.rowcount
                except psycopg.OperationalError as exc:
                    self._reconnect_or_raise(attempt, exc)

    def _reconnect_or_raise(self, attempt: int, exc: psycopg.OperationalError) -> None:
        if attempt == 2 or not self._db.closed:
            raise Unavailable("PostgreSQL", exc) from exc
        log.warning("PostgreSQL connection lost; connecting again to %s", self.path)
        try:
            self._db = self._connect()
        except psycopg.OperationalError as again:
            raise Unavailable("PostgreSQL", again) from again

    def append_next(self, room: str, build: Callable[[int], Message]) -> Message:
        """Store `build(seq)` under the room's next seq: one statement takes the newest stored
        seq + 1 and inserts against the (room, seq) primary key. Of two instances that read
        the same newest seq, the second insert fails on the key and runs again; nothing is
        reserved, so an instance that dies in between leaves no gap. One round trip.

        The body is the message's own JSON with the number written in by PostgreSQL: the
        draft says `"seq":-1`, and its first occurrence is the top-level field (every field
        before it is a JSON string, where a quote is escaped)."""
        draft = build(UNNUMBERED)
        while True:
            try:
                seq = self._fetch(INSERT_NEXT, {"room": room, "message_id": draft.message_id,
                                                "client_id": draft.client_id, "timestamp": draft.timestamp,
                                                "body": draft.to_json()})[0][0]
                return replace(draft, seq=seq)
            except psycopg.errors.UniqueViolation as exc:
                if exc.diag.constraint_name == MESSAGE_ID_KEY:
                    # Stored already: a commit whose reply the connection lost, run again.
                    stored = self._fetch(STORED_SEQS, ([draft.message_id],))
                    return replace(draft, seq=dict(stored)[draft.message_id])
                if exc.diag.constraint_name != "messages_pkey":
                    raise
            except psycopg.errors.ReadOnlySqlTransaction as exc:  # a failover's standby, for a moment
                raise Unavailable("PostgreSQL", exc) from exc

    def _stored_seqs(self, message_ids: list[str]) -> dict[str, int]:
        """(With the lock held.)"""
        return dict(self._db.execute(STORED_SEQS, (message_ids,)).fetchall())

    def append_numbered(self, drafts: list[Message]) -> None:
        """A batch in one transaction: one statement per room numbers its drafts after the
        newest stored seq (as `append_next` does for one). A clash with another instance's
        batch rolls the whole transaction back and it runs again. After a lost connection (the
        commit may have happened, its reply lost) or a message_id already stored, what is
        stored is read back and only the rest inserted: a batch is never stored twice, and a
        stored one is never reported lost."""
        with self._lock:
            connection_attempt, read_back = 1, False
            while True:
                try:
                    seqs = self._stored_seqs([m.message_id for m in drafts]) if read_back else {}
                    by_room: dict[str, list[Message]] = {}
                    for draft in drafts:
                        if draft.message_id not in seqs:
                            by_room.setdefault(draft.room, []).append(draft)
                    if by_room:
                        with self._db.transaction():
                            for room in sorted(by_room):  # one order for every instance: no deadlock
                                batch = by_room[room]
                                rows = self._db.execute(INSERT_NUMBERED, {
                                    "room": room, "ids": [m.message_id for m in batch],
                                    "clients": [m.client_id for m in batch], "times": [m.timestamp for m in batch],
                                    "bodies": [m.to_json() for m in batch]}).fetchall()
                                seqs.update(rows)
                    for draft in drafts:
                        draft.number(seqs[draft.message_id])
                    return
                except psycopg.errors.UniqueViolation as exc:
                    if exc.diag.constraint_name == MESSAGE_ID_KEY:
                        read_back = True
                    elif exc.diag.constraint_name != "messages_pkey":
                        raise
                except (psycopg.errors.DeadlockDetected, psycopg.errors.TransactionRollback):
                    continue  # a deadlock or serialization failure: PostgreSQL rolled it back
                except psycopg.errors.ReadOnlySqlTransaction as exc:  # a failover's standby, for a moment
                    raise Unavailable("PostgreSQL", exc) from exc
                except psycopg.OperationalError as exc:
                    self._reconnect_or_raise(connection_attempt, exc)
                    connection_attempt, read_back = connection_attempt + 1, True

    def append(self, message: Message) -> None:
        self._fetch(INSERT, (message.room, message.seq, message.message_id, message.client_id,
                             message.timestamp, message.to_json()), rows=False)

    # A batch of one: every message is committed in its own statement (autocommit), so the
    # group commit of one process on SQLite (Rooms(group_commit=True)) never applies here.
    append_to_batch = append

    def commit_batch(self) -> None:
        """Nothing waits: each append was committed already."""

    def has_message(self, message_id: str) -> bool:
        return bool(self._fetch("SELECT 1 FROM messages WHERE message_id = %s", (message_id,)))

    def last_seq(self, room: str) -> int:
        return self._fetch("SELECT MAX(seq) FROM messages WHERE room = %s", (room,))[0][0] or 0

    def recent(self, room: str, limit: int, before_seq: int | None = None) -> list[Message]:
        if limit <= 0:
            return []
        rows = self._fetch(
            "SELECT body FROM messages WHERE room = %s AND seq < %s ORDER BY seq DESC LIMIT %s",
            (room, before_seq if before_seq is not None else 2**62, limit))
        return [Message.from_dict(json.loads(body)) for (body,) in reversed(rows)]

    def readings(self, client_id: str, key: str, limit: int) -> list[dict]:
        if limit <= 0:
            return []
        rows = self._fetch(
            "SELECT timestamp, body::jsonb -> 'data' -> %s, seq, room FROM messages"
            " WHERE client_id = %s AND jsonb_typeof(body::jsonb -> 'data') = 'object'"
            " AND (body::jsonb -> 'data') ? %s ORDER BY timestamp DESC, seq DESC LIMIT %s",
            (key, client_id, key, limit))
        return [{"timestamp": ts, "value": value, "seq": seq, "room": room}
                for ts, value, seq, room in reversed(rows)]

    def recent_rooms(self, limit: int, scan: int = 5000) -> list[str]:
        rows = self._fetch(
            "SELECT room FROM (SELECT room, position FROM messages ORDER BY position DESC LIMIT %s) AS newest"
            " GROUP BY room ORDER BY MAX(position) DESC LIMIT %s", (scan, limit))
        return [room for (room,) in rows]

    def last_messages(self, rooms: list[str]) -> dict[str, dict]:
        rows = self._fetch(
            "SELECT m.room, m.seq, m.timestamp FROM unnest(%s::text[]) AS wanted(room)"
            " JOIN messages AS m ON m.room = wanted.room"
            " AND m.seq = (SELECT MAX(seq) FROM messages WHERE room = wanted.room)", (list(rooms),))
        return {room: {"last_seq": seq, "last_timestamp": timestamp} for room, seq, timestamp in rows}

    def latest_data(self, client_id: str, scan: int = 200) -> tuple[dict, str | None]:
        rows = self._fetch(
            "SELECT timestamp, body::jsonb -> 'data' FROM messages"
            " WHERE client_id = %s AND jsonb_typeof(body::jsonb -> 'data') = 'object'"
            " ORDER BY timestamp DESC, seq DESC LIMIT %s", (client_id, scan))
        latest: dict = {}
        for _, data in reversed(rows):  # oldest first: newer values overwrite
            latest.update(data)
        return latest, rows[0][0] if rows else None

    def recent_devices(self, limit: int, scan: int = 200_000) -> list[tuple[str, str]]:
        """(client_id, time of its newest message), newest first: see MessageStore."""
        rows = self._fetch(
            "SELECT client_id, MAX(timestamp) FROM (SELECT client_id, timestamp FROM messages"
            " ORDER BY position DESC LIMIT %s) AS newest WHERE client_id IS NOT NULL"
            " GROUP BY client_id ORDER BY 2 DESC LIMIT %s", (scan, limit))
        return [tuple(row) for row in rows]

    def device_message_ids(self, since: str, scan: int = 200_000) -> list[tuple[str, str, str, str]]:
        """(room, client_id, client_message_id, message_id) of recent device messages that
        carried their own message_id, oldest first: see MessageStore. (Several instances keep
        the dedup window in Redis; this keeps the two stores interchangeable.)"""
        rows = self._fetch(
            "SELECT room, client_id, body::jsonb ->> 'client_message_id', message_id FROM"
            " (SELECT * FROM messages ORDER BY position DESC LIMIT %s) AS newest"
            " WHERE timestamp >= %s AND client_id IS NOT NULL"
            " AND body::jsonb ->> 'client_message_id' IS NOT NULL ORDER BY position", (scan, since))
        return [tuple(row) for row in rows]

    def data_keys(self, client_id: str) -> list[str]:
        rows = self._fetch(
            "SELECT DISTINCT jsonb_object_keys(body::jsonb -> 'data') FROM messages"
            " WHERE client_id = %s AND jsonb_typeof(body::jsonb -> 'data') = 'object'", (client_id,))
        return [key for (key,) in rows]

    def delete_older_than(self, timestamp: str) -> int:
        """HISTORY_RETENTION_DAYS; each room's newest message stays, so seq continues from it."""
        return self._fetch(
            "DELETE FROM messages WHERE timestamp < %s"
            " AND seq < (SELECT MAX(seq) FROM messages AS newest WHERE newest.room = messages.room)",
            (timestamp,), rows=False)

    def size_bytes(self) -> int:
        return self._fetch("SELECT pg_total_relation_size('messages')")[0][0]

    def close(self) -> None:
        with self._lock:
            self._db.close()
        log.info("history store closed (%s)", self.path)
