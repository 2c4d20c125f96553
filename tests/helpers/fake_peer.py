"""A scripted fake cloud for tests of the edge's ConnectionActor: a real gRPC server on
127.0.0.1 port 0 implementing EdgeRpcService.handleMsgs with the project's generated modules,
whose behaviour each test picks (ThingsBoard-like or reference-like, acks in order / out of order
/ never, rejections, bad credentials, clock offset, message size limit), and which records
everything it received so tests can check the edge's side of docs/link-protocol.md.

    fake = FakeCloud(uplinks="random", capabilities=None).start()   # a ThingsBoard-like peer
    ... EdgeApp with CLOUD_RPC_PORT=fake.port ...
    fake.wait_for(lambda: len(fake.applied_seqs()) == 10)
    fake.stop()

Uplink modes:
    "ack"     answer every UplinkMsg at once, success, in order;
    "random"  answer each after a random delay (min_ack_delay_s..max_ack_delay_s), so answers come
              out of order (ThingsBoard processes messages and their payloads concurrently);
    "silent"  never answer an UplinkMsg;
    "ordered" the reference cloud's rules: go-back-N epochs (after a failed message of epoch E,
              refuse every message of epoch <= E, retryable), reject a message holding a seq of
              ``reject_seqs`` (success=false, rejectedEdgeSeqId, retryable=false, nothing applied),
              apply the rest in edgeSeqId order (skipping applied seqs when ``dedup``).
"""

from __future__ import annotations

import json
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from edge_sync.common.wire import uuid_of
from edge_sync.proto import edge_pb2, edge_pb2_grpc
from tests.helpers.grpc_server import serve_on_loopback
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0
FAKE_EDGE_ID = uuid.UUID("0f1e2d3c-4b5a-4697-8877-665544332211")
FAKE_TENANT_ID = uuid.UUID("1a2b3c4d-5e6f-4a1b-9c2d-3e4f5a6b7c8d")

# What each payload list means, as the edge maps its events (docs/link-protocol.md).
ORDER_SENSITIVE = frozenset({"ADDED", "UPDATED", "DELETED", "CREDENTIALS_UPDATED"})
_UPDATE_ACTION = {edge_pb2.ENTITY_CREATED_RPC_MESSAGE: "ADDED",
                  edge_pb2.ENTITY_UPDATED_RPC_MESSAGE: "UPDATED",
                  edge_pb2.ENTITY_DELETED_RPC_MESSAGE: "DELETED"}
_END = object()


@dataclass(frozen=True)
class Payload:
    """One payload of an UplinkMsg as the fake reads it."""

    seq: int | None  # edgeSeqId (the extension), None when absent
    entity_id: uuid.UUID
    action: str  # ADDED, CREDENTIALS_UPDATED, TIMESERIES_UPDATED, ...
    value: Any  # telemetry: {key: value}; attributes: {key: value}; entity JSON for the rest

    @property
    def sensitive(self) -> bool:
        return self.action in ORDER_SENSITIVE


def _kv(kv: Any) -> Any:
    match kv.type:
        case 0:
            return kv.bool_v
        case 1:
            return kv.long_v
        case 2:
            return kv.double_v
        case 3:
            return kv.string_v
    return json.loads(kv.json_v)


def payloads(up: edge_pb2.UplinkMsg) -> list[Payload]:
    """The payloads of an UplinkMsg, in list order (entityData, devices, credentials)."""
    out: list[Payload] = []
    for d in up.entityData:
        seq = d.edgeSeqId if d.HasField("edgeSeqId") else None
        eid = uuid_of(d.entityIdMSB, d.entityIdLSB)
        if d.HasField("postTelemetryMsg"):
            values = {kv.key: _kv(kv) for e in d.postTelemetryMsg.tsKvList for kv in e.kv}
            out.append(Payload(seq, eid, "TIMESERIES_UPDATED", values))
        elif d.HasField("postAttributesMsg"):
            out.append(Payload(seq, eid, "ATTRIBUTES_UPDATED",
                               {kv.key: _kv(kv) for kv in d.postAttributesMsg.kv}))
        else:
            out.append(Payload(seq, eid, "ENTITY_DATA", None))
    for m in up.deviceUpdateMsg:
        seq = m.edgeSeqId if m.HasField("edgeSeqId") else None
        out.append(Payload(seq, uuid_of(m.idMSB, m.idLSB), _UPDATE_ACTION.get(m.msgType, "?"),
                           json.loads(m.entity) if m.entity else None))
    for c in up.deviceCredentialsUpdateMsg:
        seq = c.edgeSeqId if c.HasField("edgeSeqId") else None
        body = json.loads(c.entity)
        out.append(Payload(seq, uuid.UUID(body["deviceId"]["id"]), "CREDENTIALS_UPDATED", body))
    for name in ("alarmUpdateMsg", "relationUpdateMsg", "deviceRpcCallMsg", "assetUpdateMsg",
                 "attributesRequestMsg", "relationRequestMsg"):
        for m in getattr(up, name):
            seq = m.edgeSeqId if m.HasField("edgeSeqId") else None
            out.append(Payload(seq, uuid.UUID(int=0), name, None))
    return out


@dataclass
class Uplink:
    """One UplinkMsg as received."""

    stream: int
    at: float  # time.monotonic() at receipt
    msg: edge_pb2.UplinkMsg
    size: int  # len(msg.SerializeToString())
    request_size: int  # the whole RequestMsg carrying it (what gRPC's size limit applies to)
    in_flight: list[edge_pb2.UplinkMsg]  # the stream's messages still unanswered at receipt
    answer: edge_pb2.UplinkResponseMsg | None = None

    @property
    def epoch(self) -> int | None:
        return self.msg.uplinkEpoch if self.msg.HasField("uplinkEpoch") else None

    @property
    def seqs(self) -> list[int | None]:
        return [p.seq for p in payloads(self.msg)]


@dataclass
class Connect:
    stream: int
    at: float
    request: edge_pb2.ConnectRequestMsg


@dataclass
class _Stream:
    number: int
    outbox: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    unanswered: dict[int, edge_pb2.UplinkMsg] = field(default_factory=dict)  # by arrival number
    failed_epoch: int | None = None
    accepted: bool = False
    arrivals: int = 0
    ended: bool = False


class FakeCloud(edge_pb2_grpc.EdgeRpcServiceServicer):
    def __init__(
        self,
        *,
        response_code: int = edge_pb2.ACCEPTED,
        connect_error: str = "fake cloud says no",
        capabilities: edge_pb2.CloudCapabilities | None = None,
        max_inbound: int | None = None,
        clock_offset_ms: int | None = None,
        random_ids: bool = True,
        uplinks: str = "ack",
        reject_seqs: frozenset[int] = frozenset(),
        reject_error: str = "rejected by the fake",
        dedup: bool = False,
        hold_sync: bool = False,
        max_ack_delay_s: float = 0.03,
        min_ack_delay_s: float = 0.0,
        fail_seqs: frozenset[int] = frozenset(),
        fail_error: str = "internal error (fake)",
        answer_delay: Callable[[list[Payload]], float | None] | None = None,
        seed: int | None = None,
    ) -> None:
        """clock_offset_ms: when set, serverTimeMillis (in cloudCapabilities, created if None)
        and every DownlinkMsg's cloudTimeMillis are the fake's clock plus this offset.
        fail_seqs ("ack"/"random"): a message holding one of these seqs is answered
        success=false, errorMsg=fail_error, with no extension field (ThingsBoard's plain failure);
        like ThingsBoard, which is not transactional, the message's other payloads are applied.
        answer_delay ("ack"/"ordered"): seconds to hold the answer to a message, by its payloads;
        None: never answer it (a ThingsBoard that lost it)."""
        assert uplinks in ("ack", "random", "silent", "ordered")
        self.response_code = response_code
        self.connect_error = connect_error  # the errorMsg of a connect not ACCEPTED
        self.capabilities = capabilities
        self.max_inbound = max_inbound
        self.clock_offset_ms = clock_offset_ms
        self.random_ids = random_ids
        self.mode = uplinks
        self.reject_seqs = set(reject_seqs)
        self.reject_error = reject_error
        self.dedup = dedup
        self.max_ack_delay_s = max_ack_delay_s
        self.min_ack_delay_s = min_ack_delay_s
        self.fail_seqs = set(fail_seqs)
        self.fail_error = fail_error
        self.answer_delay = answer_delay
        self.failed: list[int] = []  # seqs of messages answered with a plain failure
        self.rng = random.Random(seed)
        self.cond = threading.Condition()
        # records (under cond)
        self.connects: list[Connect] = []
        self.sync_requests: list[tuple[int, bool | None]] = []  # (stream, fullSync)
        self.uplinks: list[Uplink] = []
        self.applied: list[Payload] = []  # accepted payloads, in the order applied
        self.duplicates = 0
        self.refused = 0  # go-back-N refusals
        self.rejected: list[int] = []  # seqs rejected
        self.downlinks_sent: list[tuple[int, edge_pb2.DownlinkMsg]] = []  # (stream, msg)
        self.downlink_acks: list[tuple[int, edge_pb2.DownlinkResponseMsg]] = []
        self.sync_completed_ids: list[int] = []
        self.streams_ended = 0
        self._streams: list[_Stream] = []
        self._current: _Stream | None = None
        self._next_downlink_id = 1
        self._sync_released = threading.Event()
        if not hold_sync:
            self._sync_released.set()
        self._pending_sync: list[_Stream] = []
        self._timers: list[threading.Timer] = []
        self._stops: list[threading.Event] = []  # of redelivery loops
        self._server: grpc.Server | None = None
        self.port = 0

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeCloud:
        # like ThingsBoard, the advertised inbound limit is enforced when there is one
        self._server, self.port = serve_on_loopback(self, name="fake-cloud",
                                                    max_inbound=self.max_inbound)
        return self

    def stop(self) -> None:
        with self.cond:
            for t in self._timers:
                t.cancel()
            for stop in self._stops:
                stop.set()
            for s in self._streams:
                s.outbox.put(_END)
        if self._server is not None:
            self._server.stop(0.5).wait(5)

    # -- what tests call -------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], timeout: float = DEADLINE_S,
                 what: str = "condition") -> Any:
        """Wait until predicate() (evaluated under the fake's lock) is truthy; return it."""
        return wait_until(predicate, timeout=timeout, what=f"the fake cloud: {what}",
                          condition=self.cond)

    def release_sync(self) -> None:
        """hold_sync: send the held syncCompletedMsg downlinks now."""
        self._sync_released.set()
        with self.cond:
            held, self._pending_sync = self._pending_sync, []
        for s in held:
            self._send_sync_completed(s)

    def drop_streams(self) -> None:
        """End every open stream now (the edge sees its stream end, as when a cloud restarts);
        set ``response_code`` first to have the edge's next connects refused."""
        with self.cond:
            for s in self._streams:
                if not s.ended:
                    s.outbox.put(_END)

    def send_downlink(self, msg: edge_pb2.DownlinkMsg) -> edge_pb2.DownlinkMsg:
        """Send a DownlinkMsg on the current accepted stream (cloudTimeMillis stamped when the
        fake has a clock offset). Returns the message as sent."""
        return self._send_on(self._accepted_stream(), msg)

    def redeliver(self, msg: edge_pb2.DownlinkMsg, every_s: float) -> threading.Event:
        """Send ``msg`` on the current accepted stream now and the same again every ``every_s``
        (a cloud resending a downlink the edge refuses, for ever) until that stream ends, the
        fake stops, or the returned event is set."""
        stream = self._accepted_stream()
        stop = threading.Event()
        with self.cond:
            self._stops.append(stop)

        def run() -> None:
            while not stop.is_set() and not stream.ended:
                self._send_on(stream, msg)
                stop.wait(every_s)  # the cloud's pace

        threading.Thread(target=run, daemon=True, name=f"fake-cloud-redeliver-{stream.number}"
                         ).start()
        return stop

    def _accepted_stream(self) -> _Stream:
        with self.cond:
            stream = self._current
        assert stream is not None and stream.accepted, "fake cloud: no accepted stream"
        return stream

    def _send_on(self, stream: _Stream, msg: edge_pb2.DownlinkMsg) -> edge_pb2.DownlinkMsg:
        with self.cond:
            out = edge_pb2.DownlinkMsg()
            out.CopyFrom(msg)
            if self.clock_offset_ms is not None:
                out.cloudTimeMillis = self._cloud_now()
            self.downlinks_sent.append((stream.number, out))
            self.cond.notify_all()
        stream.outbox.put(edge_pb2.ResponseMsg(downlinkMsg=out))
        return out

    def new_downlink_id(self) -> int:
        with self.cond:
            if self.random_ids:
                return self.rng.randint(1, 2**31 - 1)
            n = self._next_downlink_id
            self._next_downlink_id += 1
            return n

    def acks_for(self, downlink_id: int) -> list[edge_pb2.DownlinkResponseMsg]:
        """Under the lock (from a wait_for predicate) or after the fact."""
        return [a for _, a in self.downlink_acks if a.downlinkMsgId == downlink_id]

    def applied_seqs(self) -> list[int | None]:
        return [p.seq for p in self.applied]

    def connect_times(self) -> list[float]:
        return [c.at for c in self.connects]

    def stream_numbers(self) -> list[int]:
        return [s.number for s in self._streams]

    def accepted_stream(self) -> int | None:
        """The number of the stream accepted last (the one downlinks go on), None before any:
        a stream opened is not yet accepted (its connect answered)."""
        stream = self._current
        return stream.number if stream is not None and stream.accepted else None

    # -- the servicer ----------------------------------------------------------------------------

    def handleMsgs(self, request_iterator: Iterator[edge_pb2.RequestMsg],
                   context: grpc.ServicerContext) -> Iterator[edge_pb2.ResponseMsg]:
        with self.cond:
            stream = _Stream(len(self._streams) + 1)
            self._streams.append(stream)
        context.add_callback(lambda: stream.outbox.put(_END))
        reader = threading.Thread(target=self._read, args=(stream, request_iterator), daemon=True,
                                  name=f"fake-cloud-reader-{stream.number}")
        reader.start()
        try:
            while True:
                item = stream.outbox.get()
                if item is _END:
                    return
                yield item
        finally:
            with self.cond:
                stream.ended = True
                self.streams_ended += 1
                if self._current is stream:
                    self._current = None
                self.cond.notify_all()

    def _read(self, stream: _Stream, requests: Iterator[edge_pb2.RequestMsg]) -> None:
        try:
            for req in requests:
                self._on_request(stream, req)
        except grpc.RpcError:
            pass
        except Exception:  # a bug in the fake must end the stream visibly
            stream.outbox.put(_END)
            raise
        finally:
            stream.outbox.put(_END)

    def _on_request(self, stream: _Stream, req: edge_pb2.RequestMsg) -> None:
        if req.HasField("connectRequestMsg"):
            self._on_connect(stream, req.connectRequestMsg)
            return
        if not stream.accepted:
            return  # anything before an accepted connect is ignored
        if req.HasField("syncRequestMsg"):
            sync = req.syncRequestMsg
            with self.cond:
                self.sync_requests.append(
                    (stream.number, sync.fullSync if sync.HasField("fullSync") else None))
                self.cond.notify_all()
                hold = not self._sync_released.is_set()
                if hold:
                    self._pending_sync.append(stream)
            if not hold:
                self._send_sync_completed(stream)
        if req.HasField("downlinkResponseMsg"):
            with self.cond:
                self.downlink_acks.append((stream.number, req.downlinkResponseMsg))
                self.cond.notify_all()
        if req.HasField("uplinkMsg"):
            self._on_uplink(stream, req.uplinkMsg, len(req.SerializeToString()))

    def _on_connect(self, stream: _Stream, req: edge_pb2.ConnectRequestMsg) -> None:
        with self.cond:
            self.connects.append(Connect(stream.number, time.monotonic(), req))
            self.cond.notify_all()
        if self.response_code != edge_pb2.ACCEPTED:
            stream.outbox.put(edge_pb2.ResponseMsg(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                responseCode=self.response_code, errorMsg=self.connect_error)))
            stream.outbox.put(_END)
            return
        e_msb, e_lsb = _halves(FAKE_EDGE_ID)
        t_msb, t_lsb = _halves(FAKE_TENANT_ID)
        resp = edge_pb2.ConnectResponseMsg(
            responseCode=edge_pb2.ACCEPTED,
            configuration=edge_pb2.EdgeConfiguration(
                edgeIdMSB=e_msb, edgeIdLSB=e_lsb, tenantIdMSB=t_msb, tenantIdLSB=t_lsb,
                name="fake-edge", type="default", routingKey=req.edgeRoutingKey, cloudType="CE"))
        if self.max_inbound is not None:
            resp.maxInboundMessageSize = self.max_inbound
        caps = self.capabilities
        if self.clock_offset_ms is not None:
            caps = edge_pb2.CloudCapabilities() if caps is None else caps
            caps = edge_pb2.CloudCapabilities(orderedApply=caps.orderedApply,
                                              dedupBySeq=caps.dedupBySeq,
                                              serverTimeMillis=self._cloud_now())
        if caps is not None:
            resp.cloudCapabilities.CopyFrom(caps)
        with self.cond:
            stream.accepted = True
            self._current = stream
        stream.outbox.put(edge_pb2.ResponseMsg(connectResponseMsg=resp))

    def _send_sync_completed(self, stream: _Stream) -> None:
        msg = edge_pb2.DownlinkMsg(downlinkMsgId=self.new_downlink_id(),
                                   syncCompletedMsg=edge_pb2.SyncCompletedMsg())
        if self.clock_offset_ms is not None:
            msg.cloudTimeMillis = self._cloud_now()
        with self.cond:
            self.sync_completed_ids.append(msg.downlinkMsgId)
            self.downlinks_sent.append((stream.number, msg))
        stream.outbox.put(edge_pb2.ResponseMsg(downlinkMsg=msg))

    # -- uplinks ---------------------------------------------------------------------------------

    def _on_uplink(self, stream: _Stream, up: edge_pb2.UplinkMsg, request_size: int) -> None:
        with self.cond:
            stream.arrivals += 1
            key = stream.arrivals
            record = Uplink(stream.number, time.monotonic(), up, len(up.SerializeToString()),
                            request_size, list(stream.unanswered.values()))
            self.uplinks.append(record)
            stream.unanswered[key] = up
            self.cond.notify_all()
            if self.mode == "silent":
                return
            items = payloads(up)
            if self.mode == "ordered":
                answer = self._ordered(stream, up)
            elif any(p.seq in self.fail_seqs for p in items):
                self.failed.extend(p.seq for p in items if p.seq in self.fail_seqs)
                self.applied.extend(p for p in items if p.seq not in self.fail_seqs)
                answer = edge_pb2.UplinkResponseMsg(success=False, uplinkMsgId=up.uplinkMsgId,
                                                    errorMsg=self.fail_error)
            else:
                self.applied.extend(items)
                answer = edge_pb2.UplinkResponseMsg(success=True, uplinkMsgId=up.uplinkMsgId)
            delay: float | None
            if self.mode == "random":
                delay = self.rng.uniform(self.min_ack_delay_s, self.max_ack_delay_s)
            else:
                delay = self.answer_delay(items) if self.answer_delay is not None else 0.0
            if delay is None:
                return  # never answered
            if delay > 0:
                timer = threading.Timer(delay, self._answer, args=(stream, key, record, answer))
                timer.daemon = True
                self._timers.append(timer)
                timer.start()
                return
        self._answer(stream, key, record, answer)

    def _answer(self, stream: _Stream, key: int, record: Uplink,
                answer: edge_pb2.UplinkResponseMsg) -> None:
        with self.cond:
            stream.unanswered.pop(key, None)
            record.answer = answer
            self.cond.notify_all()
        stream.outbox.put(edge_pb2.ResponseMsg(uplinkResponseMsg=answer))

    def _ordered(self, stream: _Stream, up: edge_pb2.UplinkMsg) -> edge_pb2.UplinkResponseMsg:
        """The reference cloud's rules (docs/link-protocol.md), under the lock."""
        epoch = up.uplinkEpoch if up.HasField("uplinkEpoch") else None
        if epoch is not None and stream.failed_epoch is not None and epoch <= stream.failed_epoch:
            self.refused += 1
            return edge_pb2.UplinkResponseMsg(
                success=False, uplinkMsgId=up.uplinkMsgId, retryable=True,
                errorMsg=f"refused: an earlier uplink of epoch {stream.failed_epoch} failed (go-back-N)")
        items = payloads(up)
        bad = [p.seq for p in items if p.seq in self.reject_seqs]
        if bad:
            if epoch is not None:
                stream.failed_epoch = epoch if stream.failed_epoch is None else max(
                    stream.failed_epoch, epoch)
            self.rejected.append(bad[0])
            assert bad[0] is not None
            return edge_pb2.UplinkResponseMsg(
                success=False, uplinkMsgId=up.uplinkMsgId, errorMsg=self.reject_error,
                rejectedEdgeSeqId=bad[0], retryable=False)
        if all(p.seq is not None for p in items):
            items.sort(key=lambda p: p.seq or 0)
        done = {p.seq for p in self.applied}
        for p in items:
            if self.dedup and p.seq is not None and p.seq in done:
                self.duplicates += 1
                continue
            self.applied.append(p)
        return edge_pb2.UplinkResponseMsg(success=True, uplinkMsgId=up.uplinkMsgId)

    def _cloud_now(self) -> int:
        return int(time.time() * 1000) + (self.clock_offset_ms or 0)


def _halves(value: uuid.UUID) -> tuple[int, int]:
    b = value.bytes
    return int.from_bytes(b[:8], "big", signed=True), int.from_bytes(b[8:], "big", signed=True)
