"""The agent's status as one JSON-able dict: queue depth per lane and status, oldest pending
event's age, last acknowledgement, dead letters, storage use, the server-side RPC requests
still open (queued or delivered, not finished), the cloud link's state, and the entity graph:
how many entities of each type and relations the edge holds, what is held back and for what
(the first HELD_SHOWN), and the sync (the last full sync, one in progress or asked for, and the
last sync the link reports: full or incremental, when, why full).

Read-only: one LMDB read transaction. Used by the admin API and, with the agent stopped, by
``edge-sync status``.
"""

from __future__ import annotations

from typing import Any

from edge_sync.common.entity_graph import KINDS
from edge_sync.errors import StorageCorrupt
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore, MiB
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import GraphStore, HeldEntity, SyncState
from edge_sync.storage.rpc_store import RpcStore

HELD_SHOWN = 20
"""Held entities listed by name in the status (all are counted)."""


def collect_status(
    store: LmdbStore, *, now_ms: int, link: dict[str, Any] | None = None
) -> dict[str, Any]:
    log = EventLog(store)
    entities = EntityStore(store)
    graph = GraphStore(store)
    with store.read() as txn:
        counts = log.counts(txn)
        oldest = log.oldest_pending(txn)
        last_ack = log.last_ack_ms(txn)
        tenant, edge = log.identity(txn)
        devices = entities.device_count(txn)
        rpc_open = RpcStore(store).open_count(txn)
        live = store.live_bytes(txn)
        by_type = {k.entity_type: n for k in KINDS if (n := graph.count(txn, k.entity_type))}
        relations = graph.relation_count(txn)
        held_count = graph.held_count(txn)
        held = graph.held(txn)[:HELD_SHOWN] if held_count else []
        try:
            sync = graph.sync_state(txn)
        except StorageCorrupt as exc:  # the status still answers; the next connect repairs it
            sync = SyncState(damaged=f"sync state unreadable: {exc}")
    oldest_age_ms = None if oldest is None else max(0, now_ms - oldest.created_time)
    health = "healthy"
    if counts.pending > 5000 or (oldest_age_ms or 0) > 30_000:
        health = "warning"
    return {
        "link": link or {"state": "UNKNOWN", "note": "agent not running"},
        "health": health,
        "queue": {
            "pending_high": counts.pending_high,
            "pending_normal": counts.pending_normal,
            "pending": counts.pending,
            "deployed": counts.deployed,
            "dead": counts.dead,
            "total": counts.total,
            "next_seq": counts.next_seq,
            "evicted": counts.evicted,
            "oldest_pending_seq": None if oldest is None else oldest.seq,
            "oldest_pending_age_ms": oldest_age_ms,
        },
        "last_ack_ms": last_ack,
        "sync_latency_ms": oldest_age_ms or 0,
        "storage": {
            "path": str(store.path),
            "used_mb": round(live / MiB, 2),
            "file_mb": round(store.used_bytes() / MiB, 2),
            "map_mb": round(store.map_size() / MiB, 2),
            "cap_mb": round(store.max_size / MiB, 2),
        },
        "devices": devices,
        "rpc_open": rpc_open,
        "tenant_id": str(tenant),
        "edge_id": str(edge),
        "graph": {
            "entities": by_type,
            "relations": relations,
            "held": {"count": held_count, "first": [_held(h) for h in held]},
        },
        "sync": {
            "last_full_ms": sync.completed_ms,
            "last_full_version": sync.completed_version,
            "full_in_progress": sync.in_progress,
            "full_started_ms": sync.started_ms,
            "full_reason": sync.started_reason or None,
            "full_requested": sync.requested,
            "damaged": sync.damaged,
            "last": (link or {}).get("last_sync"),
        },
    }


def _held(h: HeldEntity) -> dict[str, Any]:
    return {"entity_type": h.entity_type, "id": None if h.id is None else str(h.id),
            "what": h.what, "waiting_for": [str(r) for r in h.waiting_for],
            "since_ms": h.since_ms}
