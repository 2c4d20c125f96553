"""What waits for a device's news: a one-shot long poll (an HTTP request held open).

A long poll is an asyncio future in the HTTP server's loop; the device's entity actor (another
thread) hands it what it waits for. The actor first ``claim``s it (so a request is taken from the
device's queue only for a poll that is still waiting), then resolves it; the loop side gives up
on time-out with ``give_up``, which fails once the actor has claimed it (the result is then on
its way). No thread waits: thousands of idle polls are thousands of futures.

A wait cancelled after the claim (its HTTP client went away, its connection or subscription
ended) cannot stop what is on its way: a server-side RPC request is recorded DELIVERED by the
time it comes. That value goes to the owner's ``on_orphan`` (which may still hand it on), or
is logged as not handed over; it is never dropped unseen.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, Protocol

from loguru import logger

_log = logger.bind(component="device-session")


class Subscriber(Protocol):
    """Anything that takes a device's news (a long poll now; a subscription of a connected
    transport later). Every method may be called from any thread."""

    @property
    def live(self) -> bool:
        """Still wants news."""
        ...

    def claim(self) -> bool:
        """Reserve it for one result; False when it is gone (timed out, disconnected)."""
        ...

    def resolve(self, value: Any) -> None:
        """Hand over the result (after a successful claim)."""
        ...

    def fail(self, exc: BaseException) -> None:
        """The claimed result could not be produced."""
        ...

    def release(self) -> None:
        """The claim brought nothing after all (the request expired on its way): wait on."""
        ...


_WAITING, _CLAIMED, _DONE = 0, 1, 2
_NOTHING = object()  # what a poll ended without a value (end, or released once its time ran
# out) is resolved with


class LongPoll:
    """A one-shot Subscriber backed by a future of the loop that created it."""

    __slots__ = ("_future", "_lock", "_loop", "_on_orphan", "_state", "_timed_out")

    def __init__(self, loop: asyncio.AbstractEventLoop, *,
                 on_orphan: Callable[[Any], None] | None = None) -> None:
        """``on_orphan``: takes, on the loop, a value claimed for this poll that came after its
        wait was cancelled (None: such a value is logged as not handed over)."""
        self._loop = loop
        self._future: asyncio.Future[Any] = loop.create_future()
        self._lock = threading.Lock()
        self._state = _WAITING
        self._timed_out = False  # loop side: its wait ended while it was claimed
        self._on_orphan = on_orphan

    @property
    def live(self) -> bool:
        return self._state == _WAITING

    def claim(self) -> bool:
        with self._lock:
            if self._state != _WAITING:
                return False
            self._state = _CLAIMED
            return True

    def give_up(self) -> bool:
        """Loop side: stop waiting. False when already claimed (a result is coming)."""
        with self._lock:
            if self._state == _CLAIMED:
                return False
            self._state = _DONE
            return True

    def abandon(self, exc: BaseException) -> None:
        """Loop side: end the wait with ``exc`` (the server stops), unless a result is coming."""
        if self.give_up() and not self._future.done():
            self._future.set_exception(exc)

    def end(self) -> bool:
        """Loop side: end the wait now as if its time ran out (``wait`` gives (False, None)),
        unless a result is coming (claimed: it is handed over); whether it ended."""
        if not self.give_up() or self._future.done():
            return False
        self._future.set_result(_NOTHING)
        return True

    def release(self) -> None:
        """Actor side, after a claim: no result comes after all; the poll waits on (it may be
        claimed again at once), or ends as timed out if its time ran out meanwhile."""
        with self._lock:
            if self._state != _CLAIMED:
                return
            self._state = _WAITING
        self._call(self._after_release, None)

    def _after_release(self, _value: Any) -> None:
        if self._timed_out and self.give_up() and not self._future.done():
            self._future.set_result(_NOTHING)

    def resolve(self, value: Any) -> None:
        self._call(self._set_result, value)

    def fail(self, exc: BaseException) -> None:
        self._call(self._set_exception, exc)

    async def wait(self, timeout_s: float) -> tuple[bool, Any]:
        """Loop side: (True, value) when resolved in time, (False, None) on time-out. A poll
        claimed just before its time-out still gets its value (it is already taken from the
        device's queue). Cancelling (the client went away) gives it up; when it was claimed
        already, the value on its way goes to ``on_orphan`` (or the log) when it comes."""
        try:
            value = await asyncio.wait_for(asyncio.shield(self._future), timeout_s)
            return (False, None) if value is _NOTHING else (True, value)
        except TimeoutError:
            if not self._future.done() and self.give_up():
                return False, None
        except asyncio.CancelledError:
            self._abandon()
            raise
        self._timed_out = True  # claimed: a release ends it, else its value comes
        try:
            value = await asyncio.shield(self._future)
        except asyncio.CancelledError:
            self._abandon()
            raise
        return (False, None) if value is _NOTHING else (True, value)

    def _abandon(self) -> None:
        """Loop side, the wait cancelled: given up; if it was claimed (or resolved and not
        yet read), what comes goes to ``_orphaned``, and a release ends it."""
        if not self._future.done() and self.give_up():
            return  # nothing was claimed: nothing comes
        self._timed_out = True
        self._future.add_done_callback(self._orphaned)

    def _orphaned(self, future: asyncio.Future[Any]) -> None:
        """Loop side: the value of a claim whose wait was cancelled."""
        if future.cancelled() or future.exception() is not None:
            return  # the claim brought nothing: nothing was handed over
        value = future.result()
        if value is _NOTHING:
            return
        if self._on_orphan is not None:
            self._on_orphan(value)
            return
        request_id = value.get("id") if isinstance(value, dict) else None
        _log.bind(rpc_id=request_id).warning(
            "a {} taken for a wait came after its wait was cancelled (its client went away): "
            "not handed over", "server-side RPC request" if request_id is not None
            and "method" in value else "value")

    def _call(self, fn: Any, value: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            self._loop.call_soon_threadsafe(fn, value)

    def _set_result(self, value: Any) -> None:
        with self._lock:
            self._state = _DONE
        if not self._future.done():
            self._future.set_result(value)

    def _set_exception(self, exc: BaseException) -> None:
        with self._lock:
            self._state = _DONE
        if not self._future.done():
            self._future.set_exception(exc)
