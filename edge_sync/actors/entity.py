"""Per-entity actors: a lightweight object per device, hosted on a shard actor.

One entity lives on one shard and a shard handles its mailbox in order, so an entity's commands
are handled one at a time in arrival order. Here each command becomes the cloud events (and
entity-store changes) of one atomic Append to the QueueActor.

A device's session (devices/session.py) lives here too, made on first use: its open server-side
RPC requests and who waits for them, who waits for shared attribute updates. Every RPC state
change is one Append (the record, and the RPC_CALL event that tells the cloud when it does), and
a request is handed to a waiting device only once its delivery is on disk; to an MQTT
subscription at QoS 1 it is sent in flight, still QUEUED, and DELIVERED is recorded when the
connection reports the PUBACK (RpcAcknowledged), or the request is QUEUED again when the
client's session loses it (RpcUnsent).

Edge-made changes of the entity graph (ChangeGraph: assets, relations, deletes of devices and
of attribute and timeseries keys) pass through the entity's actor only for its order: the
QueueActor checks and writes them with their events (actors/graph_changes.py). A rule chain's
actor asks the cloud for its metadata at most once at a time: while its request is pending,
the next asks get that request's seq.

With a rule chain in force (actors/rule_host.py), a device's telemetry and client attributes
go through it here, one message per entry, in arrival order: its outcomes (actors/
rule_outcomes.py) and the entity's rule state (open windows, active alarms: rules/session.py)
are one Append, so the device's 200 / PUBACK means the chain's outcome is on disk. When that
Append fails, the in-memory rule state is dropped and read again from the store, and the shard's
engine forgets the decisions of its deduplicating save nodes for the entity (the device's retry
is saved, not taken for a repeat of its interval). An outcome the
store cannot hold (Unstorable) is the chain's fault, never the device's: it is logged at ERROR
and the device is answered InternalError (500; MQTT: not acknowledged), never BadRequest. Windows close
on the shard's deadline timer; an entity with open windows is not passivated while a chain is
in force.

A chain's RPC call request node makes requests for the device: numbered by the device
(RuleRpcRequests), stored with the message's Append, handed to the device's shard through its
address once committed (it may have restarted meanwhile), and never reported to the cloud.
When one ends, its committed end goes on through the chain from that node (RuleRpcFinished),
at most once: a run that cannot be made or stored is one WARNING.
"""

from __future__ import annotations

import contextlib
import functools
import uuid
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any

from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.actors.messages import (
    Append,
    AttributesRequestQueued,
    ChangeGraph,
    CreateDevice,
    DeleteAttributes,
    DeleteEntity,
    EntityCommand,
    EntityDeleted,
    FetchSharedAttributes,
    MetadataRequestQueued,
    PollAttributes,
    PollRpc,
    PostClientAttributes,
    PostRpcResponse,
    PostTelemetry,
    ProvisionDevice,
    PutAttributes,
    PutLatestTelemetry,
    PutRpc,
    PutRuleState,
    RaiseAlarm,
    RequestRuleChainMetadata,
    RequireDevice,
    RpcAcknowledged,
    RpcDeliveredLate,
    RpcHanded,
    RpcNotRecorded,
    RpcQueued,
    RpcUnsent,
    RuleRpcFinished,
    RuleStateStale,
    SavesNotStored,
    SharedAttributesApplied,
    SharedAttributesDeleted,
)
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import (
    Planned,
    RuleRpcRequests,
    attributes_msg,
    log_alarms,
    plan,
    rpc_end_msg,
    telemetry_msgs,
)
from edge_sync.common.iso_time import iso_ms
from edge_sync.devices.rpc import RpcRequest, RpcStatus, Transition
from edge_sync.devices.session import DeviceSession
from edge_sync.devices.subscribers import Subscriber
from edge_sync.errors import EdgeSyncError, InternalError, NotFound, Unavailable, Unstorable
from edge_sync.rules.engine import Outcome, RuleEngine, SendRpc, describe_key, saved_originators
from edge_sync.rules.message import RuleMsg
from edge_sync.rules.nodes import RPC_REQUEST
from edge_sync.rules.session import Dropped, EntityRules, Orphaned, Step
from edge_sync.storage.records import Action, Lane, NewEvent, Scope, lane_for

_log = logger.bind(component="device-session")
_rules_log = logger.bind(component="rules")

RECORD_RETRY_MS = 1_000
"""An expiry whose commit failed (storage full, say) is tried again this much later, not on every
wake-up of the shard's timer; so is the record of a delivery the device made known (its PUBACK,
or its answer) whose commit failed."""


class EntityActor:
    """State and behaviour of one entity. Runs on its shard's thread only."""

    __slots__ = ("_retry_at", "_rule_rpc_ends", "_rule_rpcs", "count_rpc", "device_info", "entity_id",
                 "event_pending", "last_used", "metadata", "now_ms", "queue", "rule_state",
                 "rules", "session", "tell_self", "tell_shard")

    def __init__(self, entity_id: uuid.UUID, queue: Address, now: float, *,
                 now_ms: Callable[[], int] | None = None,
                 tell_self: Callable[[Any], None] | None = None,
                 tell_shard: Callable[[Any], None] | None = None,
                 count_rpc: Callable[[str], None] | None = None,
                 event_pending: Callable[[int], bool] | None = None,
                 rules: ShardRules | None = None) -> None:
        self.entity_id = entity_id
        self.queue = queue
        self.last_used = now
        self.now_ms = now_ms or _no_clock
        self.tell_self = tell_self or (lambda _msg: None)
        # the device's shard whatever its incarnation (its address): what a commit made durable
        # and the shard must act on even if it restarted meanwhile (a rule-made RPC request)
        self.tell_shard = tell_shard or self.tell_self
        self._rule_rpcs: RuleRpcRequests | None = None  # numbers this device's rule-made RPC
        # rule-made requests whose end went on through the chain (the last ones, oldest first)
        self._rule_rpc_ends: dict[uuid.UUID, None] = {}
        self.count_rpc = count_rpc or (lambda _status: None)
        # whether the event of a seq still waits in the queue (not yet deployed)
        self.event_pending = event_pending or (lambda _seq: False)
        self.session: DeviceSession | None = None
        self._retry_at = 0  # ms: no expiry is recorded again before (one failed to commit)
        # a rule chain's metadata request: on its way to the queue (its commit), or its seq
        self.metadata: Future[range] | int | None = None
        self.rules = rules  # the shard's view of the chain in force (None: no rule engine)
        self.rule_state: EntityRules | None = None  # read from the store on first use
        self.device_info: tuple[str | None, str | None] | None = None  # (name, type)

    @property
    def busy(self) -> bool:
        """Holds open RPC requests, waiting devices or a pending metadata request: not to be
        passivated (a successor would ask again while the request is pending)."""
        return ((self.session is not None and self.session.busy) or self._metadata_pending()
                or self._windows_deadline() is not None)

    def _metadata_pending(self) -> bool:
        """Whether this rule chain's metadata request is on its way or waits in the queue; a
        request sent (or dropped) since is forgotten."""
        if isinstance(self.metadata, int) and not self.event_pending(self.metadata):
            self.metadata = None
        return self.metadata is not None

    def next_deadline(self) -> int | None:
        """When an open RPC request of the device is due next (ms since the epoch): the earliest
        expirationTime, not before the retry of an expiry whose commit failed."""
        due = self.session.rpc.next_deadline() if self.session is not None else None
        rpc_due = None if due is None else max(due, self._retry_at)
        windows = self._windows_deadline()
        if windows is None or rpc_due is None:
            return rpc_due if windows is None else windows
        return min(rpc_due, windows)

    def _windows_deadline(self) -> int | None:
        """When the entity's earliest rule window closes, while a chain is in force (without
        one, open windows wait on disk for the next message or start)."""
        if self.rule_state is None or self.rules is None or self.rules.runtime.current() is None:
            return None
        return self.rule_state.next_deadline()

    def abandon_waiters(self, error: BaseException) -> int:
        """The shard stops or failed: every device waiting here is told ``error`` at once (a
        long poll answers 503, "poll again") instead of waiting for its timeout; a read waiting
        for shared attributes from the cloud answers what the store holds. How many."""
        session = self.session
        if session is None:
            return 0
        count = 0
        for waiter in (*session.rpc_waiters, *session.attribute_waiters):
            if waiter.claim():
                waiter.fail(error)
                count += 1
        for waiter in session.fetch_waiters:
            if waiter.claim():
                waiter.resolve(False)
                count += 1
        session.rpc_waiters.clear()
        session.attribute_waiters.clear()
        session.fetch_waiters.clear()
        return count

    def _session(self) -> DeviceSession:
        if self.session is None:
            self.session = DeviceSession()
        return self.session

    def handle(self, command: EntityCommand, now: float) -> None:
        self.last_used = now
        match command:
            case PostTelemetry():
                self._telemetry(command)
            case PostClientAttributes():
                self._attributes(command)
            case ProvisionDevice():
                self._provision(command)
            case RaiseAlarm():
                self._alarm(command)
            case PostRpcResponse():
                self._rpc_response(command)
            case PollRpc():
                self._poll_rpc(command)
            case PollAttributes():
                session = self._session()
                session.prune()
                session.attribute_waiters.append(command.subscriber)
            case FetchSharedAttributes():
                self._fetch_shared(command)
            case RpcQueued():
                self._rpc_queued(command)
            case SharedAttributesApplied():
                self._shared_applied(command)
            case RpcNotRecorded():
                self._rpc_not_recorded(command)
            case RpcHanded():
                self._session().rpc.handed(command.request_uuid)
                self._expire(self.now_ms())  # it may have expired meanwhile: TIMEOUT now
            case RpcDeliveredLate():
                self._rpc_delivered_late(command)
            case RpcAcknowledged():
                self._rpc_acknowledged(command)
            case RpcUnsent():
                self._rpc_unsent(command)
            case AttributesRequestQueued():
                self._session().fetch.queued(command.seq)
            case ChangeGraph():
                self._change_graph(command)
            case RequestRuleChainMetadata():
                self._request_metadata(command)
            case MetadataRequestQueued():
                if isinstance(self.metadata, Future):
                    self.metadata = command.seq
            case SharedAttributesDeleted():
                if self.session is not None:
                    self.session.prune()
                    self.session.publish_attributes({"deleted": list(command.keys)})
            case RuleRpcFinished():
                self._rule_rpc_finished(command)
            case RuleStateStale():
                self.rule_state = None  # an Append of it failed: the store has the truth
                if self.rules is not None:
                    self._tally(self._loaded_state())
            case SavesNotStored():
                command.engine.forget(command.originators)
            case EntityDeleted():
                self.rule_state = None
                if self.rules is not None:
                    self.rules.counters.windows.set(self.entity_id, {})
                told = self.abandon_waiters(NotFound(f"device {command.entity_id} was deleted"))
                self.session = None  # its open RPC requests were closed with the deletion
                if told:
                    _log.bind(device=str(command.entity_id), polls=told).info(
                        "{} waiting polls answered: the device was deleted", told)

    def _telemetry(self, cmd: PostTelemetry) -> None:
        eid = self.entity_id
        engine = self._engine()
        if engine is not None:
            name, device_type = self._device_info()
            msgs = telemetry_msgs(eid, cmd.entries, name, device_type)
            self._run_chain(engine, msgs, cmd.reply, cmd.requires_device)
            return
        events = tuple(
            NewEvent("DEVICE", "DEVICE", eid, Action.TIMESERIES_UPDATED,
                     {"ts": ts, "values": dict(values)}, ts, Lane.NORMAL)
            for ts, values in cmd.entries
        )
        latest: dict[str, tuple[int, object]] = {}
        for ts, values in cmd.entries:
            for key, value in values:
                seen = latest.get(key)
                if seen is None or seen[0] <= ts:
                    latest[key] = (ts, value)
        mutation = PutLatestTelemetry(eid, tuple((k, ts, v) for k, (ts, v) in latest.items()))
        required = (RequireDevice(eid),) if cmd.requires_device else ()
        self.queue.tell(Append(eid, events, cmd.reply, (*required, mutation)))

    def _attributes(self, cmd: PostClientAttributes) -> None:
        eid = self.entity_id
        engine = self._engine()
        if engine is not None:
            name, device_type = self._device_info()
            msg = attributes_msg(eid, cmd.ts, dict(cmd.values), name, device_type)
            self._run_chain(engine, [msg], cmd.reply, cmd.requires_device)
            return
        event = NewEvent("DEVICE", "DEVICE", eid, Action.ATTRIBUTES_UPDATED,
                         {"scope": Scope.CLIENT.value, "kv": dict(cmd.values)}, cmd.ts, Lane.NORMAL)
        mutation = PutAttributes(eid, Scope.CLIENT, cmd.values, cmd.ts)
        required = (RequireDevice(eid),) if cmd.requires_device else ()
        self.queue.tell(Append(eid, (event,), cmd.reply, (*required, mutation)))

    def _alarm(self, cmd: RaiseAlarm) -> None:
        """Alarm events belong to the alarm entity but are handled by the originator's actor,
        so a device's alarms keep their order with the device's other events."""
        body = dict(cmd.alarm)
        body.update({"id": str(cmd.alarm_id), "originator": str(cmd.device_id)})
        event = NewEvent("ALARM", "ALARM", cmd.alarm_id, cmd.action, body, cmd.ts,
                         lane_for("ALARM", cmd.action))
        self.queue.tell(Append(cmd.device_id, (event,), cmd.reply))

    # -- the rule chain ------------------------------------------------------------------------

    def _engine(self) -> RuleEngine | None:
        return self.rules.engine() if self.rules is not None else None

    def _device_info(self) -> tuple[str | None, str | None]:
        if self.device_info is None:
            assert self.rules is not None
            found = self.rules.describe(self.entity_id)
            if found[0] is None:  # its creation may still be on its way: ask again next time
                return found
            self.device_info = found
        return self.device_info

    def _rules_state(self) -> EntityRules:
        if self.rule_state is None:
            assert self.rules is not None
            self.rule_state = EntityRules(self.rules.load_state(self.entity_id))
        return self.rule_state

    def load_rules(self, now_ms: int, orphans: OrphanedWindows | None = None
                   ) -> tuple[int, int, int, int]:
        """At start, and when another chain goes in force: the rule state saved for this
        entity (read once; its open windows close on time), bound to the chain in force (a
        window whose node is not in it is told of now: added to ``orphans``, which the shard
        logs as one line for all its entities, this entity's detail at DEBUG; without
        ``orphans``, one WARNING per node). (open windows, messages they hold, windows due at
        ``now_ms``, messages those hold)."""
        if self.rules is None:
            return 0, 0, 0, 0
        state = self._loaded_state(orphans)
        self._tally(state)
        return (state.open_windows, state.held_messages, *state.due_windows(now_ms))

    def _loaded_state(self, orphans: OrphanedWindows | None = None) -> EntityRules:
        """The entity's rule state (read from the store when not in memory), bound to the chain
        in force when there is one."""
        engine = self._engine()
        return self._rules_state() if engine is None else self._bound_state(engine, orphans)

    def _bound_state(self, engine: RuleEngine, orphans: OrphanedWindows | None = None
                     ) -> EntityRules:
        """The entity's rule state bound to ``engine`` (the chain in force): when that binds it
        anew, each node's open windows not in the chain are told of, with the acknowledged
        messages they hold and when they will be dropped: added to ``orphans`` (the shard's
        one line) and logged at DEBUG, or, without ``orphans``, logged at WARNING."""
        state = self._rules_state()
        for orphan in state.bind(engine):
            if orphans is not None:
                orphans.add(self.entity_id, orphan, engine.chain.name)
            _rules_log.bind(entity=str(self.entity_id), node=orphan.node, windows=orphan.windows,
                            messages=orphan.messages, drop_at_ms=orphan.deadline).log(
                "WARNING" if orphans is None else "DEBUG",
                "{} open rule windows of node {} hold {} acknowledged messages: the node is not "
                "in the chain in force {!r}; they will be dropped at {} unless a chain with that "
                "node goes in force before", orphan.windows, orphan.node, orphan.messages,
                engine.chain.name, iso_ms(orphan.deadline, f"{orphan.deadline} ms"))
        return state

    def _tally(self, state: EntityRules) -> None:
        """The entity's open windows, per node, for status and the admin API."""
        assert self.rules is not None
        self.rules.counters.windows.set(self.entity_id, state.window_counts())

    def _run_chain(self, engine: RuleEngine, msgs: list[RuleMsg], reply: Future[range] | None,
                   requires_device: bool) -> None:
        """Each message through the chain, in order; one Append for all of their outcomes and
        the entity's new rule state (also when the chain kept everything local)."""
        assert self.rules is not None
        eid, now = self.entity_id, self.now_ms()
        try:
            state = self._bound_state(engine)
            step = state.on_messages(engine, msgs, now)  # as one message after another
        except Exception as exc:  # a defect of the engine: the device is told, the shard lives
            _rules_log.bind(entity=str(eid), messages=len(msgs)).opt(exception=exc).error(
                "the rule chain could not run on {} messages; nothing of them was accepted",
                len(msgs))
            self.rule_state = None  # it may be half-changed: read again from the store
            if engine.deduplicates:  # what it let through was not stored: the retry is saved
                engine.forget((str(eid),))
            if reply is not None:
                with contextlib.suppress(InvalidStateError):
                    reply.set_exception(Unavailable(f"the rule chain failed: {exc}"))
            return
        planned = plan(eid, step.outcomes, self.rules.counters, now, step.visits,
                       self._rule_rpc(now) if engine.sends_rpc else None)
        self._report(step, engine)
        if step.changed and (engine.has_window_nodes or step.dropped or state.open_windows):
            self._tally(state)
        required = (RequireDevice(eid),) if requires_device else ()
        saved = (PutRuleState(eid, step.record),) if step.changed else ()
        self._append_rules(planned, reply, (*required, *planned.mutations, *saved), bool(saved),
                           engine, step.outcomes, step.dropped)

    def _close_windows(self, now: int) -> None:
        """The shard's timer: windows due now close, their outputs go on through the chain."""
        due = self._windows_deadline()
        engine = self._engine()
        if due is None or due > now or engine is None or self.rules is None:
            return
        state = self._bound_state(engine)
        self._commit_step(engine, state, state.on_due(engine, now), now)

    def _commit_step(self, engine: RuleEngine, state: EntityRules, step: Step, now: int,
                     reply: Future[Any] | None = None) -> None:
        """A step no device waits on (windows that closed, an RPC request's end going on): its
        outcomes and the entity's new rule state in one Append, when there is anything to
        store (``reply``, when given, is settled as the Append is, or at once with None)."""
        assert self.rules is not None
        self._report(step, engine)
        if step.changed:
            self._tally(state)
        planned = plan(self.entity_id, step.outcomes, self.rules.counters, now,
                       rpc=self._rule_rpc(now) if engine.sends_rpc else None)
        if not step.changed and not planned.events and not planned.mutations:
            log_alarms(self.entity_id, planned.alarms)  # nothing to store: as they are
            if reply is not None:
                _settle_none(reply)
            return
        saved = (PutRuleState(self.entity_id, step.record),) if step.changed else ()
        self._append_rules(planned, reply, (*planned.mutations, *saved), bool(saved),
                           engine, step.outcomes, step.dropped, device_waits=False)

    def _rule_rpc_finished(self, cmd: RuleRpcFinished) -> None:
        """A request the chain made ended, its final status committed: the chain goes on from
        the node that made it, by Success with the device's answer or by Failure with the
        error (``rpc_end_msg``), as ThingsBoard's TbSendRPCRequestNode callback does, at most
        once a request (a second end of it, recorded by a shard that restarted meanwhile,
        does not go on again). Not when no chain is in force or its chain has no such node
        any more (one INFO line), nor when nothing follows the node by that relation.
        ``cmd.reply`` is settled when the run is committed or has nothing to do, and failed
        when it could not be run or stored (``_end_lost`` logs it)."""
        request, reply = cmd.request, cmd.reply or Future()
        if self.session is not None:  # ended by a shard incarnation before this one: not open
            self.session.rpc.ended(request)
        if request.request_uuid in self._rule_rpc_ends:
            _rules_log.bind(entity=str(self.entity_id), rpc_id=request.request_id,
                            status=request.status.value).debug(
                "RPC {} {}: its end went on through the chain already", request.request_id,
                request.status.value)
            _settle_none(reply)
            return
        self._rule_rpc_ends[request.request_uuid] = None
        while len(self._rule_rpc_ends) > _RULE_RPC_ENDS_KEPT:
            del self._rule_rpc_ends[next(iter(self._rule_rpc_ends))]
        try:
            self._rule_rpc_goes_on(request, reply)
        except Exception as exc:  # a defect of the engine: logged, the shard lives
            _rules_log.bind(entity=str(self.entity_id), rpc_id=request.request_id).opt(
                exception=exc).error("the rule chain could not run on the end of RPC {}",
                                     request.request_id)
            self.rule_state = None  # it may be half-changed: read again from the store
            with contextlib.suppress(InvalidStateError):
                reply.set_exception(InternalError(f"the rule chain failed: {exc}"))

    def _rule_rpc_goes_on(self, request: RpcRequest, reply: Future[Any]) -> None:
        now = self.now_ms()
        end, engine = rpc_end_msg(request, now), self._engine()
        if end is None or request.source is None or self.rules is None:
            _settle_none(reply)
            return
        relation, msg = end
        index = None if engine is None else engine.node_index(request.source.node_key)
        if engine is None or index is None:
            _rules_log.bind(entity=str(self.entity_id), rpc_id=request.request_id,
                            status=request.status.value).info(
                "RPC {} {}: its end goes no further, the rule node that made it ({}) is not in "
                "the chain in force ({})", request.request_id, request.status.value,
                describe_key(request.source.node_key, RPC_REQUEST),
                "no chain" if engine is None else repr(engine.chain.name))
            _settle_none(reply)
            return
        if not engine.follows(index, relation):
            _settle_none(reply)
            return
        state = self._bound_state(engine)
        self._commit_step(engine, state, state.on_resumed(engine, index, relation, msg, now),
                          now, reply)

    def _rule_rpc(self, now: int) -> Callable[[SendRpc], RpcRequest]:
        """Makes the RPC requests of one Append of a chain that can make some: numbered
        against the device's open requests (``RuleRpcRequests``), read only when one is made."""
        made: list[Callable[[SendRpc], RpcRequest]] = []

        def make(o: SendRpc) -> RpcRequest:
            if not made:
                if self._rule_rpcs is None:
                    self._rule_rpcs = RuleRpcRequests()
                made.append(self._rule_rpcs.maker(self.entity_id, now,
                                                  self._session().rpc.open_requests()))
            return made[0](o)

        return make

    def _report(self, step: Step, engine: RuleEngine) -> None:
        """The windows' log lines: each window that woke (DEBUG, with how late), each clock
        jump a window saw (WARNING). Only when windows woke or jumped: nothing per message."""
        eid = str(self.entity_id)
        for woke in step.closed:
            _rules_log.bind(entity=eid, node=woke.node, messages=woke.messages,
                            outputs=woke.outputs, kept=woke.kept, deadline_ms=woke.deadline,
                            late_ms=woke.late_ms).debug(
                "rule window of node {} for device {} woke: {} messages sent on in {} outputs, "
                "{} kept; due at {}, {} ms late", woke.node, woke.originator, woke.messages,
                woke.outputs, woke.kept, iso_ms(woke.deadline, f"{woke.deadline} ms"),
                woke.late_ms)
        for jump in step.jumps:  # key[0]: the node as rules lines name it
            _rules_log.bind(entity=eid, node=jump.key[0], direction=jump.direction,
                            by_ms=jump.by_ms).warning(
                "edge clock jumped {} by {} ms while a rule window was open: {}", jump.direction,
                jump.by_ms, "the window keeps the time it had left" if jump.direction ==
                "backward" else "the window wakes once; the skipped intervals give nothing")

    def _append_rules(self, planned: Planned, reply: Future[range] | None,
                      mutations: tuple[Any, ...], saves_state: bool,
                      engine: RuleEngine, outcomes: tuple[Outcome, ...],
                      dropped: tuple[Dropped, ...] = (), *, device_waits: bool = True) -> None:
        """Append the outcomes; when the commit fails, the in-memory state is dropped when it
        was part of it (read again from the store next time), and ``engine`` (the one that
        ran), when a save node of it deduplicates, forgets what it decided for the
        originators of the saves (their retry is saved). Both are told to this entity before
        ``reply`` fails, so they come before the device's retry. An Unstorable refusal is the
        chain's: logged at ERROR, answered as InternalError. Windows ``dropped`` (their node
        not in the chain) are logged and counted once the commit is done: when it fails, the
        state read again still holds them, and they are dropped (and counted) at the retry.
        The alarm lines too follow the commit (``log_alarms``): a refused Append leaves the
        alarm as it was, so its line is not "cleared" but "not stored" (DEBUG)."""
        eid = self.entity_id
        tell_self, tell_shard, count_rpc, outer = (self.tell_self, self.tell_shard,
                                                   self.count_rpc, reply)
        assert self.rules is not None
        tally, chain = self.rules.counters.windows, engine.chain.name

        def committed(done: Future[range]) -> None:  # on the queue's thread
            exc = done.exception()
            if planned.alarms:
                log_alarms(eid, planned.alarms, exc)
            for gone in dropped if exc is None else ():
                tally.dropped(gone.node, gone.windows, gone.messages)
                _rules_log.bind(entity=str(eid), node=gone.node, windows=gone.windows,
                                messages=gone.messages).warning(
                    "{} rule windows dropped at their deadline with the {} acknowledged "
                    "messages they held: node {} is not in the chain in force {!r}",
                    gone.windows, gone.messages, gone.node, chain)
            if exc is None and planned.rpc_requests:  # stored: delivered as the cloud's are,
                for _ in planned.rpc_requests:  # by the shard even if it restarted meanwhile
                    count_rpc(RpcStatus.QUEUED.value)
                tell_shard(RpcQueued(eid, tuple(planned.rpc_requests)))
            if exc is not None and saves_state:
                tell_self(RuleStateStale(eid))
            if exc is not None and engine.deduplicates:
                originators = saved_originators(outcomes)
                if originators:
                    tell_self(SavesNotStored(eid, engine, originators))
            if isinstance(exc, Unstorable):
                _rules_log.bind(entity=str(eid), events=len(planned.events)).error(
                    "the rule chain's outcome cannot be stored: {}; nothing of it was kept{}",
                    exc, ", the device is answered 500" if device_waits and outer is not None
                    else "")
                exc = InternalError(f"the rule chain's outcome cannot be stored: {exc}")
            if outer is None:
                return
            with contextlib.suppress(InvalidStateError):
                if exc is None:
                    outer.set_result(done.result())
                else:
                    outer.set_exception(exc)

        inner: Future[range] = Future()
        inner.add_done_callback(committed)
        self.queue.tell(Append(eid, tuple(planned.events), inner, mutations))

    # -- the entity graph ----------------------------------------------------------------------

    def _change_graph(self, cmd: ChangeGraph) -> None:
        """The QueueActor writes the change and makes its events; after a device's deletion
        its waiting polls are answered, after a delete of shared attribute keys the devices
        waiting for attribute updates are told."""
        change, reply = cmd.change, cmd.reply
        after: Any = None
        if isinstance(change, DeleteEntity) and change.entity_type == "DEVICE":
            after = EntityDeleted(cmd.entity_id)
        elif isinstance(change, DeleteAttributes) and change.scope is Scope.SHARED:
            after = SharedAttributesDeleted(cmd.entity_id, change.keys)
        if after is not None:
            tell_self, outer = self.tell_self, cmd.reply

            def committed(done: Future[range]) -> None:  # on the queue's thread
                if done.exception() is None:
                    tell_self(after)
                if outer is not None:
                    _settle(outer, done)

            reply = Future()
            reply.add_done_callback(committed)
        self.queue.tell(Append(cmd.entity_id, (), reply, (change,)))

    def _request_metadata(self, cmd: RequestRuleChainMetadata) -> None:
        pending = self.metadata if self._metadata_pending() else None
        if isinstance(pending, Future):
            if cmd.reply is not None:
                pending.add_done_callback(lambda done: _settle(cmd.reply, done))  # type: ignore[arg-type]
            return
        if isinstance(pending, int):
            _log.bind(rule_chain=str(cmd.entity_id), seq=pending).debug(
                "rule chain metadata already requested")
            if cmd.reply is not None:
                with contextlib.suppress(InvalidStateError):
                    cmd.reply.set_result(range(pending, pending + 1))
            return
        now = self.now_ms()
        event = NewEvent("RULE_CHAIN", "RULE_CHAIN", cmd.entity_id,
                         Action.RULE_CHAIN_METADATA_REQUEST, {}, now,
                         lane_for("RULE_CHAIN", Action.RULE_CHAIN_METADATA_REQUEST))
        tell_self, chain, outer = self.tell_self, cmd.entity_id, cmd.reply

        def appended(done: Future[range]) -> None:  # on the queue's thread
            seqs = done.result() if done.exception() is None else None
            if seqs:
                _log.bind(entity_type="RULE_CHAIN", entity=str(chain), seq=seqs.start).info(
                    "rule chain metadata requested from the cloud")
            tell_self(MetadataRequestQueued(chain, seqs.start if seqs else None))
            if outer is not None:
                _settle(outer, done)

        request: Future[range] = Future()
        request.add_done_callback(appended)
        self.metadata = request
        self.queue.tell(Append(cmd.entity_id, (event,), request))

    # -- server-side RPC ---------------------------------------------------------------------

    def _rpc_response(self, cmd: PostRpcResponse) -> None:
        """The device's answer: it must match a delivered request that has not expired (else
        the reply fails with NotFound / Conflict and nothing is queued)."""
        try:
            change = self._session().rpc.answer(cmd.request_id, cmd.response, cmd.ts)
        except EdgeSyncError as exc:  # the transport logs the refusal it answers
            _log.bind(device=str(cmd.device_id), rpc_id=cmd.request_id).debug(
                "RPC answer refused: {}", exc)
            if cmd.reply is not None:  # its sender may have cancelled it (the device left)
                with contextlib.suppress(InvalidStateError):
                    cmd.reply.set_exception(exc)
            return
        self._record(change, cmd.reply)

    def _poll_rpc(self, cmd: PollRpc) -> None:
        """A device waits for its next request. A subscriber whose transport still holds
        requests in flight unacknowledged (``holding``: its MQTT session's messages) has them
        counted in flight again when the record says QUEUED and nothing is in flight (the
        shard restarted since they were sent): they are not sent to it a second time."""
        session = self._session()
        session.prune()
        held = getattr(cmd.subscriber, "holding", ())
        if held:
            taken = session.rpc.holding(held)
            if taken:
                ids = [sent.request_id for sent in taken]
                _log.bind(device=str(cmd.device_id), rpc_ids=ids).debug(
                    "RPC requests {} still await the acknowledgement of the device's "
                    "connection: in flight by it, not sent again", ids)
        session.rpc_waiters.append(cmd.subscriber)
        self._deliver()

    def _rpc_queued(self, cmd: RpcQueued) -> None:
        session = self._session()
        now = self.now_ms()
        for request in cmd.requests:
            if not session.rpc.add(request):
                continue
            _log.bind(device=str(request.device_id), rpc_id=request.request_id,
                      status=request.status.value, origin=request.origin.value).info(
                "RPC {} {} ({}{}): {}", request.request_id, request.method,
                "one-way" if request.oneway else "two-way",
                "" if request.reported else ", from the rule chain", request.status.value)
        self._expire(now)  # expired already, or no method: reported at once
        self._deliver()

    def expire_due(self) -> None:
        """Shard: a deadline came. Requests past their expirationTime are reported, rule windows
        due close."""
        now = self.now_ms()
        if self.session is not None and now >= self._retry_at:
            self._expire(now)
            for change in self.session.rpc.unrecorded():  # kept delivered: recorded again
                self._record(change, again=True)
        self._close_windows(now)

    def _expire(self, now: int) -> None:
        for change in self._session().rpc.expire_due(now):
            self._record(change)

    def _rpc_not_recorded(self, cmd: RpcNotRecorded) -> None:
        """A change of a request could not be committed: it is put back as it was, so the
        device's retry of an answer, a later poll, or the next deadline acts on it again. A
        change the device made known (``kept``: its PUBACK, or its answer while the request was
        QUEUED) is not undone: the request stays delivered, never sent again, and only its
        record is tried again every RECORD_RETRY_MS (one WARNING line when it first fails, a
        DEBUG line for each try after), as ThingsBoard's device actor keeps a request delivered
        whatever its save does (DeviceActorMessageProcessor.processRpcResponseStatus)."""
        session = self._session()
        change, now = cmd.change, self.now_ms()
        r, before = change.request, change.previous
        if change.kept:
            again = session.rpc.keep(change)
            if again is None:  # changed since: that change is recorded
                return
            self._retry_at = now + RECORD_RETRY_MS
            kept = again.request.status.value
            _log.bind(device=str(r.device_id), rpc_id=r.request_id, status=kept).log(
                "DEBUG" if cmd.again else "WARNING",
                "RPC {} {} not recorded: the device has it, so it stays {} (not sent again) "
                "and {} is recorded again every {} s until the store takes it", r.request_id,
                r.status.value, kept, kept, RECORD_RETRY_MS // 1000)
            return
        if not session.rpc.restore(change) or before is None:
            return
        _log.bind(device=str(r.device_id), rpc_id=r.request_id, status=before.status.value).warning(
            "RPC {} back to {}: {} not recorded", r.request_id, before.status.value, r.status.value)
        if before.status is RpcStatus.QUEUED and r.status in (RpcStatus.DELIVERED,
                                                              RpcStatus.SUCCESSFUL):
            self._expire(now)  # a delivery: never handed over, so EXPIRED if its time has come
            self._deliver()
        elif r.status in (RpcStatus.EXPIRED, RpcStatus.TIMEOUT, RpcStatus.FAILED):
            self._retry_at = now + RECORD_RETRY_MS

    def _rpc_delivered_late(self, cmd: RpcDeliveredLate) -> None:
        """The delivery was recorded only once the request had expired: the device did not get
        it. EXPIRED; the poll (released) waits on for the next request."""
        session = self._session()
        late = session.rpc.expire_late(cmd.change, self.now_ms())
        if late is not None:
            self._record(late)
        if cmd.subscriber.live and cmd.subscriber not in session.rpc_waiters:
            session.rpc_waiters.append(cmd.subscriber)  # a standing subscriber is there already
        self._deliver()

    def _deliver(self) -> None:
        """Hand queued requests to waiting devices, one each, oldest first. A waiter whose
        transport reports the delivery (``acks``: an MQTT subscription at QoS 1) is handed the
        request at once, in flight and still QUEUED (nothing recorded): DELIVERED comes with
        the device's acknowledgement (RpcAcknowledged), as ThingsBoard's device actor learns it
        from MqttTransportHandler's PUBACK (DeviceActorMessageProcessor
        .processRpcResponseStatus). Any other is handed it once DELIVERED is recorded."""
        session = self._session()
        while session.rpc_waiters:
            if not session.rpc.has_next(self.now_ms()):
                return
            waiter = session.next_rpc_waiter()
            if waiter is None:
                return
            if getattr(waiter, "acks", False):
                sent = session.rpc.send_next(self.now_ms())
                if sent is None:  # not expected: has_next said there was one
                    waiter.release()
                    return
                _log.bind(device=str(sent.device_id), rpc_id=sent.request_id).debug(
                    "RPC {} sent to the device: in flight, QUEUED until its acknowledgement",
                    sent.request_id)
                waiter.resolve(sent)
                continue
            change = session.rpc.take_next(self.now_ms())
            if change is None:  # not expected: has_next said there was one
                waiter.release()
                return
            self._record(change, then=self._hand_over(change, waiter))

    def _rpc_acknowledged(self, cmd: RpcAcknowledged) -> None:
        """The device acknowledged a request sent to it: DELIVERED (SUCCESSFUL when one-way),
        recorded, whichever sending it acknowledged while the request is QUEUED; nothing when
        it was answered, expired or acknowledged already."""
        change = self._session().rpc.acknowledged(cmd.sent, self.now_ms())
        _log.bind(device=str(cmd.device_id), rpc_id=cmd.sent.request_id).debug(
            "RPC {} acknowledged by the device{}", cmd.sent.request_id,
            "" if change is not None else ": no longer QUEUED (answered, expired, or "
            "acknowledged already)")
        if change is not None:
            self._record(change)

    def _rpc_unsent(self, cmd: RpcUnsent) -> None:
        """Requests sent in flight were lost without the device's acknowledgement: QUEUED
        again for the next subscriber (EXPIRED when their time has come), one INFO line (DEBUG
        when ``quiet``); or FAILED when the transport can never send them."""
        session = self._session()
        now = self.now_ms()
        if cmd.failed:
            for sent in cmd.sent:
                change = session.rpc.unsendable(sent, cmd.reason, now)
                if change is not None:
                    self._record(change)
            return
        back = [sent.request_id for sent in cmd.sent if session.rpc.unsent(sent)]
        if back:  # DEBUG when the loss has a line of its own (the MQTT server's stop)
            _log.bind(device=str(cmd.device_id), rpc_ids=back, count=len(back),
                      reason=cmd.reason).log(
                "DEBUG" if cmd.quiet else "INFO",
                "{} RPC {} sent and not acknowledged back in the queue: {}", len(back),
                "request" if len(back) == 1 else "requests", cmd.reason)
        self._expire(now)  # their time may have come: EXPIRED, never delivered
        self._deliver()

    def _hand_over(self, change: Transition,
                   waiter: Subscriber) -> Callable[[BaseException | None], None]:
        """What follows the commit of a delivery (on the queue's thread): the poll gets the
        request, unless the commit failed (the poll fails, the request is queued again) or
        completed at or after the request's expirationTime (the poll is released and waits on,
        the request is EXPIRED: never delivered late)."""
        request, tell_self, now_ms = change.request, self.tell_self, self.now_ms

        def then(exc: BaseException | None) -> None:
            if exc is not None:
                waiter.fail(exc if isinstance(exc, EdgeSyncError)
                            else Unavailable(f"RPC delivery not recorded: {exc}"))
                return
            if request.oneway:  # SUCCESSFUL is committed with its report: it goes out
                waiter.resolve(request.device_json())
                return
            if now_ms() >= request.expiration_time:
                waiter.release()
                tell_self(RpcDeliveredLate(request.device_id, change, waiter))
                return
            tell_self(RpcHanded(request.device_id, request.request_uuid))  # before any answer
            waiter.resolve(request.device_json())

        return then

    def _record(self, change: Transition, reply: Future[range] | None = None, *,
                then: Callable[[BaseException | None], None] | None = None,
                again: bool = False) -> None:
        """Persist a request's new state, with the RPC_CALL event that reports it when any.
        After the commit (on the queue's thread) the status is counted, or, when the commit
        failed, the entity is told to put the request back as it was; then ``then`` runs and
        ``reply`` is settled. ``again``: a record tried again (``_rpc_not_recorded``): its
        line is DEBUG, and one INFO line says when it is recorded at last."""
        r = change.request
        events: tuple[NewEvent, ...] = ()
        if change.report is not None and r.reported:  # a rule-made request: not the cloud's
            events = (NewEvent("DEVICE", "DEVICE", r.device_id, Action.RPC_CALL, change.report,
                               r.updated_at or self.now_ms(), lane_for("DEVICE", Action.RPC_CALL)),)
        level = "DEBUG" if again else "WARNING" if r.status in (
            RpcStatus.EXPIRED, RpcStatus.TIMEOUT, RpcStatus.FAILED) else "INFO"
        _log.bind(device=str(r.device_id), rpc_id=r.request_id, status=r.status.value).log(
            level, "RPC {} {}{}", r.request_id, r.status.value,
            (f" ({r.error})" if r.error else "") + (": recorded again" if again else ""))
        count, tell_self, tell_shard = self.count_rpc, self.tell_self, self.tell_shard

        def committed(done: Future[range]) -> None:
            exc = done.exception()
            if exc is None:
                count(r.status.value)
                if r.source is not None and r.status.final:  # the chain goes on from its node
                    gone_on: Future[Any] = Future()
                    gone_on.add_done_callback(functools.partial(_end_lost, r))
                    tell_shard(RuleRpcFinished(r.device_id, r, gone_on))
                if again:
                    _log.bind(device=str(r.device_id), rpc_id=r.request_id,
                              status=r.status.value).info(
                        "RPC {} {} recorded: the store took it again", r.request_id,
                        r.status.value)
            else:  # before ``reply``: a retry of the sender finds the request put back
                tell_self(RpcNotRecorded(r.device_id, change, again))
            if then is not None:
                then(exc)
            if reply is not None:
                _settle(reply, done)

        recorded: Future[range] = Future()
        recorded.add_done_callback(committed)
        self.queue.tell(Append(r.device_id, events, recorded, (PutRpc(r),)))

    # -- shared attributes ---------------------------------------------------------------------

    def _shared_applied(self, cmd: SharedAttributesApplied) -> None:
        session = self._session()
        session.fetch.answered()
        session.wake_fetchers()
        if not cmd.changed and not cmd.deleted:
            return
        update: dict[str, Any] = dict(cmd.changed)
        if cmd.deleted:
            update["deleted"] = list(cmd.deleted)
        taken = session.publish_attributes(update)
        if taken:
            _log.bind(device=str(cmd.device_id), polls=taken).debug(
                "shared attribute update to {} waiting polls", taken)

    def _fetch_shared(self, cmd: FetchSharedAttributes) -> None:
        session = self._session()
        session.prune()
        now = self.now_ms()
        decision = session.fetch.decide(now, cmd.wait_ms, self.event_pending)
        if cmd.subscriber is not None:
            if decision.wait:
                session.fetch_waiters.append(cmd.subscriber)
            elif cmd.subscriber.claim():  # asked lately and answered (or silent): no wait
                cmd.subscriber.resolve(False)
        if not decision.ask:
            return
        event = NewEvent("DEVICE", "DEVICE", cmd.device_id, Action.ATTRIBUTES_REQUEST,
                         {"scope": Scope.SHARED.value}, now,
                         lane_for("DEVICE", Action.ATTRIBUTES_REQUEST))
        _log.bind(device=str(cmd.device_id)).info("shared attributes requested from the cloud")
        tell_self, device_id = self.tell_self, cmd.device_id

        def appended(done: Future[range]) -> None:  # on the queue's thread
            seqs = done.result() if done.exception() is None else None
            tell_self(AttributesRequestQueued(device_id, seqs[0] if seqs else None))

        reply: Future[range] = Future()
        reply.add_done_callback(appended)
        self.queue.tell(Append(cmd.device_id, (event,), reply))

    def _provision(self, cmd: ProvisionDevice) -> None:
        """ThingsBoard's additionalInfo travels in the ADDED body: ``gateway`` for a gateway,
        ``lastConnectedGateway`` for a device a gateway named first (none: null)."""
        d = cmd.device
        info: dict[str, Any] = {}
        if d.gateway:
            info["gateway"] = True
        if cmd.created_by is not None:
            info["lastConnectedGateway"] = str(cmd.created_by)
        body = {**d.as_json(), "additionalInfo": info or None}
        added = NewEvent("DEVICE", "DEVICE", d.id, Action.ADDED, body, d.created_time,
                         lane_for("DEVICE", Action.ADDED))
        credentials = NewEvent(
            "DEVICE", "DEVICE", d.id, Action.CREDENTIALS_UPDATED,
            {"deviceId": str(d.id), "credentialsType": "ACCESS_TOKEN", "credentialsId": d.token},
            d.created_time, lane_for("DEVICE", Action.CREDENTIALS_UPDATED),
        )
        self.queue.tell(Append(d.id, (added, credentials), cmd.reply, (CreateDevice(d),)))


class OrphanedWindows:
    """The open windows of nodes not in the chain in force, over the entities one shard binds
    to a chain (at start, at a chain swap): one WARNING line for them all (``log``), each
    entity's detail at DEBUG, so a swap that removes a window node used by thousands of
    devices does not write thousands of lines."""

    def __init__(self) -> None:
        self.chain = ""
        self.nodes: set[str] = set()
        self.entities: set[uuid.UUID] = set()
        self.windows = 0
        self.messages = 0
        self.first_drop_ms: int | None = None
        self.last_drop_ms: int | None = None

    def add(self, entity_id: uuid.UUID, orphan: Orphaned, chain: str) -> None:
        self.chain = chain
        self.nodes.add(orphan.node)
        self.entities.add(entity_id)
        self.windows += orphan.windows
        self.messages += orphan.messages
        first, last = self.first_drop_ms, self.last_drop_ms
        self.first_drop_ms = orphan.deadline if first is None else min(first, orphan.deadline)
        self.last_drop_ms = orphan.deadline if last is None else max(last, orphan.deadline)

    def log(self, shard: int) -> None:
        """One WARNING for shard ``shard`` when windows were orphaned; nothing otherwise."""
        if self.first_drop_ms is None or self.last_drop_ms is None:
            return
        first, last = self.first_drop_ms, self.last_drop_ms
        nodes = sorted(self.nodes)
        _rules_log.bind(shard=shard, nodes=nodes, entities=len(self.entities),
                        windows=self.windows, messages=self.messages, drop_at_ms=first,
                        last_drop_at_ms=last).warning(
            "{} open rule windows of {} entities hold {} acknowledged messages: their nodes "
            "({}) are not in the chain in force {!r}; they will be dropped from {} to {} "
            "unless a chain with those nodes goes in force before (each entity at DEBUG)",
            self.windows, len(self.entities), self.messages, ", ".join(nodes), self.chain,
            iso_ms(first, f"{first} ms"), iso_ms(last, f"{last} ms"))


def _settle(reply: Future[range], done: Future[range]) -> None:
    """Pass ``done``'s outcome on to ``reply`` (which its sender may have cancelled)."""
    with contextlib.suppress(InvalidStateError):
        exc = done.exception()
        if exc is None:
            reply.set_result(done.result())
        else:
            reply.set_exception(exc)


def _no_clock() -> int:
    raise RuntimeError("this entity actor was made without a clock")


_RULE_RPC_ENDS_KEPT = 32
"""Rule-made requests per device whose end went on, remembered so a second end of one (its
shard restarted while the first was being recorded) does not go on again."""


def _settle_none(reply: Future[Any]) -> None:
    with contextlib.suppress(InvalidStateError):
        reply.set_result(None)


def _end_lost(request: RpcRequest, done: Future[Any]) -> None:
    """Any thread: the end of a rule-made request could not go on through the chain (its
    shard was not running when the end was committed, or the run's Append was refused): one
    WARNING naming it. The request's own record is as committed; the run is not tried again
    (ThingsBoard too runs it once, from memory)."""
    exc = done.exception()
    if exc is None:
        return
    _rules_log.bind(entity=str(request.device_id), rpc_id=request.request_id,
                    status=request.status.value).warning(
        "RPC {} {}: its end did not go on through the rule chain: {}", request.request_id,
        request.status.value, exc)
