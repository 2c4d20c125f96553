"""What the reference cloud's full sync is made of, without a network: the ThingsBoard entity
JSON of tenant, queues, profiles and root rule chain (the node configurations a ThingsBoard 4.3
Edge validates), the stable ids, and the uplink kinds it does not apply."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

from edge_sync.cloud import full_sync, tb_entities, uplink_kinds
from edge_sync.cloud.records import EdgeRecord
from edge_sync.cloud.store import CloudStore
from edge_sync.common import ids
from edge_sync.common.wire import uuid_of
from edge_sync.proto import edge_pb2

# What ThingsBoard 4.3 (thingsboard v4.3.1.3) accepts for each node of the root rule chain. A
# ThingsBoard Edge validates a rule node (RuleChainDataValidator.validateRuleNode) by reading its
# configuration into the node's configClazz with JacksonUtil.OBJECT_MAPPER (an unknown field
# fails) and checking the @NotNull fields; it does not upgrade an older configurationVersion.
# node class -> (@RuleNode version, the configuration class's fields, its @NotNull fields), from:
#   rule-engine/rule-engine-api/src/main/java/org/thingsboard/rule/engine/api/EmptyNodeConfiguration.java
#   rule-engine/rule-engine-components/src/main/java/org/thingsboard/rule/engine/
#     filter/TbMsgTypeSwitchNode.java (no version: 0, configClazz EmptyNodeConfiguration)
#     telemetry/TbMsgTimeseriesNode.java (version = 1), telemetry/TbMsgTimeseriesNodeConfiguration.java
#     telemetry/TbMsgAttributesNode.java (version = 3), telemetry/TbMsgAttributesNodeConfiguration.java
#     edge/TbMsgPushToCloudNode.java (no version: 0), edge/BaseTbMsgPushNodeConfiguration.java
THINGSBOARD_NODES: dict[str, tuple[int, set[str], set[str]]] = {
    "org.thingsboard.rule.engine.filter.TbMsgTypeSwitchNode": (0, {"version"}, set()),
    "org.thingsboard.rule.engine.telemetry.TbMsgTimeseriesNode": (
        1, {"defaultTTL", "useServerTs", "processingSettings"}, {"processingSettings"}),
    "org.thingsboard.rule.engine.telemetry.TbMsgAttributesNode": (
        3, {"processingSettings", "scope", "notifyDevice", "sendAttributesUpdatedNotification",
            "updateAttributesOnlyOnValueChange"}, {"processingSettings"}),
    "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode": (0, {"scope"}, set()),
}
# the processing settings types (telemetry/settings/*ProcessingSettings.java, @JsonSubTypes)
PROCESSING_TYPES = {"ON_EVERY_MESSAGE", "WEBSOCKETS_ONLY", "DEDUPLICATE", "ADVANCED"}


def _metadata() -> tuple[list[uuid.UUID], dict[str, Any]]:
    chain, nodes = ids.time_based(), [ids.time_based() for _ in tb_entities.ROOT_CHAIN_NODES]
    return nodes, json.loads(tb_entities.rule_chain_metadata_json(chain, nodes))


def test_root_rule_chain_node_configurations_pass_thingsboard_4_3_validation():
    _, meta = _metadata()
    for node in meta["nodes"]:
        version, fields, not_null = THINGSBOARD_NODES[node["type"]]
        config = node["configuration"]
        assert node["configurationVersion"] == version, node["name"]
        assert set(config) == fields, node["name"]
        assert all(config[f] is not None for f in not_null), node["name"]
        if "processingSettings" in config:
            assert config["processingSettings"] == {"type": "ON_EVERY_MESSAGE"}
            assert config["processingSettings"]["type"] in PROCESSING_TYPES
    by_name = {n["name"]: n["configuration"] for n in meta["nodes"] if "Save" in n["name"]}
    assert by_name == {
        "Save Timeseries": {"defaultTTL": 0, "useServerTs": False,
                            "processingSettings": {"type": "ON_EVERY_MESSAGE"}},
        "Save Attributes": {"processingSettings": {"type": "ON_EVERY_MESSAGE"},
                            "scope": "CLIENT_SCOPE", "notifyDevice": False,
                            "sendAttributesUpdatedNotification": False,
                            "updateAttributesOnlyOnValueChange": True}}


def test_root_rule_chain_pushes_saved_client_data_as_client_scope_and_edge_updates_as_server():
    """As ThingsBoard's edge root rule chain: what "save timeseries" / "save attributes" saved
    goes to a push node of scope CLIENT_SCOPE (the push node takes the scope from its
    configuration when the message's metadata has none), attribute updates and deletions to
    one of scope SERVER_SCOPE."""
    nodes, meta = _metadata()
    assert set(meta) == {"ruleChainId", "version", "firstNodeIndex", "nodes", "connections",
                         "ruleChainConnections"}
    names = [n["type"].rsplit(".", 1)[1] for n in meta["nodes"]]
    assert names == ["TbMsgTypeSwitchNode", "TbMsgTimeseriesNode", "TbMsgAttributesNode",
                     "TbMsgPushToCloudNode", "TbMsgPushToCloudNode"]
    assert meta["firstNodeIndex"] == 0
    scope = {i: n["configuration"]["scope"] for i, n in enumerate(meta["nodes"])
             if n["type"] == tb_entities.PUSH_TO_CLOUD_NODE}
    assert scope == {3: "CLIENT_SCOPE", 4: "SERVER_SCOPE"}
    assert [(c["fromIndex"], c["toIndex"], c["type"]) for c in meta["connections"]] == [
        (0, 1, "Post telemetry"), (0, 2, "Post attributes"), (1, 3, "Success"), (2, 3, "Success"),
        (0, 4, "Attributes Updated"), (0, 4, "Attributes Deleted")]
    push = meta["nodes"][3]
    assert push["id"] == {"entityType": "RULE_NODE", "id": str(nodes[3])}
    assert push["createdTime"] == ids.unix_ms(nodes[3])
    chain_json = json.loads(tb_entities.rule_chain_json(uuid.UUID(meta["ruleChainId"]["id"]),
                                                        ids.NULL_UUID, nodes[0]))
    assert chain_json["firstRuleNodeId"] == meta["nodes"][0]["id"]


def test_default_queues_are_thingsboards():
    """Main, HighPriority, SequentialByOriginator as ThingsBoard's
    DefaultSystemDataLoaderService.createQueues makes them, owned by the system tenant, with
    Queue's JSON properties (common/data/.../queue/Queue.java, SubmitStrategy.java,
    ProcessingStrategy.java)."""
    queue_id = ids.TimeBasedIds().new(1_700_000_000_000)
    body = json.loads(tb_entities.queue_json(queue_id, "SequentialByOriginator"))
    assert body == {
        "id": {"entityType": "QUEUE", "id": str(queue_id)}, "createdTime": 1_700_000_000_000,
        "additionalInfo": None,
        "tenantId": {"entityType": "TENANT", "id": "13814000-1dd2-11b2-8080-808080808080"},
        "name": "SequentialByOriginator", "topic": "tb_rule_engine.sq", "pollInterval": 25,
        "partitions": 10, "consumerPerPartition": True, "packProcessingTimeout": 2000,
        "submitStrategy": {"type": "SEQUENTIAL_BY_ORIGINATOR", "batchSize": 100},
        "processingStrategy": {"type": "RETRY_FAILED_AND_TIMED_OUT", "retries": 3,
                               "failurePercentage": 0.0, "pauseBetweenRetries": 5,
                               "maxPauseBetweenRetries": 5}}
    main = json.loads(tb_entities.queue_json(queue_id, "Main"))
    assert (main["topic"], main["submitStrategy"], main["processingStrategy"]["type"]) == (
        "tb_rule_engine.main", {"type": "BURST", "batchSize": 1000}, "SKIP_ALL_FAILURES")
    high = json.loads(tb_entities.queue_json(queue_id, "HighPriority"))
    assert (high["topic"], high["processingStrategy"]["retries"]) == ("tb_rule_engine.hp", 0)


def test_tenant_json_takes_its_creation_time_from_the_id():
    tenant = ids.TimeBasedIds().new(1_700_000_000_123)
    body = json.loads(tb_entities.tenant_json(tenant))
    assert body["id"] == {"entityType": "TENANT", "id": str(tenant)}
    assert body["createdTime"] == 1_700_000_000_123 and body["tenantProfileId"] is None
    assert json.loads(tb_entities.tenant_json(uuid.uuid4()))["createdTime"] == 0


def test_full_sync_ids_are_stable_and_profiles_follow_the_device_types(tmp_path: Path):
    store = CloudStore(tmp_path / "c")
    try:
        tenant = store.tenant_id()
        edge = EdgeRecord(ids.time_based(), tenant, "rk", "e", "default", 1, b"", b"", ("scrypt", 1, 1, 1))
        a = full_sync.tenant_entities(store, ["meter"])
        b = full_sync.tenant_entities(store, ["meter", "valve"])
        assert (a.rule_chain_id, a.node_ids, a.asset_profile_id) == (
            b.rule_chain_id, b.node_ids, b.asset_profile_id)
        assert sorted(a.device_profiles) == ["default", "meter"]
        assert b.device_profiles["meter"] == a.device_profiles["meter"]
        assert full_sync.device_profile_id(store, "valve") == b.device_profiles["valve"]
        everything = [a.rule_chain_id, *a.node_ids, a.asset_profile_id, *b.device_profiles.values()]
        assert all(i.version == 1 for i in everything) and len(set(everything)) == len(everything)
        payloads = full_sync.full_sync(store, edge, 5)
        got = [edge_pb2.DownlinkMsg.FromString(p) for p in payloads]
        # ThingsBoard's order (EdgeSyncCursor): the tenant, then the queues, then rule chains...
        # packed, kinds together where a ThingsBoard Edge's apply order agrees
        assert [[f.name for f, _ in d.ListFields()] for d in got] == [
            ["tenantUpdateMsg"], ["queueUpdateMsg"],
            ["ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg"],
            ["deviceProfileUpdateMsg", "assetProfileUpdateMsg"], ["syncCompletedMsg"]]  # no devices
        # every device profile of the tenant (on every edge, as in ThingsBoard)
        assert sorted(json.loads(p.entity)["name"] for p in got[3].deviceProfileUpdateMsg) == [
            "default", "meter", "valve"]
        queues = list(got[1].queueUpdateMsg)
        assert [json.loads(q.entity)["name"] for q in queues] == [
            "Main", "HighPriority", "SequentialByOriginator"]
        assert all(q.msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE for q in queues)
        queue_ids = [uuid_of(q.idMSB, q.idLSB) for q in queues]
        assert queue_ids == list(a.queues.values()) and all(i.version == 1 for i in queue_ids)
        assert [uuid.UUID(json.loads(q.entity)["id"]["id"]) for q in queues] == queue_ids
    finally:
        store.close()


def test_uplink_kinds_not_applied_by_the_cloud():
    msg = edge_pb2.UplinkMsg(
        uplinkMsgId=3, uplinkEpoch=1, firstEdgeSeqId=1,
        entityData=[edge_pb2.EntityDataProto()], assetUpdateMsg=[edge_pb2.AssetUpdateMsg()],
        attributesRequestMsg=[edge_pb2.AttributesRequestMsg()],
        ruleChainUpdateMsg=[edge_pb2.RuleChainUpdateMsg()] * 3,
        userUpdateMsg=[edge_pb2.UserUpdateMsg()])
    raw = msg.SerializeToString() + bytes([0xEA, 0x01, 0x00])  # field 29, empty
    assert uplink_kinds.not_applied(edge_pb2.UplinkMsg.FromString(raw)) == {
        "ruleChainUpdateMsg": 3, "userUpdateMsg": 1, "userCredentialsUpdateMsg": 1}
    assert uplink_kinds.not_applied(edge_pb2.UplinkMsg(uplinkMsgId=1)) == {}
