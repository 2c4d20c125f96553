"""The reference cloud's admin API for the entity graph, on a real server (gRPC and admin HTTP on
port 0, LMDB in tmp) with a scripted edge connected: entities created, read, updated, deleted,
imported from ThingsBoard export files, assigned and unassigned (our paths and ThingsBoard's),
relations; each change reaches the connected edge as the downlink ThingsBoard would send, woken
by the call (the stream never polls its queue here); refusals (400 naming the problem, 404,
409) change nothing; cross-site writes are refused."""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.cloud import CloudServer
from edge_sync.common.wire import uuid_halves, uuid_of
from edge_sync.config import AdminConfig, CloudConfig, CloudStorageConfig, EdgesRpcConfig
from edge_sync.proto import edge_pb2
from tests.helpers.link_client import DEADLINE_S, LinkClient
from tests.helpers.wake_only import wake_only

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "thingsboard"
TOKEN = "entity-api-token-0123456789abcdef"


def fixture(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text(encoding="utf-8"))


class Api:
    """http.client calls to the admin API: (status, decoded JSON)."""

    def __init__(self, port: int, token: str = "") -> None:
        self.port = port
        self.token = token

    def __call__(self, method: str, path: str, body: Any = None, *,
                 headers: dict[str, str] | None = None, raw: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        sent = {"Content-Type": "application/json"}
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        sent.update(headers or {})
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        try:
            conn.request(method, path, body=data, headers=sent)
            resp = conn.getresponse()
            payload = resp.read()
        finally:
            conn.close()
        return resp.status, json.loads(payload) if payload else None

    def ok(self, method: str, path: str, body: Any = None, status: int = 200) -> Any:
        got, out = self(method, path, body)
        assert got == status, out
        return out


def config(data_dir: Path, token: str = "") -> CloudConfig:
    return CloudConfig(rpc=EdgesRpcConfig(host="127.0.0.1", port=0),
                       storage=CloudStorageConfig(data_dir=data_dir),
                       admin=AdminConfig(host="127.0.0.1", port=0, token=token))


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    cfg = config(tmp_path / "cloud")
    # the stream never looks at its queue on its own: a downlink comes only if the call woke it
    server = CloudServer(cfg, link=wake_only(cfg)).start()
    server.service.create_edge("edge-1", routing_key="rk-1", secret="s3cret-1")
    server.service.create_edge("edge-2", routing_key="rk-2", secret="s3cret-2")
    yield server
    server.stop()


@pytest.fixture
def api(cloud: CloudServer) -> Api:
    return Api(cloud.admin_port)


@pytest.fixture
def edge(cloud: CloudServer) -> Iterator[LinkClient]:
    """rk-1 connected, its (incremental) sync over."""
    client = LinkClient(cloud.port)
    assert client.connect("rk-1", "s3cret-1", store_id="store-1").responseCode == edge_pb2.ACCEPTED
    client.sync(full=False)
    yield client
    client.close()


def received(edge: LinkClient) -> edge_pb2.DownlinkMsg:
    """The next downlink, woken by the call that queued it (the stream does not poll);
    acknowledged."""
    d = edge.downlink(timeout=DEADLINE_S)
    edge.ack(d.downlinkMsgId)
    return d


def lists(d: edge_pb2.DownlinkMsg) -> dict[str, int]:
    """{DownlinkMsg list: entries} of a downlink."""
    return {f.name: len(v) for f, v in d.ListFields() if f.name.endswith("Msg") and
            not isinstance(v, int | str)}


def typed(kind: str, value: str | uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


def names(api: Api, query: str = "") -> list[tuple[str, str]]:
    return [(r["entity_type"], r["name"]) for r in api.ok("GET", f"/api/entities{query}")]


# -- create, read, update, delete ----------------------------------------------------------------


def test_an_asset_created_read_updated_and_deleted_reaches_the_edge_it_is_assigned_to(api, edge):
    made = api.ok("POST", "/api/entities", {"type": "asset", "name": "Pump house",
                                             "entity": {"label": "north", "type": "default"}}, 201)
    asset_id = made["id"]
    assert made["entity_type"] == "ASSET" and made["name"] == "Pump house" and made["edges"] == []
    body = made["entity"]
    assert body["id"] == typed("ASSET", asset_id) and body["label"] == "north"
    assert body["customerId"] == typed("CUSTOMER", "13814000-1dd2-11b2-8080-808080808080")
    assert body["assetProfileId"]["entityType"] == "ASSET_PROFILE"
    assert edge.nothing_within(0.3)  # created, not assigned: nothing for the edge
    assert api.ok("GET", f"/api/entities/{asset_id}") == made
    assert api.ok("GET", "/api/entities/Pump%20house?type=ASSET") == made  # by its name
    assert names(api, "?type=ASSET") == [("ASSET", "Pump house")]
    assert names(api, "?name=Pump%20house") == [("ASSET", "Pump house")]
    assert names(api, "?edge=rk-1&type=ASSET") == []

    assigned = api.ok("POST", f"/api/edges/rk-1/entities/{asset_id}")
    assert (assigned["edge"], assigned["changed"], assigned["assigned"]) == ("rk-1", True, True)
    d = received(edge)
    assert lists(d) == {"assetProfileUpdateMsg": 1, "assetUpdateMsg": 1}
    msg = d.assetUpdateMsg[0]
    assert msg.msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
    assert uuid_of(msg.idMSB, msg.idLSB) == uuid.UUID(asset_id)
    assert json.loads(msg.entity) == body
    assert names(api, "?edge=rk-1&type=ASSET") == [("ASSET", "Pump house")]
    assert api.ok("POST", f"/api/edges/rk-1/entities/{asset_id}")["changed"] is False

    updated = api.ok("PUT", f"/api/entities/{asset_id}", {**body, "label": "south"})
    assert updated["entity"]["label"] == "south" and updated["edges"] == ["rk-1"]
    d = received(edge)
    assert d.assetUpdateMsg[0].msgType == edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
    assert json.loads(d.assetUpdateMsg[0].entity)["label"] == "south"

    gone = api.ok("DELETE", f"/api/entities/{asset_id}")
    assert gone == {"deleted": [{"entity_type": "ASSET", "id": asset_id}], "name": "Pump house"}
    d = received(edge)
    assert d.assetUpdateMsg[0].msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE
    assert d.assetUpdateMsg[0].entity == ""  # ThingsBoard's delete carries the id only
    assert api("GET", f"/api/entities/{asset_id}")[0] == 404
    assert names(api, "?type=ASSET") == []


def test_a_kind_on_every_edge_is_queued_for_every_edge_when_created(cloud, api, edge):
    made = api.ok("POST", "/api/entities", {"type": "DEVICE_PROFILE", "name": "thermostat",
                                             "entity": fixture("thermostat_device_profile.json")},
                  201)
    assert made["on_every_edge"] is True and made["edges"] == ["rk-1", "rk-2"]
    d = received(edge)
    assert lists(d) == {"deviceProfileUpdateMsg": 1}
    assert json.loads(d.deviceProfileUpdateMsg[0].entity)["name"] == "thermostat"
    status, out = api("POST", f"/api/edges/rk-1/entities/{made['id']}")
    assert status == 400 and "is on every edge" in out["message"]


def test_refusals_name_the_problem_and_change_nothing(cloud, api, edge):
    api.ok("POST", "/api/entities", {"type": "CUSTOMER", "name": "ACME"}, 201)
    asset = api.ok("POST", "/api/entities", {"type": "ASSET", "name": "a"}, 201)["id"]
    before = api.ok("GET", "/api/entities")
    cases = [
        ("POST", "/api/entities", {"type": "CUSTOMER", "name": "ACME"}, 409,
         "a customer named 'ACME' already exists"),
        ("POST", "/api/entities", {"type": "GADGET", "name": "x"}, 400,
         "type: unknown entity kind 'GADGET'"),
        ("POST", "/api/entities", {"type": "DEVICE", "name": "x"}, 400,
         "type DEVICE: devices are made with edge-cloud device create"),
        ("POST", "/api/entities", {"type": "DASHBOARD"}, 400, "dashboard has no title"),
        ("POST", "/api/entities", {"type": "ASSET", "name": "b", "colour": 1}, 400,
         "unknown fields: colour"),
        ("POST", "/api/entities", {"type": "ASSET", "name": "b", "entity": [1]}, 400,
         "entity: expected a JSON object"),
        ("POST", "/api/entities", {"type": "ASSET", "name": "b", "entity": {
            "assetProfileId": typed("ASSET_PROFILE", uuid.uuid4())}}, 400, "which does not exist"),
        ("GET", f"/api/entities/{uuid.uuid4()}", None, 404, "no entity"),
        ("GET", "/api/entities/nobody", None, 404, "no entity 'nobody'"),
        ("GET", "/api/entities?type=ASSET&colour=red", None, 400, "unknown parameters: colour"),
        ("PUT", f"/api/entities/{uuid.uuid4()}", {"name": "x"}, 404, "no entity"),
        ("PUT", f"/api/entities/{asset}", {"name": "ACME", "id": typed("ASSET", uuid.uuid4())},
         400, "is not " + asset),
        ("DELETE", f"/api/entities/{uuid.uuid4()}", None, 404, "no entity"),
        ("POST", f"/api/edges/rk-9/entities/{asset}", None, 404, "no edge with routing key 'rk-9'"),
        ("POST", f"/api/edges/rk-1/entities/{uuid.uuid4()}", None, 404, "no entity"),
        ("DELETE", "/api/entities/Tenant", None, 409, "the tenant cannot be deleted"),
    ]
    for method, path, body, status, message in cases:
        got, out = api(method, path, body)
        assert (got, message in out["message"]) == (status, True), (method, path, out)
    assert api.ok("GET", "/api/entities") == before
    assert edge.nothing_within(0.3)


def test_an_entity_larger_than_an_edge_message_is_refused_naming_the_limit(api, edge):
    big = {"title": "huge", "configuration": {"widgets": {}, "blob": "x" * (4 * 1024 * 1024)}}
    status, out = api("POST", "/api/entities", {"type": "DASHBOARD", "entity": big})
    assert status == 400
    assert "an edge accepts at most 4,194,304 in one message" in out["message"]
    status, out = api("POST", "/api/entities", raw=b'{"type": "x", "p": "' + b"y" * (9 << 20)
                      + b'"}')
    assert status == 413 and out["message"] == "body too large: at most 8,388,608 bytes"
    assert names(api, "?type=DASHBOARD") == []


def test_a_rule_chain_forwarding_into_a_cycle_is_refused_naming_it(api):
    def chain(name: str) -> str:
        out = api.ok("POST", "/api/entities", {"type": "RULE_CHAIN", "name": name,
                                                "entity": {"type": "EDGE"}}, 201)
        return str(out["id"])

    def forwarding_to(target: str) -> dict[str, Any]:
        return {"metadata": {"firstNodeIndex": 0, "connections": [], "nodes": [{
            "type": "org.thingsboard.rule.engine.flow.TbRuleChainInputNode", "name": "forward",
            "configurationVersion": 1,
            "configuration": {"ruleChainId": target, "forwardMsgToDefaultRuleChain": False}}]}}

    a, b = chain("A"), chain("B")
    out = api.ok("PUT", f"/api/entities/{a}", forwarding_to(b))
    assert out["metadata"]["nodes"][0]["configuration"]["ruleChainId"] == b
    assert out["entity"]["firstRuleNodeId"] == out["metadata"]["nodes"][0]["id"]
    status, out = api("PUT", f"/api/entities/{b}", forwarding_to(a))
    assert status == 400
    assert out["message"] == (f"reference cycle: rule chain 'B' ({b}) -> rule chain 'A' ({a}) "
                              f"-> rule chain 'B' ({b})")
    assert api.ok("GET", f"/api/entities/{b}")["metadata"] is None


# -- import -------------------------------------------------------------------------------------


def test_a_dashboard_export_imports_as_is(api, edge):
    doc = fixture("boiler_room_dashboard.json")
    out = api.ok("POST", "/api/entities/import", {"file": doc, "source": "boiler.json"}, 201)
    assert out["notes"] == [] and out["assigned_to"] is None
    [row] = out["entities"]
    assert (row["entity_type"], row["name"], row["edges"]) == ("DASHBOARD", "Boiler room", [])
    stored = api.ok("GET", f"/api/entities/{row['id']}")["entity"]
    assert stored["configuration"] == doc["configuration"]
    assert {k: stored[k] for k in ("title", "image", "mobileHide", "mobileOrder", "name")} == \
        {k: doc[k] for k in ("title", "image", "mobileHide", "mobileOrder", "name")}
    assert edge.nothing_within(0.3)
    api.ok("POST", f"/api/edge/{edge_id(api, 'rk-1')}/dashboard/{row['id']}")  # ThingsBoard's path
    d = received(edge)
    assert lists(d) == {"dashboardUpdateMsg": 1}
    assert json.loads(d.dashboardUpdateMsg[0].entity)["configuration"] == doc["configuration"]


def edge_id(api: Api, routing_key: str) -> str:
    return next(e["id"] for e in api.ok("GET", "/api/edges") if e["routing_key"] == routing_key)


def test_a_rule_chain_export_imported_and_assigned_reaches_the_edge_chain_then_metadata(api, edge):
    doc = fixture("boiler_alarms_rule_chain.json")
    out = api.ok("POST", "/api/entities/import", {"file": doc, "assign": "rk-1"}, 201)
    [row] = out["entities"]
    assert (row["entity_type"], row["name"], row["edges"]) == ("RULE_CHAIN", "Boiler alarms",
                                                               ["rk-1"])
    assert out["assigned_to"] == "rk-1"
    first = received(edge)
    assert lists(first) == {"ruleChainUpdateMsg": 1}
    chain = json.loads(first.ruleChainUpdateMsg[0].entity)
    assert chain["id"] == typed("RULE_CHAIN", row["id"]) and chain["type"] == "EDGE"
    second = received(edge)
    assert lists(second) == {"ruleChainMetadataUpdateMsg": 1}
    meta = json.loads(second.ruleChainMetadataUpdateMsg[0].entity)
    assert meta["ruleChainId"] == typed("RULE_CHAIN", row["id"])
    assert chain["firstRuleNodeId"] == meta["nodes"][0]["id"]
    assert [n["configuration"] for n in meta["nodes"]] == \
        [n["configuration"] for n in doc["metadata"]["nodes"]]
    assert meta["connections"] == doc["metadata"]["connections"]
    shown = api.ok("GET", f"/api/entities/{row['id']}")
    assert shown["metadata"] == meta


def test_an_export_put_on_the_root_rule_chain_keeps_it_root_and_says_nothing_otherwise(api):
    """The import's note "root set to false" is for a new chain; an update keeps the chain's
    root flag as it is, so the note would say the opposite of what happens."""
    [root] = [r for r in api.ok("GET", "/api/entities?type=RULE_CHAIN")
              if r["name"] == "Edge Root Rule Chain"]
    doc = fixture("boiler_alarms_rule_chain.json")
    out = api.ok("PUT", f"/api/entities/{root['id']}",
                 {"ruleChain": {**doc["ruleChain"], "root": True}, "metadata": doc["metadata"]})
    assert out["notes"] == []
    assert (out["name"], out["entity"]["root"]) == ("Boiler alarms", True)
    assert api.ok("GET", f"/api/entities/{root['id']}")["entity"]["root"] is True


def test_an_import_is_all_or_nothing_and_a_bad_file_is_refused_with_the_reason(api, edge):
    before = api.ok("GET", "/api/entities")
    cases = [
        ({"file": fixture("bad_rule_chain_no_metadata.json"), "source": "half.json"},
         400, "half.json: metadata: missing (the rule chain's nodes and connections)"),
        ({"file": fixture("bad_rule_chain_connection.json")},
         400, "the file: metadata.connections[0].toIndex: 5 names no node (there are 1)"),
        ({"file": [fixture("acme_customer.json"), fixture("acme_customer.json")], "source": "f"},
         409, "a customer named 'ACME Heating' already exists"),
        ({"file": fixture("valve_dashboard.json")},
         400, "needs the widget type 'plant_widgets.valve_state'"),
        ({"file": {**fixture("boiler_alarms_rule_chain.json"),
                   "ruleChain": {**fixture("boiler_alarms_rule_chain.json")["ruleChain"],
                                 "type": "CORE"}}, "assign": "rk-1"},
         400, "only rule chains of type EDGE are assigned to edges"),
        ({"file": fixture("acme_customer.json"), "assign": "rk-9"},
         404, "no edge with routing key"),
        ({"type": "ASSET"}, 400, "file: missing"),
    ]
    for body, expected, message in cases:
        status, out = api("POST", "/api/entities/import", body)
        assert (status, out["status"]) == (expected, expected), (body, out)
        assert message in out["message"], (body, out)
    assert api.ok("GET", "/api/entities") == before
    assert edge.nothing_within(0.3)


def test_a_widgets_bundle_import_brings_its_widget_types_to_every_edge(api, edge):
    out = api.ok("POST", "/api/entities/import", {"file": fixture("plant_widgets_bundle.json")},
                 201)
    assert [(r["entity_type"], r["name"]) for r in out["entities"]] == [
        ("WIDGET_TYPE", "Valve state"), ("WIDGETS_BUNDLE", "Plant widgets")]
    got = [lists(received(edge)), lists(received(edge))]
    assert got == [{"widgetTypeUpdateMsg": 1}, {"widgetsBundleUpdateMsg": 1}]


def test_a_dashboard_using_a_tenant_widget_type_imports_with_its_bundle(api, edge):
    out = api.ok("POST", "/api/entities/import",
                 {"file": [fixture("valve_dashboard.json"), fixture("plant_widgets_bundle.json")],
                  "assign": "rk-1"}, 201)
    assert [r["entity_type"] for r in out["entities"]] == ["WIDGET_TYPE", "WIDGETS_BUNDLE",
                                                           "DASHBOARD"]
    got = [lists(received(edge)) for _ in range(3)]  # the widget type before the dashboard
    assert got == [{"widgetTypeUpdateMsg": 1}, {"widgetsBundleUpdateMsg": 1},
                   {"dashboardUpdateMsg": 1}]


def test_a_user_import_never_stores_the_password(api):
    out = api.ok("POST", "/api/entities/import", {"file": fixture("operator_user.json")}, 201)
    assert out["notes"] == ["the file: password not imported: credentials are never stored (set "
                            "the user's password on the edge)"]
    shown = api.ok("GET", f"/api/entities/{out['entities'][0]['id']}")
    assert "do-not-store-me" not in json.dumps(shown)
    assert shown["entity"]["email"] == "operator@plant.example"


# -- assignment ----------------------------------------------------------------------------------


def test_assign_and_unassign_by_our_paths_and_thingsboards(cloud, api, edge):
    asset = api.ok("POST", "/api/entities", {"type": "ASSET", "name": "tank"}, 201)["id"]
    rk1 = edge_id(api, "rk-1")
    out = api.ok("POST", f"/api/edge/{rk1}/asset/{asset}")
    assert (out["entity_type"], out["changed"]) == ("ASSET", True)
    assert received(edge).assetUpdateMsg[0].msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
    assert api.ok("DELETE", f"/api/edge/{rk1}/asset/{asset}")["changed"] is True
    assert received(edge).assetUpdateMsg[0].msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE
    assert api.ok("DELETE", f"/api/edges/rk-1/entities/{asset}")["changed"] is False
    assert api.ok("POST", "/api/edges/rk-2/entities/tank")["changed"] is True  # by name
    assert edge.nothing_within(0.3)  # rk-2's, not rk-1's
    assert names(api, "?edge=rk-2&type=ASSET") == [("ASSET", "tank")]
    status, out = api("POST", f"/api/edge/{rk1}/dashboard/{asset}")
    assert status == 404 and out["message"] == f"no dashboard {asset!r}"
    # a device moves: unassigned from its edge (DELETED), assigned to another
    device, _ = cloud.service.create_device("rk-1", "pump-1", token="tok-1")
    received(edge)
    assert api.ok("DELETE", f"/api/edges/rk-1/entities/{device.id}")["changed"] is True
    d = received(edge)
    assert d.deviceUpdateMsg[0].msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE
    assert (d.deviceUpdateMsg[0].idMSB, d.deviceUpdateMsg[0].idLSB) == uuid_halves(device.id)
    assert api.ok("POST", "/api/edges/rk-1/entities/pump-1?type=DEVICE")["changed"] is True
    assert lists(received(edge)) == {"deviceUpdateMsg": 1, "deviceProfileUpdateMsg": 1,
                                     "deviceCredentialsUpdateMsg": 1}


# -- relations -----------------------------------------------------------------------------------


def test_relations_added_listed_and_deleted_reach_an_edge_holding_both_ends(cloud, api, edge):
    asset = api.ok("POST", "/api/entities", {"type": "ASSET", "name": "boiler house"}, 201)["id"]
    device, _ = cloud.service.create_device("rk-1", "boiler", token="tok-b")
    received(edge)
    relation = {"from": typed("ASSET", asset), "to": typed("DEVICE", device.id),
                "type": "Contains", "typeGroup": "COMMON", "additionalInfo": None}
    assert api.ok("POST", "/api/v2/relation", relation, 201) == relation  # ThingsBoard's path
    assert edge.nothing_within(0.3)  # the edge does not hold the asset
    api.ok("POST", f"/api/edges/rk-1/entities/{asset}")
    d = received(edge)  # the asset, then its relation to what the edge holds
    assert lists(d) == {"assetProfileUpdateMsg": 1, "assetUpdateMsg": 1}
    d = received(edge)
    assert lists(d) == {"relationUpdateMsg": 1}
    assert json.loads(d.relationUpdateMsg[0].entity) == relation
    assert api.ok("GET", f"/api/relations?id={asset}") == [relation]
    assert api.ok("GET", "/api/relations?id=boiler") == [relation]  # by name, from its other end

    managed = {"from": "boiler house", "to": "boiler", "type": "Manages"}  # ends by name
    made = api.ok("POST", "/api/relations", managed, 201)
    assert made == {**relation, "type": "Manages"}
    d = received(edge)
    assert d.relationUpdateMsg[0].msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE
    query = (f"fromId={asset}&fromType=ASSET&toId={device.id}&toType=DEVICE"
             "&relationType=Manages&relationTypeGroup=COMMON")
    assert api.ok("DELETE", f"/api/relations?{query}")["deleted"] is True
    d = received(edge)
    assert d.relationUpdateMsg[0].msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE
    assert json.loads(d.relationUpdateMsg[0].entity)["type"] == "Manages"
    status, out = api("DELETE", f"/api/relation?{query}")
    assert status == 404 and out["message"].startswith("no relation ASSET")
    assert api.ok("GET", f"/api/relations?id={asset}") == [relation]
    for body, status, message in [
        ({**relation, "to": typed("DEVICE", uuid.uuid4())}, 404, "no device"),
        ({**relation, "type": ""}, 400, "relation: type must be text"),
        ({"from": asset, "to": "nobody", "type": "x"}, 404, "no entity 'nobody'"),
        ([relation], 400, "expected a relation"),
    ]:
        got, out = api("POST", "/api/relations", body)
        assert (got, message in out["message"]) == (status, True), out
    assert edge.nothing_within(0.3)


# -- the admin guard ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body"), [
    ("POST", "/api/entities", {"type": "ASSET", "name": "evil"}),
    ("POST", "/api/entities/import", {"file": {"title": "evil", "configuration": {}}}),
    ("POST", "/api/relations", {"from": "x", "to": "y", "type": "z"}),
    ("DELETE", "/api/entities/Tenant", None),
])
def test_cross_site_writes_are_refused_and_change_nothing(api, method, path, body):
    before = api.ok("GET", "/api/entities")
    data = json.dumps(body).encode() if body is not None else None
    for headers, status in [({"Content-Type": "text/plain", "Origin": "http://evil.example"}, 415),
                            ({"Origin": "http://evil.example"}, 403),
                            ({"Origin": "null"}, 403)]:
        got, out = api(method, path, raw=data, headers=headers)
        assert got == status, out
    assert api.ok("GET", "/api/entities") == before


def test_with_a_token_every_entity_route_needs_it(tmp_path):
    server = CloudServer(config(tmp_path / "cloud", token=TOKEN)).start()
    try:
        anonymous, bearer = Api(server.admin_port), Api(server.admin_port, TOKEN)
        assert anonymous("GET", "/api/entities")[0] == 401
        assert anonymous("POST", "/api/entities", {"type": "ASSET", "name": "a"})[0] == 401
        assert bearer("POST", "/api/entities", {"type": "ASSET", "name": "a"})[0] == 201
        assert [r["name"] for r in bearer.ok("GET", "/api/entities?type=ASSET")] == ["a"]
    finally:
        server.stop()
