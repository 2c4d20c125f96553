"""The ConnectionActor: owns the gRPC channel and the one handleMsgs stream, and nothing else
does. It connects, syncs (full or incremental as link/state.py sync_mode decides, or when an
operator sends RequestSync; a full sync is announced to the DownlinkActor first), sends the
uplink queue through an UplinkWindow (which decides what is in flight, acknowledged, resent or
dead), passes downlinks to the DownlinkActor and acknowledges them, and reconnects with backoff
behind a circuit breaker. A reader thread per stream only tells it what arrived.

Nothing polls. The queue is read when the QueueActor says new events are durable
(EventsCommitted), when an acknowledgement frees a window slot, and when a deadline passes; one
timer is armed for the next deadline (connect or sync timeout, next attempt, go-back-N resend,
unanswered message, partial batch, retry of a queue write, page release, a held sync request's
time, an operator's sync request unanswered: link/held_sync.py). An idle link reads nothing and
wakes for nothing; gRPC keepalive pings run on their own.

All state lives on the actor's thread. The link's state for status views is published as an
immutable snapshot dict.
"""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import grpc
import pykka
from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.actors.deadline_timer import DeadlineTimer
from edge_sync.actors.messages import (
    Crash,
    DeadLetter,
    EventsCommitted,
    EventsReplayed,
    MarkDeployed,
    SetIdentity,
)
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.common.log_throttle import LogThrottle
from edge_sync.common.wire import Owner, uuid_of
from edge_sync.config import CloudLinkConfig
from edge_sync.errors import EdgeSyncError, InjectedFault, StorageCorrupt
from edge_sync.link.backoff import Backoff, BackoffPolicy
from edge_sync.link.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from edge_sync.link.channel import Stream, make_channel
from edge_sync.link.downlink_actor import ApplyDownlink, DownlinkApplied, FullSyncStarted
from edge_sync.link.held_sync import HeldSync, SyncGate, Unanswered
from edge_sync.link.offline import judge_offline
from edge_sync.link.peer_text import MAX_LOGGED_ERROR_CHARS, one_line, rejection_reason
from edge_sync.link.sent_events import SentEvents
from edge_sync.link.state import (
    LinkState,
    LinkStateMachine,
    RequestSync,
    StatusBoard,
    edge_version,
    sync_mode,
)
from edge_sync.link.uplink_window import GiveUp, GoBack, Retry, UplinkWindow, WindowPolicy
from edge_sync.logsetup import redact
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import GraphStore, SyncState
from edge_sync.storage.link_contact import LinkContact
from edge_sync.storage.records import NIL_UUID, Lane
from edge_sync.supervisor import ExitReporter, SupervisedActor

_log = logger.bind(component="link")

EDGE_VERSION = edge_pb2.V_4_3_0
SYNC_TIMEOUT_S = 30.0
"""The longest wait for progress while waiting for SyncCompletedMsg (cloud.rpc.timeout_ms if
longer): the wait restarts on every downlink of the sync applied for the first time, so a long
full sync that keeps sending new downlinks is never cut; a silent one, or one that only
redelivers a downlink the edge refuses (or has applied already), times out."""
_RELEASE_INTERVAL_S = 0.25
_RELEASE_EVERY_EVENTS = 2048  # at most a page each: 8 MiB
_REWRITE_RETRY_S = 0.05  # a queue write refused while the QueueActor restarts: try again after
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
                     3600.0, 21600.0, 86400.0)
"""``edge_sync_sync_latency_seconds``' buckets: sub-second while connected, the health
thresholds (5 s healthy, 30 s warning), and minutes to a day for a drain after an outage."""
UNDECODABLE_LOG_INTERVAL_S = 60.0
"""At most one line per this long for messages from the cloud that are not valid protobuf (each
ends its stream, and the link reconnects): the first is logged, the others counted
(``edge_sync_cloud_undecodable_messages_total``) and told in one line when the minute ends."""
ROUND_TRIP_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""``edge_sync_uplink_ack_seconds``' buckets: an uplink message's send to its acknowledgement,
the network's and the cloud's share of the latency (1 s: the network quality alert)."""


@dataclass(frozen=True, slots=True)
class _Wake:
    """The deadline timer: some deadline may have passed."""


@dataclass(frozen=True, slots=True)
class _ResponseArrived:
    stream_id: int
    msg: Any = field(compare=False)  # edge_pb2.ResponseMsg, handed over by the reader thread


@dataclass(frozen=True, slots=True)
class _Undecodable:
    """The reader's decoder: a response that is not a valid ResponseMsg (gRPC ends the call)."""

    stream_id: int
    error: str


@dataclass(frozen=True, slots=True)
class _WriteFailed:
    """The QueueActor could not record a MarkDeployed / DeadLetter (it was restarting)."""

    command: Any = field(compare=False)


@dataclass(frozen=True, slots=True)
class _WritesSettled:
    """A MarkDeployed / DeadLetter committed while a replay waits for every one to be."""


@dataclass(frozen=True, slots=True)
class _StreamEnded:
    stream_id: int
    code: str
    detail: str


def _with_new_reply(command: MarkDeployed | DeadLetter) -> MarkDeployed | DeadLetter:
    """The same state change with a fresh reply future (a failed one cannot be reused)."""
    return dataclasses.replace(command, reply=Future())


def _dead_reason(why: str) -> str:
    """The ``reason`` label of an event no message can carry (uplink_window's ``_refused``)."""
    return "too_large" if "maxInboundMessageSize" in why else "unsendable"


def _tell(ref: pykka.ActorRef[Any], message: Any) -> None:
    """Reader thread: report to the actor; after the actor stopped there is no one to tell."""
    with contextlib.suppress(pykka.ActorDeadError):
        ref.tell(message)


def window_policy(cfg: CloudLinkConfig) -> WindowPolicy:
    """The uplink window's policy from ``cloud.*`` (window, batch, retry)."""
    return WindowPolicy(
        window=cfg.window, batch_size=cfg.batch.size, batch_timeout_s=cfg.batch.timeout_ms / 1000,
        retry_interval_s=cfg.retry.interval_ms / 1000, max_retries=cfg.retry.max_retries,
        ack_timeout_s=cfg.retry.ack_timeout_ms / 1000,
        permanent_after=cfg.retry.permanent_after)


@dataclass
class _Peer:
    max_inbound: int = DEFAULT_MAX_MESSAGE_BYTES
    ordered: bool = False
    dedup: bool = False


class ConnectionActor(SupervisedActor):
    label = "connection"  # as its Address names it (log lines, Unavailable errors)

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
        version: str | None = None,
    ) -> None:
        super().__init__(report_exit)
        self._board = board
        self._graph = GraphStore(store)
        self._version = version if version is not None else edge_version()
        self._syncs_sent = 0  # sync requests sent on the current stream
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
        self._sync_started = 0.0
        # the last sync this process asked for (status: full or not, why, when, how long)
        self._last_sync: dict[str, Any] | None = None
        self._gate = SyncGate()  # when an operator's sync request may go out; the one held
        self._sync_downlinks = 0  # downlinks received during the current sync
        self._sync_applied = 0  # ... applied for the first time (the sync's progress)
        self._next_attempt = 0.0
        self._peer = _Peer()
        self._identity: tuple[uuid.UUID, uuid.UUID] = (NIL_UUID, NIL_UUID)
        self._customer = NIL_UUID  # the edge's customer, from the latest EdgeConfiguration
        # the device profiles the cloud synced (name -> id): Device JSON's deviceProfileId
        self._device_profiles: Mapping[str, uuid.UUID] = {}
        self._window = UplinkWindow(window_policy(cfg))
        self._unrecorded: list[MarkDeployed | DeadLetter] = []
        self._writes: list[Future[Any]] = []  # MarkDeployed / DeadLetter replies not yet done
        self._watched: set[int] = set()  # ids of those that tell the actor when done
        self._rewrite_at = 0.0
        self._read_since_release = 0
        self._released_at = clock.monotonic()
        self._pages_read = False  # read since the last release
        self._skew_warned = False
        self._skew_ms: int | None = None
        self._last_ack_ms: int | None = None
        self._timer: DeadlineTimer | None = None
        self._committed_next = 0  # next_seq of the latest EventsCommitted
        self._read_next = 0  # ... as it was at the latest read
        self._state_since_ms = clock.now_ms()
        self._contact = LinkContact(store)  # the last contact with the cloud (on disk)
        # since when the link is down: lost, or not connected yet (monotonic, and wall clock)
        self._down_since: float | None = clock.monotonic()
        self._down_since_ms: int | None = self._state_since_ms
        self._sent_events = SentEvents()  # lanes and created times until acknowledged
        self._sync_latency_ms: int | None = None  # max of the last acknowledged batch
        m = metrics
        self._m_connects = m.counter("edge_sync_link_connect_attempts_total", "connection attempts")
        self._m_accepted = m.counter("edge_sync_link_connects_accepted_total",
                                     "connections accepted")
        self._m_auth = m.counter("edge_sync_link_bad_credentials_total", "BAD_CREDENTIALS answers")
        self._m_sent = m.counter("edge_sync_uplink_messages_sent_total", "uplink messages sent")
        self._m_events_sent = m.counter("edge_sync_uplink_events_sent_total",
                                        "uplink events sent (resends included)")
        events = m.counter(  # the queue counts the other outcomes (actors/queue_actor.py)
            "edge_sync_events_total", "events by lane and outcome: appended (made durable), "
            "refused (storage full), evicted (evict_oldest_normal), dead_lettered, acked",
            ("lane", "outcome"))
        self._m_acked_high = events.labels(lane="high", outcome="acked")
        self._m_acked_normal = events.labels(lane="normal", outcome="acked")
        resends = m.counter("edge_sync_uplink_resends_total", "uplink resends by kind: go_back_n "
                            "(from the oldest unacknowledged event on), message (one failed "
                            "message, for a peer without ordered apply)", ("kind",))
        self._m_go_back_n = resends.labels(kind="go_back_n")
        self._m_resend_message = resends.labels(kind="message")
        self._m_dead = m.counter(
            "edge_sync_dead_letters_total", "events the link dead-lettered, by reason: too_large "
            "(over the cloud's maxInboundMessageSize), unsendable (no message can carry it), "
            "rejected (the cloud refused it for good), failed (permanent failures of it alone)",
            ("reason",))
        self._m_breaker = m.counter("edge_sync_link_breaker_opened_total",
                                    "circuit breaker openings")
        self._m_undecodable = m.counter(
            "edge_sync_cloud_undecodable_messages_total", "messages from the cloud that are not "
            "a valid protobuf ResponseMsg (each ended its stream: the link reconnected)")
        self._undecodable = LogThrottle(UNDECODABLE_LOG_INTERVAL_S)
        self._m_latency = m.histogram(
            "edge_sync_sync_latency_seconds", "accept-to-acknowledge latency of uplink events: "
            "the cloud's acknowledgement time minus the event's created_time", LATENCY_BUCKETS_S)
        self._m_round_trip = m.histogram(
            "edge_sync_uplink_ack_seconds", "send-to-acknowledgement time of uplink messages "
            "(a resend is a message of its own; an answer to a message given up is not timed)",
            ROUND_TRIP_BUCKETS_S)
        self._publish()

    # -- lifecycle (actor thread) --------------------------------------------------------------

    def on_start(self) -> None:
        """Actor thread: start the deadline timer and connect at once."""
        with self._store.read() as txn:
            self._identity = self._log_db.identity(txn)
            self._device_profiles = EntityStore(self._store).device_profile_ids(txn)
        ref = self.actor_ref
        self._timer = DeadlineTimer("link", lambda: _tell(ref, _Wake()))
        self._connect()
        self._arm()
        self._publish()

    def on_stop(self) -> None:
        """Actor thread: close the stream and the channel."""
        self._wind_down("agent stopping")

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        """Actor thread, after an unhandled exception (or one in ``on_start``): as ``on_stop``.
        Otherwise this incarnation's timer thread, its stream's threads and its channel (a TCP
        connection with keepalives) would outlive it, for each crash; its successor opens its
        own."""
        what = exception_type.__name__ if exception_type is not None else "a failure"
        self._wind_down(f"link restarting after {what}")

    def _wind_down(self, why: str) -> None:
        if self._timer:
            self._timer.stop()
        self._tell_undecodable(self._undecodable.flush())  # a burst is told in full
        self._close_stream()
        if self._sm.state is not LinkState.DISCONNECTED:
            self._sm.to(LinkState.DISCONNECTED, why)
        self._close_channel()
        self._publish()

    # -- messages (actor thread) ---------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case _Wake():
                self._on_time()
            case _ResponseArrived(stream_id=sid, msg=msg):
                if self._stream is not None and sid == self._stream.id:
                    self._on_response(msg)
            case _Undecodable(error=error):  # counted whichever stream it ended
                self._on_undecodable(error)
            case _StreamEnded(stream_id=sid, code=code, detail=detail):
                if self._stream is not None and sid == self._stream.id:
                    self._on_stream_ended(code, detail)
            case EventsCommitted(next_seq=next_seq):
                self._committed_next = next_seq
                if not (self._window.waiting_for_batch
                        and next_seq - self._read_next < self._cfg.batch.size):
                    self._pump()  # else: not a batch's worth yet; the batch deadline reads
            case EventsReplayed(seqs=seqs):  # the operator's replay: below the read cursor
                self._window.replayed([(seq, Lane(lane)) for seq, lane in seqs])
                self._pump()
            case _WritesSettled():
                if self._window.rewind_pending:
                    self._pump()
            case DownlinkApplied():
                self._on_downlink_applied(message)
            case RequestSync():
                self._on_request_sync(message)
            case _WriteFailed(command=command):
                if not self._unrecorded:
                    self._rewrite_at = self._clock.monotonic() + _REWRITE_RETRY_S
                self._unrecorded.append(command)
            case Crash(reason=reason):
                raise InjectedFault(f"link: {reason}")
        self._arm()
        self._publish()
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
            on_undecodable=lambda sid, error: _tell(ref, _Undecodable(sid, error)),
        )
        self._accepted = False
        self._syncs_sent = 0
        self._window.reset()
        self._sent_events.clear()
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

    def _refusal_text(self, error: str) -> str:
        """A connect refusal's errorMsg as the edge logs it: one line, bounded, and without the
        routing secret, which ThingsBoard quotes back when it refuses it (EdgeGrpcSession
        .processConnect: "Failed to validate the edge! Provided request secret: <secret>")."""
        secret = self._cfg.routing_secret
        if secret and secret in error:
            error = error.replace(secret, redact(secret))
        return one_line(error or "no detail", MAX_LOGGED_ERROR_CHARS)

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
                        f"({self._refusal_text(resp.errorMsg)}); "
                        "check CLOUD_ROUTING_KEY and "
                        f"CLOUD_ROUTING_SECRET; next attempt in {self._backoff.max_delay():.0f}s")
            return
        if resp.responseCode != edge_pb2.ACCEPTED:
            code = resp.responseCode
            name = (edge_pb2.ConnectResponseCode.Name(code)
                    if code in edge_pb2.ConnectResponseCode.values() else f"unknown code {code}")
            self._fail(f"cloud answered {name}: "
                       f"{self._refusal_text(resp.errorMsg)}")
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
        last_contact = None
        try:
            with self._store.read() as txn:
                state = self._graph.sync_state(txn)
                last_contact = self._contact.last_ms(txn)
        except StorageCorrupt as exc:  # a full sync rewrites it
            state = SyncState(damaged=str(exc))
        offline = judge_offline(last_contact_ms=last_contact, now_ms=self._clock.now_ms(),
                                full_after_hours=self._cfg.sync.full_after_offline_hours)
        full, why = sync_mode(stored_edge=self._identity[1], connected_edge=identity[1],
                              state=state, version=self._version, offline=offline)
        if identity != self._identity and identity[1] != NIL_UUID:
            self._queue.tell(SetIdentity(identity[0], identity[1]))
            self._identity = identity
        self._customer = uuid_of(c.customerIdMSB, c.customerIdLSB)
        self._send_sync_request(full, why)
        self._gate.stream_syncing()
        self._deadline = now + self._deadline_len(LinkState.SYNCING)
        self._sync_started = now
        self._sync_downlinks = 0
        self._sync_applied = 0
        peer = "ordered, dedup" if self._peer.ordered else "ThingsBoard peer"
        sync = "full" if full else "incremental"
        self._sm.to(LinkState.SYNCING,
                    f"accepted as edge {identity[1]} ({peer}, max message {self._peer.max_inbound} "
                    f"bytes); {sync} sync requested: {why}")

    def _send_sync_request(self, full: bool, why: str) -> None:
        """SyncRequestMsg on the current stream; a full one is announced to the DownlinkActor
        first, so FullSyncStarted precedes every downlink of that sync in its mailbox."""
        assert self._stream is not None
        if full:
            self._downlinks.tell(FullSyncStarted(self._stream.id, why, self._syncs_sent))
        _send_sync(self._stream, full)
        self._syncs_sent += 1
        self._last_sync = {"full": full, "reason": why, "requested_ms": self._clock.now_ms(),
                           "completed_ms": None, "downlinks": None, "took_s": None,
                           "pending": self._pending()}

    def _pending(self) -> dict[str, Any] | None:
        """The held request as status shows it."""
        return self._gate.held.view() if self._gate.held is not None else None

    def _send_operator_sync(self, request: HeldSync) -> None:
        """An operator's request (merged ones, maybe) on the connected stream, timed: the
        cloud must answer it within the sync deadline (link/held_sync.py)."""
        self._send_sync_request(request.full, f"requested: {request.reason}")
        self._gate.sent(request, self._clock.monotonic(), self._deadline_len(LinkState.SYNCING))

    def _on_request_sync(self, request: RequestSync) -> None:
        """An operator's sync request: a full one is recorded first (durable until a full sync
        completes); with the link up the request goes on the current stream at once, unless a
        sync is running on it or completed less than RELEASE_DELAY_S ago: then it is held until
        then (link/held_sync.py: ThingsBoard ignores a request while its sync runs, and never
        answers it)."""
        kind = "full" if request.full else "incremental"
        log = _log.bind(full=request.full, reason=request.reason)
        if request.full:
            try:
                self._store.write(lambda txn: self._graph.request_full_sync(txn, request.reason),
                                  maintenance=True)
            except EdgeSyncError as exc:
                log.error("full sync request not recorded: {}", exc)
        up = (self._accepted and self._stream is not None
              and self._sm.state in (LinkState.SYNCING, LinkState.CONNECTED))
        if not up:
            log.info("{} sync requested ({}); the link is {}: {}", kind, request.reason,
                     self._sm.state.value, "asked for at the next connect" if request.full
                     else "the next connect syncs anyway")
            return
        assert self._stream is not None and self._last_sync is not None
        now, now_ms = self._clock.monotonic(), self._clock.now_ms()
        if self._gate.may_send(now):
            log.info("{} sync requested ({}): SyncRequestMsg sent", kind, request.reason)
            self._send_operator_sync(HeldSync(request.full, request.reason, now_ms,
                                              self._stream.id))
            return
        quiet_in = self._gate.quiet_in(now)
        held = self._gate.hold(full=request.full, reason=request.reason, now_ms=now_ms,
                               stream_id=self._stream.id)
        last = "full" if self._last_sync["full"] else "incremental"
        pending = "full" if held.full else "incremental"
        if quiet_in is None:
            log.info("{} sync requested ({}): deferred until the {} sync under way completes (a "
                     "cloud ignores a sync request while it syncs); {} sync pending", kind,
                     request.reason, last, pending)
        else:
            log.info("{} sync requested ({}): deferred {:.1f}s, the {} sync having just completed "
                     "(a cloud may not count it as over yet); {} sync pending", kind,
                     request.reason, quiet_in, last, pending)
        self._last_sync = {**self._last_sync, "pending": held.view()}

    def _on_undecodable(self, error: str) -> None:
        """The cloud sent bytes that are not a ResponseMsg: counted, and logged at most once a
        minute (the others told in one line when that minute ends, or before the next line);
        gRPC ends the stream (its end comes next, and the link reconnects)."""
        self._m_undecodable.inc()
        log_now, told = self._undecodable.event(self._clock.monotonic())
        self._tell_undecodable(told)
        if log_now:
            _log.bind(error=error).warning(
                "the cloud sent a message that is not valid protobuf ({}): the stream ends and "
                "the link reconnects; further ones within a minute are only counted "
                "(edge_sync_cloud_undecodable_messages_total) and told in one line", error)

    def _tell_undecodable(self, count: int) -> None:
        if count:
            _log.bind(count=count).warning(
                "{} more undecodable messages from the cloud in the last minute", count)

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
        self._window.reset()
        self._sent_events.clear()
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
                if self._sm.state is LinkState.SYNCING:
                    self._sync_received()
                if msg.downlinkMsg.HasField("cloudTimeMillis"):
                    self._check_skew(msg.downlinkMsg.cloudTimeMillis)
                self._downlinks.tell(ApplyDownlink(  # ThingsBoard: relations come on request
                    self._stream.id, msg.downlinkMsg, peer_ordered=self._peer.ordered))
        elif msg.HasField("edgeUpdateMsg"):
            _log.info("edge configuration update received")

    def _on_downlink_applied(self, done: DownlinkApplied) -> None:
        if done.device_profiles is not None:  # committed, whatever became of its stream
            self._device_profiles = done.device_profiles
        if self._stream is None or done.stream_id != self._stream.id:
            return  # the stream it came on is gone; the cloud will redeliver it
        self._stream.send(edge_pb2.RequestMsg(
            msgType=edge_pb2.UPLINK_RPC_MESSAGE,
            downlinkResponseMsg=done.response()))
        if done.identity is not None and done.identity[1] != NIL_UUID:
            self._customer = done.customer_id or NIL_UUID
            if done.identity != self._identity:
                self._identity = done.identity
                self._queue.tell(SetIdentity(*done.identity))
        # the requested sync is over at its own SyncCompletedMsg, not at a redelivery of one
        completed = (done.sync_completed and not done.duplicate and self._last_sync is not None
                     and self._last_sync["completed_ms"] is None)
        if completed and self._last_sync is not None:
            took_ms = self._clock.now_ms() - self._last_sync["requested_ms"]
            self._last_sync = {**self._last_sync, "completed_ms": self._clock.now_ms(),
                               "downlinks": (self._sync_downlinks
                                             if self._sm.state is LinkState.SYNCING else None),
                               "took_s": took_ms / 1000}
        if completed:  # a held request goes RELEASE_DELAY_S later (held_sync.py)
            self._gate.completed(self._clock.monotonic())
        if self._sm.state is LinkState.SYNCING:
            if done.sync_completed:
                took = self._clock.monotonic() - self._sync_started
                self._sm.to(LinkState.CONNECTED, f"sync completed ({self._sync_downlinks} "
                                                 f"downlinks in {took:.1f}s); uplink starts")
                self._pump()
            elif done.success and not done.duplicate:
                self._sync_progress(done.downlink_id)
        elif done.success and not done.duplicate and not done.sync_completed:
            # progress of a sync asked for while connected, if one is unanswered
            self._gate.progress(self._clock.monotonic(), self._deadline_len(LinkState.SYNCING),
                                peer_answers_every_request=self._peer.ordered)

    def _sync_requests_due(self, now: float) -> None:
        """CONNECTED: a sync request the cloud did not answer in time, a held request whose
        time has come."""
        wait_s = self._deadline_len(LinkState.SYNCING)
        unanswered = self._gate.unanswered(now, wait_s)
        if unanswered is not None:
            self._sync_unanswered(unanswered, wait_s)
            if self._sm.state is not LinkState.CONNECTED:
                return
        held = self._gate.release(now)
        if held is not None:
            self._release_held_sync(held)

    def _sync_unanswered(self, unanswered: Unanswered, wait_s: float) -> None:
        """No SyncCompletedMsg within the sync deadline: the cloud ignored the request. Sent
        again once, as the same request (no new full sync generation, not counted as another
        request on the stream: held_sync.py); ignored again, the cloud's session syncs no more
        and the link reconnects (a full request is durable: the connect asks for it)."""
        asked = unanswered.request
        kind = "full" if asked.full else "incremental"
        log = _log.bind(full=asked.full, reason=asked.reason, requests=asked.requests)
        if not unanswered.again:  # logged with the state change
            self._fail(f"no answer to the {kind} sync request ({asked.reason}) sent twice, "
                       f"{wait_s:.0f}s each: a new cloud session syncs")
            return
        log.warning("no answer to the {} sync request ({}) within {:.0f}s: the cloud ignored it "
                    "(ThingsBoard does while it counts its previous sync as running); "
                    "SyncRequestMsg sent again", kind, asked.reason, wait_s)
        assert self._stream is not None
        _send_sync(self._stream, asked.full)  # the same request: no new count, no new record

    def _release_held_sync(self, held: HeldSync) -> None:
        """The last sync on the current stream completed RELEASE_DELAY_S ago: send the request
        held meanwhile, unless it was held on an earlier stream and the sync the reconnect
        asked for covered it."""
        assert self._stream is not None and self._last_sync is not None
        kind = "full" if held.full else "incremental"
        log = _log.bind(full=held.full, reason=held.reason, requests=held.requests)
        if held.release(self._stream.id, bool(self._last_sync["full"])) == "covered":
            log.info("deferred {} sync ({}) not sent: the sync after the reconnect covered it",
                     kind, held.reason)
            self._last_sync = {**self._last_sync, "pending": None}
            return
        log.info("deferred {} sync ({}): the sync under way completed; SyncRequestMsg sent",
                 kind, held.reason)
        if held.full:  # durable again: a full sync that just completed cleared the request
            try:
                self._store.write(lambda txn: self._graph.request_full_sync(txn, held.reason),
                                  maintenance=True)
            except EdgeSyncError as exc:
                log.error("full sync request not recorded: {}", exc)
        self._send_operator_sync(held)

    def _sync_received(self) -> None:
        """A downlink arrived during the sync: counted; only applying it is progress."""
        self._sync_downlinks += 1
        if self._sync_downlinks == 1:
            _log.info("sync in progress: downlinks arriving; the wait for its completion restarts "
                      "on each one applied ({:.0f}s without one ends it)",
                      self._deadline_len(LinkState.SYNCING))

    def _sync_progress(self, downlink_id: int) -> None:
        """A downlink of the sync applied for the first time (not a redelivery, not refused):
        the sync is making progress, so the wait for SyncCompletedMsg starts again."""
        self._sync_applied += 1
        self._deadline = self._clock.monotonic() + self._deadline_len(LinkState.SYNCING)
        _log.bind(downlink_id=downlink_id, applied=self._sync_applied).debug(
            "sync downlink {} applied ({} so far): the sync deadline restarts", downlink_id,
            self._sync_applied)

    # -- uplink --------------------------------------------------------------------------------

    def _pump(self) -> None:
        """Read and send while the window wants events. Actor thread."""
        if self._sm.state is not LinkState.CONNECTED or self._stream is None:
            return
        cfg = self._cfg
        max_bytes = self._peer.max_inbound
        now = self._clock.monotonic()
        # the tenant at send time: events recorded before the first connect get it too
        owner = Owner.of(self._identity[0], self._customer, self._device_profiles)
        settled = self._writes_settled() if self._window.rewind_pending else True
        while self._window.wants_events(now, writes_settled=settled):
            took = None if self._peer.ordered else self._window.take_resend(
                now, max_bytes=max_bytes, owner=owner)  # a resend reads nothing
            if took is None:
                self._read_next = self._committed_next
                with self._store.read() as txn:
                    events = self._log_db.read_batch(
                        txn, max_events=cfg.batch.size, max_bytes=max_bytes,
                        after=self._window.cursor)
                self._pages_after_read(len(events), now)
                self._sent_events.read(events)
                took = self._window.take(events, now, max_bytes=max_bytes,
                                         ordered_peer=self._peer.ordered, owner=owner)
            for seq, reason in took.dead:
                self._m_dead.labels(reason=_dead_reason(reason)).inc()
                self._sent_events.forget(seq)
                self._record(DeadLetter(seq, reason, Future()))
            if took.msg is not None:
                self._stream.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE,
                                                      uplinkMsg=took.msg))
                self._m_sent.inc()
                self._m_events_sent.inc(len(took.seqs))
            if not took.more:
                return

    def _pages_after_read(self, events: int, now: float) -> None:
        """A long drain must not leave the store resident: release a few times a second, and
        after every few thousand events read, since scattered high-lane events can each sit on
        their own page. The last release after a drain is a deadline of its own."""
        self._read_since_release += events
        self._pages_read = True
        if (self._read_since_release >= _RELEASE_EVERY_EVENTS
                or now - self._released_at >= _RELEASE_INTERVAL_S):
            self._release_pages(now)

    def _release_pages(self, now: float) -> None:
        self._store.release_pages()
        self._released_at = now
        self._read_since_release = 0
        self._pages_read = False

    def _on_uplink_response(self, resp: edge_pb2.UplinkResponseMsg) -> None:
        now = self._clock.monotonic()
        if resp.success:
            sent = self._window.flight(resp.uplinkMsgId)
            late = sent is None
            seqs = self._window.on_ack(resp.uplinkMsgId)
            if seqs is None:
                return  # an answer to a message given up by a go-back-N resend
            if sent is not None:
                self._m_round_trip.observe_many((max(0.0, now - sent.sent_at),))
            if late:  # a message resent after its ack timeout, answered after all
                _log.bind(uplink_id=resp.uplinkMsgId, first_seq=seqs[0] if seqs else None).info(
                    "uplink {} answered after it was resent: {} events settled, not resent again",
                    resp.uplinkMsgId, len(seqs))
            now_ms = self._clock.now_ms()
            if seqs:  # empty: settled already by a late answer to an earlier send
                self._record(MarkDeployed(seqs, Future()))
                self._count_acked(seqs, now_ms)
            self._last_ack_ms = now_ms
            self._pump()
            return
        rejected = resp.rejectedEdgeSeqId if resp.HasField("rejectedEdgeSeqId") else None
        retryable = resp.retryable if resp.HasField("retryable") else None
        flight = self._window.flight(resp.uplinkMsgId)
        verdict = self._window.on_failure(resp.uplinkMsgId, now, rejected_seq=rejected,
                                          retryable=retryable, error=resp.errorMsg)
        if verdict is None:
            return
        if isinstance(verdict, Retry):
            self._retry(verdict, resp.errorMsg or "no detail")
            self._pump()
            return
        if verdict.dead_seq is not None:
            reason = f"message {resp.uplinkMsgId} rejected event seq {verdict.dead_seq}"
            self._m_dead.labels(reason="rejected").inc()
            self._sent_events.forget(verdict.dead_seq)
            self._record(DeadLetter(verdict.dead_seq, rejection_reason(resp.errorMsg), Future()))
        else:
            reason = f"message {resp.uplinkMsgId} failed"
            _log.bind(uplink_id=resp.uplinkMsgId,
                      first_seq=flight.seqs[0] if flight else None).warning(
                "uplink {} failed: {}", resp.uplinkMsgId,
                one_line(resp.errorMsg or "no detail", MAX_LOGGED_ERROR_CHARS))
        self._went_back(verdict, reason)

    def _count_acked(self, seqs: Sequence[int], now_ms: int) -> None:
        """Count an acknowledged batch by lane and observe its latencies (one lock each)."""
        acked = self._sent_events.acked(seqs, now_ms)
        if acked.high:
            self._m_acked_high.inc(acked.high)
        if acked.normal:
            self._m_acked_normal.inc(acked.normal)
        if acked.latencies_s:
            self._m_latency.observe_many(acked.latencies_s)
            self._sync_latency_ms = acked.max_latency_ms

    def _retry(self, r: Retry, error: str) -> None:
        """Act on an unordered peer's resend of one message: dead letters first, then the log
        line saying what happens to the rest. ``error`` is the cloud's text: logged on one
        line, bounded."""
        error = one_line(error, MAX_LOGGED_ERROR_CHARS)
        for d in r.dead:
            self._m_dead.labels(reason="rejected" if r.cause == "rejected" else "failed").inc()
            self._sent_events.forget(d.seq)
            _log.bind(seq=d.seq, entity_type=d.entity_type, entity_id=str(d.entity_id),
                      uplink_id=r.msg_id).warning(
                "uplink event seq {} ({} {}) dead-lettered: {}", d.seq, d.entity_type,
                d.entity_id, one_line(d.reason, MAX_LOGGED_ERROR_CHARS))
            self._record(DeadLetter(d.seq, d.reason, Future()))
        if not r.seqs:
            return
        self._m_resend_message.inc()
        p = self._window.policy
        first, last, n = r.seqs[0], r.seqs[-1], len(r.seqs)
        delay = max(0.0, r.resend_at - self._clock.monotonic())
        log = _log.bind(uplink_id=r.msg_id, first_seq=first, attempt=r.attempt, reason=r.cause)
        if r.cause == "unanswered":
            log.warning("no answer to uplink {} within {} ms: resending only it (seqs {}..{}, "
                        "resend {}/{})", r.msg_id, self._cfg.retry.ack_timeout_ms, first, last,
                        r.attempt, p.max_retries)
        elif r.cause == "transient":
            log.warning("uplink {} failed, transient: {}; resending its {} events (seqs {}..{}) "
                        "in {:.1f}s (resend {}/{})", r.msg_id, error, n, first, last, delay,
                        r.attempt, p.max_retries)
        elif r.cause == "rejected":
            log.warning("uplink {} rejected an event: resending its other {} events now",
                        r.msg_id, n)
        elif r.isolated:
            log.warning("uplink {} failed {} times: {}; resending its {} events (seqs {}..{}) one "
                        "per message in {:.1f}s to find the one refused", r.msg_id, r.attempt,
                        error, n, first, last, delay)
        else:
            log.warning("uplink {} failed ({}/{}): {}; resending its {} events (seqs {}..{}) in "
                        "{:.1f}s", r.msg_id, r.attempt, p.permanent_after, error, n, first, last,
                        delay)

    def _went_back(self, verdict: GoBack | GiveUp, reason: str) -> None:
        """Act on the window's go-back-N verdict: resend (now or at its time), or reconnect."""
        if isinstance(verdict, GiveUp):
            self._fail(f"uplink seq {verdict.seq} unacknowledged after {verdict.retries} resends")
            return
        self._m_go_back_n.inc()
        _log.bind(epoch=verdict.epoch, from_seq=verdict.from_seq, attempt=verdict.attempt).info(
            "go-back-N: {}; resending from seq {} (attempt {})", reason, verdict.from_seq,
            verdict.attempt)
        if verdict.resend_at is None:
            self._pump()

    def _record(self, command: MarkDeployed | DeadLetter) -> None:
        """Send a state change to the QueueActor; if it cannot take it (restarting), keep it
        and send it again shortly, so no acknowledgement is forgotten."""
        ref = self.actor_ref
        reply = command.reply
        assert reply is not None

        def failed(f: Future[Any]) -> None:
            if f.exception() is not None:
                _tell(ref, _WriteFailed(command))

        reply.add_done_callback(failed)
        if len(self._writes) >= 256:  # pruned here too: without a replay nothing else reads it
            self._writes = [f for f in self._writes if not f.done()]
        self._writes.append(reply)
        if self._window.rewind_pending:
            self._watch_write(reply)
        self._queue.tell(command)

    def _watch_write(self, reply: Future[Any]) -> None:
        """Tell the actor when ``reply`` is done (once per reply)."""
        if id(reply) in self._watched:
            return
        self._watched.add(id(reply))
        ref = self.actor_ref
        reply.add_done_callback(lambda _f: _tell(ref, _WritesSettled()))

    def _writes_settled(self) -> bool:
        """Every MarkDeployed / DeadLetter told to the queue is committed (a replay's rewind
        waits for it: an event acknowledged a moment ago is still PENDING in the store until
        then). When not, each outstanding one tells the actor once it is done."""
        self._writes = [f for f in self._writes if not f.done()]
        self._watched &= {id(f) for f in self._writes}
        if not self._writes and not self._unrecorded:
            return True
        for f in self._writes:
            self._watch_write(f)
        return False

    # -- time ----------------------------------------------------------------------------------

    def _on_time(self) -> None:
        """The timer fired: act on every deadline that has passed."""
        now = self._clock.monotonic()
        self._tell_undecodable(self._undecodable.take(now))
        if self._unrecorded and now >= self._rewrite_at:
            retry, self._unrecorded = self._unrecorded, []
            for command in retry:
                self._record(_with_new_reply(command))
        if self._pages_read and now - self._released_at >= _RELEASE_INTERVAL_S:
            self._release_pages(now)
        state = self._sm.state
        if state in (LinkState.BACKOFF, LinkState.AUTH_FAILED, LinkState.DISCONNECTED):
            if now >= self._next_attempt:
                self._connect()
        elif state in (LinkState.CONNECTING, LinkState.SYNCING):
            if now >= self._deadline:
                if state is LinkState.CONNECTING:
                    self._fail(f"no connect response within {self._deadline_len(state):.1f}s")
                else:
                    self._fail(f"no sync completion: no new downlink applied for "
                               f"{self._deadline_len(state):.1f}s ({self._sync_downlinks} "
                               f"downlinks received during the sync, {self._sync_applied} "
                               f"applied)")
        elif state is LinkState.CONNECTED:
            self._sync_requests_due(now)
            if self._sm.state is not LinkState.CONNECTED:
                return  # reconnecting
            due = self._window.next_deadline()
            if due is None or now < due:
                return  # another deadline woke us (a page release, a queue write): no read
            while (oldest := self._window.oldest()) is not None:
                verdict = self._window.expire(now)
                if verdict is None:
                    break
                if isinstance(verdict, Retry):
                    self._retry(verdict, "no answer")
                    continue
                self._went_back(verdict, f"no answer to message {oldest.msg_id} within "
                                         f"{self._cfg.retry.ack_timeout_ms} ms")
                return  # went back N (and pumped), or reconnecting
            self._pump()  # a resend's time, or a partial batch's

    def _next_wake(self) -> float | None:
        """The earliest deadline, on the clock's monotonic time; None: nothing to wait for."""
        due: list[float] = []
        if self._unrecorded:
            due.append(self._rewrite_at)
        if self._pages_read:
            due.append(self._released_at + _RELEASE_INTERVAL_S)
        if (told_at := self._undecodable.due()) is not None:
            due.append(told_at)
        state = self._sm.state
        if state in (LinkState.BACKOFF, LinkState.AUTH_FAILED, LinkState.DISCONNECTED):
            due.append(self._next_attempt)
        elif state in (LinkState.CONNECTING, LinkState.SYNCING):
            due.append(self._deadline)
        elif state is LinkState.CONNECTED:
            for at in (self._window.next_deadline(), self._gate.next_due()):
                if at is not None:
                    due.append(at)
        return min(due) if due else None

    def _arm(self) -> None:
        """Arm the timer for the next deadline (or disarm it). Actor thread."""
        if self._timer is None:
            return
        at = self._next_wake()
        self._timer.arm(None if at is None else at - self._clock.monotonic())

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
        if new is LinkState.CONNECTED:
            self._down_since = self._down_since_ms = None
        elif old is LinkState.CONNECTED:  # lost, or stopping: in contact until now
            self._down_since, self._down_since_ms = self._clock.monotonic(), self._state_since_ms
            self._contact.record(self._state_since_ms)
        self._publish()

    def _publish(self) -> None:
        waiting = self._sm.state in (LinkState.BACKOFF, LinkState.AUTH_FAILED)
        self._board.publish({
            "state": self._sm.state.value,
            "breaker": self._breaker.state.value,
            "cloud": f"{self._cfg.rpc.host}:{self._cfg.rpc.port}",
            "routing_key": self._cfg.routing_key,
            "peer": ("reference cloud (ordered, dedup)" if self._peer.ordered
                     else "ThingsBoard") if self._accepted else None,
            "peer_ordered": self._peer.ordered if self._accepted else None,
            "in_flight_messages": len(self._window.in_flight),
            "epoch": self._window.epoch,
            "backoff_attempt": self._backoff.attempt,
            "next_attempt_in_s": None,  # counted down by the board while waiting
            "clock_skew_ms": self._skew_ms,
            "last_ack_ms": self._last_ack_ms,
            "sync_latency_ms": self._sync_latency_ms,
            "state_since_ms": self._state_since_ms,
            "down_since_ms": self._down_since_ms,  # down_for_s: counted by the board
            "last_sync": self._last_sync,
        }, next_attempt_at=self._next_attempt if waiting else None, down_since=self._down_since,
            monotonic=self._clock.monotonic)


def _send_sync(stream: Stream, full: bool) -> None:
    """A SyncRequestMsg on the stream (``fullSync``: ``full``)."""
    stream.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                    syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=full)))
