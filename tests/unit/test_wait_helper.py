"""tests/helpers/wait.py: the one wait every test uses returns the first truthy value, fails at
its deadline saying what it waited for and what it saw last, and wakes on a notified condition."""

from __future__ import annotations

import itertools
import re
import threading
import time

import pytest

from tests.helpers.wait import wait_until


def test_returns_the_first_truthy_value() -> None:
    values = iter([0, None, [], "", [3], [4]])
    assert wait_until(lambda: next(values), timeout=5, what="a list", poll=0) == [3]
    assert next(values) == [4]  # evaluated no more once it held


def test_fails_at_the_deadline_naming_what_and_the_last_value() -> None:
    calls = itertools.count(1)
    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"^timed out after 0.2s waiting for three rows "
                                             r"\(last seen: \[\]\)$"):
        wait_until(lambda: [] if next(calls) else None, timeout=0.2, what="three rows", poll=0.01)
    assert 0.2 <= time.monotonic() - started < 2
    assert next(calls) > 5  # it kept evaluating until the deadline


def test_show_replaces_a_falsy_value_that_tells_nothing() -> None:
    with pytest.raises(AssertionError, match=r"waiting for 3 parked \(last seen: '2 parked'\)$"):
        wait_until(lambda: False, timeout=0.05, what="3 parked", show=lambda: "2 parked")


def test_a_failing_show_keeps_the_timeout_message() -> None:
    def show() -> str:
        raise ConnectionError("gone")

    expected = "waiting for x (last seen: " + repr("(show() failed: ConnectionError('gone'))") + ")"
    with pytest.raises(AssertionError, match=re.escape(expected) + "$"):
        wait_until(lambda: False, timeout=0.05, what="x", show=show)


def test_an_exception_from_the_predicate_fails_at_once() -> None:
    def gone() -> bool:
        raise AssertionError("the process exited")

    started = time.monotonic()
    with pytest.raises(AssertionError, match=r"^the process exited$"):
        wait_until(gone, timeout=30, what="never")
    assert time.monotonic() - started < 1


def test_a_notified_condition_wakes_the_wait_under_its_lock() -> None:
    cond = threading.Condition()
    items: list[int] = []

    def produce() -> None:
        with cond:
            items.append(1)
            cond.notify_all()

    timer = threading.Timer(0.05, produce)
    started = time.monotonic()
    timer.start()
    try:
        # poll is far longer than the test: only the notify can wake it in time
        got = wait_until(lambda: list(items), timeout=10, what="an item", condition=cond, poll=5)
    finally:
        timer.join()
    assert got == [1]
    assert time.monotonic() - started < 2
