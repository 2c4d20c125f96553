"""The entity graph end to end, shared by the tests that prove "the whole entity graph, both
ways" with real stores and processes (tests/integration/test_graph_e2e.py,
tests/integration/test_graph_shuffled_sync.py, tests/chaos/test_graph_kill9_sync.py):

- ``populate``: an edge registered in a real CloudStore (the server stopped) and a population
  on it: the plant of bench/graph_population.py (every kind: devices of several types, assets
  with their profiles, relations with a cycle among them, dashboards using tenant widget types
  and one within ``NEAR_LIMIT_MARGIN`` of the edge's 4 MiB message limit, rule chains one
  forwarding to another, users, customers, entity views of devices; ``ISSUE_PLANT`` has the
  issue's sizes), plus ``Extras``: entity views of assets and shared attributes.
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
import dataclasses
import json
import random
import uuid
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loguru import logger

from bench.graph_population import BASE_MS, PlantSpec
from bench.graph_population import Population as PlantPopulation
from bench.graph_population import populate as populate_plant
from edge_sync.cloud import downlinks
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.store import CloudStore
from edge_sync.common.entity_graph import (
    Ref,
    provides,
    relation_key,
)
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
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
    "ISSUE_PLANT",
    "CloudView",
    "EdgeView",
    "Extras",
    "GraphRig",
    "Population",
    "RelKey",
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
    "scaled",
    "tid",
]

DEADLINE_S = 120.0
EDGE_OWNED = frozenset({"tenantId", "customerId"})
"""Fields the cloud fills into an entity an edge made (the edge's JSON is kept as it sent it;
docs/edge-entities.md: tenantId and customerId are added when the event is sent)."""

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

ISSUE_PLANT = PlantSpec(devices=2000, assets=200, relations=300, customers=2, device_profiles=3,
                        asset_profiles=3, widget_types=3, widgets_bundles=1, dashboards=20,
                        rule_chains=5, users=10, entity_views=10, near_limit_dashboard=True)
"""The issue's sizes: 2,000 devices, 200 assets, 300 relations (a cycle among them), 20
dashboards (one near the 4 MiB limit), 5 rule chains, 10 users, 3 device profiles."""

NEAR_LIMIT_MARGIN = 512
"""The near-limit dashboard's ADDED downlink, stamped, is this far under the edge's 4 MiB
message limit."""


def scaled(spec: PlantSpec, factor: float) -> PlantSpec:
    """The same plant, its devices, assets, relations, dashboards, users and entity views
    multiplied (at least what PlantSpec.check needs)."""
    def n(v: int, least: int = 1) -> int:
        return max(least, round(v * factor))

    return dataclasses.replace(
        spec, devices=n(spec.devices), assets=n(spec.assets, 3), relations=n(spec.relations, 3),
        dashboards=n(spec.dashboards, 2), users=n(spec.users), entity_views=n(spec.entity_views))


@dataclass(frozen=True)
class Extras:
    """What the tests add to the plant: entity views of assets (the plant's show devices), so
    that unassigning an asset has dependants, and shared attributes on the first devices."""

    asset_views: int = 4
    shared_attributes: int = 20


@dataclass
class Population:
    """What ``populate`` made: the plant (bench/graph_population.py) and the extras, by kind."""

    edge_id: uuid.UUID
    routing_key: str
    secret: str
    plant: PlantPopulation
    devices: list[uuid.UUID]
    device_types: list[str]
    assets: list[uuid.UUID]
    dashboards: list[uuid.UUID]
    near_limit_dashboard: uuid.UUID
    entity_views: dict[uuid.UUID, tuple[str, uuid.UUID]]  # view -> (kind, id) it shows
    relations: list[RelKey]
    cycle: list[RelKey]
    shared: dict[uuid.UUID, dict[str, Any]] = field(default_factory=dict)


def populate(data_dir: Path, *, routing_key: str, secret: str, spec: PlantSpec = ISSUE_PLANT,
             extras: Extras = Extras(), seed: int = 1) -> Population:
    """The edge ``routing_key`` registered in the cloud store at ``data_dir`` (the server must
    not run), the plant of ``spec`` (bench/graph_population.py: seeded, the same seed the same
    ids) on it, and the extras; what was made."""
    with quiet_product_logs():
        store = CloudStore(data_dir)
        try:
            edge, _, _ = CloudService(store).create_edge(f"edge {routing_key}",
                                                         routing_key=routing_key, secret=secret)
        finally:
            store.close()
        plant = populate_plant(data_dir, edge.edge_id, spec, seed=seed,
                               near_limit_bytes=DEFAULT_MAX_MESSAGE_BYTES - NEAR_LIMIT_MARGIN)
        store = CloudStore(data_dir)
        try:
            return _extras(store, plant, routing_key, secret, extras, seed)
        finally:
            store.close()


def _extras(store: CloudStore, plant: PlantPopulation, routing_key: str, secret: str,
            extras: Extras, seed: int) -> Population:
    rng = random.Random(seed)
    service = CloudService(store)
    graph = store.graph
    edge_id = plant.edge_id
    devices = list(plant.ids.get("DEVICE", []))
    assets = list(plant.ids.get("ASSET", []))
    views: dict[uuid.UUID, tuple[str, uuid.UUID]] = {}
    for view_id in plant.ids.get("ENTITY_VIEW", []):
        entity = graph.entity(view_id)
        assert entity is not None
        shown = entity.body()["entityId"]
        views[view_id] = (shown["entityType"], uuid.UUID(shown["id"]))
    made = graph.create_entities(
        [("ENTITY_VIEW", {"name": f"asset-view-{i:03d}", "type": "zone",
                          "entityId": tid("ASSET", assets[i % len(assets)]),
                          "keys": {"timeseries": ["t"], "attributes": None}})
         for i in range(extras.asset_views)],
        now_ms=BASE_MS, edge_id=edge_id)
    for entity, i in zip(made, range(extras.asset_views), strict=True):
        views[entity.id] = ("ASSET", assets[i % len(assets)])
    shared: dict[uuid.UUID, dict[str, Any]] = {}
    for device_id in devices[:extras.shared_attributes]:
        values = {"setpoint": rng.randint(1, 100), "mode": "auto"}
        service.set_attributes(str(device_id), values)
        shared[device_id] = values
    relations: list[RelKey] = []
    with store.lmdb.read() as txn:
        for entity_id in sorted({*devices, *assets, *plant.ids.get("CUSTOMER", [])}):
            relations += [rel_key(r) for r in graph.relations_from(txn, entity_id)]
    a, b, c = (str(x) for x in plant.cycle)
    cycle = [("ASSET", a, "ASSET", b, "Contains", "COMMON"),
             ("ASSET", b, "ASSET", c, "Contains", "COMMON"),
             ("ASSET", c, "ASSET", a, "Contains", "COMMON")]
    assert set(cycle) <= set(relations)
    assert plant.near_limit_dashboard is not None
    types = sorted({d.type for d in store.devices_of_edge(edge_id)})
    return Population(edge_id, routing_key, secret, plant, devices, types, assets,
                      list(plant.ids.get("DASHBOARD", [])), plant.near_limit_dashboard, views,
                      relations, cycle, shared)


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


def graph_diff(cloud: CloudView, edge: EdgeView, *, edge_made: Iterable[uuid.UUID] = (),
               set_aside: Mapping[uuid.UUID, Iterable[str]] | None = None) -> list[str]:
    """Every difference between what the cloud has on the edge and what the edge holds, one
    line each (empty: the same graph). Entities by (type, id): the same key sets and equal
    parsed JSON; an entity the edge made (``edge_made``) is compared without the fields the
    cloud fills in (EDGE_OWNED). Relations as (from, to, type, group) with equal JSON.
    ``set_aside``: fields of an entity left out of the comparison, for a difference the caller
    checks (and reports) on its own, so that the rest is still compared."""
    made = set(edge_made)
    aside = {k: frozenset(v) for k, v in (set_aside or {}).items()}
    out: list[str] = []
    missing = sorted(set(cloud.entities) - set(edge.entities), key=str)
    extra = sorted(set(edge.entities) - set(cloud.entities), key=str)
    out += [f"missing on the edge: {k} {v}" for k, v in missing]
    out += [f"extra on the edge: {k} {v} ({edge.origins.get((k, v))})" for k, v in extra]
    for key in sorted(set(cloud.entities) & set(edge.entities), key=str):
        want, got = cloud.entities[key], edge.entities[key]
        skip = (EDGE_OWNED if key[1] in made else frozenset()) | aside.get(key[1], frozenset())
        if skip:
            want = {k: v for k, v in want.items() if k not in skip}
            got = {k: v for k, v in got.items() if k not in skip}
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
    kinds in ``bodies``). References the edge never waits for (the edge itself) are skipped, and
    so are entities the edge made (their references are checked when they are made)."""
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
            if e.origin == "edge":
                # made on the edge, which checked the references it had then; its JSON now may
                # name one the cloud gave it since (an asset of a new type gets a profile)
                continue
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

    def populate(self, spec: PlantSpec = ISSUE_PLANT, *, extras: Extras = Extras(),
                 seed: int = 1) -> Population:
        assert not self.cloud.running
        self.population = populate(self.cloud.data_dir, routing_key=self.routing_key,
                                   secret=self.secret, spec=spec, extras=extras, seed=seed)
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
                       set_aside: Mapping[uuid.UUID, Iterable[str]] | None = None,
                       timeout: float = DEADLINE_S) -> tuple[CloudView, EdgeView]:
        """Until the cloud has nothing queued for the edge, the edge nothing pending or held,
        and both hold the same graph (graph_diff empty); both views. The comparison runs only
        once the cheap conditions hold."""
        made = list(edge_made)
        last: list[str] = []

        def unquiet() -> list[str]:
            """What still moves: downlinks queued, events pending, held entities, ..."""
            st = self.status()
            held = st["graph"]["held"]
            out = [f"{self.queued()} downlinks queued in the cloud" if self.queued() else "",
                   f"{st['queue']['pending']} events pending" if st["queue"]["pending"] else "",
                   f"link {st['link']['state']}" if st["link"]["state"] != "CONNECTED" else "",
                   "a full sync in progress" if st["sync"]["full_in_progress"] else "",
                   f"{held['count']} held, first: {held['first'][:3]}" if held["count"] else ""]
            return [f"not quiet: {x}" for x in out if x]

        def same() -> tuple[CloudView, EdgeView] | None:
            nonlocal last
            last = unquiet()
            if last:
                return None
            cloud, edge = self.cloud_view(), self.edge_view(with_log=False)
            last = graph_diff(cloud, edge, edge_made=made, set_aside=set_aside)
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
