"""CloudGraph (cloud/graph_store.py) on a real LMDB in tmp_path: creating, updating and deleting
entities of every kind, what is refused (unknown kind, no name, a taken name, a message too
large for an edge, a reference cycle, a missing reference), assignment to edges and the
downlinks each change queues, relations and the edges they go to, devices unassigned and
assigned again, and everything surviving a reopen."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.cloud.graph_store import CloudGraph
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.common import ids
from edge_sync.common.entity_graph import NULL_ID, RULE_CHAIN_INPUT_NODE, Ref
from edge_sync.common.wire import uuid_of
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.proto import edge_pb2

NOW = 1_764_921_600_000
CREATED = edge_pb2.ENTITY_CREATED_RPC_MESSAGE
UPDATED = edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
DELETED = edge_pb2.ENTITY_DELETED_RPC_MESSAGE


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CloudStore]:
    s = CloudStore(tmp_path / "cloud")
    yield s
    s.close()


@pytest.fixture
def service(store: CloudStore) -> CloudService:
    return CloudService(store)


@pytest.fixture
def graph(service: CloudService) -> CloudGraph:
    return service.graph


def edge_of(service: CloudService, rk: str) -> uuid.UUID:
    edge, _, _ = service.create_edge(rk, routing_key=rk, secret="s3cret")
    return edge.edge_id


def queue(store: CloudStore, edge_id: uuid.UUID) -> list[edge_pb2.DownlinkMsg]:
    """The edge's queued downlinks, decoded, in order."""
    return [edge_pb2.DownlinkMsg.FromString(q.payload)
            for q in store.queued_after(edge_id, 0, 10_000)]


def drain(store: CloudStore, edge_id: uuid.UUID) -> list[edge_pb2.DownlinkMsg]:
    """queue(), then emptied (as if the edge acknowledged everything)."""
    got = store.queued_after(edge_id, 0, 10_000)
    store.remove_downlinks(edge_id, [q.number for q in got])
    return [edge_pb2.DownlinkMsg.FromString(q.payload) for q in got]


def shape(msg: edge_pb2.DownlinkMsg) -> list[str]:
    return [fd.name for fd, _ in msg.ListFields()]


def typed(kind: str, value: uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


def relation(src: tuple[str, uuid.UUID], dst: tuple[str, uuid.UUID],
             rel_type: str = "Contains") -> dict[str, Any]:
    return {"from": typed(*src), "to": typed(*dst), "type": rel_type, "typeGroup": "COMMON"}


def chain_meta(chain: uuid.UUID, *targets: uuid.UUID) -> dict[str, Any]:
    nodes = [{"type": RULE_CHAIN_INPUT_NODE, "name": f"to {t}",
              "configuration": {"ruleChainId": str(t)}} for t in targets]
    return {"ruleChainId": typed("RULE_CHAIN", chain), "firstNodeIndex": 0 if nodes else None,
            "nodes": nodes,
            "connections": []}


# -- creating ----------------------------------------------------------------------------------------


def test_create_fills_id_created_time_tenant_and_owner_in_thingsboard_4x_form(store, graph):
    asset = graph.create_entity("ASSET", {"name": "pump-house", "label": "north"}, now_ms=NOW)
    body = asset.body()
    assert asset.id.version == 1 and body["id"] == typed("ASSET", asset.id)
    assert body["createdTime"] == asset.created_time == ids.unix_ms(asset.id)
    assert body["tenantId"] == typed("TENANT", store.tenant_id())
    assert body["customerId"] == typed("CUSTOMER", NULL_ID)
    default_profile = graph.entities(entity_type="ASSET_PROFILE", name="default")[0]
    assert body["assetProfileId"] == typed("ASSET_PROFILE", default_profile.id)
    assert (body["type"], body["label"], asset.edges) == ("default", "north", ())
    assert graph.entity(asset.id) == asset
    # a given id and createdTime are kept
    given = ids.time_based()
    dash = graph.create_entity("DASHBOARD", {"id": typed("DASHBOARD", given), "title": "Main",
                                             "createdTime": 5}, now_ms=NOW)
    assert (dash.id, dash.name, dash.created_time) == (given, "Main", 5)


def test_an_asset_of_a_new_type_gets_a_profile_of_that_name_queued_for_every_edge(
        store, service, graph):
    e1, e2 = edge_of(service, "rk-1"), edge_of(service, "rk-2")
    asset = graph.create_entity("ASSET", {"name": "p-1", "type": "pump house"}, now_ms=NOW)
    (profile,) = graph.entities(entity_type="ASSET_PROFILE", name="pump house")
    assert asset.body()["assetProfileId"] == typed("ASSET_PROFILE", profile.id)
    assert set(profile.edges) == {e1, e2}
    for edge_id in (e1, e2):
        (msg,) = queue(store, edge_id)
        assert shape(msg) == ["assetProfileUpdateMsg"]
        assert json.loads(msg.assetProfileUpdateMsg[0].entity)["name"] == "pump house"


def test_refused_unknown_kind_missing_name_and_taken_name(graph):
    with pytest.raises(BadRequest, match="unknown entity kind 'GADGET'"):
        graph.create_entity("GADGET", {"name": "x"}, now_ms=NOW)
    with pytest.raises(BadRequest, match="devices: create_device"):
        graph.create_entity("DEVICE", {"name": "x"}, now_ms=NOW)
    with pytest.raises(BadRequest, match="dashboard has no title"):
        graph.create_entity("DASHBOARD", {"name": "not a title"}, now_ms=NOW)
    with pytest.raises(BadRequest, match="user has no email"):
        graph.create_entity("USER", {"name": "bob"}, now_ms=NOW)
    graph.create_entity("CUSTOMER", {"title": "ACME"}, now_ms=NOW)
    with pytest.raises(Conflict, match="a customer named 'ACME' already exists"):
        graph.create_entity("CUSTOMER", {"title": "ACME"}, now_ms=NOW)
    graph.create_entity("ASSET", {"name": "ACME"}, now_ms=NOW)  # another kind: its own names
    assert [e.name for e in graph.entities(name="ACME")] == ["ACME", "ACME"]


def test_a_users_password_and_tokens_are_never_stored(graph):
    user = graph.create_entity("USER", {
        "email": "ops@example.com", "authority": "TENANT_ADMIN", "password": "hunter2",
        "activateToken": "a", "resetToken": "r",
        "additionalInfo": {"userPasswordHistory": {"1": "old"}, "lang": "en"}}, now_ms=NOW)
    assert "hunter2" not in user.json and "Token" not in user.json
    assert user.body()["additionalInfo"] == {"lang": "en"}


def test_an_entity_too_large_for_one_edge_message_is_refused_naming_size_and_limit(graph):
    config = {"widgets": {}, "blob": "x" * 4_300_000}
    with pytest.raises(BadRequest) as refused:
        graph.create_entity("DASHBOARD", {"title": "huge", "configuration": config}, now_ms=NOW)
    text = str(refused.value)
    assert text.startswith("dashboard 'huge' is 4,300,")
    assert "an edge accepts at most 4,194,304 in one message" in text
    assert graph.entities(entity_type="DASHBOARD") == []
    # just under the limit, the envelope counted: accepted
    fits = graph.max_message_bytes - 600
    ok = graph.create_entity("DASHBOARD", {"title": "big", "configuration": {"blob": "x" * fits}},
                             now_ms=NOW)
    assert len(ok.json) > 4_190_000


def test_a_reference_cycle_between_rule_chains_is_refused_and_named(graph):
    a = graph.create_entity("RULE_CHAIN", {"name": "A", "type": "EDGE"}, now_ms=NOW)
    b = graph.create_entity("RULE_CHAIN", {"name": "B", "type": "EDGE"}, now_ms=NOW)
    graph.create_entity("RULE_CHAIN_METADATA", chain_meta(a.id, b.id), now_ms=NOW)
    with pytest.raises(BadRequest) as refused:
        graph.update_entity("RULE_CHAIN_METADATA", b.id, chain_meta(b.id, a.id), now_ms=NOW)
    assert str(refused.value) == (
        f"reference cycle: rule chain 'B' ({b.id}) -> rule chain 'A' ({a.id}) -> "
        f"rule chain 'B' ({b.id})")
    assert graph.metadata(b.id) is None
    with pytest.raises(BadRequest, match="reference cycle: rule chain 'A'"):
        graph.set_metadata(chain_meta(a.id, a.id), now_ms=NOW)  # a chain forwarding to itself


def test_a_reference_to_an_entity_that_does_not_exist_is_refused(graph):
    missing = ids.time_based()
    with pytest.raises(BadRequest, match=f"entity view 'v' references asset {missing}, which "
                                         "does not exist"):
        graph.create_entity("ENTITY_VIEW", {"name": "v", "entityId": typed("ASSET", missing)},
                            now_ms=NOW)
    # a dashboard names a tenant widget type "tenant." + its fqn (ThingsBoard's UI)
    with pytest.raises(BadRequest, match=r"references widget type fqn gauge, which does not exist"):
        graph.create_entity("DASHBOARD", {"title": "d", "configuration": {"widgets": {
            "w": {"typeFullFqn": "tenant.gauge"}}}}, now_ms=NOW)
    graph.create_entity("WIDGET_TYPE", {"name": "Gauge", "fqn": "gauge"}, now_ms=NOW)
    dash = graph.create_entity("DASHBOARD", {"title": "d", "configuration": {"widgets": {
        "w": {"typeFullFqn": "tenant.gauge"}, "s": {"typeFullFqn": "system.cards.label"}}}},
        now_ms=NOW)
    assert dash.name == "d"


def test_the_cloud_own_entities_are_real_entities_with_their_ids(store, graph):
    kinds = [(e.entity_type, e.name) for e in graph.entities()]
    assert kinds == [("TENANT", "Tenant"), ("QUEUE", "Main"), ("QUEUE", "HighPriority"),
                     ("QUEUE", "SequentialByOriginator"), ("RULE_CHAIN", "Edge Root Rule Chain"),
                     ("DEVICE_PROFILE", "default"), ("ASSET_PROFILE", "default")]
    root = graph.root_chain_id()
    assert root is not None and json.loads(graph.metadata(root) or "{}")["ruleChainId"] == typed(
        "RULE_CHAIN", root)
    assert store.named_ids(["rule_chain:edge_root"], ids.time_based)["rule_chain:edge_root"] == root
    (tenant,) = graph.entities(entity_type="TENANT")
    assert tenant.id == store.tenant_id()
    with pytest.raises(Conflict, match="the tenant cannot be deleted"):
        graph.delete_entity("TENANT", tenant.id, now_ms=NOW)
    with pytest.raises(Conflict, match="the edge root rule chain cannot be deleted"):
        graph.delete_entity("RULE_CHAIN", root, now_ms=NOW)
    (default,) = graph.entities(entity_type="DEVICE_PROFILE", name="default")
    with pytest.raises(Conflict, match="the default device profile cannot be deleted"):
        graph.delete_entity("DEVICE_PROFILE", default.id, now_ms=NOW)


# -- assignment and its downlinks ------------------------------------------------------------------


def test_create_queues_nothing_assign_queues_added_with_profile_then_relations(
        store, service, graph):
    e1 = edge_of(service, "rk-1")
    dev, _ = service.create_device("rk-1", "pump-1", token="tok-1")
    drain(store, e1)
    asset = graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    graph.add_relation(relation(("ASSET", asset.id), ("DEVICE", dev.id)), now_ms=NOW)
    assert queue(store, e1) == []  # neither the creation nor the relation: not on the edge yet
    assert graph.assign(e1, "ASSET", asset.id, now_ms=NOW) is True
    added, rel = drain(store, e1)
    assert shape(added) == ["assetUpdateMsg", "assetProfileUpdateMsg"]
    msg = added.assetUpdateMsg[0]
    assert (msg.msgType, uuid_of(msg.idMSB, msg.idLSB)) == (CREATED, asset.id)
    assert json.loads(msg.entity) == asset.body()
    assert json.loads(added.assetProfileUpdateMsg[0].entity)["name"] == "default"
    assert shape(rel) == ["relationUpdateMsg"] and rel.relationUpdateMsg[0].msgType == CREATED
    assert json.loads(rel.relationUpdateMsg[0].entity)["to"] == typed("DEVICE", dev.id)
    assert graph.assign(e1, "ASSET", asset.id, now_ms=NOW) is False  # already there
    assert queue(store, e1) == []
    assert graph.entity(asset.id).edges == (e1,)  # type: ignore[union-attr]
    assert [e.id for e in graph.entities(entity_type="ASSET", edge_id=e1)] == [asset.id]


def test_updates_go_to_every_edge_holding_the_entity_and_unassign_sends_deleted(
        store, service, graph):
    e1, e2, e3 = (edge_of(service, rk) for rk in ("rk-1", "rk-2", "rk-3"))
    dash = graph.create_entity("DASHBOARD", {"title": "Ops"}, now_ms=NOW)
    for edge_id in (e1, e2):
        graph.assign(edge_id, "DASHBOARD", dash.id, now_ms=NOW)
        drain(store, edge_id)
    updated = graph.update_entity("DASHBOARD", dash.id, {"title": "Ops 2"}, now_ms=NOW + 1)
    assert updated.created_time == dash.created_time and updated.name == "Ops 2"
    for edge_id in (e1, e2):
        (msg,) = drain(store, edge_id)
        assert msg.dashboardUpdateMsg[0].msgType == UPDATED
        assert json.loads(msg.dashboardUpdateMsg[0].entity)["title"] == "Ops 2"
    assert queue(store, e3) == []
    graph.update_entity("DASHBOARD", dash.id, {"title": "Ops 2"}, now_ms=NOW + 2)  # no change
    assert queue(store, e1) == []
    assert graph.unassign(e1, "DASHBOARD", dash.id, now_ms=NOW) is True
    (gone,) = drain(store, e1)
    d = gone.dashboardUpdateMsg[0]
    assert (d.msgType, uuid_of(d.idMSB, d.idLSB), d.entity) == (DELETED, dash.id, "")
    assert graph.unassign(e1, "DASHBOARD", dash.id, now_ms=NOW) is False
    assert graph.entity(dash.id).edges == (e2,)  # type: ignore[union-attr]


def test_tenant_wide_kinds_are_on_every_edge_and_their_changes_queued_for_each(
        store, service, graph):
    e1, e2 = edge_of(service, "rk-1"), edge_of(service, "rk-2")
    widget = graph.create_entity("WIDGET_TYPE", {"name": "Gauge", "fqn": "gauge"},
                                 now_ms=NOW)
    assert set(widget.edges) == {e1, e2}
    assert graph.assign(e1, "WIDGET_TYPE", widget.id, now_ms=NOW) is False
    for edge_id in (e1, e2):
        (msg,) = drain(store, edge_id)
        assert msg.widgetTypeUpdateMsg[0].msgType == CREATED


def test_a_rule_chain_travels_with_its_metadata_and_metadata_changes_are_queued(
        store, service, graph):
    e1 = edge_of(service, "rk-1")
    chain = graph.create_entity("RULE_CHAIN", {"name": "Filters", "type": "EDGE"}, now_ms=NOW)
    graph.set_metadata(chain_meta(chain.id), now_ms=NOW)
    graph.assign(e1, "RULE_CHAIN", chain.id, now_ms=NOW)
    (added,) = drain(store, e1)
    assert shape(added) == ["ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg"]
    meta = json.loads(added.ruleChainMetadataUpdateMsg[0].entity)
    assert meta["ruleChainId"] == typed("RULE_CHAIN", chain.id)
    graph.update_entity("RULE_CHAIN_METADATA", chain.id, {**chain_meta(chain.id), "version": 2},
                        now_ms=NOW)
    (changed,) = drain(store, e1)
    assert shape(changed) == ["ruleChainMetadataUpdateMsg"]
    assert changed.ruleChainMetadataUpdateMsg[0].msgType == UPDATED


def test_relations_go_only_to_edges_holding_both_ends(store, service, graph):
    e1, e2 = edge_of(service, "rk-1"), edge_of(service, "rk-2")
    a = graph.create_entity("ASSET", {"name": "a"}, now_ms=NOW)
    b = graph.create_entity("ASSET", {"name": "b"}, now_ms=NOW)
    graph.assign(e1, "ASSET", a.id, now_ms=NOW)
    graph.assign(e1, "ASSET", b.id, now_ms=NOW)
    graph.assign(e2, "ASSET", a.id, now_ms=NOW)
    drain(store, e1), drain(store, e2)
    rel = relation(("ASSET", a.id), ("ASSET", b.id))
    graph.add_relation(rel, now_ms=NOW)
    (msg,) = drain(store, e1)
    assert json.loads(msg.relationUpdateMsg[0].entity) == {**rel, "additionalInfo": None}
    assert queue(store, e2) == []
    assert graph.relations(a.id) == graph.relations(b.id) == [{**rel, "additionalInfo": None}]
    graph.add_relation(rel, now_ms=NOW)  # the same again: nothing to send
    assert queue(store, e1) == []
    # b assigned to e2 later: its relation with a (already there) follows it
    graph.assign(e2, "ASSET", b.id, now_ms=NOW)
    assert [shape(m) for m in drain(store, e2)] == [
        ["assetUpdateMsg", "assetProfileUpdateMsg"], ["relationUpdateMsg"]]
    assert graph.delete_relation(Ref("ASSET", str(a.id)), Ref("ASSET", str(b.id)), "Contains",
                                 "COMMON", now_ms=NOW) is True
    for edge_id in (e1, e2):
        (msg,) = drain(store, edge_id)
        assert msg.relationUpdateMsg[0].msgType == DELETED
    assert graph.relations(a.id) == []
    assert graph.delete_relation(Ref("ASSET", str(a.id)), Ref("ASSET", str(b.id)), "Contains",
                                 "COMMON", now_ms=NOW) is False
    with pytest.raises(BadRequest, match="does not exist"):
        graph.add_relation(relation(("ASSET", a.id), ("ASSET", ids.time_based())), now_ms=NOW)
    with pytest.raises(BadRequest, match="from and to must be typed ids"):
        graph.add_relation({"from": typed("ASSET", a.id), "type": "x"}, now_ms=NOW)


def test_delete_cascades_to_entity_views_and_relations_and_refuses_what_is_in_use(
        store, service, graph):
    e1 = edge_of(service, "rk-1")
    profile = graph.create_entity("ASSET_PROFILE", {"name": "tank"}, now_ms=NOW)
    tank = graph.create_entity("ASSET", {"name": "t-1", "type": "tank"}, now_ms=NOW)
    other = graph.create_entity("ASSET", {"name": "t-2"}, now_ms=NOW)
    view = graph.create_entity("ENTITY_VIEW", {"name": "t-1 view",
                                               "entityId": typed("ASSET", tank.id)}, now_ms=NOW)
    graph.add_relation(relation(("ASSET", other.id), ("ASSET", tank.id)), now_ms=NOW)
    for kind, entity_id in (("ASSET", tank.id), ("ENTITY_VIEW", view.id), ("ASSET", other.id)):
        graph.assign(e1, kind, entity_id, now_ms=NOW)
    drain(store, e1)
    with pytest.raises(Conflict, match="asset profile 'tank' is used by asset 't-1'"):
        graph.delete_entity("ASSET_PROFILE", profile.id, now_ms=NOW)
    removed = graph.delete_entity("ASSET", tank.id, now_ms=NOW)
    assert removed == [Ref("ASSET", str(tank.id)), Ref("ENTITY_VIEW", str(view.id))]
    view_gone, tank_gone = drain(store, e1)
    assert view_gone.entityViewUpdateMsg[0].msgType == DELETED
    assert uuid_of(tank_gone.assetUpdateMsg[0].idMSB, tank_gone.assetUpdateMsg[0].idLSB) == tank.id
    assert graph.entity(tank.id) is None and graph.entity(view.id) is None
    assert graph.relations(other.id) == []
    assert graph.entities(name="t-1") == []  # the name is free again
    graph.create_entity("ASSET", {"name": "t-1"}, now_ms=NOW)
    assert graph.delete_entity("ASSET_PROFILE", profile.id, now_ms=NOW) == [
        Ref("ASSET_PROFILE", str(profile.id))]
    with pytest.raises(NotFound):
        graph.delete_entity("ASSET", tank.id, now_ms=NOW)


def test_a_device_profile_in_use_by_devices_cannot_be_deleted(service, graph):
    edge_of(service, "rk-1")
    service.create_device("rk-1", "m-1", type_="meter")
    (meter,) = graph.entities(entity_type="DEVICE_PROFILE", name="meter")
    with pytest.raises(Conflict, match=r"used by 1 device\(s\) of type 'meter' \('m-1'\)"):
        graph.delete_entity("DEVICE_PROFILE", meter.id, now_ms=NOW)


def test_a_device_unassigned_from_its_edge_is_kept_and_may_be_assigned_again(
        store, service, graph):
    e1, e2 = edge_of(service, "rk-1"), edge_of(service, "rk-2")
    dev, _ = service.create_device("rk-1", "pump-1", token="tok-1")
    drain(store, e1)
    assert graph.unassign(e2, "DEVICE", dev.id, now_ms=NOW) is False  # not its edge
    assert graph.unassign(e1, "DEVICE", dev.id, now_ms=NOW) is True
    (gone,) = drain(store, e1)
    d = gone.deviceUpdateMsg[0]
    assert (d.msgType, uuid_of(d.idMSB, d.idLSB)) == (DELETED, dev.id)
    kept = store.device(dev.id)
    assert kept is not None and kept.token == "tok-1" and kept.edge_id.int == 0
    assert store.devices_of_edge(e1) == []
    assert graph.assign(e2, "DEVICE", dev.id, now_ms=NOW) is True
    (added,) = drain(store, e2)
    assert shape(added) == ["deviceUpdateMsg", "deviceProfileUpdateMsg",
                            "deviceCredentialsUpdateMsg"]
    assert [d.id for d in store.devices_of_edge(e2)] == [dev.id]
    with pytest.raises(Conflict, match="a device is on one edge"):
        graph.assign(e1, "DEVICE", dev.id, now_ms=NOW)


def entries(msg: edge_pb2.DownlinkMsg) -> list[tuple[str, int, uuid.UUID]]:
    """(DownlinkMsg list, msgType, entity id) of each entry of a graph downlink; a rule chain's
    metadata by its chain's id, a relation by the nil id."""
    out = []
    for fd, value in msg.ListFields():
        for entry in value:
            if fd.name == "ruleChainMetadataUpdateMsg":
                entity_id = uuid.UUID(json.loads(entry.entity)["ruleChainId"]["id"])
            elif fd.name == "relationUpdateMsg":
                entity_id = uuid.UUID(int=0)
            else:
                entity_id = uuid_of(entry.idMSB, entry.idLSB)
            out.append((fd.name, entry.msgType, entity_id))
    return out


def view_of(kind: str, target: uuid.UUID, name: str) -> dict[str, Any]:
    return {"name": name, "type": "zone", "entityId": typed(kind, target)}


@pytest.fixture
def unassign_lines() -> Iterator[list[Any]]:
    """The log records of unassignments (action UNASSIGNED_FROM_EDGE)."""
    got: list[Any] = []
    sink = logger.add(lambda m: got.append(m.record), level="INFO",
                      filter=lambda r: r["extra"].get("action") == "UNASSIGNED_FROM_EDGE")
    yield got
    logger.remove(sink)


def test_unassigning_an_asset_or_a_device_takes_their_entity_views_off_that_edge_too(
        store, service, graph, unassign_lines):
    """The edge's delete of an asset or device removes its entity views (its cascade): the
    cloud unassigns them from that edge too, DELETED queued for each before the entity's, each
    logged, so no later full sync sends them again to wait there for ever. Other edges keep
    theirs."""
    e1, e2 = edge_of(service, "rk-1"), edge_of(service, "rk-2")
    dev, _ = service.create_device("rk-1", "pump-1", token="tok-1")
    house = graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    on_both = graph.create_entity("ENTITY_VIEW", view_of("ASSET", house.id, "house view"),
                                  now_ms=NOW)
    on_e2 = graph.create_entity("ENTITY_VIEW", view_of("ASSET", house.id, "house view 2"),
                                now_ms=NOW)
    pump_view = graph.create_entity("ENTITY_VIEW", view_of("DEVICE", dev.id, "pump view"),
                                    now_ms=NOW)
    for edge_id, kind, entity_id in ((e1, "ASSET", house.id), (e2, "ASSET", house.id),
                                     (e1, "ENTITY_VIEW", on_both.id),
                                     (e2, "ENTITY_VIEW", on_both.id),
                                     (e2, "ENTITY_VIEW", on_e2.id),
                                     (e1, "ENTITY_VIEW", pump_view.id)):
        assert graph.assign(edge_id, kind, entity_id, now_ms=NOW) is True
    drain(store, e1), drain(store, e2)

    assert graph.unassign(e1, "ASSET", house.id, now_ms=NOW) is True
    assert [entries(m) for m in drain(store, e1)] == [
        [("entityViewUpdateMsg", DELETED, on_both.id)], [("assetUpdateMsg", DELETED, house.id)]]
    assert queue(store, e2) == []
    assert [graph.entity(i).edges for i in (house.id, on_both.id, on_e2.id)] == [(e2,)] * 3
    assert [(r["extra"]["entity_type"], r["extra"]["entity_id"], r["extra"]["edge_id"],
             r["message"]) for r in unassign_lines] == [
        ("ENTITY_VIEW", str(on_both.id), str(e1),
         f"entity unassigned from an edge with ASSET {house.id} it references"),
        ("ASSET", str(house.id), str(e1), "entity unassigned from an edge")]
    assert unassign_lines[1]["extra"]["dependants"] == 1
    unassign_lines.clear()

    assert graph.unassign(e1, "DEVICE", dev.id, now_ms=NOW) is True
    assert [entries(m) for m in drain(store, e1)] == [
        [("entityViewUpdateMsg", DELETED, pump_view.id)], [("deviceUpdateMsg", DELETED, dev.id)]]
    assert graph.entity(pump_view.id).edges == ()
    assert [(r["extra"]["entity_type"], r["message"]) for r in unassign_lines] == [
        ("ENTITY_VIEW", f"entity unassigned from an edge with DEVICE {dev.id} it references"),
        ("DEVICE", "device unassigned from its edge")]
    assert not [k for k, _, _ in graph.assignment(e1) if k in ("ENTITY_VIEW", "ASSET", "DEVICE")]


def test_unassigning_a_rule_chain_takes_the_chains_forwarding_to_it_off_that_edge(
        store, service, graph, unassign_lines):
    """A chain whose metadata forwards to a chain leaving the edge goes with it (the edge's
    delete of the target removes that metadata, and a chain is of no use without it), and the
    chains forwarding to that one in turn; dependants first."""
    e1 = edge_of(service, "rk-1")
    target = graph.create_entity("RULE_CHAIN", {"name": "Target", "type": "EDGE"}, now_ms=NOW)
    middle = graph.create_entity("RULE_CHAIN", {"name": "Middle", "type": "EDGE"}, now_ms=NOW)
    first = graph.create_entity("RULE_CHAIN", {"name": "First", "type": "EDGE"}, now_ms=NOW)
    alone = graph.create_entity("RULE_CHAIN", {"name": "Alone", "type": "EDGE"}, now_ms=NOW)
    graph.set_metadata(chain_meta(middle.id, target.id), now_ms=NOW)
    graph.set_metadata(chain_meta(first.id, middle.id), now_ms=NOW)
    for chain in (target, middle, first, alone):
        graph.assign(e1, "RULE_CHAIN", chain.id, now_ms=NOW)
    drain(store, e1)
    assert graph.unassign(e1, "RULE_CHAIN", target.id, now_ms=NOW) is True
    assert [entries(m) for m in drain(store, e1)] == [
        [("ruleChainUpdateMsg", DELETED, first.id)], [("ruleChainUpdateMsg", DELETED, middle.id)],
        [("ruleChainUpdateMsg", DELETED, target.id)]]
    assert [(r["extra"]["entity_id"], r["message"]) for r in unassign_lines] == [
        (str(first.id), f"entity unassigned from an edge with RULE_CHAIN {middle.id} it references"),
        (str(middle.id), f"entity unassigned from an edge with RULE_CHAIN {target.id} it references"),
        (str(target.id), "entity unassigned from an edge")]
    assert [e.id for e in graph.entities(entity_type="RULE_CHAIN", edge_id=e1)] == [
        graph.root_chain_id(), alone.id]


def test_assigning_what_an_entity_on_the_edge_waits_for_sends_that_entity_again(
        store, service, graph):
    """An entity view assigned to an edge without its asset is left out of that edge's full
    syncs (what it references is not there): assigning the asset queues it again, with its
    relations, once all it references is on the edge; so does a chain's metadata forwarding to
    a chain just assigned."""
    e1 = edge_of(service, "rk-1")
    dev, _ = service.create_device("rk-1", "pump-1")
    house = graph.create_entity("ASSET", {"name": "house"}, now_ms=NOW)
    view = graph.create_entity("ENTITY_VIEW", view_of("ASSET", house.id, "house view"),
                               now_ms=NOW)
    graph.add_relation(relation(("ASSET", house.id), ("ENTITY_VIEW", view.id)), now_ms=NOW)
    graph.add_relation(relation(("ENTITY_VIEW", view.id), ("DEVICE", dev.id)), now_ms=NOW)
    graph.assign(e1, "ENTITY_VIEW", view.id, now_ms=NOW)
    drain(store, e1)
    assert graph.assign(e1, "ASSET", house.id, now_ms=NOW) is True
    got = drain(store, e1)
    (default,) = graph.entities(entity_type="ASSET_PROFILE", name="default")
    assert [entries(m) for m in got] == [
        [("assetUpdateMsg", CREATED, house.id), ("assetProfileUpdateMsg", CREATED, default.id)],
        [("relationUpdateMsg", CREATED, uuid.UUID(int=0))],
        [("entityViewUpdateMsg", CREATED, view.id)],
        [("relationUpdateMsg", CREATED, uuid.UUID(int=0))]]
    assert [(json.loads(m.relationUpdateMsg[0].entity)["from"]["id"],
             json.loads(m.relationUpdateMsg[0].entity)["to"]["id"]) for m in (got[1], got[3])] == [
        (str(house.id), str(view.id)), (str(view.id), str(dev.id))]
    # a chain forwarding to one not on the edge: its metadata again once that one comes
    target = graph.create_entity("RULE_CHAIN", {"name": "Target", "type": "EDGE"}, now_ms=NOW)
    chain = graph.create_entity("RULE_CHAIN", {"name": "Chain", "type": "EDGE"}, now_ms=NOW)
    graph.set_metadata(chain_meta(chain.id, target.id), now_ms=NOW)
    graph.assign(e1, "RULE_CHAIN", chain.id, now_ms=NOW)
    drain(store, e1)
    graph.assign(e1, "RULE_CHAIN", target.id, now_ms=NOW)
    assert [entries(m) for m in drain(store, e1)] == [
        [("ruleChainUpdateMsg", CREATED, target.id)],
        [("ruleChainMetadataUpdateMsg", CREATED, chain.id)]]
    # an asset whose view is not on the edge sends nothing more
    other = graph.create_entity("ASSET", {"name": "shed"}, now_ms=NOW)
    graph.create_entity("ENTITY_VIEW", view_of("ASSET", other.id, "shed view"), now_ms=NOW)
    graph.assign(e1, "ASSET", other.id, now_ms=NOW)
    assert [entries(m)[0] for m in drain(store, e1)] == [("assetUpdateMsg", CREATED, other.id)]


def test_a_widgets_bundle_is_named_by_its_title_as_thingsboards(graph):
    """ThingsBoard's WidgetsBundle.getName() is its title (the JSON's name a read-only copy):
    a bundle with only a title is accepted, named by it, and its name follows the title."""
    bundle = graph.create_entity("WIDGETS_BUNDLE", {"title": "Plant widgets", "alias": "plant"},
                                 now_ms=NOW)
    assert (bundle.name, bundle.body()["title"], bundle.body()["name"]) == (
        "Plant widgets", "Plant widgets", "Plant widgets")
    assert [b.id for b in graph.entities(entity_type="WIDGETS_BUNDLE", name="Plant widgets")] \
        == [bundle.id]
    changed = graph.update_entity("WIDGETS_BUNDLE", bundle.id,
                                  {"title": "Gauges", "name": "ignored", "alias": "plant"},
                                  now_ms=NOW)
    assert (changed.name, changed.body()["name"]) == ("Gauges", "Gauges")
    assert graph.entities(entity_type="WIDGETS_BUNDLE", name="Plant widgets") == []
    with pytest.raises(Conflict, match="a widgets bundle named 'Gauges' already exists"):
        graph.create_entity("WIDGETS_BUNDLE", {"title": "Gauges"}, now_ms=NOW)
    named = graph.create_entity("WIDGETS_BUNDLE", {"name": "By name"}, now_ms=NOW)
    assert named.name == "By name"  # a name alone is still a name
    with pytest.raises(BadRequest, match="widgets bundle has no name"):
        graph.create_entity("WIDGETS_BUNDLE", {"alias": "x"}, now_ms=NOW)


THERMOSTAT_ALARMS = [{"id": "hot", "alarmType": "High temperature", "propagate": False,
                      "createRules": {"MAJOR": {"condition": {"condition": [{
                          "key": {"type": "TIME_SERIES", "key": "temperature"},
                          "valueType": "NUMERIC", "predicate": {
                              "type": "NUMERIC", "operation": "GREATER",
                              "value": {"defaultValue": 30}}}]}}}}]


def profile_body(name: str, description: str) -> dict[str, Any]:
    """A device profile of the operator's: a description and alarm rules (what a profile made
    from a device type lacks)."""
    return {"name": name, "description": description, "type": "DEFAULT",
            "transportType": "DEFAULT", "provisionType": "DISABLED", "default": False,
            "profileData": {"configuration": {"type": "DEFAULT"},
                            "transportConfiguration": {"type": "DEFAULT"},
                            "alarms": THERMOSTAT_ALARMS}}


def test_a_device_downlink_carries_the_graphs_device_profile_as_a_full_sync_sends_it(
        store, service, graph):
    e1 = edge_of(service, "rk-1")
    profile = graph.create_entity("DEVICE_PROFILE", profile_body("thermostat", "Hall 3"),
                                  now_ms=NOW)
    (profile_added,) = drain(store, e1)  # on every edge: its ADDED
    dev, numbers = service.create_device("rk-1", "t-1", type_="thermostat", token="tok-1")
    (created,) = drain(store, e1)
    assert len(numbers) == 1
    assert shape(created) == ["deviceUpdateMsg", "deviceProfileUpdateMsg",
                              "deviceCredentialsUpdateMsg"]
    sent = created.deviceProfileUpdateMsg[0]
    stored = graph.entity(profile.id)
    assert stored is not None
    assert (sent.msgType, uuid_of(sent.idMSB, sent.idLSB), sent.entity) == (
        CREATED, profile.id, stored.json)
    assert sent.entity == profile_added.deviceProfileUpdateMsg[0].entity
    assert json.loads(sent.entity)["profileData"]["alarms"] == THERMOSTAT_ALARMS
    assert json.loads(created.deviceUpdateMsg[0].entity)["deviceProfileId"] == typed(
        "DEVICE_PROFILE", profile.id)
    # what the full sync sends of the profile and the device: the same JSON
    synced = {(kind, entity_id): text for kind, entity_id, text in graph.assignment(e1)}
    assert synced[("DEVICE_PROFILE", profile.id)] == sent.entity
    assert synced[("DEVICE", dev.id)] == created.deviceUpdateMsg[0].entity

    # the profile changed: a device assigned again carries the change, as stored
    graph.update_entity("DEVICE_PROFILE", profile.id, profile_body("thermostat", "Hall 4"),
                        now_ms=NOW + 1)
    drain(store, e1)
    assert graph.unassign(e1, "DEVICE", dev.id, now_ms=NOW) is True
    drain(store, e1)
    assert graph.assign(e1, "DEVICE", dev.id, now_ms=NOW) is True
    (again,) = drain(store, e1)
    stored = graph.entity(profile.id)
    assert stored is not None and json.loads(stored.json)["description"] == "Hall 4"
    assert again.deviceProfileUpdateMsg[0].entity == stored.json


def test_a_device_of_a_new_type_makes_its_profile_and_carries_it_as_stored(store, service, graph):
    e1 = edge_of(service, "rk-1")
    _, numbers = service.create_device("rk-1", "m-1", type_="meter")
    (created,) = drain(store, e1)
    (meter,) = graph.entities(entity_type="DEVICE_PROFILE", name="meter")
    sent = created.deviceProfileUpdateMsg[0]
    assert (uuid_of(sent.idMSB, sent.idLSB), sent.entity) == (meter.id, meter.json)
    assert len(numbers) == 1 and queue(store, e1) == []


def test_create_entities_is_all_or_nothing_and_assigns(store, service, graph):
    e1 = edge_of(service, "rk-1")
    with pytest.raises(Conflict):
        graph.create_entities([("ASSET", {"name": "x"}), ("ASSET", {"name": "x"})], now_ms=NOW,
                              edge_id=e1)
    assert graph.entities(entity_type="ASSET") == [] and queue(store, e1) == []
    made = graph.create_entities([("ASSET", {"name": "x"}), ("ASSET", {"name": "y"})],
                                 now_ms=NOW, edge_id=e1)
    assert [m.edges for m in made] == [(e1,), (e1,)]
    assert len(queue(store, e1)) == 2


def test_the_graph_survives_a_reopen_and_reads_in_a_read_only_open(tmp_path):
    path = tmp_path / "cloud"
    store = CloudStore(path)
    service = CloudService(store)
    e1 = edge_of(service, "rk-1")
    a = service.graph.create_entity("ASSET", {"name": "a"}, now_ms=NOW)
    b = service.graph.create_entity("ASSET", {"name": "b"}, now_ms=NOW)
    service.graph.assign(e1, "ASSET", a.id, now_ms=NOW)
    service.graph.add_relation(relation(("ASSET", a.id), ("ASSET", b.id)), now_ms=NOW)
    before = service.graph.entities()
    store.close()
    again = CloudStore(path)
    try:
        assert again.graph.entities() == before  # the defaults were not made twice
        assert again.graph.entity(a.id).edges == (e1,)  # type: ignore[union-attr]
        assert len(again.graph.relations(b.id)) == 1
    finally:
        again.close()
    readonly = CloudStore(path, readonly=True)
    try:
        assert readonly.graph.entities() == before
        with pytest.raises(Exception, match="read-only"):
            readonly.graph.create_entity("ASSET", {"name": "c"}, now_ms=NOW)
    finally:
        readonly.close()


def test_a_customer_user_is_only_on_the_edges_holding_its_customer(store, service, graph):
    """ThingsBoard's EdgeSyncCursor sends tenant admins to every edge and a customer's users
    (CustomerUsersEdgeEventFetcher) only to an edge of that customer: another customer's user
    e-mails never reach an edge."""
    e1, e2 = edge_of(service, "rk-1"), edge_of(service, "rk-2")
    acme = graph.create_entity("CUSTOMER", {"title": "ACME"}, now_ms=NOW)
    assert graph.assign(e1, "CUSTOMER", acme.id, now_ms=NOW) is True
    drain(store, e1)
    admin = graph.create_entity("USER", {"email": "admin@example.com", "authority": "TENANT_ADMIN",
                                         "customerId": typed("CUSTOMER", NULL_ID)}, now_ms=NOW)
    user = graph.create_entity("USER", {"email": "bob@acme.com", "authority": "CUSTOMER_USER",
                                        "customerId": typed("CUSTOMER", acme.id)}, now_ms=NOW)
    assert set(admin.edges) == {e1, e2}
    assert user.edges == (e1,)
    assert graph.assign(e2, "USER", user.id, now_ms=NOW) is False  # it follows its customer
    assert [m.userUpdateMsg[0].entity for m in drain(store, e1)] == [admin.json, user.json]
    assert [m.userUpdateMsg[0].entity for m in drain(store, e2)] == [admin.json]
    assert [e.name for e in graph.entities(entity_type="USER", edge_id=e2)] == ["admin@example.com"]
    assert [(k, i) for k, i, _ in graph.assignment(e2) if k == "USER"] == [("USER", admin.id)]
    assert [(k, i) for k, i, _ in graph.assignment(e1) if k == "USER"] == [
        ("USER", admin.id), ("USER", user.id)]
    # the customer assigned to e2: its user comes along; unassigned: it leaves with it
    assert graph.assign(e2, "CUSTOMER", acme.id, now_ms=NOW) is True
    assert [shape(m) for m in drain(store, e2)] == [["customerUpdateMsg"], ["userUpdateMsg"]]
    assert graph.unassign(e2, "CUSTOMER", acme.id, now_ms=NOW) is True
    got = drain(store, e2)
    assert [(shape(m), m.ListFields()[0][1][0].msgType) for m in got] == [
        (["userUpdateMsg"], DELETED), (["customerUpdateMsg"], DELETED)]
    # a user moved to another customer leaves the edges of the first
    other = graph.create_entity("CUSTOMER", {"title": "Other"}, now_ms=NOW)
    graph.update_entity("USER", user.id, {"email": "bob@acme.com", "authority": "CUSTOMER_USER",
                                          "customerId": typed("CUSTOMER", other.id)}, now_ms=NOW)
    (moved,) = drain(store, e1)
    assert (moved.userUpdateMsg[0].msgType, uuid_of(moved.userUpdateMsg[0].idMSB,
                                                    moved.userUpdateMsg[0].idLSB)) == (DELETED, user.id)
    assert graph.entity(user.id).edges == ()  # type: ignore[union-attr]


def test_a_widget_type_fqn_taken_by_another_widget_type_is_refused(store, graph):
    """ThingsBoard keeps a widget type's fqn unique per tenant: a second one would take the
    fqn index (what dashboards' references resolve through) from the first."""
    gauge = graph.create_entity("WIDGET_TYPE", {"name": "Gauge", "fqn": "gauge"}, now_ms=NOW)
    dial = graph.create_entity("WIDGET_TYPE", {"name": "Dial", "fqn": "dial"}, now_ms=NOW)
    with pytest.raises(Conflict) as created:
        graph.create_entity("WIDGET_TYPE", {"name": "Gauge 2", "fqn": "gauge"}, now_ms=NOW)
    assert str(created.value) == f"a widget type with fqn 'gauge' already exists ({gauge.id})"
    with pytest.raises(Conflict) as updated:
        graph.update_entity("WIDGET_TYPE", dial.id, {"name": "Dial", "fqn": "gauge"}, now_ms=NOW)
    assert str(updated.value) == f"a widget type with fqn 'gauge' already exists ({gauge.id})"
    assert [e.name for e in graph.entities(entity_type="WIDGET_TYPE")] == ["Gauge", "Dial"]
    # its own fqn kept on update is fine; the index still names each
    graph.update_entity("WIDGET_TYPE", gauge.id, {"name": "Gauge", "fqn": "gauge",
                                                 "description": "x"}, now_ms=NOW)
    with store.lmdb.read() as txn:
        assert graph._named(txn, "WIDGET_TYPE_FQN", "gauge") == gauge.id
        assert graph._named(txn, "WIDGET_TYPE_FQN", "dial") == dial.id


def test_a_user_created_or_updated_keeps_no_credential_the_import_would_drop(store, graph):
    """One list of a user's secret fields (tb_entities.SECRET_USER_FIELDS) for the import and
    for create / update: credentials and userCredentials were stored by create and update."""
    from edge_sync.cloud import graph_keys, tb_import

    assert graph_keys._USER_SECRETS is tb_import.SECRET_USER_FIELDS
    secrets = {"password": "p", "credentials": {"password": "c"},
               "userCredentials": {"activateToken": "t"}, "activateToken": "a", "resetToken": "r"}
    user = graph.create_entity("USER", {"email": "ops@example.com", "authority": "TENANT_ADMIN",
                                        **secrets}, now_ms=NOW)
    assert sorted(user.body()) == ["authority", "createdTime", "customerId", "email", "id",
                                   "tenantId"]
    updated = graph.update_entity("USER", user.id, {"email": "ops@example.com",
                                                    "authority": "TENANT_ADMIN", "lang": "en",
                                                    **secrets}, now_ms=NOW)
    assert sorted(updated.body()) == ["authority", "createdTime", "customerId", "email", "id",
                                      "lang", "tenantId"]
    assert graph.entity(user.id).json == updated.json  # type: ignore[union-attr]


def test_rule_chain_metadata_of_the_wrong_shape_is_refused_naming_where(store, graph):
    """set_metadata checks the metadata as the import does (tb_import.check_metadata): nodes: 5
    was a TypeError (a 500 through the admin API), nodes: [5] or a node whose configuration is
    not an object was stored."""
    chain = graph.create_entity("RULE_CHAIN", {"name": "C", "type": "EDGE"}, now_ms=NOW)
    node = {"type": "org.thingsboard.rule.engine.filter.TbJsFilterNode", "name": "f",
            "configuration": {}}
    cases = [
        ({"nodes": 5}, "rule chain 'C' metadata.nodes: expected a list, got a number"),
        ({"nodes": [5]}, "rule chain 'C' metadata.nodes[0]: expected a JSON object, got a number"),
        ({"nodes": [{**node, "configuration": "x"}]},
         "rule chain 'C' metadata.nodes[0].configuration: expected a JSON object, got text"),
        ({"nodes": [{**node, "name": None}]}, "rule chain 'C' metadata.nodes[0].name: "
                                              "expected text of 1 to 255 bytes"),
        ({"nodes": [node], "connections": {}},
         "rule chain 'C' metadata.connections: expected a list, got an object"),
        ({"nodes": [node], "connections": [{"fromIndex": 0, "toIndex": 1, "type": "True"}]},
         "rule chain 'C' metadata.connections[0].toIndex: 1 names no node (there are 1)"),
        ({"nodes": [node], "firstNodeIndex": 3},
         "rule chain 'C' metadata.firstNodeIndex: 3 names no node (there are 1)"),
    ]
    for meta, message in cases:
        with pytest.raises(BadRequest) as refused:
            graph.set_metadata({"ruleChainId": typed("RULE_CHAIN", chain.id), **meta}, now_ms=NOW)
        assert str(refused.value) == message
        with pytest.raises(BadRequest):
            graph.update_entity("RULE_CHAIN_METADATA", chain.id, meta, now_ms=NOW)
    assert graph.metadata(chain.id) is None
    ok = graph.set_metadata({"ruleChainId": typed("RULE_CHAIN", chain.id), "nodes": [node],
                             "connections": [], "firstNodeIndex": 0}, now_ms=NOW)
    assert json.loads(ok.json)["nodes"] == [node]


def test_an_entity_view_needs_the_entity_it_shows(graph):
    for body in ({"name": "v"}, {"name": "v", "entityId": None},
                 {"name": "v", "entityId": typed("DEVICE", NULL_ID)}):
        with pytest.raises(BadRequest) as refused:
            graph.create_entity("ENTITY_VIEW", body, now_ms=NOW)
        assert str(refused.value) == ("entity view 'v': entityId: expected the device or asset "
                                      "it shows, as a typed id")
    asset = graph.create_entity("ASSET", {"name": "a"}, now_ms=NOW)
    view = graph.create_entity("ENTITY_VIEW", {"name": "v", "entityId": typed("ASSET", asset.id)},
                               now_ms=NOW)
    with pytest.raises(BadRequest):
        graph.update_entity("ENTITY_VIEW", view.id, {"name": "v"}, now_ms=NOW)
    assert [e.name for e in graph.entities(entity_type="ENTITY_VIEW")] == ["v"]


def test_a_rule_chain_and_metadata_too_large_together_travel_as_two_downlinks(store, service,
                                                                              graph):
    """Each fits an edge message, both together do not: the chain's ADDED goes alone and its
    metadata follows in a second downlink (it was dropped, and the edge never had it)."""
    e1 = edge_of(service, "rk-1")
    chain = graph.create_entity("RULE_CHAIN", {"name": "Big", "type": "EDGE",
                                               "additionalInfo": {"notes": "x" * 3_000_000}},
                                now_ms=NOW)
    node = {"type": "org.thingsboard.rule.engine.filter.TbJsFilterNode", "name": "f",
            "configuration": {"script": "y" * 3_000_000}}
    meta = graph.set_metadata({"ruleChainId": typed("RULE_CHAIN", chain.id), "nodes": [node],
                               "connections": [], "firstNodeIndex": 0}, now_ms=NOW)
    assert graph.assign(e1, "RULE_CHAIN", chain.id, now_ms=NOW) is True
    got = drain(store, e1)
    assert [shape(m) for m in got] == [["ruleChainUpdateMsg"], ["ruleChainMetadataUpdateMsg"]]
    assert [m.ByteSize() <= graph.max_message_bytes for m in got] == [True, True]
    assert got[0].ruleChainUpdateMsg[0].entity == chain.json
    sent = got[1].ruleChainMetadataUpdateMsg[0]
    assert (sent.msgType, sent.entity) == (CREATED, meta.json)
