"""One edge's gRPC stream on the reference cloud: connect, sync, uplinks, downlinks
(docs/link-protocol.md, cloud side).

Threads: gRPC's handler thread runs `StreamSession.run` (a generator of ResponseMsgs) and owns
all of the stream's state; a reader thread only moves each RequestMsg from the request iterator
into the session's inbox. Other threads (a replacing stream, the admin API, server stop) only
put wake/end items into the inbox and cancel the RPC. So every decision is taken on one thread,
in the order things arrived.
"""

from __future__ import annotations

import enum
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc
from loguru import logger

from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.cloud import downlink_batch, downlinks, full_sync, requests, uplink_kinds
from edge_sync.cloud.counters import CloudCounters
from edge_sync.cloud.records import EdgeRecord, QueuedDownlink
from edge_sync.cloud.registry import StreamRegistry
from edge_sync.cloud.rpc_service import RpcService
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CAUSE_REFUSED, CAUSE_TOO_LARGE, normalized_store_id
from edge_sync.cloud.uplink import GoBackN, epoch_of, events_to_apply
from edge_sync.common import ids
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.common.wire import uuid_halves
from edge_sync.errors import PayloadRejected, StorageError
from edge_sync.proto import edge_pb2

if TYPE_CHECKING:
    from edge_sync.config import CloudConfig

_ids = itertools.count(1)
MAX_PARKED_ERROR_CHARS = 4000
MAX_LOGGED_ERROR_CHARS = 500


@dataclass(frozen=True, slots=True)
class LinkSettings:
    max_inbound_message_size: int = DEFAULT_MAX_MESSAGE_BYTES
    resend_timeout_s: float = 10.0
    poll_interval_s: float = 1.0
    """How often an idle stream looks at its durable queue (catches writes by another process)."""
    connect_timeout_s: float = 30.0
    """A stream that sends no connect request within this time is closed."""
    max_attempts: int = 3
    """Refusals (success=false) of one downlink before it is parked and the queue moves on. A
    downlink that gets no answer at all is resent for ever (never parked)."""

    @classmethod
    def from_config(cls, cfg: CloudConfig) -> LinkSettings:
        """The settings ``conf/cloud.yml`` gives (the rest: the defaults above)."""
        return cls(max_inbound_message_size=cfg.rpc.max_inbound_message_size,
                   resend_timeout_s=cfg.downlink.resend_timeout_ms / 1000,
                   max_attempts=cfg.downlink.max_attempts)


class _Kind(enum.Enum):
    REQUEST = "request"
    EOF = "eof"  # the edge half-closed its side, or the request iterator broke
    WAKE = "wake"  # new downlinks were queued
    SYNC = "sync"  # the operator asked for a full sync (admin API)
    END = "end"  # replaced, RPC terminated, server stopping


class StreamSession:
    def __init__(
        self,
        service: CloudService,
        registry: StreamRegistry,
        settings: LinkSettings,
        context: grpc.ServicerContext,
        *,
        clock: Clock = SYSTEM_CLOCK,
        on_finish: Callable[[StreamSession], None] | None = None,
        counters: CloudCounters | None = None,
        rpc: RpcService | None = None,
    ) -> None:
        self.number = next(_ids)
        self.edge_id: uuid.UUID | None = None
        self.edge: EdgeRecord | None = None
        self.incarnation = 0
        """The number of the edge's store on this stream (its edgeStoreId; 0: none sent)."""
        self.done = threading.Event()
        self._service = service
        self._store = service.store
        self._registry = registry
        self._settings = settings
        self._context = context
        self._clock = clock
        self._on_finish = on_finish
        self._inbox: queue.SimpleQueue[tuple[_Kind, Any]] = queue.SimpleQueue()
        self._finish_lock = threading.Lock()
        self._finished = False
        self._end_reason: str | None = None
        self._peer = context.peer()
        self._log = logger.bind(component="cloud-link", stream=self.number, peer=self._peer)
        self._gate = GoBackN()
        self._edge_max_inbound: int | None = None
        self._sync: full_sync.SyncStream | None = None
        """The full sync under way: its packs read from the store as they are sent."""
        self._supersedes: int | None = None
        """The edge's last downlink number when the full sync under way started: the graph
        downlinks queued up to it are dropped once the edge has its SyncCompletedMsg."""
        self._sync_parked = 0  # downlinks of the sync under way parked (refused, too large)
        self._started = False  # downlinks flow once the edge asked for a sync (or sent uplinks)
        self._inflight: QueuedDownlink | None = None
        self._refusals = 0  # success=false answers (not retryable) to the downlink in flight
        self._counters = counters if counters is not None else CloudCounters()
        self._rpc = rpc if rpc is not None else RpcService(service, clock=clock)
        self._batch: list[QueuedDownlink] = []
        """The queued downlinks the one in flight carries (several RPC requests, or several
        attribute updates, together: downlink_batch.py)."""
        self._single_until = 0  # after a refused batch, downlinks up to it go one by one
        self._sent_rpcs: list[uuid.UUID] = []  # RPC requests just sent: SENT once they are out
        self._sync_started = 0.0
        self._deadline = 0.0
        self._look = False  # look at the durable queue at the next chance
        self._next_poll = 0.0
        self._connected_at = 0.0
        self._connect_deadline = time.monotonic() + settings.connect_timeout_s
        self._stats = {"uplinks": 0, "events_applied": 0, "duplicates": 0, "rejected": 0,
                       "downlinks_sent": 0, "downlinks_acked": 0, "downlinks_resent": 0,
                       "downlinks_refused": 0, "downlinks_refused_retryable": 0,
                       "downlinks_parked": 0, "requests_answered": 0, "requests_unanswered": 0,
                       "entity_changes": 0, "downlinks_superseded": 0}

    # -- any thread ------------------------------------------------------------------------------

    def wake(self) -> None:
        self._inbox.put((_Kind.WAKE, None))

    def resync(self, reason: str) -> None:
        """Run a full sync of the edge on this stream (ThingsBoard's "Sync edge"): what a sync
        sends, anew, after the downlink in flight."""
        self._inbox.put((_Kind.SYNC, reason))

    def end(self, reason: str) -> None:
        """End the stream from another thread: the handler stops, the RPC is cancelled."""
        self._context.cancel()  # first, so the edge sees CANCELLED rather than a clean end
        self._inbox.put((_Kind.END, reason))

    def summary(self) -> dict[str, object]:
        return {"stream": self.number, "peer": self._peer, "incarnation": self.incarnation,
                "connected_for_s": round(time.monotonic() - self._connected_at, 3),
                "downlink_in_flight": self._inflight.msg_id if self._inflight else None,
                **self._stats}

    # -- the handler thread ----------------------------------------------------------------------

    def run(self, request_iterator: Iterator[edge_pb2.RequestMsg]) -> Iterator[edge_pb2.ResponseMsg]:
        """The response stream. Returns (status OK) when the stream ends."""
        reader = threading.Thread(target=self._read, args=(request_iterator,),
                                  name=f"cloud-stream-{self.number}-reader", daemon=True)
        reader.start()
        self._context.add_callback(self._rpc_terminated)
        try:
            while self._end_reason is None and not self._finished:
                # (a finished session, its RPC terminated, handles nothing more from its inbox)
                try:
                    kind, item = self._inbox.get(timeout=self._wait_s())
                except queue.Empty:  # time to resend or poll, or no connect request in time
                    kind, item = _Kind.WAKE, None
                    if self.edge is None:
                        self._log.warning("no connect request within {} s; stream closed",
                                          self._settings.connect_timeout_s)
                        return
                yield from self._handle(kind, item)
                if self._end_reason is None and self._started:
                    out = self._pump()
                    if out is not None:
                        yield out
                        self._rpc_sent()
        except StorageError as exc:
            self._log.bind(routing_key=self._rk()).error("storage failure, ending the stream: {}", exc)
            self._finish("storage failure")
            self._context.abort(grpc.StatusCode.UNAVAILABLE, "cloud storage failure")
        except Exception:
            self._log.bind(routing_key=self._rk()).exception("stream failed")
            raise
        finally:
            self._finish(self._end_reason or "handler closed")

    def _rpc_terminated(self) -> None:
        """gRPC's thread, once the RPC is over (also when the handler is stuck sending)."""
        self._inbox.put((_Kind.END, "rpc terminated"))
        self._finish(self._end_reason or "rpc terminated")

    def _read(self, request_iterator: Iterator[edge_pb2.RequestMsg]) -> None:
        """The reader thread: requests into the inbox, then EOF."""
        try:
            for request in request_iterator:
                self._inbox.put((_Kind.REQUEST, request))
        except Exception:  # grpc.RpcError on cancellation, or any iterator failure
            pass
        finally:
            self._inbox.put((_Kind.EOF, None))

    def _wait_s(self) -> float | None:
        now = time.monotonic()
        if self.edge is None:
            return max(0.0, self._connect_deadline - now)
        if not self._started:
            return None
        wait = self._deadline - now if self._inflight is not None else self._next_poll - now
        return max(0.0, wait)

    def _handle(self, kind: _Kind, item: Any) -> Iterator[edge_pb2.ResponseMsg]:
        if kind is _Kind.END:
            self._end_reason = str(item)
        elif kind is _Kind.EOF:
            self._end_reason = "edge closed the stream"
        elif kind is _Kind.WAKE:
            self._look = True
        elif kind is _Kind.SYNC:
            if self.edge is not None:
                self._start_sync(True, requested_by=str(item))
        elif self.edge is None:
            if item.HasField("connectRequestMsg"):
                yield self._connect(item.connectRequestMsg)
            # anything before a connect request is ignored
        else:
            yield from self._request(item)

    def _request(self, req: edge_pb2.RequestMsg) -> Iterator[edge_pb2.ResponseMsg]:
        # The fields present decide, not msgType (a DownlinkResponseMsg travels as UPLINK).
        if req.HasField("syncRequestMsg"):
            self._start_sync(req.syncRequestMsg.fullSync)
        if req.HasField("downlinkResponseMsg"):
            self._acknowledged(req.downlinkResponseMsg)
        if req.HasField("uplinkMsg"):
            if not self._started:
                self._started, self._look = True, True
            yield self._uplink(req.uplinkMsg)
        if req.HasField("connectRequestMsg"):
            self._log.bind(routing_key=self._rk()).warning("second connect request on a stream ignored")

    # -- connect ---------------------------------------------------------------------------------

    def _connect(self, req: edge_pb2.ConnectRequestMsg) -> edge_pb2.ResponseMsg:
        log = self._log.bind(routing_key=req.edgeRoutingKey)
        try:
            edge = self._service.authenticate(req.edgeRoutingKey, req.edgeSecret)
        except StorageError as exc:
            log.error("connect refused, storage failure: {}", exc)
            self._end_reason = "storage failure"
            return edge_pb2.ResponseMsg(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                responseCode=edge_pb2.SERVER_UNAVAILABLE, errorMsg="cloud storage unavailable"))
        if edge is None:
            log.warning("bad credentials: unknown routing key or wrong secret")
            self._end_reason = "bad credentials"
            return edge_pb2.ResponseMsg(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                responseCode=edge_pb2.BAD_CREDENTIALS,
                errorMsg="unknown routing key or wrong secret"))
        store_id = normalized_store_id(req.edgeStoreId if req.HasField("edgeStoreId") else None)
        try:
            self.incarnation, new_store = self._store.incarnation(edge.edge_id, store_id,
                                                                   self._clock.now_ms())
        except StorageError as exc:
            log.error("connect refused, storage failure: {}", exc)
            self._end_reason = "storage failure"
            return edge_pb2.ResponseMsg(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                responseCode=edge_pb2.SERVER_UNAVAILABLE, errorMsg="cloud storage unavailable"))
        self.edge, self.edge_id = edge, edge.edge_id
        if req.HasField("maxInboundMessageSize") and req.maxInboundMessageSize > 0:
            self._edge_max_inbound = req.maxInboundMessageSize
        self._log = self._log.bind(routing_key=edge.routing_key, edge_id=str(edge.edge_id),
                                   store_id=store_id or "", incarnation=self.incarnation)
        self._connected_at = time.monotonic()
        old = self._registry.claim(self)  # a finished session (RPC ended) is not registered
        if old is not None:
            self._log.bind(old_stream=getattr(old, "number", None)).info(
                "edge stream replaced by a new connection")
            old.end("replaced by a new stream")
        skew = ""
        if req.HasField("edgeTimeMillis"):
            skew = f"{(self._clock.now_ms() - req.edgeTimeMillis) / 1000:.1f}"
        self._log.bind(edge_version=req.edgeVersion, clock_skew_s=skew).info("edge connected")
        if new_store:
            self._log.info("edge {} connected with a new store {} (incarnation {}); seqs restart",
                           edge.name, store_id, self.incarnation)
        if not req.HasField("edgeStoreId"):
            self._warn_ids_not_time_based(edge)
        return edge_pb2.ResponseMsg(connectResponseMsg=edge_pb2.ConnectResponseMsg(
            responseCode=edge_pb2.ACCEPTED,
            configuration=edge_configuration(edge, req.edgeSecret),
            maxInboundMessageSize=self._settings.max_inbound_message_size,
            cloudCapabilities=edge_pb2.CloudCapabilities(
                orderedApply=True, dedupBySeq=True, serverTimeMillis=self._clock.now_ms()),
        ))

    def _warn_ids_not_time_based(self, edge: EdgeRecord) -> None:
        """An edge that sends no store id may be a ThingsBoard Edge, which cannot initialise with
        ids that are not time-based (ids made before the cloud made time-based ones)."""
        old = [what for what, value in (("tenant", edge.tenant_id), ("edge", edge.edge_id))
               if not ids.is_time_based(value)]
        if old:
            self._log.bind(tenant_id=str(edge.tenant_id)).warning(
                "the {} id is not time-based (made before the cloud made time-based ids): a "
                "ThingsBoard Edge cannot initialise with it, only with a cloud store (data_dir) "
                "made anew",
                " and ".join(old))

    # -- uplink ----------------------------------------------------------------------------------

    def _uplink(self, up: edge_pb2.UplinkMsg) -> edge_pb2.ResponseMsg:
        assert self.edge_id is not None
        self._stats["uplinks"] += 1
        epoch = epoch_of(up)
        if self._gate.refuses(epoch):
            self._log.bind(uplink_msg_id=up.uplinkMsgId, epoch=epoch).debug("uplink refused (go-back-N)")
            return _uplink_response(up.uplinkMsgId, False, self._gate.refusal(), retryable=True)
        try:
            events = events_to_apply(up)
            outcome = self._store.apply_uplink_full(
                self.edge_id, events, self._clock.now_ms(), incarnation=self.incarnation)
            applied, dups, answers = outcome.applied, outcome.duplicates, outcome.answers
        except PayloadRejected as exc:
            self._gate.failed(epoch)
            self._stats["rejected"] += 1
            self._log.bind(seq=exc.seq, uplink_msg_id=up.uplinkMsgId, epoch=epoch).warning(
                "uplink rejected: {}", exc)
            return _uplink_response(up.uplinkMsgId, False, str(exc), retryable=False,
                                    rejected_seq=exc.seq)
        except StorageError as exc:
            self._gate.failed(epoch)
            self._log.bind(uplink_msg_id=up.uplinkMsgId, epoch=epoch).error(
                "uplink not applied, storage failure: {}", exc)
            return _uplink_response(up.uplinkMsgId, False, f"cloud storage failure: {exc}",
                                    retryable=True)
        self._stats["events_applied"] += applied
        self._stats["duplicates"] += dups
        self._counters.uplink_events(applied, dups)
        if outcome.entities or outcome.queued:
            self._counters.counted(self._counters.edge_changes, outcome.entities)
            self._counters.counted(self._counters.graph_downlinks, outcome.queued)
            self._stats["entity_changes"] += sum(outcome.entities.values())
            for other in outcome.woken:  # another edge holds what this one changed
                self._service.wake(other)
        if answers:
            self._rpc.waiters.answered(answers, routing_key=self._rk())
        if dups:
            self._log.bind(uplink_msg_id=up.uplinkMsgId, duplicates=dups).debug(
                "uplink events already applied were skipped")
        for kind, count in uplink_kinds.not_applied(up).items():
            self._counters.not_applied(kind, count, edge=self._rk())
        try:
            self._answer_requests(up)
        except StorageError as exc:
            # The payloads are applied (committed): answering failure would make the edge resend
            # the message, and a ThingsBoard Edge's payloads (no edgeSeqId) would be applied
            # twice. Requests are best effort, as in ThingsBoard: the edge asks again on its next
            # sync. So the uplink is acknowledged and the unanswered requests logged.
            self._stats["requests_unanswered"] += 1
            self._log.bind(uplink_msg_id=up.uplinkMsgId, edge=self._rk()).error(
                "requests of an uplink not answered, storage failure (the uplink is acknowledged: "
                "its payloads are applied): {}", exc)
        return _uplink_response(up.uplinkMsgId, True, "")

    def _answer_requests(self, up: edge_pb2.UplinkMsg) -> None:
        """Queue the downlinks answering the message's requests (none when there is nothing to
        send, as ThingsBoard does)."""
        assert self.edge is not None
        answers = requests.answer(self._store, self.edge, up, self._clock.now_ms())
        if not answers.requests:
            return
        numbers = (self._store.enqueue_downlinks(self.edge.edge_id, answers.payloads)
                   if answers.payloads else [])
        self._stats["requests_answered"] += answers.requests
        self._counters.inc(self._counters.requests_answered, answers.requests)
        self._counters.inc(self._counters.request_downlinks, len(numbers))
        self._look = self._look or bool(numbers)
        self._log.bind(uplink_msg_id=up.uplinkMsgId, requests=answers.requests,
                       downlinks=numbers).info("requests answered")

    # -- downlink --------------------------------------------------------------------------------

    def _start_sync(self, full: bool, *, requested_by: str = "edge") -> None:
        assert self.edge_id is not None and self.edge is not None
        # what is queued up to now, the full sync reads anew (it reads the store after this).
        # Dropped at its end only when the edge asked for it and is an edge-sync edge (it sends
        # its store id): such an edge removes, at the end of a full sync it asked for, what the
        # sync did not send. A sync the operator starts, or a ThingsBoard Edge (which keeps
        # such orphans), would otherwise lose the deletes still queued.
        sweeps = requested_by == "edge" and self.incarnation != 0
        self._supersedes = (self._store.last_downlink_number(self.edge_id)
                            if full and sweeps else None)
        self._sync_parked = 0
        if full:
            payloads: Iterable[bytes] = full_sync.packs(
                self._store, self.edge, self._clock.now_ms(), max_bytes=self._max_bytes())
        else:
            payloads = [downlinks.sync_completed()]
        self._sync = full_sync.SyncStream(self._store, self.edge_id, payloads)
        self._sync_started = time.monotonic()
        if self._inflight is not None and not self._inflight.durable:
            self._inflight = None  # a previous sync's downlink: superseded
        self._started, self._look = True, True
        self._log.bind(full_sync=full, requested_by=requested_by).info(
            "sync requested by the {}", requested_by)

    def _drop_superseded(self) -> None:
        """After the edge acknowledged a full sync's SyncCompletedMsg: the sync sent the entity
        graph as it was when it read it, and at its end the edge removed what it did not send
        (with what depends on it). So every downlink queued before the sync started that
        carries only graph changes (downlinks.graph_only: entity creates, updates and deletes,
        devices with their credentials and profiles, relations) would send the edge again what
        the sync sent, or delete what the edge has deleted: they are dropped. Kept: a change
        committed after the sync started (queued after it: the sync may have read the store
        before it), server-side RPC requests, attribute updates, any other downlink, parked
        ones. Done at the sync's end, not its start, so that a sync which never ends (the
        stream broken, its last downlink parked) drops nothing, and so does one that parked any
        of its downlinks: the edge lacks what those carried, and the queued downlinks are its
        second chance (sent alone, after the sync, as before). A failure to drop them is logged
        and they are sent, as before."""
        assert self.edge_id is not None
        up_to, self._supersedes = self._supersedes, None
        if up_to is None:
            return
        if self._sync_parked:
            self._log.bind(edge=self._rk(), parked=self._sync_parked).info(
                "full sync of edge {} completed with {} of its downlinks parked: the downlinks "
                "queued before it are kept", self._rk(), self._sync_parked)
            return
        try:
            dropped = self._store.remove_superseded_downlinks(self.edge_id, downlinks.graph_only,
                                                              up_to=up_to)
        except StorageError as exc:
            self._log.bind(edge=self._rk()).warning(
                "queued downlinks superseded by the full sync not dropped (storage failure): {}",
                exc)
            return
        if not dropped:
            return
        self._stats["downlinks_superseded"] += len(dropped)
        self._counters.inc(self._counters.downlinks_superseded, len(dropped))
        self._log.bind(edge=self._rk(), edge_id=str(self.edge_id), dropped=len(dropped),
                       first=dropped[0], last=dropped[-1]).info(
            "full sync of edge {} completed: {} downlinks queued before it dropped (it sent "
            "what they carry)", self._rk(), len(dropped))

    def _max_bytes(self) -> int:
        """The largest downlink the edge accepts (its maxInboundMessageSize, else ours)."""
        return self._edge_max_inbound or self._settings.max_inbound_message_size

    def _pump(self) -> edge_pb2.ResponseMsg | None:
        """Send the next downlink, or resend the one in flight when its time is up."""
        assert self.edge_id is not None
        now = time.monotonic()
        timeout = self._settings.resend_timeout_s
        if self._inflight is not None:
            if now < self._deadline:
                return None
            self._deadline = now + timeout
            self._stats["downlinks_resent"] += 1
            self._log.bind(downlink_id=self._inflight.msg_id).info("downlink resent (no acknowledgement)")
            return self._send(self._inflight)
        while True:
            nxt = self._sync.head() if self._sync is not None else None
            if nxt is None:
                if not self._look and now < self._next_poll:
                    return None
                self._look = False
                self._next_poll = now + self._settings.poll_interval_s
                nxt = self._store.first_downlink(self.edge_id)
                if nxt is None:
                    return None
            if not self._too_large(nxt) and not self._rpc_expired(nxt):
                break
        self._batch = self._batch_for(nxt) if nxt.durable else []
        nxt = downlink_batch.combined(self._batch) if len(self._batch) > 1 else nxt
        self._inflight, self._deadline, self._refusals = nxt, now + timeout, 0
        self._stats["downlinks_sent"] += 1
        self._log.bind(downlink_id=nxt.msg_id, content=downlinks.describe(nxt.payload),
                       batched=len(self._batch) if len(self._batch) > 1 else None).info(
            "downlink sent")
        self._sent_rpcs = [rpc_id for _, rpc_id in self._rpc_requests(self._batch)]
        return self._send(nxt)

    def _batch_for(self, head: QueuedDownlink) -> list[QueuedDownlink]:
        """``head`` and the downlinks of its kind (RPC requests, attribute updates) queued right
        after it that travel with it (one by one after a refused batch)."""
        assert self.edge_id is not None
        if head.number <= self._single_until or downlink_batch.kind_of(head) is None:
            return [head]
        following = self._store.queued_after(self.edge_id, head.number,
                                             downlink_batch.MAX_BATCH - 1)
        return downlink_batch.batch_of(head, following, now_ms=self._clock.now_ms(),
                                       max_bytes=self._max_bytes())

    @staticmethod
    def _rpc_requests(items: list[QueuedDownlink]) -> list[tuple[int, uuid.UUID]]:
        """(downlink number, rpc id) of the RPC requests among ``items``."""
        out = []
        for item in items:
            request = downlinks.rpc_request_of(item.payload)
            if request is not None:
                out.append((item.number, request[0]))
        return out

    def _rpc_sent(self) -> None:
        """After server-side RPC requests went out (first send): SENT (in memory, after the
        send; their acknowledgement and answers are handled on this thread, after it)."""
        sent, self._sent_rpcs = self._sent_rpcs, []
        for rpc_id in sent:
            self._rpc.sent(rpc_id, edge_id=self.edge_id)

    def _rpc_expired(self, item: QueuedDownlink) -> bool:
        """A server-side RPC request whose expirationTime has passed in the queue is never sent:
        it leaves the queue, EXPIRED, and the queue moves on."""
        rpc_request = downlinks.rpc_request_of(item.payload) if item.durable else None
        if rpc_request is None or rpc_request[1] >= self._clock.now_ms():
            return False
        assert self.edge_id is not None
        self._rpc.expired_unsent(self.edge_id, item.number, rpc_request[0])
        self._look = True
        return True

    def _too_large(self, item: QueuedDownlink) -> bool:
        """A downlink larger than the edge accepts would break the stream on every try: it is
        dead-lettered (kept with its reason) and the queue moves on."""
        limit = self._edge_max_inbound
        size = downlinks.stamp(item.payload, item.msg_id, self._clock.now_ms()).ByteSize()
        if limit is None or size <= limit:
            return False
        reason = f"{size} bytes, more than the edge's maxInboundMessageSize ({limit})"
        self._park(item, CAUSE_TOO_LARGE, reason, 0)
        return True

    def _park(self, item: QueuedDownlink, cause: str, error: str, attempts: int) -> None:
        """Set the downlink aside durably with its error, and move on to the next. (A
        ThingsBoard Edge's errorMsg carries the root cause and its stack trace: the start is
        kept, the first line logged.)"""
        assert self.edge_id is not None
        error = error[:MAX_PARKED_ERROR_CHARS]
        if not item.durable and self._sync is not None and self._sync.head() is item:
            self._sync.pop()
            self._sync_parked += 1
        parked = self._store.park_downlink(self.edge_id, item, cause=cause, error=error,
                                           attempts=attempts, now_ms=self._clock.now_ms())
        if self._inflight is item:
            self._inflight, self._batch = None, []
        self._look = True
        if not parked:  # no longer queued (another stream of the edge settled it)
            self._log.bind(downlink_id=item.msg_id).debug("downlink to park was already gone")
            return
        rpc_request = downlinks.rpc_request_of(item.payload) if item.durable else None
        if rpc_request is not None:
            self._rpc.parked(rpc_request[0], error.splitlines()[0] if error else error)
        self._stats["downlinks_parked"] += 1
        self._counters.inc(self._counters.downlinks_parked)
        self._log.bind(downlink_id=item.msg_id, number=item.number, kind=downlinks.describe(item.payload),
                       cause=cause, attempts=attempts, in_sync=not item.durable,
                       error=error[:MAX_LOGGED_ERROR_CHARS]).error(
            "downlink parked for edge {}: {}", self._rk(), error.splitlines()[0][:MAX_LOGGED_ERROR_CHARS])

    def _send(self, item: QueuedDownlink) -> edge_pb2.ResponseMsg:
        return downlinks.stamp(item.payload, item.msg_id, self._clock.now_ms())

    def _acknowledged(self, resp: edge_pb2.DownlinkResponseMsg) -> None:
        assert self.edge_id is not None
        item = self._inflight
        log = self._log.bind(downlink_id=resp.downlinkMsgId)
        if item is None or resp.downlinkMsgId != item.msg_id:
            log.debug("acknowledgement for a downlink not in flight ignored")
            return
        if not resp.success:
            self._stats["downlinks_refused"] += 1
            self._counters.inc(self._counters.downlinks_refused)
            if resp.HasField("retryable") and resp.retryable:
                # our edge failed for a reason of its own (its store: a full disk, say): the
                # downlink is fine, so it is resent for as long as it takes, never parked
                self._stats["downlinks_refused_retryable"] += 1
                log.bind(error=resp.errorMsg).warning(
                    "downlink refused by the edge, retryable (a temporary failure on the edge): "
                    "resent after the timeout, not counted towards parking")
                return
            if not item.durable and self._sync is not None and self._sync.head() is item \
                    and downlink_batch.entry_count(item.payload) > 1:
                # a pack of the sync: one bad entry may be the cause, so its entries go again
                # one by one, at once (those refusals of the whole do not count towards parking)
                parts = self._sync.split_head()
                log.bind(error=resp.errorMsg, entries=parts).warning(
                    "sync downlink of {} entries refused by the edge; sent again one by one", parts)
                self._inflight, self._look = None, True
                return
            if len(self._batch) > 1:
                # one of its parts may be the cause: they go again one by one, at once, so a
                # bad one is refused (and parked) alone
                self._single_until = self._batch[-1].number
                log.bind(error=resp.errorMsg, batched=len(self._batch)).warning(
                    "downlink of {} batched downlinks refused by the edge; sent again one by one",
                    len(self._batch))
                self._inflight, self._batch, self._look = None, [], True
                return
            self._refusals += 1
            if self._refusals >= self._settings.max_attempts:
                self._park(item, CAUSE_REFUSED, resp.errorMsg or "(no error message)",
                           self._refusals)
                if not item.durable and not self._sync:
                    self._sync_over("sync over, its last downlink parked")
                return
            log.bind(error=resp.errorMsg, attempt=self._refusals,
                     max_attempts=self._settings.max_attempts).warning(
                "downlink refused by the edge; resent after the timeout")
            return
        if not item.durable:
            if self._sync is not None and self._sync.head() is item:
                self._sync.pop()
        else:
            carried = self._rpc_requests(self._batch)
            if carried:  # out of the queue and DELIVERED, in one transaction
                self._rpc.acknowledged(self.edge_id, carried)
            elif len(self._batch) > 1:  # attribute updates: out of the queue together
                self._store.remove_downlinks(self.edge_id, [b.number for b in self._batch])
            else:
                self._store.remove_downlink(self.edge_id, item.number)
        self._inflight, self._batch, self._look = None, [], True
        self._stats["downlinks_acked"] += 1
        log.info("downlink acknowledged")
        if not item.durable and not self._sync:
            self._drop_superseded()
            self._sync_over("sync completed")

    def _sync_over(self, what: str) -> None:
        sync, self._sync, self._supersedes = self._sync, None, None
        took = time.monotonic() - self._sync_started
        self._log.bind(downlinks=sync.sent_packs if sync is not None else 0,
                       seconds=round(took, 3)).info(what)

    # -- end -------------------------------------------------------------------------------------

    def _finish(self, reason: str) -> None:
        with self._finish_lock:
            if self._finished:
                return
            self._finished = True
        self._registry.release(self)
        for _, rpc_id in self._rpc_requests(list(self._batch)):
            self._rpc.unsent(rpc_id)  # in flight no more: QUEUED again, resent on the next stream
        if self.edge is not None:
            self._log.bind(reason=reason).info("edge disconnected")
        self.done.set()
        if self._on_finish is not None:
            self._on_finish(self)

    @property
    def finished(self) -> bool:
        """The RPC is over; set before the session releases its registry entry."""
        return self._finished

    def _rk(self) -> str:
        return self.edge.routing_key if self.edge else ""


def edge_configuration(edge: EdgeRecord, secret: str) -> edge_pb2.EdgeConfiguration:
    """The EdgeConfiguration of an accepted connect, filled as a ThingsBoard CE server fills it:
    the edge's, its tenant's and its customer's ids (ThingsBoard's NULL_UUID customer: the
    reference cloud assigns edges to no customer), name, type, routing key, the secret the edge
    connected with (a ThingsBoard Edge stores it with its edge and refuses an empty one),
    additionalInfo (none here) and cloudType "CE" (any other makes a ThingsBoard CE Edge
    exit)."""
    e_msb, e_lsb = uuid_halves(edge.edge_id)
    t_msb, t_lsb = uuid_halves(edge.tenant_id)
    c_msb, c_lsb = uuid_halves(ids.NULL_UUID)
    return edge_pb2.EdgeConfiguration(
        edgeIdMSB=e_msb, edgeIdLSB=e_lsb, tenantIdMSB=t_msb, tenantIdLSB=t_lsb,
        customerIdMSB=c_msb, customerIdLSB=c_lsb, name=edge.name, type=edge.type,
        routingKey=edge.routing_key, secret=secret, cloudType="CE")


def _uplink_response(msg_id: int, success: bool, error: str, *, retryable: bool | None = None,
                     rejected_seq: int | None = None) -> edge_pb2.ResponseMsg:
    r = edge_pb2.UplinkResponseMsg(success=success, errorMsg=error, uplinkMsgId=msg_id)
    if retryable is not None:
        r.retryable = retryable
    if rejected_seq is not None:
        r.rejectedEdgeSeqId = rejected_seq
    return edge_pb2.ResponseMsg(uplinkResponseMsg=r)
