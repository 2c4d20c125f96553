"""Edge-made graph changes in process (a whole EdgeApp, LMDB in tmp_path): changes of one asset
told back to back (one group commit) merge instead of losing a field; a device created on the
edge is in the graph with its ADDED event's seq; a rule chain's metadata is asked for again only
once the pending request has left the queue; POST /api/sync hands the operator's request to the
link's callable.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from edge_sync.actors.messages import MarkDeployed, RpcQueued
from edge_sync.api.admin_http import AdminHttpApi
from edge_sync.api.entity_service import EntityService
from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.devices.rpc import RpcRequest, RpcStatus
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.rpc_store import RpcStore

DEADLINE = 10.0


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_ACTORS_SHARDS": "2", "EDGE_MQTT_ENABLED": "false",
    })
    edge = EdgeApp(cfg).start()
    yield edge
    edge.stop(timeout=30)


def entities(app: EdgeApp) -> EntityService:
    return EntityService(app.router, clock=app.clock)


def test_updates_told_back_to_back_merge(app: EdgeApp) -> None:
    svc = entities(app)
    asset, created = svc.create_asset("merge-me", type_="line")
    updates = [svc.update_asset(asset, label="north"),
               svc.update_asset(asset, additionalInfo={"floor": 3}),
               svc.update_asset(asset, name="merged")]
    first = created.result(DEADLINE).start
    assert [list(u.result(DEADLINE)) for u in updates] == [[first + 1], [first + 2], [first + 3]]
    with app.store.read() as txn:
        record = GraphStore(app.store).entity(txn, asset)
        bodies = [e.body for e in EventLog(app.store).iter_events(txn, entity_id=asset)]
    assert record is not None and record.origin_seq == first + 3
    assert json.loads(record.json) == bodies[-1] == {
        "id": {"entityType": "ASSET", "id": str(asset)}, "createdTime": bodies[0]["createdTime"],
        "name": "merged", "type": "line", "label": "north", "additionalInfo": {"floor": 3}}


def test_a_device_made_on_the_edge_is_in_the_graph(app: EdgeApp) -> None:
    device, future = app.service.create_device("graph-pump", type_="pump", label="L")
    seqs = future.result(DEADLINE)
    with app.store.read() as txn:
        record = GraphStore(app.store).entity(txn, device.id, "DEVICE")
    assert record is not None
    assert (record.name, record.origin, record.origin_seq) == ("graph-pump", "edge", seqs.start)
    assert json.loads(record.json) == {
        "id": {"entityType": "DEVICE", "id": str(device.id)},
        "createdTime": device.created_time, "name": "graph-pump", "type": "pump", "label": "L",
        "additionalInfo": None}


def test_a_deleted_devices_open_rpc_requests_are_closed_and_never_reported(app: EdgeApp) -> None:
    device, future = app.service.create_device("rpc-pump")
    future.result(DEADLINE)
    now = app.clock.now_ms()
    request = RpcRequest(device.id, uuid.uuid4(), 7, "reboot", "{}", False,
                         expiration_time=now + 300, queued_at=now)
    app.store.write(lambda txn: RpcStore(app.store).put(txn, request))
    app.router.tell(RpcQueued(device.id, (request,)))
    deleted = entities(app).delete_device(device.id).result(DEADLINE)
    with app.store.read() as txn:
        [closed] = list(RpcStore(app.store).scan(txn, device.id))
        assert RpcStore(app.store).open_count(txn) == 0
    assert (closed.status, closed.error) == (RpcStatus.FAILED, "device deleted")
    time.sleep(0.6)  # an absence, not awaitable: past the expiration nothing may report it
    with app.store.read() as txn:
        after = [e for e in EventLog(app.store).iter_events(txn, after_seq=deleted.start)]
    assert after == []


def test_metadata_is_asked_again_only_once_the_request_left_the_queue(app: EdgeApp) -> None:
    svc = entities(app)
    chain = uuid.uuid4()
    first = [svc.request_rule_chain_metadata(chain) for _ in range(3)]
    seq = first[0].result(DEADLINE).start
    assert [list(f.result(DEADLINE)) for f in first] == [[seq]] * 3
    assert list(svc.request_rule_chain_metadata(chain).result(DEADLINE)) == [seq]
    deployed: Future[int] = Future()
    app.queue.tell(MarkDeployed((seq,), deployed))
    assert deployed.result(DEADLINE) == 1
    again = svc.request_rule_chain_metadata(chain).result(DEADLINE)
    assert again.start > seq
    svc.request_metadata(chain)  # the DownlinkActor's callback: pending again, nothing new
    assert list(svc.request_rule_chain_metadata(chain).result(DEADLINE)) == [again.start]
    with app.store.read() as txn:
        actions = [(e.seq, e.action) for e in EventLog(app.store).iter_events(txn, entity_id=chain)]
    assert actions == [(seq, "RULE_CHAIN_METADATA_REQUEST"),
                       (again.start, "RULE_CHAIN_METADATA_REQUEST")]


def test_sync_route_hands_the_request_to_the_link(app: EdgeApp) -> None:
    asked: list[tuple[bool, str]] = []
    api = AdminHttpApi(app.store, app.service, app.metrics,
                       request_sync=lambda full, why: asked.append((full, why)))

    async def scenario() -> list[tuple[int, object]]:
        async with TestClient(TestServer(api.make_app())) as client:
            out = []
            for body in ({"full": True}, {}, {"full": 1}):
                resp = await client.post("/api/sync", json=body)
                out.append((resp.status, await resp.json()))
            return out

    answers = asyncio.run(asyncio.wait_for(scenario(), DEADLINE))
    assert [a[0] for a in answers] == [202, 202, 400]
    assert answers[0][1] == {"full": True, "requested": True}
    assert asked == [(True, "operator"), (False, "operator")]
