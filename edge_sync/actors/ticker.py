"""A periodic timer that tells an actor a message every interval (purges, passivation, ...)."""

from __future__ import annotations

import threading
from collections.abc import Callable

from loguru import logger


class Ticker:
    """Calls ``tick`` every ``interval`` seconds on its own daemon thread until stopped."""

    def __init__(self, name: str, interval: float, tick: Callable[[], None]) -> None:
        self._interval = interval
        self._tick = tick
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ticker-{name}", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stopped.wait(self._interval):
            try:
                self._tick()
            except Exception as exc:  # the target is gone (restarting); keep ticking
                logger.bind(ticker=self._thread.name).debug("tick not delivered: {}", exc)
