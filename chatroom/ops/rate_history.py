"""Messages per second over the last minutes, kept by the server for the status page's chart.

Once a second the counters' totals (received and sent over MQTT, posted to rooms) are read
and the differences since the previous reading are kept in a ring of `window` one-second
buckets, so the chart has the last minutes as soon as the page opens (issue 27). The ring
is bounded by its length; a late sample (a busy server) counts its whole difference in the
second it ran, so the sum over the window stays exact.
"""
from __future__ import annotations

import time
from collections import deque
from typing import Callable

from chatroom.ops.housekeeping import Periodic

SERIES = ("received", "room", "sent")  # MQTT in, chat messages posted here, MQTT out
WINDOW_SECONDS = 300

Totals = Callable[[], dict[str, int]]


class RateHistory(Periodic):
    def __init__(self, totals: Totals, window: int = WINDOW_SECONDS, clock: Callable[[], float] = time.time):
        super().__init__("rate-history", 1.0, self.sample)
        self.totals, self.window, self.clock = totals, window, clock
        self._buckets: deque[tuple[int, dict[str, int]]] = deque(maxlen=window)  # (second, differences)
        self._last: dict[str, int] | None = None

    def sample(self) -> None:
        """Read the totals now and keep their growth since the previous reading."""
        second, totals = int(self.clock()), self.totals()
        previous, self._last = self._last, totals
        if previous is None:  # the first reading is the baseline: nothing to count yet
            return
        growth = {name: max(0, totals.get(name, 0) - previous.get(name, 0)) for name in SERIES}
        if self._buckets and self._buckets[-1][0] >= second:  # two samples in one second: one bucket
            second, kept = self._buckets.pop()
            growth = {name: growth[name] + kept[name] for name in SERIES}
        self._buckets.append((second, growth))

    def snapshot(self) -> dict:
        """The last `window` seconds up to the newest sample, one number per second and series
        (0 where no message came, nothing before the first sample)."""
        buckets = list(self._buckets)
        if not buckets:
            return {"interval_seconds": 1, "window_seconds": self.window, "end": None,
                    "series": {name: [] for name in SERIES}}
        end = buckets[-1][0]
        start = max(buckets[0][0], end - self.window + 1)
        series = {name: [0] * (end - start + 1) for name in SERIES}
        for second, growth in buckets:
            if second >= start:
                for name in SERIES:
                    series[name][second - start] += growth[name]
        return {"interval_seconds": 1, "window_seconds": self.window, "end": end, "series": series}


def rate_totals(posted_total: Callable[[], int], bridge_counts: Callable[[], dict] | None) -> Totals:
    """The three totals: messages posted in this instance's rooms (its own counter: reading the
    shared presence every second for it would cost Redis a full members read per instance) and,
    with MQTT on, the bridge's counters."""

    def totals() -> dict[str, int]:
        counts = bridge_counts() if bridge_counts is not None else {}
        return {"received": int(counts.get("messages_received", 0)), "room": posted_total(),
                "sent": int(counts.get("messages_sent", 0))}
    return totals
