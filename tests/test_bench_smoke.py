"""`BENCH_QUICK=1` runs every benchmark scenario on tiny loads: the benchmarks keep working.
No timing is asserted (the machine is shared and noisy); only that they ran and lost nothing."""
import os
import subprocess
import sys

from support import ROOT


def quick(module: str) -> str:
    """The markdown a benchmark module prints in its quick mode."""
    result = subprocess.run([sys.executable, "-m", module], cwd=str(ROOT), env={**os.environ, "BENCH_QUICK": "1"},
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_quick_relay_benchmark_runs_every_scenario_and_loses_nothing():
    table = quick("bench.relay_bench")
    for row in ("throughput MQTT in → out", "latency MQTT in → Socket.IO client p99 at 100 msg/s",
                "Socket.IO receiver's own CPU per event", "2 instances with Redis"):
        assert row in table, table
    # The ideal relay, the ideal relay on eventlet and this server: none lost anything.
    assert "| messages lost in throughput runs | 0 | 0 | | 0 | |" in table, table
    assert "| messages lost in latency runs | 0 | 0 | | 0 | |" in table, table
    assert "ideal relay on eventlet" in table


def test_quick_fanout_benchmark_runs_against_both_relays():
    table = quick("bench.fanout_bench")
    for row in ("max fan-out to 5 web clients", "relay CPU per delivery", "p99", "relay RSS with 10 idle"):
        assert row in table, table
    assert "| deliveries lost in the max fan-out run | 0 | 0 |  |" in table


def test_inbound_cpu_tool_feeds_messages_through_the_real_path():
    """The in-process tool runs, and prints its figure only after checking that every
    message it fed was stored and relayed (it exits 1 otherwise)."""
    result = subprocess.run([sys.executable, "-m", "bench.inbound_cpu", "--messages", "300"], cwd=str(ROOT),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "µs of CPU per inbound message (300 messages)" in result.stdout, result.stdout


def test_shared_costs_count_the_redis_commands_of_a_device_message():
    """The capacity model's per-message terms are counted (not timed): every relayed message
    is one Socket.IO channel publication, and exactly-once devices cost more commands."""
    table = quick("bench.shared_costs")
    rows = {line.split("|")[1].strip(): line for line in table.splitlines() if line.startswith("| ")}
    assert "Redis commands, all" in rows and "`publish`" in rows, table
    plain, with_id = (float(cell) for cell in rows["Redis commands, all"].split("|")[2:4])
    assert 0 < plain < with_id, table
