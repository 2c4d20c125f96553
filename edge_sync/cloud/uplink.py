"""Uplink rules of the reference cloud (docs/link-protocol.md), as pure logic: validating an
UplinkMsg into the events to apply, and the go-back-N gate of one stream."""

from __future__ import annotations

from edge_sync.cloud.uplink_payloads import AppliedEvent, uplink_events
from edge_sync.errors import PayloadRejected
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import Action

# ThingsBoard's EntityType names (4.x).
KNOWN_ENTITY_TYPES = frozenset({
    "TENANT", "CUSTOMER", "USER", "DASHBOARD", "ASSET", "DEVICE", "ALARM", "RULE_CHAIN",
    "RULE_NODE", "ENTITY_VIEW", "WIDGETS_BUNDLE", "WIDGET_TYPE", "TENANT_PROFILE",
    "DEVICE_PROFILE", "ASSET_PROFILE", "API_USAGE_STATE", "TB_RESOURCE", "OTA_PACKAGE", "EDGE",
    "RPC", "QUEUE", "NOTIFICATION_TARGET", "NOTIFICATION_TEMPLATE", "NOTIFICATION_REQUEST",
    "NOTIFICATION", "NOTIFICATION_RULE", "QUEUE_STATS", "OAUTH2_CLIENT", "DOMAIN", "MOBILE_APP",
    "MOBILE_APP_BUNDLE", "CALCULATED_FIELD", "CALCULATED_FIELD_LINK", "JOB", "ADMIN_SETTINGS",
    "AI_MODEL", "API_KEY",
})
_ENTITY_DATA_ACTIONS = frozenset({
    Action.TIMESERIES_UPDATED, Action.ATTRIBUTES_UPDATED, Action.ATTRIBUTES_DELETED,
    Action.TIMESERIES_DELETED})


def events_to_apply(uplink: edge_pb2.UplinkMsg) -> list[AppliedEvent]:
    """The message's events, validated, in the order to apply them: by edgeSeqId when every
    payload carries one (a ThingsBoard edge sends none: then in message order).

    Raises PayloadRejected naming the first invalid payload (and its edgeSeqId)."""
    events = uplink_events(uplink)
    for ev in events:
        if ev.seq is not None and ev.seq < 0:
            raise PayloadRejected(f"payload with edgeSeqId {ev.seq}: edgeSeqId is negative", ev.seq)
        if ev.action in _ENTITY_DATA_ACTIONS and ev.entity_type not in KNOWN_ENTITY_TYPES:
            where = f"payload with edgeSeqId {ev.seq}" if ev.seq is not None else "payload"
            raise PayloadRejected(f"{where}: unknown entityType {ev.entity_type!r}", ev.seq)
    if events and all(ev.seq is not None for ev in events):
        events.sort(key=lambda ev: ev.seq or 0)
    return events


class GoBackN:
    """The cloud's half of go-back-N, for one stream: after a failed uplink of epoch E (the
    failed epoch), every later uplink of an epoch <= E is refused (retryable) and nothing of it
    applied, until the edge resends under a higher epoch.

    The edge's half is edge_sync.link.uplink_window.UplinkWindow: on a failure it forgets what
    is in flight and resends everything unacknowledged, in seq order, under epoch + 1. So
    messages the edge sent before it learnt of the failure cannot be applied ahead of the
    resend, and the stream applies events in seq order.

    A message without uplinkEpoch (a ThingsBoard edge) is never refused and never fails an
    epoch: such a peer does not resend in epochs."""

    def __init__(self) -> None:
        self.failed_epoch: int | None = None

    def refuses(self, epoch: int | None) -> bool:
        """Is this uplink from before the edge's resend (epoch <= the failed epoch)?"""
        return epoch is not None and self.failed_epoch is not None and epoch <= self.failed_epoch

    def failed(self, epoch: int | None) -> None:
        """An uplink of this epoch failed: refuse the rest of the epoch (never lowered)."""
        if epoch is not None:
            self.failed_epoch = epoch if self.failed_epoch is None else max(self.failed_epoch, epoch)

    def refusal(self) -> str:
        """The errorMsg of a refusal (the edge resends under a higher epoch in any case)."""
        return f"refused: an earlier uplink of epoch {self.failed_epoch} failed (go-back-N)"


def epoch_of(uplink: edge_pb2.UplinkMsg) -> int | None:
    return uplink.uplinkEpoch if uplink.HasField("uplinkEpoch") else None
