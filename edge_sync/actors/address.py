"""Stable addresses for supervised actors.

A supervisor replaces an actor's ActorRef when it restarts it; an Address resolves the current
one at every ``tell``. A message sent while its target is down is not lost silently: its reply
future fails with Unavailable, and the sender reports that (HTTP 503); a device waiting on it
(its ``subscriber``, a long poll) gets the same Unavailable ("poll again") at once instead of
waiting for its timeout. The sender is answered at once rather than held until the target is
back: ``tell`` runs on the HTTP and MQTT servers' event loops, where a wait would stall every
connection, and a device retries a 503 (Retry-After: 1).

A message that reaches the target's inbox as the target stops or fails is refused by the target
itself (SupervisedActor closes its inbox as it exits), so it is never left unanswered either.

Each time the target is found down, one WARNING line; once it is back, one INFO line with the
messages refused meanwhile: at its restart (``started``, from the supervisor's restart hook), or
else at the first message that finds it running. Once the agent stops (``stopping``), a refusal
says so, and its run is one INFO line: a stopping agent is not an outage. Nothing is logged per
message.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

import pykka
from loguru import logger

from edge_sync.errors import Restarting


class Address:
    def __init__(self, name: str, resolve: Callable[[], pykka.ActorRef[Any] | None]) -> None:
        self.name = name
        self._resolve = resolve
        self._cached: pykka.ActorRef[Any] | None = None
        # the current run of refusals (slow path only): when it began, how many so far
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._refused = 0
        self._stopping = False

    def tell(self, message: Any) -> None:
        """Any thread. Deliver, or fail the message's reply and subscriber with Unavailable."""
        ref = self._cached  # resolved again only once that incarnation has stopped
        if ref is None or not ref.is_alive():
            ref = self._cached = self._resolve()
            if ref is not None and self._down_since is not None and ref.is_alive():
                self._back()
        if ref is not None:
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                pass
            else:
                if self._down_since is not None:  # (another thread found it back first)
                    self._back()
                return
        error = Restarting(f"{self.name} is stopping: the edge is shutting down" if self._stopping
                           else f"{self.name} is restarting; try again")
        answered = False
        reply: Future[Any] | None = getattr(message, "reply", None)
        if reply is not None:
            try:
                reply.set_exception(error)
                answered = True
            except InvalidStateError:  # done, or cancelled by its sender
                pass
        answered = fail_subscriber(getattr(message, "subscriber", None), error) or answered
        self._count_refusal(answered)

    def started(self) -> None:
        """The target was started again (the supervisor's restart hook, any thread): a run of
        refusals ends now with its INFO line, not at the next message, which may be long in
        coming."""
        self._back()

    def stopping(self) -> None:
        """The agent is stopping (any thread): what is refused from now on is refused because
        it stops, and is told so."""
        self._stopping = True

    def _count_refusal(self, answered: bool) -> None:
        """One more message not delivered (``answered``: a sender waiting on it was answered
        Unavailable; a notification nobody waits on is not counted); the first of a run is
        logged."""
        with self._lock:
            self._refused += answered
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        if self._stopping:
            logger.bind(actor=self.name).info(
                "{} has stopped with the edge: messages to it are answered Unavailable",
                self.name)
            return
        logger.bind(actor=self.name).warning(
            "{} is not running: messages to it are answered Unavailable (HTTP 503, try again) "
            "until it is back", self.name)
        # its restart may have come between this refusal's look-up and its count (``started``
        # then found no run to end): the run ends now rather than with the next message
        ref = self._resolve()
        if ref is not None and ref.is_alive():
            self._back()

    def _back(self) -> None:
        """The target runs again: the run of refusals ends with one line."""
        with self._lock:
            since, refused = self._down_since, self._refused
            if since is None:
                return
            self._down_since, self._refused = None, 0
        logger.bind(actor=self.name, messages=refused).info(
            "{} is back after {:.1f} s: {} requests to it were answered Unavailable meanwhile",
            self.name, time.monotonic() - since, refused)


def fail_subscriber(subscriber: Any, error: BaseException) -> bool:
    """End the wait of a device's subscriber (devices/subscribers.py) with ``error``, unless it
    is gone already (timed out, disconnected, or claimed for a result on its way). Whether it
    was ended here."""
    if subscriber is not None and subscriber.claim():
        subscriber.fail(error)
        return True
    return False
