"""The QueueActor: the only writer of the event log. With the events it also writes the entity
store changes they carry (new devices, client attributes, latest telemetry, server-side RPC
states) and the edge's own changes of the entity graph (actors/graph_changes.py: assets,
relations, deletes of devices and of attribute and timeseries keys, whose events are made in
the same transaction); the DownlinkActor writes the entity store and the graph too, for what
the cloud sends, and LMDB serialises the two writers. It also writes the rule engine's state
and local timeseries (storage/rule_store.py) with the events of the message that produced them,
so a rule's windows, alarms and kept points never disagree with the events in the log.

A local point is kept ``ttl_s`` seconds (``local_retention_s`` when 0) from the commit that
writes it, not from its own timestamp: a device with a skewed clock (a ts days in the past) would
otherwise see its points expire at once. The periodic purge of deployed events also deletes
expired local points, in bounded batches. A device's rule state and local points go with the
device, whatever removes it (storage/graph_entities.py).

It assigns sequence numbers and commits in groups: every write command that reaches its mailbox
while a group is open joins that group, and one transaction (one fsync) commits them all. Only
after the commit does it resolve the commands' reply futures, so "replied" means "on disk".
When the store is full it first purges delivered events, then drops the local timeseries points
that expire soonest (they are the edge's own copy; the event log is what the delivery contract
keeps), then applies the configured policy (refuse, or evict the oldest normal-lane events),
counting and logging every drop, refusal and eviction.

The operator's replay of dead letters (ReplayDead, storage/dead_letters.py) commits what is
gathered first, then re-queues the selection in one transaction of its own, logs and counts
each replay, and tells the link (EventsReplayed): the replayed seqs are below its read cursor.

A command whose values the store cannot encode (Unstorable: only the in-process path that skips
validation can send one) fails alone with that BadRequest and the rest of its group commits. Any
other unexpected failure of a commit fails the commands not yet committed with InternalError
(HTTP 500) and raises, so the supervisor logs it at ERROR and restarts the actor.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import lmdb
from loguru import logger

from edge_sync.actors.graph_changes import GraphChanges, Planned
from edge_sync.actors.messages import (
    GRAPH_CHANGES,
    Append,
    BuildEntityIndex,
    Crash,
    CreateDevice,
    DeadLetter,
    EventsCommitted,
    EventsReplayed,
    FlushGroup,
    MarkDeployed,
    PurgeDeployed,
    PutAttributes,
    PutLatestTelemetry,
    PutLocalTimeseries,
    PutRpc,
    PutRuleState,
    ReplayDead,
    RequireDevice,
    SetIdentity,
    WriteCommand,
)
from edge_sync.actors.refusals import LOG_INTERVAL_S as REFUSAL_LOG_INTERVAL_S
from edge_sync.actors.refusals import RefusalLog
from edge_sync.actors.ticker import Ticker
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.config import FullPolicy
from edge_sync.errors import (
    EdgeSyncError,
    InjectedFault,
    InternalError,
    NotFound,
    QueueFull,
    Restarting,
    StorageError,
    Unstorable,
)
from edge_sync.metrics import Metrics
from edge_sync.storage import dead_letters
from edge_sync.storage.entity_store import (
    DEVICE_DELETED,
    EntityStore,
    Revocation,
    TokenCache,
)
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EntityIndexBuild, EventLog
from edge_sync.storage.records import Action, Lane, NewEvent, StoredEvent
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.storage.rule_store import LocalPurge, RuleStore
from edge_sync.supervisor import ExitReporter, SupervisedActor
from edge_sync.validators import INT64_MAX

_log = logger.bind(component="queue")

_PURGE_BATCH = 10_000
_RELEASE_INTERVAL_S = 0.5


@dataclass(frozen=True, slots=True)
class QueuePolicy:
    group_max_events: int = 5000
    full_policy: FullPolicy = FullPolicy.REFUSE
    retention_ms: int = 7 * 24 * 3600 * 1000
    purge_interval_s: float = 300.0
    refusal_log_interval_s: float = REFUSAL_LOG_INTERVAL_S


@dataclass(frozen=True, slots=True)
class RefusalsTick:
    """The refusal log's interval ended (``RefusalLog.tick``): its summary or its end."""


REFUSAL_REASONS = ("storage_full", "unstorable", "rejected")
"""The ``reason`` label of ``edge_sync_appends_refused_total``."""


def refusal_reason(error: BaseException) -> str:
    """Why the store refused a command, as ``edge_sync_appends_refused_total`` counts it."""
    if isinstance(error, QueueFull):
        return "storage_full"
    if isinstance(error, Unstorable):
        return "unstorable"
    return "rejected"


class _Outcome:
    """Result of one command inside a group: a value or an error (set after the commit)."""

    __slots__ = ("dead", "devices_removed", "error", "high", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.error: EdgeSyncError | None = None
        self.devices_removed: list[uuid.UUID] = []  # committed: the token cache must forget them
        self.high = 0  # Append: its events in the high lane
        self.dead: StoredEvent | None = None  # DeadLetter: the event (its entity for the log)

    @classmethod
    def failed(cls, error: EdgeSyncError) -> _Outcome:
        outcome = cls()
        outcome.error = error
        return outcome


class QueueActor(SupervisedActor):
    label = "queue"  # as its Address names it (log lines, Unavailable errors)

    def __init__(
        self,
        report_exit: ExitReporter,
        store: LmdbStore,
        *,
        policy: QueuePolicy,
        metrics: Metrics,
        clock: Clock = SYSTEM_CLOCK,
        on_committed: Callable[[EventsCommitted | EventsReplayed], None] | None = None,
        tokens: TokenCache | None = None,
        local_retention_s: int = 604_800,
    ) -> None:
        super().__init__(report_exit)
        if local_retention_s < 1:
            raise ValueError(f"local_retention_s must be at least 1 s, not {local_retention_s}")
        # The device API's token cache. CreateDevice only adds a device whose id, name and token
        # are all new (checked in its transaction; an unknown token is never cached), so a
        # creation leaves the cache alone. A device's deletion clears it after its commit, as
        # the DownlinkActor does for the cloud's device and credentials updates.
        self._tokens = tokens
        self._store = store
        self._log = EventLog(store)
        self._entities = EntityStore(store)
        self._rpcs = RpcStore(store)
        self._rules = RuleStore(store)
        self._local_retention_ms = local_retention_s * 1000
        self._graph = GraphChanges(store)
        self._policy = policy
        self._clock = clock
        self._on_committed = on_committed
        self._group: list[WriteCommand] = []
        self._group_events = 0
        self._ticker: Ticker | None = None
        self._refusal_ticker: Ticker | None = None
        self._refusals = RefusalLog(policy.refusal_log_interval_s)
        self._index_build = EntityIndexBuild(store)
        if store.readonly:
            self._index_build.finished = True
        events = metrics.counter(
            "edge_sync_events_total", "events by lane and outcome: appended (made durable), "
            "refused (storage full), evicted (evict_oldest_normal), dead_lettered, acked",
            ("lane", "outcome"))
        self._appended = {lane: events.labels(lane=lane.name.lower(), outcome="appended")
                          for lane in Lane}
        self._refused = {lane: events.labels(lane=lane.name.lower(), outcome="refused")
                         for lane in Lane}
        self._evicted = events.labels(lane="normal", outcome="evicted")
        refused = metrics.counter(
            "edge_sync_appends_refused_total",
            "commands to the store refused, whatever events they make (local-only data makes "
            "none), by reason: storage_full (no room: the size cap under policy refuse, or under "
            "evict_oldest_normal with nothing to evict, or the disk full; HTTP 507, MQTT "
            "connection closed without PUBACK), unstorable (a rule chain's outcome that cannot be stored), "
            "rejected (a change the store rejects: a conflict, a missing entity)", ("reason",))
        self._appends_refused = {reason: refused.labels(reason=reason)
                                 for reason in REFUSAL_REASONS}
        self._dead = {lane: events.labels(lane=lane.name.lower(), outcome="dead_lettered")
                      for lane in Lane}
        self._replayed = metrics.counter(
            "edge_sync_dead_letters_replayed_total",
            "dead letters replayed (PENDING again, same seq and lane) by the operator")
        self._commits = metrics.counter("edge_sync_queue_commits_total", "group commits (fsyncs)")
        self._purged = metrics.counter(
            "edge_sync_events_purged_total", "deployed events purged after storage.retention_hours")
        local = metrics.counter(
            "edge_sync_rule_local_points_removed_total",
            "local timeseries points removed, by reason: expired (purged after their retention), "
            "storage_full (dropped before their expiry to make room)", ("reason",))
        self._local_purged = local.labels(reason="expired")
        self._local_dropped = local.labels(reason="storage_full")
        with store.read() as txn:
            self._next_seq = self._log.next_seq(txn)
            tenant, edge = self._log.identity(txn)
        self._tenant = tenant.bytes
        self._edge = edge.bytes

    # -- lifecycle (actor thread) ------------------------------------------------------------------

    def on_start(self) -> None:
        """Actor thread: start the purge timer."""
        ref = self.actor_ref
        self._ticker = Ticker("purge", self._policy.purge_interval_s, lambda: ref.tell(PurgeDeployed()))
        self._ticker.start()
        self._refusal_ticker = Ticker("refusals", self._policy.refusal_log_interval_s,
                                      lambda: ref.tell(RefusalsTick()))
        self._refusal_ticker.start()
        _log.bind(next_seq=self._next_seq).info("queue actor started")
        if not self._index_build.finished:
            ref.tell(BuildEntityIndex())

    def on_stop(self) -> None:
        """Actor thread: commit what is gathered (a clean stop loses nothing), stop the timers."""
        self._stop_timers()
        if self._group:
            self._flush()
        self._refusals.flush()

    def on_failure(self, exception_type: type[BaseException] | None,
                   exception_value: BaseException | None,
                   traceback: TracebackType | None) -> None:
        """Actor thread, after an unhandled exception: stop the timers, which would otherwise
        tick at this dead incarnation for ever (its successor starts its own), and tell the
        refusals not told yet (the successor starts a run of its own)."""
        self._stop_timers()
        self._refusals.flush()

    def _stop_timers(self) -> None:
        """The purge and refusal-log timers, each telling this incarnation to work."""
        for ticker in (self._ticker, self._refusal_ticker):
            if ticker:
                ticker.stop()

    def fail_pending_messages(self, exc: BaseException) -> None:
        """Actor thread, on failure: fail the open group (not committed: the senders may retry)
        as well as the queued messages."""
        self._fail_all(self._group, Restarting(f"queue restarting after a failure: {exc}"))
        self._group = []
        super().fail_pending_messages(exc)

    # -- messages (actor thread) -------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        match message:
            case Append() | MarkDeployed() | DeadLetter() | SetIdentity():
                self._group.append(message)
                if isinstance(message, Append):
                    self._group_events += len(message.events)
                if len(self._group) == 1:
                    self.actor_ref.tell(FlushGroup())
                if self._group_events >= self._policy.group_max_events:
                    self._flush()
            case FlushGroup():
                if self._group:
                    self._flush()
            case ReplayDead():
                if self._group:  # what was gathered first commits first
                    self._flush()
                self._replay(message)
            case BuildEntityIndex():
                if not self._index_build.step():
                    self.actor_ref.tell(BuildEntityIndex())
            case RefusalsTick():
                self._refusals.tick()
            case PurgeDeployed():
                self._purge(older_than_ms=self._clock.now_ms() - self._policy.retention_ms)
            case Crash(reason=reason):
                raise InjectedFault(f"queue: {reason}")
            case _:
                _log.warning("queue actor: unknown message {!r}", type(message).__name__)
        return None

    # -- the group commit --------------------------------------------------------------------------

    def _flush(self) -> None:
        group, self._group, self._group_events = self._group, [], 0
        try:
            try:
                outcomes = self._commit(group)
            except QueueFull as exc:
                outcomes = self._commit_when_full(group, exc)
            except Unstorable:  # one command the store cannot take: find it, commit the others
                outcomes = self._commit_each(group)
        except StorageError as exc:
            self._fail_all(group, exc)
            raise  # the supervisor restarts us (or gives up: exit 3)
        except Exception as exc:  # a bug
            self._fail_all(group, InternalError(f"queue commit failed: {type(exc).__name__}: {exc}"))
            raise  # the supervisor logs it at ERROR and restarts us
        self._commits.inc()
        self._resolve(group, outcomes)
        self._store.release_pages_every(_RELEASE_INTERVAL_S)  # a long outage: RSS stays flat

    def _commit(self, group: Sequence[WriteCommand]) -> list[_Outcome]:
        now = self._clock.now_ms()
        base_seq = self._next_seq
        outcomes: list[_Outcome] = []

        def apply(txn: lmdb.Transaction) -> int:
            outcomes.clear()
            seq = base_seq
            for command in group:
                outcome = _Outcome()
                outcomes.append(outcome)
                seq = self._apply(txn, command, outcome, seq, now)
            return seq

        # A group that appends nothing only acknowledges, dead-letters or records identity: it
        # may use the reserve above the cap, so a full store can still drain.
        maintenance = not any(isinstance(c, Append) for c in group)
        self._next_seq = self._store.write(apply, maintenance=maintenance)
        return outcomes

    def _apply(
        self, txn: lmdb.Transaction, command: WriteCommand, outcome: _Outcome, seq: int, now: int
    ) -> int:
        match command:
            case Append(events=events, mutations=mutations):
                planned: list[Planned] = []
                try:
                    for mutation in mutations:
                        if isinstance(mutation, GRAPH_CHANGES):
                            planned.append(self._graph.plan(txn, mutation, now))
                        else:
                            self._check(txn, mutation)
                except EdgeSyncError as exc:  # nothing of this command was written
                    outcome.error = exc
                    return seq
                first = seq
                for mutation in mutations:
                    self._mutate(txn, mutation, command, first, now)
                seq = self._append(txn, events, seq, now)
                for plan in planned:  # its writes name the seq of its first event
                    plan.write(txn, seq)
                    seq = self._append(txn, plan.events, seq, now)
                outcome.value = range(first, seq)
                outcome.high = sum(e.lane is Lane.HIGH for e in events) + sum(
                    e.lane is Lane.HIGH for plan in planned for e in plan.events)
                outcome.devices_removed = [d for p in planned for d in p.devices_removed]
            case MarkDeployed(seqs=seqs):
                outcome.value = self._log.mark_deployed(txn, seqs, now_ms=now)
            case DeadLetter(seq=dead_seq, error=error):
                outcome.value = self._log.dead_letter(txn, dead_seq, error, now_ms=now)
                if outcome.value:  # rare: the event's lane for the count, its entity for the log
                    outcome.dead = self._log.get(txn, dead_seq)
            case SetIdentity(tenant_id=tenant, edge_id=edge):
                self._log.set_identity(txn, tenant, edge)
                outcome.value = True
        return seq

    def _check(self, txn: lmdb.Transaction, mutation: object) -> None:
        if isinstance(mutation, CreateDevice):
            self._entities.check_new_device(txn, mutation.device)
        elif isinstance(mutation, RequireDevice) and not self._entities.has_device(
                txn, mutation.device_id):
            raise NotFound(f"device {mutation.device_id} does not exist (its creation failed)")

    def _append(self, txn: lmdb.Transaction, events: Sequence[NewEvent], seq: int,
                now: int) -> int:
        """Append ``events`` from ``seq`` on; the next seq."""
        if not events:
            return seq
        return int(self._log.append(txn, events, first_seq=seq, created_time=now,
                                    tenant_id=self._tenant, edge_id=self._edge))

    def _mutate(self, txn: lmdb.Transaction, mutation: object, command: Append, first: int,
                now: int) -> None:
        match mutation:
            case CreateDevice(device=device):
                self._entities.put_device(txn, device)
                for i, event in enumerate(command.events):  # its ADDED event's JSON, in the graph
                    if event.entity_id == device.id and event.action == Action.ADDED:
                        self._graph.device_created(txn, device, event.body, seq=first + i,
                                                   now_ms=now)
                        break
            case PutAttributes(entity_id=eid, scope=scope, values=values, ts=ts):
                self._entities.put_attributes(txn, eid, scope, dict(values), ts=ts)
            case PutLatestTelemetry(entity_id=eid, values=values):
                self._entities.put_latest(txn, eid, {k: (ts, v) for k, ts, v in values})
            case PutRpc(request=request):
                self._rpcs.put(txn, request)
            case PutRuleState(entity_id=eid, record=record):
                self._rules.put_state(txn, eid, record)
            case PutLocalTimeseries(entity_id=eid, entries=entries, ttl_s=ttl_s):
                keep_ms = ttl_s * 1000 if ttl_s > 0 else self._local_retention_ms
                self._rules.put_local(txn, eid, entries, expires_at_ms=now + keep_ms)

    def _commit_each(self, group: list[WriteCommand]) -> list[_Outcome]:
        """Commit the commands one by one, so a command the store cannot take fails alone. When
        anything else fails, the commands already committed are answered before it is raised."""
        outcomes: list[_Outcome] = []
        for i, command in enumerate(group):
            try:
                try:
                    outcomes.append(self._commit([command])[0])
                except QueueFull as exc:
                    outcomes += self._commit_when_full(group[i:i + 1], exc)
            except Unstorable as exc:
                outcomes.append(_Outcome.failed(exc))
            except BaseException:
                self._resolve(group[:i], outcomes)
                raise
        return outcomes

    def _commit_when_full(self, group: list[WriteCommand], exc: QueueFull) -> list[_Outcome]:
        """Storage is full: purge delivered events, apply the policy, then commit each command on
        its own so the ones that still fit get in and only the rest are refused."""
        # once per full group: while refusals go on, their summary tells of it
        _log.bind(error=str(exc)).log("DEBUG" if self._refusals.refusing else "WARNING",
                                      "storage full; purging delivered events")
        self._purge(older_than_ms=INT64_MAX)
        self._drop_local_for_room()
        outcomes: list[_Outcome] = []
        for i, command in enumerate(group):
            try:
                outcomes.append(self._commit_one_when_full(command))
            except BaseException:  # the commands before it are committed: answered as such
                self._resolve(group[:i], outcomes)
                raise
        return outcomes

    def _commit_one_when_full(self, command: WriteCommand) -> _Outcome:
        attempts = 3 if self._policy.full_policy == FullPolicy.EVICT_OLDEST_NORMAL else 1
        last: QueueFull | None = None
        for _ in range(attempts):
            try:
                return self._commit([command])[0]
            except Unstorable as exc:
                return _Outcome.failed(exc)
            except QueueFull as exc:
                last = exc
                if attempts > 1 and not self._evict(len(getattr(command, "events", ())) * 4 + 256):
                    break
        return _Outcome.failed(QueueFull(f"storage full, new data refused: {last}"))

    def _evict(self, count: int) -> bool:
        try:
            eviction = self._store.write(
                lambda txn: self._log.evict_oldest_normal(txn, count=count), maintenance=True)
        except QueueFull as exc:
            _log.bind(error=str(exc)).warning("eviction impossible: {}", exc)
            return False
        if eviction is None:
            return False
        self._evicted.inc(eviction.count)
        self._store.room_made()
        _log.bind(count=eviction.count, first_seq=eviction.first_seq, last_seq=eviction.last_seq).warning(
            "storage full: evicted the oldest pending normal-lane events (policy evict_oldest_normal)"
        )
        return True

    def _replay(self, command: ReplayDead) -> None:
        """The operator's replay: the selected dead letters PENDING again (same seq, same
        lane), in seq order, in one transaction; each one logged and counted after the commit,
        then the link told (they are below its read cursor)."""
        try:
            result = self._store.write(
                lambda txn: dead_letters.replay(self._log, txn, command.selection),
                maintenance=True)  # no new data: a full store can still replay
        except EdgeSyncError as exc:
            _log.bind(error=str(exc)).warning("dead-letter replay failed: {}", exc)
            if command.reply is not None and not command.reply.done():
                command.reply.set_exception(exc)
            return
        except Exception as exc:  # a defect: its caller is answered, the queue keeps running
            # (the transaction was aborted: nothing changed)
            _log.opt(exception=exc).bind(error=str(exc)).error(
                "dead-letter replay failed unexpectedly: {}", exc)
            if command.reply is not None and not command.reply.done():
                command.reply.set_exception(exc)
            return
        for r in result.replayed:
            _log.bind(seq=r.seq, entity=str(r.entity_id), lane=r.lane.name.lower(),
                      error=r.reason).info("dead letter replayed")
        if result.replayed:
            self._replayed.inc(len(result.replayed))
            if self._on_committed is not None:
                self._on_committed(EventsReplayed(
                    tuple((r.seq, int(r.lane)) for r in result.replayed)))
        if command.reply is not None and not command.reply.done():
            command.reply.set_result(result)

    def _purge(self, *, older_than_ms: int) -> None:
        total = 0
        while True:
            try:
                n = self._purge_batch(older_than_ms)
            except QueueFull as exc:  # even deleting needs pages; try again on the next tick
                _log.bind(error=str(exc)).warning("purge postponed: {}", exc)
                break
            total += n
            if n < _PURGE_BATCH:
                break
        if total:
            self._purged.inc(total)
            _log.bind(count=total).info("purged deployed events")
            self._store.room_made()
        self._purge_rpcs(older_than_ms)
        self._purge_local(self._clock.now_ms())

    def _purge_rpcs(self, older_than_ms: int) -> None:
        """Finished server-side RPC requests are kept as long as deployed events."""
        try:
            n = int(self._store.write(
                lambda txn: self._rpcs.purge_finished(txn, older_than_ms=older_than_ms,
                                                      limit=_PURGE_BATCH),
                maintenance=True))
        except QueueFull as exc:
            _log.bind(error=str(exc)).warning("RPC purge postponed: {}", exc)
            return
        if n:
            _log.bind(count=n).info("purged finished RPC requests")

    def _purge_local(self, now_ms: int) -> None:
        """Expired local timeseries points, in batches of at most _PURGE_BATCH points (one
        transaction each, its expiry index visits bounded too: RuleStore.purge_expired_batch)."""
        total = stale = 0
        while (batch := self._local_batch(now_ms, "local timeseries purge postponed")) is not None:
            total += batch.points
            stale += batch.stale
            if not batch.more:
                break
        if total:
            self._local_purged.inc(total)
            _log.bind(count=total, stale_listings=stale).info(
                "purged expired local timeseries points")
        elif stale:
            _log.bind(stale_listings=stale).info(
                "removed stale expiry index listings of the local timeseries, no point was due")
        if total or stale:
            self._store.room_made()

    def _drop_local_for_room(self) -> None:
        """Storage full: the local timeseries points that expire soonest go first (one batch),
        before any new data is refused or any event evicted; counted and logged. A batch that
        only took stale expiry index listings out (they delete nothing; a batch visits a
        bounded number) is followed by the next, until one drops a point or the index has no
        entry left: each takes its listings out, so this ends."""
        dropped = stale = 0
        while (batch := self._local_batch(INT64_MAX, "local timeseries points cannot be dropped")
               ) is not None:
            dropped += batch.points
            stale += batch.stale
            if batch.points or not batch.more:
                break
        if dropped:
            self._local_dropped.inc(dropped)
            _log.bind(count=dropped, stale_listings=stale).warning(
                "storage full: dropped the {} local timeseries points that expire soonest",
                dropped)
        elif stale:
            _log.bind(stale_listings=stale).warning(
                "storage full: no local timeseries point dropped; removed {} stale expiry index "
                "listings", stale)
        if dropped or stale:
            self._store.room_made()

    def _local_batch(self, expired_by_ms: int, postponed: str) -> LocalPurge | None:
        """Delete up to _PURGE_BATCH local points expiring before ``expired_by_ms``, soonest
        first, in one transaction: what it did; None (logged) when the store refused it."""
        try:
            return self._store.write(
                lambda txn: self._rules.purge_expired_batch(txn, expired_by_ms, _PURGE_BATCH),
                maintenance=True)
        except QueueFull as exc:
            _log.bind(error=str(exc)).warning("{}: {}", postponed, exc)
            return None

    def _purge_batch(self, older_than_ms: int) -> int:
        return int(self._store.write(
            lambda txn: self._log.purge_deployed(txn, older_than_ms=older_than_ms,
                                                 limit=_PURGE_BATCH),
            maintenance=True,
        ))

    def _resolve(self, group: Sequence[WriteCommand], outcomes: Sequence[_Outcome]) -> None:
        appended = high = 0
        for command, outcome in zip(group, outcomes, strict=True):
            forget: list[uuid.UUID] = []
            if isinstance(command, Append):
                if outcome.error is None:
                    # in command order: a group "Y fits, then X refused" leaves the run refusing
                    self._refusals.accepted()
                    appended += len(outcome.value)
                    high += outcome.high
                    forget = outcome.devices_removed
                else:
                    self._log_refusal(command, outcome.error)
            elif isinstance(command, DeadLetter) and outcome.value:
                dead = outcome.dead
                lane = dead.lane if dead is not None else Lane.NORMAL
                self._dead[lane].inc()
                _log.bind(seq=command.seq,
                          entity_type=dead.entity_type if dead is not None else None,
                          entity_id=str(dead.entity_id) if dead is not None else None,
                          lane=lane.name.lower(),
                          error=command.error).warning("event dead-lettered")
            elif isinstance(command, SetIdentity):
                self._tenant, self._edge = command.tenant_id.bytes, command.edge_id.bytes
            if forget and self._tokens is not None:  # before its reply: a deleted device's
                # token fails at once, and what acts for it (an MQTT connection) ends
                self._tokens.invalidate(Revocation(d, DEVICE_DELETED, "it was deleted on the edge")
                                        for d in forget)
            reply = command.reply
            if reply is None or reply.done():
                continue
            if outcome.error is not None:
                reply.set_exception(outcome.error)
            else:
                reply.set_result(outcome.value)
        if appended:
            if high:
                self._appended[Lane.HIGH].inc(high)
            if appended > high:
                self._appended[Lane.NORMAL].inc(appended - high)
            _log.bind(next_seq=self._next_seq, events=appended, commands=len(group)).trace(
                "group committed"
            )
            if self._on_committed is not None:
                self._on_committed(EventsCommitted(self._next_seq))

    def _log_refusal(self, command: Append, error: EdgeSyncError) -> None:
        """Every refused command counted (edge_sync_appends_refused_total, and its events);
        one DEBUG line each. A full store's refusals come at the devices' rate: the refusal
        log tells of them in a few lines (``RefusalLog``); other refusals are one WARNING
        each."""
        self._appends_refused[refusal_reason(error)].inc()
        full = isinstance(error, QueueFull)
        if full:
            high = sum(e.lane is Lane.HIGH for e in command.events)
            if high:
                self._refused[Lane.HIGH].inc(high)
            if len(command.events) > high:
                self._refused[Lane.NORMAL].inc(len(command.events) - high)
            self._refusals.refused(command.entity_id, len(command.events), error,
                                   self._clock.now_ms())
        _log.bind(entity=str(command.entity_id), events=len(command.events)).log(
            "DEBUG" if full else "WARNING", "append refused: {}", error)

    @staticmethod
    def _fail_all(group: Sequence[WriteCommand], exc: BaseException) -> None:
        error = exc if isinstance(exc, EdgeSyncError) else StorageError(str(exc))
        for command in group:
            reply: Future[Any] | None = command.reply
            if reply is not None and not reply.done():
                reply.set_exception(error)

