"""What waits for a device's news for as long as a connection wants it: a standing
subscription (an MQTT client's subscription), as opposed to the one-shot long poll of
devices/subscribers.py.

Registered once with the device's session (DeviceService.poll_rpc / poll_attributes), it stays
there until it is closed: every claim succeeds while it is open, a claimed subscriber stays
``live`` (the session keeps it for the next request or update, and an entity with a live
subscriber is not passivated), and every result it is given goes to the owner's loop, in the
order it was given (``loop.call_soon_threadsafe`` from one thread keeps that order), so nothing
the session hands out between two results is missed, as it was between two waits of a loop of
long polls.

- ``resolve``: the value is handed to ``on_value`` on the loop, even after ``close`` (it was
  claimed while the subscriber was open: a server-side RPC request is DELIVERED by then, or in
  flight when the subscriber ``acks``, and is the owner's to publish, to report delivered or
  to give back). When the loop has closed meanwhile, ``on_lost`` is told the value instead
  (on the resolving thread), so a request in flight is given back rather than lost.
- ``release``: nothing comes for that claim; the subscriber stays as it was.
- ``fail``: the session could not serve it (its shard is restarting and dropped its waiters, or
  a delivery could not be recorded): the subscriber closes (``live`` False, so the session
  forgets it) and ``on_failure`` is told on the loop, once; the owner registers a new one. A
  result claimed before the failure still comes.
- ``close`` (the owner: unsubscribed, disconnected): no claim succeeds any more; the session
  drops it at its next prune. ``drained`` waits for the results of earlier claims.

Every method but ``drained`` may be called from any thread; the callbacks run on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["StandingSubscriber"]


class StandingSubscriber:
    """A Subscriber (devices/subscribers.py) that stays live until closed or failed."""

    __slots__ = ("_claims", "_closed", "_failed", "_idle", "_lock", "_loop", "_on_failure",
                 "_on_lost", "_on_value", "_settled", "acks", "holding")

    def __init__(self, loop: asyncio.AbstractEventLoop, on_value: Callable[[Any], None],
                 on_failure: Callable[[BaseException], None], *,
                 on_lost: Callable[[Any], None] | None = None) -> None:
        """``on_lost``: told, on the resolving thread, a value resolved once the loop has
        closed (it never reaches ``on_value``): what the owner must not lose with its loop
        (an RPC request in flight goes back to the device's queue)."""
        self._loop = loop
        self._on_value = on_value
        self._on_failure = on_failure
        self._on_lost = on_lost
        self._lock = threading.Lock()
        self._closed = False
        self._failed = False
        self._claims = 0  # successful claims (any thread, under the lock)
        self._settled = 0  # of them, those whose outcome reached the loop (the loop only)
        self._idle = asyncio.Event()  # the loop only: set whenever nothing claimed is pending
        self.acks = False
        """Set by the owner (on its loop; read by the session's thread at a claim): whether it
        reports the delivery of an RPC request itself (an MQTT subscription at QoS 1: the
        PUBACK). The session then hands it a request in flight (an RpcSent, still QUEUED)
        instead of one recorded DELIVERED first."""
        self.holding: tuple[Any, ...] = ()
        """Set by the owner before it registers: the RPC requests in flight its transport
        still holds unacknowledged (RpcSent): the session counts them in flight by it (not
        sent again) when its record says QUEUED and nothing in flight (its shard restarted)."""

    # -- the session's side (any thread) ---------------------------------------------------------

    @property
    def live(self) -> bool:
        return not self._closed

    def claim(self) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._claims += 1
            return True

    def resolve(self, value: Any) -> None:
        if not self._call(self._resolved, value) and self._on_lost is not None:
            self._on_lost(value)

    def release(self) -> None:
        self._call(self._released, None)

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self._closed = True
            first = not self._failed
            self._failed = True
        self._call(self._failed_with, exc if first else None)

    # -- the owner's side ------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Take no more claims (any thread). Results claimed before still come."""
        with self._lock:
            self._closed = True

    @property
    def pending(self) -> int:
        """Claims whose outcome has not reached the loop yet (the loop only)."""
        with self._lock:
            return max(0, self._claims - self._settled)

    async def drained(self) -> None:
        """The loop, after ``close``: return once every earlier claim's outcome was handled.
        Bound it with a timeout: a claim whose outcome never comes would keep it waiting."""
        while self.pending > 0:
            self._idle.clear()
            await self._idle.wait()

    # -- the loop --------------------------------------------------------------------------------

    def _call(self, fn: Callable[[Any], None], value: Any) -> bool:
        """False when the loop has closed: nobody waits any more, so the subscriber closes (the
        session claims it no more: a request given back through ``on_lost`` is not handed to
        it again)."""
        try:
            self._loop.call_soon_threadsafe(fn, value)
        except RuntimeError:
            with self._lock:
                self._closed = True
            return False
        return True

    def _settle(self) -> None:
        self._settled += 1
        if self.pending == 0:
            self._idle.set()

    def _resolved(self, value: Any) -> None:
        self._settle()
        self._on_value(value)

    def _released(self, _value: Any) -> None:
        self._settle()

    def _failed_with(self, exc: BaseException | None) -> None:
        self._settle()
        if exc is not None:
            self._on_failure(exc)
