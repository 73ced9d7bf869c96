"""The status chart's server-side history (chatroom/ops/rate_history.py): per-second growth of
the counters in a bounded ring, exact over the window whatever the sampler's timing."""
from chatroom.ops.rate_history import RateHistory, rate_totals


class Counters:
    def __init__(self):
        self.now = 1000.0
        self.values = {"received": 0, "room": 0, "sent": 0}

    def add(self, **growth):
        for name, amount in growth.items():
            self.values[name] += amount


def history(window=5):
    counters = Counters()
    return counters, RateHistory(lambda: dict(counters.values), window=window, clock=lambda: counters.now)


def test_each_second_holds_what_the_counters_grew_by():
    counters, rates = history()
    assert rates.snapshot()["series"] == {"received": [], "room": [], "sent": []}
    rates.sample()  # the baseline: nothing counted yet
    assert rates.snapshot()["end"] is None
    for received, room in ((3, 1), (0, 0), (5, 2)):
        counters.now += 1
        counters.add(received=received, room=room, sent=2 * room)
        rates.sample()
    snapshot = rates.snapshot()
    assert snapshot["end"] == 1003 and snapshot["interval_seconds"] == 1 and snapshot["window_seconds"] == 5
    assert snapshot["series"] == {"received": [3, 0, 5], "room": [1, 0, 2], "sent": [2, 0, 4]}


def test_the_ring_keeps_only_the_window_and_late_samples_lose_nothing():
    counters, rates = history(window=5)
    rates.sample()
    for _ in range(8):
        counters.now += 1
        counters.add(room=1)
        rates.sample()
    assert rates.snapshot()["series"]["room"] == [1, 1, 1, 1, 1]  # the last 5 seconds only
    counters.now += 3  # a busy server sampled late: the growth counts in the second it was read
    counters.add(room=6)
    rates.sample()
    assert rates.snapshot()["series"]["room"] == [1, 1, 0, 0, 6]  # gaps are zeros; 5 seconds end at the newest
    counters.add(room=2)  # a second sample in the same second joins that second
    rates.sample()
    assert rates.snapshot()["series"]["room"] == [1, 1, 0, 0, 8]


def test_a_counter_that_restarts_never_counts_backwards():
    counters, rates = history()
    counters.add(sent=10)
    rates.sample()
    counters.now += 1
    counters.values["sent"] = 4
    rates.sample()
    assert rates.snapshot()["series"]["sent"] == [0]


def test_totals_come_from_the_rooms_own_counter_and_the_bridge_never_from_shared_presence(tmp_path):
    """The room total is this instance's own counter (Rooms.posted_total): the ring samples it
    every second, so it must not read the shared presence (a full members read from Redis per
    instance per second, and a false spike after Redis was away)."""
    from chatroom.core.room import Rooms
    from chatroom.storage.sqlite import MessageStore

    class NoPresenceReads:
        """Every read of presence fails the test: the totals need none."""

        numbers_rooms = True

        def __getattr__(self, name):
            raise AssertionError(f"presence.{name} read for the rates")

    store = MessageStore(str(tmp_path / "h.db"))
    rooms = Rooms(store)
    for text in ("a", "b"):
        rooms.post("lobby", "cron", text, "http")
    rooms.presence = NoPresenceReads()  # from here on, any presence read fails
    totals = rate_totals(lambda: rooms.posted_total, lambda: {"messages_received": 4, "messages_sent": 9})
    assert totals() == {"received": 4, "room": 2, "sent": 9}
    assert rate_totals(lambda: 3, None)() == {"received": 0, "room": 3, "sent": 0}
    rooms.close()
    store.close()
