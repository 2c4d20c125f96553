"""The edge's event -> uplink payload mapping in ThingsBoard 4.x form: the exact entity JSON of
devices, credentials and alarms (typed ids, the edge's tenant and customer; an alarm's customer
left to ThingsBoard, which takes its originator's), attributes with
their time and scope, RPC answers echoing the request, and the tenant taken at send time."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from edge_sync.cloud.uplink_payloads import uplink_events
from edge_sync.common.wire import NULL_UUID, Owner, uuid_halves, uuid_of
from edge_sync.errors import BadRequest
from edge_sync.link.event_payloads import event_payload
from edge_sync.link.uplink_window import UplinkWindow, WindowPolicy
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import NIL_UUID, Action, Lane, StoredEvent

TENANT = uuid.UUID("6a1b0e40-0000-1000-8000-000000000001")
CUSTOMER = uuid.UUID("6a1b0e40-0000-1000-8000-000000000002")
DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d1")
ALARM = uuid.UUID("00000000-0000-4000-8000-0000000000a1")
OWNER = Owner(TENANT)


def stored(action: str, body: Any, *, entity: uuid.UUID = DEVICE, kind: str = "DEVICE",
           seq: int = 5, ts: int = 1_700_000_000_500) -> StoredEvent:
    """An event as the log holds it; recorded before any connect, so its tenant is nil."""
    return StoredEvent(seq=seq, id=uuid.UUID(int=900 + seq), created_time=ts, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type=kind, entity_type=kind, entity_id=entity,
                       action=action, body=body, ts=ts, lane=Lane.HIGH)


def device_added(seq: int = 5) -> StoredEvent:
    return stored(Action.ADDED, {"id": str(DEVICE), "name": "pump-1", "type": "pump",
                                 "label": "north", "created_time": 1_700_000_000_123}, seq=seq)


def alarm(action: str, status: str, ts: int) -> StoredEvent:
    body = {"type": "overheat", "severity": "MAJOR", "status": status, "startTs": ts,
            "details": {"t": 91}, "id": str(ALARM), "originator": str(DEVICE)}
    return stored(action, body, entity=ALARM, kind="ALARM", ts=ts)


def entity_of(event: StoredEvent, owner: Owner = OWNER) -> dict[str, Any]:
    _, msg = event_payload(event, owner)
    value: dict[str, Any] = json.loads(msg.entity)
    return value


# -- device and credentials -----------------------------------------------------------------------


def test_device_json_is_thingsboard_4x_with_the_edge_tenant_and_the_null_customer() -> None:
    field, msg = event_payload(device_added(), OWNER)
    assert (field, msg.msgType, uuid_of(msg.idMSB, msg.idLSB), msg.edgeSeqId) == (
        "deviceUpdateMsg", edge_pb2.ENTITY_CREATED_RPC_MESSAGE, DEVICE, 5)
    assert json.loads(msg.entity) == {
        "id": {"entityType": "DEVICE", "id": str(DEVICE)},
        "createdTime": 1_700_000_000_123,
        "tenantId": {"entityType": "TENANT", "id": str(TENANT)},
        "customerId": {"entityType": "CUSTOMER", "id": "13814000-1dd2-11b2-8080-808080808080"},
        "name": "pump-1",
        "type": "pump",
        "label": "north",
        "additionalInfo": None,
    }


def test_device_json_names_the_synced_profile_of_its_type() -> None:
    """deviceProfileId is the id of the synced profile whose name is the device's type; without
    such a profile it is left out (ThingsBoard then finds or creates one by type)."""
    pump, other = uuid.UUID(int=0xB1), uuid.UUID(int=0xB2)
    synced = Owner.of(TENANT, None, {"pump": pump, "valve": other})
    body = entity_of(device_added(), synced)
    assert body["deviceProfileId"] == {"entityType": "DEVICE_PROFILE", "id": str(pump)}
    assert list(body) == ["id", "createdTime", "tenantId", "customerId", "name", "type", "label",
                          "deviceProfileId", "additionalInfo"]
    assert "deviceProfileId" not in entity_of(device_added(), Owner.of(TENANT, None, {"valve": other}))
    assert "deviceProfileId" not in entity_of(device_added(), OWNER)


def test_device_json_keeps_the_profile_the_cloud_gave_the_device() -> None:
    given = uuid.UUID(int=0xB3)
    event = stored(Action.ADDED, {"id": str(DEVICE), "name": "pump-1", "type": "pump",
                                  "created_time": 1, "device_profile_id": str(given)})
    assert entity_of(event, Owner.of(TENANT, None, {"pump": uuid.UUID(int=0xB1)}))[
        "deviceProfileId"] == {"entityType": "DEVICE_PROFILE", "id": str(given)}


def test_owners_with_and_without_profiles() -> None:
    assert Owner.of(TENANT, None).device_profiles == {}
    assert Owner.of(TENANT, None, {"a": DEVICE}) == Owner(TENANT, NULL_UUID, {"a": DEVICE})
    assert hash(Owner.of(TENANT, None, {"a": DEVICE})) == hash(Owner(TENANT))


def test_an_edge_assigned_to_a_customer_names_it() -> None:
    assert entity_of(device_added(), Owner.of(TENANT, CUSTOMER))["customerId"] == {
        "entityType": "CUSTOMER", "id": str(CUSTOMER)}


def test_owner_of_a_configuration_without_customer_is_the_null_customer() -> None:
    assert Owner.of(TENANT, uuid.UUID(int=0)) == Owner.of(TENANT, None) == Owner(TENANT, NULL_UUID)
    assert str(NULL_UUID) == "13814000-1dd2-11b2-8080-808080808080"


def test_credentials_json_has_a_typed_device_id() -> None:
    event = stored(Action.CREDENTIALS_UPDATED, {"deviceId": str(DEVICE),
                                                "credentialsType": "ACCESS_TOKEN",
                                                "credentialsId": "tok-1"})
    field, msg = event_payload(event, OWNER)
    assert (field, msg.edgeSeqId) == ("deviceCredentialsUpdateMsg", 5)
    assert json.loads(msg.entity) == {"deviceId": {"entityType": "DEVICE", "id": str(DEVICE)},
                                      "credentialsType": "ACCESS_TOKEN", "credentialsId": "tok-1"}


def test_a_peer_without_a_tenant_gets_json_without_owner() -> None:
    """A hostile or minimal peer that accepts the edge with a nil tenant must not crash the
    link: the JSON simply names no tenant (ThingsBoard always sends one)."""
    field, msg = event_payload(device_added(), Owner(NIL_UUID))
    body = json.loads(msg.entity)
    assert field == "deviceUpdateMsg"
    assert "tenantId" not in body and "customerId" not in body
    assert body["id"] == {"entityType": "DEVICE", "id": str(DEVICE)}


# -- alarms -------------------------------------------------------------------------------------


def alarm_json(*, acknowledged: bool, cleared: bool, start: int, ack_ts: int = 0,
               clear_ts: int = 0) -> dict[str, Any]:
    return {
        "id": {"entityType": "ALARM", "id": str(ALARM)},
        "tenantId": {"entityType": "TENANT", "id": str(TENANT)},
        "type": "overheat",
        "originator": {"entityType": "DEVICE", "id": str(DEVICE)},
        "severity": "MAJOR",
        "acknowledged": acknowledged,
        "cleared": cleared,
        "startTs": start,
        "endTs": start,
        "ackTs": ack_ts,
        "clearTs": clear_ts,
        "details": {"t": 91},
        "propagate": False,
        "propagateToOwner": False,
        "propagateToTenant": False,
        "propagateRelationTypes": [],
    }


def test_a_raised_alarm_is_active_and_unacknowledged() -> None:
    field, msg = event_payload(alarm(Action.ADDED, "ACTIVE_UNACK", 1000), OWNER)
    assert (field, msg.msgType, uuid_of(msg.idMSB, msg.idLSB)) == (
        "alarmUpdateMsg", edge_pb2.ENTITY_CREATED_RPC_MESSAGE, ALARM)
    assert json.loads(msg.entity) == alarm_json(acknowledged=False, cleared=False, start=1000)


def test_an_acknowledgement_carries_its_time_as_ack_ts() -> None:
    _, msg = event_payload(alarm(Action.ALARM_ACK, "ACTIVE_ACK", 2000), OWNER)
    assert msg.msgType == edge_pb2.ALARM_ACK_RPC_MESSAGE
    assert json.loads(msg.entity) == alarm_json(acknowledged=True, cleared=False, start=2000,
                                                ack_ts=2000)


def test_a_clear_carries_its_time_as_clear_ts() -> None:
    _, msg = event_payload(alarm(Action.ALARM_CLEAR, "CLEARED_UNACK", 3000), OWNER)
    assert msg.msgType == edge_pb2.ALARM_CLEAR_RPC_MESSAGE
    assert json.loads(msg.entity) == alarm_json(acknowledged=False, cleared=True, start=3000,
                                                clear_ts=3000)


def test_an_alarm_carries_the_propagation_its_alarm_node_gave_it() -> None:
    """An alarm node's propagation settings travel in the body (TbCreateAlarmNode sets them on
    the alarm); a body without them (the device API's alarms, events of an earlier edge-sync:
    the tests above) is not propagated."""
    event = alarm(Action.ADDED, "ACTIVE_UNACK", 1000)
    event.body.update(propagate=True, propagateToOwner=True, propagateToTenant=False,
                      propagateRelationTypes=["Contains", "Manages"])
    assert entity_of(event) == {
        **alarm_json(acknowledged=False, cleared=False, start=1000), "propagate": True,
        "propagateToOwner": True, "propagateRelationTypes": ["Contains", "Manages"]}


@pytest.mark.parametrize("customer", [None, CUSTOMER], ids=["unassigned edge", "customer's edge"])
@pytest.mark.parametrize(("action", "status"), [(Action.ADDED, "ACTIVE_UNACK"),
                                                (Action.ALARM_ACK, "ACTIVE_ACK"),
                                                (Action.ALARM_CLEAR, "CLEARED_UNACK")])
def test_an_alarm_names_no_customer_so_thingsboard_gives_it_the_originators(
        customer: uuid.UUID | None, action: str, status: str) -> None:
    """BaseAlarmService.createAlarm refuses a customerId other than the originator's; the
    edge's customer is not its devices' (an edge of a customer holds the tenant's devices)."""
    body = entity_of(alarm(action, status, 1000), Owner.of(TENANT, customer))
    assert "customerId" not in body
    assert body["tenantId"] == {"entityType": "TENANT", "id": str(TENANT)}


# -- attributes and RPC ---------------------------------------------------------------------------


def test_attributes_carry_their_time_and_client_scope_by_default() -> None:
    _, msg = event_payload(stored(Action.ATTRIBUTES_UPDATED, {"kv": {"fw": "1.2"}}, ts=4242), OWNER)
    assert (msg.postAttributeScope, msg.attributeTs, msg.HasField("attributeTs")) == (
        "CLIENT_SCOPE", 4242, True)
    _, msg = event_payload(stored(Action.ATTRIBUTES_UPDATED,
                                  {"scope": "SERVER_SCOPE", "kv": {"a": 1}, "ts": 77}), OWNER)
    assert (msg.postAttributeScope, msg.attributeTs) == ("SERVER_SCOPE", 77)


def test_an_attribute_scope_thingsboard_does_not_know_is_not_sent() -> None:
    with pytest.raises(BadRequest, match="attribute scope 'CLIENT' is not one of"):
        event_payload(stored(Action.ATTRIBUTES_UPDATED, {"scope": "CLIENT", "kv": {"a": 1}}), OWNER)


def test_an_rpc_answer_echoes_the_request() -> None:
    request = uuid.UUID("5e1f0000-0000-1000-8000-0000000000aa")
    body = {"requestId": 12, "response": {"ok": True}, "requestUuid": str(request),
            "oneway": False, "expirationTime": 1_700_000_060_000}
    field, msg = event_payload(stored(Action.RPC_CALL, body), OWNER)
    msb, lsb = uuid_halves(request)
    dev_msb, dev_lsb = uuid_halves(DEVICE)
    assert field == "deviceRpcCallMsg"
    assert msg == edge_pb2.DeviceRpcCallMsg(
        deviceIdMSB=dev_msb, deviceIdLSB=dev_lsb, requestUuidMSB=msb, requestUuidLSB=lsb,
        requestId=12, expirationTime=1_700_000_060_000, oneway=False,
        responseMsg=edge_pb2.RpcResponseMsg(response='{"ok":true}'), edgeSeqId=5)
    applied = uplink_events(edge_pb2.UplinkMsg(deviceRpcCallMsg=[msg]))[0].body
    assert applied == {"requestId": 12, "response": {"ok": True}, "error": "",
                       "requestUuid": str(request), "oneway": False,
                       "expirationTime": 1_700_000_060_000}


def test_an_rpc_answer_without_a_request_uuid_has_none() -> None:
    _, msg = event_payload(stored(Action.RPC_CALL, {"requestId": 3, "response": 1}), OWNER)
    assert (msg.requestId, msg.requestUuidMSB, msg.requestUuidLSB, msg.oneway,
            msg.expirationTime) == (3, 0, 0, False, 0)


@pytest.mark.parametrize(("stored_error", "sent"), [
    ("TIMEOUT", "TIMEOUT"), ("NO_ACTIVE_CONNECTION", "NO_ACTIVE_CONNECTION"),
    ("INTERNAL", "INTERNAL"), ("no method", "INTERNAL"), ("timeout", "INTERNAL")])
def test_an_rpc_error_goes_only_as_an_rpc_error_name(stored_error: str, sent: str) -> None:
    """ThingsBoard's RpcError.valueOf throws on any other text and fails the whole message;
    a report an older edge-sync recorded ("no method") goes as INTERNAL."""
    body = {"requestId": 4, "error": stored_error, "requestUuid": str(uuid.UUID(int=4))}
    _, msg = event_payload(stored(Action.RPC_CALL, body), OWNER)
    assert msg.responseMsg == edge_pb2.RpcResponseMsg(error=sent)


def test_an_expired_request_is_reported_with_error_timeout_and_no_response() -> None:
    request = uuid.UUID("5e1f0000-0000-1000-8000-0000000000ab")
    body = {"requestId": 4, "error": "TIMEOUT", "requestUuid": str(request), "oneway": True,
            "expirationTime": 1_700_000_010_000}
    field, msg = event_payload(stored(Action.RPC_CALL, body), OWNER)
    assert field == "deviceRpcCallMsg"
    assert (msg.requestId, msg.oneway, msg.expirationTime, msg.responseMsg) == (
        4, True, 1_700_000_010_000, edge_pb2.RpcResponseMsg(error="TIMEOUT"))
    assert uuid_of(msg.requestUuidMSB, msg.requestUuidLSB) == request


def test_an_attributes_request_asks_for_the_devices_shared_scope() -> None:
    field, msg = event_payload(stored(Action.ATTRIBUTES_REQUEST, {"scope": "SHARED_SCOPE"}), OWNER)
    msb, lsb = uuid_halves(DEVICE)
    assert (field, msg) == ("attributesRequestMsg", edge_pb2.AttributesRequestMsg(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE", scope="SHARED_SCOPE", edgeSeqId=5))
    with pytest.raises(BadRequest, match="scope"):
        event_payload(stored(Action.ATTRIBUTES_REQUEST, {"scope": "SHARED"}), OWNER)


# -- wiring -------------------------------------------------------------------------------------


def test_a_device_created_before_the_first_connect_gets_the_tenant_when_sent() -> None:
    """The log recorded the device with a nil tenant; the window packs it with the owner the
    connection hands it, and the reference cloud accepts the result."""
    events = [device_added(seq=1), stored(Action.CREDENTIALS_UPDATED,
                                          {"deviceId": str(DEVICE), "credentialsId": "t"}, seq=2)]
    assert {e.tenant_id for e in events} == {NIL_UUID}
    window = UplinkWindow(WindowPolicy(batch_size=2))
    took = window.take(events, 0.0, max_bytes=1 << 20, ordered_peer=True, owner=OWNER)
    assert took.msg is not None and took.seqs == (1, 2) and took.dead == []
    sent = json.loads(took.msg.deviceUpdateMsg[0].entity)
    assert sent["tenantId"] == {"entityType": "TENANT", "id": str(TENANT)}
    applied = uplink_events(took.msg)
    assert [(e.seq, e.action, e.entity_id) for e in applied] == [
        (1, "ADDED", DEVICE), (2, "CREDENTIALS_UPDATED", DEVICE)]
