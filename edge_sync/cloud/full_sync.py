"""What the reference cloud sends an edge in a full sync, in ThingsBoard's order
(docs/reference-cloud.md): the tenant, ThingsBoard's three default queues, the edge's root rule
chain and its metadata, the default
device and asset profiles, a device profile per other device type the edge's devices use, each
device with its credentials and profile, the devices' shared attributes, then SyncCompletedMsg.

Also the ids of the cloud's own entities (queues, rule chain, rule nodes, profiles): time-based, made
once and kept in the store, so every sync and every restart names the same ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from edge_sync.cloud import downlinks, tb_entities
from edge_sync.cloud.records import CloudDevice, EdgeRecord
from edge_sync.common import ids

if TYPE_CHECKING:
    from edge_sync.cloud.store import CloudStore

ROOT_CHAIN = "rule_chain:edge_root"


def _node_name(index: int) -> str:
    return f"rule_node:edge_root:{index}"


def _profile_name(device_type: str) -> str:
    return f"device_profile:{device_type}"


ASSET_PROFILE = "asset_profile:" + tb_entities.DEFAULT_PROFILE
QUEUES = tuple("queue:" + q[0] for q in tb_entities.DEFAULT_QUEUES)


@dataclass(frozen=True, slots=True)
class TenantEntities:
    """The ids of the cloud's own entities that a sync names."""

    rule_chain_id: uuid.UUID
    node_ids: list[uuid.UUID]
    asset_profile_id: uuid.UUID
    device_profiles: dict[str, uuid.UUID]  # device type -> profile id ("default" always)
    queues: dict[str, uuid.UUID]  # queue name -> id, in ThingsBoard's order


def tenant_entities(store: CloudStore, device_types: Iterable[str],
                    make: Callable[[], uuid.UUID] = ids.time_based) -> TenantEntities:
    """The stable ids of the root rule chain, its nodes, the default asset profile, the default
    queues and the device profiles of ``device_types`` (and the default one), made on first use
    with ``make``."""
    types = sorted({tb_entities.DEFAULT_PROFILE, *device_types})
    nodes = [_node_name(i) for i in range(len(tb_entities.ROOT_CHAIN_NODES))]
    names = [ROOT_CHAIN, *nodes, ASSET_PROFILE, *QUEUES, *(_profile_name(t) for t in types)]
    found = store.named_ids(names, make)
    return TenantEntities(
        rule_chain_id=found[ROOT_CHAIN], node_ids=[found[n] for n in nodes],
        asset_profile_id=found[ASSET_PROFILE],
        device_profiles={t: found[_profile_name(t)] for t in types},
        queues={key.removeprefix("queue:"): found[key] for key in QUEUES})


def device_profile_id(store: CloudStore, device_type: str,
                      make: Callable[[], uuid.UUID] = ids.time_based) -> uuid.UUID:
    """The id of the device profile named ``device_type`` (made on first use)."""
    name = _profile_name(device_type)
    return store.named_ids([name], make)[name]


def root_chain_metadata(entities: TenantEntities) -> bytes:
    return downlinks.root_rule_chain_metadata(entities.rule_chain_id, entities.node_ids)


def full_sync(store: CloudStore, edge: EdgeRecord, now_ms: int) -> list[bytes]:
    """Every downlink of a full sync of ``edge``, in order, SyncCompletedMsg last."""
    snapshot = store.sync_snapshot(edge.edge_id)
    devices: list[CloudDevice] = [device for device, _ in snapshot]
    entities = tenant_entities(store, (d.type for d in devices), lambda: ids.time_based(now_ms))
    tenant = edge.tenant_id
    default = tb_entities.DEFAULT_PROFILE
    out = [
        downlinks.tenant(tenant),
        *(downlinks.queue(qid, name) for name, qid in entities.queues.items()),
        downlinks.root_rule_chain(entities.rule_chain_id, tenant,
                                  entities.node_ids[tb_entities.ROOT_CHAIN_FIRST_NODE]),
        root_chain_metadata(entities),
        downlinks.device_profile(entities.device_profiles[default], tenant, default),
        downlinks.asset_profile(entities.asset_profile_id, tenant),
    ]
    out += [downlinks.device_profile(pid, tenant, name)
            for name, pid in sorted(entities.device_profiles.items()) if name != default]
    out += [downlinks.device_synced(d, tenant, entities.device_profiles[d.type]) for d in devices]
    out += [downlinks.shared_attributes(d, attrs, now_ms) for d, attrs in snapshot if attrs]
    out.append(downlinks.sync_completed())
    return out


def edge_entities(store: CloudStore, edge_id: uuid.UUID) -> list[tuple[str, uuid.UUID, str]]:
    """(entity type, id, JSON) of every entity on the edge, in full-sync order (stub: the
    graph's entities only; the streamed sync replaces it)."""
    return [(e.entity_type, e.id, e.json) for e in store.graph.entities(edge_id=edge_id)]
