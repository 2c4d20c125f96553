"""One pending wake-up for an actor: a thread that sleeps until the next deadline the actor
armed (and not at all while none is armed), then calls back once. The push-and-deadline
alternative to polling on a fixed tick (``Ticker`` is for work that really is periodic)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from loguru import logger

MIN_WAKE_S = 0.005
"""Fire at most this often, so a deadline that is due but not yet handled cannot spin."""

MAX_SLEEP_S = 86_400.0
"""The longest single sleep: a deadline further away (a persistent RPC request may expire in
any year an int64 of milliseconds can name) is reached by waking once a day and sleeping again.
``threading`` refuses a wait longer than ``threading.TIMEOUT_MAX``."""

FAULT_PAUSE_S = 1.0
"""After an unexpected error in the thread's own loop, it rests this long before the next turn,
so an error that repeats is logged once a second rather than spinning."""


class DeadlineTimer:
    """One pending wake-up on a thread of its own: ``arm(delay)`` replaces the previous one,
    ``arm(None)`` cancels it; when it is due the thread calls ``fire`` once. While nothing is
    armed the thread sleeps without waking.

    The deadline is absolute: an actor that re-arms on every message it handles (with the delay
    left to the same deadline) never postpones it, however fast messages come. The only floor
    is MIN_WAKE_S after the previous fire, never after the latest arm. Any delay is accepted,
    however far away. A ``fire`` that raises is logged with its traceback, and the thread goes on
    serving the next deadline: the actor's later deadlines never depend on one wake-up."""

    def __init__(self, name: str, fire: Callable[[], None]) -> None:
        self._fire = fire
        self._cond = threading.Condition()
        self._due: float | None = None  # time.monotonic()
        self._fired_at = -MIN_WAKE_S
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name=f"timer-{name}", daemon=True)
        self._log = logger.bind(component="timer", timer=self._thread.name)
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
            try:
                if not self._wait_until_due():
                    return
            except Exception as exc:  # a defect here must not end every later wake-up
                self._log.opt(exception=exc).error(
                    "{}: waiting for the next deadline failed: {!r}; retrying in {} s",
                    self._thread.name, exc, FAULT_PAUSE_S)
                time.sleep(FAULT_PAUSE_S)
                continue
            try:
                self._fire()
            except Exception as exc:
                self._log.opt(exception=exc).error(
                    "{}: wake-up not delivered: {!r}; serving the next deadline",
                    self._thread.name, exc)

    def _wait_until_due(self) -> bool:
        """Sleep until the armed deadline is due (True: fire now) or the timer is stopped
        (False). A due deadline is taken: the next fire needs a new ``arm``."""
        with self._cond:
            while not self._stopped:
                if self._due is None:
                    self._cond.wait()
                    continue
                remaining = self._due - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(min(remaining, MAX_SLEEP_S))
            if self._stopped:
                return False
            self._due = None
            self._fired_at = time.monotonic()
            return True
