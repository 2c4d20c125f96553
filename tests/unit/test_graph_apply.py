"""link/graph_apply.py over real protobuf DownlinkMsgs of every kind of the entity graph, on a
real LMDB in tmp_path: create, update and delete of each kind; what is held until its references
arrive and released in the same transaction (in any order of arrival); the same JSON again is
unchanged; deletes cascade; user credentials keep nothing secret; refused payloads."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from edge_sync.common.entity_graph import BY_TYPE, KINDS, RULE_CHAIN_INPUT_NODE, Ref
from edge_sync.common.wire import uuid_halves
from edge_sync.errors import BadRequest
from edge_sync.link.graph_apply import (
    GraphApplier,
    GraphOutcome,
    Renamed,
    Revoked,
    is_unique_name_of,
)
from edge_sync.proto import edge_pb2
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import GraphStore, HeldEntity, hard_references
from edge_sync.storage.records import Device, NewEvent, Scope, Status

NOW = 1_700_000_000_000
CREATED = edge_pb2.ENTITY_CREATED_RPC_MESSAGE
UPDATED = edge_pb2.ENTITY_UPDATED_RPC_MESSAGE
DELETED = edge_pb2.ENTITY_DELETED_RPC_MESSAGE


def tid(kind: str, value: uuid.UUID) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


# -- the graph every test builds: one entity of each kind, with its references ---------------------

IDS = {name: uuid.uuid4() for name in (
    "tenant", "queue", "root", "target", "user", "widget", "bundle", "customer", "dashboard",
    "dprofile", "aprofile", "device", "asset", "view")}
SECRET_PASSWORD = "$2a$10$secret-hash"
SECRET_TOKEN = "activate-me-secret"


def bodies(suffix: str = "") -> dict[str, tuple[str, uuid.UUID, dict[str, Any]]]:
    """name -> (entity type, id, ThingsBoard 4.x JSON). ``suffix`` changes every name."""
    i = IDS
    t = tid("TENANT", i["tenant"])
    return {
        "tenant": ("TENANT", i["tenant"], {"id": t, "title": f"Acme{suffix}", "region": "Global"}),
        "queue": ("QUEUE", i["queue"], {"id": tid("QUEUE", i["queue"]), "tenantId": t,
                                        "name": f"Main{suffix}", "topic": "tb_rule_engine.main"}),
        "root": ("RULE_CHAIN", i["root"], {"id": tid("RULE_CHAIN", i["root"]), "tenantId": t,
                                           "name": f"Root{suffix}", "type": "EDGE", "root": True}),
        "target": ("RULE_CHAIN", i["target"], {"id": tid("RULE_CHAIN", i["target"]),
                                               "tenantId": t, "name": f"Target{suffix}",
                                               "type": "EDGE", "root": False}),
        "root_meta": ("RULE_CHAIN_METADATA", i["root"], {
            "ruleChainId": tid("RULE_CHAIN", i["root"]), "firstNodeIndex": 0, "version": 1,
            "nodes": [{"type": RULE_CHAIN_INPUT_NODE, "name": f"to target{suffix}",
                       "configuration": {"ruleChainId": str(i["target"])}}],
            "connections": []}),
        "target_meta": ("RULE_CHAIN_METADATA", i["target"], {
            "ruleChainId": tid("RULE_CHAIN", i["target"]), "firstNodeIndex": -1,
            "nodes": [], "connections": [], "note": suffix}),
        "user": ("USER", i["user"], {"id": tid("USER", i["user"]), "tenantId": t,
                                     "email": f"ops{suffix}@acme.io",
                                     "authority": "TENANT_ADMIN"}),
        "user_credentials": ("USER_CREDENTIALS", i["user"], {
            "id": {"id": str(uuid.uuid4())}, "userId": tid("USER", i["user"]),
            "enabled": suffix == "", "password": SECRET_PASSWORD, "activateToken": SECRET_TOKEN,
            "resetToken": None}),
        "widget": ("WIDGET_TYPE", i["widget"], {"id": tid("WIDGET_TYPE", i["widget"]),
                                                "tenantId": t, "fqn": "gauge",
                                                "name": f"Gauge{suffix}", "descriptor": {}}),
        "bundle": ("WIDGETS_BUNDLE", i["bundle"], {"id": tid("WIDGETS_BUNDLE", i["bundle"]),
                                                   "tenantId": t, "alias": "acme",
                                                   "title": f"Acme widgets{suffix}"}),
        "customer": ("CUSTOMER", i["customer"], {"id": tid("CUSTOMER", i["customer"]),
                                                 "tenantId": t, "title": f"Plant{suffix}"}),
        "dashboard": ("DASHBOARD", i["dashboard"], {
            "id": tid("DASHBOARD", i["dashboard"]), "tenantId": t, "title": f"Boiler{suffix}",
            "configuration": {"widgets": {"w1": {"typeFullFqn": "tenant.gauge"},
                                          "w2": {"typeFullFqn": "system.cards.value"}}}}),
        "dprofile": ("DEVICE_PROFILE", i["dprofile"], {
            "id": tid("DEVICE_PROFILE", i["dprofile"]), "tenantId": t,
            "name": f"thermostat{suffix}", "type": "DEFAULT", "transportType": "DEFAULT"}),
        "aprofile": ("ASSET_PROFILE", i["aprofile"], {
            "id": tid("ASSET_PROFILE", i["aprofile"]), "tenantId": t, "name": f"room{suffix}"}),
        "device": ("DEVICE", i["device"], {
            "id": tid("DEVICE", i["device"]), "tenantId": t, "name": f"t-1{suffix}",
            "type": "thermostat", "label": "", "createdTime": NOW,
            "deviceProfileId": tid("DEVICE_PROFILE", i["dprofile"])}),
        "device_credentials": ("DEVICE_CREDENTIALS", i["device"], {
            "deviceId": tid("DEVICE", i["device"]), "credentialsType": "ACCESS_TOKEN",
            "credentialsId": f"tok-1{suffix}"}),
        "asset": ("ASSET", i["asset"], {"id": tid("ASSET", i["asset"]), "tenantId": t,
                                        "name": f"room-1{suffix}",
                                        "assetProfileId": tid("ASSET_PROFILE", i["aprofile"])}),
        "view": ("ENTITY_VIEW", i["view"], {"id": tid("ENTITY_VIEW", i["view"]), "tenantId": t,
                                            "name": f"t-1 view{suffix}",
                                            "entityId": tid("DEVICE", i["device"])}),
    }


def relation_body(note: str = "") -> dict[str, Any]:
    return {"from": tid("ASSET", IDS["asset"]), "to": tid("DEVICE", IDS["device"]),
            "type": "Contains", "typeGroup": "COMMON", "additionalInfo": {"note": note}}


def payload(entity_type: str, entity_id: uuid.UUID | None, body: dict[str, Any] | None,
            msg_type: int = CREATED) -> tuple[str, Any]:
    """(DownlinkMsg list, payload) as ThingsBoard sends it."""
    kind = BY_TYPE[entity_type]
    m = getattr(edge_pb2.DownlinkMsg(), kind.downlink_field).add()
    if "msgType" in m.DESCRIPTOR.fields_by_name:
        m.msgType = msg_type
    if kind.has_id_halves and entity_id is not None:
        m.idMSB, m.idLSB = uuid_halves(entity_id)
    if body is not None:
        m.entity = json.dumps(body)
    if entity_type == "WIDGETS_BUNDLE" and body is not None:
        m.widgets = json.dumps(["gauge"])
    return kind.downlink_field, m


def downlink(*parts: tuple[str, Any]) -> edge_pb2.DownlinkMsg:
    msg = edge_pb2.DownlinkMsg(downlinkMsgId=1)
    for field, m in parts:
        getattr(msg, field).append(m)
    return msg


def every_kind(suffix: str = "", msg_type: int = CREATED) -> list[tuple[str, Any]]:
    """One payload of each kind, in full-sync order; the relation last."""
    parts = [payload(t, i, b, msg_type) for t, i, b in bodies(suffix).values()]
    parts.append(payload("RELATION", None, relation_body(suffix), msg_type))
    rank = {k.entity_type: k.sync_rank for k in KINDS}
    return sorted(parts, key=lambda p: rank[next(k.entity_type for k in KINDS
                                                 if k.downlink_field == p[0])])


class Rig:
    def __init__(self, path: Path) -> None:
        self.store = LmdbStore(path, initial_map_mb=8, max_size_mb=256)
        self.graph = GraphStore(self.store)
        self.entities = EntityStore(self.store)
        self.applier = GraphApplier(self.graph)

    def apply(self, msg: edge_pb2.DownlinkMsg) -> GraphOutcome:
        def fn(txn: Any) -> GraphOutcome:
            out = GraphOutcome()
            self.applier.apply(txn, msg, NOW, out)
            return out
        return self.store.write(fn)

    def read(self, fn: Callable[[Any], Any]) -> Any:
        with self.store.read() as txn:
            return fn(txn)

    def log(self) -> list[tuple[str, str, str]]:
        return [(e.entity_type, e.id, e.action) for e in self.read(self.graph.apply_log)]

    def refs(self) -> set[Ref]:
        """Every entity on the edge, as a Ref."""
        return {Ref(e.entity_type, str(e.id)) for e in self.read(self.graph.entities)}


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path / "edge")
    yield r
    r.store.close()


ALL = {Ref(t, str(i)) for t, i, _ in bodies().values()}
REL = f"{IDS['asset']}->{IDS['device']} Contains/COMMON"


def assert_after_references(rig: Rig) -> None:
    """In the apply log, every entity is ADDED after what it references, a relation after both
    of its ends."""
    first: dict[tuple[str, str], int] = {}
    for n, (logged_type, logged_id, action) in enumerate(rig.log()):
        if action == "ADDED":
            first.setdefault((logged_type, logged_id), n)
    for etype, eid, body in bodies().values():
        for ref in hard_references(etype, body):
            if ref.kind == "WIDGET_TYPE_FQN":
                ref = Ref("WIDGET_TYPE", str(IDS["widget"]))
            assert first[(ref.kind, ref.key)] < first[(etype, str(eid))], (etype, ref)
    for end in (("ASSET", str(IDS["asset"])), ("DEVICE", str(IDS["device"]))):
        assert first[end] < first[("RELATION", REL)]


def assert_whole_graph(rig: Rig, suffix: str = "") -> None:
    assert rig.refs() == ALL
    for name, (etype, eid, body) in bodies(suffix).items():
        with rig.store.read() as txn:
            record = rig.graph.entity(txn, eid, etype)
        assert record is not None, name
        if etype == "USER_CREDENTIALS":
            assert json.loads(record.json) == {"userId": tid("USER", IDS["user"]),
                                               "enabled": suffix == ""}
        else:
            assert record.json == json.dumps(body), name  # exactly as received
    bundle = rig.read(lambda txn: rig.graph.entity(txn, IDS["bundle"]))
    assert bundle.extra == json.dumps(["gauge"])
    assert rig.read(lambda txn: rig.graph.relations(txn, IDS["device"])) == [relation_body(suffix)]
    # the operational records the rest of the edge uses
    device = rig.read(lambda txn: rig.entities.device(txn, IDS["device"]))
    assert device is not None
    assert (device.name, device.token, device.profile_id) == (
        f"t-1{suffix}", f"tok-1{suffix}", IDS["dprofile"])
    assert rig.read(rig.entities.device_profile_ids) == {f"thermostat{suffix}": IDS["dprofile"]}
    tenant = rig.read(rig.entities.tenant)
    assert tenant is not None and (tenant.id, tenant.title) == (IDS["tenant"], f"Acme{suffix}")


# -- create, unchanged, update ------------------------------------------------------------------------


def test_every_kind_in_one_downlink_is_applied_as_received(rig: Rig) -> None:
    parts = every_kind()
    out = rig.apply(downlink(*reversed(parts)))  # the lists' order does not matter
    assert out.held == [] and out.released == []
    assert sorted(out.applied) == sorted([(t, "ADDED") for t, _, _ in bodies().values()]
                                         + [("RELATION", "ADDED")])
    assert_whole_graph(rig)
    assert_after_references(rig)
    assert out.devices_changed and out.profiles_changed


def test_every_kind_one_downlink_each_in_reverse_order_waits_and_is_applied_in_order(
        rig: Rig) -> None:
    """The worst order: every entity arrives before what it references. Each waits (the
    downlink succeeds), and the one that completes its references applies it in the same
    transaction, recursively."""
    held_counts = []
    for part in reversed(every_kind()):
        rig.apply(downlink(part))
        held_counts.append(len(rig.read(rig.graph.held)))
    # relation, view, asset, device credentials, device wait; the asset profile releases the
    # asset, ... until the tenant (first in a sync) comes last
    assert held_counts[:6] == [1, 2, 3, 4, 5, 4] and held_counts[-1] == 0
    assert rig.read(rig.graph.held) == []
    assert_whole_graph(rig)
    assert_after_references(rig)


def test_the_same_entities_again_are_unchanged_and_not_logged(rig: Rig) -> None:
    rig.apply(downlink(*every_kind()))
    logged = rig.log()
    again = rig.apply(downlink(*every_kind()))
    assert again.applied == [] and not again.devices_changed
    assert rig.log() == logged
    device = rig.read(lambda txn: rig.entities.device(txn, IDS["device"]))
    assert device is not None and device.version == 1  # not bumped by the unchanged resend


def test_every_kind_is_updated(rig: Rig) -> None:
    rig.apply(downlink(*every_kind()))
    before = len(rig.log())
    out = rig.apply(downlink(*every_kind("-v2", UPDATED)))
    assert sorted(out.applied) == sorted([(t, "UPDATED") for t, _, _ in bodies().values()]
                                         + [("RELATION", "UPDATED")])
    assert_whole_graph(rig, "-v2")
    assert len(rig.log()) == before + len(ALL) + 1
    assert rig.read(lambda txn: rig.graph.entities(txn, entity_type="DEVICE", name="t-1")) == []


# -- deletes ------------------------------------------------------------------------------------------

# what goes with each deleted entity (its dependants through hard references)
GOES_WITH = {
    "tenant": set(), "queue": set(), "root": {"root_meta"},
    "target": {"target_meta", "root_meta"}, "root_meta": set(), "target_meta": set(),
    "user": {"user_credentials"}, "widget": {"dashboard"}, "bundle": set(), "customer": set(),
    "dashboard": set(), "dprofile": {"device", "device_credentials", "view"},
    "aprofile": {"asset"}, "device": {"device_credentials", "view"}, "asset": set(),
    "view": set(),
}


@pytest.mark.parametrize("name", sorted(GOES_WITH))
def test_a_delete_of_each_kind_removes_it_and_its_dependants(rig: Rig, name: str) -> None:
    rig.apply(downlink(*every_kind()))
    etype, eid, body = bodies()[name]
    # a kind without id halves (rule chain metadata) names itself in its JSON
    out = rig.apply(downlink(payload(etype, eid, None if BY_TYPE[etype].has_id_halves else body,
                                     DELETED)))
    gone = {name} | GOES_WITH[name]
    expected = {Ref(bodies()[n][0], str(bodies()[n][1])) for n in gone}
    assert rig.refs() == ALL - expected
    relation_gone = bool({"asset", "device"} & gone)
    assert rig.read(lambda txn: rig.graph.relation_count(txn)) == (0 if relation_gone else 1)
    assert sorted(out.applied) == sorted([(r.kind, "DELETED") for r in expected]
                                         + ([("RELATION", "DELETED")] if relation_gone else []))
    deleted = [(t, i) for t, i, a in rig.log() if a == "DELETED"]
    assert deleted[-1] == (etype, str(eid))  # dependants first
    if "device" in gone:
        assert rig.read(lambda txn: rig.entities.device(txn, IDS["device"])) is None
        assert rig.read(lambda txn: rig.entities.device_by_token(txn, "tok-1")) is None
        assert out.devices_changed
    if name == "tenant":
        assert rig.read(rig.entities.tenant) is None


def test_a_relation_delete_and_a_delete_of_what_the_edge_lacks(rig: Rig) -> None:
    rig.apply(downlink(*every_kind()))
    out = rig.apply(downlink(payload("RELATION", None, relation_body(), DELETED)))
    assert out.applied == [("RELATION", "DELETED")]
    assert rig.read(lambda txn: rig.graph.relation_count(txn)) == 0
    again = rig.apply(downlink(payload("RELATION", None, relation_body(), DELETED),
                               payload("ASSET", uuid.uuid4(), None, DELETED)))
    assert again.applied == [] and len(again.done) == 2
    assert rig.refs() == ALL


def test_a_tenant_deleted_without_json_is_the_edges_tenant(rig: Rig) -> None:
    rig.apply(downlink(*every_kind()))
    tenant = edge_pb2.TenantUpdateMsg(msgType=DELETED)  # ThingsBoard sends no entity
    out = rig.apply(downlink(("tenantUpdateMsg", tenant)))
    assert out.applied == [("TENANT", "DELETED")]
    assert rig.read(rig.entities.tenant) is None


# -- held and released --------------------------------------------------------------------------------


def test_a_relation_waits_for_a_device_that_waits_for_its_profile(rig: Rig) -> None:
    b = bodies()
    _, aid, asset = b["asset"]
    _, apid, aprofile = b["aprofile"]
    _, did, device = b["device"]
    _, pid, profile = b["dprofile"]
    out = rig.apply(downlink(payload("RELATION", None, relation_body())))
    assert out.held == [f"RELATION ASSET {aid} -Contains-> DEVICE {did} waits for "
                        f"ASSET {aid}, DEVICE {did}"]
    rig.apply(downlink(payload("DEVICE", did, device)))
    rig.apply(downlink(payload("ASSET_PROFILE", apid, aprofile), payload("ASSET", aid, asset)))
    # the asset came: the relation waits for the device alone, which waits for its profile
    held = {h.entity_type: (h.id, h.waiting_for) for h in rig.read(rig.graph.held)}
    assert held == {"DEVICE": (did, (Ref("DEVICE_PROFILE", str(pid)),)),
                    "RELATION": (None, (Ref("DEVICE", str(did)),))}
    assert rig.read(lambda txn: rig.entities.device(txn, did)) is None
    out = rig.apply(downlink(payload("DEVICE_PROFILE", pid, profile)))
    assert out.released == [f"DEVICE {did} (t-1)",
                            f"RELATION ASSET {aid} -Contains-> DEVICE {did}"]
    assert rig.read(rig.graph.held) == []
    assert rig.log()[-3:] == [("DEVICE_PROFILE", str(pid), "ADDED"), ("DEVICE", str(did), "ADDED"),
                              ("RELATION", REL, "ADDED")]
    assert rig.read(lambda txn: rig.entities.device(txn, did)) is not None


def test_an_update_of_a_held_entity_replaces_it_and_a_delete_drops_it(rig: Rig) -> None:
    b = bodies()
    _, did, device = b["device"]
    _, pid, profile = b["dprofile"]
    rig.apply(downlink(payload("DEVICE", did, device)))
    renamed = {**device, "name": "t-1 renamed"}
    rig.apply(downlink(payload("DEVICE", did, renamed, UPDATED)))
    (held,) = rig.read(rig.graph.held)
    assert held == HeldEntity("DEVICE", did, f"DEVICE {did} (t-1 renamed)",
                              (Ref("DEVICE_PROFILE", str(pid)),), NOW)
    rig.apply(downlink(payload("DEVICE_PROFILE", pid, profile)))
    record = rig.read(lambda txn: rig.graph.entity(txn, did))
    assert record is not None and record.json == json.dumps(renamed)
    # held again (its new profile is not there), then deleted: nothing waits any more
    other = uuid.uuid4()
    moved = {**renamed, "deviceProfileId": tid("DEVICE_PROFILE", other)}
    rig.apply(downlink(payload("DEVICE", did, moved, UPDATED)))
    assert len(rig.read(rig.graph.held)) == 1
    assert rig.read(lambda txn: rig.graph.entity(txn, did)).json == json.dumps(renamed)
    rig.apply(downlink(payload("DEVICE", did, None, DELETED)))
    assert rig.read(rig.graph.held) == []
    assert rig.read(lambda txn: rig.graph.entity(txn, did)) is None
    assert rig.read(lambda txn: rig.graph.waiting_on(txn, Ref("DEVICE_PROFILE", str(other)))) == []


def test_a_held_entity_refused_when_released_stays_held(rig: Rig) -> None:
    """Credentials held for their device, whose access token another device took meanwhile:
    the device that releases them is applied, the credentials stay held (listed, with a
    WARNING) instead of failing the device's downlink."""
    b = bodies()
    _, did, device = b["device"]
    _, pid, profile = b["dprofile"]
    _, _, creds = b["device_credentials"]
    rig.apply(downlink(payload("DEVICE_PROFILE", pid, profile),
                       payload("DEVICE_CREDENTIALS", did, creds)))
    squatter = uuid.uuid4()
    rig.apply(downlink(payload("DEVICE", squatter, {"id": tid("DEVICE", squatter),
                                                    "name": "other", "type": "other"}),
                       payload("DEVICE_CREDENTIALS", squatter, {
                           "deviceId": tid("DEVICE", squatter),
                           "credentialsType": "ACCESS_TOKEN", "credentialsId": "tok-1"})))
    out = rig.apply(downlink(payload("DEVICE", did, device)))
    assert out.applied == [("DEVICE", "ADDED")] and out.released == [] and out.refused == []
    assert out.warnings == [
        f"DEVICE_CREDENTIALS {did} not applied once its references came, kept held: "
        f"credentials of device {did} refused: their access token is used by device "
        f"{squatter} on the edge (ThingsBoard Edge: Device credentials are already assigned "
        "to another device!)"]
    assert [(h.entity_type, h.id, h.waiting_for) for h in rig.read(rig.graph.held)] == [
        ("DEVICE_CREDENTIALS", did, ())]
    assert rig.read(lambda txn: rig.entities.device(txn, did)).token == ""


def test_a_dashboard_waits_for_its_tenant_widget_type_and_a_chain_for_the_chains_it_calls(
        rig: Rig) -> None:
    b = bodies()
    rig.apply(downlink(payload("DASHBOARD", IDS["dashboard"], b["dashboard"][2]),
                       payload("RULE_CHAIN_METADATA", IDS["root"], b["root_meta"][2]),
                       payload("RULE_CHAIN", IDS["root"], b["root"][2])))
    waits = {h.entity_type: h.waiting_for for h in rig.read(rig.graph.held)}
    assert waits == {"DASHBOARD": (Ref("WIDGET_TYPE_FQN", "gauge"),),
                     "RULE_CHAIN_METADATA": (Ref("RULE_CHAIN", str(IDS["target"])),)}
    out = rig.apply(downlink(payload("WIDGET_TYPE", IDS["widget"], b["widget"][2]),
                             payload("RULE_CHAIN", IDS["target"], b["target"][2])))
    assert sorted(out.released) == sorted([f"DASHBOARD {IDS['dashboard']} (Boiler)",
                                           f"RULE_CHAIN_METADATA {IDS['root']} (to target)"
                                           if False else f"RULE_CHAIN_METADATA {IDS['root']}"])
    assert rig.read(rig.graph.held) == []


# -- what is kept, and what is refused ----------------------------------------------------------------


def test_user_credentials_keep_the_user_and_enabled_only(rig: Rig) -> None:
    b = bodies()
    rig.apply(downlink(payload("USER", IDS["user"], b["user"][2]),
                       payload("USER_CREDENTIALS", None, b["user_credentials"][2])))
    record = rig.read(lambda txn: rig.graph.entity(txn, IDS["user"], "USER_CREDENTIALS"))
    assert record is not None
    assert json.loads(record.json) == {"userId": tid("USER", IDS["user"]), "enabled": True}
    with rig.store.read() as txn:
        everything = b"".join(bytes(v) for db in rig.store.dbs.values()
                              for _, v in txn.cursor(db=db).iternext())
    assert SECRET_PASSWORD.encode() not in everything and SECRET_TOKEN.encode() not in everything


@pytest.mark.parametrize(("part", "error"), [
    (payload("ASSET", uuid.uuid4(), {"name": "a"}, 7), "assetUpdateMsg type 7 unknown"),
    (("relationUpdateMsg", edge_pb2.RelationUpdateMsg(msgType=CREATED, entity='{"type": "x"}')),
     r"relationUpdateMsg: relation without both ends \(from, to\)"),
    (("assetUpdateMsg", edge_pb2.AssetUpdateMsg(msgType=CREATED, entity="not json")),
     "assetUpdateMsg: entity is not JSON"),
    (payload("DEVICE", uuid.uuid4(), {"type": "t"}), "deviceUpdateMsg: device has no name"),
    (("customerUpdateMsg", edge_pb2.CustomerUpdateMsg(msgType=CREATED, entity="{}")),
     "customerUpdateMsg: id is not a UUID"),
    (payload("DEVICE_PROFILE", uuid.uuid4(), {"type": "DEFAULT"}), "has no name"),
])
def test_refused_payloads_fail_the_downlink(rig: Rig, part: tuple[str, Any], error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        rig.apply(downlink(part))
    assert rig.refs() == set() and rig.log() == []


def test_what_waits_for_something_the_edge_made_is_applied_by_release_ready(rig: Rig) -> None:
    """A relation to a device made on the edge (the device table, no downlink): applied by
    release_ready (the DownlinkActor runs it at start and at every sync completion)."""
    _, aid, body = bodies()["asset"]
    _, apid, aprofile = bodies()["aprofile"]
    made = uuid.uuid4()
    rel = {**relation_body(), "to": tid("DEVICE", made)}
    rig.apply(downlink(payload("ASSET_PROFILE", apid, aprofile), payload("ASSET", aid, body),
                       payload("RELATION", None, rel)))
    assert [h.waiting_for for h in rig.read(rig.graph.held)] == [(Ref("DEVICE", str(made)),)]
    rig.store.write(lambda txn: rig.entities.put_device(txn, Device(made, "edge-made", "t",
                                                                    "tok-e", NOW)))
    out = GraphOutcome()
    rig.store.write(lambda txn: rig.applier.release_ready(txn, NOW, out))
    assert out.released == [f"RELATION ASSET {aid} -Contains-> DEVICE {made}"]
    assert rig.read(rig.graph.held) == []
    assert rig.read(lambda txn: rig.graph.relations(txn, made)) == [rel]


# -- what the reviews found ------------------------------------------------------------------------


def test_user_credentials_held_for_their_user_keep_nothing_secret(rig: Rig) -> None:
    """Held until the user arrives: the held payload is what would be kept, never the password
    or the activation token the cloud sent."""
    b = bodies()
    rig.apply(downlink(payload("USER_CREDENTIALS", None, b["user_credentials"][2])))
    assert rig.read(rig.graph.held_count) == 1
    with rig.store.read() as txn:
        everything = b"".join(bytes(v) for db in rig.store.dbs.values()
                              for _, v in txn.cursor(db=db).iternext())
    assert SECRET_PASSWORD.encode() not in everything and SECRET_TOKEN.encode() not in everything
    rig.apply(downlink(payload("USER", IDS["user"], b["user"][2])))
    assert rig.read(rig.graph.held_count) == 0
    record = rig.read(lambda txn: rig.graph.entity(txn, IDS["user"], "USER_CREDENTIALS"))
    assert record is not None
    assert json.loads(record.json) == {"userId": tid("USER", IDS["user"]), "enabled": True}


def test_credentials_removed_alone_leave_the_devices_attributes(rig: Rig) -> None:
    """Credentials share their device's id: removing them (a sweep, a cascade) keeps the
    device's attributes and latest values, which are the device's."""
    rig.apply(downlink(*every_kind()))
    rig.store.write(lambda txn: rig.entities.put_attributes(
        txn, IDS["device"], Scope.SERVER, {"floor": 3}, ts=NOW))
    rig.store.write(lambda txn: rig.graph.delete_entity(
        txn, "DEVICE_CREDENTIALS", IDS["device"], now_ms=NOW))
    assert rig.read(lambda txn: rig.entities.attributes(
        txn, IDS["device"], Scope.SERVER, ["floor"])) == {"floor": 3}
    assert rig.read(lambda txn: rig.graph.entity(txn, IDS["device"], "DEVICE")) is not None


def _edge_asset(rig: Rig, status: Status) -> uuid.UUID:
    """An asset the edge made (origin edge), its ADDED event at seq 1 in ``status``."""
    asset_id = uuid.uuid4()
    body = {"id": tid("ASSET", asset_id), "name": "made-on-edge", "type": "default"}

    def fn(txn: Any) -> None:
        EventLog(rig.store).append(
            txn, [NewEvent("ASSET", "ASSET", asset_id, "ADDED", body, NOW)], first_seq=1,
            created_time=NOW, tenant_id=bytes(16), edge_id=bytes(16))
        if status is Status.DEPLOYED:
            EventLog(rig.store).mark_deployed(txn, [1], now_ms=NOW)
        rig.graph.put_entity(txn, "ASSET", asset_id, json.dumps(body), now_ms=NOW,
                             origin="edge", origin_seq=1)
    rig.store.write(fn)
    return asset_id


@pytest.mark.parametrize("status", [Status.PENDING, Status.DEPLOYED])
def test_what_the_cloud_sends_does_not_undo_an_edge_change_still_on_its_way(
        rig: Rig, status: Status) -> None:
    """A full sync comes before uplinks start: the cloud's copy of an asset the edge changed
    predates that change while its event is PENDING, so the edge's version stays; once the
    event is DEPLOYED, the cloud's copy is the newer one and is applied."""
    asset_id = _edge_asset(rig, status)
    cloud = {"id": tid("ASSET", asset_id), "name": "cloud-copy", "type": "default"}
    rig.apply(downlink(payload("ASSET", asset_id, cloud, UPDATED)))
    record = rig.read(lambda txn: rig.graph.entity(txn, asset_id, "ASSET"))
    assert record is not None
    if status is Status.PENDING:
        assert (record.name, record.origin, record.origin_seq) == ("made-on-edge", "edge", 1)
    else:
        assert (record.name, record.origin, record.origin_seq) == ("cloud-copy", "cloud", None)


# -- conflicts with what the edge holds, settled as ThingsBoard Edge settles them ---------------------


def _device(device_id: uuid.UUID, name: str) -> dict[str, Any]:
    return {"id": tid("DEVICE", device_id), "name": name, "type": "pump", "createdTime": NOW}


def _credentials(device_id: uuid.UUID, token: str) -> dict[str, Any]:
    return {"deviceId": tid("DEVICE", device_id), "credentialsType": "ACCESS_TOKEN",
            "credentialsId": token}


def _device_named(rig: Rig, name: str) -> uuid.UUID | None:
    found = rig.read(lambda txn: rig.entities.device_by_name(txn, name))
    return None if found is None else found.id


def _full_sync(rig: Rig, *msgs: edge_pb2.DownlinkMsg) -> tuple[list[GraphOutcome], list[str]]:
    """A full sync that sends ``msgs``, then its end: what each applied, and what its end
    removed."""
    rig.store.write(lambda txn: rig.graph.start_full_sync(txn, now_ms=NOW, reason="test"))
    outs = [rig.apply(m) for m in msgs]
    removed = rig.store.write(lambda txn: rig.graph.complete_full_sync(
        txn, now_ms=NOW, version="9.9.9"))
    return outs, [f"{r.entity_type} {r.id}" for r in removed]


def test_a_device_whose_name_another_device_has_gets_thingsboard_edges_unique_name(
        rig: Rig) -> None:
    """BaseDeviceProcessor.updateDeviceNameIfDuplicateExists: never refused, renamed to
    name + "_" + 15 letters, JSON and device record alike; the other device is left alone.
    Sent again while the name is taken it keeps that name (unchanged, nothing logged); once the
    name is free its next version takes the cloud's name."""
    holder, dev = uuid.uuid4(), uuid.uuid4()
    rig.apply(downlink(payload("DEVICE", holder, _device(holder, "pump"))))
    out = rig.apply(downlink(payload("DEVICE", dev, _device(dev, "pump")),
                             payload("DEVICE_CREDENTIALS", dev, _credentials(dev, "tok-dev"))))
    (renamed,) = out.renamed
    assert re.fullmatch(r"pump_[A-Za-z]{15}", renamed.name), renamed.name
    assert renamed == Renamed(dev, "pump", renamed.name, holder)
    assert out.applied == [("DEVICE", "ADDED"), ("DEVICE_CREDENTIALS", "ADDED")]
    assert out.refused == [] and out.warnings == []
    record = rig.read(lambda txn: rig.entities.device(txn, dev))
    assert (record.name, record.token) == (renamed.name, "tok-dev")
    assert _device_named(rig, "pump") == holder
    stored = rig.read(lambda txn: rig.graph.entity(txn, dev, "DEVICE"))
    assert json.loads(stored.json) == {**_device(dev, "pump"), "name": renamed.name}
    assert stored.name == renamed.name

    again = rig.apply(downlink(payload("DEVICE", dev, _device(dev, "pump"), UPDATED)))
    assert (again.applied, again.renamed) == ([], [])
    assert again.done == [f"DEVICE {dev} ({renamed.name}) unchanged"]
    assert _device_named(rig, renamed.name) == dev

    rig.apply(downlink(payload("DEVICE", holder, None, DELETED)))
    freed = rig.apply(downlink(payload("DEVICE", dev, _device(dev, "pump"), UPDATED)))
    assert (freed.applied, freed.renamed) == ([("DEVICE", "UPDATED")], [])
    assert _device_named(rig, "pump") == dev and _device_named(rig, renamed.name) is None
    assert json.loads(rig.read(lambda txn: rig.graph.entity(txn, dev)).json) \
        == _device(dev, "pump")


def test_a_unique_name_is_made_for_that_name_only() -> None:
    assert is_unique_name_of("pump_abcdefghijKLMNO", "pump")
    assert not is_unique_name_of("pump_abcdefghijKLMN", "pump")  # 14 letters
    assert not is_unique_name_of("pump_abcdefghijKLM1O", "pump")
    assert not is_unique_name_of("pump2_abcdefghijKLMNO", "pump")
    assert is_unique_name_of("a.b_abcdefghijKLMNO", "a.b")
    assert not is_unique_name_of("axb_abcdefghijKLMNO", "a.b")


def test_a_full_sync_keeps_a_device_renamed_because_a_stale_device_had_its_name(rig: Rig) -> None:
    """The cloud no longer assigns the stale device, and a new device has its name: the full
    sync applies the new one under a unique name (with its token), and its end removes only the
    stale one."""
    stale, new = uuid.uuid4(), uuid.uuid4()
    rig.apply(downlink(payload("DEVICE", stale, _device(stale, "pump")),
                       payload("DEVICE_CREDENTIALS", stale, _credentials(stale, "tok-old"))))
    outs, removed = _full_sync(rig, downlink(
        payload("DEVICE", new, _device(new, "pump")),
        payload("DEVICE_CREDENTIALS", new, _credentials(new, "tok-new"))))
    (renamed,) = outs[0].renamed
    assert renamed.holder_id == stale
    assert removed == [f"DEVICE_CREDENTIALS {stale}", f"DEVICE {stale}"]
    kept = rig.read(lambda txn: rig.entities.device(txn, new))
    assert (kept.name, kept.token) == (renamed.name, "tok-new")
    assert rig.read(lambda txn: rig.entities.device_by_token(txn, "tok-new")).id == new
    assert rig.read(lambda txn: rig.entities.device(txn, stale)) is None
    assert rig.read(lambda txn: rig.entities.device_by_token(txn, "tok-old")) is None


def test_a_full_sync_keeps_both_devices_of_a_name_swap(rig: Rig) -> None:
    """The cloud swapped two names: the first device sent takes a unique name (the other still
    has its new name), the second takes its new name, the end removes neither."""
    a, b = uuid.uuid4(), uuid.uuid4()
    rig.apply(downlink(payload("DEVICE", a, _device(a, "x")),
                       payload("DEVICE", b, _device(b, "y"))))
    outs, removed = _full_sync(rig, downlink(payload("DEVICE", a, _device(a, "y"), UPDATED)),
                               downlink(payload("DEVICE", b, _device(b, "x"), UPDATED)))
    assert removed == []
    (renamed,) = outs[0].renamed
    assert (renamed.device_id, renamed.cloud_name, renamed.holder_id) == (a, "y", b)
    assert outs[1].renamed == []
    assert _device_named(rig, renamed.name) == a and _device_named(rig, "x") == b
    assert _device_named(rig, "y") is None


def test_credentials_whose_token_another_device_has_are_refused_alone(rig: Rig) -> None:
    """DeviceCredentialsDataValidator ("Device credentials are already assigned to another
    device!"), thrown after ThingsBoard Edge saved the device: the device and its profile are
    applied, the credentials are not (the device keeps the token it had); during a full sync
    they count as sent, so its end leaves the device's credentials record."""
    holder, dev = uuid.uuid4(), uuid.uuid4()
    _, pid, profile = bodies()["dprofile"]
    rig.apply(downlink(payload("DEVICE", holder, _device(holder, "holder")),
                       payload("DEVICE_CREDENTIALS", holder, _credentials(holder, "tok-b")),
                       payload("DEVICE", dev, _device(dev, "dev")),
                       payload("DEVICE_CREDENTIALS", dev, _credentials(dev, "tok-a"))))
    moved = {**_device(dev, "dev"), "label": "moved",
             "deviceProfileId": tid("DEVICE_PROFILE", pid)}
    outs, removed = _full_sync(rig, downlink(
        payload("DEVICE_CREDENTIALS", dev, _credentials(dev, "tok-b")),
        payload("DEVICE", dev, moved, UPDATED), payload("DEVICE_PROFILE", pid, profile),
        payload("DEVICE", holder, _device(holder, "holder"), UPDATED),
        payload("DEVICE_CREDENTIALS", holder, _credentials(holder, "tok-b"))))
    out = outs[0]
    error = (f"credentials of device {dev} refused: their access token is used by device "
             f"{holder} on the edge (ThingsBoard Edge: Device credentials are already assigned "
             "to another device!)")
    assert out.refused == [error]
    assert out.applied == [("DEVICE_PROFILE", "ADDED"), ("DEVICE", "UPDATED")]
    assert f"DEVICE_CREDENTIALS {dev} refused: {error}" in out.done
    assert removed == []
    record = rig.read(lambda txn: rig.entities.device(txn, dev))
    assert (record.label, record.profile_id, record.token) == ("moved", pid, "tok-a")
    assert rig.read(lambda txn: rig.entities.device_by_token(txn, "tok-b")).id == holder
    creds = rig.read(lambda txn: rig.graph.entity(txn, dev, "DEVICE_CREDENTIALS"))
    assert json.loads(creds.json) == _credentials(dev, "tok-a")


# -- credentials that are not an access token ------------------------------------------------------

MQTT_BASIC_VALUE = json.dumps({"clientId": "pump-1", "userName": "pump", "password": "pw-1"})
CERT_HASH = "2f4c0a4a9d0e3b7c8a1f6e5d4c3b2a1908f7e6d5c4b3a2918f7e6d5c4b3a2918"


def _other_credentials(device_id: uuid.UUID, kind: str | None) -> dict[str, Any]:
    """DeviceCredentials JSON of type ``kind`` as ThingsBoard sends it
    (DeviceCredentialsServiceImpl.formatCredentials: the id a hash, or the user name)."""
    body: dict[str, Any] = {"id": {"id": str(uuid.uuid4())}, "createdTime": NOW,
                            "deviceId": tid("DEVICE", device_id), "credentialsType": kind,
                            "credentialsId": CERT_HASH, "credentialsValue": None}
    if kind == "MQTT_BASIC":
        body["credentialsValue"] = MQTT_BASIC_VALUE
    elif kind == "X509_CERTIFICATE":
        body["credentialsValue"] = "MIIBszCCAVmgAwIBAgIUUkVkZ2Ugc3luYyB0ZXN0"
    return body


def _token_of(rig: Rig, device_id: uuid.UUID) -> str:
    device = rig.read(lambda txn: rig.entities.device(txn, device_id))
    assert device is not None
    return str(device.token)


def _tokens_indexed(rig: Rig) -> int:
    return int(rig.read(lambda txn: rig.store.entries(txn, "device_tokens")))


@pytest.mark.parametrize(("kind", "shown"), [
    ("MQTT_BASIC", "MQTT_BASIC"), ("X509_CERTIFICATE", "X509_CERTIFICATE"),
    ("LWM2M_CREDENTIALS", "LWM2M_CREDENTIALS"), (None, "null")])
def test_credentials_of_another_type_remove_the_devices_access_token(
        rig: Rig, kind: str | None, shown: str) -> None:
    """A ThingsBoard device has one credentials row, which
    DeviceCredentialsServiceImpl.updateDeviceCredentials replaces: once they are MQTT_BASIC or
    X.509, DefaultTransportApiService.validateCredentials finds no ACCESS_TOKEN credentials for
    the old token. The edge removes the device's token (record and index) and keeps the JSON;
    the same credentials again change nothing; access token credentials give a token back."""
    dev = uuid.uuid4()
    rig.apply(downlink(payload("DEVICE", dev, _device(dev, "pump")),
                       payload("DEVICE_CREDENTIALS", dev, _credentials(dev, "tok-a"))))
    assert (_token_of(rig, dev), _tokens_indexed(rig)) == ("tok-a", 1)

    other = _other_credentials(dev, kind)
    out = rig.apply(downlink(payload("DEVICE_CREDENTIALS", dev, other)))
    assert out.revoked == [Revoked(dev, shown)]
    assert out.devices_changed is True
    assert out.applied == [("DEVICE_CREDENTIALS", "UPDATED")]
    assert out.done == [f"device {dev}: credentials type {shown}, access token removed",
                        f"DEVICE_CREDENTIALS {dev} updated"]
    assert out.refused == [] and out.warnings == []
    assert (_token_of(rig, dev), _tokens_indexed(rig)) == ("", 0)
    assert rig.read(lambda txn: rig.entities.device_by_token(txn, "tok-a")) is None
    assert json.loads(rig.read(lambda txn: rig.graph.entity(
        txn, dev, "DEVICE_CREDENTIALS")).json) == other
    assert rig.read(lambda txn: rig.entities.device(txn, dev)).name == "pump"

    again = rig.apply(downlink(payload("DEVICE_CREDENTIALS", dev, other)))
    assert (again.revoked, again.applied, again.devices_changed) == ([], [], False)
    assert again.done == [f"DEVICE_CREDENTIALS {dev} unchanged"]

    back = rig.apply(downlink(payload("DEVICE_CREDENTIALS", dev, _credentials(dev, "tok-a"))))
    assert (back.revoked, back.devices_changed) == ([], True)
    assert (_token_of(rig, dev), _tokens_indexed(rig)) == ("tok-a", 1)
    assert rig.read(lambda txn: rig.entities.device_by_token(txn, "tok-a")).id == dev


def test_a_device_that_comes_with_credentials_of_another_type_has_no_token(rig: Rig) -> None:
    """Nothing to remove, nothing reported: the device is there, without an access token, and
    credentials held for it until it comes are applied the same way."""
    dev, later = uuid.uuid4(), uuid.uuid4()
    out = rig.apply(downlink(payload("DEVICE", dev, _device(dev, "pump")),
                             payload("DEVICE_CREDENTIALS", dev,
                                     _other_credentials(dev, "MQTT_BASIC"))))
    assert out.revoked == []
    assert f"device {dev}: credentials type MQTT_BASIC, no access token" in out.done
    assert (_token_of(rig, dev), _tokens_indexed(rig)) == ("", 0)
    held = rig.apply(downlink(payload("DEVICE_CREDENTIALS", later,
                                      _other_credentials(later, "X509_CERTIFICATE"))))
    assert held.held == [f"DEVICE_CREDENTIALS {later} waits for DEVICE {later}"]
    released = rig.apply(downlink(payload("DEVICE", later, _device(later, "fan"))))
    assert released.released == [f"DEVICE_CREDENTIALS {later}"]
    assert released.revoked == []
    assert (_token_of(rig, later), _tokens_indexed(rig)) == ("", 0)


def test_a_full_sync_removes_the_token_of_a_device_whose_credentials_are_no_longer_one(
        rig: Rig) -> None:
    """The cloud changed the credentials while the edge was away: the full sync's credentials
    remove the token. Credentials the graph already holds, sent unchanged, remove a token the
    device still has (a store an earlier release left so) all the same; neither is removed at
    the sync's end."""
    dev = uuid.uuid4()
    rig.apply(downlink(payload("DEVICE", dev, _device(dev, "pump")),
                       payload("DEVICE_CREDENTIALS", dev, _credentials(dev, "tok-a"))))
    other = _other_credentials(dev, "MQTT_BASIC")
    sent = downlink(payload("DEVICE", dev, _device(dev, "pump"), UPDATED),
                    payload("DEVICE_CREDENTIALS", dev, other))
    outs, removed = _full_sync(rig, sent)
    assert (outs[0].revoked, removed) == ([Revoked(dev, "MQTT_BASIC")], [])
    assert (_token_of(rig, dev), _tokens_indexed(rig)) == ("", 0)

    stale = rig.read(lambda txn: rig.entities.device(txn, dev))
    rig.store.write(lambda txn: rig.entities.put_device(txn, replace(stale, token="tok-a")))
    outs, removed = _full_sync(rig, sent)
    assert (outs[0].applied, outs[0].revoked, removed) == ([], [Revoked(dev, "MQTT_BASIC")], [])
    assert outs[0].done[-1] == f"DEVICE_CREDENTIALS {dev} unchanged"
    assert (_token_of(rig, dev), _tokens_indexed(rig)) == ("", 0)
    assert rig.read(lambda txn: rig.entities.device_by_token(txn, "tok-a")) is None
