"""One pending wake-up for an actor: a thread that sleeps until the next deadline the actor
armed (and not at all while none is armed), then calls back once. The push-and-deadline
alternative to polling on a fixed tick (``Ticker`` is for work that really is periodic)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

MIN_WAKE_S = 0.005
"""Never spin on a deadline that is due but not yet handled."""


class DeadlineTimer:
    """One pending wake-up on a thread of its own: ``arm(delay)`` replaces the previous one,
    ``arm(None)`` cancels it; when it is due the thread calls ``fire`` once. While nothing is
    armed the thread sleeps without waking."""

    def __init__(self, name: str, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._cond = threading.Condition()
        self._due: float | None = None  # time.monotonic()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"timer-{name}", daemon=True)
        self._thread.start()

    def arm(self, delay_s: float | None) -> None:
        with self._cond:
            self._due = None if delay_s is None else time.monotonic() + max(MIN_WAKE_S, delay_s)
            self._cond.notify()

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
            self._fire()
