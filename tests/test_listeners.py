"""The listener bus: each listener on its own thread, in order; a `many` listener takes the
backlog that queued up while it was busy in one call (several instances publish it to Redis
at once), and a drain still waits for everything before it."""
import threading

from chatroom.core.listeners import ListenerBus
from chatroom.core.model import SystemEvent
from support import wait_for


def event(n: int) -> SystemEvent:
    return SystemEvent("join", f"{n} joined", "lobby", str(n))


def test_a_busy_many_listener_gets_the_backlog_in_one_call_in_order():
    bus = ListenerBus()
    calls: list[list[str]] = []
    busy = threading.Event()
    release = threading.Event()

    def many(events):
        calls.append([e.username for e in events])
        if len(calls) == 1:
            busy.set()
            release.wait(30)

    bus.subscribe("publisher", lambda e: None, many=many)
    bus.deliver(event(0))
    assert busy.wait(30)
    for n in range(1, 11):
        bus.deliver(event(n))
    bus.deliver_batch([event(11), event(12)])
    release.set()
    assert bus.drain(30)
    assert calls == [["0"], [str(n) for n in range(1, 13)]]
    bus.stop(5)


def test_a_drain_marker_in_the_backlog_waits_for_the_events_before_it_only():
    bus = ListenerBus()
    seen: list[str] = []
    busy, release = threading.Event(), threading.Event()

    def many(events):
        busy.set()
        release.wait(30)
        seen.extend(e.username for e in events)

    bus.subscribe("publisher", lambda e: None, many=many)
    bus.deliver(event(0))
    assert busy.wait(30)  # event 0 is being handled; the queue is empty
    drained = []
    waiter = threading.Thread(target=lambda: drained.append(bus.drain(30)))
    waiter.start()
    wait_for(lambda: bus.workers[0].queue.qsize() == 1, what="the drain marker queued")
    bus.deliver(event(1))  # behind the marker: not needed for the drain
    release.set()
    waiter.join(30)
    assert drained == [True] and seen[0] == "0"
    assert bus.drain(30) and seen == ["0", "1"]
    bus.stop(5)


def test_without_many_each_event_is_its_own_call_and_a_failure_is_counted():
    bus = ListenerBus()
    seen: list[str] = []

    def one(e):
        if e.username == "2":
            raise RuntimeError("listener bug")
        seen.append(e.username)

    bus.subscribe("plain", one)
    bus.deliver_batch([event(1), event(2), event(3)])
    assert bus.drain(30)
    assert seen == ["1", "3"] and bus.failures == 1
    bus.stop(5)


def test_a_failing_many_call_is_counted_and_the_listener_goes_on():
    bus = ListenerBus()
    calls: list[int] = []

    def many(events):
        calls.append(len(events))
        if len(calls) == 1:
            raise RuntimeError("Redis away")

    bus.subscribe("publisher", lambda e: None, many=many)
    bus.deliver(event(1))
    assert bus.drain(30)
    bus.deliver(event(2))
    assert bus.drain(30)
    assert calls == [1, 1] and bus.failures == 1
    bus.stop(5)
