"""The operator's operations on the reference cloud's entity graph (cloud/graph_store.py):
EntityAdmin, behind the admin API's entity routes (cloud/admin_http.py, the server running)
and ``edge-cloud entity ...`` (cli/cloud.py, the server stopped: the store directly), with what
it needs to name an entity (Target) and tb_import's view of what the cloud has (GraphLookup).
Arguments are untrusted JSON values, checked here.

No tables of its own: every write is one transaction of CloudGraph (cloud/graph_keys.py has its
LMDB layout) or of the cloud store's devices and edges (cloud/store.py).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from loguru import logger

from edge_sync.cloud import tb_import
from edge_sync.cloud.graph_store import METADATA, TENANT_WIDE, CloudEntity, kind_label
from edge_sync.cloud.service import CloudService
from edge_sync.common import ids
from edge_sync.common.entity_graph import BY_TYPE, Ref
from edge_sync.common.wire import typed_id
from edge_sync.errors import BadRequest, NotFound

_log = logger.bind(component="cloud-admin")

TITLED = frozenset({"TENANT", "CUSTOMER", "DASHBOARD", "WIDGETS_BUNDLE"})
"""Kinds whose ThingsBoard name is their ``title`` (their JSON's ``name`` is a read-only copy)."""


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
        if isinstance(chain_doc, dict):  # an update never changes which chain is the root
            chain_doc = {k: v for k, v in chain_doc.items() if k != "root"}
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
