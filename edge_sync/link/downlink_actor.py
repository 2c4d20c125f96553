"""The DownlinkActor: applies each DownlinkMsg from the cloud in one LMDB write transaction that
also records the downlink's key, then tells the ConnectionActor to acknowledge it. A downlink
whose key is already recorded (a redelivery) is only acknowledged. Downlinks that arrive while
the previous ones are applied share one transaction (group commit); should it fail, each is
applied alone, so a refused one fails alone.

The key is the downlinkMsgId plus a hash of the serialized message without its send time
(cloudTimeMillis, stamped anew on every resend), so a peer that picks ids at random
(ThingsBoard) works: a redelivery hashes the same, two different downlinks do not.

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
stored again); then sync completion and the edge configuration. After the commit the devices'
entity actors are told (``notify``): the RPC requests to deliver, and the shared attributes
that changed (only the keys whose value changed, and those deleted) for the devices' long
polls. Every other kind ThingsBoard sends (alarms, OTA packages, admin settings, answers to
device-originated RPC, ...) is set aside: acknowledged with success, counted by kind in
``edge_downlinks_set_aside_total{kind=...}`` and logged at INFO the first time a kind comes.
A redelivery is counted as a duplicate only, not again by kind.

Full sync (the ConnectionActor decides when, link/state.py sync_mode): FullSyncStarted, sent
before the SyncRequestMsg so it precedes every downlink of that sync here, records a new sync
generation durably; everything applied or found unchanged (or redelivered) during it is marked
seen; at its SyncCompletedMsg, in the same transaction, what was not seen is removed with its
dependants (except what the edge made and the cloud may not have yet), logged one line each
("removed after full sync: no longer assigned to this edge"): ThingsBoard Edge leaves such
orphans. The edge version is recorded and the sync flags cleared. After a SyncCompletedMsg and
at start, every rule chain without its metadata is reported once per chain (and change) through
``request_metadata`` (wired to the uplink event that asks the cloud for it).

A downlink that cannot be applied is answered success=false with the error and the project's
``retryable`` flag: true when the edge's own store failed (StorageError: a full disk, the size
cap), so the cloud resends it and never parks it; false when its content is refused.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import lmdb
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.actors.messages import RpcQueued, SharedAttributesApplied
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.wire import kv_dict, uuid_of
from edge_sync.devices.rpc import RpcRequest, expiration_of
from edge_sync.errors import BadRequest, EdgeSyncError, StorageCorrupt, StorageError
from edge_sync.link.graph_apply import GRAPH_FIELDS, GraphApplier, GraphOutcome
from edge_sync.link.state import edge_version
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore, TokenCache
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore, Removal, held_entity_key
from edge_sync.storage.records import Scope
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.supervisor import ExitReporter, SupervisedActor

_log = logger.bind(component="downlink")


@dataclass(frozen=True, slots=True)
class ApplyDownlink:
    """From the ConnectionActor: a downlink that arrived on stream ``stream_id``. The message
    object is handed over; the sender never touches it again."""

    stream_id: int
    msg: Any = field(compare=False)  # edge_pb2.DownlinkMsg


@dataclass(frozen=True, slots=True)
class FullSyncStarted:
    """From the ConnectionActor, just before it sends SyncRequestMsg{fullSync=true} on stream
    ``stream_id``: a new sync generation starts. ``earlier_syncs``: the sync requests sent on
    that stream before it; as many SyncCompletedMsgs on the stream are theirs, not this
    sync's (the cloud answers a stream's requests in order)."""

    stream_id: int
    reason: str
    earlier_syncs: int = 0


@dataclass(frozen=True, slots=True)
class _ApplyGroup:
    """Internal: apply the downlinks gathered so far."""


_GROUP_MAX = 500  # downlinks applied in one transaction at most


@dataclass(frozen=True, slots=True)
class DownlinkApplied:
    """To the ConnectionActor: acknowledge downlink_id on stream_id."""

    stream_id: int
    downlink_id: int
    success: bool
    error: str = ""
    duplicate: bool = False
    sync_completed: bool = False
    identity: tuple[uuid.UUID, uuid.UUID] | None = None  # (tenant, edge) from edgeConfiguration
    customer_id: uuid.UUID | None = None  # ... and its customer (nil: none)
    # the synced device profiles (name -> id) after this downlink, when it changed them
    device_profiles: Mapping[str, uuid.UUID] | None = field(default=None, hash=False)
    # on failure: the edge's own temporary failure (its store), worth resending (True), or
    # content it refuses (False); None on success
    retryable: bool | None = None

    def response(self) -> edge_pb2.DownlinkResponseMsg:
        """The DownlinkResponseMsg answering the downlink (retryable set on a failure)."""
        msg = edge_pb2.DownlinkResponseMsg(success=self.success, errorMsg=self.error,
                                           downlinkMsgId=self.downlink_id)
        if self.retryable is not None:
            msg.retryable = self.retryable
        return msg


# The DownlinkMsg fields the edge applies (see the module docstring for the order), and those
# that are no payload at all. Every other field present is a kind set aside.
APPLIED_KINDS = frozenset({"entityData", "deviceRpcCallMsg", "syncCompletedMsg",
                           "edgeConfiguration"}) | GRAPH_FIELDS
_NOT_PAYLOADS = frozenset({"downlinkMsgId", "cloudTimeMillis"})


def set_aside_kinds(msg: edge_pb2.DownlinkMsg) -> dict[str, int]:
    """Kind -> count of the payloads in ``msg`` that the edge does not apply: the lists it does
    not handle, and fields of a newer peer that this edge's schema does not know ("field N").
    (entityData the edge does not apply is counted where it is applied, by its content.)"""
    out: dict[str, int] = {}
    for fd, value in msg.ListFields():
        if fd.name in APPLIED_KINDS or fd.name in _NOT_PAYLOADS:
            continue
        out[fd.name] = len(value) if fd.is_repeated else 1
    answers = sum(1 for call in msg.deviceRpcCallMsg if not call.HasField("requestMsg"))
    if answers:  # answers to device-originated (client-side) RPC: not served by this edge
        out["deviceRpcCallMsg.responseMsg"] = answers
    for unknown in unknown_fields.UnknownFieldSet(msg):
        kind = f"field {unknown.field_number}"
        out[kind] = out.get(kind, 0) + 1
    return out


@dataclass(slots=True)
class _FullSync:
    """The full sync under way (in memory; its generation and flags are durable)."""

    stream_id: int
    skip: int  # sync completions on the stream that belong to earlier requests


@dataclass(slots=True)
class _SyncTrack:
    """The full sync as one write attempt sees it: a copy, adopted once the write commits
    (LmdbStore.write may run its function again); with the SyncCompletedMsgs applied on the
    latest stream (stream id, count)."""

    full: _FullSync | None
    completions: tuple[int, int]


@dataclass(slots=True)
class _Outcome:
    """What one downlink's transaction did."""

    fresh: bool
    what: str = ""
    set_aside: dict[str, int] = field(default_factory=dict)
    device_profiles: dict[str, uuid.UUID] | None = None
    warnings: list[str] = field(default_factory=list)  # logged once the transaction commits
    graph: GraphOutcome = field(default_factory=GraphOutcome)
    removed: list[Removal] = field(default_factory=list)  # by the full sync's end
    full_sync_completed: bool = False
    # told to the entity actors once the transaction commits
    rpc_queued: dict[uuid.UUID, list[RpcRequest]] = field(default_factory=dict)
    shared_changed: dict[uuid.UUID, tuple[dict[str, Any], list[str]]] = field(default_factory=dict)


def downlink_key(msg: edge_pb2.DownlinkMsg) -> bytes:
    content = edge_pb2.DownlinkMsg()
    content.CopyFrom(msg)
    content.ClearField("cloudTimeMillis")
    digest = hashlib.blake2b(content.SerializeToString(deterministic=True), digest_size=16).digest()
    return struct.pack(">i", msg.downlinkMsgId) + digest


class DownlinkActor(SupervisedActor):
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
    ) -> None:
        super().__init__(report_exit)
        self._tokens = tokens
        self._store = store
        self._entities = EntityStore(store)
        self._graph = GraphStore(store)
        self._applier = GraphApplier(self._graph)
        self._rpcs = RpcStore(store)
        self._notify = notify
        self._request_metadata = request_metadata
        self._metadata_asked: dict[uuid.UUID, int] = {}  # chain -> its updated_ms when asked
        self._version = version if version is not None else edge_version()
        self._full: _FullSync | None = None
        self._completions = (0, 0)  # (stream, SyncCompletedMsgs applied on it)
        self._group: list[ApplyDownlink] = []
        self._connection = connection
        self._clock = clock
        self._applied = metrics.counter("edge_downlinks_applied_total", "downlinks applied")
        self._duplicates = metrics.counter(
            "edge_downlinks_duplicate_total", "redelivered downlinks only acknowledged")
        self._failed = metrics.counter("edge_downlinks_failed_total", "downlinks that failed")
        self._rpc_requests = metrics.counter_family(
            "edge_rpc_requests_total", "server-side RPC requests by the status they reached",
            "status")
        self._set_aside = metrics.counter_family(
            "edge_downlinks_set_aside_total",
            "downlink payloads of a kind the edge does not apply, acknowledged and counted",
            "kind")
        self._m_graph = metrics.counter_family(
            "edge_graph_entities_applied_total",
            "entities and relations of the entity graph applied, by kind and action "
            "(KIND:ADDED, KIND:UPDATED, KIND:DELETED; deletes include cascades)", "kind_action")
        self._m_held = metrics.counter(
            "edge_graph_held_total", "entities held until their references are on the edge")
        self._m_released = metrics.counter(
            "edge_graph_released_total", "held entities applied once their references came")
        self._m_removed = metrics.counter(
            "edge_graph_removed_after_full_sync_total",
            "entities, relations and held entities removed at the end of a full sync (no "
            "longer assigned to this edge)")
        metrics.gauge("edge_graph_held", "entities held now, waiting for their references",
                      self._held_now)

    def _held_now(self) -> float:
        with self._store.read() as txn:
            return float(self._graph.held_count(txn))

    def on_start(self) -> None:
        """Actor thread: apply what waited for something the edge made meanwhile, and ask for
        the metadata of rule chains the edge has without it."""
        self._release_ready()
        self._ask_missing_metadata()

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
            self._tokens.invalidate()
        self._count_graph(0, _Outcome(True, graph=out))

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
        return None

    # -- full sync -------------------------------------------------------------------------------

    def _start_full_sync(self, message: FullSyncStarted) -> None:
        now = self._clock.now_ms()
        try:
            generation = self._store.write(
                lambda txn: self._graph.start_full_sync(txn, now_ms=now, reason=message.reason),
                maintenance=True)
        except EdgeSyncError as exc:  # no generation: nothing is removed at its end
            self._full = None
            _log.bind(error=str(exc)).error(
                "full sync not recorded ({}): what it no longer sends stays on the edge", exc)
            return
        done = self._completions[1] if self._completions[0] == message.stream_id else 0
        self._full = _FullSync(message.stream_id, max(0, message.earlier_syncs - done))
        _log.bind(generation=generation, reason=message.reason).info(
            "full sync {} started ({}): what it does not send is removed at its end",
            generation, message.reason)

    def _ask_missing_metadata(self) -> None:
        """Every rule chain on the edge without its metadata (applied or held), once per chain
        and version of it in this process, through ``request_metadata``."""
        if self._request_metadata is None:
            return
        graph = self._graph
        with self._store.read() as txn:
            missing = [c for c in graph.entities(txn, entity_type="RULE_CHAIN")
                       if graph.entity(txn, c.id, "RULE_CHAIN_METADATA") is None
                       and not graph.is_held(txn, held_entity_key("RULE_CHAIN_METADATA", c.id))]
        for chain in missing:
            if self._metadata_asked.get(chain.id) == chain.updated_ms:
                continue
            self._metadata_asked[chain.id] = chain.updated_ms
            _log.bind(entity_type="RULE_CHAIN", entity_id=str(chain.id)).info(
                "rule chain {} ({}) has no metadata on the edge: asking the cloud for it",
                chain.id, chain.name)
            try:
                self._request_metadata(chain.id)
            except Exception as exc:  # the request is the caller's; the actor goes on
                _log.bind(entity_id=str(chain.id), error=str(exc)).warning(
                    "rule chain metadata request for {} failed: {}", chain.id, exc)
                self._metadata_asked.pop(chain.id, None)

    # -- applying --------------------------------------------------------------------------------

    def _apply_group(self) -> None:
        """Apply every downlink that came while the previous group was applied in one
        transaction (one fsync: a burst of downlinks, say a shared attribute set on a thousand
        devices, is not a thousand fsyncs), then answer each in order. When the transaction
        fails, each downlink is applied alone, so a bad one fails alone."""
        group, self._group = self._group, []
        if len(group) > 1:
            now = self._clock.now_ms()

            def fn(txn: lmdb.Transaction) -> tuple[list[_Outcome], _SyncTrack]:
                track = _SyncTrack(self._copy_full(), self._completions)
                return ([self._apply_in(txn, c, downlink_key(c.msg), now, track)
                         for c in group], track)
            try:
                outs, track = self._store.write(fn, maintenance=True)
            except Exception:
                outs = None
            if outs is not None:
                self._full, self._completions = track.full, track.completions
                for cmd, out in zip(group, outs, strict=True):
                    self._connection.tell(self._answer(cmd, out))
                return
        for cmd in group:
            self._connection.tell(self._apply(cmd))

    def _copy_full(self) -> _FullSync | None:
        return None if self._full is None else _FullSync(self._full.stream_id, self._full.skip)

    def _apply(self, cmd: ApplyDownlink) -> DownlinkApplied:
        msg: edge_pb2.DownlinkMsg = cmd.msg
        key = downlink_key(msg)
        dl_id = msg.downlinkMsgId
        now = self._clock.now_ms()

        def fn(txn: lmdb.Transaction) -> tuple[_Outcome, _SyncTrack]:
            track = _SyncTrack(self._copy_full(), self._completions)
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
            # downlink: retryable, so our cloud resends it and never parks it
            retryable = isinstance(exc, StorageError)
            self._failed.inc()
            _log.bind(downlink_id=dl_id, error=reason, retryable=retryable).error(
                "downlink {} not applied: {}", dl_id, reason)
            if isinstance(exc, StorageCorrupt):
                self._record_damage(reason)
            return DownlinkApplied(cmd.stream_id, dl_id, False, reason, retryable=retryable)
        self._full, self._completions = track.full, track.completions
        return self._answer(cmd, out)

    def _record_damage(self, reason: str) -> None:
        """Damage found while applying: the next connect asks for a full sync, which
        rewrites the graph's records."""
        try:
            self._store.write(lambda txn: self._graph.mark_damaged(txn, reason[:500]),
                              maintenance=True)
        except EdgeSyncError as exc:
            _log.bind(error=str(exc)).error("damage not recorded: {}", exc)

    def _answer(self, cmd: ApplyDownlink, out: _Outcome) -> DownlinkApplied:
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
            self._tokens.invalidate()
        if out.fresh:
            self._tell_sessions(out)
            self._applied.inc()
            self._count_set_aside(dl_id, out.set_aside)
            self._count_graph(dl_id, out)
            for warning in out.warnings + out.graph.warnings:
                _log.bind(downlink_id=dl_id).warning("downlink {}: {}", dl_id, warning)
            _log.bind(downlink_id=dl_id, applied=out.what).info("downlink {} applied: {}", dl_id,
                                                                out.what)
            if msg.HasField("syncCompletedMsg"):
                self._ask_missing_metadata()
        else:
            self._duplicates.inc()
            _log.bind(downlink_id=dl_id).info("downlink {} redelivered: acknowledged only", dl_id)
        return DownlinkApplied(cmd.stream_id, dl_id, True, duplicate=not out.fresh,
                               sync_completed=msg.HasField("syncCompletedMsg"), identity=identity,
                               customer_id=customer, device_profiles=out.device_profiles)

    def _count_graph(self, dl_id: int, out: _Outcome) -> None:
        g = out.graph
        for entity_type, action in g.applied:
            self._m_graph.inc(f"{entity_type}:{action}")
        for what in g.held:
            self._m_held.inc()
            _log.bind(downlink_id=dl_id, held=what).info("held until its references come: {}",
                                                         what)
        for what in g.released:
            self._m_released.inc()
            _log.bind(downlink_id=dl_id, released=what).info(
                "applied once its references came: {}", what)
        for r in out.removed:
            self._m_removed.inc()
            if r.entity_type != "RELATION" and not r.what.startswith("held "):
                self._m_graph.inc(f"{r.entity_type}:DELETED")
            _log.bind(entity_type=r.entity_type, entity_id=r.id, action="DELETED").info(
                "removed after full sync: no longer assigned to this edge: {}", r.what)
        if out.full_sync_completed:
            _log.bind(removed=len(out.removed), version=self._version).info(
                "full sync completed: {} removed (no longer assigned to this edge); edge version "
                "{} recorded", len(out.removed), self._version)

    def _tell_sessions(self, out: _Outcome) -> None:
        """After the commit: the devices' entity actors deliver the new requests and wake the
        long polls waiting for shared attributes."""
        if self._notify is None:
            return
        for device_id, requests in out.rpc_queued.items():
            self._rpc_requests.inc("QUEUED", len(requests))
            self._notify(RpcQueued(device_id, tuple(requests)))
        for device_id, (changed, deleted) in out.shared_changed.items():
            self._notify(SharedAttributesApplied(device_id, tuple(changed.items()),
                                                 tuple(deleted)))

    def _count_set_aside(self, dl_id: int, set_aside: dict[str, int]) -> None:
        """Count the kinds set aside; the first of a kind in this process is logged."""
        for kind, n in set_aside.items():
            first = self._set_aside.get(kind) == 0
            self._set_aside.inc(kind, n)
            if first:
                _log.bind(downlink_id=dl_id, kind=kind).info(
                    "cloud sent {}; set aside on this edge (acknowledged and counted; further "
                    "ones are only counted)", kind)

    def _apply_in(self, txn: lmdb.Transaction, cmd: ApplyDownlink, key: bytes, now: int,
                  track: _SyncTrack) -> _Outcome:
        msg: edge_pb2.DownlinkMsg = cmd.msg
        in_sync = track.full is not None and track.full.stream_id == cmd.stream_id
        if self._entities.downlink_applied(txn, key):
            if in_sync and self._graph.full_sync_active(txn):
                self._applier.mark_seen(txn, msg)  # still assigned: not removed at the end
            return _Outcome(False, "duplicate")
        out = _Outcome(True, set_aside=set_aside_kinds(msg))
        done: list[str] = []
        # the entity graph first, in full-sync order: a device names its profile, credentials
        # and attributes a device
        self._applier.apply(txn, msg, now, out.graph)
        done.extend(out.graph.done)
        for data in msg.entityData:
            applied = self._entity_data(txn, data, now, out)
            if isinstance(applied, str):
                done.append(applied)
            else:
                out.set_aside[applied.kind] = out.set_aside.get(applied.kind, 0) + 1
        for call in msg.deviceRpcCallMsg:
            if call.HasField("requestMsg"):
                done.append(self._rpc_request(txn, call, now, out))
        if msg.HasField("syncCompletedMsg"):
            # what waits for something the edge made itself (no downlink released it)
            self._applier.release_ready(txn, now, out.graph)
            done.append(self._sync_completed(txn, cmd, now, track, out))
        if msg.HasField("edgeConfiguration"):
            done.append("edge configuration")
        for kind, n in out.set_aside.items():
            done.append(f"{n} {kind} set aside")
        if msg.deviceProfileUpdateMsg or out.graph.profiles_changed or any(
                r.entity_type == "DEVICE_PROFILE" for r in out.removed):
            out.device_profiles = self._entities.device_profile_ids(txn)
        self._entities.record_downlink(txn, key, now_ms=now)
        out.what = "; ".join(done) or "empty"
        return out

    def _sync_completed(self, txn: lmdb.Transaction, cmd: ApplyDownlink, now: int,
                        track: _SyncTrack, out: _Outcome) -> str:
        """A SyncCompletedMsg: the end of the full sync under way, when it is this one."""
        stream, n = track.completions
        track.completions = (cmd.stream_id, n + 1 if stream == cmd.stream_id else 1)
        full = track.full
        if full is None or full.stream_id != cmd.stream_id:
            return "sync completed"
        if full.skip > 0:  # an earlier request's completion
            full.skip -= 1
            return "sync completed (an earlier request's)"
        track.full = None
        if not self._graph.full_sync_active(txn):
            return "sync completed"
        out.removed = self._graph.complete_full_sync(txn, now_ms=now, version=self._version)
        out.full_sync_completed = True
        return f"full sync completed ({len(out.removed)} removed)"

    def _rpc_request(self, txn: lmdb.Transaction, m: edge_pb2.DeviceRpcCallMsg, now: int,
                     out: _Outcome) -> str:
        device_id = uuid_of(m.deviceIdMSB, m.deviceIdLSB)
        request_uuid = uuid_of(m.requestUuidMSB, m.requestUuidLSB)
        if request_uuid.int == 0:
            raise BadRequest(f"deviceRpcCallMsg for {device_id}: no requestUuid")
        known = self._rpcs.find(txn, device_id, request_uuid)
        if known is not None:
            return f"RPC {m.requestId} to {device_id} already {known.status.value}"
        request = RpcRequest(
            device_id=device_id, request_uuid=request_uuid, request_id=m.requestId,
            method=m.requestMsg.method, params=m.requestMsg.params, oneway=m.oneway,
            expiration_time=expiration_of(m.expirationTime, now), queued_at=now, updated_at=now)
        self._rpcs.put(txn, request)
        out.rpc_queued.setdefault(device_id, []).append(request)
        return f"RPC {m.requestId} ({m.requestMsg.method}) to {device_id} queued"

    def _shared_change(self, txn: lmdb.Transaction, eid: uuid.UUID, values: dict[str, Any],
                       out: _Outcome) -> None:
        """Note the shared keys whose value changes (before they are written)."""
        old = self._entities.attributes(txn, eid, Scope.SHARED, values.keys())
        changed, deleted = out.shared_changed.setdefault(eid, ({}, []))
        for key, value in values.items():
            if key not in old or old[key] != value:
                changed[key] = value
                if key in deleted:
                    deleted.remove(key)

    def _entity_data(self, txn: lmdb.Transaction, d: edge_pb2.EntityDataProto,
                     now: int, out: _Outcome) -> str | _SetAside:
        """Attributes and attribute deletes are applied (what was done); any other entity data
        (telemetry, say) is set aside under its kind."""
        eid = uuid_of(d.entityIdMSB, d.entityIdLSB)
        for field_name in ("attributesUpdatedMsg", "postAttributesMsg"):
            if d.HasField(field_name):
                attrs = getattr(d, field_name)
                scope_name = d.postAttributeScope or ("SHARED_SCOPE" if attrs.shared else "")
                try:
                    scope = Scope(scope_name)
                except ValueError as exc:
                    raise BadRequest(f"attributes for {eid}: unknown scope {scope_name!r}") from exc
                values = kv_dict(attrs.kv)
                ts = d.attributeTs if d.HasField("attributeTs") else now
                if scope is Scope.SHARED:
                    self._shared_change(txn, eid, values, out)
                self._entities.put_attributes(txn, eid, scope, values, ts=ts)
                return f"{len(values)} {scope.value} attributes of {eid}"
        if d.HasField("attributeDeleteMsg"):
            scope = Scope(d.attributeDeleteMsg.scope or "SHARED_SCOPE")
            names = list(d.attributeDeleteMsg.attributeNames)
            if scope is Scope.SHARED:
                held = self._entities.attributes(txn, eid, Scope.SHARED, names)
                changed, deleted = out.shared_changed.setdefault(eid, ({}, []))
                for key in names:
                    changed.pop(key, None)
                    if key in held and key not in deleted:
                        deleted.append(key)
            n = self._entities.delete_attributes(txn, eid, scope, names)
            return f"{n} {scope.value} attributes of {eid} deleted"
        content = next((fd.name for fd, _ in d.ListFields() if fd.type == FieldDescriptor.TYPE_MESSAGE),
                       "empty")
        return _SetAside(f"entityData.{content}")


@dataclass(frozen=True, slots=True)
class _SetAside:
    kind: str
