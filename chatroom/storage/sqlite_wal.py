"""The SQLite file in WAL mode: switched to it at open (retried while another instance
switches), and checkpointed on a thread of its own so that no commit waits for it."""
from __future__ import annotations

import logging
import sqlite3
import time
from types import ModuleType

log = logging.getLogger("chatroom.storage.sqlite")

CHECKPOINT_SECONDS = 0.5


class Checkpointer:
    """Copies the WAL into the database file on a thread of its own.

    SQLite's automatic checkpoint runs inside the commit that crosses 1 000 WAL pages, and
    its fsyncs then stall that writer: under eventlet, every green thread (p99 MQTT→MQTT
    ~30 ms at 1 000 msg/s, docs/PERFORMANCE.md). `threads` is the threading module to run
    on: under eventlet the unpatched one, so the fsync waits on a real thread. That thread
    touches nothing but its own SQLite connection and its own Event (no logging: the
    logging locks are green ones).
    """

    def __init__(self, path: str, threads: ModuleType, interval: float = CHECKPOINT_SECONDS):
        self.path, self.interval = path, interval
        self.failures = 0
        self.last_failure = ""
        self._stop = threads.Event()
        self._thread = threads.Thread(target=self._run, name="sqlite-checkpoint", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=5)
        try:
            while not self._stop.wait(self.interval):
                try:
                    # PASSIVE: never waits for the writer; what it cannot copy now, it copies next time.
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:
                    self.failures += 1
                    self.last_failure = str(exc)
        finally:
            db.close()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)


OPEN_WAIT_SECONDS = 30


def switch_to_wal(db: sqlite3.Connection) -> None:
    """Switching a file to WAL needs it alone for a moment, and SQLite answers "database is
    locked" at once instead of waiting (its busy handler is not used for this): instances
    starting together on a new file (make cluster) got that and exited. Retried, briefly."""
    deadline = time.monotonic() + OPEN_WAIT_SECONDS
    delay = 0.01
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
