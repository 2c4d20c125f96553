"""A population of the entity graph for benchmarks and end-to-end tests: a plant for one edge,
written into a reference-cloud store, and the two views a test compares entity by entity: what
the cloud puts on the edge (``edge_expected``) and what the edge's graph store holds
(``edge_graph``). Owned by the benchmarks (``scripts/bench sync``) and shared with the tests.

The plant (``PlantSpec``, counts per kind; ``PlantSpec.for_total(n)`` for n entities, mostly
devices, assets and relations, some of every kind):

- customers, assigned to the edge;
- device profiles (the devices' types name them: ``thermostat``, ``pump``, ``meter``, ...) and
  asset profiles, on every edge (ThingsBoard syncs every profile);
- widget types and one widgets bundle, on every edge; dashboards assigned to the edge, every
  other one using a tenant widget type by ``typeFullFqn`` (ThingsBoard's UI names a tenant
  widget type ``"tenant." + fqn``: ui-ngx widget.models.ts ``fullWidgetTypeFqn``), the others
  system widgets only; optionally one dashboard whose downlink is just under the edge message
  limit (``near_limit_bytes``, the ADDED DownlinkMsg stamped with its id and time: what an
  edge's maxInboundMessageSize limits);
- rule chains (type EDGE) with their metadata, assigned to the edge; the first forwards to the
  second through a TbRuleChainInputNode (no reference cycle);
- users (tenant admins and customer users, no password), on every edge;
- assets with their profile, some owned by a customer; devices created on the edge (the cloud's
  device table, with the downlink CloudService.create_device queues); entity views of devices;
- relations, typeGroup COMMON, both ends on the edge: assets 0, 1, 2 form a cycle (A Contains B
  Contains C Contains A; relations may form cycles, references may not), an asset hierarchy
  (parents before children, so no other Contains cycle), devices in assets, customers managing
  assets, assets feeding assets.

Deterministic from ``seed``: ids are time-based (version 1) from a generator whose clock
sequence and node come from the seed, counting up from ``base_ms``; names carry ``prefix``
(default ``p<seed>-``) so several plants fit in one store. The same seed gives the same ids,
names and JSON (but ``tenantId``, the store's own).

Writing goes through the product's APIs: ``CloudGraph.create_entities`` (one transaction per
batch, each entity assigned to the edge in it), ``CloudStore.add_devices`` (one all-or-nothing
transaction per batch of devices, each device's downlink built in it as CloudService.create_device
has it built: the device, its credentials and its device profile as the graph stores it) and
``CloudGraph.add_relation`` (one commit per relation, grouped by the store's group commit when
several threads add at once). Each queues the downlinks a live edge would get. When an edge-sync
edge asks for its first full sync, the sync supersedes them and the cloud drops them at its end
(cloud/session.py ``_drop_superseded``); an edge that does not sweep (a ThingsBoard Edge, a sync
the operator starts) gets them after the sync, which already carried everything (they apply as
"unchanged").

The views: ``{(entity type, id): parsed JSON}``; a relation's id is the edge's apply-log id of
it (``FROM->TO TYPE/GROUP``, storage/graph_store.relation_text).
"""

from __future__ import annotations

import base64
import json
import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from edge_sync.cloud import downlinks
from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.store import CloudStore
from edge_sync.common import entity_graph, ids
from edge_sync.common.entity_graph import NULL_ID, RULE_CHAIN_INPUT_NODE, Ref
from edge_sync.common.wire import credentials_json, typed_id
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore, relation_text

__all__ = [
    "BASE_MS",
    "DEVICE_TYPES",
    "PlantSpec",
    "Population",
    "View",
    "build_plant",
    "cloud_assignment",
    "counts_by_kind",
    "diff",
    "edge_expected",
    "edge_graph",
    "plant_relation_id",
    "populate",
]

View = dict[tuple[str, str], Any]
"""{(entity type, id): parsed JSON}; a relation's id is its relation_text."""

BASE_MS = 1_735_689_600_000
"""2025-01-01T00:00:00Z: where the plant's time-based ids start (one tick apart)."""

DEVICE_TYPES = ("thermostat", "pump", "meter", "valve", "drive", "sensor")
ASSET_TYPES = ("site", "building", "line", "cell", "zone", "hall")
BUNDLE_ALIAS = "plant_widgets"
SYSTEM_WIDGETS = ("system.cards.value_card", "system.time_series_chart", "system.cards.entities_table")
BIG_DASHBOARD_MARGIN = 100 * 1024
"""The near-limit dashboard's downlink is this far under the edge message limit by default
(4 MiB - 100 KiB = 3.9 MiB)."""
_DEVICE_RELATIONS, _HIERARCHY = 0.6, 0.3  # shares of the relations after the cycle


@dataclass(frozen=True, slots=True)
class PlantSpec:
    """How many entities of each kind a plant has (relations counted as entities)."""

    devices: int = 40
    assets: int = 30
    relations: int = 60
    customers: int = 2
    device_profiles: int = 3
    asset_profiles: int = 3
    widget_types: int = 3
    widgets_bundles: int = 1
    dashboards: int = 3
    rule_chains: int = 2
    users: int = 10
    entity_views: int = 2
    near_limit_dashboard: bool = False
    """One more dashboard (counted in ``dashboards``) whose downlink is just under the limit."""

    @property
    def total(self) -> int:
        """Entities and relations (rule chain metadata not counted: it is part of its chain)."""
        return sum(getattr(self, f.name) for f in fields(self) if f.name != "near_limit_dashboard")

    @classmethod
    def for_total(cls, total: int, *, near_limit_dashboard: bool = False) -> PlantSpec:
        """A plant of exactly ``total`` entities: a few of every kind (more customers,
        dashboards and entity views as it grows), the rest 40 % devices, 30 % assets, 30 %
        relations. ValueError under 60."""
        small = {"customers": max(2, total // 2000), "device_profiles": 3, "asset_profiles": 3,
                 "widget_types": 4, "widgets_bundles": 1,
                 "dashboards": max(3, total // 2000) + (1 if near_limit_dashboard else 0),
                 "rule_chains": 3, "users": 10, "entity_views": max(2, total // 1000)}
        rest = total - sum(small.values())
        if total < 60 or rest < 20:
            raise ValueError(f"a plant needs at least 60 entities (got {total})")
        devices, assets = rest * 40 // 100, rest * 30 // 100
        spec = cls(devices=devices, assets=assets, relations=rest - devices - assets,
                   near_limit_dashboard=near_limit_dashboard, **small)
        spec.check()
        return spec

    def check(self) -> None:
        """ValueError when the counts cannot make a plant (see the module docstring)."""
        need = {"assets": 3, "relations": 3, "device_profiles": 1, "asset_profiles": 1,
                "rule_chains": 1, "customers": 1}
        low = [f"{k} >= {v}" for k, v in need.items() if getattr(self, k) < v]
        if self.device_profiles > len(DEVICE_TYPES) or self.asset_profiles > len(ASSET_TYPES):
            low.append(f"device_profiles <= {len(DEVICE_TYPES)}, asset_profiles <= {len(ASSET_TYPES)}")
        if self.entity_views and not self.devices:
            low.append("devices >= 1 for entity views")
        if self.dashboards < (1 if self.near_limit_dashboard else 0) or (
                self.dashboards and not self.widget_types):
            low.append("dashboards >= 1 with near_limit_dashboard, widget_types >= 1 for dashboards")
        if self.widgets_bundles > 1 or (self.widgets_bundles and not self.widget_types):
            low.append("widgets_bundles 0 or 1 (1 needs widget_types >= 1)")
        if min(getattr(self, f.name) for f in fields(self)) < 0:
            low.append("no negative count")
        if low:
            raise ValueError("plant spec: " + "; ".join(low))


@dataclass
class Population:
    """What build_plant made (JSON-able with as_json)."""

    edge_id: uuid.UUID
    seed: int
    prefix: str
    spec: PlantSpec
    counts: dict[str, int]
    """Entities written by kind (RULE_CHAIN_METADATA and RELATION included)."""
    ids: dict[str, list[uuid.UUID]]
    """Ids by kind (not relations: ``relations``)."""
    relations: list[str]
    """Every relation's id (plant_relation_id)."""
    cycle: tuple[uuid.UUID, uuid.UUID, uuid.UUID]
    """Assets A, B, C with A Contains B Contains C Contains A."""
    forwarding: tuple[uuid.UUID, uuid.UUID] | None
    """(rule chain, the chain its TbRuleChainInputNode forwards to)."""
    near_limit_dashboard: uuid.UUID | None = None
    near_limit_bytes: int | None = None
    """The near-limit dashboard's ADDED downlink, stamped (what maxInboundMessageSize limits)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent writing, by step."""
    queued_downlinks: int = 0
    """The edge's downlink queue after seeding (what a live edge would have been sent)."""

    @property
    def total(self) -> int:
        return self.spec.total

    def as_json(self) -> dict[str, Any]:
        return {
            "edge_id": str(self.edge_id), "seed": self.seed, "prefix": self.prefix,
            "total": self.total, "counts": dict(self.counts),
            "ids": {k: [str(v) for v in vs] for k, vs in self.ids.items()},
            "relations": list(self.relations), "cycle": [str(c) for c in self.cycle],
            "forwarding": None if self.forwarding is None else [str(c) for c in self.forwarding],
            "near_limit_dashboard": None if self.near_limit_dashboard is None
            else str(self.near_limit_dashboard),
            "near_limit_bytes": self.near_limit_bytes,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
            "queued_downlinks": self.queued_downlinks,
        }


# -- the plan: pure, from the seed -----------------------------------------------------------------


def _compact(value: Any) -> str:
    """JSON as the cloud keeps it (CloudGraph's own compact form)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def plant_relation_id(body: Mapping[str, Any]) -> str:
    """A relation's id in the views: the edge's apply-log id (``FROM->TO TYPE/GROUP``)."""
    key = entity_graph.relation_key(body)
    if key is None:
        raise ValueError(f"relation without both ends: {body!r}")
    return relation_text(*key)


def tenant_fqn_scoped() -> bool:
    """Whether the vocabulary reads a dashboard's ``tenant.<fqn>`` as the widget type ``<fqn>``
    (ThingsBoard's convention). While it does not, a widget type's fqn must be the dashboard's
    typeFullFqn verbatim for the reference to resolve, and the plant's widget types carry the
    ``tenant.`` prefix in their fqn."""
    probe = entity_graph.references("DASHBOARD", {"configuration": {"widgets": [
        {"typeFullFqn": "tenant.a.b"}]}})
    return probe == [Ref("WIDGET_TYPE_FQN", "a.b")]


@dataclass(frozen=True, slots=True)
class _Device:
    id: uuid.UUID
    name: str
    type: str
    label: str
    token: str
    created: int


@dataclass
class _Plan:
    """Everything to write, in order: graph items before the devices, entity views after them
    (they reference devices), relations last."""

    items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    devices: list[_Device] = field(default_factory=list)
    late_items: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    relations: list[dict[str, Any]] = field(default_factory=list)
    ids: dict[str, list[uuid.UUID]] = field(default_factory=dict)
    profile_of_type: dict[str, uuid.UUID] = field(default_factory=dict)
    cycle: tuple[uuid.UUID, uuid.UUID, uuid.UUID] | None = None
    forwarding: tuple[uuid.UUID, uuid.UUID] | None = None
    big_dashboard: dict[str, Any] | None = None


class _Planner:
    def __init__(self, spec: PlantSpec, seed: int, prefix: str, base_ms: int) -> None:
        self.spec = spec
        self.rng = random.Random(seed)
        low = (0x8000_0000_0000_0000 | (self.rng.getrandbits(14) << 48)
               | self.rng.getrandbits(48) | (1 << 40))
        self._ids = ids.TimeBasedIds(clock_seq_and_node=low)
        self.base_ms = base_ms
        self.p = prefix
        self.plan = _Plan()

    def new_id(self, kind: str | None = None) -> uuid.UUID:
        value = self._ids.new(self.base_ms)
        if kind is not None:
            self.plan.ids.setdefault(kind, []).append(value)
        return value

    def add(self, kind: str, body: dict[str, Any], *, late: bool = False) -> dict[str, Any]:
        (self.plan.late_items if late else self.plan.items).append((kind, body))
        return body

    def token(self) -> str:
        return base64.b32encode(self.rng.randbytes(15)).decode().lower()

    # -- kinds --------------------------------------------------------------------------------

    def customers(self) -> list[uuid.UUID]:
        out = []
        for i in range(self.spec.customers):
            cid = self.new_id("CUSTOMER")
            self.add("CUSTOMER", {
                "id": typed_id("CUSTOMER", cid), "title": f"{self.p}customer-{i:03d}",
                "country": "Ireland", "state": None, "city": "Cork", "address": f"{i} Quay St",
                "address2": None, "zip": None, "phone": None, "email": f"ops{i}@customer.example",
                "additionalInfo": {"description": f"customer {i} of the plant"}})
            out.append(cid)
        return out

    def profiles(self) -> tuple[list[uuid.UUID], list[uuid.UUID]]:
        devs = []
        for i in range(self.spec.device_profiles):
            pid, name = self.new_id("DEVICE_PROFILE"), f"{self.p}{DEVICE_TYPES[i]}"
            self.plan.profile_of_type[name] = pid
            alarms = [{"id": f"high_{DEVICE_TYPES[i]}", "alarmType": f"High {DEVICE_TYPES[i]}",
                       "createRules": {"MAJOR": {"condition": {"condition": [{
                           "key": {"type": "TIME_SERIES", "key": "value"}, "valueType": "NUMERIC",
                           "value": None, "predicate": {
                               "type": "NUMERIC", "operation": "GREATER",
                               "value": {"defaultValue": 80.0 + i, "userValue": None,
                                         "dynamicValue": None}}}],
                           "spec": {"type": "SIMPLE"}}, "schedule": None, "alarmDetails": None,
                           "dashboardId": None}},
                       "clearRule": None, "propagate": False, "propagateToOwner": False,
                       "propagateToTenant": False, "propagateRelationTypes": None}]
            self.add("DEVICE_PROFILE", {
                "id": typed_id("DEVICE_PROFILE", pid), "name": name,
                "description": f"{DEVICE_TYPES[i]}s of the plant", "image": None, "type": "DEFAULT",
                "transportType": "DEFAULT", "provisionType": "DISABLED", "defaultRuleChainId": None,
                "defaultDashboardId": None, "defaultQueueName": None, "defaultEdgeRuleChainId": None,
                "profileData": {"configuration": {"type": "DEFAULT"},
                                "transportConfiguration": {"type": "DEFAULT"},
                                "provisionConfiguration": {"type": "DISABLED",
                                                           "provisionDeviceSecret": None},
                                "alarms": alarms},
                "provisionDeviceKey": None, "firmwareId": None, "softwareId": None,
                "externalId": None, "version": None, "default": False})
            devs.append(pid)
        assets = []
        for i in range(self.spec.asset_profiles):
            pid = self.new_id("ASSET_PROFILE")
            self.add("ASSET_PROFILE", {
                "id": typed_id("ASSET_PROFILE", pid), "name": f"{self.p}{ASSET_TYPES[i]}",
                "description": f"{ASSET_TYPES[i]}s of the plant", "image": None,
                "defaultRuleChainId": None, "defaultDashboardId": None, "defaultQueueName": None,
                "defaultEdgeRuleChainId": None, "externalId": None, "version": None,
                "default": False})
            assets.append(pid)
        return devs, assets

    def widgets(self) -> list[str]:
        """Widget types and the bundle; the typeFullFqn of each widget type."""
        scoped = tenant_fqn_scoped()
        full = []
        alias = f"{self.p.replace('-', '_')}{BUNDLE_ALIAS}"
        for i in range(self.spec.widget_types):
            wid = self.new_id("WIDGET_TYPE")
            local = f"{alias}.gauge_{i}"
            full.append(f"tenant.{local}")
            self.add("WIDGET_TYPE", {
                "id": typed_id("WIDGET_TYPE", wid), "fqn": local if scoped else f"tenant.{local}",
                "name": f"{self.p}Gauge {i}", "deprecated": False, "scada": False, "image": None,
                "description": f"Gauge {i} of the plant", "tags": ["plant", "gauge"],
                "descriptor": {
                    "type": "latest", "sizeX": 4, "sizeY": 3, "resources": [],
                    "templateHtml": f"<div class=\"gauge-{i}\">{{{{value}}}}</div>",
                    "templateCss": f".gauge-{i} {{ font-size: {12 + i}px; }}",
                    "controllerScript": "self.onInit = function() {};\n"
                                        "self.onDataUpdated = function() {};",
                    "settingsForm": [], "dataKeySettingsForm": [],
                    "defaultConfig": _compact({"datasources": [], "showTitle": True,
                                               "title": f"Gauge {i}"})},
                "resources": []})
        for _ in range(self.spec.widgets_bundles):
            bid = self.new_id("WIDGETS_BUNDLE")
            title = f"{self.p}Plant widgets"
            self.add("WIDGETS_BUNDLE", {
                "id": typed_id("WIDGETS_BUNDLE", bid), "alias": alias, "title": title,
                "name": title, "image": None, "scada": False,
                "description": "The plant's gauges", "order": None, "externalId": None,
                "version": None})
        return full

    def dashboard_body(self, did: uuid.UUID, title: str, widget_fqns: Sequence[str]) -> dict[str, Any]:
        widgets: dict[str, Any] = {}
        for n, fqn in enumerate(widget_fqns):
            wid = str(uuid.UUID(int=self.rng.getrandbits(128), version=4))
            widgets[wid] = {"typeFullFqn": fqn, "type": "latest", "sizeX": 4, "sizeY": 3,
                            "row": 0, "col": 4 * n, "id": wid,
                            "config": {"datasources": [], "showTitle": True,
                                       "title": f"{title} {n}", "settings": {}}}
        layout = {k: {"sizeX": 4, "sizeY": 3, "row": 0, "col": 4 * n}
                  for n, k in enumerate(widgets)}
        return {"id": typed_id("DASHBOARD", did), "title": title, "image": None,
                "mobileHide": False, "mobileOrder": None,
                "configuration": {"description": f"{title} of the plant", "widgets": widgets,
                                  "states": {"default": {"name": title, "root": True, "layouts": {
                                      "main": {"widgets": layout,
                                               "gridSettings": {"columns": 24}}}}},
                                  "entityAliases": {}, "filters": {},
                                  "settings": {"stateControllerId": "entity", "showTitle": True}},
                "name": title, "resources": []}

    def dashboards(self, tenant_widgets: Sequence[str]) -> None:
        regular = self.spec.dashboards - (1 if self.spec.near_limit_dashboard else 0)
        for i in range(regular):
            did = self.new_id("DASHBOARD")
            fqns = [SYSTEM_WIDGETS[i % len(SYSTEM_WIDGETS)]]
            if i % 2 == 0 and tenant_widgets:
                fqns.append(tenant_widgets[i // 2 % len(tenant_widgets)])
            self.add("DASHBOARD", self.dashboard_body(did, f"{self.p}dashboard-{i:03d}", fqns))
        if self.spec.near_limit_dashboard:
            did = self.new_id("DASHBOARD")
            body = self.dashboard_body(did, f"{self.p}dashboard-big",
                                       [*tenant_widgets[:2], SYSTEM_WIDGETS[0]])
            self.plan.big_dashboard = self.add("DASHBOARD", body)

    def rule_chains(self) -> None:
        chains = [self.new_id("RULE_CHAIN") for _ in range(self.spec.rule_chains)]
        # the targets first: chain 0 forwards to chain 1, so chain 1 (and its metadata) exists
        # before chain 0's metadata names it
        order = [*range(1, len(chains)), 0]
        for i in order:
            cid = chains[i]
            nodes = [self.new_id() for _ in range(3)]
            self.add("RULE_CHAIN", {
                "id": typed_id("RULE_CHAIN", cid), "name": f"{self.p}chain-{i:02d}", "type": "EDGE",
                "firstRuleNodeId": typed_id("RULE_NODE", nodes[0]), "root": False,
                "debugMode": False, "configuration": None,
                "additionalInfo": {"description": f"rule chain {i} of the plant"},
                "externalId": None, "version": None})
            third: dict[str, Any] = {
                "type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode",
                "name": "Push to cloud", "configuration": {"scope": "SERVER_SCOPE"}}
            if i == 0 and len(chains) > 1:
                third = {"type": RULE_CHAIN_INPUT_NODE, "name": f"To chain 1 ({self.p})",
                         "configuration": {"ruleChainId": str(chains[1]),
                                           "forwardMsgToDefaultRuleChain": False}}
                self.plan.forwarding = (cid, chains[1])
            nodes_json = [
                {"type": "org.thingsboard.rule.engine.filter.TbJsFilterNode", "name": "Too hot?",
                 "configuration": {"scriptLang": "TBEL", "jsScript": "return msg.value > 90;",
                                   "tbelScript": "return msg.value > 90;"}},
                {"type": "org.thingsboard.rule.engine.telemetry.TbMsgTimeseriesNode",
                 "name": "Save timeseries", "configuration": {"defaultTTL": 0}},
                third,
            ]
            for n, (nid, node) in enumerate(zip(nodes, nodes_json, strict=True)):
                node.update({"id": typed_id("RULE_NODE", nid),
                             "ruleChainId": typed_id("RULE_CHAIN", cid), "debugSettings": None,
                             "singletonMode": False, "queueName": None, "configurationVersion": 0,
                             "additionalInfo": {"description": "", "layoutX": 280 * (n + 1),
                                                "layoutY": 150},
                             "externalId": None})
            self.add("RULE_CHAIN_METADATA", {
                "ruleChainId": typed_id("RULE_CHAIN", cid), "version": None, "firstNodeIndex": 0,
                "nodes": nodes_json,
                "connections": [{"fromIndex": 0, "toIndex": 1, "type": "True"},
                                {"fromIndex": 1, "toIndex": 2, "type": "Success"}],
                "ruleChainConnections": None})

    def users(self, customers: Sequence[uuid.UUID]) -> None:
        for i in range(self.spec.users):
            uid = self.new_id("USER")
            customer = customers[i % len(customers)] if i % 2 and customers else None
            self.add("USER", {
                "id": typed_id("USER", uid), "email": f"{self.p}user{i:02d}@plant.example",
                "authority": "CUSTOMER_USER" if customer else "TENANT_ADMIN",
                "customerId": typed_id("CUSTOMER", customer or NULL_ID),
                "firstName": f"User{i}", "lastName": "Plant", "phone": None,
                "additionalInfo": {"description": f"user {i}", "defaultDashboardFullscreen": False}})

    def assets(self, profiles: Sequence[uuid.UUID], customers: Sequence[uuid.UUID]) -> list[uuid.UUID]:
        out = []
        for i in range(self.spec.assets):
            aid = self.new_id("ASSET")
            k = i % len(profiles)
            customer = customers[i % len(customers)] if customers and i % 5 == 4 else None
            self.add("ASSET", {
                "id": typed_id("ASSET", aid), "name": f"{self.p}asset-{i:05d}",
                "type": f"{self.p}{ASSET_TYPES[k]}", "label": f"Asset {i}",
                "assetProfileId": typed_id("ASSET_PROFILE", profiles[k]),
                "customerId": typed_id("CUSTOMER", customer or NULL_ID),
                "additionalInfo": {"description": f"asset {i}"}})
            out.append(aid)
        return out

    def devices(self) -> list[uuid.UUID]:
        types = list(self.plan.profile_of_type)
        out = []
        for i in range(self.spec.devices):
            did = self.new_id("DEVICE")
            self.plan.devices.append(_Device(did, f"{self.p}device-{i:05d}", types[i % len(types)],
                                             f"Device {i}", f"{self.p}{self.token()}",
                                             ids.unix_ms(did)))
            out.append(did)
        return out

    def entity_views(self, devices: Sequence[uuid.UUID]) -> None:
        for i in range(self.spec.entity_views):
            vid = self.new_id("ENTITY_VIEW")
            self.add("ENTITY_VIEW", {
                "id": typed_id("ENTITY_VIEW", vid), "name": f"{self.p}view-{i:04d}",
                "type": "reading", "entityId": typed_id("DEVICE", devices[i % len(devices)]),
                "keys": {"timeseries": ["value"], "attributes": {"cs": [], "ss": [], "sh": []}},
                "startTimeMs": 0, "endTimeMs": 0, "additionalInfo": None}, late=True)

    def relations(self, assets: Sequence[uuid.UUID], devices: Sequence[uuid.UUID],
                  customers: Sequence[uuid.UUID]) -> None:
        want = self.spec.relations
        out = self.plan.relations
        seen: set[str] = set()

        def rel(src: tuple[str, uuid.UUID], dst: tuple[str, uuid.UUID], rel_type: str) -> bool:
            body = {"from": typed_id(*src), "to": typed_id(*dst), "type": rel_type,
                    "typeGroup": "COMMON", "additionalInfo": None}
            key = plant_relation_id(body)
            if key in seen or len(out) >= want:
                return False
            seen.add(key)
            out.append(body)
            return True

        a, b, c = assets[0], assets[1], assets[2]
        self.plan.cycle = (a, b, c)
        for src, dst in ((a, b), (b, c), (c, a)):
            rel(("ASSET", src), ("ASSET", dst), "Contains")
        after = want - 3
        for i in range(3, min(len(assets), 3 + int(after * _HIERARCHY))):
            rel(("ASSET", assets[self.rng.randrange(i)]), ("ASSET", assets[i]), "Contains")
        for device in devices[:int(after * _DEVICE_RELATIONS)]:
            rel(("ASSET", assets[self.rng.randrange(len(assets))]), ("DEVICE", device), "Contains")
        for i, customer in enumerate(customers):
            rel(("CUSTOMER", customer), ("ASSET", assets[i % len(assets)]), "Manages")
        tries = 0
        while len(out) < want:
            tries += 1
            if tries > 20 * want + 1000:
                raise ValueError(f"plant spec: {want} relations do not fit among "
                                 f"{len(assets)} assets and {len(devices)} devices")
            i, j = self.rng.sample(range(len(assets)), 2)
            rel(("ASSET", assets[i]), ("ASSET", assets[j]), "Feeds")


def _plan(spec: PlantSpec, seed: int, prefix: str, base_ms: int) -> _Plan:
    spec.check()
    pl = _Planner(spec, seed, prefix, base_ms)
    customers = pl.customers()
    _device_profiles, asset_profiles = pl.profiles()
    fqns = pl.widgets()
    pl.dashboards(fqns)
    pl.rule_chains()
    pl.users(customers)
    assets = pl.assets(asset_profiles, customers)
    devices = pl.devices()
    pl.entity_views(devices)
    pl.relations(assets, devices, customers)
    return pl.plan


# -- the near-limit dashboard ------------------------------------------------------------------------


def downlink_size(entity_type: str, entity_id: uuid.UUID, text: str) -> int:
    """The stamped size of the entity's ADDED DownlinkMsg (what maxInboundMessageSize limits)."""
    payload = downlinks.message_of([downlinks.entity_message(entity_type, "ADDED", entity_id, text)])
    return downlinks.stamped_size(len(payload))


def _fit(body: dict[str, Any], target: int, seed: int) -> int:
    """Pad the dashboard's image (a base64 data URL, as ThingsBoard keeps one) so its downlink
    is exactly ``target`` bytes; that size."""
    entity_id = uuid.UUID(body["id"]["id"])
    head = "data:image/png;base64,"
    body["image"] = head
    base = downlink_size("DASHBOARD", entity_id, _compact(body))
    if base > target:
        raise ValueError(f"near-limit dashboard: {base:,} bytes without its image, over {target:,}")
    pad = base64.b64encode(random.Random(seed).randbytes(target * 3 // 4 + 3)).decode()
    n = target - base
    for _ in range(8):  # the entity's length prefix may grow by a byte or two
        body["image"] = head + pad[:n]
        size = downlink_size("DASHBOARD", entity_id, _compact(body))
        if size == target:
            return size
        n += target - size
    raise RuntimeError(f"near-limit dashboard: could not reach {target:,} bytes (at {size:,})")


# -- writing -------------------------------------------------------------------------------------------


def _edge_id(store: CloudStore, edge: uuid.UUID | str) -> uuid.UUID:
    if isinstance(edge, uuid.UUID):
        if store.edge_by_id(edge) is None:
            raise ValueError(f"no edge {edge} in {store.path}")
        return edge
    found = store.edge(edge)
    if found is None:
        raise ValueError(f"no edge with routing key {edge!r} in {store.path}")
    return found.edge_id


def _batches(items: Sequence[tuple[str, dict[str, Any]]], size: int) -> Iterable[
        Sequence[tuple[str, dict[str, Any]]]]:
    """Batches of at most ``size``, a rule chain's metadata in its chain's batch."""
    start = 0
    while start < len(items):
        end = min(start + size, len(items))
        while end < len(items) and items[end][0] == "RULE_CHAIN_METADATA":
            end += 1
        yield items[start:end]
        start = end


def build_plant(store: CloudStore, edge: uuid.UUID | str, spec: PlantSpec, *, seed: int = 0,
                prefix: str | None = None, base_ms: int = BASE_MS, batch: int = 500,
                near_limit_bytes: int | None = None, relation_threads: int = 8,
                progress: Callable[[str], None] | None = None) -> Population:
    """Write the plant of ``spec`` for ``edge`` (an edge id or routing key) into ``store``
    (see the module docstring); what was made. The edge must exist. ``batch``: graph entities,
    and devices, per transaction. ``near_limit_bytes``: the near-limit dashboard's downlink size
    (default: the graph's message limit - 100 KiB)."""
    edge_id = _edge_id(store, edge)
    prefix = f"p{seed}-" if prefix is None else prefix
    graph = store.graph
    tenant = store.tenant_id()
    plan = _plan(spec, seed, prefix, base_ms)
    say = progress or (lambda _msg: None)
    seconds: dict[str, float] = {}
    big_bytes = None
    if plan.big_dashboard is not None:
        plan.big_dashboard["tenantId"] = typed_id("TENANT", tenant)
        plan.big_dashboard["createdTime"] = ids.unix_ms(uuid.UUID(plan.big_dashboard["id"]["id"]))
        target = near_limit_bytes or graph.max_message_bytes - BIG_DASHBOARD_MARGIN
        big_bytes = _fit(plan.big_dashboard, target, seed)

    t0 = time.monotonic()
    for part in _batches(plan.items, batch):
        graph.create_entities(list(part), now_ms=base_ms, edge_id=edge_id)
    seconds["graph"] = time.monotonic() - t0
    say(f"plant: {len(plan.items):,} graph entities written in {seconds['graph']:.2f} s")

    t0 = time.monotonic()
    step = max(1, batch)
    for start in range(0, len(plan.devices), step):
        # downlinks None: each device's own, what CloudService.create_device queues (the device,
        # its credentials and the graph's profile of its type, read in the batch's transaction)
        store.add_devices([
            (CloudDevice(id=d.id, edge_id=edge_id, name=d.name, type=d.type, label=d.label,
                         token=d.token, created_time=d.created, origin="cloud"), None)
            for d in plan.devices[start:start + step]])
    seconds["devices"] = time.monotonic() - t0
    say(f"plant: {len(plan.devices):,} devices written in {seconds['devices']:.2f} s")

    t0 = time.monotonic()
    for part in _batches(plan.late_items, batch):
        graph.create_entities(list(part), now_ms=base_ms, edge_id=edge_id)
    with ThreadPoolExecutor(max(1, relation_threads), thread_name_prefix="plant-rel") as pool:
        # several at once share a commit (the store's group commit)
        list(pool.map(lambda body: graph.add_relation(body, now_ms=base_ms), plan.relations))
    seconds["relations"] = time.monotonic() - t0
    say(f"plant: {len(plan.late_items):,} entity views and {len(plan.relations):,} relations "
        f"written in {seconds['relations']:.2f} s")

    if plan.big_dashboard is not None:  # what the cloud kept: the size it will send
        did = uuid.UUID(plan.big_dashboard["id"]["id"])
        kept = graph.entity(did)
        assert kept is not None
        big_bytes = downlink_size("DASHBOARD", did, kept.json)
    counts = Counter(kind for kind, _ in [*plan.items, *plan.late_items])
    counts["DEVICE"] = len(plan.devices)
    counts["RELATION"] = len(plan.relations)
    assert plan.cycle is not None
    return Population(
        edge_id=edge_id, seed=seed, prefix=prefix, spec=spec,
        counts={k: v for k, v in counts.items() if v},
        ids={k: list(v) for k, v in plan.ids.items()},
        relations=[plant_relation_id(r) for r in plan.relations], cycle=plan.cycle,
        forwarding=plan.forwarding,
        near_limit_dashboard=(uuid.UUID(plan.big_dashboard["id"]["id"])
                              if plan.big_dashboard is not None else None),
        near_limit_bytes=big_bytes, seconds=seconds,
        queued_downlinks=store.queued_downlinks(edge_id))


def populate(data_dir: Path, edge: uuid.UUID | str, spec: PlantSpec, **kwargs: Any) -> Population:
    """build_plant on the cloud store in ``data_dir`` (opened and closed here; the server may be
    running)."""
    store = CloudStore(Path(data_dir))
    try:
        return build_plant(store, edge, spec, **kwargs)
    finally:
        store.close()


# -- the views ---------------------------------------------------------------------------------------


def edge_expected(store: CloudStore, edge: uuid.UUID | str) -> View:
    """What the cloud puts on the edge, as its full sync sends it: every entity of
    CloudGraph.assignment (the cloud's own entities, profiles, users and widgets on every edge,
    what is assigned, rule chain metadata, the edge's devices), each device's credentials, and
    the relations whose both ends are on the edge."""
    edge_id = _edge_id(store, edge)
    out: View = {}
    on_edge: set[uuid.UUID] = {edge_id}
    for kind, entity_id, text in store.graph.assignment(edge_id):
        out[(kind, str(entity_id))] = json.loads(text)
        on_edge.add(entity_id)
        if kind == "DEVICE":
            device = store.device(entity_id)
            if device is not None and device.token:
                out[("DEVICE_CREDENTIALS", str(entity_id))] = json.loads(credentials_json(
                    {"deviceId": str(entity_id), "credentialsId": device.token}))
    for entity_id in sorted(on_edge):
        for rel in store.graph.relations(entity_id):
            src, dst = uuid.UUID(rel["from"]["id"]), uuid.UUID(rel["to"]["id"])
            if src == entity_id and dst in on_edge:
                out[("RELATION", plant_relation_id(rel))] = rel
    return out


cloud_assignment = edge_expected


def edge_graph(edge_data_dir: Path) -> View:
    """The edge's graph store (opened read-only: the agent may be running) in edge_expected's
    shape: every entity record (its JSON as received) and every relation."""
    store = LmdbStore(Path(edge_data_dir), readonly=True)
    try:
        graph = GraphStore(store)
        out: View = {}
        with store.read() as txn:
            records = graph.entities(txn)
            for rec in records:
                out[(rec.entity_type, str(rec.id))] = json.loads(rec.json)
            for entity_id in sorted({rec.id for rec in records}):
                for rel in graph.relations(txn, entity_id):
                    if uuid.UUID(rel["from"]["id"]) == entity_id:
                        out[("RELATION", plant_relation_id(rel))] = rel
        return out
    finally:
        store.close()


def counts_by_kind(view: Mapping[tuple[str, str], Any]) -> dict[str, int]:
    """How many entries of each kind a view has, in full-sync order."""
    counts = Counter(kind for kind, _ in view)
    rank = {k.entity_type: k.sync_rank for k in entity_graph.KINDS}
    return {k: counts[k] for k in sorted(counts, key=lambda k: (rank.get(k, 99), k))}


def diff(expected: Mapping[tuple[str, str], Any], got: Mapping[tuple[str, str], Any], *,
         limit: int = 20) -> list[str]:
    """What differs, entity by entity (missing, extra, different JSON); at most ``limit``
    lines and a count of the rest. Empty when the views are equal."""
    lines = [f"missing {k} {i}" for k, i in sorted(set(expected) - set(got))]
    lines += [f"extra {k} {i}" for k, i in sorted(set(got) - set(expected))]
    for key in sorted(set(expected) & set(got)):
        if expected[key] != got[key]:
            mine, theirs = expected[key], got[key]
            fields_ = sorted({*mine, *theirs}) if isinstance(mine, dict) and isinstance(theirs, dict) else []
            changed = [f for f in fields_ if mine.get(f) != theirs.get(f)]
            lines.append(f"different {key[0]} {key[1]}: {', '.join(changed) or 'value'}")
    if len(lines) > limit:
        return [*lines[:limit], f"... and {len(lines) - limit} more"]
    return lines
