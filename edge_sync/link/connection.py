"""The ConnectionActor: owns the gRPC channel and the one handleMsgs stream, and nothing else
does. It connects, syncs, pumps the uplink queue in seq order with a window of messages in
flight, handles acknowledgements (DEPLOYED), go-back-N resends and dead letters, passes
downlinks to the DownlinkActor and acknowledges them, and reconnects with backoff behind a
circuit breaker. A reader thread per stream only tells it what arrived.

All state lives on the actor's thread. The link's state for status views is published as an
immutable snapshot dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections import OrderedDict
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import grpc
import pykka
from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.actors.messages import DeadLetter, EventsCommitted, MarkDeployed, SetIdentity
from edge_sync.actors.ticker import Ticker
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.common.wire import uuid_of
from edge_sync.config import CloudLinkConfig
from edge_sync.link.backoff import Backoff, BackoffPolicy
from edge_sync.link.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from edge_sync.link.channel import Stream, make_channel
from edge_sync.link.downlink_actor import ApplyDownlink, DownlinkApplied
from edge_sync.link.packer import pack
from edge_sync.link.state import LinkState, LinkStateMachine, StatusBoard
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import NIL_UUID, Lane
from edge_sync.supervisor import ExitReporter, SupervisedActor

_log = logger.bind(component="link")

EDGE_VERSION = edge_pb2.V_4_3_0
SYNC_TIMEOUT_S = 30.0
"""The longest wait for SyncCompletedMsg after a sync request (cloud.rpc.timeout_ms if longer):
a full sync sends every device first."""
TICK_S = 0.05
_RELEASE_INTERVAL_S = 0.25
_RELEASE_EVERY_EVENTS = 2048  # at most a page each: 8 MiB


@dataclass(frozen=True, slots=True)
class _Tick:
    pass


@dataclass(frozen=True, slots=True)
class _ResponseArrived:
    stream_id: int
    msg: Any = field(compare=False)  # edge_pb2.ResponseMsg, handed over by the reader thread


@dataclass(frozen=True, slots=True)
class _WriteFailed:
    """The QueueActor could not record a MarkDeployed / DeadLetter (it was restarting)."""

    command: Any = field(compare=False)


@dataclass(frozen=True, slots=True)
class _StreamEnded:
    stream_id: int
    code: str
    detail: str


def _with_new_reply(command: MarkDeployed | DeadLetter) -> MarkDeployed | DeadLetter:
    """The same state change with a fresh reply future (a failed one cannot be reused)."""
    return dataclasses.replace(command, reply=Future())


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    """Reader thread: report to the actor; after the actor stopped there is no one to tell."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


@dataclass
class _InFlight:
    msg_id: int
    seqs: list[int]
    entities: set[uuid.UUID]
    sensitive: set[uuid.UUID]
    cursor_before: dict[Lane, int]
    sent_at: float


@dataclass
class _Peer:
    max_inbound: int = DEFAULT_MAX_MESSAGE_BYTES
    ordered: bool = False
    dedup: bool = False


class ConnectionActor(SupervisedActor):
    def __init__(
        self,
        report_exit: ExitReporter,
        cfg: CloudLinkConfig,
        store: LmdbStore,
        queue: Address,
        downlinks: Address,
        *,
        metrics: Metrics,
        board: StatusBoard,
        clock: Clock = SYSTEM_CLOCK,
    ) -> None:
        super().__init__(report_exit)
        self._board = board
        self._cfg = cfg
        self._store = store
        self._log_db = EventLog(store)
        self._queue = queue
        self._downlinks = downlinks
        self._clock = clock
        self._sm = LinkStateMachine(on_change=self._state_changed)
        self._backoff = Backoff(BackoffPolicy(
            initial_s=cfg.reconnect.interval_ms / 1000, max_s=cfg.reconnect.max_interval_ms / 1000,
            multiplier=cfg.reconnect.multiplier, jitter=cfg.reconnect.jitter,
            stable_after_s=cfg.reconnect.stable_after_s))
        self._breaker = CircuitBreaker(BreakerPolicy(
            failure_threshold=cfg.circuit_breaker.failure_threshold,
            open_s=cfg.circuit_breaker.open_s))
        self._channel: grpc.Channel | None = None
        self._stream: Stream | None = None
        self._stream_seq = 0
        self._accepted = False
        self._attempt = 0  # attempts since the last accepted connection
        self._deadline = 0.0  # connect / sync deadline
        self._next_attempt = 0.0
        self._peer = _Peer()
        self._identity: tuple[uuid.UUID, uuid.UUID] = (NIL_UUID, NIL_UUID)
        # uplink
        self._next_msg_id = 1
        self._epoch = 0
        self._inflight: OrderedDict[int, _InFlight] = OrderedDict()
        self._cursor: dict[Lane, int] = {Lane.HIGH: 0, Lane.NORMAL: 0}
        self._skip: set[int] = set()
        self._partial_since: float | None = None
        self._resend_at: float | None = None
        self._oldest_attempts = 0
        self._unrecorded: list[MarkDeployed | DeadLetter] = []
        self._read_since_release = 0
        self._skew_warned = False
        self._skew_ms: int | None = None
        self._last_ack_ms: int | None = None
        self._ticker: Ticker | None = None
        self._state_since_ms = clock.now_ms()
        m = metrics
        self._m_connects = m.counter("edge_link_connect_attempts_total", "connection attempts")
        self._m_accepted = m.counter("edge_link_connects_accepted_total", "connections accepted")
        self._m_auth = m.counter("edge_link_bad_credentials_total", "BAD_CREDENTIALS answers")
        self._m_sent = m.counter("edge_uplink_messages_sent_total", "uplink messages sent")
        self._m_events_sent = m.counter("edge_uplink_events_sent_total", "uplink events sent")
        self._m_acked = m.counter("edge_uplink_events_acked_total", "uplink events acknowledged")
        self._m_resends = m.counter("edge_uplink_go_back_n_total", "go-back-N resends")
        self._m_dead = m.counter("edge_uplink_dead_letters_total", "events dead-lettered by the link")
        self._m_breaker = m.counter("edge_link_breaker_opened_total", "circuit breaker openings")
        self._publish()

    # -- lifecycle (actor thread) --------------------------------------------------------------

    def on_start(self) -> None:
        """Actor thread: start ticking and connect at once."""
        with self._store.read() as txn:
            self._identity = self._log_db.identity(txn)
        ref = self.actor_ref
        self._ticker = Ticker("link", TICK_S, lambda: ref.tell(_Tick()))
        self._ticker.start()
        self._connect()

    def on_stop(self) -> None:
        """Actor thread: close the stream and the channel."""
        if self._ticker:
            self._ticker.stop()
        self._close_stream()
        if self._sm.state is not LinkState.DISCONNECTED:
            self._sm.to(LinkState.DISCONNECTED, "agent stopping")
        self._close_channel()
        self._publish()

    # -- messages (actor thread) ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Tick():
                self._tick()
            case _ResponseArrived(stream_id=sid, msg=msg):
                if self._stream is not None and sid == self._stream.id:
                    self._on_response(msg)
            case _StreamEnded(stream_id=sid, code=code, detail=detail):
                if self._stream is not None and sid == self._stream.id:
                    self._on_stream_ended(code, detail)
            case EventsCommitted():
                self._pump()
            case DownlinkApplied():
                self._on_downlink_applied(message)
            case _WriteFailed(command=command):
                self._unrecorded.append(command)
        return None

    # -- connecting ----------------------------------------------------------------------------

    def _connect(self) -> None:
        now = self._clock.monotonic()
        if not self._breaker.allows(now):
            self._next_attempt = self._breaker.reopens_at()
            return
        if self._breaker.state is BreakerState.HALF_OPEN:
            _log.bind(breaker="HALF_OPEN").info("circuit breaker half-open: one probe connection")
        self._m_connects.inc()
        self._attempt += 1
        if self._channel is None:
            self._channel = make_channel(self._cfg)
        self._stream_seq += 1
        ref = self.actor_ref
        self._stream = Stream(
            self._stream_seq, self._channel,
            on_response=lambda sid, msg: _tell(ref, _ResponseArrived(sid, msg)),
            on_end=lambda sid, code, detail: _tell(ref, _StreamEnded(sid, code, detail)),
        )
        self._accepted = False
        self._reset_uplink()
        self._deadline = now + self._cfg.rpc.timeout_ms / 1000
        self._sm.to(LinkState.CONNECTING, f"attempt {self._attempt} to "
                                          f"{self._cfg.rpc.host}:{self._cfg.rpc.port}")
        self._stream.send(edge_pb2.RequestMsg(
            msgType=edge_pb2.CONNECT_RPC_MESSAGE,
            connectRequestMsg=edge_pb2.ConnectRequestMsg(
                edgeRoutingKey=self._cfg.routing_key,
                edgeSecret=self._cfg.routing_secret,
                edgeVersion=EDGE_VERSION,
                maxInboundMessageSize=self._cfg.rpc.max_inbound_message_size,
                edgeTimeMillis=self._clock.now_ms(),
                edgeStoreId=str(self._store.store_id),
            ),
        ))

    def _on_connect_response(self, resp: edge_pb2.ConnectResponseMsg) -> None:
        if self._sm.state is not LinkState.CONNECTING:
            return
        now = self._clock.monotonic()
        if resp.responseCode == edge_pb2.BAD_CREDENTIALS:
            self._m_auth.inc()
            self._close_stream()
            self._close_channel()
            self._next_attempt = now + self._backoff.max_delay()
            self._sm.to(LinkState.AUTH_FAILED,
                        f"cloud refused routing key {self._cfg.routing_key!r}: bad credentials "
                        f"({resp.errorMsg or 'no detail'}); check CLOUD_ROUTING_KEY and "
                        f"CLOUD_ROUTING_SECRET; next attempt in {self._backoff.max_delay():.0f}s")
            return
        if resp.responseCode != edge_pb2.ACCEPTED:
            code = resp.responseCode
            name = (edge_pb2.ConnectResponseCode.Name(code)
                    if code in edge_pb2.ConnectResponseCode.values() else f"unknown code {code}")
            self._fail(f"cloud answered {name}: {resp.errorMsg}")
            return
        self._accepted = True
        self._attempt = 0
        self._m_accepted.inc()
        if self._breaker.state is not BreakerState.CLOSED:
            _log.bind(breaker="CLOSED").info("circuit breaker closed: probe connection accepted")
        self._breaker.record_success()
        self._backoff.connected(now)
        self._peer = _Peer(
            max_inbound=resp.maxInboundMessageSize if resp.HasField("maxInboundMessageSize")
            else DEFAULT_MAX_MESSAGE_BYTES,
            ordered=resp.HasField("cloudCapabilities") and resp.cloudCapabilities.orderedApply,
            dedup=resp.HasField("cloudCapabilities") and resp.cloudCapabilities.dedupBySeq,
        )
        if resp.HasField("cloudCapabilities") and resp.cloudCapabilities.serverTimeMillis:
            self._check_skew(resp.cloudCapabilities.serverTimeMillis)
        c = resp.configuration
        identity = (uuid_of(c.tenantIdMSB, c.tenantIdLSB), uuid_of(c.edgeIdMSB, c.edgeIdLSB))
        full = self._identity[1] == NIL_UUID or identity[1] != self._identity[1]
        if identity != self._identity and identity[1] != NIL_UUID:
            self._queue.tell(SetIdentity(identity[0], identity[1]))
            self._identity = identity
        assert self._stream is not None
        self._stream.send(edge_pb2.RequestMsg(
            msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
            syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=full)))
        self._deadline = now + self._deadline_len(LinkState.SYNCING)
        peer = "ordered, dedup" if self._peer.ordered else "ThingsBoard peer"
        sync = "full" if full else "incremental"
        self._sm.to(LinkState.SYNCING,
                    f"accepted as edge {identity[1]} ({peer}, max message {self._peer.max_inbound} "
                    f"bytes); {sync} sync requested")

    def _on_stream_ended(self, code: str, detail: str) -> None:
        if self._sm.state is LinkState.AUTH_FAILED:
            self._stream = None
            return
        self._fail(f"stream ended: {code}: {detail}")

    def _fail(self, reason: str) -> None:
        """The link failed: close the stream, count the failure, back off."""
        now = self._clock.monotonic()
        self._close_stream()
        self._close_channel()  # the next attempt dials anew: gRPC must not reconnect on its own
        if not self._accepted:
            before = self._breaker.state
            after = self._breaker.record_failure(now)
            if after is BreakerState.OPEN and before is not BreakerState.OPEN:
                self._m_breaker.inc()
                _log.bind(breaker="OPEN", failures=self._breaker.failures).warning(
                    "circuit breaker open after {} failed attempts: next probe in {:.0f}s",
                    self._breaker.failures, self._breaker.policy.open_s)
        self._backoff.disconnected(now)
        delay = self._backoff.next_delay()
        self._next_attempt = now + delay
        if self._breaker.state is BreakerState.OPEN:
            self._next_attempt = max(self._next_attempt, self._breaker.reopens_at())
        self._accepted = False
        self._reset_uplink()
        if self._sm.state in (LinkState.CONNECTING, LinkState.SYNCING, LinkState.CONNECTED):
            self._sm.to(LinkState.BACKOFF,
                        f"{reason}; next attempt in {self._next_attempt - now:.1f}s")

    def _close_channel(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def _close_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    # -- responses -----------------------------------------------------------------------------

    def _on_response(self, msg: edge_pb2.ResponseMsg) -> None:
        if msg.HasField("connectResponseMsg"):
            self._on_connect_response(msg.connectResponseMsg)
        elif msg.HasField("uplinkResponseMsg"):
            self._on_uplink_response(msg.uplinkResponseMsg)
        elif msg.HasField("downlinkMsg"):
            if self._accepted and self._stream is not None:
                if msg.downlinkMsg.HasField("cloudTimeMillis"):
                    self._check_skew(msg.downlinkMsg.cloudTimeMillis)
                self._downlinks.tell(ApplyDownlink(self._stream.id, msg.downlinkMsg))
        elif msg.HasField("edgeUpdateMsg"):
            _log.info("edge configuration update received")

    def _on_downlink_applied(self, done: DownlinkApplied) -> None:
        if self._stream is None or done.stream_id != self._stream.id:
            return  # the stream it came on is gone; the cloud will redeliver it
        self._stream.send(edge_pb2.RequestMsg(
            msgType=edge_pb2.UPLINK_RPC_MESSAGE,
            downlinkResponseMsg=edge_pb2.DownlinkResponseMsg(
                success=done.success, errorMsg=done.error, downlinkMsgId=done.downlink_id)))
        if done.identity is not None and done.identity[1] != NIL_UUID \
                and done.identity != self._identity:
            self._identity = done.identity
            self._queue.tell(SetIdentity(*done.identity))
        if done.sync_completed and self._sm.state is LinkState.SYNCING:
            self._sm.to(LinkState.CONNECTED, "sync completed; uplink starts")
            self._pump()

    # -- uplink --------------------------------------------------------------------------------

    def _reset_uplink(self) -> None:
        self._next_msg_id = 1
        self._epoch += 1
        self._inflight.clear()
        self._cursor = {Lane.HIGH: 0, Lane.NORMAL: 0}
        self._skip.clear()
        self._partial_since = None
        self._resend_at = None
        self._oldest_attempts = 0

    def _pump(self) -> None:
        """Send while the window has room. Actor thread."""
        if self._sm.state is not LinkState.CONNECTED or self._stream is None:
            return
        if self._resend_at is not None:
            return
        cfg = self._cfg
        max_bytes = self._peer.max_inbound
        while len(self._inflight) < cfg.window:
            with self._store.read() as txn:
                events = self._log_db.read_batch(
                    txn, max_events=cfg.batch.size, max_bytes=max_bytes, after=self._cursor)
            # A long drain must not leave the store resident: release a few times a second, and
            # after every few thousand events read, since scattered high-lane events can each
            # sit on their own page.
            self._read_since_release += len(events)
            if self._read_since_release >= _RELEASE_EVERY_EVENTS:
                self._read_since_release = 0
                self._store.release_pages()
            else:
                self._store.release_pages_every(_RELEASE_INTERVAL_S)
            if not events:
                self._partial_since = None
                return
            now = self._clock.monotonic()
            if len(events) < cfg.batch.size and self._inflight:
                if self._partial_since is None:
                    self._partial_since = now
                if now - self._partial_since < cfg.batch.timeout_ms / 1000:
                    return  # wait for the batch to fill (or for the window to drain)
            busy: set[uuid.UUID] = set()
            busy_sensitive: set[uuid.UUID] = set()
            if not self._peer.ordered:
                for f in self._inflight.values():
                    busy |= f.entities
                    busy_sensitive |= f.sensitive
            packed = pack(events, max_bytes=max_bytes, max_events=cfg.batch.size,
                          ordered_peer=self._peer.ordered, busy=busy,
                          busy_sensitive=busy_sensitive, skip=self._skip)
            for event, size in packed.too_large:
                self._dead_letter(event.seq, f"event of {size} bytes exceeds the cloud's "
                                             f"maxInboundMessageSize ({max_bytes} bytes)")
            for event, why in packed.unmappable:
                self._dead_letter(event.seq, f"cannot be sent: {why}")
            if not packed.seqs and not packed.last_seq:
                return  # blocked by an entity in flight (ThingsBoard peer): wait for acks
            cursor_before = dict(self._cursor)
            self._cursor.update(packed.last_seq)
            if not packed.seqs:
                continue
            msg_id = self._next_msg_id
            self._next_msg_id = msg_id + 1 if msg_id < 2**31 - 1 else 1
            packed.msg.uplinkMsgId = msg_id
            packed.msg.uplinkEpoch = self._epoch
            self._inflight[msg_id] = _InFlight(msg_id, packed.seqs, packed.entities,
                                               packed.sensitive_entities, cursor_before, now)
            self._stream.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE,
                                                  uplinkMsg=packed.msg))
            self._m_sent.inc()
            self._m_events_sent.inc(len(packed.seqs))
            self._partial_since = None

    def _on_uplink_response(self, resp: edge_pb2.UplinkResponseMsg) -> None:
        flight = self._inflight.get(resp.uplinkMsgId)
        if flight is None:
            return  # an answer to a message given up by a go-back-N resend
        if resp.success:
            was_oldest = next(iter(self._inflight)) == resp.uplinkMsgId
            del self._inflight[resp.uplinkMsgId]
            self._record(MarkDeployed(tuple(flight.seqs), Future()))
            self._m_acked.inc(len(flight.seqs))
            self._last_ack_ms = self._clock.now_ms()
            if was_oldest:  # the retry count belongs to the oldest unacknowledged message
                self._oldest_attempts = 0
            self._pump()
            return
        rejected = resp.rejectedEdgeSeqId if resp.HasField("rejectedEdgeSeqId") else None
        permanent = resp.HasField("retryable") and not resp.retryable
        if rejected is not None and permanent and rejected in flight.seqs:
            self._dead_letter(rejected, f"rejected by the cloud: {resp.errorMsg}")
            self._go_back(f"message {resp.uplinkMsgId} rejected event seq {rejected}", delay=0.0)
            return
        _log.bind(uplink_id=resp.uplinkMsgId, first_seq=flight.seqs[0]).warning(
            "uplink {} failed: {}", resp.uplinkMsgId, resp.errorMsg or "no detail")
        self._go_back(f"message {resp.uplinkMsgId} failed", delay=self._cfg.retry.interval_ms / 1000)

    def _go_back(self, reason: str, *, delay: float) -> None:
        """Resend everything unacknowledged, in seq order, under a new epoch."""
        if not self._inflight:
            return
        oldest = next(iter(self._inflight.values()))
        self._oldest_attempts += 1
        if self._oldest_attempts > self._cfg.retry.max_retries:
            self._fail(f"uplink seq {oldest.seqs[0]} unacknowledged after "
                       f"{self._cfg.retry.max_retries} resends")
            return
        self._m_resends.inc()
        _log.bind(epoch=self._epoch + 1, from_seq=oldest.seqs[0], attempt=self._oldest_attempts).info(
            "go-back-N: {}; resending from seq {} (attempt {})", reason, oldest.seqs[0],
            self._oldest_attempts)
        self._cursor = dict(oldest.cursor_before)
        self._inflight.clear()
        self._epoch += 1
        self._partial_since = None
        if delay > 0:
            self._resend_at = self._clock.monotonic() + delay
        else:
            self._pump()

    def _dead_letter(self, seq: int, error: str) -> None:
        self._skip.add(seq)
        self._m_dead.inc()
        self._record(DeadLetter(seq, error, Future()))

    def _record(self, command: MarkDeployed | DeadLetter) -> None:
        """Send a state change to the QueueActor; if it cannot take it (restarting), keep it
        and send it again on the next tick, so no acknowledgement is forgotten."""
        ref = self.actor_ref
        reply = command.reply
        assert reply is not None

        def failed(f: Future[Any]) -> None:
            if f.exception() is not None:
                _tell(ref, _WriteFailed(command))

        reply.add_done_callback(failed)
        self._queue.tell(command)

    # -- time ----------------------------------------------------------------------------------

    def _tick(self) -> None:
        now = self._clock.monotonic()
        if self._unrecorded:
            retry, self._unrecorded = self._unrecorded, []
            for command in retry:
                self._record(_with_new_reply(command))
        state = self._sm.state
        if state in (LinkState.BACKOFF, LinkState.AUTH_FAILED, LinkState.DISCONNECTED):
            if now >= self._next_attempt:
                self._connect()
        elif state in (LinkState.CONNECTING, LinkState.SYNCING):
            if now >= self._deadline:
                what = "connect response" if state is LinkState.CONNECTING else "sync completion"
                self._fail(f"no {what} within {self._deadline_len(state):.1f}s")
        elif state is LinkState.CONNECTED:
            if self._resend_at is not None and now >= self._resend_at:
                self._resend_at = None
                self._pump()
            elif self._inflight:
                oldest = next(iter(self._inflight.values()))
                if now - oldest.sent_at >= self._cfg.retry.interval_ms / 1000:
                    self._go_back(f"no answer to message {oldest.msg_id} within "
                                  f"{self._cfg.retry.interval_ms} ms", delay=0.0)
                else:
                    self._pump()
            else:
                self._pump()
        self._publish()

    def _deadline_len(self, state: LinkState) -> float:
        timeout_s = self._cfg.rpc.timeout_ms / 1000
        return timeout_s if state is LinkState.CONNECTING else max(SYNC_TIMEOUT_S, timeout_s)

    def _check_skew(self, cloud_ms: int) -> None:
        skew = self._clock.now_ms() - cloud_ms
        self._skew_ms = skew
        limit = self._cfg.clock_skew_warn_s * 1000
        if abs(skew) > limit and not self._skew_warned:
            self._skew_warned = True
            _log.bind(skew_ms=skew).warning(
                "edge and cloud clocks differ by {:.1f}s (more than {:.0f}s): timestamps may look "
                "out of order in the cloud; ordering uses seq and is unaffected; check NTP",
                skew / 1000, self._cfg.clock_skew_warn_s)
        elif abs(skew) <= limit and self._skew_warned:
            self._skew_warned = False
            _log.bind(skew_ms=skew).info("edge and cloud clocks agree again ({} ms)", skew)

    # -- status --------------------------------------------------------------------------------

    def _state_changed(self, old: LinkState, new: LinkState, reason: str) -> None:
        self._state_since_ms = self._clock.now_ms()
        self._publish()

    def _publish(self) -> None:
        self._board.value = {
            "state": self._sm.state.value,
            "breaker": self._breaker.state.value,
            "cloud": f"{self._cfg.rpc.host}:{self._cfg.rpc.port}",
            "routing_key": self._cfg.routing_key,
            "peer": ("reference cloud (ordered, dedup)" if self._peer.ordered
                     else "ThingsBoard") if self._accepted else None,
            "in_flight_messages": len(self._inflight),
            "epoch": self._epoch,
            "backoff_attempt": self._backoff.attempt,
            "next_attempt_in_s": (round(max(0.0, self._next_attempt - self._clock.monotonic()), 1)
                                  if self._sm.state in (LinkState.BACKOFF, LinkState.AUTH_FAILED)
                                  else None),
            "clock_skew_ms": self._skew_ms,
            "last_ack_ms": self._last_ack_ms,
            "state_since_ms": self._state_since_ms,
        }
