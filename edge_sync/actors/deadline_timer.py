"""One pending wake-up for an actor: a thread that sleeps until the next deadline the actor
armed (and not at all while none is armed), then calls back once. The push-and-deadline
alternative to polling on a fixed tick (``Ticker`` is for work that really is periodic)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIN_WAKE_S = 0.005
"""Fire at most this often, so a deadline that is due but not yet handled cannot spin."""


class DeadlineTimer:
    """One pending wake-up on a thread of its own: ``arm(delay)`` replaces the previous one,
    ``arm(None)`` cancels it; when it is due the thread calls ``fire`` once. While nothing is
    armed the thread sleeps without waking.

    The deadline is absolute: an actor that re-arms on every message it handles (with the delay
    left to the same deadline) never postpones it, however fast messages come. The only floor
    is MIN_WAKE_S after the previous fire, never after the latest arm."""

    def __init__(self, name: str, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._cond = threading.Condition()
        self._due: float | None = None  # time.monotonic()
        self._fired_at = -MIN_WAKE_S
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"timer-{name}", daemon=True)
        self._thread.start()

    def arm(self, delay_s: float | None) -> None:
        """Any thread. A later deadline than the pending one needs no wake-up of the thread: it
        finds the new one when the old one comes."""
        with self._cond:
            if delay_s is None:
                self._due = None
                return
            due = max(time.monotonic() + delay_s, self._fired_at + MIN_WAKE_S)
            if self._due is None or due < self._due:
                self._cond.notify()
            self._due = due

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if self._due is None:
                        self._cond.wait()
                        continue
                    remaining = self._due - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._stopped:
                    return
                self._due = None
                self._fired_at = time.monotonic()
            self._fire()
