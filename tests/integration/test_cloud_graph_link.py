"""The entity graph over real gRPC streams of the reference cloud (scripted edges, port 0): a
full sync of 10,000 entities at more than 2,000 entities a second (packed: one downlink in flight,
about a hundred entities each), graph changes reaching a connected edge at once, an edge's
change reaching another connected edge that holds the entity, and which full syncs drop the
graph downlinks queued before them (only one an edge-sync edge asked for; counted)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.cloud import CloudServer
from edge_sync.common.wire import uuid_halves, uuid_of
from edge_sync.config import (
    AdminConfig,
    CloudConfig,
    CloudStorageConfig,
    DownlinkConfig,
    EdgesRpcConfig,
)
from edge_sync.proto import edge_pb2
from tests.helpers.link_client import DEADLINE_S, LinkClient
from tests.helpers.wait import wait_until

NOW = 1_764_921_600_000
ENTITIES = 10_000


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


def _the_rest_of_the_queue(client: LinkClient, server: CloudServer, edge_id: uuid.UUID,
                           ) -> list[edge_pb2.DownlinkMsg]:
    """The downlinks that come until the edge's queue is empty (each acknowledged, so the
    queue drains), then nothing more: a pause of the server under load does not cut it short."""
    got: list[edge_pb2.DownlinkMsg] = []
    deadline = time.monotonic() + DEADLINE_S
    while True:
        if not client.nothing_within(0.05):
            got.append(client.downlink())
            client.ack(got[-1].downlinkMsgId)
        elif server.store.queued_downlinks(edge_id) == 0:
            break
        assert time.monotonic() < deadline, (
            f"{server.store.queued_downlinks(edge_id)} downlinks still queued after {got}")
    assert client.nothing_within(0.5)
    return got


def entries(msg: edge_pb2.DownlinkMsg) -> int:
    return sum(len(v) if fd.is_repeated else 1 for fd, v in msg.ListFields()
               if fd.name not in ("downlinkMsgId", "cloudTimeMillis"))


def test_a_full_sync_of_ten_thousand_entities_is_packed(server, clients):
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
    got = client.sync(True)
    assets = [json.loads(a.entity)["name"] for d in got for a in d.assetUpdateMsg]
    assert sorted(assets) == sorted(f"asset-{i}" for i in range(ENTITIES))
    assert len(got) < ENTITIES // 50  # packed: about a hundred a downlink
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
    value = server.counters.metrics.value
    assert value("edge_cloud_edge_entity_changes_applied_total", kind="ASSET") == 1
    # the graph's counter counts every downlink it queued: the two assignments, then the change
    assert value("edge_cloud_graph_downlinks_queued_total", kind="assetUpdateMsg") == 3


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


def typed(kind: str, value: object) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


def names_in(d: edge_pb2.DownlinkMsg, field: str) -> list[tuple[int, str]]:
    """(msgType, name or title or '') of each entry of a list of a downlink."""
    out = []
    for m in getattr(d, field):
        body = json.loads(m.entity) if m.entity else {}
        out.append((m.msgType, str(body.get("name") or body.get("title") or "")))
    return out


def test_a_full_sync_drops_the_graph_downlinks_queued_before_it_and_keeps_the_rest(
        server, clients):
    """Before an edge's first connect every change queued its downlink; its full sync sends the
    graph as it is, so those are dropped once the edge has the sync's end (counted, one INFO
    line). Kept: the delete (deletes always go: an edge's sweep removes only what its graph
    holds), the shared attributes and the RPC request queued before, and every change made
    during the sync."""
    service, graph, store = server.service, server.service.graph, server.store
    edge_id = service.edge("rk-1").edge_id
    asset = graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    graph.assign(edge_id, "ASSET", asset.id, now_ms=NOW)  # ADDED
    graph.update_entity("ASSET", asset.id, {**asset.body(), "label": "north"}, now_ms=NOW)
    old = graph.create_entity("DASHBOARD", {"title": "Old"}, now_ms=NOW)
    graph.assign(edge_id, "DASHBOARD", old.id, now_ms=NOW)  # ADDED
    graph.delete_entity("DASHBOARD", old.id, now_ms=NOW)  # DELETED
    dev, _ = service.create_device("rk-1", "pump-1", token="tok-1")  # device, profile, token
    graph.add_relation({"from": typed("ASSET", asset.id), "to": typed("DEVICE", dev.id),
                        "type": "Contains", "typeGroup": "COMMON"}, now_ms=NOW)
    service.set_attributes(str(dev.id), {"setpoint": 21})
    rpc = server.rpc.submit(str(dev.id), {"method": "reboot", "params": {}}, oneway=True)
    before = [q.number for q in store.queued_after(edge_id, 0, 100)]
    assert len(before) == 8
    messages: list[Any] = []
    sink = logger.add(lambda m: messages.append(m.record), level="INFO",
                      filter=lambda r: "queued before it dropped" in r["message"])
    try:
        client = connected(server, clients, "rk-1")
        client.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                        syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=True)))
        first = client.downlink()
        assert store.queued_downlinks(edge_id) == 8  # dropped at the sync's end, not its start
        # during the sync: queued after it started, so kept (whatever the sync reads of them)
        graph.update_entity("ASSET", asset.id, {**asset.body(), "label": "south"}, now_ms=NOW)
        late = graph.create_entity("ASSET", {"name": "late"}, now_ms=NOW)
        graph.assign(edge_id, "ASSET", late.id, now_ms=NOW)
        synced = [first]
        client.ack(first.downlinkMsgId)
        while not synced[-1].HasField("syncCompletedMsg"):
            synced.append(client.downlink())
            client.ack(synced[-1].downlinkMsgId)
        after = _the_rest_of_the_queue(client, server, edge_id)
    finally:
        logger.remove(sink)
    assert sum(len(d.deviceUpdateMsg) for d in synced) == 1
    assert sum(len(d.deviceCredentialsUpdateMsg) for d in synced) == 1
    assert sum(len(d.relationUpdateMsg) for d in synced) == 1
    assert not any(d.dashboardUpdateMsg for d in synced)  # deleted: not in the sync
    assert [n for d in synced for n in names_in(d, "assetUpdateMsg")
            if n[1] == "house"] == [(edge_pb2.ENTITY_CREATED_RPC_MESSAGE, "house")]
    # after the sync: what was kept, in queue order, then the changes made during the sync
    assert [[fd.name for fd, _ in d.ListFields() if fd.name not in ("downlinkMsgId",
                                                                    "cloudTimeMillis")]
            for d in after] == [["dashboardUpdateMsg"], ["entityData"], ["deviceRpcCallMsg"],
                                ["assetUpdateMsg"], ["assetUpdateMsg", "assetProfileUpdateMsg"]]
    assert [(m.msgType, uuid_of(m.idMSB, m.idLSB)) for m in after[0].dashboardUpdateMsg] == [
        (edge_pb2.ENTITY_DELETED_RPC_MESSAGE, old.id)]
    assert after[2].deviceRpcCallMsg[0].requestMsg.method == "reboot"
    assert names_in(after[3], "assetUpdateMsg") == [(edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, "house")]
    assert json.loads(after[3].assetUpdateMsg[0].entity)["label"] == "south"
    assert names_in(after[4], "assetUpdateMsg") == [(edge_pb2.ENTITY_CREATED_RPC_MESSAGE, "late")]
    assert server.rpc.get(str(rpc.id)).status.name == "DELIVERED"
    assert store.queued_downlinks(edge_id) == 0
    (line,) = messages
    assert line["message"] == ("full sync of edge rk-1 completed: 5 downlinks queued before it "
                               "dropped (it sent what they carry)")
    assert (line["level"].name, line["extra"]["edge"], line["extra"]["dropped"]) == (
        "INFO", "rk-1", 5)
    assert server.registry.snapshot()[edge_id]["downlinks_superseded"] == 5
    assert server.counters.metrics.value("edge_cloud_downlinks_total", outcome="superseded") == 5
    assert '\nedge_cloud_downlinks_total{outcome="superseded"} 5.0\n' in \
        server.counters.metrics.exposition().decode()


def test_a_full_sync_that_never_ends_drops_nothing(server, clients):
    """A full sync broken off (the stream gone before the edge acknowledged its end) leaves the
    queue as it was; the next full sync that ends drops what it superseded."""
    service, graph, store = server.service, server.service.graph, server.store
    edge_id = service.edge("rk-1").edge_id
    asset = graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    graph.assign(edge_id, "ASSET", asset.id, now_ms=NOW)
    service.create_device("rk-1", "pump-1", token="tok-1")
    queued = [q.number for q in store.queued_after(edge_id, 0, 100)]
    assert len(queued) == 2
    client = connected(server, clients, "rk-1")
    client.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                    syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=True)))
    client.downlink()  # the sync's first pack, never acknowledged
    client.close()
    wait_until(lambda: not server.registry.is_connected(edge_id), timeout=10,
               what="the broken stream released")
    assert [q.number for q in store.queued_after(edge_id, 0, 100)] == queued
    again = connected(server, clients, "rk-1")
    synced = again.sync(True)
    assert sum(len(d.deviceUpdateMsg) for d in synced) == 1
    wait_until(lambda: store.queued_downlinks(edge_id) == 0, timeout=10,
               what="the superseded downlinks dropped once the sync's end is acknowledged")
    assert again.nothing_within(0.3)
    assert server.registry.snapshot()[edge_id]["downlinks_superseded"] == 2


def test_a_full_sync_that_parked_a_downlink_keeps_the_queue(server, clients):
    """A sync that parked one of its downlinks did not give the edge everything: the downlinks
    queued before it are its second chance and are all kept (sent after it, as before)."""
    graph, store = server.service.graph, server.store
    edge_id = server.service.edge("rk-1").edge_id
    big = graph.create_entity("DASHBOARD", {"title": "Big", "description": "x" * 20_000},
                              now_ms=NOW)
    house = graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    for kind, entity in (("DASHBOARD", big), ("ASSET", house)):
        graph.assign(edge_id, kind, entity.id, now_ms=NOW)
    client = LinkClient(server.port)
    clients.append(client)
    client.send(edge_pb2.RequestMsg(msgType=edge_pb2.CONNECT_RPC_MESSAGE,
                                    connectRequestMsg=edge_pb2.ConnectRequestMsg(
                                        edgeRoutingKey="rk-1", edgeSecret="s3cret",
                                        edgeVersion=edge_pb2.V_4_3_0,
                                        maxInboundMessageSize=16 * 1024, edgeStoreId="store-1")))
    assert client.recv().connectResponseMsg.responseCode == edge_pb2.ACCEPTED
    messages: list[Any] = []
    sink = logger.add(lambda m: messages.append(m.record["message"]), level="INFO",
                      filter=lambda r: "full sync of edge" in r["message"])
    try:
        synced = client.sync(True)
        after = client.downlink()  # the queue: the big dashboard's ADDED parked, the asset's sent
        client.ack(after.downlinkMsgId)
        assert client.nothing_within(0.3)
    finally:
        logger.remove(sink)
    assert not any(d.dashboardUpdateMsg for d in synced)
    assert names_in(after, "assetUpdateMsg") == [(edge_pb2.ENTITY_CREATED_RPC_MESSAGE, "house")]
    # by number: the queued ADDED (numbered first), then the sync's entry
    assert [(p.kinds, p.cause, p.in_sync) for p in store.parked_downlinks(edge_id)] == [
        ("dashboardUpdateMsg", "too_large", False), ("dashboardUpdateMsg", "too_large", True)]
    assert messages == ["full sync of edge rk-1 completed with 1 of its downlinks parked: the "
                        "downlinks queued before it are kept"]
    assert server.registry.snapshot()[edge_id]["downlinks_superseded"] == 0


def _queue_an_added_then_its_deleted(server: CloudServer) -> Any:
    """An asset assigned to rk-1 and unassigned again, before the edge connects: its ADDED and
    its DELETED queued (the edge may hold the asset from before: only the DELETED removes it)."""
    graph = server.service.graph
    edge_id = server.service.edge("rk-1").edge_id
    asset = graph.create_entity("ASSET", {"name": "gone"}, now_ms=NOW)
    graph.assign(edge_id, "ASSET", asset.id, now_ms=NOW)
    graph.unassign(edge_id, "ASSET", asset.id, now_ms=NOW)
    assert server.store.queued_downlinks(edge_id) == 2
    return asset


def _after_the_sync(client: LinkClient, server: CloudServer, edge_id: uuid.UUID,
                    ) -> tuple[list[edge_pb2.DownlinkMsg], list[edge_pb2.DownlinkMsg]]:
    """The downlinks up to the sync's end, then the ones after it, each acknowledged."""
    synced = [client.downlink()]
    client.ack(synced[-1].downlinkMsgId)
    while not synced[-1].HasField("syncCompletedMsg"):
        synced.append(client.downlink())
        client.ack(synced[-1].downlinkMsgId)
    return synced, _the_rest_of_the_queue(client, server, edge_id)


@pytest.mark.parametrize("peer", ["operator sync of an edge-sync edge", "ThingsBoard Edge sync"])
def test_a_full_sync_the_edge_sync_edge_did_not_ask_for_drops_nothing(server, clients, peer):
    """session._start_sync: only an edge-sync edge (it sends its edgeStoreId) removes, at the
    end of a full sync it asked for, what the sync did not send. A sync the operator starts
    (`edge-cloud edge sync`, POST /api/edges/{edge}/sync) and a ThingsBoard Edge's own sync
    (no edgeStoreId, incarnation 0) remove nothing on the edge: the queued DELETED of what the
    sync did not send must still go, after the sync, and nothing is dropped or counted."""
    asset = _queue_an_added_then_its_deleted(server)
    edge_id = server.service.edge("rk-1").edge_id
    client = LinkClient(server.port)
    clients.append(client)
    if peer.startswith("operator"):
        assert client.connect("rk-1", "s3cret", store_id="store-rk-1").responseCode \
            == edge_pb2.ACCEPTED
        assert server.registry.request_sync(edge_id, "operator") is True
    else:
        assert client.connect("rk-1", "s3cret").responseCode == edge_pb2.ACCEPTED
        client.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                        syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=True)))
    synced, after = _after_the_sync(client, server, edge_id)
    # no longer assigned: not in the sync
    assert not any(n[1] == "gone" for d in synced for n in names_in(d, "assetUpdateMsg"))
    assert [(m.msgType, uuid_of(m.idMSB, m.idLSB)) for d in after for m in d.assetUpdateMsg] == [
        (edge_pb2.ENTITY_CREATED_RPC_MESSAGE, asset.id),
        (edge_pb2.ENTITY_DELETED_RPC_MESSAGE, asset.id)]
    assert server.store.queued_downlinks(edge_id) == 0
    assert server.registry.snapshot()[edge_id]["downlinks_superseded"] == 0
    assert server.counters.metrics.value("edge_cloud_downlinks_total", outcome="superseded") == 0


def test_an_edge_sync_edges_own_full_sync_drops_what_it_superseded(server, clients):
    """The same queue, the full sync asked by an edge-sync edge itself: the ADDED queued before
    it is dropped (the edge removes at the sync's end what it did not send); the DELETED still
    goes (deletes always do: a delete applied twice is harmless)."""
    _queue_an_added_then_its_deleted(server)
    edge_id = server.service.edge("rk-1").edge_id
    client = connected(server, clients, "rk-1")
    client.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                    syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=True)))
    synced, after = _after_the_sync(client, server, edge_id)
    assert [m.msgType for d in after for m in d.assetUpdateMsg] == [
        edge_pb2.ENTITY_DELETED_RPC_MESSAGE]
    assert not any(n[1] == "gone" for d in synced for n in names_in(d, "assetUpdateMsg"))
    assert server.store.queued_downlinks(edge_id) == 0
    assert server.registry.snapshot()[edge_id]["downlinks_superseded"] == 1
    assert server.counters.metrics.value("edge_cloud_downlinks_total", outcome="superseded") == 1
