"""The DownlinkActor: applies each DownlinkMsg from the cloud in one LMDB write transaction that
also records the downlink's key, then tells the ConnectionActor to acknowledge it. A downlink
whose key is already recorded (a redelivery) is only acknowledged. Downlinks that arrive while
the previous ones are applied share one transaction (group commit); should it fail, each is
applied alone, so a refused one fails alone.

The key is the downlinkMsgId plus a hash of the serialized message without its send time
(cloudTimeMillis, stamped anew on every resend), so a peer that picks ids at random
(ThingsBoard) works: a redelivery hashes the same, two different downlinks do not.

What the edge applies, in this order whatever the order of the lists (ThingsBoard sends a device
with its credentials and its profile in one DownlinkMsg): the tenant, device profiles, devices,
device credentials, entity data (attributes), server-side RPC requests (deviceRpcCallMsg with a
requestMsg: stored QUEUED, in the same transaction as the key, so a request survives a crash
right after the acknowledgement and a redelivery is never delivered twice; a request whose
requestUuid the device already has is not stored again), then sync completion and the edge
configuration. After the commit the devices' entity actors are told (``notify``): the RPC
requests to deliver, and the shared attributes that changed (only the keys whose value changed,
and those deleted) for the devices' long polls. Every other kind ThingsBoard sends (rule chains,
dashboards, widgets, queues, users, answers to device-originated RPC, ...) is set aside:
acknowledged with success, counted by kind in ``edge_downlinks_set_aside_total{kind=...}`` and
logged at INFO the first time a kind comes.
A redelivery is counted as a duplicate only, not again by kind.

A downlink that cannot be applied is answered success=false with the error and the project's
``retryable`` flag: true when the edge's own store failed (StorageError: a full disk, the size
cap), so the cloud resends it and never parks it; false when its content is refused.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import lmdb
from google.protobuf import unknown_fields
from google.protobuf.descriptor import FieldDescriptor
from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.actors.messages import RpcQueued, SharedAttributesApplied
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.wire import (
    ACTION_OF_UPDATE,
    entity_id_in,
    gateway_flag,
    kv_dict,
    parse_entity_json,
    uuid_of,
)
from edge_sync.devices.rpc import RpcRequest, expiration_of
from edge_sync.errors import BadRequest, EdgeSyncError, StorageError
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore, TokenCache
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Action, Device, DeviceProfile, Scope, Tenant
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
APPLIED_KINDS = frozenset({"tenantUpdateMsg", "deviceProfileUpdateMsg", "deviceUpdateMsg",
                           "deviceCredentialsUpdateMsg", "entityData", "deviceRpcCallMsg",
                           "syncCompletedMsg", "edgeConfiguration"})
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
class _Outcome:
    """What one downlink's transaction did."""

    fresh: bool
    what: str = ""
    set_aside: dict[str, int] = field(default_factory=dict)
    device_profiles: dict[str, uuid.UUID] | None = None
    warnings: list[str] = field(default_factory=list)  # logged once the transaction commits
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
    ) -> None:
        super().__init__(report_exit)
        self._tokens = tokens
        self._store = store
        self._entities = EntityStore(store)
        self._rpcs = RpcStore(store)
        self._notify = notify
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

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ApplyDownlink):
            self._group.append(message)
            if len(self._group) == 1:
                self.actor_ref.tell(_ApplyGroup())
            if len(self._group) >= _GROUP_MAX:
                self._apply_group()
        elif isinstance(message, _ApplyGroup) and self._group:
            self._apply_group()
        return None

    def _apply_group(self) -> None:
        """Apply every downlink that came while the previous group was applied in one
        transaction (one fsync: a burst of downlinks, say a shared attribute set on a thousand
        devices, is not a thousand fsyncs), then answer each in order. When the transaction
        fails, each downlink is applied alone, so a bad one fails alone."""
        group, self._group = self._group, []
        if len(group) > 1:
            now = self._clock.now_ms()
            try:
                outs = self._store.write(
                    lambda txn: [self._apply_in(txn, c.msg, downlink_key(c.msg), now)
                                 for c in group], maintenance=True)
            except Exception:
                outs = None
            if outs is not None:
                for cmd, out in zip(group, outs, strict=True):
                    self._connection.tell(self._answer(cmd, out))
                return
        for cmd in group:
            self._connection.tell(self._apply(cmd))

    def _apply(self, cmd: ApplyDownlink) -> DownlinkApplied:
        msg: edge_pb2.DownlinkMsg = cmd.msg
        key = downlink_key(msg)
        dl_id = msg.downlinkMsgId
        now = self._clock.now_ms()
        try:
            # maintenance: a full store must still take what the cloud sends (sync completion
            # above all), or the link could never sync again and drain the backlog
            out = self._store.write(lambda txn: self._apply_in(txn, msg, key, now),
                                    maintenance=True)
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
            return DownlinkApplied(cmd.stream_id, dl_id, False, reason, retryable=retryable)
        return self._answer(cmd, out)

    def _answer(self, cmd: ApplyDownlink, out: _Outcome) -> DownlinkApplied:
        """After the commit: tell, count and log what one downlink did; its answer."""
        msg: edge_pb2.DownlinkMsg = cmd.msg
        dl_id = msg.downlinkMsgId
        identity = customer = None
        if msg.HasField("edgeConfiguration"):
            c = msg.edgeConfiguration
            identity = (uuid_of(c.tenantIdMSB, c.tenantIdLSB), uuid_of(c.edgeIdMSB, c.edgeIdLSB))
            customer = uuid_of(c.customerIdMSB, c.customerIdLSB)
        if out.fresh and self._tokens is not None and (msg.deviceUpdateMsg or msg.deviceCredentialsUpdateMsg):
            self._tokens.invalidate()
        if out.fresh:
            self._tell_sessions(out)
            self._applied.inc()
            self._count_set_aside(dl_id, out.set_aside)
            for warning in out.warnings:
                _log.bind(downlink_id=dl_id).warning("downlink {}: {}", dl_id, warning)
            _log.bind(downlink_id=dl_id, applied=out.what).info("downlink {} applied: {}", dl_id,
                                                                out.what)
        else:
            self._duplicates.inc()
            _log.bind(downlink_id=dl_id).info("downlink {} redelivered: acknowledged only", dl_id)
        return DownlinkApplied(cmd.stream_id, dl_id, True, duplicate=not out.fresh,
                               sync_completed=msg.HasField("syncCompletedMsg"), identity=identity,
                               customer_id=customer, device_profiles=out.device_profiles)

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

    def _apply_in(
        self, txn: lmdb.Transaction, msg: edge_pb2.DownlinkMsg, key: bytes, now: int
    ) -> _Outcome:
        if self._entities.downlink_applied(txn, key):
            return _Outcome(False, "duplicate")
        out = _Outcome(True, set_aside=set_aside_kinds(msg))
        done: list[str] = []
        # dependencies first: a device names its profile, credentials and attributes a device
        for tenant in msg.tenantUpdateMsg:
            done.append(self._tenant(txn, tenant))
        for profile in msg.deviceProfileUpdateMsg:
            done.append(self._device_profile(txn, profile, out))
        for dev in msg.deviceUpdateMsg:
            done.append(self._device(txn, dev, now))
        for cred in msg.deviceCredentialsUpdateMsg:
            done.append(self._credentials(txn, cred))
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
            done.append("sync completed")
        if msg.HasField("edgeConfiguration"):
            done.append("edge configuration")
        for kind, n in out.set_aside.items():
            done.append(f"{n} {kind} set aside")
        if msg.deviceProfileUpdateMsg:
            out.device_profiles = self._entities.device_profile_ids(txn)
        self._entities.record_downlink(txn, key, now_ms=now)
        out.what = "; ".join(done) or "empty"
        return out

    def _tenant(self, txn: lmdb.Transaction, m: edge_pb2.TenantUpdateMsg) -> str:
        action = ACTION_OF_UPDATE.get(m.msgType)
        if action is None:
            raise BadRequest(f"tenantUpdateMsg type {m.msgType} unknown")
        if action == Action.DELETED:
            return "tenant deleted" if self._entities.delete_tenant(txn) else "tenant (none) deleted"
        body = parse_entity_json(m.entity, "tenantUpdateMsg")
        tenant_id = entity_id_in(body, "id", "tenantUpdateMsg", "TENANT")
        self._entities.put_tenant(txn, Tenant(tenant_id, str(body.get("title") or ""), m.entity))
        return f"tenant {tenant_id} {'created' if action == Action.ADDED else 'updated'}"

    def _device_profile(self, txn: lmdb.Transaction, m: edge_pb2.DeviceProfileUpdateMsg,
                        out: _Outcome) -> str:
        action = ACTION_OF_UPDATE.get(m.msgType)
        if action is None:
            raise BadRequest(f"deviceProfileUpdateMsg type {m.msgType} unknown")
        profile_id = uuid_of(m.idMSB, m.idLSB)
        if action == Action.DELETED:
            self._entities.delete_device_profile(txn, profile_id)
            return f"device profile {profile_id} deleted"
        body = parse_entity_json(m.entity, "deviceProfileUpdateMsg")
        if profile_id.int == 0:  # no id halves: the JSON's id
            profile_id = entity_id_in(body, "id", "deviceProfileUpdateMsg", "DEVICE_PROFILE")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"deviceProfileUpdateMsg: device profile {profile_id} has no name")
        old = self._entities.device_profile(txn, profile_id)
        displaced = self._entities.put_device_profile(txn, DeviceProfile(profile_id, name, m.entity))
        if displaced is not None:  # names are unique in a tenant: a rename not synced yet
            out.warnings.append(f"device profile name {name!r} moves from {displaced} to "
                                f"{profile_id}")
        return f"device profile {profile_id} ({name}) {'updated' if old else 'created'}"

    def _device(self, txn: lmdb.Transaction, m: edge_pb2.DeviceUpdateMsg, now: int) -> str:
        action = ACTION_OF_UPDATE.get(m.msgType)
        device_id = uuid_of(m.idMSB, m.idLSB)
        if action is None:
            raise BadRequest(f"deviceUpdateMsg type {m.msgType} unknown")
        if action == Action.DELETED:
            self._entities.delete_device(txn, device_id)
            return f"device {device_id} deleted"
        body = parse_entity_json(m.entity, "deviceUpdateMsg")
        name = body.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("deviceUpdateMsg: device has no name")
        old = self._entities.device(txn, device_id)
        other = self._entities.device_by_name(txn, name)
        if other is not None and other.id != device_id:
            raise BadRequest(f"device name {name!r} is taken on the edge by {other.id}")
        profile_id = old.profile_id if old else None  # kept when a downlink names none
        if body.get("deviceProfileId") is not None:
            profile_id = entity_id_in(body, "deviceProfileId", "deviceUpdateMsg", "DEVICE_PROFILE")
        gateway = gateway_flag(body.get("additionalInfo"))
        if gateway is None:  # no additionalInfo (the reference cloud sends none): kept
            gateway = old.gateway if old else False
        device = Device(
            id=device_id, name=name, type=str(body.get("type") or "default"),
            token=old.token if old else "",
            created_time=int(body.get("createdTime") or now), label=str(body.get("label") or ""),
            version=(old.version + 1) if old else 1, profile_id=profile_id, gateway=gateway,
        )
        self._entities.put_device(txn, device)
        return f"device {device_id} {'updated' if old else 'created'}"

    def _credentials(self, txn: lmdb.Transaction, m: edge_pb2.DeviceCredentialsUpdateMsg) -> str:
        body = parse_entity_json(m.entity, "deviceCredentialsUpdateMsg")
        device_id = entity_id_in(body, "deviceId", "deviceCredentialsUpdateMsg")
        token = body.get("credentialsId")
        if body.get("credentialsType", "ACCESS_TOKEN") != "ACCESS_TOKEN":
            return f"device {device_id}: credentials type {body.get('credentialsType')} ignored"
        if not isinstance(token, str) or not token:
            raise BadRequest("deviceCredentialsUpdateMsg: no credentialsId")
        device = self._entities.device(txn, device_id)
        if device is None:
            raise BadRequest(f"credentials for unknown device {device_id}")
        holder = self._entities.device_by_token(txn, token)
        if holder is not None and holder.id != device_id:
            raise BadRequest(f"access token of device {device_id} is used by another device")
        self._entities.put_device(txn, replace(device, token=token))
        return f"device {device_id} credentials updated"

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
