"""What main() checks and tunes before serving: one clear line when
Redis or PostgreSQL do not answer, real OS threads for fsync under eventlet, and the
garbage collector settled after start-up."""
from __future__ import annotations

import gc
from types import ModuleType


def real_threading(async_mode: str) -> ModuleType:
    """A threading module whose threads are OS threads: eventlet makes the usual one green,
    and a green thread that waits on an fsync stops all of them."""
    if async_mode == "eventlet":
        from eventlet.patcher import original

        return original("threading")
    import threading

    return threading


def startup_service_problem(exc: Exception) -> str | None:
    """What to tell the operator when Redis or PostgreSQL did not answer at start."""
    module = type(exc).__module__ or ""
    detail = " ".join(str(exc).split())  # one line: libpq's messages span several
    if module.startswith("redis"):
        return f"cannot reach Redis at REDIS_URL: {detail} (start Redis or fix REDIS_URL; docs/SCALING.md)"
    if module.startswith("psycopg"):
        return f"cannot use PostgreSQL at DATABASE_URL: {detail} (docs/SCALING.md)"
    return None


def settle_garbage_collector() -> None:
    """Start-up objects (Flask, Socket.IO, the openai SDK: hundreds of thousands) are
    frozen out of the collector's scans, and young objects are collected every 50 000
    allocations instead of 700: the collector took ~7 % of the relay's CPU, and a full
    collection stops every green thread at once (docs/PERFORMANCE.md)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 10)
