"""The reference cloud's process-wide counters, shown at the admin API's GET /metrics: downlinks
refused and parked, requests answered, and the uplink payloads it receives but does not apply,
by kind (each kind logged once at INFO the first time it is seen, then only counted).

Every stream's thread writes them, so each increment takes a lock (edge_sync.metrics' counters
expect one writer each).
"""

from __future__ import annotations

import re
import threading

from loguru import logger

from edge_sync.metrics import Counter, Metrics

_log = logger.bind(component="cloud-link")


def snake(name: str) -> str:
    """``attributesRequestMsg`` -> ``attributes_request_msg`` (for a metric name)."""
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


class CloudCounters:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self._lock = threading.Lock()
        m = self.metrics
        self.downlinks_refused = m.counter(
            "cloud_downlinks_refused_total", "downlinks the edge answered with success=false")
        self.downlinks_parked = m.counter(
            "cloud_downlinks_parked_total", "downlinks parked (refused max_attempts times, or too large)")
        self.requests_answered = m.counter(
            "cloud_uplink_requests_answered_total",
            "attribute, relation and rule chain metadata requests answered")
        self.request_downlinks = m.counter(
            "cloud_request_downlinks_queued_total", "downlinks queued to answer requests")
        self._seen: set[str] = set()

    def inc(self, counter: Counter, n: int = 1) -> None:
        with self._lock:
            counter.inc(n)

    def not_applied(self, kind: str, n: int, *, edge: str) -> None:
        """``n`` uplink payloads of ``kind`` (an UplinkMsg field name) were received and not
        applied: counted in cloud_uplink_not_applied_<kind>_total; logged the first time."""
        name = f"cloud_uplink_not_applied_{snake(kind)}_total"
        with self._lock:
            counter = self.metrics.counter(name, f"uplink {kind} payloads received, not applied")
            counter.inc(n)
            first = kind not in self._seen
            self._seen.add(kind)
        if first:
            _log.bind(routing_key=edge, kind=kind).info(
                "uplink payloads of kind {} are acknowledged but not applied by this cloud "
                "(counted in {}; logged once)", kind, name)
