"""DeadlineTimer: one pending wake-up, on its own thread (real threads, real time: what is under
test is exactly that the wake-up comes while other threads keep re-arming it)."""

from __future__ import annotations

import threading
import time

from loguru import logger

from edge_sync.actors.deadline_timer import DeadlineTimer
from tests.helpers.wait import wait_until


def test_re_arming_the_same_deadline_never_postpones_it() -> None:
    """An actor re-arms after every message; messages every millisecond must not starve a due
    deadline (they once did: each arm floored the wait at 5 ms from now)."""
    fired = threading.Event()
    timer = DeadlineTimer("test", fired.set)
    try:
        due = time.monotonic() + 0.05
        deadline = time.monotonic() + 5.0
        arms = 0
        while not fired.is_set() and time.monotonic() < deadline:
            timer.arm(due - time.monotonic())  # as the actor does: the delay left to one deadline
            arms += 1
            fired.wait(0.001)
        assert fired.is_set(), f"not fired after {arms} re-arms over 5 s"
    finally:
        timer.stop()


def test_cancel_and_fire_once() -> None:
    calls: list[float] = []
    fired = threading.Event()

    def fire() -> None:
        calls.append(time.monotonic())
        fired.set()

    timer = DeadlineTimer("test", fire)
    try:
        timer.arm(0.01)
        timer.arm(None)  # cancelled before it was due
        timer.arm(0.02)
        assert fired.wait(5.0)
        timer.arm(None)
        fired.clear()
        assert not fired.wait(0.1)  # nothing armed: no second fire
        assert len(calls) == 1
    finally:
        timer.stop()


def test_an_earlier_deadline_replaces_a_later_one() -> None:
    fired = threading.Event()
    timer = DeadlineTimer("test", fired.set)
    try:
        timer.arm(60.0)
        timer.arm(0.01)
        assert fired.wait(5.0)  # well before the 60 s deadline it replaced
    finally:
        timer.stop()


def test_a_deadline_beyond_what_threading_can_wait_does_not_stop_the_timer() -> None:
    """A persistent RPC may expire in the year 2255 (expirationTime 9e18 ms): a wait that long
    once overflowed threading's timeout and killed the thread, so no later deadline fired."""
    fired = threading.Event()
    timer = DeadlineTimer("test", fired.set)
    try:
        timer.arm(9e15)  # seconds: far beyond threading.TIMEOUT_MAX
        assert not fired.wait(0.2)  # the thread is sleeping on it, not dead
        timer.arm(0.01)
        assert fired.wait(5.0)
        fired.clear()
        timer.arm(float("inf"))
        timer.arm(0.01)
        assert fired.wait(5.0)
    finally:
        timer.stop()


def test_a_failing_wake_up_is_logged_and_the_next_deadline_still_fires() -> None:
    errors: list[tuple[str, str]] = []
    sink = logger.add(lambda m: errors.append((m.record["message"], m.record["extra"]["timer"])),
                      level="ERROR", filter=lambda r: r["extra"].get("component") == "timer")
    calls: list[int] = []
    second = threading.Event()

    def fire() -> None:
        calls.append(len(calls))
        if len(calls) == 1:
            raise RuntimeError("the actor is gone")
        second.set()

    timer = DeadlineTimer("test", fire)
    try:
        timer.arm(0.01)
        wait_until(lambda: len(calls) == 1 and len(errors) == 1, timeout=5.0,
                   what="the first wake-up raised and was logged")
        timer.arm(0.01)
        assert second.wait(5.0)
    finally:
        timer.stop()
        logger.remove(sink)
    assert calls == [0, 1]
    assert errors == [("timer-test: wake-up not delivered: RuntimeError('the actor is gone'); "
                       "serving the next deadline", "timer-test")]
