"""The reference cloud's answers to an edge's requests (UplinkMsg attributesRequestMsg,
relationRequestMsg, ruleChainMetadataRequestMsg), as ThingsBoard's DefaultEdgeRequestsService
answers them: downlinks queued for the edge, and nothing at all when there is nothing to send.
Best effort: when queueing the answers fails, the session logs it and still acknowledges the
uplink (session.py).

- attributes of an entity in one scope: one entityData downlink (attributesUpdatedMsg,
  postAttributeScope = the scope, attributeTs = now). The cloud keeps only the SHARED_SCOPE
  attributes it sets on the edge's own devices; any other entity or scope has none here.
- relations of an entity: one relationUpdateMsg (ENTITY_CREATED) per relation of it, from or
  to it, whose both ends are on the edge (the entity graph, cloud/graph_store.py), in one
  downlink; nothing for an entity without any (ThingsBoard's processRelationRequestMsg sends the
  relations of the entity, both directions).
- the metadata of a rule chain on the edge: its ruleChainMetadataUpdateMsg (ENTITY_CREATED, as
  ThingsBoard's processRuleChainMetadataRequestMsg queues RULE_CHAIN_METADATA ADDED); nothing
  for a chain the edge does not hold or without metadata.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

from edge_sync.cloud import downlink_batch, downlinks
from edge_sync.cloud.records import EdgeRecord
from edge_sync.cloud.store import CloudStore
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.common.wire import uuid_of
from edge_sync.proto import edge_pb2


@dataclass(frozen=True, slots=True)
class Answers:
    """The downlinks answering one UplinkMsg's requests, and how many requests it carried."""

    requests: int
    payloads: list[bytes]


def answer(store: CloudStore, edge: EdgeRecord, uplink: edge_pb2.UplinkMsg, now_ms: int) -> Answers:
    payloads: list[bytes] = []
    for req in uplink.attributesRequestMsg:
        payloads += _attributes(store, edge, req, now_ms)
    for rel in uplink.relationRequestMsg:
        payloads += _relations(store, edge, uuid_of(rel.entityIdMSB, rel.entityIdLSB))
    for meta in uplink.ruleChainMetadataRequestMsg:
        payloads += _rule_chain_metadata(store, edge, meta)
    count = (len(uplink.attributesRequestMsg) + len(uplink.relationRequestMsg)
             + len(uplink.ruleChainMetadataRequestMsg))
    return Answers(count, payloads)


def _attributes(store: CloudStore, edge: EdgeRecord, req: edge_pb2.AttributesRequestMsg,
                now_ms: int) -> list[bytes]:
    if req.entityType != "DEVICE" or req.scope != "SHARED_SCOPE":
        return []
    device = store.device(uuid_of(req.entityIdMSB, req.entityIdLSB))
    if device is None or device.edge_id != edge.edge_id:  # never another edge's device
        return []
    values = store.shared_attributes(device.id)
    if not values:
        return []
    return [downlinks.attributes("DEVICE", device.id, req.scope, values, now_ms)]


def _relations(store: CloudStore, edge: EdgeRecord, entity_id: uuid.UUID) -> list[bytes]:
    found = store.graph.relations_on_edge(edge.edge_id, entity_id)
    entries = []
    for rel in found:
        field, msg = downlinks.relation_message(
            "RELATION_ADD_OR_UPDATE", json.dumps(rel, separators=(",", ":"), ensure_ascii=False))
        entries.append((field, msg.SerializeToString()))
    return list(downlink_batch.pack_all(entries, max_bytes=DEFAULT_MAX_MESSAGE_BYTES))


def _rule_chain_metadata(store: CloudStore, edge: EdgeRecord,
                         req: edge_pb2.RuleChainMetadataRequestMsg) -> list[bytes]:
    chain_id = uuid_of(req.ruleChainIdMSB, req.ruleChainIdLSB)
    graph = store.graph
    entity = graph.entity(chain_id)
    if entity is None or entity.entity_type != "RULE_CHAIN" or edge.edge_id not in entity.edges:
        return []  # never another edge's chain
    meta = graph.metadata(chain_id)
    if meta is None:
        return []
    return [downlinks.message_of([downlinks.entity_message("RULE_CHAIN_METADATA", "ADDED",
                                                           chain_id, meta)])]
