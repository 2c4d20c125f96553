"""The EdgeRpcService servicer: one `StreamSession` per handleMsgs call."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc

from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.cloud.counters import CloudCounters
from edge_sync.cloud.registry import StreamRegistry
from edge_sync.cloud.rpc_service import RpcService
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.session import LinkSettings, StreamSession
from edge_sync.proto import edge_pb2, edge_pb2_grpc


class EdgeRpcServicer(edge_pb2_grpc.EdgeRpcServiceServicer):
    def __init__(self, service: CloudService, registry: StreamRegistry, settings: LinkSettings,
                 *, clock: Clock = SYSTEM_CLOCK, counters: CloudCounters | None = None,
                 rpc: RpcService | None = None) -> None:
        self._service = service
        self._rpc = rpc
        self._counters = counters if counters is not None else CloudCounters()
        self._registry = registry
        self._settings = settings
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: set[StreamSession] = set()

    def handleMsgs(
        self, request_iterator: Iterator[edge_pb2.RequestMsg], context: grpc.ServicerContext
    ) -> Iterator[edge_pb2.ResponseMsg]:
        """gRPC's handler thread: the whole life of one stream."""
        session = StreamSession(self._service, self._registry, self._settings, context,
                                clock=self._clock, on_finish=self._forget,
                                counters=self._counters, rpc=self._rpc)
        with self._lock:
            self._sessions.add(session)
        yield from session.run(request_iterator)

    def _forget(self, session: StreamSession) -> None:
        with self._lock:
            self._sessions.discard(session)

    def active(self) -> int:
        with self._lock:
            return len(self._sessions)

    def wait_finished(self, *, timeout: float) -> bool:
        """Wait until every session has finished (after the server cancelled their RPCs)."""
        with self._lock:
            sessions = list(self._sessions)
        deadline = self._clock.monotonic() + timeout
        return all(s.done.wait(max(0.0, deadline - self._clock.monotonic())) for s in sessions)
