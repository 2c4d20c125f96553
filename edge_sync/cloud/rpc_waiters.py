"""The REST calls waiting for a server-side RPC answer, and what the streams report about
requests (answers, expiry) to them.

A waiting `POST /api/rpc/twoway/{deviceId}` is an asyncio future on the admin API's loop, not a
thread: `wait` registers it, and a stream's thread (gRPC's handler) resolves it with
`loop.call_soon_threadsafe` when the answer's transaction has committed. Nothing else crosses
threads. A future resolved after its caller stopped waiting is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import uuid
from collections.abc import Iterable

from loguru import logger

from edge_sync.cloud.counters import CloudCounters
from edge_sync.cloud.rpc import AnswerKind, AnswerOutcome, RpcRecord

_log = logger.bind(component="cloud-rpc")


class RpcWaiters:
    def __init__(self, counters: CloudCounters | None = None) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[uuid.UUID, tuple[asyncio.AbstractEventLoop, asyncio.Future[RpcRecord]]] = {}
        self.counters = counters if counters is not None else CloudCounters()

    def register(self, rpc_id: uuid.UUID) -> asyncio.Future[RpcRecord]:
        """The loop's thread: a future resolved with the request once it is settled. Register
        before the request is stored, so an answer cannot come first."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[RpcRecord] = loop.create_future()
        with self._lock:
            self._waiting[rpc_id] = (loop, future)
        return future

    def discard(self, rpc_id: uuid.UUID) -> None:
        with self._lock:
            self._waiting.pop(rpc_id, None)

    def waiting(self) -> int:
        with self._lock:
            return len(self._waiting)

    def settled(self, record: RpcRecord) -> None:
        """Any thread: the request reached a final status (durably): wake its REST call."""
        with self._lock:
            entry = self._waiting.pop(record.id, None)
        if entry is None:
            return
        loop, future = entry
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            loop.call_soon_threadsafe(_resolve, future, record)

    def answered(self, outcomes: Iterable[AnswerOutcome], *, routing_key: str) -> None:
        """A stream applied an uplink carrying answers (committed): count, log, wake."""
        for outcome in outcomes:
            answer, record = outcome.answer, outcome.record
            log = _log.bind(routing_key=routing_key, device_id=str(answer.device_id),
                            rpc_id=str(answer.request_uuid))
            if outcome.kind is AnswerKind.UNKNOWN:
                self.counters.inc(self.counters.rpc_answers_unknown)
                log.warning("rpc answer for an unknown request (no request {} of this edge and "
                            "device): applied as nothing", answer.request_uuid)
                continue
            assert record is not None
            if outcome.kind is AnswerKind.CONFIRMED:  # the edge's report of its expiry
                log.bind(status=str(record.status)).debug(
                    "rpc {} expiry reported by the edge, as recorded: {}", record.id, record.status)
                continue
            if outcome.kind is AnswerKind.SETTLED:
                self.counters.inc(self.counters.rpc_answers)
                log.bind(status=str(record.status), method=record.method).info(
                    "rpc {} answered: {}", record.id, record.status)
            else:
                self.counters.inc(self.counters.rpc_answers_late)
                log.bind(status=str(record.status)).info(
                    "rpc {} answered late ({}): its status stays {}", record.id, outcome.kind,
                    record.status)
            if outcome.changed and record.status.final:
                self.settled(record)


def _resolve(future: asyncio.Future[RpcRecord], record: RpcRecord) -> None:
    if not future.done():
        future.set_result(record)
