"""What waits for a device's news: a one-shot long poll (an HTTP request held open).

A long poll is an asyncio future in the HTTP server's loop; the device's entity actor (another
thread) hands it what it waits for. The actor first ``claim``s it (so a request is taken from the
device's queue only for a poll that is still waiting), then resolves it; the loop side gives up
on time-out with ``give_up``, which fails once the actor has claimed it (the result is then on
its way). No thread waits: thousands of idle polls are thousands of futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Protocol


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
_NOTHING = object()  # what a released poll whose time ran out meanwhile is resolved with


class LongPoll:
    """A one-shot Subscriber backed by a future of the loop that created it."""

    __slots__ = ("_future", "_lock", "_loop", "_state", "_timed_out")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._future: asyncio.Future[Any] = loop.create_future()
        self._lock = threading.Lock()
        self._state = _WAITING
        self._timed_out = False  # loop side: its time ran out while it was claimed

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
        device's queue). Cancelling (the client went away) gives it up."""
        try:
            return True, await asyncio.wait_for(asyncio.shield(self._future), timeout_s)
        except TimeoutError:
            if self._future.done() or not self.give_up():
                self._timed_out = True
                value = await self._future
                return (False, None) if value is _NOTHING else (True, value)
            return False, None
        except asyncio.CancelledError:
            self.give_up()
            raise

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
