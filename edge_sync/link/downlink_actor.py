"""The DownlinkActor: applies each DownlinkMsg from the cloud in one LMDB write transaction that
also records the downlink's key, then tells the ConnectionActor to acknowledge it. A downlink
whose key is already recorded (a redelivery) is only acknowledged.

The key is the downlinkMsgId plus a hash of the serialized message without its send time
(cloudTimeMillis, stamped anew on every resend), so a peer that picks ids at random
(ThingsBoard) works: a redelivery hashes the same, two different downlinks do not.
"""

from __future__ import annotations

import hashlib
import struct
import uuid
from dataclasses import dataclass, field, replace
from typing import Any

import lmdb
from loguru import logger

from edge_sync.actors.address import Address
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.wire import ACTION_OF_UPDATE, entity_id_in, kv_dict, parse_entity_json, uuid_of
from edge_sync.errors import BadRequest, EdgeSyncError
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore, TokenCache
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Action, Device, Scope
from edge_sync.supervisor import ExitReporter, SupervisedActor

_log = logger.bind(component="downlink")


@dataclass(frozen=True, slots=True)
class ApplyDownlink:
    """From the ConnectionActor: a downlink that arrived on stream ``stream_id``. The message
    object is handed over; the sender never touches it again."""

    stream_id: int
    msg: Any = field(compare=False)  # edge_pb2.DownlinkMsg


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
    ) -> None:
        super().__init__(report_exit)
        self._tokens = tokens
        self._store = store
        self._entities = EntityStore(store)
        self._connection = connection
        self._clock = clock
        self._applied = metrics.counter("edge_downlinks_applied_total", "downlinks applied")
        self._duplicates = metrics.counter(
            "edge_downlinks_duplicate_total", "redelivered downlinks only acknowledged")
        self._failed = metrics.counter("edge_downlinks_failed_total", "downlinks that failed")

    def on_receive(self, message: Any) -> Any:
        if isinstance(message, ApplyDownlink):
            self._connection.tell(self._apply(message))
        return None

    def _apply(self, cmd: ApplyDownlink) -> DownlinkApplied:
        msg: edge_pb2.DownlinkMsg = cmd.msg
        key = downlink_key(msg)
        dl_id = msg.downlinkMsgId
        sync_completed = msg.HasField("syncCompletedMsg")
        identity = customer = None
        if msg.HasField("edgeConfiguration"):
            c = msg.edgeConfiguration
            identity = (uuid_of(c.tenantIdMSB, c.tenantIdLSB), uuid_of(c.edgeIdMSB, c.edgeIdLSB))
            customer = uuid_of(c.customerIdMSB, c.customerIdLSB)
        now = self._clock.now_ms()
        try:
            # maintenance: a full store must still take what the cloud sends (sync completion
            # above all), or the link could never sync again and drain the backlog
            fresh, what = self._store.write(lambda txn: self._apply_in(txn, msg, key, now),
                                            maintenance=True)
        except Exception as exc:  # a store failure (resent later) or a malformed downlink:
            # answer success=false, never crash on it (a crash would block the downlink queue)
            reason = (str(exc) if isinstance(exc, EdgeSyncError)
                      else f"{type(exc).__name__}: {str(exc)[:200]}")
            self._failed.inc()
            _log.bind(downlink_id=dl_id, error=reason).error("downlink {} not applied: {}", dl_id,
                                                             reason)
            return DownlinkApplied(cmd.stream_id, dl_id, False, reason)
        if fresh and self._tokens is not None and (msg.deviceUpdateMsg or msg.deviceCredentialsUpdateMsg):
            self._tokens.invalidate()
        if fresh:
            self._applied.inc()
            _log.bind(downlink_id=dl_id, applied=what).info("downlink {} applied: {}", dl_id, what)
        else:
            self._duplicates.inc()
            _log.bind(downlink_id=dl_id).info("downlink {} redelivered: acknowledged only", dl_id)
        return DownlinkApplied(cmd.stream_id, dl_id, True, duplicate=not fresh,
                               sync_completed=sync_completed, identity=identity,
                               customer_id=customer)

    def _apply_in(
        self, txn: lmdb.Transaction, msg: edge_pb2.DownlinkMsg, key: bytes, now: int
    ) -> tuple[bool, str]:
        if self._entities.downlink_applied(txn, key):
            return False, "duplicate"
        done: list[str] = []
        for dev in msg.deviceUpdateMsg:
            done.append(self._device(txn, dev, now))
        for cred in msg.deviceCredentialsUpdateMsg:
            done.append(self._credentials(txn, cred))
        for data in msg.entityData:
            done.append(self._entity_data(txn, data, now))
        if msg.HasField("syncCompletedMsg"):
            done.append("sync completed")
        if msg.HasField("edgeConfiguration"):
            done.append("edge configuration")
        for name in ("deviceProfileUpdateMsg", "ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg",
                     "dashboardUpdateMsg", "assetUpdateMsg", "alarmUpdateMsg", "userUpdateMsg",
                     "customerUpdateMsg", "relationUpdateMsg", "widgetsBundleUpdateMsg",
                     "widgetTypeUpdateMsg", "deviceRpcCallMsg", "assetProfileUpdateMsg"):
            n = len(getattr(msg, name))
            if n:
                done.append(f"{n} {name} not applied on this edge yet")
        self._entities.record_downlink(txn, key, now_ms=now)
        return True, "; ".join(done) or "empty"

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
        device = Device(
            id=device_id, name=name, type=str(body.get("type") or "default"),
            token=old.token if old else "",
            created_time=int(body.get("createdTime") or now), label=str(body.get("label") or ""),
            version=(old.version + 1) if old else 1,
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

    def _entity_data(self, txn: lmdb.Transaction, d: edge_pb2.EntityDataProto, now: int) -> str:
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
                self._entities.put_attributes(txn, eid, scope, values, ts=ts)
                return f"{len(values)} {scope.value} attributes of {eid}"
        if d.HasField("attributeDeleteMsg"):
            scope = Scope(d.attributeDeleteMsg.scope or "SHARED_SCOPE")
            n = self._entities.delete_attributes(txn, eid, scope, d.attributeDeleteMsg.attributeNames)
            return f"{n} {scope.value} attributes of {eid} deleted"
        return f"entity data for {eid} not applied on this edge yet"
