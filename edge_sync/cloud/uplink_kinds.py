"""Which payload kinds of an UplinkMsg the reference cloud applies, answers or only
acknowledges. Pure logic over one message.

Applied (recorded in the apply log, see uplink_payloads.py): entityData (telemetry,
attributes, attribute and timeseries key deletes), deviceUpdateMsg, deviceCredentialsUpdateMsg,
alarmUpdateMsg, deviceRpcCallMsg, and the entity graph's (cloud/graph_store.py):
relationUpdateMsg (a relation added or deleted) and assetUpdateMsg (an asset created, changed or
deleted). Answered with downlinks (requests.py): attributesRequestMsg, relationRequestMsg,
ruleChainMetadataRequestMsg. Everything else a ThingsBoard Edge may send
(profiles, dashboards, rule chains, users, and the kinds this project's schema does not name,
which arrive as unknown fields) is acknowledged and not applied: `not_applied` lists them so
the caller counts them by kind.
"""

from __future__ import annotations

from collections import Counter

from google.protobuf.unknown_fields import UnknownFieldSet

from edge_sync.proto import edge_pb2

APPLIED = frozenset({
    "entityData", "deviceUpdateMsg", "deviceCredentialsUpdateMsg", "alarmUpdateMsg",
    "deviceRpcCallMsg", "relationUpdateMsg", "assetUpdateMsg",
})
ANSWERED = frozenset({"attributesRequestMsg", "relationRequestMsg", "ruleChainMetadataRequestMsg"})

# ThingsBoard 4.3's UplinkMsg fields that edge.proto does not declare (they parse as unknown
# fields): field number -> ThingsBoard's name.
UNDECLARED = {
    10: "userCredentialsRequestMsg", 11: "deviceCredentialsRequestMsg",
    14: "widgetBundleTypesRequestMsg", 15: "entityViewsRequestMsg", 18: "entityViewUpdateMsg",
    21: "resourceUpdateMsg", 22: "alarmCommentUpdateMsg", 25: "calculatedFieldUpdateMsg",
    26: "calculatedFieldRequestMsg", 27: "aiModelUpdateMsg", 29: "userCredentialsUpdateMsg",
    30: "apiKeyUpdateMsg",
}
_SCALARS = frozenset({"uplinkMsgId", "firstEdgeSeqId", "uplinkEpoch"})


def not_applied(uplink: edge_pb2.UplinkMsg) -> dict[str, int]:
    """{kind: number of payloads} of the kinds the cloud neither applies nor answers."""
    out: Counter[str] = Counter()
    for field, value in uplink.ListFields():
        if field.name in APPLIED or field.name in ANSWERED or field.name in _SCALARS:
            continue
        out[field.name] += len(value) if field.is_repeated else 1
    for unknown in UnknownFieldSet(uplink):
        out[UNDECLARED.get(unknown.field_number, f"field{unknown.field_number}")] += 1
    return dict(out)
