"""The reference cloud's decoder of what edges send on handleMsgs, and its account of what is
not a valid protobuf RequestMsg.

Anything that reaches the gRPC port can send bytes that are not a RequestMsg, before any
authentication: gRPC ends that stream (INTERNAL, "Exception deserializing request!"), and a
peer can open the next one at once on the same connection. Each is counted
(``edge_cloud_undecodable_requests_total``); the first of a minute is logged at WARNING, the
others are told in one line when their minute ends (a timer), or with the next first line, or at
the server's stop (which cancels the timer). gRPC's own record of the error is not forwarded to the log
(``logsetup.mark_told``).

The decoder runs on gRPC's threads: the throttle is shared under a lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from google.protobuf.message import DecodeError
from loguru import logger

from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.log_throttle import LogThrottle
from edge_sync.logsetup import mark_told
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2

__all__ = ["LOG_INTERVAL_S", "UndecodableRequests"]

_log = logger.bind(component="cloud-rpc")

LOG_INTERVAL_S = 60.0
"""At most one line per this long for requests that are not valid protobuf."""
_MAX_ERROR_CHARS = 200

Arm = Callable[[float, Callable[[], None]], Callable[[], None]]
"""Run the callable after that many seconds (a daemon timer; a test passes its own); returns
what cancels it."""


def _timer(delay_s: float, action: Callable[[], None]) -> Callable[[], None]:
    timer = threading.Timer(delay_s, action)
    timer.daemon = True
    timer.start()
    return timer.cancel


class UndecodableRequests:
    """``decode`` is handleMsgs' request deserializer; ``close`` tells what is left at stop."""

    def __init__(self, metrics: Metrics, *, clock: Clock = SYSTEM_CLOCK,
                 arm: Arm = _timer) -> None:
        self._count = metrics.counter(
            "edge_cloud_undecodable_requests_total", "messages from edges (or anything that "
            "reached the gRPC port) that are not a valid protobuf RequestMsg: each ended its "
            "stream")
        self._clock = clock
        self._arm = arm
        self._lock = threading.Lock()
        self._throttle = LogThrottle(LOG_INTERVAL_S)
        self._armed = False  # a timer is set for the end of the current minute
        self._cancel: Callable[[], None] | None = None  # cancels the timer set last
        self._closed = False

    def decode(self, data: bytes) -> edge_pb2.RequestMsg:
        """gRPC's thread: ``data`` as a RequestMsg; bytes that are not one are counted and
        logged (at most once a minute), and the DecodeError goes on to gRPC, which ends the
        stream."""
        try:
            msg: edge_pb2.RequestMsg = edge_pb2.RequestMsg.FromString(data)
        except DecodeError as exc:
            self._count.inc()
            # the decoder's own text (it names the message type, never the peer's bytes)
            self._event(f"{type(exc).__name__}: {exc}"[:_MAX_ERROR_CHARS], len(data))
            mark_told(exc)
            raise
        return msg

    def _event(self, error: str, size: int) -> None:
        with self._lock:
            log_now, told = self._throttle.event(self._clock.monotonic())
            due = self._throttle.due()
            arm = due is not None and not self._armed
            self._armed = self._armed or arm
        _tell(told)
        if log_now:
            _log.bind(error=error, bytes=size).warning(
                "a peer sent a message that is not valid protobuf ({}, {} bytes): its stream "
                "ends; further ones within a minute are only counted "
                "(edge_cloud_undecodable_requests_total) and told in one line", error, size)
        if arm and due is not None:
            self._set_timer(due)

    def _set_timer(self, due: float) -> None:
        cancel = self._arm(max(0.0, due - self._clock.monotonic()), self._minute_ended)
        with self._lock:
            closed = self._closed
            self._cancel = None if closed else cancel
        if closed:  # the server stopped meanwhile: close told what there was
            cancel()

    def _minute_ended(self) -> None:
        """The timer: the count of the minute that ended, told once."""
        with self._lock:
            if self._closed:
                return
            self._armed = False
            told = self._throttle.take(self._clock.monotonic())
            due = self._throttle.due()  # events after the minute that ended (none, normally)
            arm = due is not None
            self._armed = arm
        _tell(told)
        if arm and due is not None:
            self._set_timer(due)

    def close(self) -> None:
        """The server stops: what has not been told yet is told now, and the timer is
        cancelled (it would find nothing)."""
        with self._lock:
            self._closed = True
            told = self._throttle.flush()
            cancel, self._cancel = self._cancel, None
        if cancel is not None:
            cancel()
        _tell(told)


def _tell(count: int) -> None:
    if count:
        _log.bind(count=count).warning(
            "{} more messages that are not valid protobuf from peers in the last minute", count)
