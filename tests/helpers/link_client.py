"""A bare edge for tests of the reference cloud (or any peer of docs/link-protocol.md): one
handleMsgs stream fed from a queue, responses read on a thread, and the protocol steps
(connect, sync, uplink, acknowledge downlinks) as blocking calls. Plus builders of uplink
payloads (telemetry, device created, credentials, the answer to a server-side RPC request).

    client = LinkClient(cloud.port)
    assert client.connect("rk-1", "secret", store_id="s-1").responseCode == edge_pb2.ACCEPTED
    client.sync(full=False)                      # acknowledges downlinks up to syncCompletedMsg
    assert client.uplink(entityData=[telemetry(device_id, 1)]).success
    client.close()
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc

from edge_sync.common.wire import to_kv, uuid_halves
from edge_sync.proto import edge_pb2, edge_pb2_grpc, transport_pb2

__all__ = ["DEADLINE_S", "LinkClient", "StreamEnded", "credentials", "device_added", "rpc_answer",
           "telemetry"]

DEADLINE_S = 5.0


class StreamEnded(Exception):
    def __init__(self, code: grpc.StatusCode | None) -> None:
        super().__init__(f"stream ended ({code})")
        self.code = code


class LinkClient:
    """A bare edge: one handleMsgs stream fed from a queue; responses read on a thread."""

    def __init__(self, port: int, *, gzip: bool = False, host: str = "127.0.0.1") -> None:
        self.channel = grpc.insecure_channel(f"{host}:{port}")
        self._out: queue.Queue[edge_pb2.RequestMsg | None] = queue.Queue()
        self._in: queue.Queue[edge_pb2.ResponseMsg | StreamEnded] = queue.Queue()
        stub = edge_pb2_grpc.EdgeRpcServiceStub(self.channel)
        self.call = stub.handleMsgs(self._requests(),
                                    compression=grpc.Compression.Gzip if gzip else None)
        self._next_uplink_id = 0
        threading.Thread(target=self._read, daemon=True).start()

    def _requests(self) -> Iterator[edge_pb2.RequestMsg]:
        while (msg := self._out.get()) is not None:
            yield msg

    def _read(self) -> None:
        try:
            for r in self.call:
                self._in.put(r)
            self._in.put(StreamEnded(grpc.StatusCode.OK))
        except grpc.RpcError as exc:
            self._in.put(StreamEnded(exc.code()))

    def send(self, msg: edge_pb2.RequestMsg) -> None:
        self._out.put(msg)

    def recv(self, timeout: float = DEADLINE_S) -> edge_pb2.ResponseMsg:
        item = self._in.get(timeout=timeout)
        if isinstance(item, StreamEnded):
            self._in.put(item)
            raise item
        return item

    def nothing_within(self, seconds: float) -> bool:
        try:
            item = self._in.get(timeout=seconds)
        except queue.Empty:
            return True
        self._in.put(item)
        return False

    def ended(self, timeout: float = DEADLINE_S) -> grpc.StatusCode | None:
        deadline = time.monotonic() + timeout
        while True:
            item = self._in.get(timeout=max(0.01, deadline - time.monotonic()))
            if isinstance(item, StreamEnded):
                return item.code

    # -- protocol steps --------------------------------------------------------------------------

    def connect(self, routing_key: str, secret: str, *,
                store_id: str | None = None) -> edge_pb2.ConnectResponseMsg:
        """``store_id``: the edgeStoreId extension (None: not sent, like a ThingsBoard edge)."""
        req = edge_pb2.ConnectRequestMsg(
            edgeRoutingKey=routing_key, edgeSecret=secret, edgeVersion=edge_pb2.V_4_3_0,
            maxInboundMessageSize=4 * 1024 * 1024, edgeTimeMillis=int(time.time() * 1000))
        if store_id is not None:
            req.edgeStoreId = store_id
        self.send(edge_pb2.RequestMsg(msgType=edge_pb2.CONNECT_RPC_MESSAGE, connectRequestMsg=req))
        return self.recv().connectResponseMsg

    def sync(self, full: bool) -> list[edge_pb2.DownlinkMsg]:
        """Request a sync; acknowledge every downlink up to syncCompletedMsg; return them."""
        self.send(edge_pb2.RequestMsg(msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
                                      syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=full)))
        got = []
        while True:
            d = self.downlink()
            got.append(d)
            self.ack(d.downlinkMsgId)
            if d.HasField("syncCompletedMsg"):
                return got

    def downlink(self, timeout: float = DEADLINE_S) -> edge_pb2.DownlinkMsg:
        r = self.recv(timeout)
        assert r.HasField("downlinkMsg"), r
        return r.downlinkMsg

    def ack(self, downlink_id: int, success: bool = True, error: str = "") -> None:
        self.send(edge_pb2.RequestMsg(
            msgType=edge_pb2.UPLINK_RPC_MESSAGE,
            downlinkResponseMsg=edge_pb2.DownlinkResponseMsg(
                success=success, errorMsg=error, downlinkMsgId=downlink_id)))

    def uplink(self, *, epoch: int | None = 0, **payloads: Any) -> edge_pb2.UplinkResponseMsg:
        """Send one UplinkMsg (``payloads``: its payload lists, e.g. entityData=[...]) and wait
        for its UplinkResponseMsg. ``epoch`` None: no uplinkEpoch (a ThingsBoard edge)."""
        self._next_uplink_id += 1
        msg = edge_pb2.UplinkMsg(uplinkMsgId=self._next_uplink_id, **payloads)
        if epoch is not None:
            msg.uplinkEpoch = epoch
        self.send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=msg))
        r = self.recv()
        assert r.HasField("uplinkResponseMsg"), r
        assert r.uplinkResponseMsg.uplinkMsgId == self._next_uplink_id
        return r.uplinkResponseMsg

    def close(self) -> None:
        self._out.put(None)
        self.channel.close()


# -- uplink payloads ---------------------------------------------------------------------------


def telemetry(device: uuid.UUID, seq: int | None, values: dict[str, Any] | None = None,
              ts: int = 1_700_000_000_000) -> edge_pb2.EntityDataProto:
    """DEVICE telemetry; ``values`` default {"t": seq}; ``seq`` None: no edgeSeqId."""
    msb, lsb = uuid_halves(device)
    kvs = [to_kv(k, v) for k, v in (values if values is not None else {"t": seq}).items()]
    d = edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
        postTelemetryMsg=transport_pb2.PostTelemetryMsg(
            tsKvList=[transport_pb2.TsKvListProto(ts=ts, kv=kvs)]))
    if seq is not None:
        d.edgeSeqId = seq
    return d


def device_added(device: uuid.UUID, name: str, seq: int, *, json_id: uuid.UUID | None = None
                 ) -> edge_pb2.DeviceUpdateMsg:
    """ENTITY_CREATED of a device; ``json_id``: a different id in the JSON (an invalid one)."""
    msb, lsb = uuid_halves(device)
    entity = json.dumps({"id": {"entityType": "DEVICE", "id": str(json_id or device)},
                         "name": name, "type": "default", "label": "", "createdTime": 5})
    return edge_pb2.DeviceUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb,
                                    idLSB=lsb, entity=entity, edgeSeqId=seq)


def credentials(device: uuid.UUID, token: str, seq: int) -> edge_pb2.DeviceCredentialsUpdateMsg:
    entity = json.dumps({"deviceId": {"entityType": "DEVICE", "id": str(device)},
                         "credentialsType": "ACCESS_TOKEN", "credentialsId": token})
    return edge_pb2.DeviceCredentialsUpdateMsg(entity=entity, edgeSeqId=seq)


def rpc_answer(request: edge_pb2.DeviceRpcCallMsg, seq: int | None, *, response: str = "",
               error: str = "") -> edge_pb2.DeviceRpcCallMsg:
    """The edge's answer to a server-side RPC request it received (a downlink's
    deviceRpcCallMsg): the device, requestUuid, requestId, oneway and expirationTime echoed,
    responseMsg{response | error}. ``seq`` None: no edgeSeqId (a ThingsBoard edge)."""
    msg = edge_pb2.DeviceRpcCallMsg(
        deviceIdMSB=request.deviceIdMSB, deviceIdLSB=request.deviceIdLSB,
        requestUuidMSB=request.requestUuidMSB, requestUuidLSB=request.requestUuidLSB,
        requestId=request.requestId, oneway=request.oneway,
        expirationTime=request.expirationTime,
        responseMsg=edge_pb2.RpcResponseMsg(response=response, error=error))
    if seq is not None:
        msg.edgeSeqId = seq
    return msg
