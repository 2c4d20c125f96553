"""DeadlineTimer: one pending wake-up, on its own thread (real threads, real time: what is under
test is exactly that the wake-up comes while other threads keep re-arming it)."""

from __future__ import annotations

import threading
import time

from edge_sync.actors.deadline_timer import DeadlineTimer


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
        start = time.monotonic()
        timer.arm(0.01)
        assert fired.wait(5.0)
        assert time.monotonic() - start < 5.0
    finally:
        timer.stop()
