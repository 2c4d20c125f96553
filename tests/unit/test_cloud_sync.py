"""What the reference cloud's full sync is made of, without a network: the ThingsBoard entity
JSON of tenant, profiles and root rule chain, the stable ids, and the uplink kinds it does not
apply."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from edge_sync.cloud import full_sync, tb_entities, uplink_kinds
from edge_sync.cloud.records import EdgeRecord
from edge_sync.cloud.store import CloudStore
from edge_sync.common import ids
from edge_sync.proto import edge_pb2


def test_root_rule_chain_metadata_is_thingsboard_format_with_a_push_to_cloud_node():
    chain, nodes = ids.time_based(), [ids.time_based() for _ in tb_entities.ROOT_CHAIN_NODES]
    meta = json.loads(tb_entities.rule_chain_metadata_json(chain, nodes))
    assert set(meta) == {"ruleChainId", "version", "firstNodeIndex", "nodes", "connections",
                         "ruleChainConnections"}
    assert meta["firstNodeIndex"] == 0 and len(meta["nodes"]) == 4
    push = meta["nodes"][3]
    assert push["type"] == "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode"
    assert push["id"] == {"entityType": "RULE_NODE", "id": str(nodes[3])}
    assert push["createdTime"] == ids.unix_ms(nodes[3]) and push["configuration"] == {"scope": "SERVER_SCOPE"}
    for c in meta["connections"]:
        assert 0 <= c["fromIndex"] < 4 and 0 <= c["toIndex"] < 4 and c["type"]
    chain_json = json.loads(tb_entities.rule_chain_json(chain, ids.NULL_UUID, nodes[0]))
    assert chain_json["firstRuleNodeId"] == meta["nodes"][0]["id"]


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
        assert len(payloads) == 6  # tenant, chain, metadata, 2 profiles, sync completed: no devices
        last = edge_pb2.DownlinkMsg.FromString(payloads[-1])
        assert last.HasField("syncCompletedMsg")
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
