"""Server-side RPC requests queued one after another for an edge travel together: one
DownlinkMsg carrying their deviceRpcCallMsg entries, in queue order (the DownlinkMsg's list is
repeated; ThingsBoard Edge and our edge apply every entry of it). The stream keeps one downlink
in flight per edge, so without this an edge could take at most one request per round trip.

Pure logic: which queued downlinks after the head go with it, and the combined message. A
batch the edge refuses is split (the stream then sends its requests one by one), so one bad
request never fails the others.
"""

from __future__ import annotations

from collections.abc import Iterable

from edge_sync.cloud import downlinks
from edge_sync.cloud.records import QueuedDownlink
from edge_sync.proto import edge_pb2

MAX_BATCH = 100
"""Requests in one DownlinkMsg at most."""


def batch_of(head: QueuedDownlink, following: Iterable[QueuedDownlink], *, now_ms: int,
             max_bytes: int, max_count: int = MAX_BATCH) -> list[QueuedDownlink]:
    """``head`` and the RPC requests that directly follow it in the queue and can go with it:
    not expired, and the combined message within ``max_bytes``. [head] when the head is not an
    RPC request."""
    if not head.durable or downlinks.rpc_request_of(head.payload) is None:
        return [head]
    out = [head]
    size = len(head.payload) + 64  # the id, the cloud's time and the list's framing
    for item in following:
        request = downlinks.rpc_request_of(item.payload) if item.durable else None
        if request is None or request[1] < now_ms or len(out) >= max_count:
            break
        size += len(item.payload)
        if size > max_bytes:
            break
        out.append(item)
    return out


def combined(items: list[QueuedDownlink]) -> QueuedDownlink:
    """One queued downlink carrying the requests of ``items`` (numbered as the first)."""
    if len(items) == 1:
        return items[0]
    msg = edge_pb2.DownlinkMsg()
    for item in items:
        msg.deviceRpcCallMsg.extend(edge_pb2.DownlinkMsg.FromString(item.payload).deviceRpcCallMsg)
    head = items[0]
    return QueuedDownlink(head.number, head.msg_id, msg.SerializeToString(), durable=True)
