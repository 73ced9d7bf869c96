"""SQLite history: every room message, in `seq` order, surviving restarts.

All SQL lives here. The store takes a file path or `:memory:`. One connection,
guarded by a lock, is shared by all threads: writes are tiny and WAL keeps
readers from waiting on the writer.

Group commit: a burst of MQTT messages is written by `append_to_batch` into one
open transaction and made durable by one `commit_batch` (one commit per
message cost about half of the relay's CPU, docs/PERFORMANCE.md). Readers on
this connection see the batch at once; other processes see it at the commit.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
from types import ModuleType
from typing import Callable

from chatroom.core.errors import Unavailable
from chatroom.core.model import Message
from chatroom.storage.sqlite_wal import OPEN_WAIT_SECONDS, Checkpointer, switch_to_wal

log = logging.getLogger(__name__)

TABLE = """
CREATE TABLE IF NOT EXISTS {name} (
    room       TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    message_id TEXT    NOT NULL,
    client_id  TEXT,
    timestamp  TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    PRIMARY KEY (room, seq)
);
"""
# Only a message that carried its sender's own id is ever looked up by its server id (the
# dedup check), so only those are indexed by it: an index of every random uuid4 cost more
# than the rest of the insert (each row dirtied a random index page: ~10 µs and 4 KiB of WAL).
WITH_CLIENT_MESSAGE_ID = "json_extract(body, '$.client_message_id') IS NOT NULL"
INDEXES = f"""
CREATE INDEX IF NOT EXISTS messages_by_client ON messages (client_id, seq);
CREATE INDEX IF NOT EXISTS messages_by_id_for_dedup ON messages (message_id) WHERE {WITH_CLIENT_MESSAGE_ID};
"""
class MessageStore:
    def __init__(self, path: str, checkpoint_threads: ModuleType | None = None):
        """`checkpoint_threads`: run WAL checkpoints on a thread of that module (see
        Checkpointer) instead of inside commits."""
        if path != ":memory:":
            directory = os.path.dirname(os.path.abspath(path))
            os.makedirs(directory, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        # timeout: how long a writer waits for another process's write (several instances on one file).
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=OPEN_WAIT_SECONDS)
        switch_to_wal(self._db)
        # NORMAL in WAL mode: durable across a process crash, fast (no fsync per commit).
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(TABLE.format(name="messages"))
        self._drop_unique_message_id()
        self._db.executescript(INDEXES)
        self._batch_open = False
        self._checkpointer = None
        if checkpoint_threads is not None and path != ":memory:":
            self._db.execute("PRAGMA wal_autocheckpoint=0")
            self._checkpointer = Checkpointer(path, checkpoint_threads)

    def _has_unique_message_id(self) -> bool:
        return any(origin == "u" for _, _, _, origin, _ in self._db.execute("PRAGMA index_list(messages)"))

    def _drop_unique_message_id(self) -> None:
        """Databases made before 2026-12-04 have message_id UNIQUE (an index SQLite cannot
        drop): the table is rebuilt once, rows in their order."""
        if not self._has_unique_message_id():
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            # Asked again under the write lock: instances starting together on one file
            # (make cluster) all saw the old table; the first one rebuilds it.
            if not self._has_unique_message_id():
                self._db.execute("ROLLBACK")
                return
            log.info("history store: rebuilding the messages table once without its message_id index (%s)",
                     self.path)
            self._db.execute(TABLE.format(name="messages_rebuilt"))
            self._db.execute("INSERT INTO messages_rebuilt SELECT room, seq, message_id, client_id, timestamp, body"
                             " FROM messages ORDER BY rowid")
            self._db.execute("DROP TABLE messages")
            self._db.execute("ALTER TABLE messages_rebuilt RENAME TO messages")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def append(self, message: Message) -> None:
        with self._lock:
            self._insert(message)

    def append_to_batch(self, message: Message) -> None:
        """Insert into the open batch (opened by the first one); durable at `commit_batch`."""
        with self._lock:
            if not self._db.in_transaction:
                if self._batch_open:  # SQLite rolled the batch back (disk full, I/O error)
                    raise sqlite3.OperationalError("the open batch was rolled back by SQLite")
                self._db.execute("BEGIN")
                self._batch_open = True
            self._insert(message)

    def commit_batch(self) -> None:
        """Make the open batch durable; raises (and rolls it back) when it cannot be."""
        with self._lock:
            if not self._batch_open:
                return
            self._batch_open = False
            if not self._db.in_transaction:
                raise sqlite3.OperationalError("the open batch was rolled back by SQLite")
            try:
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                raise

    def _insert(self, message: Message) -> None:
        self._db.execute(
            "INSERT INTO messages (room, seq, message_id, client_id, timestamp, body)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (message.room, message.seq, message.message_id, message.client_id,
             message.timestamp, message.to_json()),
        )

    def append_next(self, room: str, build: Callable[[int], Message]) -> Message:
        """Store `build(seq)` under the room's next seq, taken from the table in the same
        transaction: several processes on one file number one room without a gap, even
        when one dies between taking a number and storing (BEGIN IMMEDIATE takes the
        file's write lock first)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT MAX(seq) FROM messages WHERE room = ?", (room,)).fetchone()
                message = build((row[0] or 0) + 1)
                self._insert(message)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return message

    def append_numbered(self, drafts: list[Message]) -> None:
        """Store a batch of drafts in one transaction, each room numbered after its newest
        stored seq (BEGIN IMMEDIATE: other processes on the file wait, so no gap, no clash)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                last: dict[str, int] = {}
                for draft in drafts:
                    if draft.room not in last:
                        row = self._db.execute("SELECT MAX(seq) FROM messages WHERE room = ?", (draft.room,)).fetchone()
                        last[draft.room] = row[0] or 0
                    last[draft.room] += 1
                    draft.number(last[draft.room])
                self._db.executemany(
                    "INSERT INTO messages (room, seq, message_id, client_id, timestamp, body) VALUES (?, ?, ?, ?, ?, ?)",
                    [(m.room, m.seq, m.message_id, m.client_id, m.timestamp, m.to_json()) for m in drafts])
                self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
                if isinstance(exc, sqlite3.OperationalError):
                    # Locked by another instance past the busy timeout, or the disk: nothing
                    # stored, so the batch is held and retried, not lost.
                    raise Unavailable("the SQLite history", exc) from exc
                raise

    def has_message(self, message_id: str) -> bool:
        """Is the message stored that got this server id? For the dedup check, which only
        asks about messages that carried their sender's own message_id."""
        with self._lock:
            return self._db.execute(f"SELECT 1 FROM messages WHERE message_id = ? AND {WITH_CLIENT_MESSAGE_ID}",
                                    (message_id,)).fetchone() is not None

    def last_seq(self, room: str) -> int:
        with self._lock:
            row = self._db.execute("SELECT MAX(seq) FROM messages WHERE room = ?", (room,)).fetchone()
        return row[0] or 0

    def recent(self, room: str, limit: int, before_seq: int | None = None) -> list[Message]:
        """The newest `limit` messages of `room` (before `before_seq`), oldest first."""
        if limit <= 0:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM messages WHERE room = ? AND seq < ? ORDER BY seq DESC LIMIT ?",
                (room, before_seq if before_seq is not None else 2**62, limit),
            ).fetchall()
        return [Message.from_dict(json.loads(body)) for (body,) in reversed(rows)]

    def readings(self, client_id: str, key: str, limit: int) -> list[dict]:
        """The newest `limit` values of `data[key]` sent by `client_id`, oldest first."""
        if limit <= 0:
            return []
        path = "$." + json.dumps(key)  # quoted: keys may hold dots or spaces
        with self._lock:
            rows = self._db.execute(
                "SELECT timestamp, json_extract(body, '$.data'), seq, room FROM messages"
                " WHERE client_id = ? AND json_type(json_extract(body, '$.data'), ?) IS NOT NULL"
                " ORDER BY timestamp DESC, seq DESC LIMIT ?",
                (client_id, path, limit),
            ).fetchall()
        # The value is read in Python so booleans stay booleans (SQLite has none).
        return [
            {"timestamp": ts, "value": json.loads(data)[key], "seq": seq, "room": room}
            for ts, data, seq, room in reversed(rows)
        ]

    def recent_rooms(self, limit: int, scan: int = 5000) -> list[str]:
        """Up to `limit` rooms among the newest `scan` messages, newest first.

        Rows are appended in time order, so the newest rowids are the newest messages:
        a bounded walk, whatever the size of the history.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT room FROM (SELECT room, rowid AS r FROM messages ORDER BY rowid DESC LIMIT ?)"
                " GROUP BY room ORDER BY MAX(r) DESC LIMIT ?", (scan, limit)).fetchall()
        return [room for (room,) in rows]

    def device_message_ids(self, since: str, scan: int = 200_000) -> list[tuple[str, str, str, str]]:
        """(room, client_id, client_message_id, message_id) of the device messages stamped at
        or after `since` that carried their own message_id, oldest first: the dedup window
        to rebuild after a restart. A bounded walk over the newest `scan` rows."""
        with self._lock:
            rows = self._db.execute(
                "SELECT room, client_id, json_extract(body, '$.client_message_id'), message_id FROM"
                " (SELECT rowid AS r, * FROM messages ORDER BY rowid DESC LIMIT ?)"
                f" WHERE timestamp >= ? AND client_id IS NOT NULL AND {WITH_CLIENT_MESSAGE_ID} ORDER BY r",
                (scan, since)).fetchall()
        return [tuple(row) for row in rows]

    def recent_devices(self, limit: int, scan: int = 200_000) -> list[tuple[str, str]]:
        """(client_id, time of its newest message) of the `limit` devices heard from most
        recently, newest first: the device table to rebuild after a restart. A bounded walk."""
        with self._lock:
            rows = self._db.execute(
                "SELECT client_id, MAX(timestamp) FROM (SELECT client_id, timestamp FROM messages"
                " ORDER BY rowid DESC LIMIT ?) WHERE client_id IS NOT NULL"
                " GROUP BY client_id ORDER BY 2 DESC LIMIT ?", (scan, limit)).fetchall()
        return [tuple(row) for row in rows]

    def last_messages(self, rooms: list[str]) -> dict[str, dict]:
        """For each room that has history: its newest message's seq and timestamp (one query,
        each room found through the primary key)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT m.room, m.seq, m.timestamp FROM json_each(?) AS wanted"
                " JOIN messages AS m ON m.room = wanted.value"
                " AND m.seq = (SELECT MAX(seq) FROM messages WHERE room = wanted.value)",
                (json.dumps(rooms),)).fetchall()
        return {room: {"last_seq": seq, "last_timestamp": timestamp} for room, seq, timestamp in rows}

    def latest_data(self, client_id: str, scan: int = 200) -> tuple[dict, str | None]:
        """The latest value of each `data` key among a device's newest `scan` readings,
        and the time of the newest one."""
        with self._lock:
            rows = self._db.execute(
                "SELECT timestamp, json_extract(body, '$.data') FROM messages"
                " WHERE client_id = ? AND json_type(body, '$.data') = 'object'"
                " ORDER BY timestamp DESC, seq DESC LIMIT ?", (client_id, scan)).fetchall()
        latest: dict = {}
        for _, data in reversed(rows):  # oldest first: newer values overwrite
            latest.update(json.loads(data))
        return latest, rows[0][0] if rows else None

    def data_keys(self, client_id: str) -> list[str]:
        """Every `data` key a device ever sent (that history still holds)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT DISTINCT j.key FROM messages, json_each(messages.body, '$.data') AS j"
                " WHERE messages.client_id = ? AND json_type(messages.body, '$.data') = 'object'",
                (client_id,)).fetchall()
        return [key for (key,) in rows]

    def delete_older_than(self, timestamp: str) -> int:
        """Delete messages stamped before `timestamp` (ISO, UTC): HISTORY_RETENTION_DAYS.

        The newest message of each room is kept, so `seq` still continues from it.
        """
        with self._lock:
            cursor = self._db.execute(
                "DELETE FROM messages WHERE timestamp < ?"
                " AND seq < (SELECT MAX(seq) FROM messages AS newest WHERE newest.room = messages.room)",
                (timestamp,))
        return cursor.rowcount

    def size_bytes(self) -> int:
        """The database's size on disk (pages in use and free), for /mqtt/status and /metrics."""
        with self._lock:
            pages = self._db.execute("PRAGMA page_count").fetchone()[0]
            page_size = self._db.execute("PRAGMA page_size").fetchone()[0]
        return pages * page_size

    def close(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            if self._checkpointer.failures:
                log.warning("history store: %d background checkpoints failed (last: %s)",
                            self._checkpointer.failures, self._checkpointer.last_failure)
        with self._lock:
            self._db.close()
        log.info("history store closed (%s)", self.path)
