"""bench/graph_population.py on real LMDB stores in tmp_path: a plant has exactly the counts of
its spec, every relation's ends are on the edge, the asset cycle and the rule chain forwarding
are there (and no reference cycle), dashboards name widget types that exist, the near-limit
dashboard's downlink is the size asked for, users carry no password, each device queues its
downlink with the graph's profile of its type, the same seed gives the same plant (whatever the
batch size), and the edge-side view reads back what an edge store holds."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.graph_population import (
    PlantSpec,
    Population,
    View,
    build_plant,
    counts_by_kind,
    diff,
    downlink_size,
    edge_expected,
    edge_graph,
    plant_relation_id,
    populate,
)
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.common import entity_graph
from edge_sync.common.entity_graph import RULE_CHAIN_INPUT_NODE, Ref
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.proto import edge_pb2
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore

SMALL = PlantSpec(devices=12, assets=9, relations=20, customers=2, device_profiles=3,
                  asset_profiles=2, widget_types=2, widgets_bundles=1, dashboards=3,
                  rule_chains=2, users=10, entity_views=2)

# the cloud's own entities, on every edge: the tenant, ThingsBoard's three queues, the edge root
# rule chain (and its metadata), the default device and asset profiles
DEFAULTS = {"TENANT": 1, "QUEUE": 3, "RULE_CHAIN": 1, "RULE_CHAIN_METADATA": 1,
            "DEVICE_PROFILE": 1, "ASSET_PROFILE": 1}


def _store(path: Path, routing_key: str = "plant-1") -> CloudStore:
    store = CloudStore(path)
    CloudService(store).create_edge("plant", routing_key=routing_key, secret="s3cret")
    return store


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CloudStore]:
    s = _store(tmp_path / "cloud")
    yield s
    s.close()


@pytest.fixture
def small(store: CloudStore) -> tuple[Population, View]:
    pop = build_plant(store, "plant-1", SMALL, seed=7)
    return pop, edge_expected(store, "plant-1")


def _expected_counts(spec: PlantSpec) -> dict[str, int]:
    plant = {"CUSTOMER": spec.customers, "DEVICE_PROFILE": spec.device_profiles,
             "ASSET_PROFILE": spec.asset_profiles, "WIDGET_TYPE": spec.widget_types,
             "WIDGETS_BUNDLE": spec.widgets_bundles, "DASHBOARD": spec.dashboards,
             "RULE_CHAIN": spec.rule_chains, "RULE_CHAIN_METADATA": spec.rule_chains,
             "USER": spec.users, "ASSET": spec.assets, "DEVICE": spec.devices,
             "DEVICE_CREDENTIALS": spec.devices, "ENTITY_VIEW": spec.entity_views,
             "RELATION": spec.relations}
    return {k: plant.get(k, 0) + DEFAULTS.get(k, 0) for k in {**DEFAULTS, **plant}}


def test_for_total_makes_exactly_that_many_and_some_of_every_kind() -> None:
    for total in (60, 61, 999, 10_000, 12_345):
        spec = PlantSpec.for_total(total, near_limit_dashboard=total > 100)
        assert spec.total == total
        assert spec.relations >= 3 and spec.assets >= 3 and spec.users == 10
        assert spec.device_profiles == 3 and spec.rule_chains >= 2 and spec.entity_views >= 2
    big = PlantSpec.for_total(10_000)
    assert big.devices + big.assets + big.relations > 0.99 * big.total
    with pytest.raises(ValueError, match="at least 60"):
        PlantSpec.for_total(59)
    with pytest.raises(ValueError, match="assets >= 3"):
        PlantSpec(assets=2).check()


def test_counts_are_exact_by_kind(store: CloudStore, small: tuple[Population, View]) -> None:
    pop, expected = small
    assert counts_by_kind(expected) == _expected_counts(SMALL)
    written = {k: v - DEFAULTS.get(k, 0) for k, v in _expected_counts(SMALL).items()
               if k not in ("DEVICE_CREDENTIALS", "TENANT", "QUEUE")}
    assert pop.counts == written
    assert sum(v for k, v in pop.counts.items() if k != "RULE_CHAIN_METADATA") == SMALL.total
    assert {k: len(v) for k, v in pop.ids.items()} == {
        k: v for k, v in pop.counts.items() if k not in ("RELATION", "RULE_CHAIN_METADATA")}
    assert len(pop.relations) == len(set(pop.relations)) == SMALL.relations
    # everything assigned to the edge is on it (the kinds on every edge are not assigned)
    edge_id = pop.edge_id
    for kind, entity_ids in pop.ids.items():
        for entity_id in entity_ids:
            assert (kind, str(entity_id)) in expected
            if kind not in ("DEVICE", "USER", "WIDGET_TYPE", "WIDGETS_BUNDLE", "DEVICE_PROFILE",
                            "ASSET_PROFILE"):
                entity = store.graph.entity(entity_id)
                assert entity is not None and entity.edges == (edge_id,), (kind, entity_id)
    assert {d.id for d in store.devices_of_edge(edge_id)} == set(pop.ids["DEVICE"])
    # the seeding queued what a live edge would be sent: one downlink per entity written
    # (metadata and an assigned rule chain each their own) and relation
    assert pop.queued_downlinks == sum(pop.counts.values())


def test_every_relation_has_both_ends_on_the_edge(small: tuple[Population, View]) -> None:
    pop, expected = small
    relations = {k: v for k, v in expected.items() if k[0] == "RELATION"}
    assert set(i for _, i in relations) == set(pop.relations)
    for rel in relations.values():
        for end in (rel["from"], rel["to"]):
            assert (end["entityType"], end["id"]) in expected, rel
        assert rel["typeGroup"] == "COMMON"
    kinds = {(r["from"]["entityType"], r["type"], r["to"]["entityType"]) for r in relations.values()}
    assert {("ASSET", "Contains", "ASSET"), ("ASSET", "Contains", "DEVICE"),
            ("CUSTOMER", "Manages", "ASSET")} <= kinds


def test_the_asset_cycle_is_there(store: CloudStore, small: tuple[Population, View]) -> None:
    pop, _ = small
    a, b, c = pop.cycle
    assert {a, b, c} <= set(pop.ids["ASSET"]) and len({a, b, c}) == 3
    for src, dst in ((a, b), (b, c), (c, a)):
        rid = plant_relation_id({"from": {"entityType": "ASSET", "id": str(src)},
                                 "to": {"entityType": "ASSET", "id": str(dst)},
                                 "type": "Contains", "typeGroup": "COMMON"})
        assert rid in pop.relations
        assert any(r["to"]["id"] == str(dst) and r["type"] == "Contains"
                   for r in store.graph.relations(src))


def test_rule_chain_forwards_to_another_without_a_reference_cycle(
        store: CloudStore, small: tuple[Population, View]) -> None:
    pop, expected = small
    assert pop.forwarding is not None
    src, dst = pop.forwarding
    meta = expected[("RULE_CHAIN_METADATA", str(src))]
    inputs = [n for n in meta["nodes"] if n["type"] == RULE_CHAIN_INPUT_NODE]
    assert [n["configuration"]["ruleChainId"] for n in inputs] == [str(dst)]
    assert Ref("RULE_CHAIN", str(dst)) in entity_graph.references("RULE_CHAIN_METADATA", meta)

    def refs_of(ref: Ref) -> list[Ref]:
        body = expected.get(("RULE_CHAIN_METADATA", ref.key))
        own = {**body, "ruleChainId": None} if body else {}
        return entity_graph.references("RULE_CHAIN_METADATA", own)

    for chain in pop.ids["RULE_CHAIN"]:
        assert entity_graph.find_cycle(Ref("RULE_CHAIN", str(chain)), refs_of) is None
        assert ("RULE_CHAIN_METADATA", str(chain)) in expected


def test_dashboards_use_tenant_widget_types_that_exist(small: tuple[Population, View]) -> None:
    pop, expected = small
    provided = {r for (kind, key), body in expected.items() if kind == "WIDGET_TYPE"
                for r in entity_graph.provides(kind, uuid.UUID(key), body)}
    using = 0
    for did in pop.ids["DASHBOARD"]:
        body = expected[("DASHBOARD", str(did))]
        fulls = [w["typeFullFqn"] for w in body["configuration"]["widgets"].values()]
        assert any(f.startswith("system.") for f in fulls)
        refs = entity_graph.references("DASHBOARD", body)
        assert set(refs) <= provided
        using += bool(refs)
        assert all(f.startswith(("system.", "tenant.")) for f in fulls)
    assert 0 < using < SMALL.dashboards


def test_users_have_no_password_and_devices_use_the_three_profiles(
        small: tuple[Population, View]) -> None:
    pop, expected = small
    for uid in pop.ids["USER"]:
        user = expected[("USER", str(uid))]
        assert not {"password", "activateToken", "resetToken"} & set(user)
    profiles = {str(p) for p in pop.ids["DEVICE_PROFILE"]}
    used = {expected[("DEVICE", str(d))]["deviceProfileId"]["id"] for d in pop.ids["DEVICE"]}
    assert used == profiles and len(profiles) == 3
    views = [expected[("ENTITY_VIEW", str(v))] for v in pop.ids["ENTITY_VIEW"]]
    assert {v["entityId"]["id"] for v in views} <= {str(d) for d in pop.ids["DEVICE"]}


def test_each_device_queues_its_downlink_with_the_graphs_profile(
        store: CloudStore, small: tuple[Population, View]) -> None:
    # what CloudService.create_device queues: one DownlinkMsg per device with the device, its
    # credentials and its device profile exactly as the graph stores it (description and alarm
    # rules included), not a profile made from the device's type
    pop, expected = small
    queued = store.queued_after(pop.edge_id, 0, 100_000)
    devices = [edge_pb2.DownlinkMsg.FromString(q.payload) for q in queued]
    devices = [m for m in devices if m.deviceUpdateMsg]
    assert len(devices) == SMALL.devices
    seen = set()
    for msg in devices:
        [update], [creds], [profile] = (msg.deviceUpdateMsg, msg.deviceCredentialsUpdateMsg,
                                        msg.deviceProfileUpdateMsg)
        device = json.loads(update.entity)
        seen.add(device["id"]["id"])
        assert json.loads(creds.entity)["deviceId"]["id"] == device["id"]["id"]
        kept = store.graph.entity(uuid.UUID(device["deviceProfileId"]["id"]))
        assert kept is not None and json.loads(profile.entity) == json.loads(kept.json)
        assert json.loads(profile.entity) == expected[("DEVICE_PROFILE", str(kept.id))]
        assert json.loads(profile.entity)["profileData"]["alarms"]
    assert seen == {str(d) for d in pop.ids["DEVICE"]}


def test_near_limit_dashboard_is_just_under_the_edge_message_limit(store: CloudStore) -> None:
    spec = PlantSpec(devices=3, assets=3, relations=3, dashboards=2, near_limit_dashboard=True)
    pop = build_plant(store, "plant-1", spec, seed=1)
    assert pop.near_limit_dashboard is not None
    assert pop.near_limit_bytes == DEFAULT_MAX_MESSAGE_BYTES - 100 * 1024
    kept = store.graph.entity(pop.near_limit_dashboard)
    assert kept is not None
    assert downlink_size("DASHBOARD", kept.id, kept.json) == pop.near_limit_bytes
    assert len(kept.json) > 3_900_000
    exact = PlantSpec(devices=3, assets=3, relations=3, dashboards=1, near_limit_dashboard=True)
    other = build_plant(store, "plant-1", exact, seed=2, near_limit_bytes=DEFAULT_MAX_MESSAGE_BYTES)
    assert other.near_limit_bytes == DEFAULT_MAX_MESSAGE_BYTES  # the limit itself still fits


def _without_tenant(view: View) -> dict[tuple[str, str], str]:
    """The view's JSON with the store's own tenant id taken out (everything else is the seed's)."""
    tenants = {b["tenantId"]["id"] for b in view.values() if isinstance(b.get("tenantId"), dict)}
    out = {}
    for key, body in view.items():
        text = json.dumps(body, sort_keys=True)
        for tenant in tenants:
            text = text.replace(tenant, "TENANT")
        out[key] = text
    return out


def test_the_same_seed_makes_the_same_plant(tmp_path: Path) -> None:
    spec = PlantSpec(devices=8, assets=6, relations=12)
    views = []
    for name, batch in (("a", 500), ("b", 5)):  # the batch size changes nothing
        store = _store(tmp_path / name)
        try:
            pop = build_plant(store, "plant-1", spec, seed=42, batch=batch)
            plant_ids = {str(i) for vs in pop.ids.values() for i in vs} | set(pop.relations)
            view = {k: v for k, v in edge_expected(store, "plant-1").items() if k[1] in plant_ids}
            views.append((pop.as_json(), _without_tenant(view)))
        finally:
            store.close()
    (first, view_a), (second, view_b) = views
    for key in ("ids", "relations", "cycle", "forwarding", "counts"):
        assert first[key] == second[key], key
    assert view_a == view_b and len(view_a) == spec.total + spec.rule_chains + spec.devices
    other = populate(tmp_path / "a", "plant-1", spec, seed=43)
    assert not {str(i) for vs in other.ids.values() for i in vs} & {
        i for vs in first["ids"].values() for i in vs}


def test_edge_graph_reads_what_an_edge_store_holds(tmp_path: Path,
                                                   small: tuple[Population, View]) -> None:
    _, expected = small
    edge = LmdbStore(tmp_path / "edge")
    graph = GraphStore(edge)

    def write(txn: Any) -> None:
        for (kind, key), body in expected.items():
            text = json.dumps(body, separators=(",", ":"))
            if kind == "RELATION":
                graph.put_relation(txn, text, now_ms=1)
            else:
                graph.put_entity(txn, kind, uuid.UUID(key), text, now_ms=1)

    edge.write(write)
    edge.close()
    got = edge_graph(tmp_path / "edge")
    assert diff(expected, got) == []
    assert got == expected
    dropped = dict(got)
    key = next(k for k in dropped if k[0] == "ASSET")
    dropped.pop(key)
    changed = dict(got)
    dev = next(k for k in changed if k[0] == "DEVICE")
    changed[dev] = {**changed[dev], "label": "other"}
    assert diff(expected, dropped) == [f"missing ASSET {key[1]}"]
    assert diff(dropped, expected) == [f"extra ASSET {key[1]}"]
    assert diff(expected, changed) == [f"different DEVICE {dev[1]}: label"]
