"""actors/rule_outcomes.py against ThingsBoard: what a save timeseries node's processing
settings keep, and the cloud event each message type the push to cloud node takes becomes
(ThingsBoard's AbstractTbMsgPushNode.buildEvent, ThingsBoard Edge's TbMsgPushToCloudNode)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from edge_sync.actors.messages import PutLatestTelemetry, PutLocalTimeseries
from edge_sync.actors.rule_outcomes import RuleCounters, plan
from edge_sync.cloud.uplink_payloads import uplink_events
from edge_sync.common.wire import NULL_UUID, Owner, uuid_halves
from edge_sync.link.event_payloads import event_payload
from edge_sync.metrics import Metrics
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import NO_PUSH_SCOPE, PUSHABLE_TYPES, RuleEngine, SaveTimeseries
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.storage.records import NIL_UUID, Action, Lane, NewEvent, StoredEvent
from tests.helpers.log_capture import log_records

DEV = uuid.UUID("00000000-0000-0000-0000-00000000d001")
ORIGIN = ("DEVICE", str(DEV))
NOW = 1_700_000_000_000


@pytest.fixture
def counters() -> RuleCounters:
    runtime = RulesRuntime()
    chain, meta = parse({"ruleChain": {"name": "c", "type": "CORE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "push",
             "configuration": {"scope": "SERVER_SCOPE"}}]}})
    runtime.install(chain, meta, "file:c.json", NOW)
    return RuleCounters(runtime, Metrics())


def test_a_save_keeps_the_timeseries_and_the_latest_values_its_settings_name(
        counters: RuleCounters) -> None:
    """TimeseriesSaveRequest.Strategy's saveTimeseries / saveLatest: a save without the latest
    values (skipLatestPersistence, ADVANCED latest SKIP) leaves them as they were; one without
    the timeseries keeps no point."""
    out = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1}, 0, True, False),
                     SaveTimeseries("n", ORIGIN, 11, {"t": 2, "h": 3}, 0, False, True),
                     SaveTimeseries("n", ORIGIN, 12, {"h": 4}, 0, True, False)],
               counters, NOW)
    assert out.mutations == [
        PutLatestTelemetry(DEV, (("t", 11, 2), ("h", 11, 3))),
        PutLocalTimeseries(DEV, ((10, (("t", 1),)), (12, (("h", 4),))), 0)]
    assert out.kept_local == 3
    only_series = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1}, 60, True, False)],
                       counters, NOW)
    assert only_series.mutations == [PutLocalTimeseries(DEV, ((10, (("t", 1),)),), 60)]
    only_latest = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1}, 60, False, True)],
                       counters, NOW)
    assert only_latest.mutations == [PutLatestTelemetry(DEV, (("t", 10, 1),))]


# -- TbMsgPushToCloudNode --------------------------------------------------------------------

ALARM_ID = "00000000-0000-0000-0000-0000000a1a01"
ALARM_UUID = uuid.UUID(ALARM_ID)
ALARM_BODY = {"id": ALARM_ID, "type": "Hot", "severity": "MAJOR", "status": "ACTIVE_ACK"}
PUSH_NODE = "nodes[0] 'Push'"
MSB, LSB = uuid_halves(DEV)


def pushed(counters: RuleCounters, msg_type: str, data: Any, *,
           config: dict[str, Any] | None = None, **meta: str) -> tuple[list[NewEvent], list[str]]:
    """A message of ``msg_type`` through a push to cloud node (``config``, else scope
    CLIENT_SCOPE): the events its outcomes become, and the node's failures as logged."""
    rc, chain_meta = parse({"ruleChain": {"name": "t", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": n.PUSH_TO_CLOUD, "name": "Push",
             "configuration": {"scope": "CLIENT_SCOPE"} if config is None else config}]}})
    engine = RuleEngine(rc, chain_meta, clock=lambda: NOW)
    msg = RuleMsg(msg_type, Originator("DEVICE", str(DEV)), data, meta, ts=5)
    with log_records() as records:
        out = plan(DEV, engine.run(msg), counters, NOW)
    failures = [r["message"] for r in records if r["level"].name == "WARNING"]
    return out.events, failures


def sent(event: NewEvent) -> tuple[str, Any]:
    """The uplink payload the event goes as (edgeSeqId 9)."""
    return event_payload(StoredEvent(
        seq=9, id=uuid.UUID(int=9), created_time=NOW, tenant_id=NIL_UUID, edge_id=NIL_UUID,
        type=event.type, entity_type=event.entity_type, entity_id=event.entity_id,
        action=event.action, body=event.body, ts=event.ts, lane=event.lane),
        Owner(NULL_UUID))


def failure(reason: str) -> str:
    return f"rule node {PUSH_NODE} failed: {reason}; the message goes by Failure"


def test_the_push_node_takes_thingsboards_message_types() -> None:
    """AbstractTbMsgPushNode.isSupportedMsgType, in its order."""
    assert PUSHABLE_TYPES == (
        "POST_TELEMETRY_REQUEST", "POST_ATTRIBUTES_REQUEST", "ATTRIBUTES_UPDATED",
        "ATTRIBUTES_DELETED", "TIMESERIES_UPDATED", "ALARM", "ALARM_CREATED", "ALARM_UPDATED",
        "ALARM_SEVERITY_UPDATED", "ALARM_ACK", "ALARM_CLEAR", "CONNECT_EVENT",
        "DISCONNECT_EVENT", "ACTIVITY_EVENT", "INACTIVITY_EVENT", "TO_SERVER_RPC_REQUEST")


@pytest.mark.parametrize("msg_type", ["TIMESERIES_UPDATED", "CONNECT_EVENT", "DISCONNECT_EVENT",
                                      "ACTIVITY_EVENT", "INACTIVITY_EVENT"])
def test_timeseries_and_activity_without_a_scope_go_as_telemetry(counters: RuleCounters,
                                                                   msg_type: str) -> None:
    """getEdgeEventActionTypeByMsgType: TIMESERIES_UPDATED, and the connect/activity events
    without a scope in their metadata, are TIMESERIES_UPDATED events (postTelemetryMsg)."""
    events, failures = pushed(counters, msg_type, {"lastActivityTime": 7}, ts="40")
    assert (events, failures) == ([NewEvent("DEVICE", "DEVICE", DEV, Action.TIMESERIES_UPDATED,
                                            {"ts": 40, "values": {"lastActivityTime": 7}}, 40,
                                            Lane.NORMAL)], [])
    assert sent(events[0]) == ("entityData", edge_pb2.EntityDataProto(
        entityIdMSB=MSB, entityIdLSB=LSB, entityType="DEVICE", edgeSeqId=9,
        postTelemetryMsg=transport_pb2.PostTelemetryMsg(tsKvList=[transport_pb2.TsKvListProto(
            ts=40, kv=[transport_pb2.KeyValueProto(key="lastActivityTime", type=1,
                                                   long_v=7)])])))


def test_a_push_node_without_a_scope_sends_telemetry_and_scoped_attributes(
        counters: RuleCounters) -> None:
    """A push node with no scope (BaseTbMsgPushNodeConfiguration.scope absent) makes the
    same events as one with a scope, but of an attribute message without scope metadata,
    which fails the node. With an empty scope (""), or blank scope metadata, ThingsBoard
    Edge's uplink sends attribute posts as SERVER_SCOPE (EdgeMsgConstructorUtils
    .getScopeOfDefault)."""
    events, failures = pushed(counters, "POST_TELEMETRY_REQUEST", {"t": 7}, config={}, ts="40")
    assert (events, failures) == ([NewEvent("DEVICE", "DEVICE", DEV, Action.TIMESERIES_UPDATED,
                                            {"ts": 40, "values": {"t": 7}}, 40, Lane.NORMAL)],
                                  [])
    events, failures = pushed(counters, "POST_ATTRIBUTES_REQUEST", {"fw": "1"}, config={},
                              ts="40", scope="SERVER_SCOPE")
    assert ([e.body for e in events], failures) == ([{"scope": "SERVER_SCOPE",
                                                      "kv": {"fw": "1"}}], [])
    events, failures = pushed(counters, "POST_ATTRIBUTES_REQUEST", {"fw": "1"}, config={},
                              ts="40")
    assert (events, failures) == ([], [failure(NO_PUSH_SCOPE)])
    for config, meta in (({"scope": ""}, {}), ({"scope": "CLIENT_SCOPE"}, {"scope": " \t"})):
        events, failures = pushed(counters, "POST_ATTRIBUTES_REQUEST", {"fw": "1"},
                                  config=config, ts="40", **meta)
        assert ([(e.action, e.body) for e in events], failures) == (
            [(Action.ATTRIBUTES_UPDATED, {"scope": "SERVER_SCOPE", "kv": {"fw": "1"}})], [])


@pytest.mark.parametrize(("msg_type", "meta", "scope"), [
    ("ATTRIBUTES_UPDATED", {}, "CLIENT_SCOPE"),
    ("ATTRIBUTES_UPDATED", {"scope": "SERVER_SCOPE"}, "SERVER_SCOPE"),
    ("ACTIVITY_EVENT", {"scope": "SERVER_SCOPE"}, "SERVER_SCOPE"),
    ("INACTIVITY_EVENT", {"scope": "SHARED_SCOPE"}, "SHARED_SCOPE")])
def test_attribute_updates_go_as_thingsboard_edges_attributes_updated(
        counters: RuleCounters, msg_type: str, meta: dict[str, str], scope: str) -> None:
    """An ATTRIBUTES_UPDATED message (and a connect/activity event with a scope) is an
    ATTRIBUTES_UPDATED event of the message's scope, else the node's; ThingsBoard Edge sends it
    as attributesUpdatedMsg (EdgeMsgConstructorUtils.constructEntityDataMsg without
    isPostAttributes), which the cloud saves itself."""
    events, failures = pushed(counters, msg_type, {"active": True}, ts="40", **meta)
    assert (events, failures) == ([NewEvent(
        "DEVICE", "DEVICE", DEV, Action.ATTRIBUTES_UPDATED,
        {"scope": scope, "kv": {"active": True}, "attributesUpdated": True}, 40,
        Lane.NORMAL)], [])
    kv = transport_pb2.PostAttributeMsg(kv=[transport_pb2.KeyValueProto(
        key="active", type=0, bool_v=True)])
    assert sent(events[0]) == ("entityData", edge_pb2.EntityDataProto(
        entityIdMSB=MSB, entityIdLSB=LSB, entityType="DEVICE", edgeSeqId=9,
        attributesUpdatedMsg=kv, postAttributeScope=scope, attributeTs=40))


def test_a_posted_attributes_message_goes_as_a_post(counters: RuleCounters) -> None:
    """POST_ATTRIBUTES_REQUEST: POST_ATTRIBUTES, postAttributesMsg (the cloud's rule chain)."""
    events, _ = pushed(counters, "POST_ATTRIBUTES_REQUEST", {"fw": "2"}, ts="40")
    field, msg = sent(events[0])
    assert (field, msg.HasField("postAttributesMsg"), msg.HasField("attributesUpdatedMsg"),
            msg.postAttributeScope) == ("entityData", True, False, "CLIENT_SCOPE")


def test_attributes_deleted_goes_as_an_attribute_delete(counters: RuleCounters) -> None:
    """ATTRIBUTES_DELETED: the keys of the data's "attributes" list, of the message's scope,
    else the node's (attributeDeleteMsg)."""
    events, failures = pushed(counters, "ATTRIBUTES_DELETED", {"attributes": ["a", "b"]},
                              scope="SHARED_SCOPE")
    assert (events, failures) == ([NewEvent(
        "DEVICE", "DEVICE", DEV, Action.ATTRIBUTES_DELETED,
        {"scope": "SHARED_SCOPE", "keys": ["a", "b"]}, 5, Lane.NORMAL)], [])
    assert sent(events[0]) == ("entityData", edge_pb2.EntityDataProto(
        entityIdMSB=MSB, entityIdLSB=LSB, entityType="DEVICE", edgeSeqId=9,
        attributeDeleteMsg=edge_pb2.AttributeDeleteMsg(scope="SHARED_SCOPE",
                                                       attributeNames=["a", "b"])))


@pytest.mark.parametrize(("msg_type", "data", "meta", "reason"), [
    ("ATTRIBUTES_DELETED", {"attributes": []}, {}, "an ATTRIBUTES_DELETED message's data names "
     "no attribute keys (an \"attributes\" list of key names)"),
    ("ATTRIBUTES_DELETED", {"keys": ["a"]}, {}, "an ATTRIBUTES_DELETED message's data names "
     "no attribute keys (an \"attributes\" list of key names)"),
    ("ATTRIBUTES_DELETED", {"attributes": ["a"]}, {"scope": "client"},
     "attribute scope 'client' is not one of CLIENT_SCOPE, SERVER_SCOPE, SHARED_SCOPE"),
    ("ATTRIBUTES_UPDATED", {"a": 1}, {"scope": "ANY_SCOPE"},
     "attribute scope 'ANY_SCOPE' is not one of CLIENT_SCOPE, SERVER_SCOPE, SHARED_SCOPE"),
    ("ALARM_ACK", {"type": "Hot"}, {}, "an ALARM_ACK message whose data has no alarm id"),
    ("TO_SERVER_RPC_REQUEST", {"params": {}}, {},
     "a TO_SERVER_RPC_REQUEST message's data has no method"),
    ("ENTITY_CREATED", {}, {}, "unsupported message type ENTITY_CREATED (pushes "
     "POST_TELEMETRY_REQUEST, POST_ATTRIBUTES_REQUEST, ATTRIBUTES_UPDATED, ATTRIBUTES_DELETED, "
     "TIMESERIES_UPDATED, ALARM, ALARM_CREATED, ALARM_UPDATED, ALARM_SEVERITY_UPDATED, "
     "ALARM_ACK, ALARM_CLEAR, CONNECT_EVENT, DISCONNECT_EVENT, ACTIVITY_EVENT, "
     "INACTIVITY_EVENT, TO_SERVER_RPC_REQUEST)"),
])
def test_a_message_the_cloud_could_not_take_fails_the_node(
        counters: RuleCounters, msg_type: str, data: Any, meta: dict[str, str],
        reason: str) -> None:
    assert pushed(counters, msg_type, data, **meta) == ([], [failure(reason)])
    assert counters.runtime.counts()[PUSH_NODE] == {"in": 1, "failed": 1}


@pytest.mark.parametrize(("msg_type", "flag", "action"), [
    ("ALARM_CREATED", "isNewAlarm", Action.ADDED),
    ("ALARM_UPDATED", None, Action.UPDATED),
    ("ALARM_SEVERITY_UPDATED", "isExistingAlarm", Action.UPDATED),
    ("ALARM_UPDATED", "isClearedAlarm", Action.ALARM_CLEAR),
    ("ALARM_ACK", "isNewAlarm", Action.ALARM_ACK),
    ("ALARM_CLEAR", None, Action.ALARM_CLEAR)])
def test_alarm_messages_go_as_alarm_events_in_the_high_lane(
        counters: RuleCounters, msg_type: str, flag: str | None, action: Action) -> None:
    """ALARM, ALARM_CREATED, ALARM_UPDATED, ALARM_SEVERITY_UPDATED: the action the alarm
    node's metadata names (getAlarmActionType); ALARM_ACK and ALARM_CLEAR: their own
    (EdgeEventActionType.valueOf(msg.getType())). The alarm id is the data's."""
    meta = {flag: "true"} if flag else {}
    events, failures = pushed(counters, msg_type, ALARM_BODY, ts="40", **meta)
    assert (events, failures) == ([NewEvent("ALARM", "ALARM", ALARM_UUID, action,
                                            {**ALARM_BODY, "originator": str(DEV)}, 40,
                                            Lane.HIGH)], [])
    field, msg = sent(events[0])
    assert (field, msg.msgType) == ("alarmUpdateMsg", {
        Action.ADDED: edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
        Action.UPDATED: edge_pb2.ENTITY_UPDATED_RPC_MESSAGE,
        Action.ALARM_ACK: edge_pb2.ALARM_ACK_RPC_MESSAGE,
        Action.ALARM_CLEAR: edge_pb2.ALARM_CLEAR_RPC_MESSAGE}[action])


def test_a_device_rpc_request_goes_as_thingsboard_edges_rpc_call(counters: RuleCounters) -> None:
    """TO_SERVER_RPC_REQUEST: ThingsBoard Edge's RPC_CALL event (requestId, serviceId,
    sessionId from the metadata, method and params' JSON text from the data), sent as a
    deviceRpcCallMsg with a requestMsg (EdgeMsgConstructorUtils.constructDeviceRpcCallMsg)."""
    events, failures = pushed(counters, "TO_SERVER_RPC_REQUEST",
                              {"method": "getTime", "params": {"tz": "UTC"}},
                              requestId="7", serviceId="edge-1", sessionId="s-1", ts="40")
    body = {"requestId": 7, "method": "getTime", "params": '{"tz":"UTC"}',
            "serviceId": "edge-1", "sessionId": "s-1"}
    assert (events, failures) == ([NewEvent("DEVICE", "DEVICE", DEV, Action.RPC_CALL, body, 40,
                                            Lane.HIGH)], [])
    field, msg = sent(events[0])
    assert (field, msg) == ("deviceRpcCallMsg", edge_pb2.DeviceRpcCallMsg(
        deviceIdMSB=MSB, deviceIdLSB=LSB, requestId=7, serviceId="edge-1", sessionId="s-1",
        requestMsg=edge_pb2.RpcRequestMsg(method="getTime", params='{"tz":"UTC"}'),
        edgeSeqId=9))
    applied = uplink_events(edge_pb2.UplinkMsg(deviceRpcCallMsg=[msg]))[0]
    assert (applied.action, applied.body) == (
        Action.RPC_CALL, {"requestId": 7, "method": "getTime", "params": '{"tz":"UTC"}'})
    # no requestId (or one Jackson's asInt cannot read) is 0; no params is "null"
    events, _ = pushed(counters, "TO_SERVER_RPC_REQUEST", {"method": 5}, requestId="x")
    assert events[0].body == {"requestId": 0, "method": "5", "params": "null"}
