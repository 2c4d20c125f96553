"""What a DownlinkMsg is to the edge before anything is applied: its key (what makes a
redelivery recognisable), and which of its payloads the edge applies and which it sets aside.

The key is the downlinkMsgId plus a hash of the serialized message without its send time
(cloudTimeMillis, stamped anew on every resend), so a peer that picks ids at random
(ThingsBoard) works: a redelivery hashes the same, two different downlinks do not.
"""

from __future__ import annotations

import hashlib
import struct

from google.protobuf import unknown_fields

from edge_sync.link.graph_apply import GRAPH_FIELDS
from edge_sync.proto import edge_pb2

# The DownlinkMsg fields the edge applies (see link/downlink_actor.py for the order), and those
# that are no payload at all. Every other field present is a kind set aside.
APPLIED_KINDS = frozenset({"entityData", "deviceRpcCallMsg", "syncCompletedMsg",
                           "edgeConfiguration"}) | GRAPH_FIELDS
_NOT_PAYLOADS = frozenset({"downlinkMsgId", "cloudTimeMillis"})


def set_aside_kinds(msg: edge_pb2.DownlinkMsg) -> dict[str, int]:
    """Kind -> count of the payloads in ``msg`` that the edge does not apply: the lists it does
    not handle, and fields of a newer peer that this edge's schema does not know ("field N").
    (entityData the edge does not apply is counted where it is applied, by its content.)"""
    out: dict[str, int] = {}
    for fd, value in msg.ListFields():
        if fd.name in APPLIED_KINDS or fd.name in _NOT_PAYLOADS:
            continue
        out[fd.name] = len(value) if fd.is_repeated else 1
    answers = sum(1 for call in msg.deviceRpcCallMsg if not call.HasField("requestMsg"))
    if answers:  # answers to device-originated (client-side) RPC: not served by this edge
        out["deviceRpcCallMsg.responseMsg"] = answers
    for unknown in unknown_fields.UnknownFieldSet(msg):
        kind = f"field {unknown.field_number}"
        out[kind] = out.get(kind, 0) + 1
    return out


def downlink_key(msg: edge_pb2.DownlinkMsg) -> bytes:
    """The key the downlink is recorded under once applied (see the module docstring)."""
    content = edge_pb2.DownlinkMsg()
    content.CopyFrom(msg)
    content.ClearField("cloudTimeMillis")
    digest = hashlib.blake2b(content.SerializeToString(deterministic=True), digest_size=16).digest()
    return struct.pack(">i", msg.downlinkMsgId) + digest
