"""The entity graph end to end, shared by the tests that prove "the whole entity graph, both
ways" with real stores and processes (tests/integration/test_graph_e2e.py,
tests/integration/test_graph_shuffled_sync.py, tests/chaos/test_graph_kill9_sync.py):

- ``populate``: a cloud population in a real CloudStore (the server stopped), assigned to one
  edge: devices of several types (so several device profiles), assets with their profiles,
  relations (a cycle among them), dashboards using tenant widget types (one close to the edge's
  4 MiB message limit), rule chains forwarding to each other, users, customers, entity views and
  shared attributes. Made through CloudService / CloudGraph, as an operator's commands make them.
- ``cloud_view`` / ``edge_view``: what the cloud assigns to the edge (CloudGraph.assignment, the
  relations whose both ends are on the edge, the devices' credentials as a sync sends them) and
  what the edge holds (storage/graph_store.GraphStore: entities, relations, held entities, the
  apply log, the sync state), each read from its LMDB store read-only while the process runs.
- ``graph_diff``: every difference between the two, entity by entity (parsed JSON, key sets
  included), relations as (from, to, type, group); ``order_violations``: apply log entries of
  an entity logged before one of its references.
- ``GraphRig``: a real ``edge-cloud serve`` and ``edge-sync run`` on loopback with data folders
  in tmp, and the waits the tests need (full sync completed, converged).

Reads of a running process's store are LMDB read transactions of a read-only open: they never
block or change the process.
"""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from edge_sync.cloud import downlinks
from edge_sync.cloud.records import CloudDevice
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.common.entity_graph import (
    RULE_CHAIN_INPUT_NODE,
    Ref,
    provides,
    relation_key,
)
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import (
    ApplyLogEntry,
    GraphStore,
    HeldEntity,
    SyncState,
    hard_references,
)
from edge_sync.storage.records import Scope
from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc, edge_status, link_env
from tests.helpers.wait import wait_until

__all__ = [
    "CloudView",
    "EdgeView",
    "GraphRig",
    "Population",
    "RelKey",
    "Sizes",
    "added_twice",
    "cloud_view",
    "edge_counts",
    "edge_progress",
    "edge_view",
    "graph_diff",
    "order_violations",
    "populate",
    "quiet_product_logs",
    "rel_key",
    "tid",
]

DEADLINE_S = 120.0
EDGE_OWNED = ("tenantId", "customerId")
"""Fields the cloud fills into an entity an edge made (the edge's JSON is kept as it sent it;
graph-contract.md: "the same JSON as sent minus tenantId/customerId")."""

RelKey = tuple[str, str, str, str, str, str]
"""A relation: (from kind, from id, to kind, to id, type, typeGroup)."""


def rel_key(body: Mapping[str, Any]) -> RelKey:
    found = relation_key(body)
    assert found is not None, f"relation without both ends: {body}"
    src, dst, rel_type, group = found
    return (src.kind, src.key, dst.kind, dst.key, rel_type, group)


@contextlib.contextmanager
def quiet_product_logs() -> Iterator[None]:
    """The product's loguru lines off while a test works with its stores in process (thousands
    of "device created" lines would drown the test's output)."""
    logger.disable("edge_sync")
    try:
        yield
    finally:
        logger.enable("edge_sync")


def tid(kind: str, value: uuid.UUID | str) -> dict[str, str]:
    return {"entityType": kind, "id": str(value)}


# -- the population -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """How much of each kind a population has (the issue's sizes by default)."""

    devices: int = 2000
    assets: int = 200
    relations: int = 300
    dashboards: int = 20
    rule_chains: int = 5
    users: int = 10
    device_types: int = 3  # device profiles besides the default one
    entity_views: int = 10
    widget_types: int = 3
    customers: int = 2
    shared_attributes: int = 20  # devices with a shared attribute
    near_limit_dashboard: bool = True

    def scaled(self, factor: float) -> Sizes:
        """The same shape, each count multiplied (at least the cycle's 3 assets)."""
        def n(v: int, least: int = 1) -> int:
            return max(least, round(v * factor))

        return Sizes(devices=n(self.devices), assets=n(self.assets, 3),
                     relations=n(self.relations, 4), dashboards=n(self.dashboards),
                     rule_chains=n(self.rule_chains, 2), users=n(self.users),
                     device_types=self.device_types, entity_views=n(self.entity_views, 2),
                     widget_types=self.widget_types, customers=self.customers,
                     shared_attributes=n(self.shared_attributes),
                     near_limit_dashboard=self.near_limit_dashboard)


@dataclass
class Population:
    """What ``populate`` made (ids as the cloud gave them)."""

    edge_id: uuid.UUID
    routing_key: str
    secret: str
    devices: list[uuid.UUID] = field(default_factory=list)
    device_types: list[str] = field(default_factory=list)
    assets: list[uuid.UUID] = field(default_factory=list)
    dashboards: list[uuid.UUID] = field(default_factory=list)
    near_limit_dashboard: uuid.UUID | None = None
    rule_chains: list[uuid.UUID] = field(default_factory=list)
    users: list[uuid.UUID] = field(default_factory=list)
    customers: list[uuid.UUID] = field(default_factory=list)
    widget_types: list[uuid.UUID] = field(default_factory=list)
    entity_views: dict[uuid.UUID, tuple[str, uuid.UUID]] = field(default_factory=dict)
    relations: list[RelKey] = field(default_factory=list)
    cycle: list[RelKey] = field(default_factory=list)
    shared: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)


def _near_limit_config(limit: int, title: str) -> dict[str, Any]:
    """A dashboard configuration whose ADDED downlink, stamped, is within 1 KiB under ``limit``."""
    def size(blob: int) -> int:
        body = {"title": title, "configuration": {"widgets": {}, "blob": "x" * blob},
                "id": tid("DASHBOARD", uuid.UUID(int=1)), "createdTime": 1_700_000_000_000,
                "tenantId": tid("TENANT", uuid.UUID(int=2))}
        text = json.dumps(body, separators=(",", ":"))
        payload = downlinks.message_of([downlinks.entity_message(
            "DASHBOARD", "ADDED", uuid.UUID(int=1), text)])
        return downlinks.stamped_size(len(payload))

    blob = limit - 1024
    blob -= size(blob) - (limit - 600)
    assert limit - 1024 < size(blob) <= limit - 512, size(blob)
    return {"widgets": {}, "blob": "x" * blob}


def _chain_metadata(chain: uuid.UUID, target: uuid.UUID | None) -> dict[str, Any]:
    nodes: list[dict[str, Any]] = [{
        "type": "org.thingsboard.rule.engine.filter.TbMsgTypeSwitchNode", "name": "switch",
        "configuration": {"version": 0}, "debugMode": False}]
    connections = []
    if target is not None:
        nodes.append({"type": RULE_CHAIN_INPUT_NODE, "name": f"to {target}",
                      "configuration": {"ruleChainId": str(target)}, "debugMode": False})
        connections.append({"fromIndex": 0, "toIndex": 1, "type": "Other"})
    return {"ruleChainId": tid("RULE_CHAIN", chain), "firstNodeIndex": 0, "nodes": nodes,
            "connections": connections, "ruleChainConnections": None}


def populate(data_dir: Path, *, routing_key: str, secret: str, sizes: Sizes = Sizes(),
             seed: int = 1, now_ms: int = 1_764_921_600_000) -> Population:
    """Make a population in the cloud store at ``data_dir`` (the server must not run): an edge
    of ``routing_key`` and everything of ``sizes`` on it (see the module docstring). Seeded:
    the same seed makes the same shape (ids are new each time)."""
    rng = random.Random(seed)
    with quiet_product_logs():
        store = CloudStore(data_dir)
        try:
            return _populate(store, rng, routing_key, secret, sizes, now_ms)
        finally:
            store.close()


def _populate(store: CloudStore, rng: random.Random, routing_key: str, secret: str,
              sizes: Sizes, now_ms: int) -> Population:
    service = CloudService(store)
    graph = store.graph
    edge, _, _ = service.create_edge(f"edge {routing_key}", routing_key=routing_key, secret=secret)
    pop = Population(edge.edge_id, routing_key, secret)
    pop.device_types = [f"type-{i}" for i in range(sizes.device_types)]

    def device(i: int) -> CloudDevice:
        made, _ = service.create_device(routing_key, f"device-{i:05d}",
                                        type_=pop.device_types[i % len(pop.device_types)],
                                        token=f"token-{routing_key}-{i:05d}")
        return made

    with ThreadPoolExecutor(8) as pool:  # concurrent writes share commits
        pop.devices = [d.id for d in pool.map(device, range(sizes.devices))]

    # tenant-wide kinds: widget types, a bundle, users (on every edge)
    fqns = [f"plant_widget_{i}" for i in range(sizes.widget_types)]
    items: list[tuple[str, dict[str, Any]]] = []
    items += [("WIDGET_TYPE", {"name": f"Widget {i}", "fqn": fqn,
                               "descriptor": {"type": "latest", "sizeX": 8}})
              for i, fqn in enumerate(fqns)]
    items.append(("WIDGETS_BUNDLE", {"name": "Plant widgets", "title": "Plant widgets",
                                     "alias": "plant_widgets"}))
    items += [("USER", {"email": f"user{i}@plant.example", "authority": "TENANT_ADMIN",
                        "firstName": f"User{i}", "additionalInfo": {"lang": "en"}})
              for i in range(sizes.users)]
    made = graph.create_entities(items, now_ms=now_ms)
    pop.widget_types = [e.id for e in made if e.entity_type == "WIDGET_TYPE"]
    pop.users = [e.id for e in made if e.entity_type == "USER"]

    # assigned kinds, in reference order: customers, rule chains (then their metadata),
    # dashboards, assets, entity views
    items = [("CUSTOMER", {"title": f"Customer {i}", "email": f"c{i}@plant.example"})
             for i in range(sizes.customers)]
    items += [("RULE_CHAIN", {"name": f"Chain {i}", "type": "EDGE", "root": False,
                              "debugMode": False, "configuration": None})
              for i in range(sizes.rule_chains)]
    for i in range(sizes.dashboards):
        # ThingsBoard's UI names a tenant widget type "tenant." + its fqn
        widgets = {f"w{j}": {"typeFullFqn": "tenant." + fqns[(i + j) % len(fqns)], "sizeX": 6}
                   for j in range(2)} if fqns else {}
        widgets["sys"] = {"typeFullFqn": "system.cards.value_card", "sizeX": 4}
        items.append(("DASHBOARD", {"title": f"Dashboard {i:02d}", "mobileHide": False,
                                    "configuration": {"widgets": widgets, "states": {}}}))
    if sizes.near_limit_dashboard:
        items.append(("DASHBOARD", {"title": "Near the limit", "configuration": _near_limit_config(
            graph.max_message_bytes, "Near the limit")}))
    items += [("ASSET", {"name": f"asset-{i:04d}", "type": ("building", "floor", "line")[i % 3],
                         "label": f"L{i}"}) for i in range(sizes.assets)]
    made = graph.create_entities(items, now_ms=now_ms, edge_id=edge.edge_id)
    pop.customers = [e.id for e in made if e.entity_type == "CUSTOMER"]
    pop.rule_chains = [e.id for e in made if e.entity_type == "RULE_CHAIN"]
    dashboards = [e for e in made if e.entity_type == "DASHBOARD"]
    pop.dashboards = [e.id for e in dashboards]
    pop.near_limit_dashboard = next((e.id for e in dashboards if e.name == "Near the limit"),
                                    None)
    pop.assets = [e.id for e in made if e.entity_type == "ASSET"]

    # metadata: chain i forwards to chain i+1 (the last to none): references between chains
    chains = pop.rule_chains
    graph.create_entities(
        [("RULE_CHAIN_METADATA", _chain_metadata(c, chains[i + 1] if i + 1 < len(chains) else None))
         for i, c in enumerate(chains)], now_ms=now_ms)

    # entity views: of assets and devices, alternately
    items = []
    targets: list[tuple[str, uuid.UUID]] = []
    for i in range(sizes.entity_views):
        target = ("ASSET", pop.assets[i % len(pop.assets)]) if i % 2 == 0 or not pop.devices \
            else ("DEVICE", pop.devices[i % len(pop.devices)])
        targets.append(target)
        items.append(("ENTITY_VIEW", {"name": f"view-{i:03d}", "type": "view",
                                      "entityId": tid(*target),
                                      "keys": {"timeseries": ["t"], "attributes": None}}))
    made = graph.create_entities(items, now_ms=now_ms, edge_id=edge.edge_id)
    pop.entity_views = {e.id: t for e, t in zip(made, targets, strict=True)}

    # relations: a cycle among the first three assets, then asset -> device "Contains",
    # asset -> asset "Manages" and device -> asset "Feeds", all distinct
    rels: list[dict[str, Any]] = []
    cycle = pop.assets[:3]
    for i, a in enumerate(cycle):
        rels.append({"from": tid("ASSET", a), "to": tid("ASSET", cycle[(i + 1) % 3]),
                     "type": "Contains", "typeGroup": "COMMON", "additionalInfo": {"cycle": i}})
    seen = {rel_key(r) for r in rels}
    kinds = ("Contains", "Manages", "Feeds")
    while len(rels) < sizes.relations:
        kind = kinds[len(rels) % 3] if pop.devices else "Manages"
        if kind == "Contains":
            src, dst = ("ASSET", rng.choice(pop.assets)), ("DEVICE", rng.choice(pop.devices))
        elif kind == "Manages":
            src, dst = ("ASSET", rng.choice(pop.assets)), ("ASSET", rng.choice(pop.assets))
        else:
            src, dst = ("DEVICE", rng.choice(pop.devices)), ("ASSET", rng.choice(pop.assets))
        rel = {"from": tid(*src), "to": tid(*dst), "type": kind, "typeGroup": "COMMON",
               "additionalInfo": None}
        if src != dst and rel_key(rel) not in seen:
            seen.add(rel_key(rel))
            rels.append(rel)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda r: graph.add_relation(r, now_ms=now_ms), rels))
    pop.relations = [rel_key(r) for r in rels]
    pop.cycle = pop.relations[:3]

    for device_id in pop.devices[:sizes.shared_attributes]:
        values = {"setpoint": rng.randint(1, 100), "mode": "auto"}
        service.set_attributes(str(device_id), values)
        pop.shared[device_id] = values
    return pop


# -- what each side holds -------------------------------------------------------------------------


@dataclass
class CloudView:
    """What the cloud has on the edge: (type, id) -> parsed JSON (rule chain metadata under its
    chain's id, devices and their credentials as a sync sends them), and the relations whose
    both ends are on the edge."""

    entities: dict[tuple[str, uuid.UUID], dict[str, Any]]
    relations: dict[RelKey, dict[str, Any]]
    shared: dict[uuid.UUID, dict[str, Any]]


def cloud_view(data_dir: Path, edge_id: uuid.UUID) -> CloudView:
    """Read-only, whether or not the server runs."""
    store = CloudStore(data_dir, readonly=True)
    try:
        entities: dict[tuple[str, uuid.UUID], dict[str, Any]] = {}
        for kind, entity_id, text in store.graph.assignment(edge_id):
            key = (kind, entity_id)
            assert key not in entities, f"the cloud's assignment lists {kind} {entity_id} twice"
            entities[key] = json.loads(text)
        devices = store.devices_of_edge(edge_id)
        for device in devices:
            if device.token:
                entities[("DEVICE_CREDENTIALS", device.id)] = json.loads(
                    downlinks.credentials_update(device).entity)
        on_edge = {entity_id for _, entity_id in entities}
        relations: dict[RelKey, dict[str, Any]] = {}
        with store.lmdb.read() as txn:
            for entity_id in sorted(on_edge):
                for rel in store.graph.relations_from(txn, entity_id):
                    if uuid.UUID(rel["to"]["id"]) in on_edge:
                        relations[rel_key(rel)] = rel
        shared = {d.id: store.shared_attributes(d.id) for d in devices}
        return CloudView(entities, relations, {k: v for k, v in shared.items() if v})
    finally:
        store.close()


@dataclass
class EdgeView:
    """What the edge holds: (type, id) -> (parsed JSON, origin), relations, held entities, the
    apply log, the sync state, shared attributes per device."""

    entities: dict[tuple[str, uuid.UUID], dict[str, Any]]
    origins: dict[tuple[str, uuid.UUID], str]
    relations: dict[RelKey, dict[str, Any]]
    held: list[HeldEntity]
    log: list[ApplyLogEntry]
    sync: SyncState
    shared: dict[uuid.UUID, dict[str, Any]]

    def count(self, entity_type: str) -> int:
        return sum(1 for kind, _ in self.entities if kind == entity_type)


def edge_view(data_dir: Path, *, with_log: bool = True) -> EdgeView:
    """Read-only, whether or not the agent runs."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        graph = GraphStore(store)
        with store.read() as txn:
            entities: dict[tuple[str, uuid.UUID], dict[str, Any]] = {}
            origins: dict[tuple[str, uuid.UUID], str] = {}
            for rec in graph.entities(txn):
                entities[(rec.entity_type, rec.id)] = json.loads(rec.json)
                origins[(rec.entity_type, rec.id)] = rec.origin
            relations: dict[RelKey, dict[str, Any]] = {}
            for entity_id in {entity_id for _, entity_id in entities}:
                for rel in graph.relations(txn, entity_id):
                    relations[rel_key(rel)] = rel
            held = graph.held(txn)
            log = graph.apply_log(txn) if with_log else []
            sync = graph.sync_state(txn)
            shared: dict[uuid.UUID, dict[str, Any]] = {}
            es = graph.entities_store
            for kind, entity_id in entities:
                if kind == "DEVICE":
                    values = es.attributes(txn, entity_id, Scope.SHARED)
                    if values:
                        shared[entity_id] = values
        return EdgeView(entities, origins, relations, held, log, sync, shared)
    finally:
        store.close()


def edge_counts(data_dir: Path) -> tuple[int, int, int]:
    """(entities, relations, held) of the edge's graph: cheap (entry counts)."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        graph = GraphStore(store)
        with store.read() as txn:
            return graph.count(txn), graph.relation_count(txn), graph.held_count(txn)
    finally:
        store.close()


def edge_progress(data_dir: Path) -> tuple[int, SyncState]:
    """(entities in the edge's graph, its sync state): cheap enough to poll."""
    store = LmdbStore(data_dir, readonly=True)
    try:
        graph = GraphStore(store)
        with store.read() as txn:
            return graph.count(txn), graph.sync_state(txn)
    finally:
        store.close()


# -- comparing -----------------------------------------------------------------------------------


def _json_diff(want: Mapping[str, Any], got: Mapping[str, Any]) -> str:
    keys = sorted(set(want) | set(got))
    parts = []
    for k in keys:
        if k not in got:
            parts.append(f"{k} missing")
        elif k not in want:
            parts.append(f"{k} extra ({str(got[k])[:60]})")
        elif want[k] != got[k]:
            parts.append(f"{k}: cloud {str(want[k])[:60]} != edge {str(got[k])[:60]}")
    return "; ".join(parts)


def graph_diff(cloud: CloudView, edge: EdgeView, *, edge_made: Iterable[uuid.UUID] = ()
               ) -> list[str]:
    """Every difference between what the cloud has on the edge and what the edge holds, one
    line each (empty: the same graph). Entities by (type, id): the same key sets and equal
    parsed JSON; an entity the edge made (``edge_made``) is compared without the fields the
    cloud fills in (EDGE_OWNED). Relations as (from, to, type, group) with equal JSON."""
    made = set(edge_made)
    out: list[str] = []
    missing = sorted(set(cloud.entities) - set(edge.entities), key=str)
    extra = sorted(set(edge.entities) - set(cloud.entities), key=str)
    out += [f"missing on the edge: {k} {v}" for k, v in missing]
    out += [f"extra on the edge: {k} {v} ({edge.origins.get((k, v))})" for k, v in extra]
    for key in sorted(set(cloud.entities) & set(edge.entities), key=str):
        want, got = cloud.entities[key], edge.entities[key]
        if key[1] in made:
            want = {k: v for k, v in want.items() if k not in EDGE_OWNED}
            got = {k: v for k, v in got.items() if k not in EDGE_OWNED}
        if want != got:
            out.append(f"differs: {key[0]} {key[1]}: {_json_diff(want, got)}")
    out += [f"relation missing on the edge: {k}"
            for k in sorted(set(cloud.relations) - set(edge.relations))]
    out += [f"relation extra on the edge: {k}"
            for k in sorted(set(edge.relations) - set(cloud.relations))]
    for k in sorted(set(cloud.relations) & set(edge.relations)):
        if cloud.relations[k] != edge.relations[k]:
            out.append(f"relation differs: {k}: {_json_diff(cloud.relations[k], edge.relations[k])}")
    return out


def _provider_refs(entity_type: str, entity_id: str, body: Mapping[str, Any] | None) -> list[Ref]:
    try:
        return provides(entity_type, uuid.UUID(entity_id), body or {})
    except ValueError:
        return []


def order_violations(log: list[ApplyLogEntry],
                     bodies: Mapping[tuple[str, uuid.UUID], Mapping[str, Any]]) -> list[str]:
    """Apply log entries ADDED before one of their hard references was ADDED (references of an
    entity from ``bodies``, its JSON; a relation's from its id "FROM->TO TYPE/GROUP" and the
    kinds in ``bodies``). References the edge never waits for (the edge itself) are skipped."""
    kind_of = {str(entity_id): kind for kind, entity_id in bodies}
    fqn_of = {str(body.get("fqn")): str(entity_id) for (kind, entity_id), body in bodies.items()
              if kind == "WIDGET_TYPE"}
    added_at: dict[Ref, int] = {}
    for e in log:
        if e.action != "ADDED" or e.entity_type == "RELATION":
            continue
        for ref in _provider_refs(e.entity_type, e.id,
                                  bodies.get((e.entity_type, uuid.UUID(e.id)))):
            added_at.setdefault(ref, e.index)
    out: list[str] = []
    for e in log:
        if e.action != "ADDED":
            continue
        if e.entity_type == "RELATION":
            ends, _, _ = e.id.partition(" ")
            src, _, dst = ends.partition("->")
            refs = [Ref(kind_of.get(src, "?"), src), Ref(kind_of.get(dst, "?"), dst)]
        else:
            body = bodies.get((e.entity_type, uuid.UUID(e.id)))
            if body is None:
                continue  # no longer there: its references cannot be read
            refs = hard_references(e.entity_type, body)
        for ref in refs:
            if ref.kind == "EDGE":
                continue
            at = added_at.get(ref)
            if ref.kind == "WIDGET_TYPE_FQN":
                at = added_at.get(Ref("WIDGET_TYPE", fqn_of.get(ref.key, "?")))
            if at is None or at > e.index:
                out.append(f"log {e.index}: {e.entity_type} {e.id} ADDED before its reference "
                           f"{ref} (added at {at})")
    return out


def added_twice(log: list[ApplyLogEntry]) -> dict[tuple[str, str], int]:
    """Entities (and relations) with more than one ADDED in the apply log."""
    counts = Counter((e.entity_type, e.id) for e in log if e.action == "ADDED")
    return {k: n for k, n in counts.items() if n > 1}


# -- real processes -------------------------------------------------------------------------------


class GraphRig:
    """A real ``edge-cloud serve`` (populated before its first start) and a real ``edge-sync
    run`` linked to it on loopback, data folders under ``workdir``."""

    def __init__(self, workdir: Path, *, routing_key: str = "rk-graph",
                 secret: str = "secret-graph-51c2", edge_env: Mapping[str, str] | None = None,
                 cloud_env: Mapping[str, str] | None = None) -> None:
        self.workdir = workdir
        self.routing_key = routing_key
        self.secret = secret
        self.cloud = CloudProc(workdir / "cloud", env=cloud_env)
        self.edge_env = dict(edge_env or {})
        self.agent: Agent | None = None
        self.population: Population | None = None

    @property
    def edge_id(self) -> uuid.UUID:
        assert self.population is not None
        return self.population.edge_id

    def populate(self, sizes: Sizes = Sizes(), *, seed: int = 1) -> Population:
        assert not self.cloud.running
        self.population = populate(self.cloud.data_dir, routing_key=self.routing_key,
                                   secret=self.secret, sizes=sizes, seed=seed)
        return self.population

    def make_agent(self, **env: str) -> Agent:
        full = link_env(self.cloud, self.routing_key, self.secret, **{**self.edge_env, **env})
        self.agent = Agent(self.workdir / "edge", env=full)
        return self.agent

    @property
    def edge(self) -> Agent:
        assert self.agent is not None
        return self.agent

    def close(self) -> None:
        if self.agent is not None:
            self.agent.close()
        self.cloud.close()

    # -- reading ---------------------------------------------------------------------------------

    def cloud_view(self) -> CloudView:
        return cloud_view(self.cloud.data_dir, self.edge_id)

    def edge_view(self, *, with_log: bool = True) -> EdgeView:
        return edge_view(self.edge.data_dir, with_log=with_log)

    def status(self) -> dict[str, Any]:
        return edge_status(self.edge)

    def queued(self) -> int:
        """Downlinks the running cloud still has queued for the edge."""
        return int(self.cloud.edge_row(self.routing_key)["queued_downlinks"])

    # -- waiting ---------------------------------------------------------------------------------

    def wait_full_sync_completed(self, *, after_ms: int = 0, timeout: float = DEADLINE_S
                                 ) -> dict[str, Any]:
        """Until the edge's status says a full sync completed (at or after ``after_ms``) and
        none is in progress; the status."""
        def done() -> dict[str, Any] | None:
            st = self.status()
            sync = st["sync"]
            if sync["last_full_ms"] is not None and sync["last_full_ms"] >= after_ms \
                    and not sync["full_in_progress"]:
                return st
            return None

        found = wait_until(done, timeout=timeout, what="a full sync completed on the edge",
                           poll=0.1, show=lambda: self.status()["sync"])
        assert found is not None
        return found

    def wait_converged(self, *, edge_made: Iterable[uuid.UUID] = (),
                       timeout: float = DEADLINE_S) -> tuple[CloudView, EdgeView]:
        """Until the cloud has nothing queued for the edge, the edge nothing pending or held,
        and both hold the same graph (graph_diff empty); both views. The comparison runs only
        once the cheap conditions hold."""
        made = list(edge_made)
        last: list[str] = []

        def quiet() -> bool:
            st = self.status()
            return (self.queued() == 0 and st["queue"]["pending"] == 0
                    and st["link"]["state"] == "CONNECTED" and st["graph"]["held"]["count"] == 0
                    and not st["sync"]["full_in_progress"])

        def same() -> tuple[CloudView, EdgeView] | None:
            nonlocal last
            if not quiet():
                last = ["(not quiet yet)"]
                return None
            cloud, edge = self.cloud_view(), self.edge_view(with_log=False)
            last = graph_diff(cloud, edge, edge_made=made)
            return (cloud, edge) if not last else None

        try:
            result = wait_until(same, timeout=timeout, what="the edge's graph equal to the cloud's",
                                poll=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{len(last)} differences:\n" + "\n".join(last[:40])
                                 ) from None
        assert result is not None
        cloud, _ = result
        return cloud, self.edge_view()
