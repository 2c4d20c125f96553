"""Applying a downlink's payloads other than the entity graph, inside its transaction: entity
data (attributes set or deleted, in any scope; the shared keys whose value changes noted for
the devices' long polls) and server-side RPC requests (deviceRpcCallMsg with a requestMsg:
stored QUEUED in the transaction that records the downlink's key, so a request survives a
crash right after the acknowledgement, and one whose requestUuid the device already has is not
stored again). Any other entity data (telemetry, say) is set aside under its kind. Pure over a
transaction and the entity and RPC stores; the DownlinkActor orchestrates.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import lmdb
from google.protobuf.descriptor import FieldDescriptor

from edge_sync.common.wire import kv_dict, uuid_of
from edge_sync.devices.rpc import RpcRequest, expiration_of
from edge_sync.errors import BadRequest
from edge_sync.link.downlink_report import DownlinkOutcome
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.records import Scope
from edge_sync.storage.rpc_store import RpcStore


@dataclass(frozen=True, slots=True)
class SetAside:
    """Entity data the edge does not apply, by its kind (``entityData.<content>``)."""

    kind: str


class DataApplier:
    """Applies entity data and RPC requests inside a write transaction."""

    def __init__(self, entities: EntityStore, rpcs: RpcStore) -> None:
        self._entities = entities
        self._rpcs = rpcs

    def rpc_request(self, txn: lmdb.Transaction, m: edge_pb2.DeviceRpcCallMsg, now: int,
                    out: DownlinkOutcome) -> str:
        """Store a server-side RPC request QUEUED (once per requestUuid); what was done."""
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
                       out: DownlinkOutcome) -> None:
        """Note the shared keys whose value changes (before they are written)."""
        old = self._entities.attributes(txn, eid, Scope.SHARED, values.keys())
        changed, deleted = out.shared_changed.setdefault(eid, ({}, []))
        for key, value in values.items():
            if key not in old or old[key] != value:
                changed[key] = value
                if key in deleted:
                    deleted.remove(key)

    def entity_data(self, txn: lmdb.Transaction, d: edge_pb2.EntityDataProto,
                    now: int, out: DownlinkOutcome) -> str | SetAside:
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
        return SetAside(f"entityData.{content}")
