"""The entity changes an edge sends, applied by the reference cloud in the uplink's transaction
(CloudStore.apply_uplink_full), in the shapes of docs/edge-entities.md ("What goes to the cloud"):
assets created, changed and deleted, relations added and deleted, a device deleted, shared keys
deleted, timeseries keys deleted (extension field 1001), alarms acknowledged; each deduplicated
by (edge, store, seq) and queued for the other edges that hold the entity."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore, UplinkApplied
from edge_sync.cloud.uplink import events_to_apply
from edge_sync.common import ids
from edge_sync.common.wire import asset_entity, uuid_halves, uuid_of
from edge_sync.errors import PayloadRejected
from edge_sync.proto import edge_pb2

NOW = 1_764_921_600_000
CREATED = edge_pb2.ENTITY_CREATED_RPC_MESSAGE
UPDATED = edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
DELETED = edge_pb2.ENTITY_DELETED_RPC_MESSAGE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CloudStore]:
    s = CloudStore(tmp_path / "cloud")
    yield s
    s.close()


@pytest.fixture
def service(store: CloudStore) -> CloudService:
    return CloudService(store)


@pytest.fixture
def edges(service: CloudService) -> tuple[uuid.UUID, uuid.UUID]:
    return tuple(service.create_edge(rk, routing_key=rk, secret="s3cret")[0].edge_id  # type: ignore[return-value]
                 for rk in ("rk-1", "rk-2"))


def typed(kind: str, value: uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


def apply(store: CloudStore, edge_id: uuid.UUID, **lists: Any) -> UplinkApplied:
    up = edge_pb2.UplinkMsg(uplinkMsgId=1, **lists)
    return store.apply_uplink_full(edge_id, events_to_apply(up), NOW, incarnation=0)


def drain(store: CloudStore, edge_id: uuid.UUID) -> list[edge_pb2.DownlinkMsg]:
    got = store.queued_after(edge_id, 0, 10_000)
    store.remove_downlinks(edge_id, [q.number for q in got])
    return [edge_pb2.DownlinkMsg.FromString(q.payload) for q in got]


def asset_msg(asset_id: uuid.UUID, name: str, seq: int, msg_type: int = CREATED, *,
              profile: uuid.UUID | None = None, body: dict[str, Any] | None = None,
              **extra: Any) -> edge_pb2.AssetUpdateMsg:
    """An assetUpdateMsg as our edge sends it (common/wire.asset_entity: no tenant or customer,
    ``assetProfileId`` only when the edge knows the profile), or with ``body`` as the entity."""
    msb, lsb = uuid_halves(asset_id)
    msg = edge_pb2.AssetUpdateMsg(msgType=msg_type, idMSB=msb, idLSB=lsb, edgeSeqId=seq)
    if msg_type != DELETED:
        if body is None:
            body = asset_entity(asset_id, created_time=NOW, name=name, type_="default", label="",
                                profile_id=profile, additional_info=None)
        msg.entity = json.dumps({**body, **extra})
    return msg


def default_profile(service: CloudService) -> uuid.UUID:
    (found,) = service.graph.entities(entity_type="ASSET_PROFILE", name="default")
    return found.id


def as_the_edge_keeps(body: dict[str, Any]) -> dict[str, Any]:
    """An entity's JSON without the tenant and customer (the edge adds its own when it sends)."""
    return {k: v for k, v in body.items() if k not in ("tenantId", "customerId")}


def relation_msg(src: tuple[str, uuid.UUID], dst: tuple[str, uuid.UUID], seq: int,
                 msg_type: int = CREATED) -> edge_pb2.RelationUpdateMsg:
    return edge_pb2.RelationUpdateMsg(msgType=msg_type, edgeSeqId=seq, entity=json.dumps(
        {"from": typed(*src), "to": typed(*dst), "type": "Contains", "typeGroup": "COMMON",
         "additionalInfo": None}))


def test_an_asset_the_edge_creates_is_stored_assigned_to_it_and_applied_once(
        store, service, edges):
    e1, _ = edges
    asset_id = ids.time_based()
    sent = asset_msg(asset_id, "made on edge", 1, profile=default_profile(service))
    out = apply(store, e1, assetUpdateMsg=[sent])
    assert (out.applied, out.duplicates, dict(out.entities)) == (1, 0, {"ASSET": 1})
    entity = service.graph.entity(asset_id)
    assert entity is not None and entity.edges == (e1,) and entity.name == "made on edge"
    body = entity.body()
    assert body["tenantId"] == typed("TENANT", store.tenant_id())  # filled by the cloud
    assert body["customerId"]["entityType"] == "CUSTOMER"
    assert as_the_edge_keeps(body) == json.loads(sent.entity)
    # the cloud keeps what the edge sent, the tenant and customer aside: nothing sent back
    assert drain(store, e1) == []
    again = apply(store, e1, assetUpdateMsg=[sent])
    assert (again.applied, again.duplicates, dict(again.entities)) == (0, 1, {})
    [event] = store.events(e1)
    assert (event.entity_type, event.entity_id, event.action) == ("ASSET", asset_id, "ADDED")


def test_an_asset_change_goes_to_the_other_edges_holding_it_and_a_delete_deletes_it(
        store, service, edges):
    e1, e2 = edges
    asset = service.graph.create_entity("ASSET", {"name": "shared"}, now_ms=NOW)
    for edge_id in edges:
        service.graph.assign(edge_id, "ASSET", asset.id, now_ms=NOW)
        drain(store, edge_id)
    out = apply(store, e1, assetUpdateMsg=[asset_msg(asset.id, "shared", 5, UPDATED,
                                                     body=as_the_edge_keeps(asset.body()),
                                                     label="renamed on e1")])
    assert out.woken == {e2} and dict(out.queued) == {"assetUpdateMsg": 1}
    (msg,) = drain(store, e2)
    assert msg.assetUpdateMsg[0].msgType == UPDATED
    assert json.loads(msg.assetUpdateMsg[0].entity)["label"] == "renamed on e1"
    assert drain(store, e1) == []
    out = apply(store, e1, assetUpdateMsg=[asset_msg(asset.id, "", 6, DELETED)])
    assert out.woken == {e1, e2} and service.graph.entity(asset.id) is None
    (gone,) = drain(store, e2)
    assert gone.assetUpdateMsg[0].msgType == DELETED
    # echoed to the deleting edge too: a no-op there, unless a full sync brought it back
    (echo,) = drain(store, e1)
    assert (echo.assetUpdateMsg[0].msgType,
            uuid_of(echo.assetUpdateMsg[0].idMSB, echo.assetUpdateMsg[0].idLSB)) == (
        DELETED, asset.id)


def test_an_edge_asset_whose_name_is_taken_is_renamed_and_the_edge_told(store, service, edges):
    e1, _ = edges
    service.graph.create_entity("ASSET", {"name": "pump"}, now_ms=NOW)
    asset_id = ids.time_based()
    apply(store, e1, assetUpdateMsg=[asset_msg(asset_id, "pump", 1)])
    entity = service.graph.entity(asset_id)
    assert entity is not None and entity.name.startswith("pump_") and len(entity.name) == 20
    (msg,) = drain(store, e1)
    upd = msg.assetUpdateMsg[0]
    assert (upd.msgType, uuid_of(upd.idMSB, upd.idLSB)) == (UPDATED, asset_id)
    assert json.loads(upd.entity)["name"] == entity.name


def test_an_edge_asset_of_a_new_type_is_sent_back_with_the_profile_the_cloud_made(
        store, service, edges):
    """ThingsBoard's saveAsset finds or makes the profile an asset's type names: the edge that
    made the asset (it knew no such profile) is sent the asset back, UPDATED, with the cloud's
    JSON; every edge gets the new profile. An update that again lacks the profile is sent back
    too, though the cloud's JSON does not change."""
    e1, e2 = edges
    asset_id = ids.time_based()
    sent = asset_msg(asset_id, "kiosk-1", 1, type="kiosk")
    out = apply(store, e1, assetUpdateMsg=[sent])
    assert dict(out.entities) == {"ASSET": 1} and out.woken == {e1, e2}
    (profile,) = service.graph.entities(entity_type="ASSET_PROFILE", name="kiosk")
    entity = service.graph.entity(asset_id)
    assert entity is not None
    assert entity.body()["assetProfileId"] == typed("ASSET_PROFILE", profile.id)
    made, back = drain(store, e1)
    assert [fd.name for fd, _ in made.ListFields()] == ["assetProfileUpdateMsg"]
    assert uuid_of(made.assetProfileUpdateMsg[0].idMSB, made.assetProfileUpdateMsg[0].idLSB) \
        == profile.id
    assert [fd.name for fd, _ in back.ListFields()] == ["assetUpdateMsg"]
    upd = back.assetUpdateMsg[0]
    assert (upd.msgType, uuid_of(upd.idMSB, upd.idLSB)) == (UPDATED, asset_id)
    assert json.loads(upd.entity) == entity.body()
    (other,) = drain(store, e2)  # the other edge: the profile only (the asset is not on it)
    assert [fd.name for fd, _ in other.ListFields()] == ["assetProfileUpdateMsg"]
    # the same JSON again, still without the profile: unchanged in the cloud, sent back again
    again = apply(store, e1, assetUpdateMsg=[asset_msg(asset_id, "kiosk-1", 2, UPDATED,
                                                       type="kiosk")])
    assert (again.applied, dict(again.entities), dict(again.queued)) == (
        1, {}, {"assetUpdateMsg": 1})
    (back,) = drain(store, e1)
    assert json.loads(back.assetUpdateMsg[0].entity) == entity.body()
    assert drain(store, e2) == []
    # with the profile it now knows: nothing to send back
    known = asset_msg(asset_id, "kiosk-1", 3, UPDATED, type="kiosk", profile=profile.id)
    assert dict(apply(store, e1, assetUpdateMsg=[known]).queued) == {}
    assert drain(store, e1) == []


def test_an_asset_of_another_edge_is_not_changed_by_this_one(store, service, edges):
    e1, e2 = edges
    asset = service.graph.create_entity("ASSET", {"name": "theirs"}, now_ms=NOW)
    service.graph.assign(e2, "ASSET", asset.id, now_ms=NOW)
    out = apply(store, e1, assetUpdateMsg=[asset_msg(asset.id, "mine now", 1, UPDATED)])
    assert (out.applied, dict(out.entities)) == (1, {})  # in the apply log, not applied
    assert service.graph.entity(asset.id).name == "theirs"  # type: ignore[union-attr]


def test_relations_the_edge_adds_and_deletes(store, service, edges):
    e1, _ = edges
    dev, _ = service.create_device("rk-1", "pump-1")
    asset = service.graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    for edge_id in edges:
        service.graph.assign(edge_id, "ASSET", asset.id, now_ms=NOW)
        drain(store, edge_id)
    out = apply(store, e1, relationUpdateMsg=[relation_msg(("ASSET", asset.id), ("DEVICE", dev.id), 1)])
    assert dict(out.entities) == {"RELATION": 1} and out.woken == set()  # e2 lacks the device
    [rel] = service.graph.relations(dev.id)
    assert rel["from"] == typed("ASSET", asset.id) and rel["type"] == "Contains"
    [event] = store.events(e1)  # recorded under its from entity
    assert (event.entity_type, event.entity_id, event.action) == (
        "ASSET", asset.id, "RELATION_ADD_OR_UPDATE")
    apply(store, e1, relationUpdateMsg=[relation_msg(("ASSET", asset.id), ("DEVICE", dev.id), 2,
                                                     DELETED)])
    assert service.graph.relations(dev.id) == []
    with pytest.raises(PayloadRejected, match="edgeSeqId 3: relationUpdateMsg: from and to"):
        apply(store, e1, relationUpdateMsg=[edge_pb2.RelationUpdateMsg(
            msgType=CREATED, edgeSeqId=3, entity=json.dumps({"type": "Contains"}))])


def test_a_device_the_edge_deletes_goes_with_its_relations(store, service, edges):
    e1, _ = edges
    dev, _ = service.create_device("rk-1", "pump-1")
    asset = service.graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    service.graph.add_relation({"from": typed("ASSET", asset.id), "to": typed("DEVICE", dev.id),
                                "type": "Contains"}, now_ms=NOW)
    msb, lsb = uuid_halves(dev.id)
    apply(store, e1, deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(msgType=DELETED, idMSB=msb,
                                                               idLSB=lsb, edgeSeqId=1)])
    assert store.device(dev.id) is None and service.graph.relations(asset.id) == []


def test_shared_keys_and_timeseries_keys_the_edge_deletes(store, service, edges):
    e1, _ = edges
    dev, _ = service.create_device("rk-1", "pump-1")
    service.set_attributes(str(dev.id), {"a": 1, "b": 2})
    msb, lsb = uuid_halves(dev.id)
    apply(store, e1, entityData=[edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE", edgeSeqId=1,
        attributeDeleteMsg=edge_pb2.AttributeDeleteMsg(scope="SHARED_SCOPE",
                                                       attributeNames=["a"]))])
    assert store.shared_attributes(dev.id) == {"b": 2}
    # TIMESERIES_DELETED: EntityDataProto + the extension field 1001 {repeated string keys = 1},
    # on the wire as the edge writes it
    inner = b"".join(b"\x0a" + bytes([len(k)]) + k for k in (b"temp", b"rpm"))
    base = edge_pb2.EntityDataProto(entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
                                    edgeSeqId=2).SerializeToString()
    raw = base + bytes([0xCA, 0x3E]) + bytes([len(inner)]) + inner  # tag 1001 << 3 | 2
    data = edge_pb2.EntityDataProto.FromString(raw)
    assert list(data.timeseriesDeleteMsg.keys) == ["temp", "rpm"]
    apply(store, e1, entityData=[data])
    deleted = store.events(e1)[-1]
    assert (deleted.action, deleted.body, deleted.seq) == ("TIMESERIES_DELETED",
                                                           {"keys": ["temp", "rpm"]}, 2)
    empty = edge_pb2.EntityDataProto(entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
                                     edgeSeqId=3)
    with pytest.raises(PayloadRejected, match="entityData carries no"):
        apply(store, e1, entityData=[empty])


def test_alarm_ack_and_clear_are_applied_as_before(store, service, edges):
    e1, _ = edges
    dev, _ = service.create_device("rk-1", "pump-1")
    alarm_id = ids.time_based()
    msb, lsb = uuid_halves(alarm_id)
    body = json.dumps({"id": typed("ALARM", alarm_id), "type": "High temperature",
                       "originator": typed("DEVICE", dev.id), "startTs": NOW,
                       "status": "ACTIVE_ACK"})
    out = apply(store, e1, alarmUpdateMsg=[edge_pb2.AlarmUpdateMsg(
        msgType=edge_pb2.ALARM_ACK_RPC_MESSAGE, idMSB=msb, idLSB=lsb, entity=body, edgeSeqId=1)])
    assert out.applied == 1 and store.events(e1)[0].action == "ALARM_ACK"


def test_an_edge_cannot_delete_change_or_take_another_edges_device(store, service, edges):
    """A device is one edge's: another edge's delete, update or credentials change is in its
    apply log only (one WARNING each), as an asset change from an edge not holding it is."""
    from loguru import logger

    e1, e2 = edges
    dev, _ = service.create_device("rk-2", "pump-2")
    asset = service.graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    service.graph.add_relation({"from": typed("ASSET", asset.id), "to": typed("DEVICE", dev.id),
                                "type": "Contains"}, now_ms=NOW)
    msb, lsb = uuid_halves(dev.id)
    lines: list[Any] = []
    sink = logger.add(lambda m: lines.append(m.record), level="WARNING")
    try:
        out = apply(store, e1, deviceUpdateMsg=[
            edge_pb2.DeviceUpdateMsg(msgType=UPDATED, idMSB=msb, idLSB=lsb, edgeSeqId=1,
                                     entity=json.dumps({"id": typed("DEVICE", dev.id),
                                                        "name": "stolen", "type": "default"})),
            edge_pb2.DeviceUpdateMsg(msgType=DELETED, idMSB=msb, idLSB=lsb, edgeSeqId=2)])
    finally:
        logger.remove(sink)
    assert out.applied == 2
    kept = store.device(dev.id)
    assert (kept.edge_id, kept.name) == (e2, "pump-2")  # type: ignore[union-attr]
    assert [r["to"]["id"] for r in service.graph.relations(asset.id)] == [str(dev.id)]
    warned = [r["extra"] for r in lines
              if r["message"] == "device change from an edge that does not hold it ignored"]
    assert [(x["entity_id"], x["edge_id"], x["holder"], x["action"]) for x in warned] == [
        (str(dev.id), str(e1), str(e2), "UPDATED"), (str(dev.id), str(e1), str(e2), "DELETED")]
