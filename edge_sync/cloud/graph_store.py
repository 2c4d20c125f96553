"""The reference cloud's entity graph: every kind of ThingsBoard entity but devices (the tenant,
customers, device and asset profiles, assets, dashboards, widget bundles and types, rule chains
with their metadata, users, entity views, queues), which edge each is assigned to, and the
relations between entities. Devices keep their own tables (cloud/store.py, one edge each); the
graph refers to them and relations may name them.

Each change is one transaction that also queues, durably, the downlink of the change for every
edge that holds the entity (the edge's queue of cloud/store.py), so an edge offline gets it when
it connects. What "holds" means:

- the tenant, queues, users, widget types and bundles, device and asset profiles are on every
  edge, as ThingsBoard's full sync sends them to every edge (its EdgeSyncCursor: tenant, queues,
  tenant admin users, widget types and bundles, profiles);
- rule chains, customers, dashboards, assets and entity views are on the edges they are
  assigned to (the cloud's edge root rule chain is on every edge);
- a device is on its edge; a relation is on every edge that holds both its ends.

Downlinks, as ThingsBoard's edge processors build them: an assignment queues the entity ADDED
(ENTITY_CREATED; an asset with its asset profile, a rule chain with its metadata, as
AssetEdgeProcessor / a sync send them), then one relationUpdateMsg per relation whose other end is
on that edge, then (again) what on that edge was waiting for it; an update queues UPDATED to each
edge holding it; a deletion or an unassignment queues DELETED (the id only; the edge removes what
depends on the entity itself). An unassignment also takes off that edge, first, what is assigned
to it and hard-references the entity (its entity views, recursively): the edge's delete removed
them, and left assigned they would be sent by every full sync and held on the edge for ever. A
relation added or deleted queues its relationUpdateMsg (ENTITY_CREATED / ENTITY_DELETED,
ThingsBoard's getUpdateMsgType for RELATION_ADD_OR_UPDATE / RELATION_DELETED) to each edge
holding both ends. A device put on an edge (created there, or assigned to it) queues one
DownlinkMsg with the device, its credentials and its device profile as the graph stores it
(device_downlink_in: the JSON a full sync sends, so a device never overwrites the edge's copy of
its profile). An asset an edge sends is sent back to it (UPDATED) whenever the cloud's JSON is not
what the edge sent, tenant and customer aside (a new name, the profile its type names).

Refused at creation (BadRequest, nothing stored): an unknown kind, a missing name (``title`` of
a dashboard, customer or tenant, ``email`` of a user, ``title`` or else ``name`` of a widgets
bundle, whose ``name`` is then its title, as ThingsBoard's is), a reference to an entity that does
not exist, JSON that would not fit in one message to an edge (the limit named), a reference cycle
(entity_graph.find_cycle: rule chain A forwarding to B forwarding to A). Conflict: the name is
taken in its kind. A user's password (and password history, activation and reset tokens) is
never stored.

This module owns CloudGraph, the one API the rest of the cloud calls, and is where every public
name of the graph is imported from. CloudGraph is the last of a chain of parts, each in its own
module, each building on the ones before it:
  graph_keys.py          the LMDB layout, name and reference keys, records, the cloud's own ids
  graph_tables.py        transactions, records and their indexes, which edges hold an entity
  graph_relations.py     relations, from either end
  graph_downlinks.py     the downlinks a change queues
  graph_checks.py        an entity's JSON prepared and checked before it is written
  graph_entities.py      entities and rule chain metadata: create, update, delete, read
  graph_defaults.py      the entities the cloud makes itself, a device's downlink
  graph_assign.py        assignment to edges, with its cascades
  graph_edge_changes.py  the changes an edge made, applied from its uplinks
The layout of the g_* databases is in graph_keys.py.
"""

from __future__ import annotations

from edge_sync.cloud.graph_edge_changes import GraphEdgeChanges
from edge_sync.cloud.graph_keys import (
    ASSET_PROFILE,
    EDGE_FILLED,
    GRAPH_DB_NAMES,
    GRAPH_KINDS,
    MAX_NAME_KEY,
    MAX_RELATION_TYPE_BYTES,
    MAX_TYPE_GROUP_BYTES,
    METADATA,
    NAME_FIELD,
    QUEUES,
    ROOT_CHAIN,
    TENANT_WIDE,
    UNASSIGNED,
    CloudEntity,
    kind_label,
    name_field,
    named_id_key,
    node_name,
    profile_name,
)

__all__ = ["ASSET_PROFILE", "EDGE_FILLED", "GRAPH_DB_NAMES", "GRAPH_KINDS", "MAX_NAME_KEY",
           "MAX_RELATION_TYPE_BYTES", "MAX_TYPE_GROUP_BYTES", "METADATA", "NAME_FIELD", "QUEUES",
           "ROOT_CHAIN", "TENANT_WIDE", "UNASSIGNED", "CloudEntity", "CloudGraph", "kind_label",
           "name_field", "named_id_key", "node_name", "profile_name"]


class CloudGraph(GraphEdgeChanges):
    """The graph's operations. Each is one durable transaction (shared with other writes made at
    the same time: the store's group commit); any thread. ``notify(edge_id)`` is called after a
    commit that queued downlinks for an edge (the service sets it to wake the edge's stream)."""
