"""The reference cloud as a ThingsBoard Edge expects a cloud to behave, over real gRPC on
loopback: the full sync's order and content, refused downlinks parked after downlink.max_attempts
(visible in the admin API, `edge-cloud status` and /metrics) while the queue moves on, requests
answered as ThingsBoard answers them, uplink kinds it does not apply counted by kind, and uplinks
of a peer without the project's extensions applied (at least once)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger
from prometheus_client.parser import text_string_to_metric_families

from edge_sync.cloud import CloudServer
from edge_sync.cloud.tb_entities import PUSH_TO_CLOUD_NODE
from edge_sync.common import ids
from edge_sync.common.wire import to_kv, uuid_halves, uuid_of
from edge_sync.config import AdminConfig, CloudConfig, CloudStorageConfig, DownlinkConfig, EdgesRpcConfig
from edge_sync.errors import QueueFull, StorageError
from edge_sync.proto import edge_pb2, transport_pb2
from tests.helpers.link_client import DEADLINE_S, LinkClient, telemetry
from tests.helpers.wait import wait_until
from tests.integration.test_cloud_cli import env_for
from tests.integration.test_cloud_link import SYNC_HEAD, http, layout

NULL_CUSTOMER = {"entityType": "CUSTOMER", "id": "13814000-1dd2-11b2-8080-808080808080"}
REFUSAL = "Device should be assigned to tenant!"
# a ThingsBoard Edge's errorMsg: the root cause's message, then its stack trace
STACK_LINE = "\tat org.thingsboard.server.dao.service.Validator.validate(Validator.java:42)\n"
REFUSAL_WITH_STACK = REFUSAL + "\n" + STACK_LINE * 80
DEVICE_KINDS = "deviceUpdateMsg,deviceProfileUpdateMsg,deviceCredentialsUpdateMsg"
"""A device created after a sync: one downlink with its profile and credentials."""


def config(data_dir: Path, *, resend_ms: int = 300, max_attempts: int = 3) -> CloudConfig:
    return CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0),
        storage=CloudStorageConfig(data_dir=data_dir),
        downlink=DownlinkConfig(resend_timeout_ms=resend_ms, max_attempts=max_attempts),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    server = CloudServer(config(tmp_path / "cloud")).start()
    yield server
    server.stop()


@pytest.fixture
def edge(cloud: CloudServer) -> tuple[str, str, uuid.UUID]:
    record, secret, _ = cloud.service.create_edge("edge-1", routing_key="rk-1", secret="s3cret-1")
    return record.routing_key, secret, record.edge_id


@pytest.fixture
def clients() -> Iterator[list[LinkClient]]:
    made: list[LinkClient] = []
    yield made
    for c in made:
        c.close()


def connect(cloud: CloudServer, clients: list[LinkClient], edge: tuple[str, str, uuid.UUID]
            ) -> LinkClient:
    """A ThingsBoard-like edge: no edgeStoreId."""
    client = LinkClient(cloud.port, gzip=True)
    clients.append(client)
    assert client.connect(edge[0], edge[1]).responseCode == edge_pb2.ACCEPTED
    return client


def request_sync(client: LinkClient, full: bool) -> None:
    client.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                    syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=full)))


def metrics(cloud: CloudServer) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{cloud.admin_port}/metrics",
                                timeout=DEADLINE_S) as resp:
        text = resp.read().decode()
    return {s.name + ("{" + ",".join(f'{k}="{v}"' for k, v in s.labels.items()) + "}"
                      if s.labels else ""): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def typed_ids(value: Any) -> Iterator[dict[str, str]]:
    """Every typed id ({"entityType", "id"}) in a JSON value."""
    if isinstance(value, dict):
        if set(value) == {"entityType", "id"}:
            yield value
        for inner in value.values():
            yield from typed_ids(inner)
    elif isinstance(value, list):
        for inner in value:
            yield from typed_ids(inner)


def entity_jsons(d: edge_pb2.DownlinkMsg) -> list[tuple[str, Any, dict[str, Any]]]:
    """(field name, the message, its entity JSON) of every entity message of a downlink."""
    out = []
    for field, value in d.ListFields():
        if field.is_repeated and field.name != "entityData":
            out += [(field.name, m, json.loads(m.entity)) for m in value]
    return out


# -- full sync -------------------------------------------------------------------------------------


def test_full_sync_in_thingsboards_order_with_4x_json_and_v1_ids(cloud, edge, clients, tmp_path):
    tenant = cloud.store.tenant_id()
    pump, _ = cloud.service.create_device(edge[0], "pump-1", token="tok-pump")
    meter, _ = cloud.service.create_device(edge[0], "meter-1", type_="meter", label="hall",
                                           token="tok-meter")
    cloud.service.set_attributes("pump-1", {"target": 42})
    client = connect(cloud, clients, edge)
    got = client.sync(True)
    # packed where a ThingsBoard Edge's apply order agrees: both device profiles (the default
    # and the meter's) with the asset profile, before the devices, which carry none of their own
    assert [layout(d) for d in got] == [
        ["tenantUpdateMsg"], ["queueUpdateMsg"] * 3,
        ["ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg"],
        ["deviceProfileUpdateMsg"] * 2 + ["assetProfileUpdateMsg"],
        ["deviceUpdateMsg"] * 2 + ["deviceCredentialsUpdateMsg"] * 2,
        ["entityData"], ["syncCompletedMsg"]]
    queues = [json.loads(q.entity) for q in got[1].queueUpdateMsg]
    assert [q["name"] for q in queues] == ["Main", "HighPriority", "SequentialByOriginator"]

    # every entity names the tenant; every id is time-based, ThingsBoard's NULL_UUID customer too
    tenant_ref = {"entityType": "TENANT", "id": str(tenant)}
    for d in got:
        for name, msg, body in entity_jsons(d):
            if name == "queueUpdateMsg":  # ThingsBoard's system queues: the system tenant
                assert body["tenantId"] == {"entityType": "TENANT", "id": str(ids.NULL_UUID)}
            elif name == "tenantUpdateMsg":
                assert body["id"] == tenant_ref and body["title"] == "Tenant"
                assert body["createdTime"] > 0 and msg.msgType == edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
            elif name == "ruleChainMetadataUpdateMsg":
                assert "tenantId" not in body  # RuleChainMetaData has none
            elif name != "deviceCredentialsUpdateMsg":
                assert body["tenantId"] == tenant_ref, name
                assert uuid_of(msg.idMSB, msg.idLSB) == uuid.UUID(body["id"]["id"])
                assert msg.msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
            assert all(uuid.UUID(ref["id"]).version == 1 for ref in typed_ids(body)), body

    # the root rule chain: type EDGE, root, its first node the message type switch, and a
    # push-to-cloud node that everything saved reaches
    (_, _, chain), (_, _, meta) = entity_jsons(got[2])
    assert (chain["type"], chain["root"], chain["name"]) == ("EDGE", True, "Edge Root Rule Chain")
    assert meta["ruleChainId"] == chain["id"]
    nodes = meta["nodes"]
    assert chain["firstRuleNodeId"] == nodes[meta["firstNodeIndex"]]["id"]
    types = [n["type"].rsplit(".", 1)[1] for n in nodes]
    assert types == ["TbMsgTypeSwitchNode", "TbMsgTimeseriesNode", "TbMsgAttributesNode",
                     "TbMsgPushToCloudNode", "TbMsgPushToCloudNode"]
    assert types[meta["firstNodeIndex"]] == "TbMsgTypeSwitchNode"
    push = {i: n["configuration"]["scope"] for i, n in enumerate(nodes)
            if n["type"] == PUSH_TO_CLOUD_NODE}
    assert push == {3: "CLIENT_SCOPE", 4: "SERVER_SCOPE"}
    assert all(n["ruleChainId"] == chain["id"] for n in nodes)
    links = {(c["fromIndex"], c["toIndex"], c["type"]) for c in meta["connections"]}
    assert links == {(0, 1, "Post telemetry"), (0, 2, "Post attributes"), (1, 3, "Success"),
                     (2, 3, "Success"), (0, 4, "Attributes Updated"), (0, 4, "Attributes Deleted")}

    # profiles: the default device profile, one per other type, the default asset profile
    device_profiles = {body["name"]: body for name, _, body in entity_jsons(got[3])
                       if name == "deviceProfileUpdateMsg"}
    assert set(device_profiles) == {"default", "meter"}
    default_profile, meter_profile = device_profiles["default"], device_profiles["meter"]
    (_, _, asset_profile), = [e for e in entity_jsons(got[3]) if e[0] == "assetProfileUpdateMsg"]
    assert (default_profile["name"], default_profile["default"], default_profile["type"],
            default_profile["transportType"]) == ("default", True, "DEFAULT", "DEFAULT")
    assert default_profile["profileData"]["configuration"] == {"type": "DEFAULT"}
    assert (asset_profile["name"], asset_profile["default"]) == ("default", True)
    assert (meter_profile["name"], meter_profile["default"]) == ("meter", False)

    # devices: one message with both devices and their credentials, each device naming its
    # profile (sent before), each credentials its device
    devices = {body["name"]: body for name, _, body in entity_jsons(got[4])
               if name == "deviceUpdateMsg"}
    creds = {body["deviceId"]["id"]: body for name, _, body in entity_jsons(got[4])
             if name == "deviceCredentialsUpdateMsg"}
    assert set(devices) == {"pump-1", "meter-1"}
    m = devices["meter-1"]
    assert m["id"] == {"entityType": "DEVICE", "id": str(meter.id)}
    assert (m["type"], m["label"]) == ("meter", "hall")
    assert m["customerId"] == NULL_CUSTOMER
    assert m["deviceProfileId"] == meter_profile["id"]
    assert m["createdTime"] == meter.created_time
    assert devices["pump-1"]["deviceProfileId"] == default_profile["id"]
    assert {device_id: c["credentialsId"] for device_id, c in creds.items()} == {
        str(meter.id): "tok-meter", str(pump.id): "tok-pump"}
    data = got[5].entityData[0]
    assert uuid_of(data.entityIdMSB, data.entityIdLSB) == pump.id
    assert data.postAttributeScope == "SHARED_SCOPE" and data.attributesUpdatedMsg.kv[0].long_v == 42

    # the ids are stored: the same after a restart of the cloud
    first_ids = [[body["id"] for _, _, body in entity_jsons(d) if "id" in body] for d in got[:5]]
    client.close()
    data_dir = cloud.store.path
    cloud.stop()
    again = CloudServer(config(data_dir)).start()
    try:
        later = LinkClient(again.port)
        clients.append(later)
        assert later.connect(edge[0], edge[1]).responseCode == edge_pb2.ACCEPTED
        resync = later.sync(True)
        assert [layout(d) for d in resync] == [layout(d) for d in got]
        assert [[body["id"] for _, _, body in entity_jsons(d) if "id" in body]
                for d in resync[:5]] == first_ids
        assert entity_jsons(resync[2])[1][2] == meta
    finally:
        again.stop()


def test_a_device_created_later_always_comes_with_its_profile_and_credentials(cloud, edge, clients):
    """One DownlinkMsg per device, as in a full sync, for every device of any type: whether the
    edge has the profile cannot be known (an earlier one parked, devices of a new type created
    at the same time), and a ThingsBoard Edge refuses a device whose profile it lacks."""
    client = connect(cloud, clients, edge)
    client.sync(False)
    created = [cloud.service.create_device(edge[0], name, type_=kind, token=f"tok-{name}")
               for name, kind in (("valve-1", "valve"), ("valve-2", "valve"), ("pump-1", None))]
    assert [len(numbers) for _, numbers in created] == [1, 1, 1]
    for device, _ in created:
        d = client.downlink()
        client.ack(d.downlinkMsgId)
        assert layout(d) == ["deviceUpdateMsg", "deviceProfileUpdateMsg", "deviceCredentialsUpdateMsg"]
        body = json.loads(d.deviceUpdateMsg[0].entity)
        profile = json.loads(d.deviceProfileUpdateMsg[0].entity)
        assert body["id"] == {"entityType": "DEVICE", "id": str(device.id)}
        assert body["deviceProfileId"] == profile["id"] and profile["name"] == device.type
        assert json.loads(d.deviceCredentialsUpdateMsg[0].entity)["credentialsId"] == device.token
    assert client.nothing_within(0.3)


# -- refused downlinks are parked ----------------------------------------------------------------------


def test_a_refused_downlink_is_parked_after_max_attempts_and_the_queue_moves_on(
        cloud, edge, clients, tmp_path):
    messages: list[dict[str, Any]] = []
    sink = logger.add(lambda m: messages.append(
        {"text": m.record["message"], **m.record["extra"]}), level="INFO")
    try:
        client = connect(cloud, clients, edge)
        client.sync(False)
        cloud.service.create_device(edge[0], "bad", token="tok-bad")
        cloud.service.create_device(edge[0], "good", token="tok-good")
        first = client.downlink()
        sends = [first.downlinkMsgId]
        client.ack(first.downlinkMsgId, success=False, error=REFUSAL_WITH_STACK)
        for _ in range(2):  # resent after the timeout, refused again
            again = client.downlink(timeout=3)
            assert again.downlinkMsgId == first.downlinkMsgId
            sends.append(again.downlinkMsgId)
            client.ack(again.downlinkMsgId, success=False, error=REFUSAL_WITH_STACK)
        assert len(sends) == 3  # exactly max_attempts
        nxt = client.downlink()  # at once: the queue moved on
        assert nxt.downlinkMsgId != first.downlinkMsgId
        assert json.loads(nxt.deviceUpdateMsg[0].entity)["name"] == "good"
        client.ack(nxt.downlinkMsgId)
        assert client.nothing_within(0.5)
    finally:
        logger.remove(sink)
    parked_logs = [m for m in messages if m["text"].startswith("downlink parked")]
    assert len(parked_logs) == 1
    log = parked_logs[0]
    assert (log["routing_key"], log["downlink_id"], log["kind"], log["attempts"]) == (
        "rk-1", first.downlinkMsgId, DEVICE_KINDS, 3)
    assert log["text"] == f"downlink parked for edge rk-1: {REFUSAL}"
    assert log["error"] == REFUSAL_WITH_STACK[:500]

    status, parked = http(cloud.admin_port, "GET", "/api/edges/rk-1/downlinks/parked")
    assert status == 200
    assert [{k: v for k, v in p.items() if k not in ("parked_at", "number")} for p in parked] == [
        {"downlink_id": first.downlinkMsgId, "kinds": DEVICE_KINDS, "cause": "refused",
         "error": REFUSAL_WITH_STACK[:4000], "attempts": 3, "in_sync": False}]
    assert len(REFUSAL_WITH_STACK) > 4000
    assert http(cloud.admin_port, "GET", f"/api/edges/{edge[2]}/downlinks/parked")[1] == parked
    assert http(cloud.admin_port, "GET", "/api/edges/nope/downlinks/parked")[0] == 404
    status, out = http(cloud.admin_port, "GET", "/api/status")
    assert [(e["queued_downlinks"], e["parked_downlinks"]) for e in out["edges"]] == [(0, 1)]
    m = metrics(cloud)
    assert (m['edge_cloud_downlinks_total{outcome="refused"}'],
            m['edge_cloud_downlinks_total{outcome="parked"}']) == (3, 1)

    # the operator sees it in `edge-cloud status`, with the server running and stopped
    env = env_for(cloud.store.path, cloud.admin_port)
    line = (f"  parked downlink {first.downlinkMsgId} ({DEVICE_KINDS}): refused, 3 attempts: "
            f"{REFUSAL}")
    for _ in ("running", "stopped"):
        proc = subprocess.run([sys.executable, "-m", "edge_sync.cli.cloud", "status"], env=env,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert "parked downlinks 1" in proc.stdout and line in proc.stdout.splitlines()
        proc = subprocess.run([sys.executable, "-m", "edge_sync.cli.cloud", "status", "--json"],
                              env=env, capture_output=True, text=True, timeout=60)
        (row,) = json.loads(proc.stdout)["edges"]
        assert [p["error"] for p in row["parked"]] == [REFUSAL_WITH_STACK[:4000]]
        for c in clients:
            c.close()
        cloud.stop()


def test_a_refused_device_downlink_of_a_sync_is_parked_and_sync_completed_still_arrives(
        cloud, edge, clients):
    cloud.service.create_device(edge[0], "bad", token="tok-bad")
    client = connect(cloud, clients, edge)
    request_sync(client, True)
    got = []
    refused = []
    while True:
        d = client.downlink(timeout=3)
        got.append(layout(d))
        if d.deviceUpdateMsg:
            refused.append(d.downlinkMsgId)
            client.ack(d.downlinkMsgId, success=False, error=REFUSAL)
            continue
        client.ack(d.downlinkMsgId)
        if d.HasField("syncCompletedMsg"):
            break
    # the device's pack (the device and its credentials) refused once, sent again entry by
    # entry: the device alone refused max_attempts times (the same downlink resent) and parked,
    # its credentials then go alone, and the sync completes
    assert got == [*SYNC_HEAD, ["deviceUpdateMsg", "deviceCredentialsUpdateMsg"],
                   *[["deviceUpdateMsg"]] * 3, ["deviceCredentialsUpdateMsg"], ["syncCompletedMsg"]]
    assert len(refused) == 4 and refused[0] != refused[1] == refused[2] == refused[3]
    status, parked = http(cloud.admin_port, "GET", "/api/edges/rk-1/downlinks/parked")
    assert status == 200
    assert [(p["downlink_id"], p["kinds"], p["cause"], p["attempts"], p["in_sync"], p["error"])
            for p in parked] == [(refused[1], "deviceUpdateMsg", "refused", 3, True, REFUSAL)]
    # the queue after the sync carries on: the device's own queued downlink
    d = client.downlink()
    assert layout(d) == DEVICE_KINDS.split(",")


def test_unanswered_downlinks_are_resent_and_never_parked_and_a_new_stream_counts_anew(
        cloud, edge, clients):
    cloud.service.create_device(edge[0], "quiet", token="tok-q")
    client = connect(cloud, clients, edge)
    client.sync(False)
    first = client.downlink()
    for _ in range(4):  # more than max_attempts resends without any answer
        assert client.downlink(timeout=3).downlinkMsgId == first.downlinkMsgId
    client.ack(first.downlinkMsgId, success=False, error="busy")
    client.ack(first.downlinkMsgId, success=False, error="busy")  # one sent, one duplicate answer
    client.close()
    # two refusals on the broken stream; a new stream starts counting at 0
    again = connect(cloud, clients, edge)
    again.sync(False)
    for _ in range(2):
        d = again.downlink(timeout=3)
        assert d.downlinkMsgId == first.downlinkMsgId
        again.ack(d.downlinkMsgId, success=False, error="busy")
    d = again.downlink(timeout=3)
    assert d.downlinkMsgId == first.downlinkMsgId  # still queued: 2 refusals on this stream
    again.ack(d.downlinkMsgId)
    assert http(cloud.admin_port, "GET", "/api/edges/rk-1/downlinks/parked")[1] == []


# -- requests ----------------------------------------------------------------------------------------


def test_attribute_relation_and_rule_chain_requests_are_answered_as_thingsboard_does(
        cloud, edge, clients):
    dev, _ = cloud.service.create_device(edge[0], "pump-1", token="tok-pump")
    cloud.service.set_attributes("pump-1", {"target": 42, "mode": "auto", "cfg": {"a": [1]}})
    client = connect(cloud, clients, edge)
    synced = client.sync(True)
    for _ in range(2):  # the device's and its attributes' queued downlinks
        client.ack(client.downlink().downlinkMsgId)
    msb, lsb = uuid_halves(dev.id)
    before = cloud.clock.now_ms()

    def attributes_request(scope: str, entity_type: str = "DEVICE", ids: tuple[int, int] = (msb, lsb)
                           ) -> edge_pb2.AttributesRequestMsg:
        return edge_pb2.AttributesRequestMsg(entityIdMSB=ids[0], entityIdLSB=ids[1],
                                             entityType=entity_type, scope=scope)

    resp = client.uplink(epoch=None, attributesRequestMsg=[attributes_request("SHARED_SCOPE")])
    assert resp.success and resp.errorMsg == ""
    d = client.downlink()
    assert layout(d) == ["entityData"]
    data = d.entityData[0]
    assert (uuid_of(data.entityIdMSB, data.entityIdLSB), data.entityType) == (dev.id, "DEVICE")
    assert data.postAttributeScope == "SHARED_SCOPE" and data.attributesUpdatedMsg.shared
    assert data.attributeTs >= before
    assert {kv.key: (kv.type, kv.long_v, kv.string_v, kv.json_v) for kv in data.attributesUpdatedMsg.kv} == {
        "target": (transport_pb2.LONG_V, 42, "", ""), "mode": (transport_pb2.STRING_V, 0, "auto", ""),
        "cfg": (transport_pb2.JSON_V, 0, "", '{"a":[1]}')}
    assert not data.HasField("postTelemetryMsg") and not data.HasField("postAttributesMsg")
    client.ack(d.downlinkMsgId)

    # nothing to send, nothing sent (as ThingsBoard): another scope, another entity, an unknown
    # device, the edge itself, relations (the cloud keeps none), another rule chain
    tenant_halves = uuid_halves(cloud.store.tenant_id())
    edge_halves = uuid_halves(edge[2])
    nothing = {
        "attributesRequestMsg": [
            attributes_request("SERVER_SCOPE"), attributes_request("CLIENT_SCOPE"),
            attributes_request("SHARED_SCOPE", "TENANT", tenant_halves),
            attributes_request("SERVER_SCOPE", "EDGE", edge_halves),
            attributes_request("SHARED_SCOPE", ids=uuid_halves(uuid.uuid4()))],
        "relationRequestMsg": [edge_pb2.RelationRequestMsg(entityIdMSB=msb, entityIdLSB=lsb,
                                                           entityType="DEVICE")],
        "ruleChainMetadataRequestMsg": [edge_pb2.RuleChainMetadataRequestMsg(
            ruleChainIdMSB=1, ruleChainIdLSB=2)],
    }
    assert client.uplink(epoch=None, **nothing).success
    assert client.nothing_within(0.5)

    # the root rule chain's metadata, as in the sync
    (chain,) = [m for d in synced for m in d.ruleChainUpdateMsg]
    resp = client.uplink(epoch=None, ruleChainMetadataRequestMsg=[edge_pb2.RuleChainMetadataRequestMsg(
        ruleChainIdMSB=chain.idMSB, ruleChainIdLSB=chain.idLSB)])
    assert resp.success
    d = client.downlink()
    assert [d.ruleChainMetadataUpdateMsg[0]] == [m for d in synced for m in d.ruleChainMetadataUpdateMsg]
    client.ack(d.downlinkMsgId)
    m = metrics(cloud)
    assert (m["edge_cloud_uplink_requests_answered_total"],
            m["edge_cloud_request_downlinks_queued_total"]) == (9, 2)
    assert not any(k.startswith("edge_cloud_uplink_not_applied_") for k in m)


# -- uplinks -------------------------------------------------------------------------------------------


def _with_unknown_field(msg: edge_pb2.UplinkMsg, number: int) -> edge_pb2.UplinkMsg:
    """The message plus an empty length-delimited field ``number`` this schema does not declare."""
    tag = (number << 3) | 2
    raw = msg.SerializeToString() + bytes([0x80 | (tag & 0x7F), tag >> 7, 0])
    return edge_pb2.UplinkMsg.FromString(raw)


def test_uplink_kinds_not_applied_are_acknowledged_counted_by_kind_and_logged_once(
        cloud, edge, clients):
    messages: list[dict[str, Any]] = []
    sink = logger.add(lambda m: messages.append(
        {"text": m.record["message"], **m.record["extra"]}), level="INFO")
    client = connect(cloud, clients, edge)
    client.sync(False)
    try:
        for uplink_id in (7_000_001, 12):  # ThingsBoard picks ids at random
            msg = _with_unknown_field(edge_pb2.UplinkMsg(
                uplinkMsgId=uplink_id,
                deviceProfileUpdateMsg=[edge_pb2.DeviceProfileUpdateMsg(entity="{}")] * 2,
                dashboardUpdateMsg=[edge_pb2.DashboardUpdateMsg(entity="{}")],
                entityData=[telemetry(uuid.uuid4(), None)]), 22)
            client.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=msg))
            resp = client.recv().uplinkResponseMsg
            assert (resp.uplinkMsgId, resp.success) == (uplink_id, True)
    finally:
        logger.remove(sink)
    m = metrics(cloud)
    assert {k: v for k, v in m.items() if k.startswith("edge_cloud_uplink_not_applied_")} == {
        'edge_cloud_uplink_not_applied_total{kind="alarmCommentUpdateMsg"}': 2,
        'edge_cloud_uplink_not_applied_total{kind="dashboardUpdateMsg"}': 2,
        'edge_cloud_uplink_not_applied_total{kind="deviceProfileUpdateMsg"}': 4}
    logged = sorted(m["kind"] for m in messages if "not applied by this cloud" in m["text"])
    assert logged == ["alarmCommentUpdateMsg", "dashboardUpdateMsg", "deviceProfileUpdateMsg"]
    assert len(cloud.service.events(edge[0])) == 2  # the telemetry of both, applied


def test_a_thingsboard_edges_uplinks_are_applied_at_least_once(cloud, edge, clients):
    """No edgeSeqId, no uplinkEpoch, random uplinkMsgId, 4.x entity JSON: applied, never
    refused for the missing extensions; a resend is applied again (no dedup possible)."""
    client = connect(cloud, clients, edge)
    client.sync(True)
    dev = uuid.uuid4()
    msb, lsb = uuid_halves(dev)
    tenant = {"entityType": "TENANT", "id": str(cloud.store.tenant_id())}
    device = edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=json.dumps({"id": {"entityType": "DEVICE", "id": str(dev)}, "createdTime": 7,
                           "tenantId": tenant, "customerId": NULL_CUSTOMER, "name": "tb-made",
                           "type": "default", "label": None,
                           "deviceProfileId": {"entityType": "DEVICE_PROFILE", "id": str(uuid.uuid4())},
                           "deviceData": None, "firmwareId": None, "softwareId": None,
                           "externalId": None, "version": 1, "additionalInfo": None}))
    attrs = edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE", postAttributeScope="CLIENT_SCOPE",
        postAttributesMsg=transport_pb2.PostAttributeMsg(kv=[to_kv("fw", "1.2")]))
    for uplink_id in (987_654_321, 5):
        msg = edge_pb2.UplinkMsg(uplinkMsgId=uplink_id, deviceUpdateMsg=[device],
                                 entityData=[telemetry(dev, None, {"t": 21.5}), attrs])
        client.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=msg))
        resp = client.recv().uplinkResponseMsg
        assert (resp.uplinkMsgId, resp.success, resp.HasField("retryable")) == (uplink_id, True, False)
    events = cloud.service.events(edge[0])
    assert [(e.seq, e.action) for e in events] == [
        (None, "TIMESERIES_UPDATED"), (None, "ATTRIBUTES_UPDATED"), (None, "ADDED")] * 2
    stored = cloud.store.device(dev)
    assert stored is not None and stored.name == "tb-made" and stored.origin == "edge"


# -- our edge's temporary failures, a full disk, requests that cannot be answered, a manual sync ----


def refuse(client: LinkClient, downlink_id: int, error: str, *, retryable: bool) -> None:
    client.send(edge_pb2.RequestMsg(
        msgType=edge_pb2.UPLINK_RPC_MESSAGE,
        downlinkResponseMsg=edge_pb2.DownlinkResponseMsg(
            success=False, errorMsg=error, downlinkMsgId=downlink_id, retryable=retryable)))


def test_retryable_refusals_of_our_edge_are_resent_and_never_parked(cloud, edge, clients):
    """Our edge answers retryable=true when its own store fails (a full disk): however many
    times, the downlink is resent, never parked; a refusal without the flag (a ThingsBoard
    Edge) or with retryable=false counts towards parking as before."""
    messages: list[dict[str, Any]] = []
    sink = logger.add(lambda m: messages.append(
        {"text": m.record["message"], **m.record["extra"]}), level="INFO")
    try:
        client = connect(cloud, clients, edge)
        client.sync(False)
        cloud.service.create_device(edge[0], "pump-1", token="tok-1")
        first = client.downlink()
        for _ in range(3 * 2):  # twice max_attempts
            refuse(client, first.downlinkMsgId, "disk full under /data: No space left on device",
                   retryable=True)
            assert client.downlink(timeout=3).downlinkMsgId == first.downlinkMsgId
        # not retryable: counted, two refusals more still leave it queued (max_attempts 3)
        refuse(client, first.downlinkMsgId, "bad content", retryable=False)
        assert client.downlink(timeout=3).downlinkMsgId == first.downlinkMsgId
        client.ack(first.downlinkMsgId, success=False, error="bad content")
        assert client.downlink(timeout=3).downlinkMsgId == first.downlinkMsgId
        client.ack(first.downlinkMsgId)
        assert client.nothing_within(0.5)
    finally:
        logger.remove(sink)
    assert http(cloud.admin_port, "GET", "/api/edges/rk-1/downlinks/parked")[1] == []
    assert cloud.store.queued_downlinks(edge[2]) == 0
    m = metrics(cloud)
    assert (m['edge_cloud_downlinks_total{outcome="refused"}'],
            m['edge_cloud_downlinks_total{outcome="parked"}']) == (8, 0)
    retryable = [x for x in messages if x["text"].startswith("downlink refused by the edge, retryable")]
    assert len(retryable) == 6 and retryable[0]["error"].startswith("disk full")
    (stream,) = [e["stream"] for e in http(cloud.admin_port, "GET", "/api/status")[1]["edges"]]
    assert (stream["downlinks_refused"], stream["downlinks_refused_retryable"]) == (8, 6)


def test_with_the_disk_full_an_edge_still_connects_syncs_and_acknowledgements_free_room(
        cloud, edge, clients):
    """The store's disk-full state refuses new data, not what a stream needs: the incarnation
    of a new edge store, the ids of the cloud's own entities, a sync's downlink numbers, and the
    removal of downlinks, superseded by the sync or acknowledged (which frees room)."""
    cloud.service.create_device(edge[0], "pump-1", type_="meter", token="tok-1")
    cloud.service.set_attributes("pump-1", {"target": 42})
    cloud.store.lmdb._disk_full = True  # what a write that hit ENOSPC leaves behind
    cloud.store.lmdb._disk_full_reason = "No space left on device"
    with pytest.raises(QueueFull):
        cloud.service.create_device(edge[0], "pump-2")
    client = LinkClient(cloud.port)
    clients.append(client)
    assert client.connect(edge[0], edge[1], store_id="store-new").responseCode == edge_pb2.ACCEPTED
    got = client.sync(True)  # its downlink numbers reserved: a maintenance write
    assert [layout(d) for d in got] == [
        *SYNC_HEAD[:3], ["deviceProfileUpdateMsg"] * 2 + ["assetProfileUpdateMsg"],
        ["deviceUpdateMsg", "deviceCredentialsUpdateMsg"], ["entityData"], ["syncCompletedMsg"]]
    # the durable queue after the sync: the device's creation dropped at its end, the
    # attributes sent, then acknowledged and removed
    d = client.downlink()
    assert layout(d) == ["entityData"]
    assert cloud.store.queued_downlinks(edge[2]) == 1
    client.ack(d.downlinkMsgId)
    wait_until(lambda: cloud.store.queued_downlinks(edge[2]) == 0, timeout=DEADLINE_S,
               what="the acknowledged downlink removed on a full disk")
    assert cloud.store.edge_stores(edge[2])[0][1] == "store-new"
    assert client.nothing_within(0.3)  # the stream is alive: not aborted as UNAVAILABLE


def test_an_uplink_whose_requests_cannot_be_answered_is_acknowledged_and_applied_once(
        cloud, edge, clients, monkeypatch):
    """Requests are best effort: when queueing their answers fails after the uplink's payloads
    were applied, the uplink is still answered success (a failure would make a ThingsBoard Edge
    resend it and its telemetry be applied twice), and the failure is logged."""
    dev, _ = cloud.service.create_device(edge[0], "pump-1", token="tok-1")
    cloud.service.set_attributes("pump-1", {"target": 42})
    client = connect(cloud, clients, edge)
    client.sync(False)
    for _ in range(2):
        client.ack(client.downlink().downlinkMsgId)

    def failing(*args: Any, **kwargs: Any) -> Any:
        raise StorageError("write failed: disk I/O error")

    monkeypatch.setattr(cloud.store, "enqueue_downlinks", failing)
    messages: list[dict[str, Any]] = []
    sink = logger.add(lambda m: messages.append(
        {"text": m.record["message"], **m.record["extra"]}), level="INFO")
    msb, lsb = uuid_halves(dev.id)
    try:
        resp = client.uplink(epoch=None, entityData=[telemetry(dev.id, None, {"t": 1})],
                             attributesRequestMsg=[edge_pb2.AttributesRequestMsg(
                                 entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
                                 scope="SHARED_SCOPE")])
    finally:
        logger.remove(sink)
    assert (resp.success, resp.errorMsg) == (True, "")
    assert [e.action for e in cloud.service.events(edge[0])] == ["TIMESERIES_UPDATED"]
    (logged,) = [x for x in messages if x["text"].startswith("requests of an uplink not answered")]
    assert logged["text"].endswith("write failed: disk I/O error")
    assert client.nothing_within(0.3)


def test_an_operator_sync_resends_the_full_sync_on_the_edges_stream(cloud, edge, clients, tmp_path):
    """POST /api/edges/{edge}/sync (and `edge-cloud edge sync`): what a refused sync downlink
    carried is sent again once the cause is fixed, on the connected stream; 409 when the edge
    is not connected."""
    cloud.service.create_device(edge[0], "pump-1", token="tok-1")
    client = connect(cloud, clients, edge)
    request_sync(client, True)
    while True:  # the device refused until parked, the rest acknowledged
        d = client.downlink(timeout=3)
        if d.deviceUpdateMsg:
            client.ack(d.downlinkMsgId, success=False, error=REFUSAL)
            continue
        client.ack(d.downlinkMsgId)
        if d.HasField("syncCompletedMsg"):
            break
    assert len(http(cloud.admin_port, "GET", "/api/edges/rk-1/downlinks/parked")[1]) == 1
    d = client.downlink()  # the device's queued downlink
    assert layout(d) == DEVICE_KINDS.split(",")
    client.ack(d.downlinkMsgId)
    # its acknowledgement taken before the operator's sync is asked: nothing left in flight to
    # be resent among the sync's downlinks
    wait_until(lambda: cloud.store.queued_downlinks(edge[2]) == 0, timeout=DEADLINE_S,
               what="the device's queued downlink acknowledged")

    status, out = http(cloud.admin_port, "POST", "/api/edges/rk-1/sync")
    assert (status, out) == (202, {"edge_id": str(edge[2]), "routing_key": "rk-1",
                                   "sync": "requested"})
    again = []
    while not again or not again[-1].HasField("syncCompletedMsg"):
        d = client.downlink()
        again.append(d)
        client.ack(d.downlinkMsgId)
    assert [layout(d) for d in again] == [
        *SYNC_HEAD, ["deviceUpdateMsg", "deviceCredentialsUpdateMsg"], ["syncCompletedMsg"]]
    assert [json.loads(d.deviceUpdateMsg[0].entity)["name"] for d in again if d.deviceUpdateMsg] == [
        "pump-1"]

    env = env_for(cloud.store.path, cloud.admin_port)
    proc = subprocess.run([sys.executable, "-m", "edge_sync.cli.cloud", "edge", "sync", "--edge",
                           str(edge[2])], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"full sync of edge rk-1 ({edge[2]}) requested\n"
    assert layout(client.downlink()) == ["tenantUpdateMsg"]

    assert http(cloud.admin_port, "POST", "/api/edges/nope/sync")[0] == 404
    assert http(cloud.admin_port, "POST", "/api/edges/rk-1/sync", {"full": True})[0] == 400
    client.close()
    wait_until(lambda: not cloud.registry.is_connected(edge[2]), timeout=DEADLINE_S,
               what="the edge's stream gone")
    status, out = http(cloud.admin_port, "POST", "/api/edges/rk-1/sync", {})
    assert status == 409 and "not connected" in out["message"]
    proc = subprocess.run([sys.executable, "-m", "edge_sync.cli.cloud", "edge", "sync", "--edge",
                           "rk-1"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 6 and "not connected" in proc.stderr
