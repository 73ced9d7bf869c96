"""`make run`: a broker, then the server; on exit, stop whatever this started.

If no broker answers on this machine, tools.ensure_broker starts mosquitto with
the shipped config. That mosquitto belongs to this run: when the server exits
(Ctrl-C, SIGTERM, or an error) it is stopped again, so `make run` leaves
nothing behind.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys

from chatroom.config import ConfigError
from tools.ensure_broker import ROOT, ensure, load_settings

log = logging.getLogger("make-run")


def stop_broker(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
        log.info("stopped the mosquitto this run started (pid %s)", pid)
    except ProcessLookupError:
        pass


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        status, broker_pid = ensure(load_settings())
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    if status != 0:
        return status
    server = subprocess.Popen([sys.executable, str(ROOT / "app.py")], cwd=str(ROOT))

    def forward(signum, frame):
        # Ctrl-C reaches the server from the terminal too; a plain `kill` of this
        # process must reach it as well. The server ignores a repeated signal.
        if server.poll() is None:
            server.send_signal(signum)

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    try:
        return server.wait()
    finally:
        if broker_pid is not None:
            stop_broker(broker_pid)


if __name__ == "__main__":
    sys.exit(main())
