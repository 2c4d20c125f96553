"""The reference cloud's process-wide counters, shown at the admin API's GET /metrics: downlinks
refused, parked and superseded by a full sync, requests answered, server-side RPC requests and
their answers (unknown and late ones apart), entity changes applied from edges and the entity
graph's downlinks (by kind), and the uplink payloads it receives but does not apply, by kind
(``cloud_uplink_not_applied_total{kind="deviceProfileUpdateMsg"}``; each kind logged once at
INFO the first time it is seen, then only counted).

Every stream's thread writes them, so each plain counter's increment takes a lock
(edge_sync.metrics' counters expect one writer each; its counter families lock themselves).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping

from loguru import logger

from edge_sync.metrics import Counter, CounterFamily, Metrics

_log = logger.bind(component="cloud-link")

NOT_APPLIED = "cloud_uplink_not_applied_total"


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
        self.rpc_requests = m.counter(
            "cloud_rpc_requests_total", "server-side RPC requests accepted (REST or CLI)")
        self.rpc_answers = m.counter(
            "cloud_rpc_answers_total", "RPC answers from edges that settled their request")
        self.rpc_answers_unknown = m.counter(
            "cloud_rpc_answers_unknown_total",
            "RPC answers for no request of that edge and device (unknown requestUuid)")
        self.rpc_answers_late = m.counter(
            "cloud_rpc_answers_late_total",
            "RPC answers after their request's expirationTime, or after it was settled")
        self.rpc_expired = m.counter(
            "cloud_rpc_expired_total", "RPC requests that expired before they were sent (not sent)")
        self.not_applied_kinds = m.counter_family(
            NOT_APPLIED, "uplink payloads received, acknowledged and not applied, by kind", "kind")
        self.edge_changes = m.counter_family(
            "cloud_edge_entity_changes_applied_total",
            "entity changes made on edges applied to the entity graph (ASSET, RELATION), by kind",
            "kind")
        self.downlinks_superseded = m.counter(
            "cloud_downlinks_superseded_total",
            "queued graph downlinks dropped at the end of a full sync the edge-sync edge asked "
            "for (the sync sent what they carry)")
        self.graph_downlinks = m.counter_family(
            "cloud_graph_downlinks_queued_total",
            "downlinks the entity graph queued for edges (its changes, assignments), by DownlinkMsg "
            "field", "kind")

    def counted(self, family: CounterFamily, counts: Mapping[str, int]) -> None:
        """Add ``counts`` ({label: n}) to a family (it locks itself)."""
        for label, n in counts.items():
            if n:
                family.inc(label, n)

    def inc(self, counter: Counter, n: int = 1) -> None:
        with self._lock:
            counter.inc(n)

    def not_applied(self, kind: str, n: int, *, edge: str) -> None:
        """``n`` uplink payloads of ``kind`` (an UplinkMsg field name) were received and not
        applied: counted under that kind; logged the first time the kind comes."""
        if self.not_applied_kinds.inc(kind, n) == n:
            _log.bind(routing_key=edge, kind=kind).info(
                "uplink payloads of kind {} are acknowledged but not applied by this cloud "
                "(counted in {}{{kind=\"{}\"}}; logged once)", kind, NOT_APPLIED, kind)
