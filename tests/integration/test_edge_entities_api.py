"""The entity graph's admin routes on a real `edge-sync run`: every change answers with the seqs
of its events once they are on disk, and the log then holds exactly those events (seq order,
action, entity, lane, body) while the graph store holds the change (origin edge, origin_seq the
event's seq). Unknown entities are 404 with their id, a taken asset name 409, malformed bodies
400, and nothing of a refused change is written; a cross-site page can change nothing; a deleted
device's token stops working at once.
"""

from __future__ import annotations

import http.client
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import EntityRecord, GraphStore
from edge_sync.storage.records import Lane, Scope, StoredEvent
from tests.helpers.agent import Agent, Response, read_log
from tests.helpers.wait import wait_until

EVIL = "http://evil.example"
UNKNOWN = uuid.UUID("00000000-0000-4000-8000-00000000dead")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agent]:
    a = Agent(tmp_path_factory.mktemp("entities") / "edge").start()
    yield a
    a.terminate()
    a.close()


def call(agent: Agent, method: str, path: str, body: Any = None) -> Response:
    return agent.admin(method, path, body)


def new_events(agent: Agent, after: int) -> list[tuple[int, str, str, str, str, Lane]]:
    return [(e.seq, e.type, e.entity_type, str(e.entity_id), e.action, e.lane)
            for e in read_log(agent.data_dir) if e.seq > after]


def last_seq(agent: Agent) -> int:
    log = read_log(agent.data_dir)
    return log[-1].seq if log else 0


def event(agent: Agent, seq: int) -> StoredEvent:
    [found] = [e for e in read_log(agent.data_dir) if e.seq == seq]
    return found


def graph(agent: Agent, entity_id: uuid.UUID) -> tuple[EntityRecord | None, list[dict[str, Any]]]:
    store = LmdbStore(agent.data_dir, readonly=True)
    try:
        g = GraphStore(store)
        with store.read() as txn:
            return g.entity(txn, entity_id), g.relations(txn, entity_id)
    finally:
        store.close()


def entity_data(agent: Agent, entity_id: uuid.UUID) -> tuple[dict[str, Any], dict[str, Any]]:
    store = LmdbStore(agent.data_dir, readonly=True)
    try:
        es = EntityStore(store)
        with store.read() as txn:
            return (es.attributes(txn, entity_id, Scope.CLIENT),
                    {k: v for k, (_, v) in es.latest(txn, entity_id).items()})
    finally:
        store.close()


def make_asset(agent: Agent, name: str, **extra: Any) -> uuid.UUID:
    resp = call(agent, "POST", "/api/assets", {"name": name, **extra})
    assert resp.status == 201, resp.body
    return uuid.UUID(resp.json()["id"])


def refused(resp: Response, status: int, *words: str) -> None:
    assert resp.status == status, resp.body
    body = resp.json()
    assert body["status"] == status
    for word in words:
        assert word in body["message"], body


# -- assets --------------------------------------------------------------------------------------


def test_asset_create_update_delete_events_and_graph(agent: Agent) -> None:
    before = last_seq(agent)
    resp = call(agent, "POST", "/api/assets",
                {"name": "line-1", "type": "line", "label": "north", "additionalInfo": {"f": 2}})
    assert resp.status == 201
    asset = uuid.UUID(resp.json()["id"])
    assert resp.json()["seqs"] == [before + 1]
    record, _ = graph(agent, asset)
    assert record is not None
    assert (record.entity_type, record.name, record.origin, record.origin_seq) == (
        "ASSET", "line-1", "edge", before + 1)
    added = json.loads(record.json)
    assert added == {"id": {"entityType": "ASSET", "id": str(asset)},
                     "createdTime": added["createdTime"], "name": "line-1", "type": "line",
                     "label": "north", "additionalInfo": {"f": 2}}
    assert event(agent, before + 1).body == added

    resp = call(agent, "PUT", f"/api/assets/{asset}", {"label": "south"})
    assert (resp.status, resp.json()) == (200, {"id": str(asset), "seqs": [before + 2]})
    resp = call(agent, "PUT", f"/api/assets/{asset}", {"name": "line-1b"})
    assert resp.json()["seqs"] == [before + 3]
    record, _ = graph(agent, asset)
    assert record is not None
    assert json.loads(record.json) == {**added, "label": "south", "name": "line-1b"}
    assert (record.name, record.origin_seq) == ("line-1b", before + 3)
    # an update that changes nothing tells the cloud nothing
    assert call(agent, "PUT", f"/api/assets/{asset}", {"label": "south"}).json()["seqs"] == []

    resp = call(agent, "DELETE", f"/api/assets/{asset}")
    assert (resp.status, resp.json()) == (200, {"id": str(asset), "seqs": [before + 4]})
    assert graph(agent, asset) == (None, [])
    assert event(agent, before + 4).body == {"id": str(asset), "name": "line-1b"}
    assert new_events(agent, before) == [
        (before + 1, "ASSET", "ASSET", str(asset), "ADDED", Lane.HIGH),
        (before + 2, "ASSET", "ASSET", str(asset), "UPDATED", Lane.HIGH),
        (before + 3, "ASSET", "ASSET", str(asset), "UPDATED", Lane.HIGH),
        (before + 4, "ASSET", "ASSET", str(asset), "DELETED", Lane.NORMAL),
    ]


def test_asset_refusals_write_nothing(agent: Agent) -> None:
    first = make_asset(agent, "pump-house")
    other = make_asset(agent, "tank-house")
    before = last_seq(agent)
    refused(call(agent, "POST", "/api/assets", {"name": "pump-house"}), 409, "pump-house",
            str(first))
    refused(call(agent, "PUT", f"/api/assets/{other}", {"name": "pump-house"}), 409,
            "pump-house")
    refused(call(agent, "PUT", f"/api/assets/{UNKNOWN}", {"label": "x"}), 404, str(UNKNOWN))
    refused(call(agent, "DELETE", f"/api/assets/{UNKNOWN}"), 404, str(UNKNOWN))
    refused(call(agent, "POST", "/api/assets", b'{"name": "x",'), 400, "malformed JSON")
    refused(call(agent, "POST", "/api/assets", {"name": ""}), 400, "name")
    refused(call(agent, "POST", "/api/assets", {"name": "x", "colour": "red"}), 400, "colour")
    refused(call(agent, "PUT", f"/api/assets/{other}", {}), 400, "nothing to update")
    refused(call(agent, "PUT", "/api/assets/not-a-uuid", {"label": "x"}), 400, "not-a-uuid")
    device, _ = agent.create_device("not-an-asset")
    after_device = last_seq(agent)
    refused(call(agent, "DELETE", f"/api/assets/{device}"), 404, device)
    assert [s for s, *_ in new_events(agent, before)] == [after_device - 1, after_device]
    record, _ = graph(agent, other)
    assert record is not None and record.name == "tank-house"


# -- devices -------------------------------------------------------------------------------------


def test_device_delete_stops_its_token_and_removes_its_data(agent: Agent) -> None:
    device, token = agent.create_device("doomed-pump")
    dev = uuid.UUID(device)
    assert agent.post_telemetry(token, {"t": 1}) == 200
    assert agent.device("POST", f"/api/v1/{token}/attributes", {"fw": "1.0"}).status == 200
    line = make_asset(agent, "doomed-line")
    assert call(agent, "POST", "/api/relations",
                {"from": str(line), "to": device, "type": "Contains"}).status == 201
    before = last_seq(agent)
    resp = call(agent, "DELETE", f"/api/devices/{device}")
    assert (resp.status, resp.json()) == (200, {"id": device, "seqs": [before + 1]})
    assert new_events(agent, before) == [
        (before + 1, "DEVICE", "DEVICE", device, "DELETED", Lane.NORMAL)]
    assert event(agent, before + 1).body == {"id": device, "name": "doomed-pump"}
    assert agent.post_telemetry(token, {"t": 2}) == 401  # at once: no stale cache entry
    assert graph(agent, dev) == (None, [])
    assert graph(agent, line)[1] == []  # the relation went with it
    assert entity_data(agent, dev) == ({}, {})
    refused(call(agent, "DELETE", f"/api/devices/{device}"), 404, device)
    assert call(agent, "GET", f"/api/entities/{device}").status == 404


def test_a_deleted_devices_waiting_long_poll_is_answered_404(agent: Agent) -> None:
    device, token = agent.create_device("polling-pump")
    answer: list[Response] = []
    poller = threading.Thread(target=lambda: answer.append(
        agent.device("GET", f"/api/v1/{token}/rpc?timeout=30000")))
    poller.start()
    try:
        wait_until(lambda: "edge_sync_http_long_polls 1.0" in call(agent, "GET", "/metrics").body
                   .decode(), timeout=10, what="the long poll to wait")
        assert call(agent, "DELETE", f"/api/devices/{device}").status == 200
        poller.join(timeout=10)
    finally:
        poller.join(timeout=30)
    [resp] = answer
    refused(resp, 404, device, "deleted")


def test_deleted_shared_keys_reach_a_waiting_attribute_poll(agent: Agent) -> None:
    device, token = agent.create_device("listening-pump")
    answer: list[Response] = []
    poller = threading.Thread(target=lambda: answer.append(
        agent.device("GET", f"/api/v1/{token}/attributes/updates?timeout=30000")))
    poller.start()
    try:
        wait_until(lambda: "edge_sync_http_long_polls 1.0" in call(agent, "GET", "/metrics").body
                   .decode(), timeout=10, what="the long poll to wait")
        resp = call(agent, "DELETE", f"/api/entities/{device}/attributes/SHARED_SCOPE",
                    {"keys": ["setpoint", "mode"]})
        assert resp.status == 200
    finally:
        poller.join(timeout=30)
    [got] = answer
    assert (got.status, got.json()) == (200, {"deleted": ["setpoint", "mode"]})


# -- relations -----------------------------------------------------------------------------------


def test_relation_add_delete_and_delete_all(agent: Agent) -> None:
    plant = make_asset(agent, "plant")
    hall = make_asset(agent, "hall")
    device, _ = agent.create_device("relay")
    before = last_seq(agent)
    body = {"from": {"entityType": "ASSET", "id": str(plant)}, "to": str(hall),
            "type": "Contains", "additionalInfo": {"since": 2024}}
    resp = call(agent, "POST", "/api/relations", body)
    assert (resp.status, resp.json()) == (201, {"seqs": [before + 1]})
    rel = {"from": {"entityType": "ASSET", "id": str(plant)},
           "to": {"entityType": "ASSET", "id": str(hall)}, "type": "Contains",
           "typeGroup": "COMMON", "additionalInfo": {"since": 2024}}
    assert event(agent, before + 1).body == rel
    assert call(agent, "POST", "/api/relations",
                {"from": str(hall), "to": device, "type": "Contains"}).status == 201
    assert call(agent, "POST", "/api/relations",
                {"from": device, "to": str(plant), "type": "Manages"}).status == 201
    assert graph(agent, plant)[1][0] == rel
    assert len(graph(agent, hall)[1]) == 2

    resp = call(agent, "DELETE", f"/api/relations?from={plant}&to={hall}&type=Contains")
    assert (resp.status, resp.json()) == (200, {"seqs": [before + 4]})
    assert event(agent, before + 4).body == rel
    refused(call(agent, "DELETE", f"/api/relations?from={plant}&to={hall}&type=Contains"), 404,
            "no relation")
    resp = call(agent, "DELETE", f"/api/relations?entity={hall}")  # hall -> device only now
    assert resp.json() == {"seqs": [before + 5]}
    resp = call(agent, "DELETE", f"/api/relations?entity={plant}")  # device -> plant
    assert resp.json() == {"seqs": [before + 6]}
    assert call(agent, "DELETE", f"/api/relations?entity={plant}").json() == {"seqs": []}
    assert new_events(agent, before) == [
        (before + 1, "RELATION", "ASSET", str(plant), "RELATION_ADD_OR_UPDATE", Lane.NORMAL),
        (before + 2, "RELATION", "ASSET", str(hall), "RELATION_ADD_OR_UPDATE", Lane.NORMAL),
        (before + 3, "RELATION", "DEVICE", device, "RELATION_ADD_OR_UPDATE", Lane.NORMAL),
        (before + 4, "RELATION", "ASSET", str(plant), "RELATION_DELETED", Lane.NORMAL),
        (before + 5, "RELATION", "ASSET", str(hall), "RELATION_DELETED", Lane.NORMAL),
        # the relation's entity is its from end, the device, whoever's relations were deleted
        (before + 6, "RELATION", "DEVICE", device, "RELATION_DELETED", Lane.NORMAL),
    ]
    assert graph(agent, plant)[1] == graph(agent, hall)[1] == []


def test_relation_refusals_write_nothing(agent: Agent) -> None:
    plant = make_asset(agent, "refinery")
    before = last_seq(agent)
    refused(call(agent, "POST", "/api/relations",
                 {"from": str(plant), "to": str(UNKNOWN), "type": "Contains"}), 404, str(UNKNOWN))
    refused(call(agent, "POST", "/api/relations",
                 {"from": {"entityType": "DEVICE", "id": str(plant)}, "to": str(plant),
                  "type": "Contains"}), 404, str(plant))
    refused(call(agent, "POST", "/api/relations", {"from": str(plant), "type": "Contains"}), 400,
            "to")
    refused(call(agent, "POST", "/api/relations",
                 {"from": str(plant), "to": str(plant), "type": "X", "typeGroup": "RULE_NODE"}),
            400, "COMMON")
    refused(call(agent, "POST", "/api/relations", b"[1"), 400, "malformed JSON")
    refused(call(agent, "DELETE", f"/api/relations?entity={UNKNOWN}"), 404, str(UNKNOWN))
    assert new_events(agent, before) == []


# -- attribute and timeseries keys ---------------------------------------------------------------


def test_attribute_and_timeseries_key_deletes(agent: Agent) -> None:
    device, token = agent.create_device("meter")
    dev = uuid.UUID(device)
    assert agent.device("POST", f"/api/v1/{token}/attributes", {"fw": "r1", "hw": "r2"}).status == 200
    assert agent.post_telemetry(token, {"kwh": 5, "v": 230}) == 200
    before = last_seq(agent)
    resp = call(agent, "DELETE", f"/api/entities/{device}/attributes/CLIENT_SCOPE",
                {"keys": ["fw", "gone"]})
    assert (resp.status, resp.json()) == (200, {"id": device, "seqs": [before + 1]})
    resp = call(agent, "DELETE", f"/api/entities/{device}/timeseries?keys=kwh")
    assert (resp.status, resp.json()) == (200, {"id": device, "seqs": [before + 2]})
    assert new_events(agent, before) == [
        (before + 1, "DEVICE", "DEVICE", device, "ATTRIBUTES_DELETED", Lane.NORMAL),
        (before + 2, "DEVICE", "DEVICE", device, "TIMESERIES_DELETED", Lane.NORMAL),
    ]
    assert event(agent, before + 1).body == {"scope": "CLIENT_SCOPE", "keys": ["fw", "gone"]}
    assert event(agent, before + 2).body == {"keys": ["kwh"]}
    assert entity_data(agent, dev) == ({"hw": "r2"}, {"v": 230})
    refused(call(agent, "DELETE", f"/api/entities/{UNKNOWN}/timeseries", {"keys": ["a"]}), 404,
            str(UNKNOWN))
    refused(call(agent, "DELETE", f"/api/entities/{device}/attributes/BOGUS", {"keys": ["a"]}),
            400, "BOGUS")
    refused(call(agent, "DELETE", f"/api/entities/{device}/timeseries", {"keys": []}), 400, "key")
    refused(call(agent, "DELETE", f"/api/entities/{device}/timeseries", {"keys": "kwh"}), 400,
            "list")
    assert new_events(agent, before + 2) == []


# -- alarms, rule chains, sync ------------------------------------------------------------------


def test_alarm_ack_and_clear_by_id(agent: Agent) -> None:
    device, _ = agent.create_device("boiler")
    resp = call(agent, "POST", "/api/alarms", {"device": device, "type": "Overheat",
                                               "severity": "MAJOR", "details": {"t": 95}})
    assert resp.status == 201
    alarm = resp.json()["alarm_id"]
    before = last_seq(agent)
    for action in ("ALARM_ACK", "ALARM_CLEAR"):
        resp = call(agent, "POST", "/api/alarms", {"alarm_id": alarm, "action": action})
        assert resp.status == 201, resp.body
    assert new_events(agent, before) == [
        (before + 1, "ALARM", "ALARM", alarm, "ALARM_ACK", Lane.HIGH),
        (before + 2, "ALARM", "ALARM", alarm, "ALARM_CLEAR", Lane.HIGH)]
    body = event(agent, before + 2).body
    assert (body["originator"], body["type"], body["severity"], body["details"]) == (
        device, "Overheat", "MAJOR", {"t": 95})
    refused(call(agent, "POST", "/api/alarms", {"alarm_id": str(UNKNOWN), "action": "ALARM_ACK"}),
            404, str(UNKNOWN))


def test_rule_chain_metadata_request_for_a_chain_not_on_the_edge_is_404(agent: Agent) -> None:
    """The cloud answers only for a chain on the edge (asking once per chain while a request is
    pending: tests/integration/test_edge_graph_changes.py, with the chain in the store)."""
    chain = uuid.uuid4()
    before = last_seq(agent)
    refused(call(agent, "POST", f"/api/rule-chains/{chain}/metadata-request", {}), 404,
            f"rule chain {chain} is not on this edge")
    assert new_events(agent, before) == []


def test_sync_without_a_cloud_link_is_unavailable(agent: Agent) -> None:
    refused(call(agent, "POST", "/api/sync", {"full": True}), 503, "no cloud link")
    refused(call(agent, "POST", "/api/sync", {"full": "yes"}), 400, "full")


# -- reads ---------------------------------------------------------------------------------------


def test_entities_and_entity_reads(agent: Agent) -> None:
    site = make_asset(agent, "read-site", type="site")
    device, token = agent.create_device("read-pump")
    assert agent.post_telemetry(token, {"rpm": 900}) == 200
    assert agent.device("POST", f"/api/v1/{token}/attributes", {"fw": "r2"}).status == 200
    assert call(agent, "POST", "/api/relations",
                {"from": str(site), "to": device, "type": "Contains"}).status == 201
    listed = call(agent, "GET", "/api/entities?type=ASSET&name=read-site").json()
    assert [(e["entity_type"], e["id"], e["name"], e["origin"]) for e in listed] == [
        ("ASSET", str(site), "read-site", "edge")]
    assert any(e["id"] == device for e in call(agent, "GET", "/api/entities").json())
    refused(call(agent, "GET", "/api/entities?type=GADGET"), 400, "GADGET")
    one = call(agent, "GET", f"/api/entities/{device}").json()
    rel = {"from": {"entityType": "ASSET", "id": str(site)},
           "to": {"entityType": "DEVICE", "id": device}, "type": "Contains",
           "typeGroup": "COMMON", "additionalInfo": None}
    assert (one["entity_type"], one["name"], one["origin"]) == ("DEVICE", "read-pump", "edge")
    assert one["entity"]["id"] == {"entityType": "DEVICE", "id": device}
    assert one["relations"] == {"from": [], "to": [rel]}
    assert one["attributes"] == {"CLIENT_SCOPE": {"fw": "r2"}, "SERVER_SCOPE": {},
                                 "SHARED_SCOPE": {}}
    assert list(one["latest"]) == ["rpm"] and one["latest"]["rpm"]["value"] == 900
    assert call(agent, "GET", f"/api/entities/{site}").json()["relations"] == {
        "from": [rel], "to": []}
    refused(call(agent, "GET", f"/api/entities/{UNKNOWN}"), 404, str(UNKNOWN))
    status = call(agent, "GET", "/api/status").json()
    assert status["graph"]["held"] == {"count": 0, "first": []}
    assert status["graph"]["entities"]["ASSET"] >= 1
    assert status["sync"]["last_full_ms"] is None


# -- the admin guard -----------------------------------------------------------------------------

WRITES: list[tuple[str, str, dict[str, Any]]] = [
    ("POST", "/api/assets", {"name": "csrf-asset"}),
    ("PUT", f"/api/assets/{UNKNOWN}", {"label": "x"}),
    ("DELETE", f"/api/assets/{UNKNOWN}", {}),
    ("DELETE", f"/api/devices/{UNKNOWN}", {}),
    ("POST", "/api/relations", {"from": str(UNKNOWN), "to": str(UNKNOWN), "type": "X"}),
    ("DELETE", f"/api/relations?entity={UNKNOWN}", {}),
    ("DELETE", f"/api/entities/{UNKNOWN}/attributes/SERVER_SCOPE", {"keys": ["a"]}),
    ("DELETE", f"/api/entities/{UNKNOWN}/timeseries", {"keys": ["a"]}),
    ("POST", f"/api/rule-chains/{UNKNOWN}/metadata-request", {}),
    ("POST", "/api/sync", {"full": True}),
    ("POST", "/api/dead-letters/replay", {"all": True}),
]


def raw(port: int, method: str, path: str, body: bytes, headers: dict[str, str]
        ) -> tuple[int, dict[str, Any]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.mark.parametrize(("method", "path", "body"), WRITES, ids=[f"{m} {p}" for m, p, _ in WRITES])
def test_cross_site_writes_are_refused_and_change_nothing(agent: Agent, method: str, path: str,
                                                          body: dict[str, Any]) -> None:
    before = last_seq(agent)
    data = json.dumps(body).encode()
    for headers, status in (({"Content-Type": "text/plain", "Origin": EVIL}, 415),
                            ({"Content-Type": "text/plain"}, 415),
                            ({}, 415),
                            ({"Content-Type": "application/json", "Origin": EVIL}, 403),
                            ({"Content-Type": "application/json", "Origin": "null"}, 403)):
        got, out = raw(agent.admin_port, method, path, data, headers)
        assert (got, out["status"]) == (status, status), (headers, out)
    assert last_seq(agent) == before
    assert all(r.name != "csrf-asset" for r in _assets(agent.data_dir))


def _assets(data_dir: Path) -> list[EntityRecord]:
    store = LmdbStore(data_dir, readonly=True)
    try:
        with store.read() as txn:
            return GraphStore(store).entities(txn, entity_type="ASSET")
    finally:
        store.close()
