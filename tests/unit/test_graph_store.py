"""The edge's entity graph store (storage/graph_store.py) on a real LMDB in tmp_path: its
indexes, cascading deletes, held entities, the apply log, the full sync's sweep and sync state,
a reopen, and a read-only open of a store of the previous release (no graph databases)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import pytest

from edge_sync.common.entity_graph import Ref
from edge_sync.link.state import sync_mode
from edge_sync.storage import graph_store
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import DB_NAMES, LATER_DB_NAMES, LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import (
    ApplyLogEntry,
    EntityRecord,
    GraphStore,
    HeldEntity,
    Removal,
    SyncState,
    held_entity_key,
)
from edge_sync.storage.records import NIL_UUID, Device, Lane, NewEvent, Scope

T = TypeVar("T")
NOW = 1_700_000_000_000


def tid(kind: str, value: uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


def compact(body: dict[str, Any]) -> str:
    return json.dumps(body, separators=(",", ":"))


def profile_json(pid: uuid.UUID, name: str = "thermostat") -> str:
    return compact({"id": tid("DEVICE_PROFILE", pid), "name": name, "type": "DEFAULT"})


def device_json(did: uuid.UUID, name: str, profile: uuid.UUID | None) -> str:
    body: dict[str, Any] = {"id": tid("DEVICE", did), "name": name, "type": "thermostat"}
    if profile is not None:
        body["deviceProfileId"] = tid("DEVICE_PROFILE", profile)
    return compact(body)


def view_json(vid: uuid.UUID, name: str, device: uuid.UUID) -> str:
    return compact({"id": tid("ENTITY_VIEW", vid), "name": name, "entityId": tid("DEVICE", device)})


def asset_json(aid: uuid.UUID, name: str) -> str:
    return compact({"id": tid("ASSET", aid), "name": name})


def relation_json(src: tuple[str, uuid.UUID], dst: tuple[str, uuid.UUID],
                  rel_type: str = "Contains") -> str:
    return compact({"from": tid(*src), "to": tid(*dst), "type": rel_type,
                    "typeGroup": "COMMON", "additionalInfo": None})


class Graph:
    """A store and its graph, one call per transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.store = LmdbStore(path, initial_map_mb=8, max_size_mb=256)
        self.graph = GraphStore(self.store)
        self.entities = EntityStore(self.store)

    def write(self, fn: Callable[[Any], T]) -> T:
        return self.store.write(fn)

    def read(self, fn: Callable[[Any], T]) -> T:
        with self.store.read() as txn:
            return fn(txn)

    def put(self, kind: str, eid: uuid.UUID, text: str, **kw: Any) -> str:
        return self.write(lambda txn: self.graph.put_entity(txn, kind, eid, text, now_ms=NOW,
                                                            **kw))

    def log(self) -> list[tuple[str, str, str]]:
        return [(e.entity_type, e.id, e.action) for e in self.read(self.graph.apply_log)]

    def close(self) -> None:
        self.store.close()


@pytest.fixture
def g(tmp_path: Path) -> Iterator[Graph]:
    graph = Graph(tmp_path / "edge")
    yield graph
    graph.close()


# -- entities and their indexes --------------------------------------------------------------------


def test_an_entity_is_kept_as_received_and_found_by_id_type_and_name(g: Graph) -> None:
    pid, did = uuid.uuid4(), uuid.uuid4()
    text = profile_json(pid)
    assert g.put("DEVICE_PROFILE", pid, text) == "created"
    assert g.put("DEVICE", did, device_json(did, "t-1", pid)) == "created"
    record = g.read(lambda txn: g.graph.entity(txn, pid))
    assert record == EntityRecord("DEVICE_PROFILE", pid, "thermostat", text, NOW, "cloud", None)
    assert g.read(lambda txn: g.graph.entity(txn, pid, "DEVICE")) is None
    assert [e.id for e in g.read(lambda txn: g.graph.entities(txn, entity_type="DEVICE"))] == [did]
    assert [e.id for e in g.read(lambda txn: g.graph.entities(
        txn, entity_type="DEVICE", name="t-1"))] == [did]
    assert [e.id for e in g.read(lambda txn: g.graph.entities(txn, name="thermostat"))] == [pid]
    assert {e.id for e in g.read(lambda txn: g.graph.entities(txn))} == {pid, did}
    assert g.read(lambda txn: (g.graph.count(txn), g.graph.count(txn, "DEVICE"),
                               g.graph.count(txn, "ASSET"))) == (2, 1, 0)


def test_a_rename_moves_the_name_index_and_the_same_json_is_unchanged(g: Graph) -> None:
    aid = uuid.uuid4()
    g.put("ASSET", aid, asset_json(aid, "pump house"))
    assert g.put("ASSET", aid, asset_json(aid, "pump house")) == "unchanged"
    assert g.put("ASSET", aid, asset_json(aid, "boiler house")) == "updated"
    assert g.read(lambda txn: g.graph.entities(txn, entity_type="ASSET", name="pump house")) == []
    (found,) = g.read(lambda txn: g.graph.entities(txn, entity_type="ASSET", name="boiler house"))
    assert found.id == aid
    # unchanged: no apply log entry
    assert g.log() == [("ASSET", str(aid), "ADDED"), ("ASSET", str(aid), "UPDATED")]
    assert g.read(lambda txn: g.graph.count(txn, "ASSET")) == 1


def test_a_rule_chain_and_its_metadata_share_an_id(g: Graph) -> None:
    chain = uuid.uuid4()
    g.put("RULE_CHAIN", chain, compact({"id": tid("RULE_CHAIN", chain), "name": "Root"}))
    g.put("RULE_CHAIN_METADATA", chain, compact({"ruleChainId": tid("RULE_CHAIN", chain),
                                                 "nodes": []}))
    main = g.read(lambda txn: g.graph.entity(txn, chain))
    assert main is not None and main.entity_type == "RULE_CHAIN"
    meta = g.read(lambda txn: g.graph.entity(txn, chain, "RULE_CHAIN_METADATA"))
    assert meta is not None and meta.entity_type == "RULE_CHAIN_METADATA"
    # deleting the chain takes its metadata (it references the chain) with it
    removed = g.write(lambda txn: g.graph.delete_entity(txn, "RULE_CHAIN", chain, now_ms=NOW))
    assert removed == [Ref("RULE_CHAIN_METADATA", str(chain)), Ref("RULE_CHAIN", str(chain))]


def test_a_widget_type_provides_its_fqn(g: Graph) -> None:
    wid = uuid.uuid4()
    assert not g.read(lambda txn: g.graph.present(txn, Ref("WIDGET_TYPE_FQN", "gauge")))
    g.put("WIDGET_TYPE", wid, compact({"id": tid("WIDGET_TYPE", wid), "name": "Gauge",
                                       "fqn": "gauge"}))
    assert g.read(lambda txn: g.graph.present(txn, Ref("WIDGET_TYPE_FQN", "gauge")))
    # references to what never comes to an edge are not waited for
    assert g.read(lambda txn: g.graph.present(txn, Ref("EDGE", str(uuid.uuid4()))))


# -- relations -------------------------------------------------------------------------------------


def test_relations_are_found_from_either_end_and_deleted(g: Graph) -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    ab = relation_json(("ASSET", a), ("ASSET", b))
    ca = relation_json(("ASSET", c), ("ASSET", a), "Manages")
    assert g.write(lambda txn: g.graph.put_relation(txn, ab, now_ms=NOW)) == "created"
    assert g.write(lambda txn: g.graph.put_relation(txn, ca, now_ms=NOW)) == "created"
    assert g.write(lambda txn: g.graph.put_relation(txn, ab, now_ms=NOW)) == "unchanged"
    assert g.read(lambda txn: g.graph.relations(txn, a)) == [json.loads(ab), json.loads(ca)]
    assert g.read(lambda txn: g.graph.relations(txn, b)) == [json.loads(ab)]
    assert g.write(lambda txn: g.graph.delete_relation(
        txn, Ref("ASSET", str(a)), Ref("ASSET", str(b)), "Contains", "COMMON", now_ms=NOW))
    assert not g.write(lambda txn: g.graph.delete_relation(
        txn, Ref("ASSET", str(a)), Ref("ASSET", str(b)), "Contains", "COMMON", now_ms=NOW))
    assert g.write(lambda txn: g.graph.delete_relations(txn, Ref("ASSET", str(a)), now_ms=NOW)) == 1
    assert g.read(lambda txn: g.graph.relations(txn, c)) == []
    rel = f"{a}->{b} Contains/COMMON"
    assert g.log() == [("RELATION", rel, "ADDED"), ("RELATION", f"{c}->{a} Manages/COMMON", "ADDED"),
                       ("RELATION", rel, "DELETED"),
                       ("RELATION", f"{c}->{a} Manages/COMMON", "DELETED")]


def test_the_same_relation_in_the_clouds_json_text_is_unchanged(g: Graph) -> None:
    """The edge's relation sent back by the cloud (the answer to a RelationRequestMsg) comes in
    ThingsBoard's JSON text: other spacing and key order, "version": null
    (EdgeMsgConstructorUtils.constructRelationUpdatedMsg resets it). Nothing changes: no write,
    no UPDATED in the apply log. A changed additionalInfo, or an end of another type, is an
    update."""
    a, b = uuid.uuid4(), uuid.uuid4()
    made = relation_json(("DEVICE", a), ("DEVICE", b), "Drains")
    assert g.write(lambda txn: g.graph.put_relation(txn, made, now_ms=NOW)) == "created"
    echoed = json.dumps({"version": None, "additionalInfo": None, "typeGroup": "COMMON",
                         "type": "Drains", "to": {"id": str(b), "entityType": "DEVICE"},
                         "from": tid("DEVICE", a)})
    no_info = compact({"from": tid("DEVICE", a), "to": tid("DEVICE", b), "type": "Drains"})
    versioned = compact({**json.loads(made), "version": 7})
    for same in (echoed, no_info, versioned):
        assert g.write(lambda txn, t=same: g.graph.put_relation(txn, t, now_ms=NOW)) == "unchanged"
    # the text first stored is kept
    assert g.read(lambda txn: g.graph.relations(txn, a)) == [json.loads(made)]
    rel = f"{a}->{b} Drains/COMMON"
    assert g.log() == [("RELATION", rel, "ADDED")]

    info = compact({**json.loads(made), "additionalInfo": {"flow": 3}})
    assert g.write(lambda txn: g.graph.put_relation(txn, info, now_ms=NOW)) == "updated"
    other_end = compact({**json.loads(info), "to": tid("ASSET", b)})
    assert g.write(lambda txn: g.graph.put_relation(txn, other_end, now_ms=NOW)) == "updated"
    assert g.read(lambda txn: g.graph.relations(txn, a)) == [json.loads(other_end)]
    assert g.log() == [("RELATION", rel, "ADDED"), ("RELATION", rel, "UPDATED"),
                       ("RELATION", rel, "UPDATED")]


def test_a_relation_whose_additional_info_changes_json_type_is_updated(g: Graph) -> None:
    """ThingsBoard reads additionalInfo as a JsonNode (JacksonUtil.toJsonNode) and compares and
    writes it as such: true is a BooleanNode, 1 an IntNode, 1.0 a DoubleNode, each its own
    text. A change from one to another is an update, though Python's == takes them equal; the
    same values in another key order are not."""
    a, b = uuid.uuid4(), uuid.uuid4()
    base = json.loads(relation_json(("DEVICE", a), ("DEVICE", b), "Drains"))

    def put(info: dict[str, Any]) -> str:
        text = compact({**base, "additionalInfo": info})
        return g.write(lambda txn: g.graph.put_relation(txn, text, now_ms=NOW))

    assert put({"flag": 1, "n": 0, "x": 2}) == "created"
    assert put({"x": 2, "n": 0, "flag": 1}) == "unchanged"
    assert put({"flag": True, "n": 0, "x": 2}) == "updated"
    assert put({"flag": True, "n": False, "x": 2}) == "updated"
    assert put({"flag": True, "n": False, "x": 2.0}) == "updated"
    assert put({"x": 2.0, "flag": True, "n": False}) == "unchanged"
    assert put({"flag": True, "n": False, "x": 2.0, "list": [1, {"b": 1, "a": True}]}) == "updated"
    assert put({"list": [1, {"a": True, "b": 1}], "x": 2.0, "n": False, "flag": True}) == "unchanged"
    assert put({"list": [1.0, {"a": True, "b": 1}], "x": 2.0, "n": False, "flag": True}) == "updated"
    assert put({"list": [1.0, {"a": 1, "b": 1}], "x": 2.0, "n": False, "flag": True}) == "updated"
    stored = g.read(lambda txn: g.graph.relations(txn, a))
    assert json.dumps(stored[0]["additionalInfo"], sort_keys=True) == json.dumps(
        {"list": [1.0, {"a": 1, "b": 1}], "x": 2.0, "n": False, "flag": True}, sort_keys=True)
    rel = f"{a}->{b} Drains/COMMON"
    assert g.log() == [("RELATION", rel, "ADDED")] + [("RELATION", rel, "UPDATED")] * 6


# -- cascading deletes -----------------------------------------------------------------------------


def test_deleting_a_profile_removes_its_devices_their_views_relations_and_device_data(
        g: Graph) -> None:
    pid, did, vid, aid = uuid.uuid4(), uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    g.put("DEVICE_PROFILE", pid, profile_json(pid))
    g.put("DEVICE", did, device_json(did, "t-1", pid))
    g.put("DEVICE_CREDENTIALS", did, compact({"deviceId": tid("DEVICE", did),
                                              "credentialsType": "ACCESS_TOKEN",
                                              "credentialsId": "tok-1"}))
    g.put("ENTITY_VIEW", vid, view_json(vid, "t-1 view", did))
    g.put("ASSET", aid, asset_json(aid, "house"))
    g.write(lambda txn: g.graph.put_relation(txn, relation_json(("ASSET", aid), ("DEVICE", did)),
                                             now_ms=NOW))

    def operational(txn: Any) -> None:
        g.entities.put_device(txn, Device(did, "t-1", "thermostat", "tok-1", NOW))
        g.entities.put_attributes(txn, did, Scope.SHARED, {"interval": 5}, ts=NOW)
        g.entities.put_latest(txn, did, {"temp": (NOW, 21.5)})
    g.write(operational)
    removed = g.write(lambda txn: g.graph.delete_entity(txn, "DEVICE_PROFILE", pid, now_ms=NOW))
    assert removed[-2:] == [Ref("DEVICE", str(did)), Ref("DEVICE_PROFILE", str(pid))]
    assert set(removed[:-2]) == {Ref("DEVICE_CREDENTIALS", str(did)),
                                 Ref("ENTITY_VIEW", str(vid))}
    assert [e.id for e in g.read(lambda txn: g.graph.entities(txn))] == [aid]
    assert g.read(lambda txn: g.graph.relations(txn, aid)) == []
    assert g.read(lambda txn: (g.entities.device(txn, did), g.entities.device_by_token(txn, "tok-1"),
                               g.entities.attributes(txn, did, Scope.SHARED),
                               g.entities.latest(txn, did))) == (None, None, {}, {})
    deleted = [(t, i) for t, i, a in g.log() if a == "DELETED"]
    assert deleted[-3:] == [("RELATION", f"{aid}->{did} Contains/COMMON"), ("DEVICE", str(did)),
                            ("DEVICE_PROFILE", str(pid))]
    assert g.read(lambda txn: (g.graph.count(txn), g.graph.count(txn, "DEVICE"))) == (1, 0)


def test_deleting_a_device_only_on_the_device_table_removes_its_data(g: Graph) -> None:
    did = uuid.uuid4()
    g.write(lambda txn: g.entities.put_device(txn, Device(did, "edge-made", "t", "tok-e", NOW)))
    assert g.write(lambda txn: g.graph.delete_entity(txn, "DEVICE", did, now_ms=NOW)) == [
        Ref("DEVICE", str(did))]
    assert g.read(lambda txn: g.entities.device(txn, did)) is None
    assert g.write(lambda txn: g.graph.delete_entity(txn, "DEVICE", did, now_ms=NOW)) == []


# -- held entities ---------------------------------------------------------------------------------


def test_held_entities_list_what_they_wait_for_and_can_be_dropped(g: Graph) -> None:
    did, pid = uuid.uuid4(), uuid.uuid4()
    key = held_entity_key("DEVICE", did)
    waits = (Ref("DEVICE_PROFILE", str(pid)),)
    g.write(lambda txn: g.graph.hold(txn, key, entity_type="DEVICE", entity_id=did,
                                     what=f"DEVICE {did} (t-1)", field="deviceUpdateMsg",
                                     payload=b"\x08\x01", waiting_for=waits, now_ms=NOW))
    assert g.read(g.graph.held) == [HeldEntity("DEVICE", did, f"DEVICE {did} (t-1)", waits, NOW)]
    assert g.read(lambda txn: g.graph.waiting_on(txn, waits[0])) == [key]
    payload = g.read(lambda txn: g.graph.held_payload(txn, key))
    assert payload is not None and (payload.field, payload.payload) == ("deviceUpdateMsg", b"\x08\x01")
    # a direct write of the entity is newer: the held payload goes
    g.put("DEVICE", did, device_json(did, "t-1", None))
    assert g.read(g.graph.held) == []
    assert g.read(lambda txn: g.graph.waiting_on(txn, waits[0])) == []


# -- the apply log ---------------------------------------------------------------------------------


def test_the_apply_log_keeps_the_newest_entries(g: Graph, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(graph_store, "APPLY_LOG_KEEP", 5)
    ids = [uuid.uuid4() for _ in range(8)]
    for i, aid in enumerate(ids):
        g.put("ASSET", aid, asset_json(aid, f"a{i}"))
    entries = g.read(g.graph.apply_log)
    assert [e.index for e in entries] == [4, 5, 6, 7, 8]
    assert entries[0] == ApplyLogEntry(4, NOW, "ASSET", str(ids[3]), "ADDED", "cloud")
    assert [e.index for e in g.read(lambda txn: g.graph.apply_log(txn, after=5, limit=2))] == [6, 7]


# -- reopening -------------------------------------------------------------------------------------


def test_a_reopened_store_keeps_entities_relations_held_log_and_sync_state(tmp_path: Path) -> None:
    first = Graph(tmp_path / "edge")
    a, b, did = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    first.put("ASSET", a, asset_json(a, "a"))
    first.put("ASSET", b, asset_json(b, "b"), origin="edge", origin_seq=7)
    first.write(lambda txn: first.graph.put_relation(txn, relation_json(("ASSET", a), ("ASSET", b)),
                                                     now_ms=NOW))
    first.write(lambda txn: first.graph.hold(
        txn, held_entity_key("DEVICE", did), entity_type="DEVICE", entity_id=did, what="d",
        field="deviceUpdateMsg", payload=b"", waiting_for=[Ref("DEVICE_PROFILE", "p")],
        now_ms=NOW))
    first.write(lambda txn: first.graph.request_full_sync(txn, "operator"))
    before = (first.read(lambda txn: first.graph.entities(txn)),
              first.read(lambda txn: first.graph.relations(txn, a)), first.read(first.graph.held),
              first.read(first.graph.apply_log), first.read(first.graph.sync_state))
    first.close()
    again = Graph(tmp_path / "edge")
    try:
        after = (again.read(lambda txn: again.graph.entities(txn)),
                 again.read(lambda txn: again.graph.relations(txn, a)),
                 again.read(again.graph.held), again.read(again.graph.apply_log),
                 again.read(again.graph.sync_state))
        assert after == before
        (made,) = [e for e in after[0] if e.id == b]
        assert (made.origin, made.origin_seq) == ("edge", 7)
        assert after[4].requested == "operator"
    finally:
        again.close()


def test_a_store_of_the_previous_release_opens_read_only_and_gets_the_graph_when_writable(
        tmp_path: Path) -> None:
    old_names = tuple(n for n in DB_NAMES if n not in LATER_DB_NAMES)
    LmdbStore(tmp_path / "edge", db_names=old_names).close()
    ro = LmdbStore(tmp_path / "edge", readonly=True)
    try:
        assert not LATER_DB_NAMES & set(ro.dbs)
        graph = GraphStore(ro)
        with ro.read() as txn:
            assert (graph.entities(txn), graph.count(txn), graph.held(txn), graph.apply_log(txn),
                    graph.relations(txn, uuid.uuid4()), graph.sync_state(txn)) == (
                [], 0, [], [], [], SyncState())
    finally:
        ro.close()
    rw = Graph(tmp_path / "edge")
    try:
        assert set(rw.store.dbs) >= LATER_DB_NAMES
        aid = uuid.uuid4()
        assert rw.put("ASSET", aid, asset_json(aid, "a")) == "created"
    finally:
        rw.close()


# -- full sync -------------------------------------------------------------------------------------


def _append_event(g: Graph, entity: uuid.UUID) -> int:
    log = EventLog(g.store)

    def fn(txn: Any) -> int:
        seq = log.next_seq(txn)
        log.append(txn, [NewEvent("ASSET", "ASSET", entity, "ADDED", {}, NOW, Lane.HIGH)],
                   first_seq=seq, created_time=NOW, tenant_id=NIL_UUID.bytes,
                   edge_id=NIL_UUID.bytes)
        return seq
    return g.write(fn)


def test_the_end_of_a_full_sync_removes_what_it_did_not_send_with_dependants(g: Graph) -> None:
    pid, did, vid, kept, gone = (uuid.uuid4() for _ in range(5))
    pending, early, late = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    g.put("DEVICE_PROFILE", pid, profile_json(pid))
    g.put("DEVICE", did, device_json(did, "t-1", pid))
    g.put("ENTITY_VIEW", vid, view_json(vid, "v", did))
    g.put("ASSET", kept, asset_json(kept, "kept"))
    g.put("ASSET", gone, asset_json(gone, "gone"))
    g.write(lambda txn: g.graph.put_relation(txn, relation_json(("ASSET", kept), ("ASSET", gone)),
                                             now_ms=NOW))
    # made on the edge: one whose event is pending, one deployed before the sync started, one
    # deployed after it started (the cloud's snapshot may not have it)
    seqs = {aid: _append_event(g, aid) for aid in (pending, early, late)}
    for aid, name in ((pending, "pending"), (early, "early"), (late, "late")):
        g.put("ASSET", aid, asset_json(aid, name), origin="edge", origin_seq=seqs[aid])
    log = EventLog(g.store)
    g.write(lambda txn: log.mark_deployed(txn, [seqs[early]], now_ms=NOW - 10))
    g.write(lambda txn: g.graph.hold(
        txn, held_entity_key("DEVICE", uuid.UUID(int=9)), entity_type="DEVICE",
        entity_id=uuid.UUID(int=9), what="old held", field="deviceUpdateMsg", payload=b"",
        waiting_for=[Ref("DEVICE_PROFILE", str(uuid.uuid4()))], now_ms=NOW))

    assert g.write(lambda txn: g.graph.start_full_sync(txn, now_ms=NOW, reason="test")) == 1
    assert g.read(g.graph.sync_state).in_progress
    g.write(lambda txn: log.mark_deployed(txn, [seqs[late]], now_ms=NOW + 10))
    # the sync sends the profile (unchanged) and the asset "kept"; nothing else
    assert g.put("DEVICE_PROFILE", pid, profile_json(pid)) == "unchanged"
    assert g.put("ASSET", kept, asset_json(kept, "kept")) == "unchanged"
    removed = g.write(lambda txn: g.graph.complete_full_sync(txn, now_ms=NOW + 20, version="9.9"))
    entities = [(r.entity_type, r.id) for r in removed
                if r.entity_type != "RELATION" and not r.what.startswith("held ")]
    # entities (in key order, each after its dependants) with their relations, then the held
    assert sorted(entities) == sorted([("ENTITY_VIEW", str(vid)), ("DEVICE", str(did)),
                                       ("ASSET", str(gone)), ("ASSET", str(early))])
    assert entities.index(("ENTITY_VIEW", str(vid))) < entities.index(("DEVICE", str(did)))
    rel = f"{kept}->{gone} Contains/COMMON"
    assert [r for r in removed if r.entity_type == "RELATION"] == [
        Removal("RELATION", rel, f"RELATION {rel}")]
    assert removed[-1] == Removal("DEVICE", str(uuid.UUID(int=9)), "held old held", held=True)
    assert len(removed) == 6
    assert {e.id for e in g.read(lambda txn: g.graph.entities(txn))} == {pid, kept, pending, late}
    assert g.read(lambda txn: g.graph.relations(txn, kept)) == []  # went with "gone"
    assert g.read(g.graph.held) == []
    state = g.read(g.graph.sync_state)
    assert (state.completed_version, state.completed_ms, state.in_progress, state.generation,
            state.requested, state.damaged) == ("9.9", NOW + 20, False, 1, None, None)
    assert not g.read(g.graph.full_sync_active)
    # the next sync: "late" was deployed before it started, so the cloud had it and no longer
    # sends it; "pending" is still on its way; everything else is sent again
    g.write(lambda txn: g.graph.start_full_sync(txn, now_ms=NOW + 30, reason="again"))
    g.write(lambda txn: g.graph.mark_seen(txn, entity=("DEVICE_PROFILE", pid)))
    g.write(lambda txn: g.graph.mark_seen(txn, entity=("ASSET", kept)))
    assert g.write(lambda txn: g.graph.complete_full_sync(txn, now_ms=NOW + 40, version="9.9")
                   ) == [Removal("ASSET", str(late), f"ASSET {late}")]
    assert {e.id for e in g.read(lambda txn: g.graph.entities(txn))} == {pid, kept, pending}


def test_sync_state_flags_are_durable_until_a_full_sync_completes(g: Graph) -> None:
    assert g.read(g.graph.sync_state) == SyncState()
    g.write(lambda txn: g.graph.request_full_sync(txn, "operator asked"))
    g.write(lambda txn: g.graph.mark_damaged(txn, "checksum mismatch"))
    g.write(lambda txn: g.graph.start_full_sync(txn, now_ms=NOW, reason="requested"))
    state = g.read(g.graph.sync_state)
    assert (state.requested, state.damaged, state.in_progress, state.started_ms,
            state.started_reason) == ("operator asked", "checksum mismatch", True, NOW, "requested")
    g.write(lambda txn: g.graph.complete_full_sync(txn, now_ms=NOW + 1, version="1.0"))
    state = g.read(g.graph.sync_state)
    assert (state.requested, state.damaged, state.in_progress, state.completed_version) == (
        None, None, False, "1.0")


# -- the sync-mode decision at connect (link/state.py sync_mode over this store's sync state) --------

# fixed ids: a test's name holds them, and must be the same in every collection (pytest-xdist)
EDGE_A = uuid.UUID("0e000000-0000-4000-8000-00000000000a")
EDGE_B = uuid.UUID("0e000000-0000-4000-8000-00000000000b")
DONE = SyncState(completed_version="2.0", completed_ms=NOW, generation=3)


@pytest.mark.parametrize(("stored", "state", "full", "why"), [
    (NIL_UUID, DONE, True, "first connect (no edge identity stored)"),
    (EDGE_B, DONE, True, f"edge identity changed ({EDGE_B} -> {EDGE_A})"),
    (EDGE_A, SyncState(), True, "this store has never completed a full sync"),
    (EDGE_A, replace(DONE, completed_version="1.9"), True,
     "edge version changed since the last full sync (1.9 -> 2.0)"),
    (EDGE_A, replace(DONE, damaged="graph: entity 00: checksum mismatch"), True,
     "the store was found damaged (graph: entity 00: checksum mismatch)"),
    (EDGE_A, replace(DONE, in_progress=True), True, "the previous full sync did not complete"),
    (EDGE_A, replace(DONE, requested="operator: after a restore"), True,
     "requested: operator: after a restore"),
    (EDGE_A, DONE, False, "the last full sync completed at version 2.0"),
])
def test_the_sync_mode_and_its_reason(stored: uuid.UUID, state: SyncState, full: bool,
                                      why: str) -> None:
    assert sync_mode(stored_edge=stored, connected_edge=EDGE_A, state=state, version="2.0") == (
        full, why)


def test_the_sync_state_a_connect_reads_follows_the_store(g: Graph) -> None:
    def mode() -> tuple[bool, str]:
        return sync_mode(stored_edge=EDGE_A, connected_edge=EDGE_A,
                         state=g.read(g.graph.sync_state), version="2.0")
    assert mode() == (True, "this store has never completed a full sync")
    g.write(lambda txn: g.graph.start_full_sync(txn, now_ms=NOW, reason="new store"))
    assert mode() == (True, "the previous full sync did not complete")  # killed mid-sync
    g.write(lambda txn: g.graph.start_full_sync(txn, now_ms=NOW, reason="again"))
    g.write(lambda txn: g.graph.complete_full_sync(txn, now_ms=NOW, version="2.0"))
    assert mode() == (False, "the last full sync completed at version 2.0")
    g.write(lambda txn: g.graph.request_full_sync(txn, "operator"))
    assert mode() == (True, "requested: operator")
