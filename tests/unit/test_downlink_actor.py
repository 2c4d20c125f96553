"""The DownlinkActor alone (under actor_child, real LMDB in tmp_path): what each downlink does to
the edge's entity store, its redelivery key, and the DownlinkApplied answer it sends to the
ConnectionActor (captured here by a tiny pykka actor behind an Address)."""

from __future__ import annotations

import json
import queue
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest

from edge_sync.actors.address import Address
from edge_sync.cloud import downlinks
from edge_sync.cloud.downlinks import stamp
from edge_sync.cloud.records import CloudDevice
from edge_sync.link.downlink_actor import ApplyDownlink, DownlinkActor, DownlinkApplied
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.entity_store import EntityStore, TokenCache
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Device, Scope
from edge_sync.supervisor import actor_child
from tests.helpers.wait import wait_until

DEADLINE_S = 5.0


class Collector(pykka.ThreadingActor):
    """Stands in for the ConnectionActor: every message it gets goes into a queue."""

    def __init__(self, inbox: queue.Queue[Any]) -> None:
        super().__init__()
        self.inbox = inbox

    def on_receive(self, message: Any) -> None:
        self.inbox.put(message)


class Rig:
    def __init__(self, path: Path) -> None:
        self.store = LmdbStore(path, initial_map_mb=8, max_size_mb=64)
        self.entities = EntityStore(self.store)
        self.metrics = Metrics()
        self.tokens = TokenCache()
        self.replies: queue.Queue[Any] = queue.Queue()
        self.exits: list[BaseException | None] = []
        self.collector = Collector.start(self.replies)
        connection = Address("connection", lambda: self.collector)
        self.child: Any = actor_child(DownlinkActor, self.store, connection, metrics=self.metrics,
                                      tokens=self.tokens)(self.exits.append)

    def apply(self, msg: edge_pb2.DownlinkMsg, stream_id: int = 1) -> DownlinkApplied:
        """Hand the actor one downlink; its DownlinkApplied (fails fast if the actor died)."""
        self.child.ref.tell(ApplyDownlink(stream_id, msg))

        def replied() -> list[Any]:
            try:
                return [self.replies.get_nowait()]
            except queue.Empty:
                assert not self.exits, f"the DownlinkActor exited: {self.exits[0]!r}"
                return []

        (reply,) = wait_until(replied, timeout=DEADLINE_S, what="the DownlinkActor's DownlinkApplied")
        assert isinstance(reply, DownlinkApplied), reply
        return reply

    def device(self, device_id: uuid.UUID) -> Device | None:
        with self.store.read() as txn:
            return self.entities.device(txn, device_id)

    def by_token(self, token: str) -> Device | None:
        with self.store.read() as txn:
            return self.entities.device_by_token(txn, token)

    def attributes(self, entity_id: uuid.UUID, scope: Scope) -> dict[str, Any]:
        with self.store.read() as txn:
            return self.entities.attributes(txn, entity_id, scope)

    def count(self, name: str) -> float:
        return self.metrics.snapshot()[name]

    def close(self) -> None:
        if self.child.ref.is_alive():
            self.child.stop(timeout=DEADLINE_S)
        self.collector.stop()
        self.store.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "edge")
    yield r
    r.close()


# -- downlink builders -----------------------------------------------------------------------------


def halves(value: uuid.UUID) -> tuple[int, int]:
    b = value.bytes
    return int.from_bytes(b[:8], "big", signed=True), int.from_bytes(b[8:], "big", signed=True)


def device_msg(dl_id: int, device_id: uuid.UUID, name: str, *,
               kind: int = edge_pb2.ENTITY_CREATED_RPC_MESSAGE, **extra: Any) -> edge_pb2.DownlinkMsg:
    msb, lsb = halves(device_id)
    entity = {"id": {"entityType": "DEVICE", "id": str(device_id)}, "name": name,
              "type": "pump", "label": "north", "createdTime": 1_700_000_000_123, **extra}
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
        msgType=kind, idMSB=msb, idLSB=lsb, entity=json.dumps(entity))])


def credentials_msg(dl_id: int, device_id: uuid.UUID, token: str) -> edge_pb2.DownlinkMsg:
    entity = {"deviceId": {"entityType": "DEVICE", "id": str(device_id)},
              "credentialsType": "ACCESS_TOKEN", "credentialsId": token}
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, deviceCredentialsUpdateMsg=[
        edge_pb2.DeviceCredentialsUpdateMsg(entity=json.dumps(entity))])


def shared_msg(dl_id: int, entity_id: uuid.UUID, values: dict[str, Any], *,
               scope: str = "SHARED_SCOPE", shared: bool = False) -> edge_pb2.DownlinkMsg:
    msb, lsb = halves(entity_id)
    kvs = []
    for k, v in values.items():
        if isinstance(v, bool):
            kvs.append(transport_pb2.KeyValueProto(key=k, type=transport_pb2.BOOLEAN_V, bool_v=v))
        elif isinstance(v, int):
            kvs.append(transport_pb2.KeyValueProto(key=k, type=transport_pb2.LONG_V, long_v=v))
        else:
            kvs.append(transport_pb2.KeyValueProto(key=k, type=transport_pb2.STRING_V, string_v=v))
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, entityData=[edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
        attributesUpdatedMsg=transport_pb2.PostAttributeMsg(kv=kvs, shared=shared),
        postAttributeScope=scope, attributeTs=1_700_000_000_000)])


def provision(rig: Rig, device_id: uuid.UUID, name: str, token: str) -> None:
    assert rig.apply(device_msg(101, device_id, name)).success
    assert rig.apply(credentials_msg(102, device_id, token)).success


# -- tests -----------------------------------------------------------------------------------------


def test_device_created_then_credentials_gives_a_device_with_its_token(rig: Rig) -> None:
    dev = uuid.uuid4()
    generation = rig.tokens.generation
    created = rig.apply(device_msg(41, dev, "pump-1"), stream_id=7)
    assert created == DownlinkApplied(7, 41, True, "", duplicate=False, sync_completed=False,
                                      identity=None)
    assert rig.device(dev) == Device(id=dev, name="pump-1", type="pump", token="",
                                     created_time=1_700_000_000_123, label="north", version=1)
    assert rig.apply(credentials_msg(42, dev, "tok-pump-1"), stream_id=7) == DownlinkApplied(
        7, 42, True)
    device = rig.device(dev)
    assert device is not None and device.token == "tok-pump-1"
    assert rig.by_token("tok-pump-1") == device
    assert rig.tokens.generation >= generation + 2  # the token cache learnt of both changes
    assert (rig.count("edge_downlinks_applied_total"), rig.count("edge_downlinks_duplicate_total"),
            rig.count("edge_downlinks_failed_total")) == (2, 0, 0)
    # an update of the same device: upsert, token kept, version bumped
    assert rig.apply(device_msg(43, dev, "pump-1b", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)).success
    updated = rig.device(dev)
    assert updated is not None
    assert (updated.name, updated.token, updated.version) == ("pump-1b", "tok-pump-1", 2)


def test_thingsboard_4x_device_json_from_the_reference_cloud_is_applied(rig: Rig) -> None:
    """The reference cloud's device downlink in ThingsBoard 4.x form (typed tenant and customer
    ids, additionalInfo null) and its credentials give the device with its token."""
    cloud_device = CloudDevice(uuid.uuid4(), uuid.uuid4(), "valve-4", "valve", "east", "tok-v4",
                               1_700_000_000_456, "cloud")
    created, creds = (edge_pb2.DownlinkMsg.FromString(p)
                      for p in downlinks.device_created(cloud_device, uuid.uuid4()))
    created.downlinkMsgId, creds.downlinkMsgId = 61, 62
    assert json.loads(created.deviceUpdateMsg[0].entity)["tenantId"]["entityType"] == "TENANT"
    assert rig.apply(created).success and rig.apply(creds).success
    assert rig.device(cloud_device.id) == Device(
        id=cloud_device.id, name="valve-4", type="valve", token="tok-v4",
        created_time=1_700_000_000_456, label="east", version=1)


def test_the_same_downlink_twice_is_applied_once_and_acknowledged_twice(rig: Rig) -> None:
    dev = uuid.uuid4()
    provision(rig, dev, "fan", "tok-fan")
    msg = shared_msg(77, dev, {"speed": 3})
    first = rig.apply(msg)
    assert (first.success, first.duplicate, first.downlink_id) == (True, False, 77)
    assert rig.apply(shared_msg(78, dev, {"speed": 4})).success
    again = rig.apply(msg)  # a late redelivery, byte-identical
    assert (again.success, again.duplicate, again.downlink_id, again.error) == (True, True, 77, "")
    assert rig.attributes(dev, Scope.SHARED) == {"speed": 4}  # not rolled back by the redelivery
    assert rig.count("edge_downlinks_duplicate_total") == 1
    assert rig.count("edge_downlinks_applied_total") == 4


def test_one_id_with_different_content_is_two_downlinks(rig: Rig) -> None:
    dev = uuid.uuid4()
    provision(rig, dev, "valve", "tok-valve")
    a = rig.apply(shared_msg(5, dev, {"a": 1}))
    b = rig.apply(shared_msg(5, dev, {"b": 2}))
    assert (a.duplicate, b.duplicate) == (False, False)
    assert rig.attributes(dev, Scope.SHARED) == {"a": 1, "b": 2}


def test_a_redelivery_restamped_by_the_reference_cloud_is_a_duplicate(rig: Rig) -> None:
    dev = uuid.uuid4()
    payload = edge_pb2.DownlinkMsg(deviceUpdateMsg=device_msg(0, dev, "gate").deviceUpdateMsg
                                   ).SerializeToString()
    sent = stamp(payload, 9, 1_700_000_000_000).downlinkMsg  # what the cloud sends first
    resent = stamp(payload, 9, 1_700_000_010_000).downlinkMsg  # its resend 10 s later
    assert rig.apply(sent).duplicate is False
    again = rig.apply(resent)
    assert again.success
    device = rig.device(dev)
    assert device is not None and device.version == 1
    assert again.duplicate is True


def test_credentials_for_an_unknown_device_fail_with_an_error(rig: Rig) -> None:
    ghost = uuid.uuid4()
    reply = rig.apply(credentials_msg(12, ghost, "tok-ghost"), stream_id=3)
    assert (reply.stream_id, reply.downlink_id, reply.success, reply.duplicate) == (3, 12, False, False)
    assert reply.error == f"credentials for unknown device {ghost}"
    assert rig.by_token("tok-ghost") is None
    assert rig.count("edge_downlinks_failed_total") == 1
    # nothing recorded: once the device exists, the same downlink is applied (not a duplicate)
    assert rig.apply(device_msg(11, ghost, "ghost")).success
    retry = rig.apply(credentials_msg(12, ghost, "tok-ghost"))
    assert (retry.success, retry.duplicate) == (True, False)
    assert rig.by_token("tok-ghost") is not None


def test_shared_attributes_go_to_shared_scope(rig: Rig) -> None:
    dev = uuid.uuid4()
    provision(rig, dev, "lamp", "tok-lamp")
    assert rig.apply(shared_msg(20, dev, {"on": True, "level": 7, "mode": "eco"})).success
    # ThingsBoard may mark them with shared=true and no scope string
    assert rig.apply(shared_msg(21, dev, {"color": "red"}, scope="", shared=True)).success
    assert rig.attributes(dev, Scope.SHARED) == {"on": True, "level": 7, "mode": "eco",
                                                 "color": "red"}
    assert rig.attributes(dev, Scope.CLIENT) == {}
    assert rig.attributes(dev, Scope.SERVER) == {}


def test_entity_deleted_removes_the_device_and_its_token(rig: Rig) -> None:
    dev = uuid.uuid4()
    provision(rig, dev, "old", "tok-old")
    device = rig.by_token("tok-old")
    assert device is not None
    rig.tokens.put("tok-old", device, generation=rig.tokens.generation)
    reply = rig.apply(device_msg(30, dev, "old", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE))
    assert (reply.success, reply.duplicate) == (True, False)
    assert rig.device(dev) is None
    assert rig.by_token("tok-old") is None
    assert rig.tokens.get("tok-old") is None  # the cached token no longer authenticates
    # the name is free again
    other = uuid.uuid4()
    assert rig.apply(device_msg(31, other, "old")).success


def test_unsupported_lists_and_sync_completed_are_acknowledged(rig: Rig) -> None:
    dash = edge_pb2.DownlinkMsg(downlinkMsgId=50, dashboardUpdateMsg=[edge_pb2.DashboardUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=1, idLSB=2, entity='{"title":"d"}')])
    assert rig.apply(dash) == DownlinkApplied(1, 50, True)
    done = rig.apply(edge_pb2.DownlinkMsg(downlinkMsgId=51, syncCompletedMsg=edge_pb2.SyncCompletedMsg()))
    assert (done.success, done.sync_completed) == (True, True)
    e_msb, e_lsb = halves(edge := uuid.uuid4())
    t_msb, t_lsb = halves(tenant := uuid.uuid4())
    conf = rig.apply(edge_pb2.DownlinkMsg(downlinkMsgId=52, edgeConfiguration=edge_pb2.EdgeConfiguration(
        edgeIdMSB=e_msb, edgeIdLSB=e_lsb, tenantIdMSB=t_msb, tenantIdLSB=t_lsb)))
    assert (conf.success, conf.identity, conf.customer_id) == (True, (tenant, edge), uuid.UUID(int=0))
    assert rig.count("edge_downlinks_failed_total") == 0


def test_attribute_delete_with_an_unknown_scope_fails_without_crashing(rig: Rig) -> None:
    dev = uuid.uuid4()
    msb, lsb = halves(dev)
    msg = edge_pb2.DownlinkMsg(downlinkMsgId=60, entityData=[edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
        attributeDeleteMsg=edge_pb2.AttributeDeleteMsg(scope="BOGUS_SCOPE", attributeNames=["x"]))])
    reply = rig.apply(msg)
    assert (reply.success, reply.downlink_id) == (False, 60)
    assert "BOGUS_SCOPE" in reply.error
    assert rig.exits == []


def test_device_with_a_non_numeric_created_time_fails_without_crashing(rig: Rig) -> None:
    reply = rig.apply(device_msg(70, uuid.uuid4(), "odd", createdTime="yesterday"))
    assert (reply.success, reply.downlink_id) == (False, 70)
    assert reply.error
    assert rig.exits == []
