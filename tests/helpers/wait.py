"""The one way the tests wait for something that happens on its own time: evaluate a predicate
until it returns something truthy, or fail at a deadline with what was awaited and the last
value seen. Never a fixed sleep standing for "it has probably happened by now".

    rows = wait_until(lambda: store.rows() if len(store.rows()) == 3 else None,
                      timeout=10, what="three rows")

With ``condition`` (a threading.Condition the producer notifies), the predicate is evaluated
under its lock and the wait wakes on each notify instead of polling alone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["POLL_S", "wait_until"]

POLL_S = 0.02
"""How often a predicate is evaluated again (at most; a notified condition wakes it sooner)."""

T = TypeVar("T")


def _shown(value: object, limit: int = 500) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text)} characters)"


def wait_until(predicate: Callable[[], T], *, timeout: float, what: str, poll: float = POLL_S,
               condition: threading.Condition | None = None,
               show: Callable[[], object] | None = None) -> T:
    """Return predicate()'s first truthy value. AssertionError naming ``what`` and the last value
    seen when none came within ``timeout`` seconds; ``show()``, when given, says what was seen
    instead (for a predicate whose falsy value tells nothing, e.g. False). An exception from
    predicate() propagates: that is how a predicate says "this can no longer happen" (fail at
    once, not at the deadline).
    """
    deadline = time.monotonic() + timeout
    pause = time.sleep if condition is None else condition.wait
    with condition if condition is not None else contextlib.nullcontext():
        while True:
            last = predicate()
            if last:
                return last
            left = deadline - time.monotonic()
            if left <= 0:
                break
            pause(min(poll, left))
    seen: object = last
    if show is not None:
        try:
            seen = show()
        except Exception as exc:  # e.g. the process it asks is gone: keep the timeout's message
            seen = f"(show() failed: {exc!r})"
    raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last seen: {_shown(seen)})")
