"""The reference cloud spoken to byte by byte: a raw client that knows only the field numbers of
ThingsBoard's edge.proto (no generated module of the project), a tiny protobuf wire codec written here,
and grpc's generic stream API on `/edge.EdgeRpcService/handleMsgs`.

If the project's .proto drifted from protocol.md (a renumbered field, a wrong type), the
project's own client and cloud would still agree with each other; this test would not.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from edge_sync.cloud import CloudServer
from edge_sync.config import load_cloud_config
from tests.helpers.wait import wait_until

METHOD = "/edge.EdgeRpcService/handleMsgs"
DEADLINE_S = 5.0

# -- a minimal protobuf wire codec ---------------------------------------------------------------

VARINT, I64, LEN, I32 = 0, 1, 2, 5
_U64 = 1 << 64


def varint(value: int) -> bytes:
    """Base-128 varint; a negative int is sent as its 64-bit two's complement (10 bytes)."""
    if value < 0:
        value += _U64
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def tag(field: int, wire_type: int) -> bytes:
    return varint((field << 3) | wire_type)


def f_varint(field: int, value: int) -> bytes:
    return tag(field, VARINT) + varint(value)


def f_bool(field: int, value: bool) -> bytes:
    return f_varint(field, 1 if value else 0)


def f_bytes(field: int, value: bytes) -> bytes:
    return tag(field, LEN) + varint(len(value)) + value


def f_str(field: int, value: str) -> bytes:
    return f_bytes(field, value.encode())


def f_msg(field: int, *parts: bytes) -> bytes:
    return f_bytes(field, b"".join(parts))


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("truncated varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if not b & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def decode(buf: bytes) -> dict[int, list[int | bytes]]:
    """field number -> its values in order: ints for varints, bytes for everything else."""
    out: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire_type = key >> 3, key & 7
        value: int | bytes
        if wire_type == VARINT:
            value, pos = _read_varint(buf, pos)
        elif wire_type == LEN:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
            if len(value) != n:
                raise ValueError("truncated length-delimited field")
        elif wire_type == I64:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire_type == I32:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported wire type {wire_type}")
        if field == 0:
            raise ValueError("field number 0")
        out.setdefault(field, []).append(value)
    return out


def one(fields: dict[int, list[int | bytes]], field: int, default: int | bytes | None = None
        ) -> int | bytes | None:
    """The last value of a singular field (protobuf's rule), or default when absent."""
    values = fields.get(field)
    return values[-1] if values else default


def sub(fields: dict[int, list[int | bytes]], field: int) -> dict[int, list[int | bytes]] | None:
    raw = one(fields, field)
    if raw is None:
        return None
    assert isinstance(raw, bytes), f"field {field} is not length-delimited"
    return decode(raw)


def int64(value: int | bytes | None) -> int:
    """A decoded varint as a signed int64 (proto3 default 0 when absent)."""
    if value is None:
        return 0
    assert isinstance(value, int)
    return value - _U64 if value >= 1 << 63 else value


def int32(value: int | bytes | None) -> int:
    v = int64(value)
    return v - (1 << 32) if v >= 1 << 31 else v  # proto sign-extends int32 to 64 bits on the wire


def halves(value: uuid.UUID) -> tuple[int, int]:
    """protocol.md: MSB = first 8 bytes as a signed big-endian integer, LSB the last 8."""
    b = value.bytes
    return int.from_bytes(b[:8], "big", signed=True), int.from_bytes(b[8:], "big", signed=True)


def test_codec_round_trips_negative_int64_and_nested_messages() -> None:
    assert varint(-1) == b"\xff" * 9 + b"\x01"
    assert varint(300) == b"\xac\x02"
    raw = f_varint(1, -5) + f_msg(2, f_str(1, "k"), f_varint(4, 2**62)) + f_bool(3, True)
    fields = decode(raw)
    assert int64(one(fields, 1)) == -5
    assert sub(fields, 2) == {1: [b"k"], 4: [2**62]}
    assert one(fields, 3) == 1
    msb, lsb = halves(uuid.UUID("ffffffff-ffff-fffe-8000-000000000001"))
    assert (msb, lsb) == (-2, -(2**63) + 1)


# -- the messages of protocol.md, built by hand --------------------------------------------------

CONNECT_RPC_MESSAGE, UPLINK_RPC_MESSAGE, SYNC_REQUEST_RPC_MESSAGE = 0, 1, 2
ACCEPTED, BAD_CREDENTIALS = 0, 1
V_4_3_0 = 13
LONG_V = 1


def connect_request(routing_key: str, secret: str, *, version: int = V_4_3_0,
                    max_inbound: int = 4 * 1024 * 1024) -> bytes:
    # RequestMsg{msgType=1, connectRequestMsg=2{edgeRoutingKey=1, edgeSecret=2, edgeVersion=3,
    # maxInboundMessageSize=4}}
    return f_varint(1, CONNECT_RPC_MESSAGE) + f_msg(
        2, f_str(1, routing_key), f_str(2, secret), f_varint(3, version), f_varint(4, max_inbound))


def sync_request(full: bool) -> bytes:
    # RequestMsg{msgType=1, syncRequestMsg=5{fullSync=2}}; false is still sent: it is `optional`
    return f_varint(1, SYNC_REQUEST_RPC_MESSAGE) + f_msg(5, f_bool(2, full))


def downlink_response(downlink_id: int) -> bytes:
    # RequestMsg{msgType=1, downlinkResponseMsg=4{success=1, downlinkMsgId=3}}
    return f_varint(1, UPLINK_RPC_MESSAGE) + f_msg(4, f_bool(1, True), f_varint(3, downlink_id))


def telemetry_uplink(uplink_id: int, device: uuid.UUID, ts: int, key: str, value: int) -> bytes:
    msb, lsb = halves(device)
    kv = f_str(1, key) + f_varint(2, LONG_V) + f_varint(4, value)  # KeyValueProto
    ts_kv = f_varint(1, ts) + f_msg(2, kv)  # TsKvListProto
    entity = (f_varint(1, msb) + f_varint(2, lsb) + f_str(3, "DEVICE")
              + f_msg(4, f_msg(1, ts_kv)))  # EntityDataProto{..., postTelemetryMsg{tsKvList}}
    # RequestMsg{msgType=1, uplinkMsg=3{uplinkMsgId=1, entityData=2}}
    return f_varint(1, UPLINK_RPC_MESSAGE) + f_msg(3, f_varint(1, uplink_id), f_bytes(2, entity))


# -- a raw stream ----------------------------------------------------------------------------------


class RawStream:
    """One handleMsgs call carrying bytes both ways; responses read on a thread."""

    _END = object()

    def __init__(self, port: int, *, compression: grpc.Compression | None = None) -> None:
        self.channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        method = self.channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                            response_deserializer=lambda b: b)
        self._out: queue.Queue[bytes | object] = queue.Queue()
        self._in: queue.Queue[bytes | tuple[str, grpc.StatusCode | None]] = queue.Queue()
        self.call = method(self._requests(), compression=compression)
        self._reader = threading.Thread(target=self._read, daemon=True, name="raw-reader")
        self._reader.start()

    def _requests(self) -> Iterator[bytes]:
        while (item := self._out.get()) is not self._END:
            assert isinstance(item, bytes)
            yield item

    def _read(self) -> None:
        try:
            for raw in self.call:
                self._in.put(raw)
            self._in.put(("end", grpc.StatusCode.OK))
        except grpc.RpcError as exc:
            self._in.put(("end", exc.code()))

    def send(self, raw: bytes) -> None:
        self._out.put(raw)

    def recv_raw(self, timeout: float) -> bytes | None:
        """The next ResponseMsg's bytes, None when nothing arrives within timeout."""
        try:
            item = self._in.get(timeout=timeout)
        except queue.Empty:
            return None
        assert isinstance(item, bytes), f"stream ended: {item}"
        return item

    def recv(self) -> dict[int, list[int | bytes]]:
        """The next ResponseMsg, decoded; fails if the stream ended instead."""
        item = self._in.get(timeout=DEADLINE_S)
        assert isinstance(item, bytes), f"stream ended: {item}"
        return decode(item)

    def end_status(self) -> grpc.StatusCode | None:
        item = self._in.get(timeout=DEADLINE_S)
        assert isinstance(item, tuple), f"expected the end of the stream, got {decode(item)}"
        return item[1]

    def close(self) -> None:
        self._out.put(self._END)
        self.call.cancel()
        self.channel.close()
        self._reader.join(DEADLINE_S)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudServer]:
    cfg = load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_HOST": "127.0.0.1",
        "EDGES_RPC_PORT": "0", "CLOUD_ADMIN_HOST": "127.0.0.1", "CLOUD_ADMIN_PORT": "0"})
    server = CloudServer(cfg).start()
    yield server
    server.stop()


@pytest.fixture
def edge(cloud: CloudServer) -> uuid.UUID:
    record, _secret, created = cloud.service.create_edge("raw-edge", routing_key="rk-raw",
                                                        secret="s3cret-raw")
    assert created
    return record.edge_id


@pytest.fixture
def streams() -> Iterator[list[RawStream]]:
    made: list[RawStream] = []
    yield made
    for s in made:
        s.close()


# -- tests -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
def test_connect_sync_uplink_with_protocol_md_field_numbers_only(
        cloud: CloudServer, edge: uuid.UUID, streams: list[RawStream],
        compression: grpc.Compression | None) -> None:
    stream = RawStream(cloud.port, compression=compression)
    streams.append(stream)
    before = int(time.time() * 1000)

    # connect: ResponseMsg.connectResponseMsg (1)
    stream.send(connect_request("rk-raw", "s3cret-raw"))
    resp = stream.recv()
    assert set(resp) == {1}, f"expected only connectResponseMsg, got fields {sorted(resp)}"
    connect = sub(resp, 1)
    assert connect is not None
    assert int64(one(connect, 1)) == ACCEPTED  # absent (proto3 default) means ACCEPTED
    conf = sub(connect, 3)
    assert conf is not None, "ACCEPTED without EdgeConfiguration"
    assert (int64(one(conf, 1)), int64(one(conf, 2))) == halves(edge)
    assert edge.version == 1  # time-based, like ThingsBoard's ids
    tenant = uuid.UUID(bytes=b"".join(int64(one(conf, f)).to_bytes(8, "big", signed=True)
                                      for f in (3, 4)))
    assert tenant.version == 1  # a ThingsBoard Edge reads its time (tenantIdMSB/LSB)
    # customerIdMSB/LSB: ThingsBoard's NULL_UUID, the customer of an edge assigned to none
    assert (int64(one(conf, 5)), int64(one(conf, 6))) == halves(
        uuid.UUID("13814000-1dd2-11b2-8080-808080808080"))
    assert one(conf, 7) == b"raw-edge"  # name
    assert one(conf, 9) == b"rk-raw"  # routingKey
    assert one(conf, 10) == b"s3cret-raw"  # secret: echoed, as ThingsBoard does
    assert one(conf, 12) == b"CE"  # cloudType
    assert int32(one(connect, 4)) == 4 * 1024 * 1024  # the cloud's maxInboundMessageSize

    # sync without fullSync: the first downlink carries syncCompletedMsg (DownlinkMsg field 2)
    stream.send(sync_request(False))
    resp = stream.recv()
    assert set(resp) == {3}, f"expected only downlinkMsg, got fields {sorted(resp)}"
    downlink = sub(resp, 3)
    assert downlink is not None
    assert 2 in downlink, "the sync's downlink has no syncCompletedMsg"
    assert one(downlink, 2) == b""  # SyncCompletedMsg has no fields
    assert not ({3, 5, 7} & set(downlink)), "an incremental sync of an empty edge sent entities"
    downlink_id = int32(one(downlink, 1))
    assert downlink_id > 0
    stream.send(downlink_response(downlink_id))

    # uplink: telemetry with a negative value and negative UUID halves (two's complement varints)
    device = uuid.UUID("f1e2d3c4-b5a6-4798-8a7b-6c5d4e3f2a1b")
    msb, lsb = halves(device)
    assert msb < 0 and lsb < 0
    stream.send(telemetry_uplink(7, device, ts=1, key="temp", value=-40))
    resp = stream.recv()
    assert set(resp) == {2}, f"expected only uplinkResponseMsg, got fields {sorted(resp)}"
    ack = sub(resp, 2)
    assert ack is not None
    assert one(ack, 1) == 1, f"uplink failed: {one(ack, 2)!r}"  # success
    assert int32(one(ack, 3)) == 7  # uplinkMsgId echoed

    events = cloud.service.events("rk-raw")
    assert [(e.seq, e.entity_type, e.entity_id, e.action, e.body, e.ts) for e in events] == [
        (None, "DEVICE", device, "TIMESERIES_UPDATED", {"ts": 1, "values": {"temp": -40}}, 1)]
    assert events[0].applied_at >= before


@pytest.mark.parametrize("compression", [None, grpc.Compression.Gzip], ids=["plain", "gzip"])
def test_wrong_secret_gets_bad_credentials_and_the_stream_ends(
        cloud: CloudServer, edge: uuid.UUID, streams: list[RawStream],
        compression: grpc.Compression | None) -> None:
    stream = RawStream(cloud.port, compression=compression)
    streams.append(stream)
    stream.send(connect_request("rk-raw", "not-the-secret"))
    resp = stream.recv()
    assert set(resp) == {1}
    connect = sub(resp, 1)
    assert connect is not None
    assert int64(one(connect, 1)) == BAD_CREDENTIALS
    assert one(connect, 2), "BAD_CREDENTIALS without errorMsg"
    assert 3 not in connect, "configuration sent to an edge with a wrong secret"
    assert stream.end_status() == grpc.StatusCode.OK
    assert cloud.service.events("rk-raw") == []


def test_requests_before_connect_are_ignored_on_the_raw_wire(
        cloud: CloudServer, edge: uuid.UUID, streams: list[RawStream]) -> None:
    stream = RawStream(cloud.port)
    streams.append(stream)
    stream.send(telemetry_uplink(1, uuid.uuid4(), ts=5, key="x", value=1))  # before connect
    stream.send(connect_request("rk-raw", "s3cret-raw"))
    resp = stream.recv()
    assert set(resp) == {1}, "the uplink before connect was answered"
    connect = sub(resp, 1)
    assert connect is not None and int64(one(connect, 1)) == ACCEPTED
    assert cloud.service.events("rk-raw") == []


def test_an_unknown_edge_version_is_accepted(
        cloud: CloudServer, edge: uuid.UUID, streams: list[RawStream]) -> None:
    stream = RawStream(cloud.port)
    streams.append(stream)
    stream.send(connect_request("rk-raw", "s3cret-raw", version=4242))
    connect = sub(stream.recv(), 1)
    assert connect is not None and int64(one(connect, 1)) == ACCEPTED


def test_no_downlink_exceeds_the_edges_max_inbound_message_size(
        cloud: CloudServer, edge: uuid.UUID, streams: list[RawStream]) -> None:
    limit = 2048
    stream = RawStream(cloud.port)
    streams.append(stream)
    stream.send(connect_request("rk-raw", "s3cret-raw", max_inbound=limit))
    connect = sub(stream.recv(), 1)
    assert connect is not None and int64(one(connect, 1)) == ACCEPTED
    stream.send(sync_request(False))
    done = sub(stream.recv(), 3)
    assert done is not None and 2 in done
    stream.send(downlink_response(int32(one(done, 1))))

    cloud.service.create_device("rk-raw", "big", token="tok-big")  # one downlink, about 1.5 KiB
    cloud.service.set_attributes("big", {"blob": "x" * 3000})  # one of about 3 KiB
    raw = stream.recv_raw(timeout=DEADLINE_S)  # the device with its profile and credentials
    assert raw is not None, "no downlink came"
    assert len(raw) <= limit, f"a {len(raw)}-byte message sent to an edge accepting {limit}"
    downlink = sub(decode(raw), 3)
    assert downlink is not None
    stream.send(downlink_response(int32(one(downlink, 1))))
    # acknowledged, and the big one set aside instead of sent: the queue empties
    wait_until(lambda: cloud.store.queued_downlinks(edge) == 0, timeout=DEADLINE_S,
               what="the edge's downlink queue empty")
    more = stream.recv_raw(timeout=0.5)
    assert more is None, f"a further {len(more)}-byte message was sent"
    [parked] = cloud.service.parked_downlinks("rk-raw")  # the big one, set aside with why
    assert (parked.cause, parked.kinds) == ("too_large", "entityData")
    assert f"more than the edge's maxInboundMessageSize ({limit})" in parked.error
