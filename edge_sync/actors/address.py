"""Stable addresses for supervised actors.

A supervisor replaces an actor's ActorRef when it restarts it; an Address resolves the current
one at every ``tell``. A message sent while its target is down is not lost silently: its reply
future fails with Unavailable, and the sender reports that (HTTP 503); a device waiting on it
(its ``subscriber``, a long poll) gets the same Unavailable ("poll again") at once instead of
waiting for its timeout.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

import pykka

from edge_sync.errors import Unavailable


class Address:
    def __init__(self, name: str, resolve: Callable[[], pykka.ActorRef[Any] | None]) -> None:
        self.name = name
        self._resolve = resolve
        self._cached: pykka.ActorRef[Any] | None = None

    def tell(self, message: Any) -> None:
        """Any thread. Deliver, or fail the message's reply and subscriber with Unavailable."""
        ref = self._cached  # resolved again only once that incarnation has stopped
        if ref is None or not ref.is_alive():
            ref = self._cached = self._resolve()
        if ref is not None:
            try:
                ref.tell(message)
                return
            except pykka.ActorDeadError:
                pass
        error = Unavailable(f"{self.name} is restarting; try again")
        reply: Future[Any] | None = getattr(message, "reply", None)
        if reply is not None:
            with contextlib.suppress(InvalidStateError):  # done, or cancelled by its sender
                reply.set_exception(error)
        fail_subscriber(getattr(message, "subscriber", None), error)


def fail_subscriber(subscriber: Any, error: BaseException) -> None:
    """End the wait of a device's subscriber (devices/subscribers.py) with ``error``, unless it
    is gone already (timed out, disconnected, or claimed for a result on its way)."""
    if subscriber is not None and subscriber.claim():
        subscriber.fail(error)
