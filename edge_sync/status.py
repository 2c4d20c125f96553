"""The agent's status as one JSON-able dict: queue depth per lane and status, oldest pending
event's age, last acknowledgement, dead letters, storage use and its parts (storage/usage.py),
the server-side RPC requests still open (queued or delivered, not finished), the cloud link's
state, and the entity graph:
how many entities of each type and relations the edge holds, what is held back and for what
(the first HELD_SHOWN), and the sync (the last full sync, one in progress or asked for, and the
last sync the link reports: full or incremental, when, why full).

The health (``health``: healthy, degraded or warning, the worst of queue depth, sync latency,
the link and, with the agent running, the rule chain; ``health_detail``: every indicator with
its value, level and thresholds) is judged against the ``health`` section of the
configuration (docs/configuration.md). Warning is the worst level: the link is degraded while
it reconnects and a warning once it has been down longer than ``health.link_down_warning_s``,
or when the cloud refused its credentials.

Read-only: one LMDB read transaction. Used by the admin API and, with the agent stopped, by
``edge-sync status``.
"""

from __future__ import annotations

from typing import Any

from edge_sync.common.entity_graph import KINDS
from edge_sync.config import HealthConfig
from edge_sync.errors import StorageCorrupt
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore, MiB
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.graph_store import GraphStore, HeldEntity, SyncState
from edge_sync.storage.link_contact import LinkContact
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.storage.usage import storage_usage

HELD_SHOWN = 20
"""Held entities listed by name in the status (all are counted)."""


HEALTHY, DEGRADED, WARNING = "healthy", "degraded", "warning"
_RANK = {HEALTHY: 0, DEGRADED: 1, WARNING: 2}


def level(value: float, healthy: float, warning: float) -> str:
    """healthy under ``healthy``, warning over ``warning``, degraded in between."""
    if value > warning:
        return WARNING
    return HEALTHY if value < healthy else DEGRADED


def link_level(link: dict[str, Any], down_warning_s: float) -> str | None:
    """The link's level: healthy when connected; degraded while it reconnects (connecting,
    syncing, backing off) or has not connected yet since the start; a warning once it has
    been down more than ``down_warning_s`` (``down_for_s``: since it was lost, or since the
    start when it never connected), and when the cloud refused the credentials (AUTH_FAILED:
    no retry will mend that). None when there is no link to judge (not configured, or the
    agent is not running)."""
    state = str(link.get("state", "UNKNOWN"))
    if state == "CONNECTED":
        return HEALTHY
    if state == "AUTH_FAILED":
        return WARNING
    if state == "UNKNOWN" or link.get("note"):
        return None
    down_for = link.get("down_for_s")
    if isinstance(down_for, int | float) and down_for > down_warning_s:
        return WARNING
    return DEGRADED


def judge_health(
    cfg: HealthConfig, *, pending: int, oldest_age_ms: int | None, dead: int,
    link: dict[str, Any], live_mb: float, cap_mb: float, clock_skew_warn_s: float,
    rules: dict[str, Any] | None = None, reclaimable_mb: float = 0.0,
) -> dict[str, Any]:
    """Every health indicator (value, level, thresholds) and ``overall``: the worst of queue
    depth, sync latency, the link and the rule chain (``rules``: the running agent's
    rules/source.py ``ChainSource.status``; degraded while a chain refusal leaves an older
    chain or none in force, while rules.file on disk is not the chain in force, or while a
    script is blocked; None:
    not judged, e.g. the agent is not running). Sync latency is accept-to-acknowledge as the link last
    measured it (``link.sync_latency_ms``); the oldest pending event's age, a lower bound of
    its own latency, counts when it is larger (or when the link has measured nothing).
    Storage is judged on what cannot be reclaimed on demand (``value_pct``): the live data
    (``used_pct``) minus ``reclaimable_mb``, the delivered events kept, which a full store
    purges before it drops, refuses or evicts anything (storage/usage.py)."""
    measured = link.get("sync_latency_ms")
    latency_ms = max(measured or 0, oldest_age_ms or 0)
    state = str(link.get("state", "UNKNOWN"))
    link_lv = link_level(link, cfg.link_down_warning_s)
    skew = link.get("clock_skew_ms")
    used_pct = 100.0 * live_mb / cap_mb if cap_mb else 0.0
    reclaimable_pct = 100.0 * reclaimable_mb / cap_mb if cap_mb else 0.0
    held_pct = max(0.0, used_pct - reclaimable_pct)
    out: dict[str, Any] = {
        "queue_depth": {"value": pending, "level": level(pending, cfg.queue_depth_healthy,
                                                         cfg.queue_depth_warning),
                        "healthy_under": cfg.queue_depth_healthy,
                        "warning_over": cfg.queue_depth_warning},
        "sync_latency": {"value_ms": latency_ms, "measured_ms": measured,
                         "oldest_pending_age_ms": oldest_age_ms,
                         "level": level(latency_ms / 1000, cfg.sync_latency_healthy_s,
                                        cfg.sync_latency_warning_s),
                         "healthy_under_s": cfg.sync_latency_healthy_s,
                         "warning_over_s": cfg.sync_latency_warning_s},
        "link": {"state": state, "level": link_lv,
                 "connected": state == "CONNECTED",
                 "breaker": link.get("breaker"),
                 "next_attempt_in_s": link.get("next_attempt_in_s"),
                 "down_for_s": link.get("down_for_s"),
                 "warning_over_s": cfg.link_down_warning_s},
        "clock_skew": {"value_ms": skew,
                       "level": None if skew is None else (
                           WARNING if abs(skew) > clock_skew_warn_s * 1000 else HEALTHY),
                       "warning_over_s": clock_skew_warn_s},
        "dead_letters": {"value": dead, "level": HEALTHY if dead == 0 else DEGRADED},
        "storage": {"value_pct": round(held_pct, 1),
                    "used_pct": round(used_pct, 1),
                    "reclaimable_pct": round(reclaimable_pct, 1),
                    "level": level(held_pct, cfg.storage_used_healthy_pct,
                                   cfg.storage_used_warning_pct),
                    "healthy_under_pct": cfg.storage_used_healthy_pct,
                    "warning_over_pct": cfg.storage_used_warning_pct},
    }
    rules_health = (rules or {}).get("health")
    if not isinstance(rules_health, dict):
        rules_health = {}
    rules_lv = rules_health.get("level")
    out["rules"] = {"level": rules_lv, "reasons": list(rules_health.get("reasons", []))}
    judged = [out["queue_depth"]["level"], out["sync_latency"]["level"], link_lv, rules_lv]
    out["overall"] = max((lv for lv in judged if lv is not None), key=_RANK.__getitem__)
    return out


def collect_status(
    store: LmdbStore, *, now_ms: int, link: dict[str, Any] | None = None,
    health: HealthConfig | None = None, clock_skew_warn_s: float = 60.0,
    rules: dict[str, Any] | None = None,
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
        usage = storage_usage(store, txn)
        by_type = {k.entity_type: n for k in KINDS if (n := graph.count(txn, k.entity_type))}
        relations = graph.relation_count(txn)
        held_count = graph.held_count(txn)
        held = graph.held(txn)[:HELD_SHOWN] if held_count else []
        try:
            sync = graph.sync_state(txn)
        except StorageCorrupt as exc:  # the status still answers; the next connect repairs it
            sync = SyncState(damaged=f"sync state unreadable: {exc}")
        try:
            last_contact: int | None = LinkContact(store).last_ms(txn)
        except StorageCorrupt:  # the next connect asks for a full sync, which rewrites it
            last_contact = None
    oldest_age_ms = None if oldest is None else max(0, now_ms - oldest.created_time)
    link = link or {"state": "UNKNOWN", "note": "agent not running"}
    detail = judge_health(health or HealthConfig(), pending=counts.pending,
                          oldest_age_ms=oldest_age_ms, dead=counts.dead, link=link,
                          live_mb=usage.used / MiB, cap_mb=store.max_size / MiB,
                          clock_skew_warn_s=clock_skew_warn_s, rules=rules,
                          reclaimable_mb=usage.reclaimable / MiB)
    return {
        "link": link,
        "health": detail["overall"],
        "health_detail": detail,
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
        # NOT the link's measured latency (link.sync_latency_ms) nor the health's
        # (health_detail.sync_latency.value_ms): the oldest pending event's age, 0 when none is
        # pending; kept under this name for those who read it (docs/metrics.md)
        "sync_latency_ms": oldest_age_ms or 0,
        "storage": {
            "path": str(store.path),
            "used_mb": round(usage.used / MiB, 2),
            "used_bytes": usage.used,
            # what the live data is made of (storage/usage.py; pending and delivered are
            # estimated from the event counts), and what a full store frees on demand
            "parts_bytes": usage.parts(),
            "reclaimable_mb": round(usage.reclaimable / MiB, 2),
            "unreclaimable_mb": round(usage.unreclaimable / MiB, 2),
            "local_points": usage.local_points,
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
            "last_contact_ms": last_contact,
            "last": (link or {}).get("last_sync"),
        },
    }


def _held(h: HeldEntity) -> dict[str, Any]:
    return {"entity_type": h.entity_type, "id": None if h.id is None else str(h.id),
            "what": h.what, "waiting_for": [str(r) for r in h.waiting_for],
            "since_ms": h.since_ms}
