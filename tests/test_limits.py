"""Rate limiter and dedup window, on a fake clock."""
from chatroom.core.limits import DedupWindow, RateLimiter
from support import Clock


def spend(limiter, sender) -> bool:
    """What the intake does for an accepted input: check, then take a token."""
    if limiter.wait_time(sender) > 0:
        return False
    limiter.take(sender)
    return True


def test_rate_limiter_allows_a_burst_then_refills():
    """20/10 allows 20 at once, then one more every half second."""
    clock = Clock()
    limiter = RateLimiter(20, 10, now=clock)
    assert all(spend(limiter, "a") for _ in range(20))
    assert not spend(limiter, "a")
    assert spend(limiter, "b"), "senders have their own buckets"
    clock.t += 0.5
    assert spend(limiter, "a") and not spend(limiter, "a")


def test_rate_limit_zero_is_off():
    """RATE_LIMIT=0 disables limiting."""
    limiter = RateLimiter(0, 1)
    assert all(spend(limiter, "a") for _ in range(1000))


def test_dedup_window_forgets_after_ttl():
    """A key is a duplicate for ttl seconds, then new again."""
    clock = Clock()
    window = DedupWindow(ttl=600, now=clock)
    assert window.get(("c", "1")) is None
    window.remember(("c", "1"), "server-id-1")
    assert window.get(("c", "1")) == "server-id-1" and window.get(("c", "2")) is None
    clock.t += 601
    assert window.get(("c", "1")) is None
