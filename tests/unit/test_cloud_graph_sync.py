"""The full sync of the entity graph (cloud/full_sync.py), without a network: everything on the
edge exactly once and nothing else, in ThingsBoard's order, packed within the message bound (an
entity near 4 MB alone), kinds in a pack only where a ThingsBoard Edge's apply order agrees,
SyncCompletedMsg alone and last; a refused pack split entry by entry; relation and rule chain
metadata requests answered from the graph."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.cloud import downlink_batch, downlinks, full_sync, requests
from edge_sync.cloud.graph_store import CloudEntity
from edge_sync.cloud.records import EdgeRecord
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.common import entity_graph, ids
from edge_sync.common.entity_graph import RULE_CHAIN_INPUT_NODE
from edge_sync.common.wire import uuid_halves, uuid_of
from edge_sync.proto import edge_pb2

NOW = 1_764_921_600_000
LIMIT = 4 * 1024 * 1024
RANK = {k.downlink_field: k.sync_rank for k in entity_graph.KINDS}
RANK["entityData"] = 100  # the devices' shared attributes, after every entity
RANK["syncCompletedMsg"] = 101


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CloudStore]:
    s = CloudStore(tmp_path / "cloud")
    yield s
    s.close()


@pytest.fixture
def service(store: CloudStore) -> CloudService:
    return CloudService(store)


def typed(kind: str, value: uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


def entries_of(msg: edge_pb2.DownlinkMsg) -> list[tuple[str, Any]]:
    """(field, entry) of a downlink, in the order our edge applies them (sync rank)."""
    out = []
    for fd, value in msg.ListFields():
        if fd.is_repeated:
            out += [(fd.name, entry) for entry in value]
        else:
            out.append((fd.name, value))
    return sorted(out, key=lambda e: RANK.get(e[0], -1))


def entity_id_of(field: str, entry: Any) -> uuid.UUID:
    if field == "entityData":
        return uuid_of(entry.entityIdMSB, entry.entityIdLSB)
    body = json.loads(entry.entity)
    if field == "ruleChainMetadataUpdateMsg":
        return uuid.UUID(body["ruleChainId"]["id"])
    if field == "deviceCredentialsUpdateMsg":
        return uuid.UUID(body["deviceId"]["id"])
    if field == "relationUpdateMsg":
        return uuid.uuid5(uuid.NAMESPACE_OID, entry.entity)
    return uuid.UUID(body["id"]["id"])


def build(service: CloudService) -> tuple[EdgeRecord, dict[str, set[uuid.UUID]]]:
    """An edge with some of everything, and what of it must (not) reach the edge."""
    graph = service.graph
    edge, _, _ = service.create_edge("e-1", routing_key="rk-1", secret="s3cret")
    service.create_edge("e-2", routing_key="rk-2", secret="s3cret")
    on: dict[str, set[uuid.UUID]] = {"on": set(), "off": set()}

    def make(kind: str, body: dict[str, Any], assign: bool = True) -> uuid.UUID:
        made = graph.create_entity(kind, body, now_ms=NOW)
        if assign and kind not in ("USER", "WIDGET_TYPE", "WIDGETS_BUNDLE", "ASSET_PROFILE"):
            graph.assign(edge.edge_id, kind, made.id, now_ms=NOW)
        (on["on"] if assign else on["off"]).add(made.id)
        return made.id

    make("USER", {"email": "a@example.com", "authority": "TENANT_ADMIN"})
    make("WIDGET_TYPE", {"name": "Gauge", "fqn": "gauge"})
    make("WIDGETS_BUNDLE", {"title": "Mine", "name": "mine"})
    make("CUSTOMER", {"title": "ACME"})
    make("CUSTOMER", {"title": "Other"}, assign=False)
    make("DASHBOARD", {"title": "Ops", "configuration": {"widgets": {
        "g": {"typeFullFqn": "tenant.gauge"}}}})
    make("ASSET_PROFILE", {"name": "tank"})
    chain = make("RULE_CHAIN", {"name": "Filters", "type": "EDGE"})
    graph.set_metadata({"ruleChainId": typed("RULE_CHAIN", chain), "nodes": [],
                        "connections": []}, now_ms=NOW)
    off_chain = make("RULE_CHAIN", {"name": "Elsewhere", "type": "EDGE"}, assign=False)
    tanks = [make("ASSET", {"name": f"tank-{i}", "type": "tank"}) for i in range(250)]
    away = make("ASSET", {"name": "away"}, assign=False)
    view = make("ENTITY_VIEW", {"name": "tank view", "entityId": typed("ASSET", tanks[0])})
    devices = []
    for i in range(120):
        dev, _ = service.create_device("rk-1", f"dev-{i}", type_="meter" if i % 2 else None,
                                       token=f"tok-{i}")
        devices.append(dev.id)
        on["on"].add(dev.id)
    service.set_attributes(str(devices[0]), {"target": 1})
    other_dev, _ = service.create_device("rk-2", "elsewhere", token="tok-x")
    on["off"].add(other_dev.id)
    for i, tank in enumerate(tanks[:40]):
        graph.add_relation({"from": typed("ASSET", tank), "to": typed("DEVICE", devices[i]),
                            "type": "Contains"}, now_ms=NOW)
    graph.add_relation({"from": typed("ASSET", tanks[0]), "to": typed("ASSET", away),
                        "type": "Contains"}, now_ms=NOW)
    graph.add_relation({"from": typed("ENTITY_VIEW", view), "to": typed("DEVICE", other_dev.id),
                        "type": "Shows"}, now_ms=NOW)
    on["off"].add(off_chain)
    return edge, on


def test_everything_on_the_edge_exactly_once_in_thingsboards_order(store, service):
    edge, expected = build(service)
    packs = [edge_pb2.DownlinkMsg.FromString(p)
             for p in full_sync.full_sync(store, edge, NOW, max_bytes=LIMIT)]
    assert [f for f, _ in entries_of(packs[-1])] == ["syncCompletedMsg"]
    assert len(entries_of(packs[-1])) == 1  # alone
    flat = [e for p in packs[:-1] for e in entries_of(p)]
    # the order the edge applies them in is the sync order (a device and its credentials
    # together: ThingsBoard sends "devices with credentials")
    ranks = [RANK[f] - (f == "deviceCredentialsUpdateMsg") for f, _ in flat]
    assert ranks == sorted(ranks)
    devices_seen: set[uuid.UUID] = set()
    for p in packs:
        devices_seen |= {uuid_of(d.idMSB, d.idLSB) for d in p.deviceUpdateMsg}
        for cred in p.deviceCredentialsUpdateMsg:  # never ahead of its device
            assert entity_id_of("deviceCredentialsUpdateMsg", cred) in devices_seen
    seen: dict[str, list[uuid.UUID]] = {}
    for field, entry in flat:
        seen.setdefault(field, []).append(entity_id_of(field, entry))
    everything = [i for ids_ in seen.values() for i in ids_]
    # each entity once (a device twice: the device and its credentials)
    assert len(seen["deviceUpdateMsg"]) == len(set(seen["deviceUpdateMsg"])) == 120
    assert set(seen["deviceCredentialsUpdateMsg"]) == set(seen["deviceUpdateMsg"])
    for field, ids_ in seen.items():
        assert len(ids_) == len(set(ids_)), field
    assert expected["on"] <= set(everything)
    assert not expected["off"] & set(everything)
    assert len(seen["assetUpdateMsg"]) == 250 and len(seen["relationUpdateMsg"]) == 40
    assert len(seen["entityData"]) == 1
    # the tenant's own entities: the tenant, 3 queues, the root chain and its metadata, the
    # profiles (default + meter device profiles; default + tank asset profiles)
    assert (len(seen["tenantUpdateMsg"]), len(seen["queueUpdateMsg"])) == (1, 3)
    assert len(seen["ruleChainUpdateMsg"]) == len(seen["ruleChainMetadataUpdateMsg"]) == 2
    assert len(seen["deviceProfileUpdateMsg"]) == 2 and len(seen["assetProfileUpdateMsg"]) == 2
    tenant = packs[0].tenantUpdateMsg[0]
    assert tenant.msgType == edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
    assert all(e.msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE for p in packs
               for f, e in entries_of(p) if f not in ("tenantUpdateMsg", "entityData",
                                                        "deviceCredentialsUpdateMsg",
                                                        "syncCompletedMsg"))
    # a device names the graph's profile of its type
    profiles = {json.loads(e.entity)["name"]: json.loads(e.entity)["id"]
                for p in packs for e in p.deviceProfileUpdateMsg}
    for p in packs:
        for e in p.deviceUpdateMsg:
            body = json.loads(e.entity)
            assert body["deviceProfileId"] == profiles[body["type"]]


def test_packs_hold_many_entries_within_the_bound_and_thingsboards_apply_order(store, service):
    edge, _ = build(service)
    for limit in (LIMIT, 20_000):
        payloads = full_sync.full_sync(store, edge, NOW, max_bytes=limit)
        for payload in payloads:
            msg = edge_pb2.DownlinkMsg.FromString(payload)
            stamped = downlinks.stamp(payload, 2**31 - 1, 2**62).ByteSize()
            assert stamped <= limit
            assert len(entries_of(msg)) <= downlink_batch.MAX_PACK
            pos = [downlink_batch.THINGSBOARD_APPLY_ORDER.index(f)
                   for f in sorted({f for f, _ in entries_of(msg)}, key=lambda f: RANK[f])]
            assert pos == sorted(pos), [fd.name for fd, _ in msg.ListFields()]
        sizes = [len(entries_of(edge_pb2.DownlinkMsg.FromString(p))) for p in payloads]
        if limit == LIMIT:
            # 250 assets, the view and 40 relations share packs of 100; 120 devices and their
            # credentials too: the whole sync (550 entries) in fewer than 20 messages
            assert max(sizes) == 100 and sum(sizes) == 550
            assert len(payloads) < 20
        else:
            assert len(payloads) > 20


def test_an_entity_near_the_limit_travels_alone(store, service):
    graph = service.graph
    edge, _, _ = service.create_edge("e-1", routing_key="rk-1", secret="s3cret")
    big = "x" * (LIMIT - 400)  # alone it fits (the envelope counted), with anything it does not
    for title, blob in (("small-1", "s"), ("big", big), ("small-2", "s")):
        made = graph.create_entity("DASHBOARD", {"title": title, "configuration": {"b": blob}},
                                   now_ms=NOW)
        graph.assign(edge.edge_id, "DASHBOARD", made.id, now_ms=NOW)
    packs = [edge_pb2.DownlinkMsg.FromString(p)
             for p in full_sync.full_sync(store, edge, NOW, max_bytes=LIMIT)]
    dashboards = [[json.loads(d.entity)["title"] for d in p.dashboardUpdateMsg]
                  for p in packs if p.dashboardUpdateMsg]
    assert ["big"] in dashboards and sorted(map(len, dashboards)) == [1, 1, 1]
    assert all(downlinks.stamp(p.SerializeToString(), 1, NOW).ByteSize() <= LIMIT for p in packs)


def test_a_refused_pack_is_sent_again_entry_by_entry(store, service):
    edge, _ = build(service)
    stream = full_sync.SyncStream(store, edge.edge_id,
                                  full_sync.packs(store, edge, NOW, max_bytes=LIMIT))
    numbers = []
    while True:
        head = stream.head()
        assert head is not None
        numbers.append(head.number)
        if downlink_batch.entry_count(head.payload) > 50:
            break
        stream.pop()
    whole = edge_pb2.DownlinkMsg.FromString(head.payload)
    count = stream.split_head()
    assert count == len(entries_of(whole))
    parts = []
    for _ in range(count):
        part = stream.head()
        assert part is not None and downlink_batch.entry_count(part.payload) == 1
        numbers.append(part.number)
        parts.append(entries_of(edge_pb2.DownlinkMsg.FromString(part.payload))[0])
        stream.pop()
    assert [(f, e.SerializeToString()) for f, e in parts] == [
        (f, e.SerializeToString()) for f, e in sorted(
            entries_of(whole), key=lambda e: downlink_batch.THINGSBOARD_APPLY_ORDER.index(e[0]))]
    while stream:
        numbers.append(stream.head().number)  # type: ignore[union-attr]
        stream.pop()
    assert len(set(numbers)) == len(numbers) and numbers == sorted(numbers)


def test_relation_and_rule_chain_metadata_requests_are_answered_from_the_graph(store, service):
    graph = service.graph
    edge, _, _ = service.create_edge("e-1", routing_key="rk-1", secret="s3cret")
    a = graph.create_entity("ASSET", {"name": "a"}, now_ms=NOW)
    b = graph.create_entity("ASSET", {"name": "b"}, now_ms=NOW)
    c = graph.create_entity("ASSET", {"name": "c"}, now_ms=NOW)  # not on the edge
    for asset in (a, b):
        graph.assign(edge.edge_id, "ASSET", asset.id, now_ms=NOW)
    for dst in (b, c):
        graph.add_relation({"from": typed("ASSET", a.id), "to": typed("ASSET", dst.id),
                            "type": "Contains"}, now_ms=NOW)
    chain = graph.create_entity("RULE_CHAIN", {"name": "Filters", "type": "EDGE"}, now_ms=NOW)
    other = graph.create_entity("RULE_CHAIN", {"name": "Other", "type": "EDGE"}, now_ms=NOW)
    graph.set_metadata({"ruleChainId": typed("RULE_CHAIN", chain.id), "nodes": [
        {"type": RULE_CHAIN_INPUT_NODE, "name": "to Other",
         "configuration": {"ruleChainId": str(other.id)}}]},
        now_ms=NOW)
    graph.assign(edge.edge_id, "RULE_CHAIN", chain.id, now_ms=NOW)
    a_msb, a_lsb = uuid_halves(a.id)
    c_msb, c_lsb = uuid_halves(chain.id)
    o_msb, o_lsb = uuid_halves(other.id)
    up = edge_pb2.UplinkMsg(
        relationRequestMsg=[edge_pb2.RelationRequestMsg(entityIdMSB=a_msb, entityIdLSB=a_lsb,
                                                        entityType="ASSET")],
        ruleChainMetadataRequestMsg=[
            edge_pb2.RuleChainMetadataRequestMsg(ruleChainIdMSB=c_msb, ruleChainIdLSB=c_lsb),
            edge_pb2.RuleChainMetadataRequestMsg(ruleChainIdMSB=o_msb, ruleChainIdLSB=o_lsb)])
    answers = requests.answer(store, edge, up, NOW)
    assert answers.requests == 3
    rels, meta = (edge_pb2.DownlinkMsg.FromString(p) for p in answers.payloads)
    assert [json.loads(r.entity)["to"]["id"] for r in rels.relationUpdateMsg] == [str(b.id)]
    (m,) = meta.ruleChainMetadataUpdateMsg  # not the other chain: not on the edge
    assert json.loads(m.entity)["ruleChainId"] == typed("RULE_CHAIN", chain.id)
    root = graph.root_chain_id()
    assert root is not None
    r_msb, r_lsb = uuid_halves(root)
    up = edge_pb2.UplinkMsg(ruleChainMetadataRequestMsg=[
        edge_pb2.RuleChainMetadataRequestMsg(ruleChainIdMSB=r_msb, ruleChainIdLSB=r_lsb)])
    (root_meta,) = requests.answer(store, edge, up, NOW).payloads
    assert json.loads(edge_pb2.DownlinkMsg.FromString(root_meta)
                      .ruleChainMetadataUpdateMsg[0].entity)["ruleChainId"]["id"] == str(root)


def test_a_full_sync_leaves_out_what_references_something_not_on_the_edge(store, service):
    """Defence in depth: an entity assigned to the edge whose hard references are not all on it
    (an entity view of an asset not assigned there, or of another edge's device; a chain's
    metadata forwarding to a chain not on the edge) is not sent, nor its relations: the edge
    would hold it for ever. One WARNING per sync says how many and why; the edge's assignment
    (what the cloud says it holds) leaves them out too."""
    graph = service.graph
    edge, _, _ = service.create_edge("e-1", routing_key="rk-1", secret="s3cret")
    service.create_edge("e-2", routing_key="rk-2", secret="s3cret")
    mine = service.create_device("rk-1", "pump-1")[0].id
    theirs = service.create_device("rk-2", "pump-2")[0].id

    def made(kind: str, body: dict[str, Any]) -> uuid.UUID:
        entity: CloudEntity = graph.create_entity(kind, body, now_ms=NOW)
        graph.assign(edge.edge_id, kind, entity.id, now_ms=NOW)
        return entity.id

    away = graph.create_entity("ASSET", {"name": "away"}, now_ms=NOW).id  # not on the edge
    house = made("ASSET", {"name": "house"})

    def view(name: str, kind: str, target: uuid.UUID) -> uuid.UUID:
        return made("ENTITY_VIEW", {"name": name, "entityId": typed(kind, target)})

    kept = {view("house view", "ASSET", house), view("pump view", "DEVICE", mine)}
    of_away = view("away view", "ASSET", away)
    of_theirs = view("their pump view", "DEVICE", theirs)
    target = graph.create_entity("RULE_CHAIN", {"name": "Target", "type": "EDGE"}, now_ms=NOW)
    chain = made("RULE_CHAIN", {"name": "Chain", "type": "EDGE"})
    graph.set_metadata({"ruleChainId": typed("RULE_CHAIN", chain), "connections": [],
                        "nodes": [{"type": RULE_CHAIN_INPUT_NODE, "name": "to target",
                                   "configuration": {"ruleChainId": str(target.id)}}]},
                       now_ms=NOW)
    graph.add_relation({"from": typed("ENTITY_VIEW", of_away), "to": typed("ASSET", house),
                        "type": "Contains"}, now_ms=NOW)
    graph.add_relation({"from": typed("ASSET", house), "to": typed("DEVICE", mine),
                        "type": "Contains"}, now_ms=NOW)
    lines: list[Any] = []
    sink = logger.add(lambda m: lines.append(m.record), level="INFO",
                      filter=lambda r: "left out" in r["message"])
    try:
        packs = [edge_pb2.DownlinkMsg.FromString(p)
                 for p in full_sync.full_sync(store, edge, NOW, max_bytes=LIMIT)]
    finally:
        logger.remove(sink)
    flat = [e for p in packs for e in entries_of(p)]
    views = {entity_id_of(f, e) for f, e in flat if f == "entityViewUpdateMsg"}
    assert views == kept
    assert [entity_id_of(f, e) for f, e in flat if f == "ruleChainUpdateMsg"] == [
        graph.root_chain_id(), chain]  # the chain is sent, its metadata is not
    assert [entity_id_of(f, e) for f, e in flat if f == "ruleChainMetadataUpdateMsg"] == [
        graph.root_chain_id()]
    rels = [json.loads(e.entity) for f, e in flat if f == "relationUpdateMsg"]
    assert [(r["from"]["id"], r["to"]["id"]) for r in rels] == [(str(house), str(mine))]
    (line,) = lines
    why = (f"RULE_CHAIN_METADATA {chain} needs RULE_CHAIN {target.id}; ENTITY_VIEW {of_away} "
           f"needs ASSET {away}; ENTITY_VIEW {of_theirs} needs DEVICE {theirs}")  # sync order
    assert (line["level"].name, line["message"]) == (
        "WARNING", f"full sync of edge rk-1: 3 entities assigned to it left out, what they "
                   f"reference is not on the edge (the edge would hold them for ever): {why}")
    assert (line["extra"]["left_out"], line["extra"]["kinds"]) == (
        3, {"RULE_CHAIN_METADATA": 1, "ENTITY_VIEW": 2})
    listed = {(k, i) for k, i, _ in graph.assignment(edge.edge_id)}
    assert {("ENTITY_VIEW", of_away), ("ENTITY_VIEW", of_theirs),
            ("RULE_CHAIN_METADATA", chain)}.isdisjoint(listed)
    assert {("ENTITY_VIEW", v) for v in kept} <= listed
    # once what they reference is on the edge, they are sent
    graph.assign(edge.edge_id, "ASSET", away, now_ms=NOW)
    graph.assign(edge.edge_id, "RULE_CHAIN", target.id, now_ms=NOW)
    again = [e for p in full_sync.full_sync(store, edge, NOW, max_bytes=LIMIT)
             for e in entries_of(edge_pb2.DownlinkMsg.FromString(p))]
    assert {entity_id_of(f, e) for f, e in again if f == "entityViewUpdateMsg"} == {
        *kept, of_away}
    assert chain in {entity_id_of(f, e) for f, e in again if f == "ruleChainMetadataUpdateMsg"}


def test_assignment_lists_the_edge_in_sync_order(store, service):
    graph = service.graph
    edge, _, _ = service.create_edge("e-1", routing_key="rk-1", secret="s3cret")
    dev, _ = service.create_device("rk-1", "d-1")
    asset = graph.create_entity("ASSET", {"name": "a"}, now_ms=NOW)
    graph.assign(edge.edge_id, "ASSET", asset.id, now_ms=NOW)
    listed = graph.assignment(edge.edge_id)
    kinds = [k for k, _, _ in listed]
    assert kinds == ["TENANT", "QUEUE", "QUEUE", "QUEUE", "RULE_CHAIN", "RULE_CHAIN_METADATA",
                     "DEVICE_PROFILE", "ASSET_PROFILE", "DEVICE", "ASSET"]
    assert listed[-2][1] == dev.id and json.loads(listed[-2][2])["name"] == "d-1"
    assert listed[-1] == ("ASSET", asset.id, graph.entity(asset.id).json)  # type: ignore[union-attr]
    assert ids.is_time_based(listed[0][1])
