"""LogThrottle: at most one line per interval, the rest counted and told once."""

from __future__ import annotations

from edge_sync.common.log_throttle import LogThrottle


def test_the_first_event_of_an_interval_is_logged_the_rest_told_once_after_it() -> None:
    throttle = LogThrottle(60.0)
    assert throttle.due() is None
    assert throttle.event(100.0) == (True, 0)
    assert throttle.due() is None  # nothing unlogged yet
    assert [throttle.event(t) for t in (101.0, 130.0, 159.9)] == [(False, 0)] * 3
    assert throttle.due() == 160.0
    assert throttle.take(159.9) == 0  # the interval goes on
    assert throttle.take(160.0) == 3
    assert (throttle.take(170.0), throttle.due()) == (0, None)  # told once
    assert throttle.event(170.0) == (True, 0)  # a new interval: logged


def test_the_next_event_after_the_interval_tells_the_count_when_nobody_took_it() -> None:
    throttle = LogThrottle(60.0)
    throttle.event(0.0)
    throttle.event(1.0)
    throttle.event(2.0)
    assert throttle.event(75.0) == (True, 2)
    assert throttle.due() is None
    assert throttle.event(76.0) == (False, 0)
    assert throttle.flush() == 1  # at the owner's stop, whether or not the interval ended
    assert throttle.flush() == 0
