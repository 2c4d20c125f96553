"""The reference cloud's admin HTTP API (default 127.0.0.1:8091), used by the `edge-cloud` CLI
while the server runs, so that downlinks it queues are sent at once.

  GET  /healthz, /readyz                the health probes (no token needed)
  GET  /api/status                      server, store and every edge (connected or not)
  GET  /api/edges                       registered edges
  POST /api/edges        {name, routing_key?, secret?, type?}          -> 201 (200: existed)
  GET  /api/devices?edge=RK             devices assigned to an edge
  POST /api/devices      {edge, name, type?, label?, token?}           -> 201
  POST /api/attributes   {device, edge?, values: {k: v}} or {device, edge?, key, value}
  GET  /api/events?edge=RK&after=N&limit=N   what the cloud applied from the edge
  GET  /api/edges/{edge}/downlinks/parked  the edge's parked downlinks (routing key or edge id)
  POST /api/edges/{edge}/sync           a full sync of the connected edge now (body: none or {})
                                        -> 202; 409 when the edge is not connected
  POST /api/rpc/twoway/{device}, /api/rpc/oneway/{device}   server-side RPC in ThingsBoard's
                                        shape; GET /api/rpc/{id} (and /api/rpc/persistent/{id})
                                        its status and answer (cloud/rpc_http.py)
  GET  /metrics                         Prometheus text: the cloud's counters

The entity graph (cloud/graph_store.py: every kind but devices; EntityAdmin below). ``{id}`` is
an entity id, or a name that only one entity has (``?type=T`` narrows it):
  POST   /api/entities       {type, name?, entity?}   -> 201 the entity (ThingsBoard JSON in
                                                          "entity"); 409 when the name is taken
  GET    /api/entities?type=T&name=N&edge=RK          entities (rows without their JSON)
  GET    /api/entities/{id}                           the entity (a rule chain's metadata too)
  PUT    /api/entities/{id}  the entity's JSON (replaces it; a rule chain also takes a rule
                             chain export, {"ruleChain"?, "metadata"?})   -> 200
  DELETE /api/entities/{id}                           -> 200 {"deleted": [...]} (what cascaded)
  POST   /api/entities/import {file, type?, assign?, keep_ids?, source?}   a ThingsBoard export
                             file (cloud/tb_import.py), all or nothing -> 201 {entities, notes}
  POST   /api/edges/{edge}/entities/{id}   assign to the edge (ThingsBoard: POST
                             /api/edge/{edgeId}/{asset|dashboard|ruleChain|entityView|device}/{id},
                             also served here) -> 200 {"changed": bool}
  DELETE /api/edges/{edge}/entities/{id}   unassign (ThingsBoard: DELETE on the same paths)
  POST   /api/relations      EntityRelation JSON (ThingsBoard's POST /api/v2/relation, also
                             served with /api/relation); from/to may be an id or name -> 201
  DELETE /api/relations?fromId=&fromType=&toId=&toType=&relationType=&relationTypeGroup=
                             ThingsBoard's query (also /api/v2/relation, /api/relation)
                             -> 200; 404 when there is no such relation
  GET    /api/relations?id=ID                         relations from and to the entity
Errors: {"status", "error", "message"} with 400/401/403/404/409/413/415/500/507.
Every request passes the admin guard first (edge_sync.common.admin_guard): no cross-site writes,
a bearer token when ``admin.token`` is set, no caching (answers carry edge secrets and tokens).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from loguru import logger

from edge_sync.cloud import tb_import
from edge_sync.cloud.graph_store import METADATA, TENANT_WIDE, CloudEntity, kind_label
from edge_sync.cloud.registry import StreamRegistry
from edge_sync.cloud.rpc_http import RpcRoutes
from edge_sync.cloud.rpc_service import RpcService
from edge_sync.cloud.service import CloudService
from edge_sync.common import ids
from edge_sync.common.admin_guard import AdminGuard
from edge_sync.common.entity_graph import BY_TYPE, Ref
from edge_sync.common.health import healthz, readyz_response
from edge_sync.common.http_errors import error_response, status_of
from edge_sync.common.json_body import parse_json
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.common.wire import typed_id
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.metrics import Metrics

_log = logger.bind(component="cloud-admin")

MAX_EVENTS = 100_000
DEFAULT_EVENTS = 1000
MAX_BODY_BYTES = 2 * DEFAULT_MAX_MESSAGE_BYTES
"""The largest request body: an entity may be as large as one message to an edge (4 MiB by
default), an import file may hold several."""

TITLED = frozenset({"TENANT", "CUSTOMER", "DASHBOARD", "WIDGETS_BUNDLE"})
"""Kinds whose ThingsBoard name is their ``title`` (their JSON's ``name`` is a read-only copy)."""

# ThingsBoard's edge assignment paths (EdgeController & co: POST/DELETE
# /api/edge/{edgeId}/{kind}/{entityId}), by the kind segment.
TB_ASSIGN_KINDS: Mapping[str, str] = {"device": "DEVICE", "asset": "ASSET",
                                      "dashboard": "DASHBOARD", "ruleChain": "RULE_CHAIN",
                                      "entityView": "ENTITY_VIEW"}


def int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{name}: {raw!r} is not an integer") from exc
    if not low <= value <= high:
        raise BadRequest(f"{name}: {value} is out of range {low}..{high}")
    return value


def _fields(body: Any, allowed: set[str], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object with {what}")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    return body


@dataclass(frozen=True, slots=True)
class Target:
    """What an operator's reference names: an entity of the graph, a device or an edge."""

    entity_type: str
    id: uuid.UUID
    name: str
    entity: CloudEntity | None = None

    def ref(self) -> Ref:
        return Ref(self.entity_type, str(self.id))

    def describe(self) -> str:
        return f"{kind_label(self.entity_type)} {self.name!r} ({self.id})"


class GraphLookup:
    """tb_import's view of what the cloud has (the graph, the devices, the edges)."""

    def __init__(self, service: CloudService) -> None:
        self._service = service
        self._fqns: set[str] | None = None

    def has(self, ref: Ref) -> bool:
        store, graph = self._service.store, self._service.graph
        if ref.kind == "WIDGET_TYPE_FQN":
            if self._fqns is None:
                self._fqns = {str(e.body().get("fqn"))
                              for e in graph.entities(entity_type="WIDGET_TYPE")}
            return ref.key in self._fqns
        try:
            entity_id = uuid.UUID(ref.key)
        except ValueError:
            return False
        if ref.kind == "DEVICE":
            return store.device(entity_id) is not None
        if ref.kind == "EDGE":
            return store.edge_by_id(entity_id) is not None
        found = graph.entity(entity_id)
        return found is not None and found.entity_type == ref.kind

    def find(self, entity_type: str, name: str) -> uuid.UUID | None:
        hits = self._service.graph.entities(entity_type=entity_type, name=name)
        return hits[0].id if hits else None


def _text_arg(value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise BadRequest(f"{what}: expected text")
    return value


def _kind_arg(value: object, what: str = "type") -> str:
    """An entity kind as given by an operator ("asset", "ASSET", "rule_chain")."""
    text = _text_arg(value, what).strip().upper().replace("-", "_")
    if text != "EDGE" and (text not in BY_TYPE or text in (
            "RELATION", "RULE_CHAIN_METADATA", "DEVICE_CREDENTIALS", "USER_CREDENTIALS")):
        raise BadRequest(f"{what}: unknown entity kind {value!r}")
    return text


class EntityAdmin:
    """The operator's operations on the cloud's entity graph (cloud/graph_store.CloudGraph), for
    the admin API's routes (the server running) and ``edge-cloud entity ...`` (the server
    stopped: the store directly). Arguments are untrusted JSON values: each is checked here,
    and a bad one is a BadRequest that says which. Every write is one transaction of the graph,
    which queues its downlinks for the edges that hold the entity (CloudService wakes their
    streams). Answers are plain JSON (rows with routing keys)."""

    def __init__(self, service: CloudService, *, id_source: ids.TimeBasedIds = ids.PROCESS_IDS) -> None:
        self._service = service
        self._store = service.store
        self._graph = service.graph  # its commits wake the streams of the edges they queued for
        self._ids = id_source

    def _now(self) -> int:
        return self._service.clock.now_ms()

    # -- references ------------------------------------------------------------------------------

    def target(self, ref: object, entity_type: object = None, *, edges: bool = False) -> Target:
        """The entity (or device; with ``edges`` an edge too) an id or a name names. A name must
        be unique (``entity_type`` narrows it); NotFound when nothing has it."""
        text = _text_arg(ref, "entity")
        kind = None if entity_type in (None, "") else _kind_arg(entity_type)
        graph, store = self._graph, self._store
        try:
            entity_id: uuid.UUID | None = uuid.UUID(text)
        except ValueError:
            entity_id = None
        found: list[Target] = []
        if entity_id is not None:
            entity = graph.entity(entity_id)
            if entity is not None:
                found.append(Target(entity.entity_type, entity.id, entity.name, entity))
            device = store.device(entity_id)
            if device is not None:
                found.append(Target("DEVICE", device.id, device.name))
            edge = store.edge_by_id(entity_id) if edges else None
            if edge is not None:
                found.append(Target("EDGE", edge.edge_id, edge.name))
        else:
            if kind not in (None, "DEVICE", "EDGE"):
                found += [Target(e.entity_type, e.id, e.name, e)
                          for e in graph.entities(entity_type=kind, name=text)]
            elif kind is None:
                found += [Target(e.entity_type, e.id, e.name, e)
                          for e in graph.entities(name=text)]
            if kind in (None, "DEVICE"):
                found += [Target("DEVICE", d.id, d.name) for d in store.devices_named(text)]
        if kind is not None:
            found = [t for t in found if t.entity_type == kind]
        if not found:
            what = kind_label(kind) if kind else "entity"
            raise NotFound(f"no {what} {text!r}")
        if len(found) > 1:
            raise BadRequest(f"{text!r} names several entities ("
                             + ", ".join(t.describe() for t in found[:5])
                             + "): give the id, or the type")
        return found[0]

    def graph_entity(self, ref: object, entity_type: object = None) -> CloudEntity:
        found = self.target(ref, entity_type)
        if found.entity is None:
            raise BadRequest(f"{found.describe()} is a device: devices are kept apart from the "
                             "entity graph (edge-cloud device ...)")
        return found.entity

    # -- views -----------------------------------------------------------------------------------

    def _routing_keys(self) -> dict[uuid.UUID, str]:
        return {e.edge_id: e.routing_key for e in self._store.edges()}

    def row(self, entity: CloudEntity, *, full: bool = True,
            keys: Mapping[uuid.UUID, str] | None = None) -> dict[str, Any]:
        """An entity as the API answers it: kind, id, name, createdTime, the routing keys of the
        edges that hold it (every edge for the kinds ThingsBoard sends to all), and with
        ``full`` its ThingsBoard JSON (a rule chain: its metadata too)."""
        keys = keys if keys is not None else self._routing_keys()
        out: dict[str, Any] = {"entity_type": entity.entity_type, "id": str(entity.id),
                               "name": entity.name, "created_time": entity.created_time,
                               "edges": sorted(keys.get(e, str(e)) for e in entity.edges),
                               "on_every_edge": self._on_every_edge(entity)}
        if full:
            out["entity"] = entity.body()
            if entity.entity_type == "RULE_CHAIN":
                meta = self._graph.metadata(entity.id)
                out["metadata"] = None if meta is None else json.loads(meta)
        return out

    def _on_every_edge(self, entity: CloudEntity) -> bool:
        """The kinds ThingsBoard's sync sends to every edge, and the cloud's edge root chain."""
        return entity.entity_type in TENANT_WIDE or (
            entity.entity_type == "RULE_CHAIN" and entity.id == self._graph.root_chain_id())

    def entities(self, *, entity_type: object = None, name: object = None,
             edge: object = None) -> list[dict[str, Any]]:
        kind = None if entity_type in (None, "") else _kind_arg(entity_type)
        if kind == "DEVICE":
            raise BadRequest("type DEVICE: devices are listed by edge-cloud device list "
                             "(GET /api/devices?edge=RK)")
        if name is not None and not isinstance(name, str):
            raise BadRequest("name: expected text")
        edge_id = self._service.edge(edge).edge_id if edge not in (None, "") else None
        keys = self._routing_keys()
        return [self.row(e, full=False, keys=keys) for e in self._graph.entities(
            entity_type=kind, name=name or None, edge_id=edge_id)]

    def show(self, ref: object, entity_type: object = None) -> dict[str, Any]:
        return self.row(self.graph_entity(ref, entity_type))

    # -- writes ----------------------------------------------------------------------------------

    def create(self, entity_type: object, name: object = None,
               body: object = None) -> dict[str, Any]:
        """A new entity of ``entity_type`` from ``body`` (its ThingsBoard JSON, may be absent)
        named ``name`` (given, it wins over the body's name / title / email). Not assigned to
        any edge; the kinds on every edge are queued for every edge."""
        kind = _kind_arg(entity_type)
        if kind == "DEVICE":
            raise BadRequest("type DEVICE: devices are made with edge-cloud device create "
                             "(POST /api/devices): a device has a token and one edge")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise BadRequest("entity: expected a JSON object (the entity's ThingsBoard JSON)")
        body = dict(body)
        if name is not None:
            name = _text_arg(name, "name")
            if kind in TITLED:
                body["title"] = name
            body["email" if kind == "USER" else "name"] = name
        elif kind in TITLED and isinstance(body.get("title"), str):
            body.setdefault("name", body["title"])
        entity = self._graph.create_entity(kind, body, now_ms=self._now())
        return self.row(entity)

    def update(self, ref: object, body: object, entity_type: object = None) -> dict[str, Any]:
        """Replace an entity's JSON (ThingsBoard's save: what the body lacks is gone; its id and
        createdTime are kept). A rule chain also takes a rule chain export ({"ruleChain",
        "metadata"}, either or both): the metadata's nodes get new ids, as an import's."""
        entity = self.graph_entity(ref, entity_type)
        if not isinstance(body, dict):
            raise BadRequest("expected the entity's ThingsBoard JSON (an object)")
        now = self._now()
        if entity.entity_type == "RULE_CHAIN" and ("ruleChain" in body or "metadata" in body):
            return self._update_chain(entity, body, now)
        body = dict(body)
        if entity.entity_type in TITLED and isinstance(body.get("title"), str):
            body["name"] = body["title"]
        updated = self._graph.update_entity(entity.entity_type, entity.id, body, now_ms=now)
        return self.row(updated)

    def _update_chain(self, chain: CloudEntity, doc: dict[str, Any], now: int) -> dict[str, Any]:
        chain_doc = doc.get("ruleChain")
        if chain_doc is None:
            chain_doc = {k: v for k, v in chain.body().items()
                         if k not in ("id", "createdTime", "tenantId", "firstRuleNodeId")}
        if "metadata" not in doc:
            meta_text = self._graph.metadata(chain.id)
            meta_doc = json.loads(meta_text) if meta_text else {"nodes": [], "connections": []}
        else:
            meta_doc = doc["metadata"]
        planned = tb_import.plan({"ruleChain": chain_doc, "metadata": meta_doc},
                                 new_id=lambda: self._ids.new(now), lookup=GraphLookup(self._service),
                                 entity_type="RULE_CHAIN")
        new_chain, new_meta = planned.items[0].body, planned.items[1].body
        new_meta["ruleChainId"] = typed_id("RULE_CHAIN", chain.id)
        for node in new_meta["nodes"]:
            node["ruleChainId"] = typed_id("RULE_CHAIN", chain.id)
        new_chain["id"] = typed_id("RULE_CHAIN", chain.id)
        new_chain["createdTime"] = chain.created_time
        if "metadata" not in doc:  # the chain alone: its nodes (and first node) as they are
            new_meta = meta_doc
            new_chain["firstRuleNodeId"] = chain.body().get("firstRuleNodeId")
        new_chain["root"] = bool(chain.body().get("root"))
        self._graph.update_entity("RULE_CHAIN", chain.id, new_chain, now_ms=now)
        if "metadata" in doc:
            self._graph.update_entity(METADATA, chain.id, new_meta, now_ms=now)
        out = self.row(self.graph_entity(str(chain.id)))
        out["notes"] = [n.replace("the file: ", "", 1) for n in planned.notes]
        return out

    def delete(self, ref: object, entity_type: object = None) -> dict[str, Any]:
        """Delete an entity and what cascades (its entity views, a chain's metadata); 409 while
        others need it."""
        entity = self.graph_entity(ref, entity_type)
        removed = self._graph.delete_entity(entity.entity_type, entity.id, now_ms=self._now())
        return {"deleted": [{"entity_type": r.kind, "id": r.key} for r in removed],
                "name": entity.name}

    def import_file(self, doc: object, *, entity_type: object = None, assign: object = None,
                    keep_ids: object = False, source: object = None) -> dict[str, Any]:
        """A ThingsBoard export file (cloud/tb_import.py), created in one transaction (all or
        nothing) and, with ``assign`` (a routing key), assigned to that edge."""
        if not isinstance(keep_ids, bool):
            raise BadRequest("keep_ids: expected true or false")
        where = "the file" if source in (None, "") else _text_arg(source, "source")[:200]
        kind = None if entity_type in (None, "") else _kind_arg(entity_type)
        edge = self._service.edge(assign) if assign not in (None, "") else None
        now = self._now()
        planned = tb_import.plan(doc, new_id=lambda: self._ids.new(now),
                                 lookup=GraphLookup(self._service), entity_type=kind,
                                 keep_ids=keep_ids, source=where)
        if edge is not None:
            for item in planned.items:
                if item.entity_type == "RULE_CHAIN" and item.body.get("type") != "EDGE":
                    raise BadRequest(f"rule chain {item.name!r} is of type "
                                     f"{item.body.get('type')}: only rule chains of type EDGE are "
                                     "assigned to edges (ThingsBoard's rule)")
        created = self._graph.create_entities(
            [(i.entity_type, i.body) for i in planned.items], now_ms=now,
            edge_id=edge.edge_id if edge is not None else None)
        keys = self._routing_keys()
        rows = [self.row(e, full=False, keys=keys) for e in created if e.entity_type != METADATA]
        _log.bind(source=where, entities=len(rows), notes=len(planned.notes),
                  routing_key=edge.routing_key if edge else None).info(
            "imported {} entities from {}", len(rows), where)
        return {"entities": rows, "notes": list(planned.notes),
                "assigned_to": edge.routing_key if edge is not None else None}

    # -- assignment ------------------------------------------------------------------------------

    def assign(self, edge_ref: object, ref: object, entity_type: object = None, *,
               on: bool = True) -> dict[str, Any]:
        """Assign (``on``) or unassign an entity or a device to/from an edge; "changed" False
        when it already was (or was not)."""
        edge = self._service.edge(edge_ref)
        found = self.target(ref, entity_type)
        if found.entity is not None and self._on_every_edge(found.entity):
            raise BadRequest(f"{found.describe()} is on every edge (ThingsBoard's sync sends "
                             "every one): it is not assigned")
        if on and found.entity_type == "RULE_CHAIN" and found.entity is not None \
                and found.entity.body().get("type") != "EDGE":
            raise BadRequest(f"{found.describe()} is of type {found.entity.body().get('type')}: "
                             "only rule chains of type EDGE are assigned to edges (ThingsBoard's "
                             "rule)")
        op = self._graph.assign if on else self._graph.unassign
        changed = op(edge.edge_id, found.entity_type, found.id, now_ms=self._now())
        return {"edge": edge.routing_key, "edge_id": str(edge.edge_id),
                "entity_type": found.entity_type, "id": str(found.id), "name": found.name,
                "assigned": on, "changed": changed}

    # -- relations -------------------------------------------------------------------------------

    def _end(self, value: object, what: str) -> Ref:
        """A relation's end: a typed id ({"entityType", "id"}) or an id / unique name."""
        if isinstance(value, dict):
            kind, raw = value.get("entityType"), value.get("id")
            if not isinstance(kind, str) or not isinstance(raw, str):
                raise BadRequest(f"{what}: expected {{\"entityType\", \"id\"}} or an id")
            if kind == "EDGE":
                return Ref(kind, raw)
            return self.target(raw, kind, edges=True).ref()
        return self.target(value, None, edges=True).ref()

    def add_relation(self, body: object) -> dict[str, Any]:
        """Add (or replace) a relation (ThingsBoard's EntityRelation JSON; ``from`` and ``to`` may
        be given as ids or unique names)."""
        if not isinstance(body, dict):
            raise BadRequest("expected a relation: {from, to, type, typeGroup?, additionalInfo?}")
        rel = {**body, "from": self._end(body.get("from"), "from"),
               "to": self._end(body.get("to"), "to")}
        rel["from"] = typed_id(rel["from"].kind, rel["from"].key)
        rel["to"] = typed_id(rel["to"].kind, rel["to"].key)
        _, normal = self._graph.relation_body(rel)
        self._graph.add_relation(normal, now_ms=self._now())
        return normal

    def delete_relation(self, query: Mapping[str, Any]) -> dict[str, Any]:
        """Delete one relation, named as ThingsBoard's DELETE /api/v2/relation names it: fromId,
        fromType, toId, toType, relationType, relationTypeGroup (COMMON when absent); the types
        are optional here. NotFound when there is no such relation."""
        unknown = set(query) - {"fromId", "fromType", "toId", "toType", "relationType",
                                "relationTypeGroup"}
        if unknown:
            raise BadRequest(f"unknown parameters: {', '.join(sorted(unknown))}")
        src = self.target(query.get("fromId"), query.get("fromType"), edges=True).ref()
        dst = self.target(query.get("toId"), query.get("toType"), edges=True).ref()
        rel_type = _text_arg(query.get("relationType"), "relationType")
        group = query.get("relationTypeGroup") or "COMMON"
        if not self._graph.delete_relation(src, dst, rel_type, str(group), now_ms=self._now()):
            raise NotFound(f"no relation {src} -{rel_type} ({group})-> {dst}")
        return {"from": typed_id(src.kind, src.key), "to": typed_id(dst.kind, dst.key),
                "type": rel_type, "typeGroup": group, "deleted": True}

    def relations(self, ref: object) -> list[dict[str, Any]]:
        found = self.target(ref, None, edges=True)
        return self._graph.relations(found.id)


class CloudAdminApi:
    def __init__(self, service: CloudService, registry: StreamRegistry,
                 status_extra: Callable[[], dict[str, Any]] | None = None, *,
                 token: str = "", readiness: Callable[[], dict[str, bool]] | None = None,
                 metrics: Metrics | None = None, rpc: RpcService | None = None) -> None:
        self._guard = AdminGuard("cloud-admin", token=token)
        self._rpc = RpcRoutes(rpc if rpc is not None else RpcService(service))
        self._readiness = readiness
        self._service = service
        self._registry = registry
        self._status_extra = status_extra
        self._metrics = metrics if metrics is not None else Metrics()
        self._entities = EntityAdmin(service)

    def make_app(self) -> web.Application:
        """Runs on the host's loop thread."""
        app = self._guard.install(web.Application(client_max_size=MAX_BODY_BYTES))
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/status", self._handler(self._status))
        app.router.add_get("/api/edges", self._handler(self._edges))
        app.router.add_post("/api/edges", self._handler(self._create_edge))
        app.router.add_get("/api/devices", self._handler(self._devices))
        app.router.add_post("/api/devices", self._handler(self._create_device))
        app.router.add_post("/api/attributes", self._async_handler(self._set_attributes))
        app.router.add_get("/api/events", self._handler(self._events))
        app.router.add_get("/api/edges/{edge}/downlinks/parked", self._handler(self._parked))
        app.router.add_post("/api/edges/{edge}/sync",
                            self._handler(self._sync, body_optional=True))
        self._rpc.install(app)
        self._install_entities(app)
        app.router.add_get("/metrics", self._prometheus)
        return app

    def _install_entities(self, app: web.Application) -> None:
        """The entity graph's routes (EntityAdmin), with ThingsBoard's paths where they map."""
        h = self._handler
        app.router.add_post("/api/entities/import", h(self._import))
        app.router.add_post("/api/entities", h(self._create_entity))
        app.router.add_get("/api/entities", h(self._list_entities))
        app.router.add_get("/api/entities/{id}", h(self._show_entity))
        app.router.add_put("/api/entities/{id}", h(self._update_entity))
        app.router.add_delete("/api/entities/{id}", h(self._delete_entity))
        app.router.add_post("/api/edges/{edge}/entities/{id}", h(self._assign, body_optional=True))
        app.router.add_delete("/api/edges/{edge}/entities/{id}", h(self._unassign))
        kinds = "{kind:" + "|".join(TB_ASSIGN_KINDS) + "}"
        app.router.add_post(f"/api/edge/{{edge}}/{kinds}/{{id}}",
                            h(self._assign, body_optional=True))
        app.router.add_delete(f"/api/edge/{{edge}}/{kinds}/{{id}}", h(self._unassign))
        for path in ("/api/relations", "/api/relation", "/api/v2/relation"):
            app.router.add_post(path, h(self._add_relation))
            app.router.add_delete(path, h(self._delete_relation))
        app.router.add_get("/api/relations", h(self._relations))

    async def _prometheus(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self._metrics.render_prometheus(), content_type="text/plain")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        return readyz_response(self._readiness() if self._readiness else {})

    def _handler(
        self, fn: Callable[[web.Request, Any], tuple[int, Any]], *, body_optional: bool = False
    ) -> Callable[[web.Request], Any]:
        """Read the body on the loop, run fn (blocking: LMDB, hashing) on a worker thread. A POST
        needs a JSON body unless ``body_optional`` (then an empty one is None)."""

        async def on_thread(request: web.Request, body: Any) -> tuple[int, Any]:
            return await asyncio.to_thread(fn, request, body)

        return self._async_handler(on_thread, body_optional=body_optional)

    def _async_handler(
        self, fn: Callable[[web.Request, Any], Awaitable[tuple[int, Any]]], *,
        body_optional: bool = False,
    ) -> Callable[[web.Request], Any]:
        """As _handler, for a coroutine function that does its blocking work on worker threads
        itself."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                body = None
                if request.method in ("POST", "PUT"):
                    raw = await request.read()
                    body = parse_json(raw) if raw or not body_optional else None
                status, out = await fn(request, body)
            except web.HTTPRequestEntityTooLarge:
                return error_response(413, f"body too large: at most {MAX_BODY_BYTES:,} bytes")
            except Exception as exc:
                status = status_of(exc)
                log = _log.bind(path=request.path, status=status)
                if status >= 500:
                    log.opt(exception=exc).error("admin request failed: {}", exc)
                else:
                    log.info("admin request refused: {}", exc)
                return error_response(status, str(exc) or type(exc).__name__)
            return web.json_response(out, status=status)

        return handle

    # -- views (worker thread) -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        connected = self._registry.snapshot()
        edges = []
        for row in self._service.edges():
            stream = next((v for k, v in connected.items() if str(k) == row["id"]), None)
            row["connected"] = stream is not None
            row["stream"] = stream
            edges.append(row)
        out: dict[str, Any] = {"server": "running",
                               "data_dir": str(self._service.store.path.resolve()),
                               "edges": edges}
        if self._status_extra is not None:
            out.update(self._status_extra())
        return out

    def _status(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self.status()

    def _edges(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self.status()["edges"]

    def _create_edge(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"name", "routing_key", "secret", "type"}, "name, routing_key, secret")
        edge, secret, created = self._service.create_edge(
            b.get("name"), routing_key=b.get("routing_key"), secret=b.get("secret"),
            type_=b.get("type") or "default")
        return (201 if created else 200), {**edge.as_json(), "secret": secret, "created": created}

    def _devices(self, request: web.Request, body: Any) -> tuple[int, Any]:
        edge = self._service.edge(request.query.get("edge", ""))
        return 200, [d.as_json() for d in self._service.store.devices_of_edge(edge.edge_id)]

    def _create_device(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"edge", "name", "type", "label", "token"}, "edge, name, type, token")
        device, numbers = self._service.create_device(
            b.get("edge"), b.get("name"), type_=b.get("type"), label=b.get("label"),
            token=b.get("token"))
        return 201, {**device.as_json(with_token=True), "downlinks": numbers}

    async def _set_attributes(self, request: web.Request, body: Any) -> tuple[int, Any]:
        """Checked and looked up on a worker thread; the write committed with the others that
        arrive meanwhile (group commit: no thread held while the disk syncs); answered once
        committed."""
        b = _fields(body, {"device", "edge", "values", "key", "value"}, "device, edge, values")
        values = b.get("values")
        if "key" in b:
            if values is not None:
                raise BadRequest("give either values or key/value, not both")
            if "value" not in b:
                raise BadRequest("key given without value")
            values = {b["key"]: b["value"]}
        prepared = await asyncio.to_thread(self._service.prepare_attributes, b.get("device"),
                                           values, edge_ref=b.get("edge"))
        number = await asyncio.wrap_future(self._service.store.submit_shared_attributes(
            prepared.device, prepared.values, prepared.ts, prepared.downlink))
        self._service.attributes_set(prepared, number)
        device = prepared.device
        return 200, {"device": str(device.id), "name": device.name, "edge_id": str(device.edge_id),
                     "values": values, "downlink": number}

    def _parked(self, request: web.Request, body: Any) -> tuple[int, Any]:
        limit = int_param(request.query, "limit", 0, 0, MAX_EVENTS)
        parked = self._service.parked_downlinks(request.match_info["edge"], limit=limit)
        return 200, [p.as_json() for p in parked]

    def _sync(self, request: web.Request, body: Any) -> tuple[int, Any]:
        """A full sync of the edge on its current stream, as ThingsBoard's "Sync edge" does:
        what a sync sends, sent anew (content parked during an earlier sync among it)."""
        if body is not None:
            _fields(body, set(), "no fields")
        edge = self._service.edge(request.match_info["edge"])
        if not self._registry.request_sync(edge.edge_id, "operator"):
            raise Conflict(f"edge {edge.routing_key!r} is not connected: a sync runs on the "
                           "edge's stream (it asks for one itself when it connects)")
        _log.bind(routing_key=edge.routing_key, edge_id=str(edge.edge_id)).info(
            "full sync of edge {} requested by the operator", edge.routing_key)
        return 202, {"edge_id": str(edge.edge_id), "routing_key": edge.routing_key,
                     "sync": "requested"}

    def _events(self, request: web.Request, body: Any) -> tuple[int, Any]:
        q = request.query
        after = int_param(q, "after", 0, 0, 2**63 - 1)
        limit = int_param(q, "limit", DEFAULT_EVENTS, 1, MAX_EVENTS)
        events = self._service.events(q.get("edge", ""), after=after, limit=limit)
        return 200, [e.as_json() for e in events]

    # -- the entity graph (worker thread) --------------------------------------------------------

    def _create_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"type", "name", "entity"}, "type, name, entity")
        return 201, self._entities.create(b.get("type"), b.get("name"), b.get("entity"))

    def _list_entities(self, request: web.Request, body: Any) -> tuple[int, Any]:
        q = request.query
        unknown = set(q) - {"type", "name", "edge"}
        if unknown:
            raise BadRequest(f"unknown parameters: {', '.join(sorted(unknown))}")
        return 200, self._entities.entities(entity_type=q.get("type"), name=q.get("name"),
                                        edge=q.get("edge"))

    def _show_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.show(request.match_info["id"], request.query.get("type"))

    def _update_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.update(request.match_info["id"], body,
                                          request.query.get("type"))

    def _delete_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.delete(request.match_info["id"], request.query.get("type"))

    def _import(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"file", "type", "assign", "keep_ids", "source"},
                    "file (the export's JSON), type, assign, keep_ids, source")
        if "file" not in b:
            raise BadRequest("file: missing (the ThingsBoard export's JSON)")
        return 201, self._entities.import_file(b["file"], entity_type=b.get("type"),
                                               assign=b.get("assign"),
                                               keep_ids=b.get("keep_ids", False),
                                               source=b.get("source"))

    def _assignment(self, request: web.Request, body: Any, on: bool) -> tuple[int, Any]:
        if body is not None and body != {}:
            raise BadRequest("expected no body (or {})")
        info = request.match_info
        kind = TB_ASSIGN_KINDS.get(info.get("kind", ""), request.query.get("type"))
        return 200, self._entities.assign(info["edge"], info["id"], kind, on=on)

    def _assign(self, request: web.Request, body: Any) -> tuple[int, Any]:
        """Assign to an edge (ThingsBoard's POST /api/edge/{edgeId}/{kind}/{id}, which also
        answers here)."""
        return self._assignment(request, body, True)

    def _unassign(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return self._assignment(request, body, False)

    def _add_relation(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 201, self._entities.add_relation(body)

    def _delete_relation(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.delete_relation(dict(request.query))

    def _relations(self, request: web.Request, body: Any) -> tuple[int, Any]:
        q = request.query
        unknown = set(q) - {"id"}
        if unknown:
            raise BadRequest(f"unknown parameters: {', '.join(sorted(unknown))} (give id)")
        return 200, self._entities.relations(q.get("id"))
