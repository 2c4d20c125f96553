"""The entity graph over real gRPC streams of the reference cloud (scripted edges, port 0): a
full sync of 10,000 entities at more than 2,000 entities a second (packed: one downlink in flight,
about a hundred entities each), graph changes reaching a connected edge at once, and an edge's
change reaching another connected edge that holds the entity."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from edge_sync.cloud import CloudServer
from edge_sync.common.wire import uuid_halves
from edge_sync.config import (
    AdminConfig,
    CloudConfig,
    CloudStorageConfig,
    DownlinkConfig,
    EdgesRpcConfig,
)
from edge_sync.proto import edge_pb2
from tests.helpers.link_client import LinkClient

NOW = 1_764_921_600_000
ENTITIES = 10_000
MIN_RATE = 2_000  # entities a second, end to end (the cloud's side; the edge acknowledges at once)


def cloud_config(data_dir: Path) -> CloudConfig:
    return CloudConfig(
        rpc=EdgesRpcConfig(host="127.0.0.1", port=0),
        storage=CloudStorageConfig(data_dir=data_dir),
        downlink=DownlinkConfig(resend_timeout_ms=10_000),
        admin=AdminConfig(host="127.0.0.1", port=0),
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CloudServer]:
    with CloudServer(cloud_config(tmp_path / "c")) as s:
        for i in (1, 2):
            s.service.create_edge(f"edge-{i}", routing_key=f"rk-{i}", secret="s3cret")
        yield s


@pytest.fixture
def clients() -> Iterator[list[LinkClient]]:
    made: list[LinkClient] = []
    yield made
    for c in made:
        c.close()


def connected(server: CloudServer, clients: list[LinkClient], rk: str) -> LinkClient:
    client = LinkClient(server.port)
    clients.append(client)
    assert client.connect(rk, "s3cret", store_id=f"store-{rk}").responseCode == edge_pb2.ACCEPTED
    return client


def entries(msg: edge_pb2.DownlinkMsg) -> int:
    return sum(len(v) if fd.is_repeated else 1 for fd, v in msg.ListFields()
               if fd.name not in ("downlinkMsgId", "cloudTimeMillis"))


def test_a_full_sync_of_ten_thousand_entities_is_packed_and_fast(server, clients):
    edge = server.service.edge("rk-1")
    graph = server.service.graph
    for start in range(0, ENTITIES, 1_000):
        graph.create_entities([("ASSET", {"name": f"asset-{i}", "label": "x" * 200})
                               for i in range(start, start + 1_000)],
                              now_ms=NOW, edge_id=edge.edge_id)
    queued = server.store.queued_after(edge.edge_id, 0, 2 * ENTITIES)
    assert len(queued) == ENTITIES  # each assignment queued its ADDED
    server.store.remove_downlinks(edge.edge_id, [q.number for q in queued])  # the sync alone
    client = connected(server, clients, "rk-1")
    started = time.perf_counter()
    got = client.sync(True)
    took = time.perf_counter() - started
    assets = [json.loads(a.entity)["name"] for d in got for a in d.assetUpdateMsg]
    assert sorted(assets) == sorted(f"asset-{i}" for i in range(ENTITIES))
    total = sum(entries(d) for d in got)
    assert len(got) < ENTITIES // 50  # packed: about a hundred a downlink
    assert total / took >= MIN_RATE, f"{total} entries in {took:.2f} s"
    assert got[-1].HasField("syncCompletedMsg") and entries(got[-1]) == 1


def test_a_graph_change_reaches_a_connected_edge_at_once(server, clients):
    client = connected(server, clients, "rk-1")
    client.sync(False)
    graph = server.service.graph
    edge = server.service.edge("rk-1")
    dash = graph.create_entity("DASHBOARD", {"title": "Ops"}, now_ms=NOW)
    assert client.nothing_within(0.2)  # created, not assigned: nothing for the edge
    graph.assign(edge.edge_id, "DASHBOARD", dash.id, now_ms=NOW)
    d = client.downlink()
    assert d.dashboardUpdateMsg[0].msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
    client.ack(d.downlinkMsgId)
    graph.update_entity("DASHBOARD", dash.id, {"title": "Ops 2"}, now_ms=NOW)
    d = client.downlink()
    assert json.loads(d.dashboardUpdateMsg[0].entity)["title"] == "Ops 2"
    client.ack(d.downlinkMsgId)
    assert client.nothing_within(0.2)


def test_an_edge_change_reaches_another_connected_edge_holding_the_entity(server, clients):
    graph = server.service.graph
    asset = graph.create_entity("ASSET", {"name": "shared"}, now_ms=NOW)
    streams = {}
    for rk in ("rk-1", "rk-2"):
        graph.assign(server.service.edge(rk).edge_id, "ASSET", asset.id, now_ms=NOW)
        streams[rk] = connected(server, clients, rk)
        streams[rk].sync(False)
        streams[rk].ack(streams[rk].downlink().downlinkMsgId)  # its assignment
    msb, lsb = uuid_halves(asset.id)
    body = {**asset.body(), "label": "changed on edge 1"}
    resp = streams["rk-1"].uplink(epoch=1, assetUpdateMsg=[edge_pb2.AssetUpdateMsg(
        msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=json.dumps(body), edgeSeqId=1)])
    assert resp.success
    d = streams["rk-2"].downlink()
    assert json.loads(d.assetUpdateMsg[0].entity)["label"] == "changed on edge 1"
    streams["rk-2"].ack(d.downlinkMsgId)
    assert streams["rk-1"].nothing_within(0.2)  # not echoed to the edge that made it
    assert server.counters.edge_changes.get("ASSET") == 1
    # the graph's counter counts every downlink it queued: the two assignments, then the change
    assert server.counters.graph_downlinks.get("assetUpdateMsg") == 3


def test_queued_assignments_travel_together_and_a_refused_batch_goes_one_by_one(server, clients):
    graph = server.service.graph
    edge = server.service.edge("rk-1")
    made = graph.create_entities([("ASSET", {"name": f"a-{i}"}) for i in range(150)],
                                 now_ms=NOW, edge_id=edge.edge_id)
    client = connected(server, clients, "rk-1")
    client.sync(False)
    first = client.downlink()
    assert (len(first.assetUpdateMsg), len(first.assetProfileUpdateMsg)) == (100, 100)
    client.ack(first.downlinkMsgId, success=False, error="one of them is bad")
    singles = []
    for _ in range(100):  # the refused batch again, one by one
        d = client.downlink()
        singles.append(json.loads(d.assetUpdateMsg[0].entity)["name"])
        assert len(d.assetUpdateMsg) == 1
        client.ack(d.downlinkMsgId)
    assert singles == [m.name for m in made[:100]]
    rest = client.downlink()
    assert [json.loads(a.entity)["name"] for a in rest.assetUpdateMsg] == [
        m.name for m in made[100:]]
    client.ack(rest.downlinkMsgId)
    assert client.nothing_within(0.2)
