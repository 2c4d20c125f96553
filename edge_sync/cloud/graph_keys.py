"""The cloud's entity graph: its LMDB layout, names and keys, the record and change types every
part of CloudGraph (cloud/graph_store.py) shares, and the stable ids of the cloud's own
entities. No I/O of its own.

Layout (ids: 16 raw bytes; every value in storage/codec's checksummed envelope):
  g_entities   id -> (entity type, name, JSON, createdTime, updated ms, origin)
  g_names      entity type + 0 + name (or 1 + sha256 of a long one) -> id; also
               "WIDGET_TYPE_FQN" + 0 + fqn -> widget type id
  g_kinds      entity type + 0 + id -> b""
  g_metadata   rule chain id -> (RuleChainMetaData JSON, updated ms)
  g_relations  from id + to id + typeGroup + 0 + type -> EntityRelation JSON
  g_relations_to  to id + from id + typeGroup + 0 + type -> b""
  g_assign     edge id + sync rank (1 byte) + id -> entity type
  g_assigned   id + edge id -> b""
  g_refby      sha256(kind + 0 + key) + dependant id -> dependant's entity type
               (hard references, entity_graph.references: what a deletion would break)
The databases were added to the edge-cloud/3 format: created on a writable open, absent from a
read-only open of an older store (the graph then reads as empty).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_sync.cloud import tb_entities
from edge_sync.common import entity_graph
from edge_sync.common.entity_graph import NULL_ID, Ref

GRAPH_DB_NAMES = ("g_entities", "g_names", "g_kinds", "g_metadata", "g_relations",
                  "g_relations_to", "g_assign", "g_assigned", "g_refby")

METADATA = "RULE_CHAIN_METADATA"
GRAPH_KINDS: tuple[str, ...] = tuple(
    k.entity_type for k in entity_graph.KINDS
    if k.entity_type not in ("DEVICE", "DEVICE_CREDENTIALS", "USER_CREDENTIALS", "RELATION"))
"""The kinds the graph keeps (rule chain metadata under its rule chain's id)."""
TENANT_WIDE = frozenset({"TENANT", "QUEUE", "USER", "WIDGET_TYPE", "WIDGETS_BUNDLE",
                         "DEVICE_PROFILE", "ASSET_PROFILE"})
"""Kinds on every edge (ThingsBoard's sync sends them all); the others are assigned. A user of
a customer (user_customer) is the exception: only on the edges holding its customer."""


def user_customer(body: Mapping[str, Any]) -> uuid.UUID | None:
    """The customer of a user, None for a tenant user (no customerId, or ThingsBoard's null
    customer). ThingsBoard's EdgeSyncCursor sends an edge the tenant's admins
    (TenantAdminUsersEdgeEventFetcher), and a customer's users only to an edge of that customer
    (CustomerUsersEdgeEventFetcher)."""
    raw = body.get("customerId")
    raw = raw.get("id") if isinstance(raw, Mapping) else raw
    try:
        customer = uuid.UUID(str(raw))
    except ValueError:
        return None
    return None if customer == NULL_ID or customer.int == 0 else customer
NAME_FIELD: Mapping[str, str] = {"TENANT": "title", "CUSTOMER": "title", "DASHBOARD": "title",
                                 "USER": "email"}


def name_field(kind: str, body: Mapping[str, Any]) -> str:
    """The field of an entity's JSON that is its name: NAME_FIELD's, else ``name``; for a
    widgets bundle its ``title`` when it has one (ThingsBoard's WidgetsBundle.getName() returns
    the title, and its JSON's ``name`` is a read-only copy of it), else ``name``."""
    if kind == "WIDGETS_BUNDLE":
        return "title" if body.get("title") is not None else "name"
    return NAME_FIELD.get(kind, "name")

_CUSTOMER_OWNED = frozenset({"ASSET", "ENTITY_VIEW", "USER"})
_USER_SECRETS = tb_entities.SECRET_USER_FIELDS  # the import's list too (tb_import)
_USER_INFO_SECRETS = tb_entities.SECRET_USER_INFO_FIELDS
MAX_RELATION_TYPE_BYTES = 255
MAX_TYPE_GROUP_BYTES = 64
MAX_NAME_KEY = 300
UNASSIGNED = uuid.UUID(int=0)
"""The edge of a device unassigned from its edge (CloudDevice.edge_id)."""

# The stable ids of the cloud's own entities (CloudStore.named_ids, meta "id:" + name).
ROOT_CHAIN = "rule_chain:edge_root"
ASSET_PROFILE = "asset_profile:" + tb_entities.DEFAULT_PROFILE
QUEUES = tuple("queue:" + q[0] for q in tb_entities.DEFAULT_QUEUES)


def node_name(index: int) -> str:
    return f"rule_node:edge_root:{index}"


def profile_name(device_type: str) -> str:
    return f"device_profile:{device_type}"


def named_id_key(name: str) -> bytes:
    """The meta key of a named id (a long name, e.g. a device type, by its digest)."""
    raw = name.encode()
    return b"id:" + (raw if len(raw) <= 392 else hashlib.sha256(raw).digest())


@dataclass(frozen=True, slots=True)
class CloudEntity:
    """An entity of the graph: its ThingsBoard 4.x JSON and the edges it is assigned to (for
    the kinds on every edge: every edge)."""

    entity_type: str
    id: uuid.UUID
    name: str
    json: str
    created_time: int
    edges: tuple[uuid.UUID, ...]

    def body(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.json)
        return value

    def as_json(self) -> dict[str, Any]:
        return {"entity_type": self.entity_type, "id": str(self.id), "name": self.name,
                "created_time": self.created_time, "edges": [str(e) for e in self.edges],
                "entity": self.body()}


@dataclass(frozen=True, slots=True)
class _Rec:
    kind: str
    id: uuid.UUID
    name: str
    json: str
    created: int
    updated: int
    origin: str


@dataclass(slots=True)
class _Change:
    """What one write did: edges whose queue grew, downlinks by kind."""

    woken: set[uuid.UUID]
    queued: Counter[str]

    @classmethod
    def new(cls) -> _Change:
        return cls(set(), Counter())


def kind_label(entity_type: str) -> str:
    """"DASHBOARD" -> "dashboard", "WIDGETS_BUNDLE" -> "widgets bundle"."""
    return entity_type.lower().replace("_", " ")


def _name_key(kind: str, name: str) -> bytes:
    raw = name.encode()
    part = b"\0" + raw if len(raw) <= MAX_NAME_KEY else b"\1" + hashlib.sha256(raw).digest()
    return kind.encode() + part


def _ref_digest(ref: Ref) -> bytes:
    return hashlib.sha256(f"{ref.kind}\0{ref.key}".encode()).digest()


def _rank(kind: str) -> int:
    return entity_graph.BY_TYPE[kind].sync_rank


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


EDGE_FILLED = frozenset({"tenantId", "customerId"})
"""Fields the cloud fills into an entity an edge sends, which the edge keeps out of its own
copy (it adds its tenant and customer when it sends): no reason to send the entity back."""


def _edge_differs(sent: Any, kept: Mapping[str, Any]) -> list[str]:
    """The fields (sorted) in which the cloud's JSON of an entity differs from what an edge
    sent, tenantId and customerId aside (EDGE_FILLED)."""
    if not isinstance(sent, Mapping):
        return sorted(set(kept) - EDGE_FILLED)
    keys = (set(sent) | set(kept)) - EDGE_FILLED
    return sorted(k for k in keys if k not in sent or k not in kept or sent[k] != kept[k])


def _refs(kind: str, body: Mapping[str, Any]) -> list[Ref]:
    """The hard references of an entity as the graph keeps them. A rule chain's metadata names
    its own chain (``ruleChainId``): that is where it lives, not a reference."""
    if kind == METADATA:
        return entity_graph.references(METADATA, {**body, "ruleChainId": None})
    return entity_graph.references(kind, body)
