"""The DownlinkActor: applies each DownlinkMsg from the cloud in one LMDB write transaction that
also records the downlink's key, then tells the ConnectionActor to acknowledge it. A downlink
whose key is already recorded (a redelivery) is only acknowledged. Downlinks that arrive while
the previous ones are applied share one transaction (group commit); should it fail, each is
applied alone, so a refused one fails alone.

The key is the downlinkMsgId plus a hash of the message without its send time
(link/downlink_kinds.py), so a redelivery from a peer that picks ids at random (ThingsBoard)
is recognised.

What the edge applies, in this order whatever the order of the lists (ThingsBoard sends a device
with its credentials and its profile in one DownlinkMsg): every kind of the entity graph
(common/entity_graph.py KINDS: the tenant, queues, rule chains and their metadata, users and
their credentials, widget types and bundles, customers, dashboards, device and asset profiles,
devices and their credentials, assets, entity views, relations) in full-sync order, by
link/graph_apply.py (the graph's JSON, the operational records of the tenant, device profiles,
devices and tokens, entities held until their references arrive); entity data (attributes);
server-side RPC requests (deviceRpcCallMsg with a requestMsg: stored QUEUED, in the same
transaction as the key, so a request survives a crash right after the acknowledgement and a
redelivery is never delivered twice; a request whose requestUuid the device already has is not
stored again); then sync completion and the edge configuration. After the commit the token
cache forgets what it held and names the devices whose access token the downlink changed or
removed, or which it removed (``revocations``): their MQTT connections and HTTP long polls end
(storage/entity_store.TokenCache.watch). Then the devices' entity actors are told (``notify``):
the RPC requests to deliver, and the shared attributes that changed (only the keys whose value
changed, and those deleted) for the devices' long polls. Every other kind ThingsBoard sends
(alarms, OTA packages, admin settings, answers to device-originated RPC, ...) is set aside:
acknowledged with success, counted by kind in ``edge_sync_downlinks_set_aside_total{kind=...}``
and logged at INFO the first time a kind comes. A redelivery is counted as a duplicate only,
not again by kind.

Full sync (the ConnectionActor decides when, link/state.py sync_mode): FullSyncStarted, sent
before the SyncRequestMsg so it precedes every downlink of that sync here, records a new sync
generation durably; everything applied or found unchanged (or redelivered) during it is marked
seen; at its SyncCompletedMsg, in the same transaction, what was not seen is removed with its
dependants (except what the edge made and the cloud may not have yet), logged one line each
("removed after full sync: no longer assigned to this edge"): ThingsBoard Edge leaves such
orphans. The edge version is recorded and the sync flags cleared. A ThingsBoard server's full
sync carries no relations, so at its end the edge's relations stay (but those of a removed
entity). After a SyncCompletedMsg and at start, every rule chain without its metadata is
reported once per chain (and change) through ``request_metadata`` (wired to the uplink event
that asks the cloud for it).

Relations from a ThingsBoard server (a downlink whose ``peer_ordered`` is false): the entities
whose relations ThingsBoard Edge asks for (a device, asset, entity view, dashboard or tenant
created, a customer or user saved; and each of them a full sync sends) are recorded in the
downlink's transaction and asked for through RELATION_REQUEST events once it commits
(link/relation_requests.py).

A downlink that cannot be applied is answered success=false with the error and the project's
``retryable`` flag, false: its content is refused. One whose only refused part is a device's
credentials with an access token another device has on the edge is committed without them and
answered the same way (link/graph_apply.py: ThingsBoard Edge saves the device, then refuses the
credentials). When the edge's own store fails (StorageError: a full disk, the size cap, damage)
nothing is wrong with the downlink. The answer goes by the peer of the stream the downlink came
on (``ApplyDownlink.peer_ordered``, from that stream's ConnectResponseMsg), not by what the link
is when the downlink is applied (it may have dropped meanwhile):
- to the reference cloud (it announced its capabilities), the answer says retryable=true, so it
  resends the downlink for as long as it takes and never parks it;
- to ThingsBoard, which drops every downlink answered success=false and never reads
  ``retryable`` (thingsboard, application/.../edge/rpc/session/EdgeGrpcSession.java,
  onDownlinkResponse), there is no answer: ThingsBoard sends what is unanswered again after
  edges.storage.sleep_between_batches (scheduleDownlinkMsgsPackSend), MAX_DOWNLINK_ATTEMPTS (3)
  sends in all, then discards it. So a full sync is requested durably for the next connect
  (written at once, or with the next downlink's transaction if the store refuses that too; not
  again while a request is recorded or waits), and a full sync under way whose downlink was not
  stored by the time its SyncCompletedMsg comes removes nothing at its end and stays in
  progress, so the next connect asks for a full sync again (its sweep would take for gone what
  that downlink carried). The actor keeps the keys of the first _UNSTORED_KEPT such downlinks
  (to see a resend stored) and only counts the failures of the others, which stop that sweep
  all the same; the end's WARNING names the first _UNSTORED_NAMED ids.

The parts, each in its own module: the messages with the ConnectionActor
(link/downlink_messages.py, re-exported here), a DownlinkMsg's key and the kinds set aside
(link/downlink_kinds.py), the entity graph's payloads (link/graph_apply.py), entity data and
RPC requests (link/downlink_data.py), the full sync under way (link/full_sync_track.py), rule
chains without metadata (link/metadata_requests.py), relation requests
(link/relation_requests.py), and what a downlink did with its
counters and log lines (link/downlink_report.py). This module orchestrates: group commit,
failure answers, what is told after the commit. Each downlink's transaction also refreshes the
edge's last contact with the cloud (storage/link_contact.py: at most once a minute, always with
a SyncCompletedMsg), which a connect reads to tell how long the edge was offline.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lmdb
import pykka
from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.actors.messages import EntityDeleted, RpcQueued, SharedAttributesApplied
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.wire import uuid_of
from edge_sync.errors import EdgeSyncError, StorageCorrupt, StorageError
from edge_sync.link.downlink_data import DataApplier
from edge_sync.link.downlink_kinds import APPLIED_KINDS, downlink_key, set_aside_kinds
from edge_sync.link.downlink_messages import ApplyDownlink, DownlinkApplied, FullSyncStarted
from edge_sync.link.downlink_report import DownlinkOutcome, DownlinkReport
from edge_sync.link.full_sync_track import FullSyncBook, SyncTrack
from edge_sync.link.graph_apply import GraphApplier, GraphOutcome
from edge_sync.link.metadata_requests import MissingMetadata
from edge_sync.link.relation_requests import (
    ClearQueuedRequests,
    RelationRequests,
    RelationRequestsAppended,
)
from edge_sync.link.state import edge_version
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import (
    DEVICE_DELETED,
    TOKEN_CHANGED,
    TOKEN_REMOVED,
    EntityStore,
    Revocation,
    TokenCache,
)
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.link_contact import LinkContact
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.supervisor import ExitReporter, SupervisedActor

__all__ = ["APPLIED_KINDS", "ApplyDownlink", "DownlinkActor", "DownlinkApplied",
           "FullSyncStarted", "downlink_key", "set_aside_kinds"]

_log = logger.bind(component="downlink")


@dataclass(frozen=True, slots=True)
class _ApplyGroup:
    """Internal: apply the downlinks gathered so far."""


_GROUP_MAX = 500  # downlinks applied in one transaction at most
# downlinks left unanswered after a store failure, kept by key at most (beyond them only
# counted: a store failing for hours under a steady downlink flow must not grow the actor)
_UNSTORED_KEPT = 1000
_UNSTORED_NAMED = 10  # of those, the ids a full sync's end names in its warning


class DownlinkActor(SupervisedActor):
    label = "downlink"  # as its Address names it (log lines, Unavailable errors)

    def __init__(
        self,
        report_exit: ExitReporter,
        store: LmdbStore,
        connection: Address,
        *,
        metrics: Metrics,
        tokens: TokenCache | None = None,
        clock: Clock = SYSTEM_CLOCK,
        notify: Callable[[Any], None] | None = None,
        request_metadata: Callable[[uuid.UUID], None] | None = None,
        version: str | None = None,
        rules_changed: Callable[[], object] | None = None,
        tell_queue: Callable[[Any], None] | None = None,
    ) -> None:
        super().__init__(report_exit)
        self._tokens = tokens
        self._store = store
        self._entities = EntityStore(store)
        self._graph = GraphStore(store)
        self._contact = LinkContact(store)
        self._applier = GraphApplier(self._graph)
        self._data = DataApplier(self._entities, RpcStore(store))
        self._notify = notify
        self._rules_changed = rules_changed  # a rule chain changed: the chain in force is read
        self._metadata = MissingMetadata(store, self._graph, request_metadata)
        # tell_queue: the QueueActor, which appends the RELATION_REQUEST events
        self._relations = RelationRequests(store, clock, append=tell_queue,
                                           tell_self=self._tell_self)
        self._version = version if version is not None else edge_version()
        self._sync = FullSyncBook()
        self._group: list[ApplyDownlink] = []
        self._connection = connection
        self._clock = clock
        self._report = DownlinkReport(metrics, held_now=self._held_now, version=self._version)
        # keys of downlinks left unanswered after a store failure and not applied since (they
        # belong to the full sync under way when there is one: cleared when a full sync
        # starts), the first _UNSTORED_KEPT; the failures of the others are only counted
        self._unstored: dict[bytes, int] = {}
        self._untracked_failures = 0
        self._owed_full_sync: str | None = None  # a full sync request not written yet: why

    def _tell_self(self, message: Any) -> None:
        """Any thread: a message to this incarnation (none once it has stopped: its successor
        reads what is durable)."""
        with contextlib.suppress(pykka.ActorDeadError):
            self.actor_ref.tell(message)

    def _held_now(self) -> float:
        with self._store.read() as txn:
            return float(self._graph.held_count(txn))

    def on_start(self) -> None:
        """Actor thread: forget the seen marks of a full sync this actor does not track (it
        restarted mid-sync), apply what waited for something the edge made meanwhile, and ask
        for the metadata of rule chains the edge has without it, and for the relations still
        to be asked for."""
        self._drop_untracked_sync()
        self._release_ready()
        self._metadata.ask()
        self._relations.send(everything=True)

    def _drop_untracked_sync(self) -> None:
        """A new actor tracks no full sync (FullSyncBook is in memory), so a seen marker on
        disk belongs to a sync cut short by a restart (a crash of this actor, or of the
        process): its completion would sweep nothing, while the marker kept every held entity
        back (``held_outside_sync``) until the next full sync. Cleared; the sync state stays
        in progress, so the next connect asks for a full sync again."""
        with self._store.read() as txn:
            if not self._graph.full_sync_active(txn):
                return
        try:
            dropped = self._store.write(self._graph.drop_full_sync_marks, maintenance=True)
        except EdgeSyncError as exc:  # tried again at the next start; a full sync resets it
            _log.bind(error=str(exc)).error("marks of an untracked full sync not cleared: {}",
                                            exc)
            return
        if dropped:
            _log.bind(action="FULL_SYNC_ABANDONED").warning(
                "full sync cut short by a restart: its seen marks cleared, nothing removed at "
                "its end; the next connect asks for a full sync again")

    def _release_ready(self) -> None:
        with self._store.read() as txn:
            if not self._graph.held_count(txn):
                return
        now = self._clock.now_ms()

        def fn(txn: lmdb.Transaction) -> GraphOutcome:
            out = GraphOutcome()
            self._applier.release_ready(txn, now, out)
            return out
        try:
            out = self._store.write(fn, maintenance=True)
        except EdgeSyncError as exc:  # tried again at the next start or sync completion
            _log.bind(error=str(exc)).error("held entities not released at start: {}", exc)
            return
        if out.devices_changed and self._tokens is not None:
            self._tokens.invalidate(revocations(DownlinkOutcome(True, graph=out)))
        self._report.graph(0, DownlinkOutcome(True, graph=out))

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ApplyDownlink):
            self._group.append(message)
            if len(self._group) == 1:
                self.actor_ref.tell(_ApplyGroup())
            if len(self._group) >= _GROUP_MAX:
                self._apply_group()
        elif isinstance(message, _ApplyGroup) and self._group:
            self._apply_group()
        elif isinstance(message, FullSyncStarted):
            if self._group:  # the downlinks that came before it are not the sync's
                self._apply_group()
            self._start_full_sync(message)
        elif isinstance(message, RelationRequestsAppended):
            self._relations.appended(message)
        elif isinstance(message, ClearQueuedRequests):
            self._relations.clear()
        return None

    def _start_full_sync(self, message: FullSyncStarted) -> None:
        now = self._clock.now_ms()
        try:
            generation = self._store.write(
                lambda txn: self._graph.start_full_sync(txn, now_ms=now, reason=message.reason),
                maintenance=True)
        except EdgeSyncError as exc:  # no generation: nothing is removed at its end
            self._sync.abandon()
            _log.bind(error=str(exc)).error(
                "full sync not recorded ({}): what it no longer sends stays on the edge", exc)
            return
        self._sync.started(message.stream_id, message.earlier_syncs)
        self._unstored.clear()  # what the full sync sends again supersedes them
        self._untracked_failures = 0
        _log.bind(generation=generation, reason=message.reason).info(
            "full sync {} started ({}): what it does not send is removed at its end",
            generation, message.reason)

    # -- applying --------------------------------------------------------------------------------

    def _apply_group(self) -> None:
        """Apply every downlink that came while the previous group was applied in one
        transaction (one fsync: a burst of downlinks, say a shared attribute set on a thousand
        devices, is not a thousand fsyncs), then answer each in order. When the transaction
        fails, each downlink is applied alone, so a bad one fails alone."""
        group, self._group = self._group, []
        if len(group) > 1:
            now = self._clock.now_ms()

            owed = self._owed_full_sync

            def fn(txn: lmdb.Transaction) -> tuple[list[DownlinkOutcome], SyncTrack]:
                track = self._sync.attempt()
                self._write_owed(txn, owed)
                return ([self._apply_in(txn, c, downlink_key(c.msg), now, track)
                         for c in group], track)
            try:
                outs, track = self._store.write(fn, maintenance=True)
            except Exception:
                outs = None
            if outs is not None:
                self._sync.adopt(track)
                self._owed_written(owed)
                for cmd, out in zip(group, outs, strict=True):
                    self._connection.tell(self._answer(cmd, out))
                return
        for cmd in group:
            reply = self._apply(cmd)
            if reply is not None:
                self._connection.tell(reply)

    def _apply(self, cmd: ApplyDownlink) -> DownlinkApplied | None:
        """Apply one downlink in a transaction of its own; its answer, None when it gets none
        (a store failure against a peer that ignores ``retryable``)."""
        msg: edge_pb2.DownlinkMsg = cmd.msg
        key = downlink_key(msg)
        dl_id = msg.downlinkMsgId
        now = self._clock.now_ms()
        owed = self._owed_full_sync

        def fn(txn: lmdb.Transaction) -> tuple[DownlinkOutcome, SyncTrack]:
            track = self._sync.attempt()
            self._write_owed(txn, owed)
            return self._apply_in(txn, cmd, key, now, track), track
        try:
            # maintenance: a full store must still take what the cloud sends (sync completion
            # above all), or the link could never sync again and drain the backlog
            out, track = self._store.write(fn, maintenance=True)
        except Exception as exc:  # a store failure (resent later) or a malformed downlink:
            # answer success=false, never crash on it (a crash would block the downlink queue)
            reason = (str(exc) if isinstance(exc, EdgeSyncError)
                      else f"{type(exc).__name__}: {str(exc)[:200]}")
            # the edge's own store failing (a full disk, the map full) says nothing against the
            # downlink: retryable, so our cloud resends it and never parks it; ThingsBoard
            # would drop it, so it gets no answer (see the module docstring)
            retryable = isinstance(exc, StorageError)
            if isinstance(exc, StorageCorrupt):
                self._record_damage(reason)
            if retryable and not cmd.peer_ordered:  # the peer of the stream it came on
                self._leave_unanswered(dl_id, key, reason)
                return None
            self._report.failed(dl_id, reason, retryable)
            return DownlinkApplied(cmd.stream_id, dl_id, False, reason, retryable=retryable)
        self._sync.adopt(track)
        self._owed_written(owed)
        return self._answer(cmd, out)

    def _leave_unanswered(self, dl_id: int, key: bytes, reason: str) -> None:
        """A downlink the store failed to take, for a peer that drops what is answered
        success=false (ThingsBoard): no answer, so it is sent again; a full sync is requested
        for the next connect in case the peer gives it up (after its third send), and the
        full sync under way, if any, will not sweep while the downlink is not stored. The
        request is written once: not again while one is recorded (whoever asked: any full sync
        at the next connect will do) or waits to go with the next downlink stored."""
        if key in self._unstored or len(self._unstored) < _UNSTORED_KEPT:
            self._unstored[key] = dl_id
        else:
            self._untracked_failures += 1
        why = f"downlink {dl_id} could not be stored ({reason[:200]})"
        if self._owed_full_sync is not None:
            sync = ("a full sync is requested with the next downlink stored (an earlier request "
                    "was not written either)")
        elif (recorded := self._recorded_full_sync_request()) is not None:
            sync = f"a full sync is already requested for the next connect ({recorded[:200]})"
        else:
            try:
                self._store.write(lambda txn: self._graph.request_full_sync(txn, why),
                                  maintenance=True)
            except EdgeSyncError as exc:
                self._owed_full_sync = why
                sync = (f"a full sync is requested with the next downlink stored (the request "
                        f"was not written either: {exc})")
            else:
                sync = "a full sync is requested for the next connect"
        self._report.unanswered(dl_id, reason, sync)

    def _recorded_full_sync_request(self) -> str | None:
        """Why a full sync is asked for at the next connect, when one is recorded (None too when
        the store cannot say: the request is written then)."""
        try:
            with self._store.read() as txn:
                return self._graph.sync_state(txn).requested
        except EdgeSyncError:
            return None

    def _write_owed(self, txn: lmdb.Transaction, owed: str | None) -> None:
        """In a downlink's transaction: the full sync request a store failure left unwritten."""
        if owed is not None:
            self._graph.request_full_sync(txn, owed)

    def _owed_written(self, owed: str | None) -> None:
        if owed is not None and self._owed_full_sync == owed:
            self._owed_full_sync = None
            _log.bind(reason=owed).info("full sync requested for the next connect: {}", owed)

    def _record_damage(self, reason: str) -> None:
        """Damage found while applying: the next connect asks for a full sync, which
        rewrites the graph's records."""
        try:
            self._store.write(lambda txn: self._graph.mark_damaged(txn, reason[:500]),
                              maintenance=True)
        except EdgeSyncError as exc:
            _log.bind(error=str(exc)).error("damage not recorded: {}", exc)

    def _answer(self, cmd: ApplyDownlink, out: DownlinkOutcome) -> DownlinkApplied:
        """After the commit: tell, count and log what one downlink did; its answer."""
        msg: edge_pb2.DownlinkMsg = cmd.msg
        dl_id = msg.downlinkMsgId
        identity = customer = None
        if msg.HasField("edgeConfiguration"):
            c = msg.edgeConfiguration
            identity = (uuid_of(c.tenantIdMSB, c.tenantIdLSB), uuid_of(c.edgeIdMSB, c.edgeIdLSB))
            customer = uuid_of(c.customerIdMSB, c.customerIdLSB)
        if out.fresh and self._tokens is not None and (
                msg.deviceUpdateMsg or msg.deviceCredentialsUpdateMsg
                or out.graph.devices_changed or out.removed):
            # before the entity actors are told: a token checked from now on reads the commit;
            # what acts for a revoked device (an MQTT connection, an HTTP long poll) ends
            self._tokens.invalidate(revocations(out))
        if self._unstored and self._unstored.pop(downlink_key(msg), None) is not None:
            _log.bind(downlink_id=dl_id).info(
                "downlink {} stored when sent again after a store failure", dl_id)
        if out.fresh:
            self._tell_sessions(out)
            self._report.applied(dl_id, out)
            if self._rules_changed is not None and _changes_rule_chains(out):
                self._rules_changed()
            self._relations.send(everything=msg.HasField("syncCompletedMsg"))
            if msg.HasField("syncCompletedMsg"):
                self._metadata.ask()
        else:
            self._report.duplicate(dl_id)
        if out.graph.refused:  # committed without them: answered as ThingsBoard Edge answers
            return DownlinkApplied(cmd.stream_id, dl_id, False, "; ".join(out.graph.refused),
                                   sync_completed=msg.HasField("syncCompletedMsg"),
                                   identity=identity, customer_id=customer,
                                   device_profiles=out.device_profiles, retryable=False)
        return DownlinkApplied(cmd.stream_id, dl_id, True, duplicate=not out.fresh,
                               sync_completed=msg.HasField("syncCompletedMsg"), identity=identity,
                               customer_id=customer, device_profiles=out.device_profiles)

    def _tell_sessions(self, out: DownlinkOutcome) -> None:
        """After the commit: the devices' entity actors deliver the new requests and wake the
        long polls waiting for shared attributes; a removed device's actor (deleted, taken by
        a cascade or by a full sync's sweep) drops the requests it holds (closed in the
        store with the device) and answers its waiting polls, as after an edge's delete."""
        if self._notify is None:
            return
        gone = set(out.graph.devices_removed)
        gone.update(uuid.UUID(r.id) for r in out.removed
                    if r.entity_type == "DEVICE" and not r.held)
        for device_id in sorted(gone):
            self._notify(EntityDeleted(device_id))
        for device_id, requests in out.rpc_queued.items():
            self._report.rpc_queued(len(requests))
            self._notify(RpcQueued(device_id, tuple(requests)))
        for device_id, (changed, deleted) in out.shared_changed.items():
            self._notify(SharedAttributesApplied(device_id, tuple(changed.items()),
                                                 tuple(deleted)))

    def _apply_in(self, txn: lmdb.Transaction, cmd: ApplyDownlink, key: bytes, now: int,
                  track: SyncTrack) -> DownlinkOutcome:
        msg: edge_pb2.DownlinkMsg = cmd.msg
        # a contact with the cloud (a redelivery too): at most once a minute, always at a
        # sync's end (storage/link_contact.py)
        self._contact.refresh(txn, now, force=msg.HasField("syncCompletedMsg"))
        if self._entities.downlink_applied(txn, key):
            if track.in_sync(cmd.stream_id) and self._graph.full_sync_active(txn):
                self._applier.mark_seen(txn, msg)  # still assigned: not removed at the end
            return DownlinkOutcome(False, "duplicate")
        out = DownlinkOutcome(True, set_aside=set_aside_kinds(msg))
        in_full_sync = track.in_sync(cmd.stream_id)  # before its SyncCompletedMsg ends it
        done: list[str] = []
        # the entity graph first, in full-sync order: a device names its profile, credentials
        # and attributes a device
        self._applier.apply(txn, msg, now, out.graph)
        done.extend(out.graph.done)
        for data in msg.entityData:
            applied = self._data.entity_data(txn, data, now, out)
            if isinstance(applied, str):
                done.append(applied)
            else:
                out.set_aside[applied.kind] = out.set_aside.get(applied.kind, 0) + 1
        for call in msg.deviceRpcCallMsg:
            if call.HasField("requestMsg"):
                done.append(self._data.rpc_request(txn, call, now, out))
        if msg.HasField("syncCompletedMsg"):
            # what waits for something the edge made itself (no downlink released it)
            self._applier.release_ready(txn, now, out.graph)
            done.append(self._sync_completed(txn, cmd, now, track, out))
        if not cmd.peer_ordered:  # a ThingsBoard server: relations come when asked for
            asked = self._relations.record(txn, out.graph.saved, full_sync=in_full_sync)
            if asked:
                done.append(f"relations of {asked} entities to be asked for")
        if msg.HasField("edgeConfiguration"):
            done.append("edge configuration")
        for kind, n in out.set_aside.items():
            done.append(f"{n} {kind} set aside")
        if msg.deviceProfileUpdateMsg or out.graph.profiles_changed or any(
                r.entity_type == "DEVICE_PROFILE" for r in out.removed):
            out.device_profiles = self._entities.device_profile_ids(txn)
        if not out.graph.refused:  # else a resend is applied again (and refused again)
            self._entities.record_downlink(txn, key, now_ms=now)
        out.what = "; ".join(done) or "empty"
        return out

    def _sync_completed(self, txn: lmdb.Transaction, cmd: ApplyDownlink, now: int,
                        track: SyncTrack, out: DownlinkOutcome) -> str:
        """A SyncCompletedMsg: the end of the full sync under way, when it is this one."""
        which = track.completed(cmd.stream_id)
        if which == "earlier":
            return "sync completed (an earlier request's)"
        if which == "other" or not self._graph.full_sync_active(txn):
            return "sync completed"
        if self._unstored or self._untracked_failures:  # what they carry was not marked
            # seen: a sweep would remove it
            self._graph.drop_full_sync_marks(txn)
            out.warnings.append(
                f"full sync ended with downlinks the store did not take ({self._unstored_text()}): "
                "nothing removed at its end; the next connect asks for a full sync again")
            more = (f", {self._untracked_failures} more store failures"
                    if self._untracked_failures else "")
            return f"full sync completed without its sweep ({len(self._unstored)} not stored{more})"
        # ThingsBoard's full sync sends no relations: the edge's stay (their requests are
        # answered after this SyncCompletedMsg)
        out.removed = self._graph.complete_full_sync(txn, now_ms=now, version=self._version,
                                                     sweep_relations=cmd.peer_ordered)
        out.full_sync_completed = True
        return f"full sync completed ({len(out.removed)} removed)"

    def _unstored_text(self) -> str:
        """The downlinks not stored, for one log line: the first ids, how many more, and the
        failures of downlinks beyond those kept (a resend of one counts again)."""
        named = sorted(self._unstored.values())[:_UNSTORED_NAMED]
        parts = []
        if named:
            rest = len(self._unstored) - len(named)
            parts.append(", ".join(map(str, named)) + (f" and {rest} more" if rest else ""))
        if self._untracked_failures:
            parts.append(f"{self._untracked_failures} more store failures of downlinks not "
                         "tracked one by one")
        return "; ".join(parts)


def revocations(out: DownlinkOutcome) -> list[Revocation]:
    """The devices a committed downlink took an access token from (changed, or removed for
    credentials of another type) or removed (deleted, with a cascade, or by a full sync's
    end), in that order: a device deleted after its token changed is told as deleted. What
    authenticated as one of them closes (ThingsBoard: DeviceActorMessageProcessor
    .processCredentialsUpdate closes every session of the device, CREDENTIALS_UPDATED; a
    deleted device's sessions are closed by DefaultTransportService.onDeviceDeleted)."""
    g = out.graph
    found = [Revocation(d, TOKEN_CHANGED, "its access token was changed by the cloud")
             for d in g.tokens_changed]
    found.extend(Revocation(r.device_id, TOKEN_REMOVED, "its access token was removed: the "
                            f"cloud gave it {r.credentials_type} credentials") for r in g.revoked)
    found.extend(Revocation(d, DEVICE_DELETED, "it was deleted by the cloud")
                 for d in g.devices_removed)
    found.extend(Revocation(uuid.UUID(r.id), DEVICE_DELETED, "it was removed after full sync: "
                            "no longer assigned to this edge")
                 for r in out.removed if r.entity_type == "DEVICE" and not r.held)
    return found


def _changes_rule_chains(out: DownlinkOutcome) -> bool:
    """Whether a committed downlink created, changed or removed a rule chain or its metadata."""
    kinds = ("RULE_CHAIN", "RULE_CHAIN_METADATA")
    return (any(kind in kinds for kind, _action in out.graph.applied)
            or any(r.entity_type in kinds for r in out.removed)
            or bool(out.graph.released))
