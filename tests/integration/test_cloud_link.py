"""The reference cloud over real gRPC on loopback, with its LMDB store in tmp_path: connect,
sync, uplinks (dedup, go-back-N), downlinks (order, resend), stream replacement, admin API."""

from __future__ import annotations

import dataclasses
import json
import queue
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from loguru import logger

from edge_sync.cloud import CloudServer
from edge_sync.cloud.session import LinkSettings
from edge_sync.common.wire import to_kv, uuid_halves, uuid_of
from edge_sync.config import AdminConfig, CloudConfig, CloudStorageConfig, DownlinkConfig, EdgesRpcConfig
from edge_sync.proto import edge_pb2, edge_pb2_grpc, transport_pb2
from tests.helpers.link_client import DEADLINE_S, LinkClient, credentials, device_added, telemetry
from tests.helpers.tls import make_pki
from tests.helpers.wait import wait_until


def cloud_config(data_dir: Path, *, resend_ms: int = 10_000) -> CloudConfig:
    return CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0),
        storage=CloudStorageConfig(data_dir=data_dir),
        downlink=DownlinkConfig(resend_timeout_ms=resend_ms),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


def http(port: int, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=DEADLINE_S) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    server = CloudServer(cloud_config(tmp_path / "cloud", resend_ms=400)).start()
    yield server
    server.stop()


@pytest.fixture
def edge(cloud: CloudServer) -> tuple[str, str, uuid.UUID]:
    record, secret, _ = cloud.service.create_edge("edge-1", routing_key="rk-1", secret="s3cret-1")
    return record.routing_key, secret, record.edge_id


@pytest.fixture
def clients(cloud: CloudServer) -> Iterator[list[LinkClient]]:
    made: list[LinkClient] = []
    yield made
    for c in made:
        c.close()


def connected(cloud: CloudServer, clients: list[LinkClient], edge: tuple[str, str, uuid.UUID],
              *, gzip: bool = False, full: bool = False) -> LinkClient:
    client = LinkClient(cloud.port, gzip=gzip)
    clients.append(client)
    assert client.connect(edge[0], edge[1]).responseCode == edge_pb2.ACCEPTED
    client.sync(full)
    return client


def seqs(cloud: CloudServer, routing_key: str) -> list[int | None]:
    return [e.seq for e in cloud.service.events(routing_key)]


# -- connect ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("routing_key,secret", [("rk-1", "wrong"), ("unknown", "s3cret-1"), ("", "")])
def test_bad_credentials_are_refused_and_the_stream_ends(cloud, edge, clients, routing_key, secret):
    client = LinkClient(cloud.port)
    clients.append(client)
    resp = client.connect(routing_key, secret)
    assert resp.responseCode == edge_pb2.BAD_CREDENTIALS
    assert resp.errorMsg
    assert not resp.HasField("configuration")
    assert client.ended() == grpc.StatusCode.OK


def test_messages_before_connect_are_ignored_then_connect_is_accepted(cloud, edge, clients):
    client = LinkClient(cloud.port)
    clients.append(client)
    client.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                    syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=True)))
    client.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE,
                                    uplinkMsg=edge_pb2.UplinkMsg(uplinkMsgId=1)))
    resp = client.connect(edge[0], edge[1])
    assert resp.responseCode == edge_pb2.ACCEPTED
    assert client.nothing_within(0.2)


def test_a_stream_without_connect_request_is_closed(tmp_path):
    cfg = cloud_config(tmp_path / "c")
    link = LinkSettings(connect_timeout_s=0.3)
    with CloudServer(cfg, link=link) as server:
        client = LinkClient(server.port)
        try:
            assert client.ended() == grpc.StatusCode.OK
        finally:
            client.close()


def test_connect_returns_configuration_and_capabilities(cloud, edge, clients):
    client = LinkClient(cloud.port)
    clients.append(client)
    before = int(time.time() * 1000)
    resp = client.connect(edge[0], edge[1])
    assert resp.responseCode == edge_pb2.ACCEPTED
    conf = resp.configuration
    assert uuid_of(conf.edgeIdMSB, conf.edgeIdLSB) == edge[2]
    assert uuid_of(conf.tenantIdMSB, conf.tenantIdLSB) == cloud.store.tenant_id()
    assert (edge[2].version, cloud.store.tenant_id().version) == (1, 1)
    assert str(uuid_of(conf.customerIdMSB, conf.customerIdLSB)) == "13814000-1dd2-11b2-8080-808080808080"
    assert (conf.name, conf.type, conf.routingKey, conf.secret, conf.cloudType) == (
        "edge-1", "default", "rk-1", "s3cret-1", "CE")
    assert resp.maxInboundMessageSize == 4 * 1024 * 1024
    caps = resp.cloudCapabilities
    assert caps.orderedApply and caps.dedupBySeq
    assert caps.serverTimeMillis >= before


# -- sync ------------------------------------------------------------------------------------------


def layout(d: edge_pb2.DownlinkMsg) -> list[str]:
    """The entries of a downlink: each list's field name once per entry, in field-number
    order (a packed downlink carries many)."""
    return [f.name for f, v in d.ListFields() if f.name not in ("downlinkMsgId", "cloudTimeMillis")
            for _ in (v if f.is_repeated else [v])]


SYNC_HEAD = [["tenantUpdateMsg"], ["queueUpdateMsg"] * 3,
             ["ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg"],
             ["deviceProfileUpdateMsg", "assetProfileUpdateMsg"]]
"""A full sync's packs before the devices: kinds share a pack only where a ThingsBoard Edge's
apply order agrees with the sync's (downlink_batch.THINGSBOARD_APPLY_ORDER)."""


def test_full_sync_packs_profiles_then_devices_with_credentials_then_attributes_then_sync_completed(
        cloud, edge, clients):
    dev, _ = cloud.service.create_device(edge[0], "pump-1", token="tok-pump-1")
    cloud.service.set_attributes("pump-1", {"target": 42, "mode": "auto"})
    # queued downlinks from before the connection follow the sync (an edge without edgeStoreId,
    # like a ThingsBoard Edge: the sync drops none of them)
    client = LinkClient(cloud.port)
    clients.append(client)
    assert client.connect(edge[0], edge[1]).responseCode == edge_pb2.ACCEPTED
    got = client.sync(True)
    # the device's profile travels before it (with the asset profile), not in its message
    assert [layout(d) for d in got] == [
        *SYNC_HEAD, ["deviceUpdateMsg", "deviceCredentialsUpdateMsg"], ["entityData"],
        ["syncCompletedMsg"]]
    profile = json.loads(got[3].deviceProfileUpdateMsg[0].entity)
    device_msg, attrs, done = got[-3:]
    upd = device_msg.deviceUpdateMsg[0]
    assert upd.msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
    assert uuid_of(upd.idMSB, upd.idLSB) == dev.id
    body = json.loads(upd.entity)
    assert body["id"] == {"entityType": "DEVICE", "id": str(dev.id)} and body["name"] == "pump-1"
    assert body["deviceProfileId"] == profile["id"] and profile["name"] == body["type"]
    cred = json.loads(device_msg.deviceCredentialsUpdateMsg[0].entity)
    assert cred == {"deviceId": {"entityType": "DEVICE", "id": str(dev.id)},
                    "credentialsType": "ACCESS_TOKEN", "credentialsId": "tok-pump-1"}
    data = attrs.entityData[0]
    assert data.postAttributeScope == "SHARED_SCOPE" and data.entityType == "DEVICE"
    assert {kv.key: kv for kv in data.attributesUpdatedMsg.kv}["target"].long_v == 42
    assert done.HasField("syncCompletedMsg")
    ids = [d.downlinkMsgId for d in got]
    assert ids == sorted(ids) and len(set(ids)) == len(got) and min(ids) > 0
    assert all(d.cloudTimeMillis > 0 for d in got)
    # then the durable queue: the device's downlink (with its profile) and the attributes, in
    # order
    queued = []
    for _ in range(2):
        d = client.downlink()
        queued.append(d)
        client.ack(d.downlinkMsgId)
    assert [layout(d) for d in queued] == [
        ["deviceUpdateMsg", "deviceProfileUpdateMsg", "deviceCredentialsUpdateMsg"], ["entityData"]]
    assert client.nothing_within(0.3)
    assert cloud.store.queued_downlinks(edge[2]) == 0


def test_sync_without_full_sends_only_sync_completed(cloud, edge, clients):
    cloud.service.create_device(edge[0], "pump-1")
    client = connected(cloud, clients, edge, full=False)
    first = client.downlink()
    assert first.deviceUpdateMsg  # the queue, after syncCompletedMsg
    assert cloud.store.queued_downlinks(edge[2]) == 1


# -- uplink ----------------------------------------------------------------------------------------


def test_uplink_applied_once_even_when_resent_or_replayed(cloud, edge, clients):
    client = connected(cloud, clients, edge, gzip=True)
    dev = uuid.uuid4()
    first = [device_added(dev, "sensor-1", 1)]
    data = [telemetry(dev, s, {"t": s, "ok": True, "doc": {"a": [1, 2]}}) for s in (4, 2, 3)]
    assert client.uplink(deviceUpdateMsg=first, entityData=data).success
    assert client.uplink(deviceUpdateMsg=first, entityData=data).success  # a retry
    assert seqs(cloud, edge[0]) == [1, 2, 3, 4]  # applied in seq order, once
    client.close()
    again = connected(cloud, clients, edge)
    more = [telemetry(dev, s) for s in (3, 4, 5)]
    assert again.uplink(epoch=3, entityData=more).success  # a replay after a reconnect
    events = cloud.service.events(edge[0])
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]
    assert [e.apply_index for e in events] == [1, 2, 3, 4, 5]
    assert events[1].action == "TIMESERIES_UPDATED" and events[1].entity_id == dev
    assert events[1].body == {"ts": 1_700_000_000_000, "values": {"t": 2, "ok": True, "doc": {"a": [1, 2]}}}
    assert events[0].action == "ADDED" and events[0].body["name"] == "sensor-1"


def test_dedup_is_per_edge_store_a_new_store_restarts_seqs(cloud, edge, clients):
    """A store created anew (new edgeStoreId) restarts seqs at 1: its events are applied, not
    taken for old ones; a resend under a store id already seen is still deduplicated."""
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="INFO")
    dev = uuid.uuid4()
    try:
        for store_id in ("store-a", "store-b", "store-a"):
            client = LinkClient(cloud.port)
            clients.append(client)
            assert client.connect(edge[0], edge[1], store_id=store_id).responseCode == edge_pb2.ACCEPTED
            client.sync(False)
            assert client.uplink(entityData=[telemetry(dev, s, {"store": store_id}) for s in (1, 2, 3)]
                                 ).success
            assert client.uplink(epoch=1, entityData=[telemetry(dev, 3)]).success  # a resend
            client.close()
    finally:
        logger.remove(sink)
    events = cloud.service.events(edge[0])
    assert [(e.apply_index, e.store_id, e.seq) for e in events] == [
        (1, "store-a", 1), (2, "store-a", 2), (3, "store-a", 3),
        (4, "store-b", 1), (5, "store-b", 2), (6, "store-b", 3)]
    assert [e.body["values"]["store"] for e in events] == ["store-a"] * 3 + ["store-b"] * 3
    assert [(n, sid) for n, sid, _ in cloud.store.edge_stores(edge[2])] == [(1, "store-a"), (2, "store-b")]
    new_store = [m for m in messages if "connected with a new store" in m]
    assert len(new_store) == 2 and "store-b" in new_store[1] and "seqs restart" in new_store[1]
    # a connect without edgeStoreId (a ThingsBoard or older edge) is a store of its own
    plain = LinkClient(cloud.port)
    clients.append(plain)
    assert plain.connect(edge[0], edge[1]).responseCode == edge_pb2.ACCEPTED
    plain.sync(False)
    assert plain.uplink(entityData=[telemetry(dev, 1)]).success
    assert plain.uplink(entityData=[telemetry(dev, 1)]).success
    status, listed = http(cloud.admin_port, "GET", f"/api/events?edge={edge[0]}&after=5")
    assert status == 200
    assert [(e["apply_index"], e["store_id"], e["seq"]) for e in listed] == [(6, "store-b", 3), (7, None, 1)]


def test_payloads_without_seq_are_applied_without_dedup(cloud, edge, clients):
    client = connected(cloud, clients, edge)
    dev = uuid.uuid4()
    for _ in range(2):
        assert client.uplink(epoch=None, entityData=[telemetry(dev, None, {"x": 1})]).success
    assert seqs(cloud, edge[0]) == [None, None]


def test_invalid_payload_rejects_the_message_then_go_back_n(cloud, edge, clients):
    client = connected(cloud, clients, edge)
    dev = uuid.uuid4()
    assert client.uplink(entityData=[telemetry(dev, 1), telemetry(dev, 2)]).success
    bad = client.uplink(entityData=[telemetry(dev, 3), telemetry(dev, 4, values={})])
    assert not bad.success and bad.HasField("rejectedEdgeSeqId")
    assert bad.rejectedEdgeSeqId == 4 and bad.retryable is False
    assert "edgeSeqId 4" in bad.errorMsg and "key/value" in bad.errorMsg
    refused = client.uplink(entityData=[telemetry(dev, 5)])
    assert not refused.success and refused.retryable is True
    assert "go-back-N" in refused.errorMsg and not refused.HasField("rejectedEdgeSeqId")
    assert seqs(cloud, edge[0]) == [1, 2]
    assert client.uplink(epoch=1, entityData=[telemetry(dev, 3), telemetry(dev, 5)]).success
    assert seqs(cloud, edge[0]) == [1, 2, 3, 5]
    # a device JSON whose id differs from idMSB/LSB fails epoch 1 in turn
    bad = client.uplink(epoch=1, deviceUpdateMsg=[device_added(dev, "d", 6, json_id=uuid.uuid4())])
    assert (bad.success, bad.rejectedEdgeSeqId, bad.retryable) == (False, 6, False)
    assert "differs" in bad.errorMsg
    assert not client.uplink(epoch=0, entityData=[telemetry(dev, 7)]).success  # an older epoch
    assert client.uplink(epoch=2, entityData=[telemetry(dev, 7)]).success
    assert seqs(cloud, edge[0]) == [1, 2, 3, 5, 7]


@pytest.mark.parametrize("payload,needle", [
    ({"entityData": [edge_pb2.EntityDataProto(entityType="DEVICE", entityIdMSB=1, entityIdLSB=2,
                                              edgeSeqId=9)]}, "carries no telemetry"),
    ({"entityData": [edge_pb2.EntityDataProto(
        entityType="WIDGET", entityIdMSB=1, entityIdLSB=2, edgeSeqId=9,
        postTelemetryMsg=transport_pb2.PostTelemetryMsg(
            tsKvList=[transport_pb2.TsKvListProto(ts=1, kv=[to_kv("a", 1)])]))]},
     "unknown entityType"),
    ({"entityData": [telemetry(uuid.UUID(int=0), 9)]}, "nil"),
    ({"entityData": [telemetry(uuid.uuid4(), 9, ts=0)]}, "not positive"),
    ({"deviceCredentialsUpdateMsg": [edge_pb2.DeviceCredentialsUpdateMsg(entity="{", edgeSeqId=9)]},
     "not JSON"),
])
def test_malformed_payloads_are_named(cloud, edge, clients, payload, needle):
    client = connected(cloud, clients, edge)
    resp = client.uplink(**payload)
    assert (resp.success, resp.rejectedEdgeSeqId, resp.retryable) == (False, 9, False)
    assert needle in resp.errorMsg
    assert seqs(cloud, edge[0]) == []


def test_devices_created_by_the_edge_are_recorded_and_targetable(cloud, edge, clients):
    client = connected(cloud, clients, edge)
    dev = uuid.uuid4()
    assert client.uplink(deviceUpdateMsg=[device_added(dev, "edge-made", 1)],
                         deviceCredentialsUpdateMsg=[credentials(dev, "tok-edge", 2)]).success
    stored = cloud.store.device(dev)
    assert stored is not None and stored.name == "edge-made" and stored.edge_id == edge[2]
    assert stored.token == "tok-edge" and stored.origin == "edge"
    status, out = http(cloud.admin_port, "POST", "/api/attributes",
                       {"device": "edge-made", "values": {"setpoint": 21.5}})
    assert status == 200 and out["device"] == str(dev)
    d = client.downlink()
    data = d.entityData[0]
    assert uuid_of(data.entityIdMSB, data.entityIdLSB) == dev
    assert data.postAttributeScope == "SHARED_SCOPE" and data.attributesUpdatedMsg.shared
    assert data.attributesUpdatedMsg.kv[0].double_v == 21.5
    client.ack(d.downlinkMsgId)
    # a full sync on a later connection includes it, with its token and shared attributes
    later = LinkClient(cloud.port)
    clients.append(later)
    assert later.connect(edge[0], edge[1]).responseCode == edge_pb2.ACCEPTED
    *_, created, attrs, done = later.sync(True)
    assert json.loads(created.deviceUpdateMsg[0].entity)["name"] == "edge-made"
    assert json.loads(created.deviceCredentialsUpdateMsg[0].entity)["credentialsId"] == "tok-edge"
    assert attrs.entityData[0].attributesUpdatedMsg.kv[0].key == "setpoint"
    assert done.HasField("syncCompletedMsg")
    assert later.nothing_within(0.3)  # the attribute downlink was acknowledged before
    assert cloud.store.shared_attributes(dev) == {"setpoint": 21.5}
    # deleted by the edge: gone from the cloud's device table too
    msb, lsb = uuid_halves(dev)
    gone = edge_pb2.DeviceUpdateMsg(msgType=edge_pb2.ENTITY_DELETED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
                                    edgeSeqId=3)
    assert later.uplink(deviceUpdateMsg=[gone]).success
    assert cloud.store.device(dev) is None and cloud.store.devices_named("edge-made") == []


# -- downlink --------------------------------------------------------------------------------------


def test_downlinks_in_order_one_in_flight_resent_until_acknowledged(cloud, edge, clients):
    client = connected(cloud, clients, edge)
    dev, _ = cloud.service.create_device(edge[0], "pump-1", token="tok-1")
    cloud.service.set_attributes("pump-1", {"target": 1})
    first = client.downlink()
    assert first.deviceUpdateMsg
    # not acknowledged: nothing else is sent, then the same downlink comes again
    started = time.monotonic()
    again = client.downlink(timeout=3)
    assert time.monotonic() - started >= 0.3
    assert again.downlinkMsgId == first.downlinkMsgId and again.deviceUpdateMsg == first.deviceUpdateMsg
    client.ack(first.downlinkMsgId, success=False, error="busy")  # a failure: resent after the timeout
    third = client.downlink(timeout=3)
    assert third.downlinkMsgId == first.downlinkMsgId
    client.ack(999_999)  # not the one in flight: ignored
    client.ack(first.downlinkMsgId)
    second = client.downlink()
    assert second.entityData and second.downlinkMsgId > first.downlinkMsgId
    assert cloud.store.queued_downlinks(edge[2]) == 1
    client.ack(second.downlinkMsgId)
    assert client.nothing_within(0.6)  # no resend once acknowledged
    assert cloud.store.queued_downlinks(edge[2]) == 0
    assert dev.id == uuid_of(first.deviceUpdateMsg[0].idMSB, first.deviceUpdateMsg[0].idLSB)


def test_downlinks_survive_a_restart_of_the_cloud(tmp_path):
    cfg = cloud_config(tmp_path / "cloud")
    server = CloudServer(cfg).start()
    edge, secret, _ = server.service.create_edge("e")
    server.service.create_device(edge.routing_key, "d1")
    server.stop()
    server = CloudServer(cfg).start()
    client = LinkClient(server.port)
    try:
        assert client.connect(edge.routing_key, secret).responseCode == edge_pb2.ACCEPTED
        client.sync(False)
        assert client.downlink().deviceUpdateMsg[0].entity
    finally:
        client.close()
        server.stop()


# -- streams ---------------------------------------------------------------------------------------


def test_a_new_stream_for_the_edge_replaces_the_old_one(cloud, edge, clients):
    old = connected(cloud, clients, edge)
    new = LinkClient(cloud.port)
    clients.append(new)
    assert new.connect(edge[0], edge[1]).responseCode == edge_pb2.ACCEPTED
    assert old.ended() == grpc.StatusCode.CANCELLED
    new.sync(False)
    assert new.uplink(entityData=[telemetry(uuid.uuid4(), 1)]).success
    def one_stream() -> dict[str, Any] | None:
        status, out = http(cloud.admin_port, "GET", "/api/status")
        assert status == 200, out
        return out if out["rpc"]["streams"] == 1 else None

    # the old stream's handler finishes on gRPC's thread, maybe a moment later
    out = wait_until(one_stream, timeout=DEADLINE_S, what="one stream left in the cloud's status",
                     show=lambda: http(cloud.admin_port, "GET", "/api/status")[1]["rpc"])
    assert [e["connected"] for e in out["edges"]] == [True]
    assert out["edges"][0]["stream"]["events_applied"] == 1


def test_two_edges_stream_at_once(cloud, edge, clients):
    other, secret, _ = cloud.service.create_edge("edge-2")
    a = connected(cloud, clients, edge)
    b = connected(cloud, clients, (other.routing_key, secret, other.edge_id))
    dev = uuid.uuid4()
    assert a.uplink(entityData=[telemetry(dev, 1)]).success
    assert b.uplink(entityData=[telemetry(dev, 1)]).success  # same seq, other edge: applied
    assert seqs(cloud, edge[0]) == [1] and seqs(cloud, other.routing_key) == [1]


def test_keepalive_pings_of_an_idle_edge_are_admitted(cloud, edge):
    """Pings every 1.2 s on an idle stream: the default policy (1 s) admits them, where gRPC's
    default (5 min) would answer GOAWAY too_many_pings after a few."""
    channel = grpc.insecure_channel(f"127.0.0.1:{cloud.port}", options=[
        ("grpc.keepalive_time_ms", 1200), ("grpc.keepalive_timeout_ms", 1000),
        ("grpc.keepalive_permit_without_calls", 1), ("grpc.http2.max_pings_without_data", 0)])
    out: queue.Queue[edge_pb2.RequestMsg | None] = queue.Queue()
    call = edge_pb2_grpc.EdgeRpcServiceStub(channel).handleMsgs(iter(out.get, None))
    try:
        out.put(edge_pb2.RequestMsg(connectRequestMsg=edge_pb2.ConnectRequestMsg(
            edgeRoutingKey=edge[0], edgeSecret=edge[1])))
        assert next(call).connectResponseMsg.responseCode == edge_pb2.ACCEPTED
        # The behaviour under test: the stream stays idle for 4 s (three pings at 1.2 s), and
        # a fixed wait is what "idle" means; then the stream must still carry an uplink.
        time.sleep(4.0)
        out.put(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=edge_pb2.UplinkMsg(
            uplinkMsgId=1, entityData=[telemetry(uuid.uuid4(), 1)])))
        assert next(call).uplinkResponseMsg.success
    finally:
        out.put(None)
        channel.close()


def test_tls(tmp_path):
    pki = make_pki(tmp_path / "pki")
    base = cloud_config(tmp_path / "c")
    cfg = dataclasses.replace(base, rpc=dataclasses.replace(
        base.rpc, ssl_enabled=True, ssl_cert=pki.server_cert, ssl_key=pki.server_key))
    with CloudServer(cfg) as server:
        edge, secret, _ = server.service.create_edge("e")
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca_cert.read_bytes())
        channel = grpc.secure_channel(f"localhost:{server.port}", creds)
        stub = edge_pb2_grpc.EdgeRpcServiceStub(channel)
        request = edge_pb2.RequestMsg(
            msgType=edge_pb2.CONNECT_RPC_MESSAGE,
            connectRequestMsg=edge_pb2.ConnectRequestMsg(edgeRoutingKey=edge.routing_key,
                                                         edgeSecret=secret))
        call = stub.handleMsgs(iter([request]), timeout=DEADLINE_S)
        assert next(call).connectResponseMsg.responseCode == edge_pb2.ACCEPTED
        call.cancel()
        channel.close()


def test_stop_ends_connected_streams(tmp_path):
    server = CloudServer(cloud_config(tmp_path / "c")).start()
    edge, secret, _ = server.service.create_edge("e")
    client = LinkClient(server.port)
    try:
        assert client.connect(edge.routing_key, secret).responseCode == edge_pb2.ACCEPTED
        started = time.monotonic()
        server.stop()
        assert time.monotonic() - started < 5
        # StreamSession.end cancels the RPC before the handler returns: CANCELLED, not a clean end
        assert client.ended() == grpc.StatusCode.CANCELLED
    finally:
        client.close()


# -- admin API -------------------------------------------------------------------------------------


def test_admin_api_creates_devices_sets_attributes_and_lists_events(cloud, edge, clients):
    client = connected(cloud, clients, edge)
    port = cloud.admin_port
    status, dev = http(port, "POST", "/api/devices", {"edge": "rk-1", "name": "fan", "token": "tok-fan"})
    assert status == 201 and dev["token"] == "tok-fan" and len(dev["downlinks"]) == 1
    d1 = client.downlink()
    assert json.loads(d1.deviceUpdateMsg[0].entity)["name"] == "fan"
    assert json.loads(d1.deviceCredentialsUpdateMsg[0].entity)["credentialsId"] == "tok-fan"
    client.ack(d1.downlinkMsgId)
    status, out = http(port, "POST", "/api/attributes", {"device": dev["id"], "key": "on", "value": True})
    assert status == 200 and out["values"] == {"on": True}
    d3 = client.downlink()
    assert d3.entityData[0].attributesUpdatedMsg.kv[0].bool_v is True
    client.ack(d3.downlinkMsgId)

    assert http(port, "POST", "/api/devices", {"edge": "rk-1", "name": "fan"})[0] == 409
    assert http(port, "POST", "/api/devices", {"edge": "nope", "name": "x"})[0] == 404
    assert http(port, "POST", "/api/devices", {"edge": "rk-1", "name": "y", "token": "tok-fan"})[0] == 409
    assert http(port, "POST", "/api/devices", {"edge": "rk-1", "name": "y", "color": 1})[0] == 400
    assert http(port, "POST", "/api/attributes", {"device": "nope", "values": {"a": 1}})[0] == 404
    assert http(port, "POST", "/api/attributes", {"device": "fan", "values": {"a": None}})[0] == 400
    assert http(port, "POST", "/api/attributes", {"device": "fan", "values": {}})[0] == 400

    dev_id = uuid.uuid4()
    for s in range(1, 6):
        assert client.uplink(entityData=[telemetry(dev_id, s)]).success
    status, events = http(port, "GET", "/api/events?edge=rk-1&after=2&limit=2")
    assert status == 200 and [e["seq"] for e in events] == [3, 4]
    assert set(events[0]) == {"apply_index", "seq", "entity_type", "entity_id", "action", "body",
                              "ts", "applied_at", "store_id"}
    assert http(port, "GET", "/api/events?edge=nope")[0] == 404
    assert http(port, "GET", "/api/events?edge=rk-1&limit=0")[0] == 400

    status, made = http(port, "POST", "/api/edges", {"name": "edge-2"})
    assert status == 201 and made["secret"] and made["routing_key"]
    again = {"name": "edge-2", "routing_key": made["routing_key"], "secret": made["secret"]}
    assert http(port, "POST", "/api/edges", again)[0] == 200
    assert http(port, "POST", "/api/edges", {**again, "secret": "other"})[0] == 409
    status, edges = http(port, "GET", "/api/edges")
    assert sorted(e["name"] for e in edges) == ["edge-1", "edge-2"]
    assert all("secret" not in e for e in edges)
