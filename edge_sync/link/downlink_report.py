"""What one downlink's transaction did (DownlinkOutcome), and its report once the transaction
commits: the DownlinkActor's counters (``edge_sync_downlinks_*``, ``edge_sync_graph_*``,
``edge_sync_rpc_requests_total``) and its log lines, one per event that matters (a downlink
applied, redelivered or refused, a kind set aside the first time, an entity held, released or removed
by a full sync's end, a device renamed because its name is another device's, a device's access
token removed because the cloud gave it credentials of another type, credentials refused
alone, a downlink left unanswered so that ThingsBoard sends it again, a full sync completed).
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from edge_sync.devices.rpc import RpcRequest
from edge_sync.link.graph_apply import GraphOutcome
from edge_sync.metrics import Metrics
from edge_sync.storage.graph_store import Removal

_log = logger.bind(component="downlink")


@dataclass(slots=True)
class DownlinkOutcome:
    """What one downlink's transaction did."""

    fresh: bool
    what: str = ""
    set_aside: dict[str, int] = field(default_factory=dict)
    device_profiles: dict[str, uuid.UUID] | None = None
    warnings: list[str] = field(default_factory=list)  # logged once the transaction commits
    graph: GraphOutcome = field(default_factory=GraphOutcome)
    removed: list[Removal] = field(default_factory=list)  # by the full sync's end
    full_sync_completed: bool = False
    # told to the entity actors once the transaction commits
    rpc_queued: dict[uuid.UUID, list[RpcRequest]] = field(default_factory=dict)
    shared_changed: dict[uuid.UUID, tuple[dict[str, Any], list[str]]] = field(default_factory=dict)


class DownlinkReport:
    """The DownlinkActor's metrics and log lines (its thread only). ``held_now`` reads the
    held entities for the ``edge_sync_graph_held_entities`` gauge; ``version`` is the edge version a full
    sync's end records."""

    def __init__(self, metrics: Metrics, *, held_now: Callable[[], float], version: str) -> None:
        self._version = version
        self._metrics = metrics
        downlinks = metrics.counter(
            "edge_sync_downlinks_total", "downlinks by outcome: applied, duplicate (redelivered, "
            "only acknowledged), failed", ("outcome",))
        self._applied = downlinks.labels(outcome="applied")
        self._duplicates = downlinks.labels(outcome="duplicate")
        self._failed = downlinks.labels(outcome="failed")
        self._rpc_requests = metrics.counter(
            "edge_sync_rpc_requests_total", "server-side RPC requests by the status they reached",
            ("status",)).labels(status="QUEUED")
        self._set_aside = metrics.counter(
            "edge_sync_downlinks_set_aside_total",
            "downlink payloads of a kind the edge does not apply, acknowledged and counted",
            ("kind",))
        self._m_graph = metrics.counter(
            "edge_sync_graph_entities_applied_total",
            "entities and relations of the entity graph applied, by kind (entity type) and "
            "action (ADDED, UPDATED, DELETED; deletes include cascades)", ("kind", "action"))
        self._m_held = metrics.counter(
            "edge_sync_graph_held_total", "entities held until their references are on the edge")
        self._m_released = metrics.counter(
            "edge_sync_graph_released_total", "held entities applied once their references came")
        self._m_renamed = metrics.counter(
            "edge_sync_graph_devices_renamed_total",
            "devices applied under a unique name because another device has their name on the "
            "edge (as ThingsBoard Edge renames them)")
        self._m_removed = metrics.counter(
            "edge_sync_graph_removed_after_full_sync_total",
            "entities, relations and held entities removed at the end of a full sync (no "
            "longer assigned to this edge)")
        metrics.gauge("edge_sync_graph_held_entities",
                      "entities held now, waiting for their references", held_now)

    def failed(self, dl_id: int, reason: str, retryable: bool) -> None:
        self._failed.inc()
        _log.bind(downlink_id=dl_id, error=reason, retryable=retryable).error(
            "downlink {} not applied: {}", dl_id, reason)

    def unanswered(self, dl_id: int, reason: str, full_sync: str) -> None:
        """A store failure against a peer that ignores ``retryable`` (ThingsBoard): no answer,
        so the peer sends the downlink again after its timeout."""
        self._failed.inc()
        _log.bind(downlink_id=dl_id, error=reason).error(
            "downlink {} not applied: {}; not answered, so the cloud sends it again after its "
            "timeout (ThingsBoard drops a downlink answered success=false); {}", dl_id, reason,
            full_sync)

    def duplicate(self, dl_id: int) -> None:
        self._duplicates.inc()
        _log.bind(downlink_id=dl_id).info("downlink {} redelivered: acknowledged only", dl_id)

    def rpc_queued(self, n: int) -> None:
        self._rpc_requests.inc(n)

    def applied(self, dl_id: int, out: DownlinkOutcome) -> None:
        """A fresh downlink committed: counted, with what it set aside and did to the graph,
        its warnings and one line saying what it did. One committed without some of its
        payloads (GraphOutcome.refused) is counted as failed, since its answer is
        success=false, and its line says what was refused."""
        refused = out.graph.refused
        (self._failed if refused else self._applied).inc()
        self._count_set_aside(dl_id, out.set_aside)
        self.graph(dl_id, out)
        for warning in out.warnings + out.graph.warnings:
            _log.bind(downlink_id=dl_id).warning("downlink {}: {}", dl_id, warning)
        if refused:
            reason = "; ".join(refused)
            _log.bind(downlink_id=dl_id, error=reason, applied=out.what).error(
                "downlink {} applied in part, answered success=false: {}", dl_id, reason)
            return
        _log.bind(downlink_id=dl_id, applied=out.what).info("downlink {} applied: {}", dl_id,
                                                            out.what)

    def graph(self, dl_id: int, out: DownlinkOutcome) -> None:
        """What the entity graph did: applied, held, released, removed by a full sync's end."""
        g = out.graph
        for (entity_type, action), n in collections.Counter(g.applied).items():
            self._m_graph.labels(kind=entity_type, action=action).inc(n)
        for what in g.held:
            self._m_held.inc()
            _log.bind(downlink_id=dl_id, held=what).info("held until its references come: {}",
                                                         what)
        for rn in g.renamed:
            self._m_renamed.inc()
            _log.bind(downlink_id=dl_id, entity_type="DEVICE", entity_id=str(rn.device_id),
                      holder_id=str(rn.holder_id), name=rn.name,
                      cloud_name=rn.cloud_name).warning(
                "device {} applied as {!r}: device {} has its name {!r} on the edge",
                rn.device_id, rn.name, rn.holder_id, rn.cloud_name)
        for rv in g.revoked:  # never the token
            _log.bind(downlink_id=dl_id, entity_type="DEVICE", entity_id=str(rv.device_id),
                      credentials_type=rv.credentials_type).warning(
                "device {}: access token removed, the cloud gave it {} credentials: the edge "
                "refuses the token from now on (HTTP 401, MQTT CONNACK 5)", rv.device_id,
                rv.credentials_type)
        for what in g.released:
            self._m_released.inc()
            _log.bind(downlink_id=dl_id, released=what).info(
                "applied once its references came: {}", what)
        for r in out.removed:
            self._m_removed.inc()
            if r.entity_type != "RELATION" and not r.what.startswith("held "):
                self._m_graph.labels(kind=r.entity_type, action="DELETED").inc()
            _log.bind(entity_type=r.entity_type, entity_id=r.id, action="DELETED").info(
                "removed after full sync: no longer assigned to this edge: {}", r.what)
        if out.full_sync_completed:
            _log.bind(removed=len(out.removed), version=self._version).info(
                "full sync completed: {} removed (no longer assigned to this edge); edge version "
                "{} recorded", len(out.removed), self._version)

    def _count_set_aside(self, dl_id: int, set_aside: dict[str, int]) -> None:
        """Count the kinds set aside; the first of a kind in this process is logged."""
        for kind, n in set_aside.items():
            first = self._metrics.value("edge_sync_downlinks_set_aside_total", kind=kind) == 0
            self._set_aside.labels(kind=kind).inc(n)
            if first:
                _log.bind(downlink_id=dl_id, kind=kind).info(
                    "cloud sent {}; set aside on this edge (acknowledged and counted; further "
                    "ones are only counted)", kind)
