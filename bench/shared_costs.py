"""What one device message costs the shared state, counted exactly (docs/SCALING.md).

    .venv/bin/python -m bench.shared_costs [--messages 2000] [--database-url postgresql://…]

One instance with Redis (REDIS_URL, a `$share` subscription, as `make cluster` runs it)
relays N device messages, first without a `message_id`, then with one (exactly-once
devices). Redis's own `INFO commandstats` and `INFO cpu`, read before and after, say how
many commands of each kind and how much Redis CPU each message took; with
`--database-url`, PostgreSQL's `pg_stat_database` says how many transactions and rows.
Counts do not depend on how busy the machine is; the CPU figures do (compare runs).
These are the per-message terms of the capacity model (issue 24).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))
from bench.relay_bench import IdPublisher, OutCollector, Publisher, cpu_seconds, wait_for  # noqa: E402
from support import Mosquitto, RedisServer, ServerProcess  # noqa: E402


def redis_counts(client: redis.Redis) -> tuple[dict[str, int], float]:
    stats = client.info("commandstats")
    cpu = client.info("cpu")
    calls = {name.removeprefix("cmdstat_"): int(value["calls"]) for name, value in stats.items()}
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


def postgres_counts(url: str) -> tuple[int, int, int] | None:
    if not url:
        return None
    import psycopg

    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT xact_commit, tup_inserted, tup_fetched FROM pg_stat_database"
                         " WHERE datname = current_database()").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])


def settled(read, compared, quiet: float = 1.5, limit: float = 30.0):
    """`read()` once two readings `quiet` seconds apart compare equal (at most `limit` s)."""
    import time

    reading = read()
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(quiet)
        again = read()
        if compared(again) == compared(reading):
            return again
        reading = again
    return reading


def measure(kind: str, server: ServerProcess, broker: Mosquitto, client: redis.Redis, prefix: str,
            count: int, first: int, database_url: str) -> dict:
    collector = OutCollector(broker.port, prefix)
    publisher = (IdPublisher if kind == "with message_id" else Publisher)(broker.port, prefix)
    try:
        collector.reset(1)
        wait_for(lambda: (publisher.send(first - 1), collector.done.wait(0.5))[1], timeout=30, what="relaying")
        calls_before, redis_cpu_before = redis_counts(client)
        pg_before = postgres_counts(database_url)
        assert server.proc is not None
        cpu_before = cpu_seconds(server.proc.pid)
        collector.reset(count)
        for n in range(first, first + count):
            publisher.send(n)
        assert collector.done.wait(180), f"{count - len(collector.arrivals)} messages did not arrive"
        # Counted once the stream has settled: the Socket.IO listener publishes after MQTT out,
        # and PostgreSQL's statistics reach pg_stat_database about a second late.
        # Our own INFO calls change the counts at every reading: compared without them.
        calls_after, redis_cpu_after = settled(lambda: redis_counts(client),
                                               lambda reading: {k: v for k, v in reading[0].items() if k != "info"})
        pg_after = settled(lambda: postgres_counts(database_url), lambda reading: reading)
        cpu = cpu_seconds(server.proc.pid) - cpu_before
    finally:
        publisher.close()
        collector.close()
    # Per message; the odd INFO/PING of our own readings and health checks rounds to nothing.
    commands = {name: (calls_after.get(name, 0) - calls_before.get(name, 0)) / count for name in calls_after}
    commands = {name: per_message for name, per_message in commands.items() if per_message >= 0.005}
    result = {"kind": kind, "instance_cpu_us": cpu * 1e6 / count,
              "redis_cpu_us": (redis_cpu_after - redis_cpu_before) * 1e6 / count, "commands": commands}
    if pg_before is not None and pg_after is not None:
        result["pg"] = tuple((after - before) / count for before, after in zip(pg_before, pg_after, strict=True))
    return result


def report(results: list[dict], count: int) -> str:
    lines = [f"Per device message, one instance with Redis, {count} messages each "
             "(Redis commands counted by the server itself):", "",
             "| | " + " | ".join(r["kind"] for r in results) + " |", "|---|" + "---|" * len(results)]
    for label, key, fmt in (("instance CPU (µs)", "instance_cpu_us", "{:.0f}"),
                            ("Redis CPU (µs)", "redis_cpu_us", "{:.0f}")):
        lines.append(f"| {label} | " + " | ".join(fmt.format(r[key]) for r in results) + " |")
    lines.append("| Redis commands, all | " + " | ".join(f"{sum(r['commands'].values()):.2f}" for r in results) + " |")
    names = sorted({name for r in results for name in r["commands"]})
    for name in names:
        lines.append(f"| `{name}` | " + " | ".join(f"{r['commands'].get(name, 0):.2f}" for r in results) + " |")
    if all("pg" in r for r in results):
        for index, label in enumerate(("PostgreSQL transactions", "PostgreSQL rows inserted", "PostgreSQL rows read")):
            lines.append(f"| {label} | " + " | ".join(f"{r['pg'][index]:.2f}" for r in results) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50 if os.environ.get("BENCH_QUICK") else 2000)
    parser.add_argument("--database-url", default=os.environ.get("BENCH_DATABASE_URL", ""))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="shared-costs-") as work:
        workdir = Path(work)
        broker = Mosquitto(workdir / "broker").start()
        redis_server = RedisServer(workdir / "redis").start()
        prefix = f"costs{uuid.uuid4().hex[:6]}"
        server = ServerProcess({"MQTT_BROKER": "127.0.0.1", "MQTT_PORT": str(broker.port), "MQTT_TOPIC_PREFIX": prefix,
                                "MQTT_CLIENT_ID": f"costs-{prefix}", "REDIS_URL": redis_server.url,
                                "MQTT_SHARED_GROUP": prefix, "INSTANCE_ID": "i0", "RATE_LIMIT": "0",
                                "DATABASE_PATH": str(workdir / "history.db"), "DATABASE_URL": args.database_url,
                                "LOG_LEVEL": "WARNING"}, log_path=workdir / "server.log")
        client = redis.Redis.from_url(redis_server.url)
        try:
            server.start()
            results = [measure(kind, server, broker, client, prefix, args.messages, first, args.database_url)
                       for kind, first in (("without message_id", 1_000_000), ("with message_id", 2_000_000))]
        finally:
            client.close()
            server.stop()
            redis_server.stop()
            broker.stop()
    sys.stdout.write(report(results, args.messages) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
