"""Downlinks queued one after another for an edge travel together: one DownlinkMsg carrying
their entries, in queue order (the DownlinkMsg's lists are repeated; ThingsBoard Edge and our
edge apply every entry of them, in one transaction on our edge). The stream keeps one downlink
in flight per edge, so without this an edge could take at most one downlink per round trip: a
shared attribute set on a thousand devices would be a thousand round trips.

Two kinds travel together, each only with its own kind (an edge applies a message's entityData
before its deviceRpcCallMsg whatever the order of the lists, so mixing them could reorder
them):

- server-side RPC requests (deviceRpcCallMsg with a requestMsg), not expired;
- attribute updates (a DownlinkMsg holding only entityData: shared attributes set by the
  operator, answers to attribute requests); several for one device are applied in order, so
  the last value wins as it would one by one.

Pure logic: which queued downlinks after the head go with it, and the combined message. A
batch the edge refuses is split (the stream then sends its parts one by one), so one bad
downlink never fails the others.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable

from edge_sync.cloud.records import QueuedDownlink
from edge_sync.proto import edge_pb2

MAX_BATCH = 100
"""Downlinks in one DownlinkMsg at most."""

_FRAMING = 64  # the id, the cloud's time and the list's framing


class Kind(enum.Enum):
    RPC = "deviceRpcCallMsg"
    ATTRIBUTES = "entityData"


def kind_of(item: QueuedDownlink) -> tuple[Kind, int] | None:
    """(kind, expirationTime) of a queued downlink that may travel with others of its kind (an
    attribute update never expires: 2**63 - 1), else None (a sync's downlinks never do)."""
    if not item.durable:
        return None
    msg = edge_pb2.DownlinkMsg.FromString(item.payload)
    fields = [fd.name for fd, _ in msg.ListFields()]
    if fields == ["deviceRpcCallMsg"]:
        for call in msg.deviceRpcCallMsg:
            if call.HasField("requestMsg") and (call.requestUuidMSB or call.requestUuidLSB):
                return Kind.RPC, call.expirationTime
        return None
    if fields == ["entityData"]:
        return Kind.ATTRIBUTES, 2**63 - 1
    return None


def batch_of(head: QueuedDownlink, following: Iterable[QueuedDownlink], *, now_ms: int,
             max_bytes: int, max_count: int = MAX_BATCH) -> list[QueuedDownlink]:
    """``head`` and the downlinks of its kind that directly follow it in the queue and can go
    with it: not expired, and the combined message within ``max_bytes``. [head] when the head
    is of no kind that travels together."""
    head_kind = kind_of(head)
    if head_kind is None:
        return [head]
    out = [head]
    size = len(head.payload) + _FRAMING
    for item in following:
        if len(out) >= max_count:
            break
        kind = kind_of(item)
        if kind is None or kind[0] is not head_kind[0] or kind[1] < now_ms:
            break
        size += len(item.payload)
        if size > max_bytes:
            break
        out.append(item)
    return out


def combined(items: list[QueuedDownlink]) -> QueuedDownlink:
    """One queued downlink carrying the entries of ``items``: numbered as the first (its place
    in the queue), sent under the last one's downlinkMsgId. A batch is always the head of the
    queue and what follows it, so one formed again later (after a reconnect, with more queued
    behind) ends further on and gets another id: a downlinkMsgId never names two contents."""
    if len(items) == 1:
        return items[0]
    msg = edge_pb2.DownlinkMsg()
    for item in items:
        part = edge_pb2.DownlinkMsg.FromString(item.payload)
        msg.deviceRpcCallMsg.extend(part.deviceRpcCallMsg)
        msg.entityData.extend(part.entityData)
    return QueuedDownlink(items[0].number, items[-1].msg_id, msg.SerializeToString(),
                          durable=True)

