"""A device program (a host-built sketch or an old client) as a process whose output lines a test waits on."""
from __future__ import annotations

import subprocess
import threading
import time
from typing import Callable

from support import TIMEOUT, stop_process


class DeviceProcess:
    def __init__(self, argv: list[str], env: dict):
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for raw in self.proc.stdout:
            with self._cond:
                self.lines.append(raw.decode("utf-8", errors="replace").rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_line(self, match: Callable[[str], bool], count: int = 1, timeout: float = TIMEOUT * 2) -> list[str]:
        """Wait until `count` printed lines satisfy `match`."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                hits = [line for line in self.lines if match(line)]
                if len(hits) >= count:
                    return hits
                remaining = deadline - time.monotonic()
                if remaining <= 0 or (self.proc.poll() is not None and not self._reader.is_alive()):
                    raise AssertionError(f"no {count} matching lines; last printed: {self.lines[-15:]}")
                self._cond.wait(min(remaining, 0.5))

    def stop(self) -> None:
        stop_process(self.proc)
