"""Server-side RPC operations of the reference cloud: accept a request for a device (stored with
its downlink in the edge's durable queue), look one up, and the changes the edge's stream makes
(sent, acknowledged by the edge, expired before it was sent, parked). Blocking (LMDB): the
admin API calls it on a worker thread, a stream on its own thread. Each status change is one
transaction and one log line; a final one wakes the REST call waiting for it.

SENT is the one status kept in memory only (the requests whose downlink is in flight on a
stream): writing it would cost every request a durable write on the stream's thread, between
its downlink and the next. A restarted cloud sends those requests again, so QUEUED is what it
should read.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

from loguru import logger

from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.cloud import downlinks, rpc
from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.rpc import RpcRecord, RpcStatus
from edge_sync.cloud.rpc_waiters import RpcWaiters
from edge_sync.cloud.service import CloudService
from edge_sync.errors import BadRequest, NotFound

_log = logger.bind(component="cloud-rpc")


def parse_rpc_id(ref: object) -> uuid.UUID:
    if not isinstance(ref, str):
        raise BadRequest("rpc id: expected a UUID")
    try:
        return uuid.UUID(ref)
    except ValueError as exc:
        raise BadRequest(f"rpc id {ref!r}: not a UUID") from exc


class RpcService:
    def __init__(self, service: CloudService, waiters: RpcWaiters | None = None, *,
                 clock: Clock | None = None) -> None:
        self.service = service
        self.store = service.store
        self.waiters = waiters if waiters is not None else RpcWaiters()
        self.clock = clock if clock is not None else (service.clock or SYSTEM_CLOCK)
        self._lock = threading.Lock()
        self._in_flight: set[uuid.UUID] = set()  # downlink sent, not acknowledged: SENT

    def _view(self, record: RpcRecord) -> RpcRecord:
        with self._lock:
            in_flight = record.id in self._in_flight
        return rpc.as_sent(record) if in_flight else record

    # -- the admin API -------------------------------------------------------------------------

    def submit(self, device_ref: object, body: Any, *, oneway: bool, edge_ref: object = None,
               rpc_id: uuid.UUID | None = None) -> RpcRecord:
        """Check the body, store the request and queue its downlink for the device's edge (one
        transaction), wake the edge's stream. A request whose expirationTime has already passed
        is stored EXPIRED and queues nothing (ThingsBoard records it so and never sends it)."""
        record, device = self.prepare(device_ref, body, oneway=oneway, edge_ref=edge_ref,
                                      rpc_id=rpc_id)
        stored = self.store.add_rpc(record, downlinks.device_rpc_request)
        self.submitted(stored, device)
        return stored

    def prepare(self, device_ref: object, body: Any, *, oneway: bool, edge_ref: object = None,
                rpc_id: uuid.UUID | None = None) -> tuple[RpcRecord, CloudDevice]:
        """The first half of submit (blocking: reads): the body checked, the device found, the
        record to store. The admin API then submits the write (store.submit_rpc, committed with
        others) and calls ``submitted``."""
        now = self.clock.now_ms()
        call = rpc.parse_call(body, oneway=oneway, now_ms=now)
        device = self.service.device(device_ref, edge_ref)
        status = RpcStatus.EXPIRED if call.expiration_time <= now else RpcStatus.QUEUED
        record = RpcRecord(
            id=rpc_id or uuid.uuid4(), edge_id=device.edge_id, device_id=device.id, request_id=0,
            method=call.method, params=call.params, oneway=call.oneway,
            persistent=call.persistent, expiration_time=call.expiration_time, created_time=now,
            status=status, updated_time=now, retries=call.retries,
            additional_info=call.additional_info)
        return record, device

    def submitted(self, stored: RpcRecord, device: CloudDevice) -> None:
        """After the request was committed: count and log it, wake the edge's stream."""
        self.waiters.counters.inc(self.waiters.counters.rpc_requests)
        _log.bind(rpc_id=str(stored.id), device_id=str(device.id), device=device.name,
                  edge_id=str(device.edge_id), method=stored.method, oneway=stored.oneway,
                  persistent=stored.persistent, request_id=stored.request_id,
                  expiration_time=stored.expiration_time, downlink=stored.downlink,
                  status=str(stored.status)).info(
            "rpc {} to device {}: {}", stored.id, device.name, stored.status)
        if stored.status.final:
            self.waiters.counters.inc(self.waiters.counters.rpc_expired)
        else:
            self.service.wake(device.edge_id)

    def get(self, rpc_ref: object) -> RpcRecord:
        """A request by id; one whose expirationTime passed without a final status is settled
        now (EXPIRED, or TIMEOUT: see rpc.expired). NotFound / BadRequest."""
        rpc_id = parse_rpc_id(rpc_ref)
        record = self.store.rpc_record(rpc_id)
        if record is None:
            raise NotFound(f"no rpc request {rpc_id}")
        if rpc.expired(self._view(record), self.clock.now_ms()) is None:
            return self._view(record)
        return self._view(self.settle_if_due(rpc_id) or record)

    def delete(self, rpc_ref: object) -> RpcRecord:
        """DELETED, unless final already (then unchanged). A request still queued leaves the
        queue in the same transaction; one whose downlink is on its way to the edge (SENT) or
        that the edge holds (DELIVERED) is not called back (the edge may still deliver it; its
        answer then changes nothing). NotFound / BadRequest."""
        rpc_id = parse_rpc_id(rpc_ref)
        record = self.store.rpc_record(rpc_id)
        if record is None:
            raise NotFound(f"no rpc request {rpc_id}")
        with self._lock:
            in_flight = rpc_id in self._in_flight
        remove = ([(record.edge_id, record.downlink)]
                  if record.status is RpcStatus.QUEUED and record.downlink and not in_flight else [])
        now = self.clock.now_ms()
        [(stored, changed)] = self.store.update_rpcs([rpc_id], lambda r: rpc.on_deleted(r, now),
                                                     remove_downlinks=remove)
        if changed and stored is not None:
            self._changed(stored, "deleted by the operator"
                          + (" (out of the queue)" if remove else ""))
        return self._view(stored or record)

    def settle_if_due(self, rpc_id: uuid.UUID) -> RpcRecord | None:
        """The REST wait is over, or someone looked: past its expirationTime, the request takes
        its expiry status durably (unless an answer settled it first). The record as it is."""
        now = self.clock.now_ms()

        def change(record: RpcRecord) -> RpcRecord | None:
            status = rpc.expired(self._view(record), now)
            return None if status is None else record.with_status(status, now)

        record, changed = self.store.update_rpc(rpc_id, change)
        if changed and record is not None:
            self._changed(record, "no answer by its expirationTime")
        return record

    # -- the edge's stream ---------------------------------------------------------------------

    def sent(self, rpc_id: uuid.UUID, *, edge_id: uuid.UUID | None = None) -> None:
        """Its downlink went out (first send): SENT, in memory."""
        with self._lock:
            self._in_flight.add(rpc_id)
        _log.bind(rpc_id=str(rpc_id), edge_id=str(edge_id or ""), status="SENT").info(
            "rpc {} SENT: downlink sent to the edge", rpc_id)

    def unsent(self, rpc_id: uuid.UUID) -> None:
        """Its downlink is no longer in flight (stream ended, or it was settled): as stored."""
        with self._lock:
            self._in_flight.discard(rpc_id)

    def acknowledged(self, edge_id: uuid.UUID, requests: list[tuple[int, uuid.UUID]]) -> None:
        """The edge acknowledged the downlink carrying these requests ((downlink number, rpc
        id), several when they travelled together): out of the queue and DELIVERED, in one
        transaction."""
        now = self.clock.now_ms()
        results = self.store.update_rpcs(
            [rpc_id for _, rpc_id in requests], lambda r: rpc.on_acknowledged(r, now),
            remove_downlinks=[(edge_id, number) for number, _ in requests])
        for (_, rpc_id), (record, changed) in zip(requests, results, strict=True):
            self.unsent(rpc_id)
            if changed and record is not None:
                self._changed(record, "acknowledged by the edge")

    def expired_unsent(self, edge_id: uuid.UUID, number: int, rpc_id: uuid.UUID) -> None:
        """Its expirationTime passed while it was queued: never sent. Out of the queue and
        EXPIRED, in one transaction."""
        now = self.clock.now_ms()

        def change(record: RpcRecord) -> RpcRecord | None:
            return None if record.status.final else record.with_status(RpcStatus.EXPIRED, now)

        record, changed = self.store.update_rpc(rpc_id, change, remove_downlink=(edge_id, number))
        if changed and record is not None:
            self.waiters.counters.inc(self.waiters.counters.rpc_expired)
            self._changed(record, "expired in the queue: not sent")

    def parked(self, rpc_id: uuid.UUID, error: str) -> None:
        now = self.clock.now_ms()
        record, changed = self.store.update_rpc(rpc_id, lambda r: rpc.on_parked(r, error, now))
        self.unsent(rpc_id)
        if changed and record is not None:
            self._changed(record, "its downlink was parked")

    def _changed(self, record: RpcRecord, why: str) -> None:
        _log.bind(rpc_id=str(record.id), device_id=str(record.device_id),
                  edge_id=str(record.edge_id), status=str(record.status)).info(
            "rpc {} {}: {}", record.id, record.status, why)
        if record.status.final:
            self.waiters.settled(record)
