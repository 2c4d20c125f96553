"""The DownlinkActor alone (under actor_child, real LMDB in tmp_path): what each downlink does to
the edge's entity store, its redelivery key, and the DownlinkApplied answer it sends to the
ConnectionActor (captured here by a tiny pykka actor behind an Address); the tenant and device
profiles it keeps, a device with its credentials and profile in one DownlinkMsg, and the kinds it
sets aside (counted by kind, logged once per kind)."""

from __future__ import annotations

import itertools
import json
import queue
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pykka
import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from edge_sync.actors.address import Address
from edge_sync.actors.messages import EntityDeleted, RpcQueued, SharedAttributesApplied
from edge_sync.cloud.downlinks import stamp
from edge_sync.devices.rpc import RpcStatus
from edge_sync.errors import QueueFull
from edge_sync.link import downlink_actor
from edge_sync.link.downlink_actor import (
    APPLIED_KINDS,
    ApplyDownlink,
    DownlinkActor,
    DownlinkApplied,
    FullSyncStarted,
)
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.entity_store import (
    DEVICE_DELETED,
    TOKEN_CHANGED,
    TOKEN_REMOVED,
    EntityStore,
    Revocation,
    Revoked,
    TokenCache,
)
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.records import Device, DeviceProfile, Scope, Tenant
from edge_sync.storage.rpc_store import RpcStore
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
        self.graph = GraphStore(self.store)
        self.metrics = Metrics()
        self.tokens = TokenCache()
        self.revoked: list[Revoked] = []  # what the token cache's watchers were told
        self.tokens.watch(self.revoked.append)
        self.replies: queue.Queue[Any] = queue.Queue()
        self.exits: list[BaseException | None] = []
        self.collector = Collector.start(self.replies)
        self.notified: list[Any] = []  # what the entity actors are told, after each commit
        self.metadata_asked: list[uuid.UUID] = []  # rule chains reported without metadata
        self.connection = Address("connection", lambda: self.collector)
        self.child: Any = None
        # the peer of the stream each downlink comes on (ApplyDownlink.peer_ordered): the
        # reference cloud (True) resends a downlink answered retryable and sends relations in
        # its full sync; ThingsBoard (False) drops a downlink answered success=false
        self.peer_ordered = True
        self.start()

    def start(self) -> None:
        self.child = actor_child(DownlinkActor, self.store, self.connection, metrics=self.metrics,
                                 tokens=self.tokens, notify=self.notified.append,
                                 request_metadata=self.metadata_asked.append, version="9.9.9"
                                 )(self.exits.append)

    def apply(self, msg: edge_pb2.DownlinkMsg, stream_id: int = 1) -> DownlinkApplied:
        """Hand the actor one downlink; its DownlinkApplied (fails fast if the actor died)."""
        self.child.ref.tell(ApplyDownlink(stream_id, msg, peer_ordered=self.peer_ordered))

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
    assert (rig.count(APPLIED), rig.count(DUPLICATE),
            rig.count(FAILED)) == (2, 0, 0)
    # an update of the same device: upsert, token kept, version bumped
    assert rig.apply(device_msg(43, dev, "pump-1b", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)).success
    updated = rig.device(dev)
    assert updated is not None
    assert (updated.name, updated.token, updated.version) == ("pump-1b", "tok-pump-1", 2)


def test_thingsboard_4x_device_json_is_applied(rig: Rig) -> None:
    """A device in ThingsBoard 4.x form (typed tenant, customer and profile ids, additionalInfo
    null, label null) and its credentials give the device with its token and profile id."""
    dev, profile = uuid.uuid4(), uuid.uuid4()
    created = device_msg(61, dev, "valve-4", type="valve", label=None, additionalInfo=None,
                         tenantId={"entityType": "TENANT", "id": str(uuid.uuid4())},
                         customerId={"entityType": "CUSTOMER",
                                     "id": "13814000-1dd2-11b2-8080-808080808080"},
                         deviceProfileId={"entityType": "DEVICE_PROFILE", "id": str(profile)},
                         createdTime=1_700_000_000_456)
    created.deviceProfileUpdateMsg.append(profile_update(profile, "valve"))
    assert rig.apply(created).success and rig.apply(credentials_msg(62, dev, "tok-v4")).success
    assert rig.device(dev) == Device(
        id=dev, name="valve-4", type="valve", token="tok-v4", created_time=1_700_000_000_456,
        label="", version=1, profile_id=profile)


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
    assert rig.count(DUPLICATE) == 1
    assert rig.count(APPLIED) == 4


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


def test_credentials_for_an_unknown_device_wait_for_it(rig: Rig) -> None:
    """Credentials before their device are held (acknowledged, never lost) and applied in the
    transaction that brings the device."""
    ghost = uuid.uuid4()
    reply = rig.apply(credentials_msg(12, ghost, "tok-ghost"), stream_id=3)
    assert reply == DownlinkApplied(3, 12, True)
    assert rig.by_token("tok-ghost") is None
    assert rig.count("edge_sync_graph_held_entities") == 1
    assert rig.apply(device_msg(11, ghost, "ghost")).success
    device = rig.by_token("tok-ghost")
    assert device is not None and device.id == ghost
    assert (rig.count("edge_sync_graph_held_entities"), rig.count("edge_sync_graph_held_total"),
            rig.count("edge_sync_graph_released_total"), rig.count(FAILED)) \
        == (0, 1, 1, 0)


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
    assert rig.count(FAILED) == 0


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


def test_refused_content_is_answered_not_retryable(rig: Rig) -> None:
    reply = rig.apply(device_msg(80, uuid.uuid4(), ""))  # a device without a name
    assert (reply.success, reply.retryable) == (False, False)
    resp = reply.response()
    assert (resp.success, resp.downlinkMsgId, resp.errorMsg) == (False, 80, reply.error)
    assert resp.HasField("retryable") and resp.retryable is False


def test_a_store_failure_is_answered_retryable_to_the_reference_cloud_and_applies_once_resent(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The edge's own store failing (a full disk) says nothing against the downlink: the answer
    says retryable, so the reference cloud resends it instead of parking it."""
    dev = uuid.uuid4()

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        raise QueueFull(f"disk full under {rig.store.path}: No space left on device")

    monkeypatch.setattr(rig.store, "write", disk_full)
    reply = rig.apply(device_msg(90, dev, "pump-9"))
    assert (reply.success, reply.downlink_id, reply.retryable) == (False, 90, True)
    assert reply.error == f"disk full under {rig.store.path}: No space left on device"
    resp = reply.response()
    assert (resp.success, resp.HasField("retryable"), resp.retryable) == (False, True, True)
    assert rig.count(FAILED) == 1 and rig.exits == []
    monkeypatch.undo()  # room made: the resent downlink is applied, not taken for a duplicate
    again = rig.apply(device_msg(90, dev, "pump-9"))
    assert (again.success, again.duplicate, again.retryable) == (True, False, None)
    assert not again.response().HasField("retryable")
    assert rig.device(dev) is not None


# -- the tenant and device profiles ---------------------------------------------------------------

TENANT = uuid.UUID("6a1b0e40-0000-1000-8000-000000000001")
NULL_CUSTOMER = {"entityType": "CUSTOMER", "id": "13814000-1dd2-11b2-8080-808080808080"}


def tenant_update(kind: int = edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, title: str = "Acme"
                  ) -> edge_pb2.TenantUpdateMsg:
    entity = {"id": {"entityType": "TENANT", "id": str(TENANT)}, "createdTime": 1_700_000_000_000,
              "title": title, "region": "Global",
              "tenantProfileId": {"entityType": "TENANT_PROFILE", "id": str(uuid.uuid4())}}
    deleted = kind == edge_pb2.ENTITY_DELETED_RPC_MESSAGE  # ThingsBoard sends it without entity
    return edge_pb2.TenantUpdateMsg(msgType=kind, entity="" if deleted else json.dumps(entity))


def profile_update(profile_id: uuid.UUID, name: str, *,
                   kind: int = edge_pb2.ENTITY_CREATED_RPC_MESSAGE) -> edge_pb2.DeviceProfileUpdateMsg:
    msb, lsb = halves(profile_id)
    if kind == edge_pb2.ENTITY_DELETED_RPC_MESSAGE:  # ThingsBoard sends a delete without entity
        return edge_pb2.DeviceProfileUpdateMsg(msgType=kind, idMSB=msb, idLSB=lsb)
    entity = {"id": {"entityType": "DEVICE_PROFILE", "id": str(profile_id)},
              "createdTime": 1_700_000_000_000,
              "tenantId": {"entityType": "TENANT", "id": str(TENANT)}, "name": name,
              "description": None, "image": None, "type": "DEFAULT", "transportType": "DEFAULT",
              "provisionType": "DISABLED", "default": name == "default",
              "profileData": {"configuration": {"type": "DEFAULT"}, "alarms": None}}
    return edge_pb2.DeviceProfileUpdateMsg(msgType=kind, idMSB=msb, idLSB=lsb,
                                           entity=json.dumps(entity))


def profiles_msg(dl_id: int, *updates: edge_pb2.DeviceProfileUpdateMsg) -> edge_pb2.DownlinkMsg:
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, deviceProfileUpdateMsg=list(updates))


def test_the_tenant_is_kept_updated_and_removed(rig: Rig) -> None:
    created = tenant_update()
    assert rig.apply(edge_pb2.DownlinkMsg(downlinkMsgId=1_803_114_411,
                                          tenantUpdateMsg=[created])).success
    with rig.store.read() as txn:
        assert rig.entities.tenant(txn) == Tenant(TENANT, "Acme", created.entity)
    renamed = tenant_update(title="Acme Corp")
    assert rig.apply(edge_pb2.DownlinkMsg(downlinkMsgId=5, tenantUpdateMsg=[renamed])).success
    with rig.store.read() as txn:
        assert rig.entities.tenant(txn) == Tenant(TENANT, "Acme Corp", renamed.entity)
    deleted = rig.apply(edge_pb2.DownlinkMsg(downlinkMsgId=6, tenantUpdateMsg=[
        tenant_update(edge_pb2.ENTITY_DELETED_RPC_MESSAGE)]))
    assert (deleted.success, deleted.device_profiles) == (True, None)
    with rig.store.read() as txn:
        assert rig.entities.tenant(txn) is None
    assert rig.metrics.snapshot().keys().isdisjoint(
        {'edge_sync_downlinks_set_aside_total{kind="tenantUpdateMsg"}'})


def test_a_tenant_json_naming_another_entity_type_fails(rig: Rig) -> None:
    bad = edge_pb2.TenantUpdateMsg(msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, entity=json.dumps(
        {"id": {"entityType": "CUSTOMER", "id": str(TENANT)}, "title": "x"}))
    reply = rig.apply(edge_pb2.DownlinkMsg(downlinkMsgId=7, tenantUpdateMsg=[bad]))
    assert (reply.success, reply.error) == (
        False, "tenantUpdateMsg: id is a 'CUSTOMER' id, not TENANT")


def test_device_profiles_are_kept_updated_deleted_and_indexed_by_name(rig: Rig) -> None:
    default, thermo = uuid.uuid4(), uuid.uuid4()
    first = rig.apply(profiles_msg(10, profile_update(default, "default"),
                                   profile_update(thermo, "thermostat")))
    assert (first.success, first.device_profiles) == (
        True, {"default": default, "thermostat": thermo})
    with rig.store.read() as txn:
        found = rig.entities.device_profile_by_name(txn, "thermostat")
        assert found is not None
        assert (found.id, found.name, json.loads(found.entity)["transportType"]) == (
            thermo, "thermostat", "DEFAULT")
    # renamed on the cloud: the old name no longer finds it
    renamed = rig.apply(profiles_msg(11, profile_update(
        thermo, "thermostat-v2", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)))
    assert renamed.device_profiles == {"default": default, "thermostat-v2": thermo}
    with rig.store.read() as txn:
        assert rig.entities.device_profile_by_name(txn, "thermostat") is None
        assert rig.entities.device_profile(txn, thermo) == DeviceProfile(
            thermo, "thermostat-v2", profile_update(
                thermo, "thermostat-v2", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE).entity)
    deleted = rig.apply(profiles_msg(12, profile_update(
        thermo, "", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE)))
    assert (deleted.success, deleted.device_profiles) == (True, {"default": default})
    with rig.store.read() as txn:
        assert rig.entities.device_profile(txn, thermo) is None
        assert [p.id for p in rig.entities.device_profiles(txn)] == [default]
    # deleting one the edge never had is harmless
    gone = rig.apply(profiles_msg(13, profile_update(
        uuid.uuid4(), "", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE)))
    assert (gone.success, gone.device_profiles) == (True, {"default": default})


def test_a_device_profile_without_a_name_fails_and_stores_nothing(rig: Rig) -> None:
    pid = uuid.uuid4()
    nameless = profile_update(pid, "")
    reply = rig.apply(profiles_msg(14, profile_update(uuid.uuid4(), "ok"), nameless))
    assert (reply.success, reply.error) == (
        False, f"deviceProfileUpdateMsg: device profile {pid} has no name")
    with rig.store.read() as txn:
        assert rig.entities.device_profiles(txn) == []


def test_a_device_keeps_the_profile_id_the_cloud_sent(rig: Rig) -> None:
    dev, profile, other = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert rig.apply(profiles_msg(19, profile_update(profile, "meter"),
                                  profile_update(other, "meter-v2"))).success
    typed = {"entityType": "DEVICE_PROFILE", "id": str(profile)}
    assert rig.apply(device_msg(20, dev, "meter", deviceProfileId=typed)).success
    device = rig.device(dev)
    assert device is not None and device.profile_id == profile
    assert device.as_json()["device_profile_id"] == str(profile)
    # an update that names no profile keeps it; one that names another replaces it
    assert rig.apply(device_msg(21, dev, "meter", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)).success
    assert (d := rig.device(dev)) is not None and d.profile_id == profile
    assert rig.apply(credentials_msg(22, dev, "tok-meter")).success  # credentials keep it too
    assert (d := rig.device(dev)) is not None and (d.profile_id, d.token) == (profile, "tok-meter")
    assert rig.apply(device_msg(23, dev, "meter", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE,
                                deviceProfileId={"entityType": "DEVICE_PROFILE",
                                                 "id": str(other)})).success
    assert (d := rig.device(dev)) is not None and d.profile_id == other
    # a wrongly typed profile id is refused
    bad = rig.apply(device_msg(24, dev, "meter", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE,
                               deviceProfileId={"entityType": "ASSET_PROFILE", "id": str(other)}))
    assert (bad.success, bad.error) == (
        False, "deviceUpdateMsg: deviceProfileId is a 'ASSET_PROFILE' id, not DEVICE_PROFILE")
    assert rig.apply(device_msg(25, dev, "meter", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE)).success
    with rig.store.read() as txn:
        assert rig.entities.device(txn, dev) is None
        assert rig.entities.device_by_name(txn, "meter") is None


# -- a device with its credentials and profile in one DownlinkMsg -----------------------------------

PARTS = ("profile", "device", "credentials", "attributes")


def sync_pack(dl_id: int, dev: uuid.UUID, profile: uuid.UUID, token: str,
              order: tuple[str, ...]) -> edge_pb2.DownlinkMsg:
    """ThingsBoard's device in a sync: profile, device and credentials (here with the device's
    shared attributes too) in one DownlinkMsg, its lists serialized in ``order``."""
    parts = {
        "profile": edge_pb2.DownlinkMsg(deviceProfileUpdateMsg=[profile_update(profile, "meter")]),
        "device": device_msg(0, dev, f"meter-{dl_id}", type="meter", tenantId={
            "entityType": "TENANT", "id": str(TENANT)}, customerId=NULL_CUSTOMER,
            deviceProfileId={"entityType": "DEVICE_PROFILE", "id": str(profile)}),
        "credentials": credentials_msg(0, dev, token),
        "attributes": shared_msg(0, dev, {"interval": 30}),
    }
    raw = edge_pb2.DownlinkMsg(downlinkMsgId=dl_id).SerializeToString() + b"".join(
        parts[name].SerializeToString() for name in order)
    return edge_pb2.DownlinkMsg.FromString(raw)


@pytest.mark.parametrize("order", list(itertools.permutations(PARTS)),
                         ids=lambda o: "-".join(o))
def test_device_credentials_and_profile_in_one_downlink_in_any_order(
        rig: Rig, order: tuple[str, ...]) -> None:
    dev, profile = uuid.uuid4(), uuid.uuid4()
    reply = rig.apply(sync_pack(1_294_117_723, dev, profile, "tok-meter", order))
    assert (reply.success, reply.error, reply.device_profiles) == (True, "", {"meter": profile})
    assert rig.device(dev) == Device(id=dev, name="meter-1294117723", type="meter",
                                     token="tok-meter", created_time=1_700_000_000_123,
                                     label="north", version=1, profile_id=profile)
    assert rig.by_token("tok-meter") == rig.device(dev)
    assert rig.attributes(dev, Scope.SHARED) == {"interval": 30}
    with rig.store.read() as txn:
        assert rig.entities.device_profile_ids(txn) == {"meter": profile}
    assert (rig.count(APPLIED), rig.count(FAILED)) \
        == (1, 0)


def test_a_failing_part_leaves_nothing_of_the_downlink(rig: Rig) -> None:
    """One transaction: a part the edge refuses (a device without a name) fails the whole
    message, so neither the profile, the credentials nor the attributes are kept."""
    dev, profile = uuid.uuid4(), uuid.uuid4()
    pack = sync_pack(30, dev, profile, "tok-meter", PARTS)
    json_of = json.loads(pack.deviceUpdateMsg[0].entity)
    pack.deviceUpdateMsg[0].entity = json.dumps({**json_of, "name": ""})
    reply = rig.apply(pack)
    assert (reply.success, reply.error, reply.retryable) == (
        False, "deviceUpdateMsg: device has no name", False)
    assert rig.device(dev) is None and rig.by_token("tok-meter") is None
    assert rig.attributes(dev, Scope.SHARED) == {}
    with rig.store.read() as txn:
        assert rig.entities.device_profile_ids(txn) == {}


def test_credentials_whose_token_another_device_has_are_refused_and_the_rest_kept(
        rig: Rig) -> None:
    """As ThingsBoard Edge (the device saved, then "Device credentials are already assigned to
    another device!"): the profile, the device and its attributes are committed, the
    credentials are not, and the answer is success=false (not retryable). The downlink's key is
    not recorded: once the other device is gone, the resend applies the credentials."""
    holder, dev, profile = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    provision(rig, holder, "holder", "tok-taken")
    reply = rig.apply(sync_pack(30, dev, profile, "tok-taken", PARTS))
    error = (f"credentials of device {dev} refused: their access token is used by device "
             f"{holder} on the edge (ThingsBoard Edge: Device credentials are already assigned "
             "to another device!)")
    assert (reply.success, reply.error, reply.retryable, reply.device_profiles) == (
        False, error, False, {"meter": profile})
    assert "tok-taken" not in reply.error
    assert (d := rig.device(dev)) is not None and (d.token, d.profile_id) == ("", profile)
    assert rig.by_token("tok-taken") == rig.device(holder)
    assert rig.attributes(dev, Scope.SHARED) == {"interval": 30}
    assert (rig.count(APPLIED), rig.count(FAILED)) == (2, 1)  # the two of provision()
    assert rig.apply(device_msg(31, holder, "holder", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE)
                     ).success
    again = rig.apply(sync_pack(30, dev, profile, "tok-taken", PARTS))
    assert (again.success, again.duplicate) == (True, False)
    assert (d := rig.device(dev)) is not None and (d.token, d.profile_id) == ("tok-taken", profile)


def test_a_device_whose_name_another_device_has_is_applied_under_a_unique_name(
        rig: Rig, warning_logs: list[dict[str, Any]]) -> None:
    """As ThingsBoard Edge (generateUniqueNameIfDuplicateExists): applied and answered
    success, named name + "_" + 15 letters, logged with both ids and counted."""
    holder, dev = uuid.uuid4(), uuid.uuid4()
    provision(rig, holder, "pump", "tok-holder")
    reply = rig.apply(device_msg(60, dev, "pump"))
    assert (reply.success, reply.error) == (True, "")
    device = rig.device(dev)
    assert device is not None and re.fullmatch(r"pump_[A-Za-z]{15}", device.name), device
    assert rig.device(holder) is not None and rig.device(holder).name == "pump"
    assert rig.count("edge_sync_graph_devices_renamed_total") == 1
    [line] = [r for r in warning_logs if r["message"].startswith(f"device {dev} applied as")]
    assert line["message"] == (f"device {dev} applied as {device.name!r}: device {holder} has "
                               "its name 'pump' on the edge")
    assert {k: line["extra"][k] for k in ("entity_id", "holder_id", "name", "cloud_name")} == {
        "entity_id": str(dev), "holder_id": str(holder), "name": device.name,
        "cloud_name": "pump"}


# -- kinds set aside ------------------------------------------------------------------------------

SET_ASIDE = "edge_sync_downlinks_set_aside_total"
APPLIED = 'edge_sync_downlinks_total{outcome="applied"}'
DUPLICATE = 'edge_sync_downlinks_total{outcome="duplicate"}'
FAILED = 'edge_sync_downlinks_total{outcome="failed"}'


def set_aside_count(rig: Rig, kind: str) -> float:
    return rig.metrics.snapshot().get(f'{SET_ASIDE}{{kind="{kind}"}}', 0)


def every_set_aside_kind() -> list[str]:
    """Every DownlinkMsg list the edge does not apply (the proto has all ThingsBoard 4.3 sends)."""
    return [fd.name for fd in edge_pb2.DownlinkMsg.DESCRIPTOR.fields
            if fd.is_repeated and fd.name not in APPLIED_KINDS]


def with_every_kind(dl_id: int, n: int) -> edge_pb2.DownlinkMsg:
    msg = edge_pb2.DownlinkMsg(downlinkMsgId=dl_id)
    for kind in every_set_aside_kind():
        for i in range(n):
            item = getattr(msg, kind).add()
            if "msgType" in item.DESCRIPTOR.fields_by_name:
                item.msgType = edge_pb2.ENTITY_CREATED_RPC_MESSAGE
            if "entity" in item.DESCRIPTOR.fields_by_name:
                item.entity = json.dumps({"name": f"{kind}-{dl_id}-{i}"})
    return msg


@pytest.fixture
def warning_logs() -> Iterator[list[dict[str, Any]]]:
    records: list[dict[str, Any]] = []
    sink = logger.add(lambda m: records.append(dict(m.record)), level="WARNING",
                      filter=lambda r: r["extra"].get("component") == "downlink")
    yield records
    logger.remove(sink)


@pytest.fixture
def info_logs() -> Iterator[list[str]]:
    lines: list[str] = []
    sink = logger.add(lambda m: lines.append(m.record["message"]), level="INFO",
                      filter=lambda r: r["extra"].get("component") == "downlink")
    yield lines
    logger.remove(sink)


def test_the_kinds_set_aside_are_those_thingsboard_sends_and_the_edge_does_not_apply() -> None:
    """Every kind of the entity graph is applied (test_graph_apply.py); these are not."""
    assert set(every_set_aside_kind()) == {
        "alarmUpdateMsg", "adminSettingsUpdateMsg", "otaPackageUpdateMsg",
        "tenantProfileUpdateMsg", "resourceUpdateMsg",
        "alarmCommentUpdateMsg", "oAuth2ClientUpdateMsg", "notificationRuleUpdateMsg",
        "notificationTargetUpdateMsg", "notificationTemplateUpdateMsg", "oAuth2DomainUpdateMsg",
        "calculatedFieldUpdateMsg", "aiModelUpdateMsg", "apiKeyUpdateMsg"}


def test_each_kind_set_aside_is_acknowledged_counted_exactly_and_logged_once(
        rig: Rig, info_logs: list[str]) -> None:
    kinds = every_set_aside_kind()
    first = rig.apply(with_every_kind(2_017_335_090, 2))  # ThingsBoard's ids are random
    second = rig.apply(with_every_kind(4_391, 3))
    assert (first.success, first.error, second.success, second.duplicate) == (True, "", True, False)
    assert {kind: set_aside_count(rig, kind) for kind in kinds} == {kind: 5 for kind in kinds}
    for kind in kinds:
        assert info_logs.count(
            f"cloud sent {kind}; set aside on this edge (acknowledged and counted; further "
            "ones are only counted)") == 1, kind
    assert (rig.count(APPLIED), rig.count(FAILED)) \
        == (2, 0)
    [family] = [f for f in text_string_to_metric_families(rig.metrics.exposition().decode())
                if f.name == SET_ASIDE.removesuffix("_total")]
    assert family.type == "counter"
    assert {s.labels["kind"]: s.value for s in family.samples}["otaPackageUpdateMsg"] == 5


def test_a_redelivered_downlink_is_not_counted_again(rig: Rig, info_logs: list[str]) -> None:
    msg = edge_pb2.DownlinkMsg(downlinkMsgId=977_113, otaPackageUpdateMsg=[
        edge_pb2.OtaPackageUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, entity="{}")
        for _ in range(4)])
    assert rig.apply(msg).duplicate is False
    again = rig.apply(msg)
    assert (again.success, again.duplicate) == (True, True)
    assert set_aside_count(rig, "otaPackageUpdateMsg") == 4
    assert rig.count(DUPLICATE) == 1
    assert sum("cloud sent otaPackageUpdateMsg" in line for line in info_logs) == 1


def test_a_mixed_downlink_applies_what_it_can_and_counts_the_rest(rig: Rig) -> None:
    dev, profile = uuid.uuid4(), uuid.uuid4()
    msg = sync_pack(40, dev, profile, "tok-mixed", PARTS)
    msg.alarmUpdateMsg.add(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, entity="{}")
    # an answer to a device-originated (client-side) RPC: this edge serves none
    msg.deviceRpcCallMsg.add(requestId=1, responseMsg=edge_pb2.RpcResponseMsg(response="{}"))
    msg.entityData.add(entityType="DEVICE", postTelemetryMsg=transport_pb2.PostTelemetryMsg())
    reply = rig.apply(msg)
    assert (reply.success, reply.device_profiles) == (True, {"meter": profile})
    assert (d := rig.device(dev)) is not None and d.token == "tok-mixed"
    assert (set_aside_count(rig, "alarmUpdateMsg"),
            set_aside_count(rig, "deviceRpcCallMsg.responseMsg"),
            set_aside_count(rig, "entityData.postTelemetryMsg")) == (1, 1, 1)
    assert set_aside_count(rig, "deviceUpdateMsg") == 0


def test_a_kind_newer_than_this_edge_is_counted_by_field_number(rig: Rig) -> None:
    """A later ThingsBoard may add a list (field 38, say): it is acknowledged and counted."""
    raw = edge_pb2.DownlinkMsg(downlinkMsgId=50).SerializeToString() + bytes([0xB2, 0x02, 0x00])
    reply = rig.apply(edge_pb2.DownlinkMsg.FromString(raw))
    assert (reply.success, set_aside_count(rig, "field 38")) == (True, 1)


# -- server-side RPC requests and shared attributes for the device sessions -----------------------


def rpc_msg(dl_id: int, device_id: uuid.UUID, request_uuid: uuid.UUID, request_id: int, *,
            expiration: int = 1_700_000_060_000) -> edge_pb2.DownlinkMsg:
    msb, lsb = halves(device_id)
    umsb, ulsb = halves(request_uuid)
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, deviceRpcCallMsg=[edge_pb2.DeviceRpcCallMsg(
        deviceIdMSB=msb, deviceIdLSB=lsb, requestUuidMSB=umsb, requestUuidLSB=ulsb,
        requestId=request_id, expirationTime=expiration, oneway=True,
        requestMsg=edge_pb2.RpcRequestMsg(method="reboot", params='{"delay":1}'))])


def test_an_rpc_request_is_stored_queued_with_its_key_and_told_once(rig: Rig) -> None:
    dev, req = uuid.uuid4(), uuid.uuid4()
    msg = rpc_msg(70, dev, req, 12)
    assert rig.apply(msg).success
    with rig.store.read() as txn:
        (stored,) = list(RpcStore(rig.store).scan(txn, dev))
    assert (stored.request_uuid, stored.request_id, stored.method, stored.params, stored.oneway,
            stored.expiration_time, stored.status) == (
        req, 12, "reboot", '{"delay":1}', True, 1_700_000_060_000, RpcStatus.QUEUED)
    assert rig.notified == [RpcQueued(dev, (stored,))]
    assert rig.apply(msg).duplicate  # redelivered: acknowledged only, nobody told
    assert rig.apply(rpc_msg(71, dev, req, 12)).success  # same request, another downlink
    with rig.store.read() as txn:
        assert len(list(RpcStore(rig.store).scan(txn, dev))) == 1
    assert rig.notified == [RpcQueued(dev, (stored,))]
    assert set_aside_count(rig, "deviceRpcCallMsg") == 0


def test_an_rpc_request_without_a_uuid_is_refused(rig: Rig) -> None:
    reply = rig.apply(rpc_msg(72, uuid.uuid4(), uuid.UUID(int=0), 1))
    assert (reply.success, reply.retryable) == (False, False)
    assert "no requestUuid" in reply.error and rig.notified == []


def test_only_changed_and_deleted_shared_keys_are_told(rig: Rig) -> None:
    dev = uuid.uuid4()
    assert rig.apply(shared_msg(80, dev, {"a": 1, "b": "x"})).success
    assert rig.apply(shared_msg(81, dev, {"a": 1, "b": "y", "c": True})).success
    msb, lsb = halves(dev)
    delete = edge_pb2.DownlinkMsg(downlinkMsgId=82, entityData=[edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
        attributeDeleteMsg=edge_pb2.AttributeDeleteMsg(
            scope="SHARED_SCOPE", attributeNames=["a", "zz"]))])
    assert rig.apply(delete).success
    assert rig.apply(shared_msg(83, dev, {"n": 1}, scope="SERVER_SCOPE")).success
    assert rig.notified == [
        SharedAttributesApplied(dev, (("a", 1), ("b", "x"))),
        SharedAttributesApplied(dev, (("b", "y"), ("c", True))),
        SharedAttributesApplied(dev, (), ("a",)),
    ]


def test_a_burst_is_answered_in_order_and_a_bad_downlink_in_it_fails_alone(rig: Rig) -> None:
    devices = [uuid.uuid4() for _ in range(20)]
    msgs = [shared_msg(100 + i, d, {"n": i}) for i, d in enumerate(devices)]
    msgs[7] = shared_msg(107, uuid.uuid4(), {"n": 7}, scope="BOGUS_SCOPE")  # refused
    for msg in msgs:
        rig.child.ref.tell(ApplyDownlink(1, msg, peer_ordered=True))

    def answers() -> list[DownlinkApplied] | None:
        while len(got) < len(msgs):
            try:
                got.append(rig.replies.get_nowait())
            except queue.Empty:
                return None
        return got

    got: list[DownlinkApplied] = []
    wait_until(answers, timeout=DEADLINE_S, what="20 answers")
    assert [(a.downlink_id, a.success) for a in got] == [
        (100 + i, i != 7) for i in range(20)]
    assert [rig.attributes(d, Scope.SHARED) for d in devices] == [
        {} if i == 7 else {"n": i} for i in range(20)]
    assert len(rig.notified) == 19


def test_a_batch_of_attribute_updates_is_applied_at_once_and_each_device_told_its_keys(
        rig: Rig) -> None:
    """The cloud sends consecutive attribute updates as one DownlinkMsg with many entityData:
    applied in one transaction, each device told its own changed keys (two updates of one
    device: the last value wins, as one by one)."""
    devices = [uuid.UUID(int=1000 + i) for i in range(50)]
    batch = edge_pb2.DownlinkMsg(downlinkMsgId=90)
    for i, dev in enumerate(devices):
        batch.entityData.extend(shared_msg(0, dev, {"setpoint": i}).entityData)
    batch.entityData.extend(shared_msg(0, devices[0], {"setpoint": -1, "mode": "eco"}).entityData)
    reply = rig.apply(batch)
    assert (reply.success, reply.downlink_id, reply.duplicate) == (True, 90, False)
    assert rig.count(APPLIED) == 1
    assert [rig.attributes(dev, Scope.SHARED) for dev in devices] == (
        [{"setpoint": -1, "mode": "eco"}] + [{"setpoint": i} for i in range(1, 50)])
    assert rig.notified == (
        [SharedAttributesApplied(devices[0], (("setpoint", -1), ("mode", "eco")))]
        + [SharedAttributesApplied(dev, (("setpoint", i),)) for i, dev in enumerate(devices)
           if i > 0])


# -- the entity graph: full sync, metadata requests, counters ------------------------------------


def asset_msg(dl_id: int, asset_id: uuid.UUID, name: str, *,
              kind: int = edge_pb2.ENTITY_CREATED_RPC_MESSAGE) -> edge_pb2.DownlinkMsg:
    msb, lsb = halves(asset_id)
    entity = json.dumps({"id": {"entityType": "ASSET", "id": str(asset_id)}, "name": name})
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, assetUpdateMsg=[edge_pb2.AssetUpdateMsg(
        msgType=kind, idMSB=msb, idLSB=lsb, entity=entity)])


def sync_done(dl_id: int) -> edge_pb2.DownlinkMsg:
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, syncCompletedMsg=edge_pb2.SyncCompletedMsg())


def chain_msg(dl_id: int, chain: uuid.UUID, name: str) -> edge_pb2.DownlinkMsg:
    msb, lsb = halves(chain)
    entity = json.dumps({"id": {"entityType": "RULE_CHAIN", "id": str(chain)}, "name": name,
                         "type": "EDGE"})
    return edge_pb2.DownlinkMsg(downlinkMsgId=dl_id, ruleChainUpdateMsg=[
        edge_pb2.RuleChainUpdateMsg(msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, idMSB=msb,
                                    idLSB=lsb, entity=entity)])


def assets_on_edge(rig: Rig) -> set[uuid.UUID]:
    with rig.store.read() as txn:
        return {e.id for e in rig.graph.entities(txn, entity_type="ASSET")}


def test_a_full_sync_removes_at_its_end_what_it_did_not_send(
        rig: Rig, info_logs: list[str]) -> None:
    kept, gone, resent = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert rig.apply(asset_msg(1, kept, "kept")).success
    assert rig.apply(asset_msg(2, gone, "gone")).success
    again = asset_msg(3, resent, "resent")
    assert rig.apply(again).success
    rig.child.ref.tell(FullSyncStarted(1, "test"))
    assert rig.apply(asset_msg(10, kept, "kept")).success  # unchanged: seen
    assert rig.apply(again).duplicate  # a redelivery during the sync: seen, not applied again
    done = rig.apply(sync_done(11))
    assert (done.success, done.sync_completed) == (True, True)
    assert assets_on_edge(rig) == {kept, resent}
    assert rig.count("edge_sync_graph_removed_after_full_sync_total") == 1
    assert rig.metrics.snapshot()['edge_sync_graph_entities_applied_total{kind="ASSET",action="DELETED"}'] \
        == 1
    assert f"removed after full sync: no longer assigned to this edge: ASSET {gone}" in info_logs
    with rig.store.read() as txn:
        state = rig.graph.sync_state(txn)
    assert (state.completed_version, state.in_progress, state.generation) == ("9.9.9", False, 1)
    # an incremental sync's completion removes nothing
    assert rig.apply(sync_done(12)).success and assets_on_edge(rig) == {kept, resent}


def test_a_full_sync_skips_earlier_completions_and_other_streams(rig: Rig) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    assert rig.apply(asset_msg(1, a, "a")).success and rig.apply(asset_msg(2, b, "b")).success
    rig.child.ref.tell(FullSyncStarted(5, "requested: operator", earlier_syncs=1))
    assert rig.apply(asset_msg(3, a, "a"), stream_id=5).success
    assert rig.apply(sync_done(4), stream_id=5).success  # the earlier request's completion
    assert rig.apply(sync_done(5), stream_id=4).success  # an older stream's
    assert assets_on_edge(rig) == {a, b}
    with rig.store.read() as txn:
        assert rig.graph.sync_state(txn).in_progress
    assert rig.apply(sync_done(6), stream_id=5).success  # this sync's
    assert assets_on_edge(rig) == {a}


def test_an_earlier_completion_applied_before_the_full_sync_started_is_not_skipped(
        rig: Rig) -> None:
    """The ConnectionActor counts the requests it sent; the completion of the earlier one may
    be applied here before FullSyncStarted arrives: then the next completion is this sync's."""
    a, b = uuid.uuid4(), uuid.uuid4()
    assert rig.apply(asset_msg(1, a, "a"), stream_id=7).success
    assert rig.apply(asset_msg(2, b, "b"), stream_id=7).success
    assert rig.apply(sync_done(3), stream_id=7).success  # the first request's completion
    rig.child.ref.tell(FullSyncStarted(7, "requested: operator", earlier_syncs=1))
    assert rig.apply(asset_msg(4, a, "a"), stream_id=7).success
    assert rig.apply(sync_done(5), stream_id=7).success
    assert assets_on_edge(rig) == {a}


def test_a_full_sync_cut_short_stays_in_progress_after_a_restart(rig: Rig) -> None:
    a = uuid.uuid4()
    assert rig.apply(asset_msg(1, a, "a")).success
    rig.child.ref.tell(FullSyncStarted(1, "first connect"))
    assert rig.apply(asset_msg(2, uuid.uuid4(), "b")).success
    rig.child.stop(timeout=DEADLINE_S)
    rig.start()  # what it knew of the sync is gone: its completion removes nothing
    assert rig.apply(sync_done(3)).success
    assert a in assets_on_edge(rig)
    with rig.store.read() as txn:
        assert rig.graph.sync_state(txn).in_progress  # the next connect asks for a full sync


def test_rule_chains_without_metadata_are_reported_once_at_start_and_after_a_sync(
        rig: Rig) -> None:
    root, other = uuid.uuid4(), uuid.uuid4()
    assert rig.apply(chain_msg(1, root, "Root")).success
    assert rig.metadata_asked == []  # not on every downlink
    assert rig.apply(sync_done(2)).success
    assert rig.metadata_asked == [root]
    assert rig.apply(sync_done(3)).success
    assert rig.metadata_asked == [root]  # once per chain
    meta = edge_pb2.DownlinkMsg(downlinkMsgId=4, ruleChainMetadataUpdateMsg=[
        edge_pb2.RuleChainMetadataUpdateMsg(
            msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, entity=json.dumps(
                {"ruleChainId": {"entityType": "RULE_CHAIN", "id": str(root)}, "nodes": []}))])
    assert rig.apply(meta).success
    assert rig.apply(chain_msg(5, other, "Other")).success
    assert rig.apply(chain_msg(6, other, "Other v2")).success
    assert rig.apply(sync_done(7)).success
    assert rig.metadata_asked == [root, other]
    rig.child.stop(timeout=DEADLINE_S)
    rig.start()  # at start: again, once (a new process would)
    wait_until(lambda: len(rig.metadata_asked) == 3, timeout=DEADLINE_S,
               what="the metadata request at start")
    assert rig.metadata_asked == [root, other, other]


def test_graph_counters_by_kind_and_action_and_the_held_gauge(rig: Rig) -> None:
    a = uuid.uuid4()
    assert rig.apply(asset_msg(1, a, "a")).success
    assert rig.apply(asset_msg(2, a, "a2", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)).success
    assert rig.apply(asset_msg(3, a, "a2", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)).success
    assert rig.apply(asset_msg(4, a, "", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE)).success
    assert rig.apply(credentials_msg(5, uuid.uuid4(), "tok-x")).success  # held
    snap = rig.metrics.snapshot()
    assert {k: v for k, v in snap.items() if k.startswith("edge_sync_graph_entities_applied")} == {
        f'edge_sync_graph_entities_applied_total{{kind="ASSET",action="{a}"}}': 1
        for a in ("ADDED", "UPDATED", "DELETED")}
    assert (snap["edge_sync_graph_held_entities"], snap["edge_sync_graph_held_total"]) == (1, 1)


def test_damage_found_while_applying_asks_for_a_full_sync(rig: Rig) -> None:
    """A damaged record under a downlink: refused (retryable: the store's fault) and recorded,
    so the next connect asks for a full sync (link/state.py sync_mode)."""
    dev = uuid.uuid4()
    provision(rig, dev, "pump", "tok-pump")
    rig.store.write(lambda txn: txn.put(dev.bytes, b"\x02garbage", db=rig.store.dbs["devices"]))
    reply = rig.apply(credentials_msg(50, dev, "tok-new"))
    assert (reply.success, reply.retryable) == (False, True)
    with rig.store.read() as txn:
        damaged = rig.graph.sync_state(txn).damaged
    assert damaged is not None and f"devices: {dev}" in damaged


class FailingWrites:
    """rig.store.write failing (a full disk) for its next ``n`` calls, then writing again."""

    def __init__(self, rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
        self.left = 0
        self.error = f"disk full under {rig.store.path}: No space left on device"
        real = rig.store.write

        def write(fn: Any, **kwargs: Any) -> Any:
            if self.left > 0:
                self.left -= 1
                raise QueueFull(self.error)
            return real(fn, **kwargs)

        monkeypatch.setattr(rig.store, "write", write)

    def fail_next(self, rig: Rig, cmd: ApplyDownlink, writes: int) -> None:
        """Hand the actor ``cmd`` with its next ``writes`` writes failing; return once it has
        counted the downlink failed (it answers nothing to ThingsBoard)."""
        failed = rig.count(FAILED)
        self.left = writes
        rig.child.ref.tell(cmd)
        wait_until(lambda: rig.count(FAILED) == failed + 1, timeout=DEADLINE_S,
                   what="the downlink counted failed")
        assert self.left == 0


def requested(rig: Rig) -> str | None:
    with rig.store.read() as txn:
        return rig.graph.sync_state(txn).requested


def test_a_store_failure_is_not_answered_to_thingsboard_and_a_full_sync_is_requested(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, info_logs: list[str]) -> None:
    """ThingsBoard drops a downlink answered success=false (EdgeGrpcSession.onDownlinkResponse)
    and never reads retryable: no answer, so it sends the downlink again after its timeout; the
    full sync requested for the next connect covers the case where it gives up."""
    rig.peer_ordered = False
    dev = uuid.uuid4()
    writes = FailingWrites(rig, monkeypatch)
    writes.fail_next(rig, ApplyDownlink(1, device_msg(90, dev, "pump-9"), peer_ordered=False),
                     writes=1)
    later = rig.apply(device_msg(91, uuid.uuid4(), "pump-10"))  # answers come in order
    assert (later.downlink_id, later.success) == (91, True)
    assert rig.replies.empty() and rig.exits == []
    assert rig.device(dev) is None
    assert requested(rig) == f"downlink 90 could not be stored ({writes.error})"
    [line] = [m for m in info_logs if m.startswith("downlink 90 not applied")]
    assert line == (f"downlink 90 not applied: {writes.error}; not answered, so the cloud sends "
                    "it again after its timeout (ThingsBoard drops a downlink answered "
                    "success=false); a full sync is requested for the next connect")
    again = rig.apply(device_msg(90, dev, "pump-9"))  # ThingsBoard's resend: the same message
    assert (again.success, again.duplicate) == (True, False)
    assert rig.device(dev) is not None
    assert "downlink 90 stored when sent again after a store failure" in info_logs
    assert (rig.count(APPLIED), rig.count(FAILED)) == (2, 1)


def test_a_store_failure_is_answered_by_the_peer_of_the_stream_the_downlink_came_on(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """The answer goes by the peer the downlink's own stream announced at its connect, not by
    what the link is when the actor gets to it: a ThingsBoard stream's downlink is left
    unanswered and a reference cloud's is answered retryable, whichever came last."""
    writes = FailingWrites(rig, monkeypatch)
    writes.fail_next(rig, ApplyDownlink(1, device_msg(90, uuid.uuid4(), "pump-9"),
                                        peer_ordered=False), writes=1)
    why = f"downlink 90 could not be stored ({writes.error})"
    assert rig.replies.empty() and requested(rig) == why
    writes.fail_next(rig, ApplyDownlink(2, device_msg(91, uuid.uuid4(), "pump-10"),
                                        peer_ordered=True), writes=1)
    reply = wait_until(lambda: None if rig.replies.empty() else rig.replies.get_nowait(),
                       timeout=DEADLINE_S, what="the reference cloud's answer")
    assert (reply.stream_id, reply.downlink_id, reply.success, reply.retryable) == (
        2, 91, False, True)
    writes.fail_next(rig, ApplyDownlink(1, device_msg(92, uuid.uuid4(), "pump-11"),
                                        peer_ordered=False), writes=1)
    assert rig.replies.empty() and rig.exits == []
    assert rig.count(FAILED) == 3


def test_a_full_sync_request_the_store_refused_too_goes_with_the_next_downlink(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, info_logs: list[str]) -> None:
    rig.peer_ordered = False
    writes = FailingWrites(rig, monkeypatch)
    writes.fail_next(rig, ApplyDownlink(1, device_msg(90, uuid.uuid4(), "pump-9"),
                                        peer_ordered=False), writes=2)
    assert requested(rig) is None
    [line] = [m for m in info_logs if m.startswith("downlink 90 not applied")]
    assert line.endswith("a full sync is requested with the next downlink stored (the request "
                         f"was not written either: {writes.error})")
    assert rig.apply(device_msg(91, uuid.uuid4(), "pump-10")).success
    why = f"downlink 90 could not be stored ({writes.error})"
    assert requested(rig) == why
    assert f"full sync requested for the next connect: {why}" in info_logs
    assert rig.replies.empty()


@pytest.mark.parametrize("resent_in_time", [False, True])
def test_a_full_sync_with_a_downlink_not_stored_removes_nothing_at_its_end(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, resent_in_time: bool) -> None:
    """What an unstored downlink of the sync carries is not marked seen, and ThingsBoard may
    give it up: its end removes nothing and leaves the sync in progress (the next connect asks
    for a full sync again). Stored by a resend before the end, the sweep runs as usual."""
    rig.peer_ordered = False
    stale, kept = uuid.uuid4(), uuid.uuid4()
    assert rig.apply(asset_msg(1, stale, "stale")).success
    assert rig.apply(asset_msg(2, kept, "kept")).success
    rig.child.ref.tell(FullSyncStarted(1, "test"))

    def started() -> bool:
        with rig.store.read() as txn:
            return rig.graph.full_sync_active(txn)
    wait_until(started, timeout=DEADLINE_S, what="the full sync recorded")
    writes = FailingWrites(rig, monkeypatch)
    update = asset_msg(10, kept, "kept v2", kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)
    writes.fail_next(rig, ApplyDownlink(1, update, peer_ordered=False), writes=1)
    if resent_in_time:
        assert rig.apply(update).success
    done = rig.apply(sync_done(11))
    assert (done.downlink_id, done.success, done.sync_completed) == (11, True, True)
    with rig.store.read() as txn:
        state = rig.graph.sync_state(txn)
        active = rig.graph.full_sync_active(txn)
    if resent_in_time:
        assert assets_on_edge(rig) == {kept}
        assert (state.in_progress, state.requested, active) == (False, None, False)
    else:
        assert assets_on_edge(rig) == {stale, kept}
        assert (state.in_progress, active) == (True, False)
        assert state.requested == f"downlink 10 could not be stored ({writes.error})"
    assert rig.replies.empty()


def start_full_sync(rig: Rig, stream_id: int = 1) -> None:
    rig.child.ref.tell(FullSyncStarted(stream_id, "test"))

    def started() -> bool:
        with rig.store.read() as txn:
            return rig.graph.full_sync_active(txn)
    wait_until(started, timeout=DEADLINE_S, what="the full sync recorded")


def test_downlinks_not_stored_are_kept_up_to_a_bound_and_the_full_sync_request_written_once(
        rig: Rig, monkeypatch: pytest.MonkeyPatch, info_logs: list[str]) -> None:
    """A store failing under a steady flow of downlinks: the actor keeps the first few by key
    and only counts the failures of the rest, writes the full sync request once, and the
    sync's end names a few ids in its one warning line (and still removes nothing)."""
    monkeypatch.setattr(downlink_actor, "_UNSTORED_KEPT", 4)
    monkeypatch.setattr(downlink_actor, "_UNSTORED_NAMED", 2)
    requests: list[str] = []
    real_request = GraphStore.request_full_sync

    def counted(self: GraphStore, txn: Any, reason: str) -> None:
        requests.append(reason)
        real_request(self, txn, reason)
    monkeypatch.setattr(GraphStore, "request_full_sync", counted)
    rig.peer_ordered = False
    stale, kept = uuid.uuid4(), uuid.uuid4()
    assert rig.apply(asset_msg(1, stale, "stale")).success
    start_full_sync(rig)
    writes = FailingWrites(rig, monkeypatch)
    updates = [asset_msg(10 + i, kept, f"kept v{i}") for i in range(6)]
    for update in updates:  # one failed write each: the request is not written again
        writes.fail_next(rig, ApplyDownlink(1, update, peer_ordered=False), writes=1)
    why = f"downlink 10 could not be stored ({writes.error})"
    assert rig.apply(updates[0]).success  # the resend of a downlink kept: stored
    assert requests == [why] and requested(rig) == why
    assert [m.rsplit("; ", 1)[1] for m in info_logs if " not applied: " in m] == [
        "a full sync is requested for the next connect"] + 5 * [
        f"a full sync is already requested for the next connect ({why})"]
    assert "downlink 10 stored when sent again after a store failure" in info_logs
    assert rig.apply(sync_done(20)).success
    assert [m for m in info_logs if m.startswith("downlink 20: ")] == [
        "downlink 20: full sync ended with downlinks the store did not take (11, 12 and 1 "
        "more; 2 more store failures of downlinks not tracked one by one): nothing removed "
        "at its end; the next connect asks for a full sync again"]
    assert ("downlink 20 applied: full sync completed without its sweep (3 not stored, 2 more "
            "store failures)") in info_logs
    assert assets_on_edge(rig) == {stale, kept}
    with rig.store.read() as txn:
        assert (rig.graph.sync_state(txn).in_progress, rig.graph.full_sync_active(txn)) == (
            True, False)
    assert rig.replies.empty()


def test_a_failure_beyond_the_downlinks_kept_still_stops_the_sweep(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every downlink kept was stored by its resend, but one only counted may not have been:
    the sync's end removes nothing."""
    monkeypatch.setattr(downlink_actor, "_UNSTORED_KEPT", 1)
    rig.peer_ordered = False
    stale, kept = uuid.uuid4(), uuid.uuid4()
    assert rig.apply(asset_msg(1, stale, "stale")).success
    start_full_sync(rig)
    writes = FailingWrites(rig, monkeypatch)
    first, second = asset_msg(10, kept, "kept"), asset_msg(11, kept, "kept v2")
    writes.fail_next(rig, ApplyDownlink(1, first, peer_ordered=False), writes=1)
    writes.fail_next(rig, ApplyDownlink(1, second, peer_ordered=False), writes=1)
    assert rig.apply(first).success
    assert rig.apply(sync_done(20)).success
    assert assets_on_edge(rig) == {stale, kept}
    with rig.store.read() as txn:
        assert rig.graph.sync_state(txn).in_progress


def test_a_held_entity_the_full_sync_does_not_send_again_is_not_applied_but_removed(
        rig: Rig) -> None:
    """Held before a full sync, not sent by it: no longer assigned. Its reference arriving in
    the sync does not apply it (that would keep it); the sync's end drops it."""
    dev, other, profile = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    typed = {"entityType": "DEVICE_PROFILE", "id": str(profile)}
    assert rig.apply(device_msg(1, dev, "old", deviceProfileId=typed)).success  # held
    rig.child.ref.tell(FullSyncStarted(1, "test"))
    synced = device_msg(3, other, "new", deviceProfileId=typed)
    synced.deviceProfileUpdateMsg.append(profile_update(profile, "meter"))
    assert rig.apply(synced).success
    assert rig.device(dev) is None and rig.device(other) is not None
    assert rig.apply(sync_done(4)).success
    with rig.store.read() as txn:
        assert rig.graph.held(txn) == []
    assert rig.device(dev) is None
    assert rig.count("edge_sync_graph_removed_after_full_sync_total") == 1


# -- a device removed by the cloud closes its open RPC requests ------------------------------------


def rpc_states(rig: Rig, dev: uuid.UUID) -> list[tuple[RpcStatus, str]]:
    with rig.store.read() as txn:
        return [(r.status, r.error) for r in RpcStore(rig.store).scan(txn, dev)]


def open_rpcs(rig: Rig) -> int:
    with rig.store.read() as txn:
        return RpcStore(rig.store).open_count(txn)


def queued_rpc(rig: Rig, dev: uuid.UUID, dl_id: int) -> None:
    assert rig.apply(rpc_msg(dl_id, dev, uuid.uuid4(), 1)).success
    assert rpc_states(rig, dev) == [(RpcStatus.QUEUED, "")]


def test_a_token_changed_or_removed_is_told_to_the_token_cache_watchers_once_committed(
        rig: Rig) -> None:
    """What authenticated with a device's token (an MQTT connection, an HTTP long poll) is
    told, after the commit and before the answer, when a downlink gives the device another
    token or credentials of another type; a device changed otherwise, credentials sent again
    unchanged, and a token given to a device that had none tell nothing."""
    dev = uuid.uuid4()
    provision(rig, dev, "pump", "tok-pump")
    rig.revoked.clear()
    assert rig.apply(credentials_msg(70, dev, "tok-pump")).success  # unchanged
    assert rig.apply(device_msg(71, dev, "pump-renamed",
                                kind=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE)).success
    assert rig.revoked == []
    assert rig.apply(credentials_msg(72, dev, "tok-pump-2")).success
    assert rig.revoked == [{dev: Revocation(dev, TOKEN_CHANGED,
                                            "its access token was changed by the cloud")}]
    basic = json.dumps({"deviceId": {"entityType": "DEVICE", "id": str(dev)},
                        "credentialsType": "MQTT_BASIC", "credentialsId": "c0ffee",
                        "credentialsValue": json.dumps({"userName": "pump"})})
    assert rig.apply(edge_pb2.DownlinkMsg(downlinkMsgId=73, deviceCredentialsUpdateMsg=[
        edge_pb2.DeviceCredentialsUpdateMsg(entity=basic)])).success
    assert rig.revoked[1:] == [{dev: Revocation(
        dev, TOKEN_REMOVED, "its access token was removed: the cloud gave it MQTT_BASIC "
        "credentials")}]
    assert rig.apply(credentials_msg(74, dev, "tok-pump-3")).success  # it had none
    assert len(rig.revoked) == 2 and rig.by_token("tok-pump-3") is not None


def test_a_device_deleted_by_a_downlink_fails_its_open_rpcs_and_tells_its_actor(
        rig: Rig) -> None:
    dev = uuid.uuid4()
    provision(rig, dev, "pump", "tok-pump")
    queued_rpc(rig, dev, 60)
    rig.notified.clear()
    assert rig.apply(device_msg(61, dev, "pump", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE)).success
    assert rpc_states(rig, dev) == [(RpcStatus.FAILED, "device deleted")]
    assert open_rpcs(rig) == 0  # not loaded at the next start
    assert rig.notified == [EntityDeleted(dev)]
    assert rig.revoked[-1] == {dev: Revocation(dev, DEVICE_DELETED, "it was deleted by the cloud")}


def test_a_device_removed_with_its_profile_fails_its_open_rpcs_and_tells_its_actor(
        rig: Rig) -> None:
    dev, profile = uuid.uuid4(), uuid.uuid4()
    assert rig.apply(sync_pack(1, dev, profile, "tok-meter", PARTS)).success
    queued_rpc(rig, dev, 2)
    rig.notified.clear()
    assert rig.apply(profiles_msg(3, profile_update(
        profile, "meter", kind=edge_pb2.ENTITY_DELETED_RPC_MESSAGE))).success
    assert rig.device(dev) is None  # the cascade took it
    assert rpc_states(rig, dev) == [(RpcStatus.FAILED, "device deleted")]
    assert open_rpcs(rig) == 0
    assert rig.notified == [EntityDeleted(dev)]
    assert rig.revoked[-1] == {dev: Revocation(dev, DEVICE_DELETED, "it was deleted by the cloud")}


def test_a_device_a_full_sync_no_longer_sends_fails_its_open_rpcs_and_tells_its_actor(
        rig: Rig) -> None:
    dev, kept = uuid.uuid4(), uuid.uuid4()
    provision(rig, dev, "pump", "tok-pump")
    queued_rpc(rig, dev, 60)
    rig.child.ref.tell(FullSyncStarted(1, "test"))
    assert rig.apply(asset_msg(61, kept, "kept")).success
    rig.notified.clear()
    assert rig.apply(sync_done(62)).success
    assert rig.device(dev) is None  # swept
    assert rpc_states(rig, dev) == [(RpcStatus.FAILED, "device deleted")]
    assert open_rpcs(rig) == 0
    assert rig.notified == [EntityDeleted(dev)]
    assert rig.revoked[-1] == {dev: Revocation(
        dev, DEVICE_DELETED, "it was removed after full sync: no longer assigned to this edge")}


def test_a_restart_mid_sync_clears_its_marks_so_held_entities_are_released_again(
        rig: Rig) -> None:
    dev = uuid.uuid4()
    assert rig.apply(credentials_msg(1, dev, "tok-late")).success  # held: no device yet
    rig.child.ref.tell(FullSyncStarted(1, "first connect"))
    assert rig.apply(asset_msg(2, uuid.uuid4(), "a")).success
    with rig.store.read() as txn:
        assert rig.graph.full_sync_active(txn)
    rig.child.stop(timeout=DEADLINE_S)
    rig.start()  # the supervisor's restart: the sync is no longer tracked in memory
    assert rig.apply(device_msg(3, dev, "late")).success
    device = rig.device(dev)
    assert device is not None and device.token == "tok-late"  # released, not kept back
    assert rig.by_token("tok-late") == device
    with rig.store.read() as txn:
        assert rig.graph.held(txn) == []
        assert not rig.graph.full_sync_active(txn)
        assert rig.graph.sync_state(txn).in_progress  # the next connect asks again


def test_a_restart_mid_sync_releases_at_start_what_an_edge_made_device_provides(
        rig: Rig) -> None:
    dev = uuid.uuid4()
    assert rig.apply(credentials_msg(1, dev, "tok-edge")).success  # held: no device yet
    rig.child.ref.tell(FullSyncStarted(1, "first connect"))
    assert rig.apply(asset_msg(2, uuid.uuid4(), "a")).success
    rig.child.stop(timeout=DEADLINE_S)
    rig.store.write(lambda txn: rig.entities.put_device(txn, Device(
        id=dev, name="edge-made", type="pump", token="", created_time=1)))  # made on the edge
    rig.start()  # on_start releases what waited for it
    wait_until(lambda: rig.by_token("tok-edge") is not None, timeout=DEADLINE_S,
               what="the held credentials released at start")
    device = rig.device(dev)
    assert device is not None and device.token == "tok-edge"
    with rig.store.read() as txn:
        assert rig.graph.held(txn) == []
        assert not rig.graph.full_sync_active(txn)
