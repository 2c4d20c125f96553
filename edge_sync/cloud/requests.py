"""The reference cloud's answers to an edge's requests (UplinkMsg attributesRequestMsg,
relationRequestMsg, ruleChainMetadataRequestMsg), as ThingsBoard's DefaultEdgeRequestsService
answers them: downlinks queued for the edge, and nothing at all when there is nothing to send.
Best effort: when queueing the answers fails, the session logs it and still acknowledges the
uplink (session.py).

- attributes of an entity in one scope: one entityData downlink (attributesUpdatedMsg,
  postAttributeScope = the scope, attributeTs = now). The cloud keeps only the SHARED_SCOPE
  attributes it sets on the edge's own devices; any other entity or scope has none here.
- relations of an entity: none. The relationUpdateMsg uplinks the cloud applies are recorded
  in its apply log only, not kept as relations to answer from (ThingsBoard sends nothing for an
  entity without relations).
- the metadata of the edge's root rule chain: its RuleChainMetadataUpdateMsg; other chains are
  unknown here.
"""

from __future__ import annotations

from dataclasses import dataclass

from edge_sync.cloud import downlinks, full_sync
from edge_sync.cloud.records import EdgeRecord
from edge_sync.cloud.store import CloudStore
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
    # relationRequestMsg: no relations kept to answer from (relation uplinks are in the apply
    # log only); ThingsBoard answers an entity without relations with nothing
    for meta in uplink.ruleChainMetadataRequestMsg:
        payloads += _rule_chain_metadata(store, meta)
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


def _rule_chain_metadata(store: CloudStore, req: edge_pb2.RuleChainMetadataRequestMsg) -> list[bytes]:
    entities = full_sync.tenant_entities(store, ())
    if uuid_of(req.ruleChainIdMSB, req.ruleChainIdLSB) != entities.rule_chain_id:
        return []
    return [full_sync.root_chain_metadata(entities)]
