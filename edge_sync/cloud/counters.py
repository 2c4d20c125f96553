"""The reference cloud's metrics (prefix ``edge_cloud_``), shown at its admin API's GET
/metrics: uplink events applied and deduplicated, downlinks refused, parked and superseded by a
full sync, requests answered, server-side RPC requests and their answers (unknown and late ones
apart), entity changes applied from edges and the entity graph's downlinks (by kind), the
edges connected now, and the uplink payloads it receives but does not apply, by kind
(``edge_cloud_uplink_not_applied_total{kind="deviceProfileUpdateMsg"}``; each kind logged
once at INFO the first time it is seen, then only counted).

Every stream's thread writes them; prometheus-client's counters lock themselves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from loguru import logger

from edge_sync.metrics import Counter, Metrics

_log = logger.bind(component="cloud-link")

NOT_APPLIED = "edge_cloud_uplink_not_applied_total"


class CloudCounters:
    def __init__(self, metrics: Metrics | None = None) -> None:
        self.metrics = metrics if metrics is not None else Metrics("edge_cloud")
        self._lock = threading.Lock()
        self._kinds_seen: set[str] = set()
        m = self.metrics
        events = m.counter(
            "edge_cloud_uplink_events_total", "uplink events by outcome: applied, duplicate "
            "(already applied: skipped by seq, the dedup)", ("outcome",))
        self.events_applied = events.labels(outcome="applied")
        self.events_duplicate = events.labels(outcome="duplicate")
        downlinks = m.counter(
            "edge_cloud_downlinks_total", "downlinks by outcome: refused (the edge answered "
            "success=false), parked (refused max_attempts times, or too large), superseded "
            "(queued graph downlinks dropped at the end of a full sync the edge-sync edge asked "
            "for: the sync sent what they carry)", ("outcome",))
        self.downlinks_refused = downlinks.labels(outcome="refused")
        self.downlinks_parked = downlinks.labels(outcome="parked")
        self.downlinks_superseded = downlinks.labels(outcome="superseded")
        self.requests_answered = m.counter(
            "edge_cloud_uplink_requests_answered_total",
            "attribute, relation and rule chain metadata requests answered")
        self.request_downlinks = m.counter(
            "edge_cloud_request_downlinks_queued_total", "downlinks queued to answer requests")
        self.rpc_requests = m.counter(
            "edge_cloud_rpc_requests_total", "server-side RPC requests accepted (REST or CLI)")
        answers = m.counter(
            "edge_cloud_rpc_answers_total", "RPC answers from edges by outcome: settled (their "
            "request), unknown (no request of that edge and device has its requestUuid), late "
            "(after the request's expirationTime, or after it was settled)", ("outcome",))
        self.rpc_answers = answers.labels(outcome="settled")
        self.rpc_answers_unknown = answers.labels(outcome="unknown")
        self.rpc_answers_late = answers.labels(outcome="late")
        self.rpc_expired = m.counter(
            "edge_cloud_rpc_expired_total",
            "RPC requests that expired before they were sent (not sent)")
        self.not_applied_kinds = m.counter(
            NOT_APPLIED, "uplink payloads received, acknowledged and not applied, by kind",
            ("kind",))
        self.edge_changes = m.counter(
            "edge_cloud_edge_entity_changes_applied_total",
            "entity changes made on edges applied to the entity graph (ASSET, RELATION), by kind",
            ("kind",))
        self.graph_downlinks = m.counter(
            "edge_cloud_graph_downlinks_queued_total",
            "downlinks the entity graph queued for edges (its changes, assignments), by "
            "DownlinkMsg field", ("kind",))

    def edges_connected(self, read: Callable[[], int]) -> None:
        """The ``edge_cloud_edges_connected`` gauge: edges with an open stream now."""
        self.metrics.gauge("edge_cloud_edges_connected", "edges with an open stream now",
                           lambda: float(read()))

    def counted(self, family: Counter, counts: Mapping[str, int]) -> None:
        """Add ``counts`` ({kind: n}) to a counter labelled by ``kind``."""
        for label, n in counts.items():
            if n:
                family.labels(kind=label).inc(n)

    def inc(self, counter: Counter, n: int = 1) -> None:
        if n:
            counter.inc(n)

    def uplink_events(self, applied: int, duplicates: int) -> None:
        self.inc(self.events_applied, applied)
        self.inc(self.events_duplicate, duplicates)

    def not_applied(self, kind: str, n: int, *, edge: str) -> None:
        """``n`` uplink payloads of ``kind`` (an UplinkMsg field name) were received and not
        applied: counted under that kind; logged the first time the kind comes."""
        self.not_applied_kinds.labels(kind=kind).inc(n)
        with self._lock:
            first = kind not in self._kinds_seen
            self._kinds_seen.add(kind)
        if first:
            _log.bind(routing_key=edge, kind=kind).info(
                "uplink payloads of kind {} are acknowledged but not applied by this cloud "
                "(counted in {}{{kind=\"{}\"}}; logged once)", kind, NOT_APPLIED, kind)
