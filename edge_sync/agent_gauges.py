"""The agent's gauges, read from their sources when /metrics is scraped: queue depth by lane,
events by status, the oldest pending event's age, storage used, its parts (storage/usage.py),
cap and map size, the local timeseries points kept, the cloud
link's state, circuit breaker state and clock skew (one sample per state, 1 for the current
one), open MQTT connections and kept sessions; and the supervisors' restart counter. EdgeApp
wires them (``register``); docs/metrics.md lists them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from edge_sync.link.breaker import BreakerState
from edge_sync.link.state import LinkState
from edge_sync.metrics import Metrics
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Counts
from edge_sync.storage.usage import storage_usage


def one_hot(current: str | None, states: list[str]) -> dict[tuple[str, ...], float]:
    """One sample per state, 1 for ``current`` and 0 for the others."""
    return {(s,): 1.0 if s == current else 0.0 for s in states}


def register(metrics: Metrics, store: LmdbStore, *, now_ms: Callable[[], int],
             link: Callable[[], Mapping[str, Any]] | None) -> None:
    """Queue, storage and (``link``: the link's status dict, None without a cloud link) link
    gauges."""
    log = EventLog(store)

    def counts() -> Counts:
        with store.read() as txn:
            return log.counts(txn)

    def oldest_age_s() -> float:
        with store.read() as txn:
            oldest = log.oldest_pending(txn)
        return 0.0 if oldest is None else max(0, now_ms() - oldest.created_time) / 1000

    def used_bytes() -> float:
        with store.read() as txn:
            return float(store.live_bytes(txn))

    def parts() -> dict[tuple[str, ...], float]:
        with store.read() as txn:
            usage = storage_usage(store, txn)
        return {(part,): float(n) for part, n in usage.parts().items()}

    def local_points() -> float:
        if "rule_local_ts" not in store.dbs:
            return 0.0
        with store.read() as txn:
            return float(store.entries(txn, "rule_local_ts"))

    def by_lane() -> dict[tuple[str, ...], float]:
        c = counts()
        return {("high",): c.pending_high, ("normal",): c.pending_normal}

    def by_status() -> dict[tuple[str, ...], float]:
        c = counts()
        return {("pending",): c.pending, ("deployed",): c.deployed, ("dead",): c.dead}

    m = metrics
    m.gauge_family("edge_sync_queue_depth", "pending events by lane", ("lane",), by_lane)
    m.gauge_family("edge_sync_queue_events", "events in the log by status", ("status",),
                   by_status)
    m.gauge("edge_sync_queue_oldest_pending_age_seconds",
            "age of the oldest pending event (0 when none is pending)", oldest_age_s)
    m.gauge("edge_sync_storage_used_bytes", "bytes of live data in the store", used_bytes)
    m.gauge_family("edge_sync_storage_part_bytes",
                   "live data by part: pending, delivered (kept for storage.retention_hours, "
                   "purged on demand when the store is full), local_timeseries, latest, other; "
                   "they add up to edge_sync_storage_used_bytes", ("part",), parts)
    m.gauge("edge_sync_rule_local_points", "local timeseries points kept by rule chains",
            local_points)
    m.gauge("edge_sync_storage_cap_bytes", "the store's size cap (storage.max_size_mb)",
            lambda: float(store.max_size))
    m.gauge("edge_sync_storage_map_bytes", "LMDB map size", lambda: float(store.map_size()))
    if link is None:
        return
    link_states = [s.value for s in LinkState]
    breaker_states = [s.value for s in BreakerState]
    m.gauge_family("edge_sync_link_state", "the cloud link's state: 1 for the current one",
                   ("state",), lambda: one_hot(link().get("state"), link_states))
    m.gauge_family("edge_sync_link_breaker_state",
                   "the link's circuit breaker state: 1 for the current one", ("state",),
                   lambda: one_hot(link().get("breaker"), breaker_states))

    def skew_s() -> float:
        skew = link().get("clock_skew_ms")
        if skew is None:
            raise LookupError("no clock skew measured yet")  # the gauge is absent
        return float(skew) / 1000

    m.gauge("edge_sync_clock_skew_seconds",
            "edge clock minus the cloud's, at the last connect or downlink", skew_s)


def mqtt(metrics: Metrics, figure: Callable[[Callable[[Any], int]], float]) -> None:
    """MQTT server gauges; ``figure`` reads one from the running server (0 while it is not)."""
    metrics.gauge("edge_sync_mqtt_connections", "open MQTT connections",
                  lambda: figure(lambda s: s.connections))
    metrics.gauge("edge_sync_mqtt_sessions_kept",
                  "MQTT sessions kept for disconnected clean-session-false clients",
                  lambda: figure(lambda s: len(s.registry.store)))


def restarts(metrics: Metrics) -> Callable[[str], None]:
    """The supervisors' ``on_restart``: counts ``edge_sync_supervisor_restarts_total{child}``."""
    counter = metrics.counter("edge_sync_supervisor_restarts_total",
                              "restarts of a supervised child, by child", ("child",))
    return lambda child: counter.labels(child=child).inc()
