"""Scenario 9, link side: malformed protobuf from a rogue peer on either end of
`/edge.EdgeRpcService/handleMsgs`, generated with hypothesis.

a. A rogue edge against the reference cloud (an in-process CloudServer): raw streams opened with
   grpc's generic API carry arbitrary bytes, truncated valid RequestMsgs, envelopes whose payload
   is wire-level garbage (wrong wire types, lengths past the end, invalid UTF-8 in string fields,
   negative varints, unknown enum values, groups nested a thousand deep), structured uplinks with
   garbage payloads, and frames over the size limit, before and after a valid connect.
   Property: the cloud answers or closes the stream (OK, or INTERNAL / RESOURCE_EXHAUSTED from
   gRPC for what it cannot decode or accept), its stream handler never raises, and it applies
   nothing of a rogue stream but payloads of valid uplinks (all of them when it acknowledged
   them). A well-behaved LinkClient streaming all along, and a new one afterwards, get every
   uplink applied exactly once.

b. A rogue cloud against an in-process EdgeApp: a minimal gRPC server with a generic handler
   (raw bytes out) accepts the edge's connect, then sends undecodable ResponseMsgs, downlinks
   with garbage entity JSON, unknown UpdateMsgType and KeyValueType values, UUID halves of 0,
   attribute lists of tens of thousands of entries (within and past the edge's limit), stray
   connect/uplink responses, and SERVER_UNAVAILABLE / BAD_CREDENTIALS at the next connect.
   Property: the edge keeps serving devices (HTTP 200), answers every decodable downlink
   (success=false with a reason for the bad ones), reconnects after what it cannot decode, and
   neither the DownlinkActor nor the ConnectionActor restarts. At the end the rogue turns into
   the real reference cloud and everything the edge accepted drains exactly once.

Inputs that hit the defects found here (JSON nested past the recursion limit, non-finite and
beyond-64-bit numbers where they made Python raise, unknown connect response codes) are kept out
of the properties and pinned by the regression tests at the end of the file.
"""

from __future__ import annotations

import itertools
import json
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from loguru import logger

from edge_sync.app import EdgeApp
from edge_sync.cloud import CloudServer
from edge_sync.cloud.session import LinkSettings
from edge_sync.common.wire import to_kv, uuid_halves
from edge_sync.config import load_cloud_config, load_edge_config
from edge_sync.logsetup import forward_stdlib_logging
from edge_sync.proto import edge_pb2, transport_pb2
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Status
from tests.helpers.agent import HttpClient
from tests.helpers.link_client import LinkClient, credentials, device_added, telemetry
from tests.helpers.wait import wait_until

pytestmark = pytest.mark.slow

METHOD = "/edge.EdgeRpcService/handleMsgs"
DEADLINE_S = 15.0
CLOUD_MAX_INBOUND = 64 * 1024
EDGE_MAX_INBOUND = 1024 * 1024
SAFE_DEPTH = 300
"""Deepest JSON nesting the strategies write; deeper nesting (past the recursion limit) is pinned by
test_cloud_rejects_uplink_payloads_that_make_python_raise and
test_edge_refuses_downlinks_that_make_python_raise."""
INT64 = (-(2**63), 2**63 - 1)


def examples(soak: bool, default: int, long: int) -> settings:
    return settings(
        max_examples=long if soak else default,
        deadline=None,
        derandomize=True,
        database=None,
        phases=(Phase.explicit, Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )


@pytest.fixture
def errors() -> Iterator[list[dict[str, Any]]]:
    """Every ERROR (and worse) loguru record, and every record with an exception, of the test;
    grpc's own (stdlib) records included, whichever test of this process configured logging."""
    forward_stdlib_logging()
    records: list[dict[str, Any]] = []

    def sink(message: Any) -> None:
        record = message.record
        if record["level"].no >= 40 or record["exception"] is not None:
            records.append(record)

    handle = logger.add(sink, level="DEBUG", format="{message}")
    yield records
    logger.remove(handle)


def crashes(records: list[dict[str, Any]]) -> list[str]:
    """Records of a handler or an actor that raised (stack trace attached)."""
    return [f"{r['name']}: {r['message'][:200]}" for r in records if r["exception"] is not None]


# -- a minimal protobuf wire codec -----------------------------------------------------------------

VARINT, I64, LEN, SGROUP, EGROUP, I32 = 0, 1, 2, 3, 4, 5


def varint(value: int) -> bytes:
    value &= (1 << 64) - 1 if value < 0 else (1 << 70) - 1  # negative: 64-bit two's complement
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def tag(number: int, wire_type: int) -> bytes:
    return varint((number << 3) | wire_type)


def f_varint(number: int, value: int) -> bytes:
    return tag(number, VARINT) + varint(value)


def f_bytes(number: int, value: bytes, *, length: int | None = None) -> bytes:
    return tag(number, LEN) + varint(len(value) if length is None else length) + value


# -- JSON text (bounded depth) ---------------------------------------------------------------------


def _array(items: list[str]) -> str:
    return "[" + ",".join(items) + "]"


def _object(pairs: list[tuple[str, str]]) -> str:
    return "{" + ",".join(f"{k}:{v}" for k, v in pairs) + "}"


def json_texts(*, wide_numbers: bool) -> st.SearchStrategy[str]:
    """JSON-ish text: random values, lone surrogates, bad literals, nesting up to SAFE_DEPTH.
    ``wide_numbers``: also integers beyond 64 bits and non-finite literals."""
    numbers = [st.integers(*INT64).map(str), st.floats(allow_nan=False, allow_infinity=False).map(repr),
               st.sampled_from(["NaN", "-0", "1.5e3", "01", "0x1"])]
    if wide_numbers:
        numbers += [st.integers(min_value=2**64, max_value=2**200).map(str),
                    st.sampled_from(["Infinity", "-Infinity", "1e400", "1e300"])]
    strings = st.one_of(st.text(max_size=20).map(json.dumps),
                        st.sampled_from(['"\\ud800"', '"\\udfff x"', '"\\u0000"', '""']))
    leaves = st.one_of(st.sampled_from(["null", "true", "false", "[]", "{}"]), *numbers, strings)
    values = st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(_array),
        st.lists(st.tuples(strings, inner), max_size=4).map(_object)), max_leaves=12)
    nested = st.builds(lambda depth, core: "[" * depth + core + "]" * depth,
                       st.integers(1, SAFE_DEPTH), leaves)
    broken = st.one_of(st.text(max_size=30), st.sampled_from(["{", "[", '{"a":', "}{", "nul"]))
    return st.one_of(values, nested, broken)


def entity_json(device: uuid.UUID, *, wide_numbers: bool) -> st.SearchStrategy[str]:
    """A device / credentials JSON object, often nearly right: random fields with random values.
    createdTime stays a finite number inside 64 bits (the regression tests at the end of the file
    send the others)."""
    anything = json_texts(wide_numbers=wide_numbers)
    ids = st.one_of(st.just(json.dumps({"entityType": "DEVICE", "id": str(device)})),
                    st.just(json.dumps(str(device))), st.builds(lambda u: json.dumps({"id": str(u)}),
                                                               st.uuids()), anything)
    created = st.one_of(st.integers(*INT64).map(str), st.sampled_from(['"12"', '"x"', "null", "true",
                                                                        "1.5", "[]", "{}"]))
    pair = st.one_of(
        st.tuples(st.just('"id"'), ids), st.tuples(st.just('"deviceId"'), ids),
        st.tuples(st.just('"name"'), st.one_of(st.text(max_size=600).map(json.dumps), anything)),
        st.tuples(st.sampled_from(['"type"', '"label"', '"credentialsId"', '"credentialsType"']),
                  st.one_of(st.text(max_size=40).map(json.dumps), st.just('"ACCESS_TOKEN"'), anything)),
        st.tuples(st.just('"createdTime"'), created),
        st.tuples(st.text(max_size=10).map(json.dumps), anything),
    )
    return st.one_of(st.lists(pair, max_size=7).map(_object), anything)


# -- protobuf pieces -------------------------------------------------------------------------------

uuids = st.one_of(st.uuids(), st.just(uuid.UUID(int=0)), st.just(uuid.UUID(int=(1 << 128) - 1)))
halves = uuids.map(uuid_halves)
seqs = st.one_of(st.none(), st.integers(-5, 50), st.integers(*INT64))
enum_values = st.one_of(st.integers(0, 6), st.integers(-(2**31), 2**31 - 1))


@st.composite
def kvs(draw: st.DrawFn, *, wide_numbers: bool, max_size: int = 4) -> list[transport_pb2.KeyValueProto]:
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        kv = transport_pb2.KeyValueProto(key=draw(st.one_of(st.text(max_size=20), st.just(""))),
                                         type=draw(enum_values))
        kv.bool_v = draw(st.booleans())
        kv.long_v = draw(st.integers(*INT64))
        kv.double_v = draw(st.floats())
        kv.string_v = draw(st.text(max_size=30))
        kv.json_v = draw(json_texts(wide_numbers=wide_numbers))
        out.append(kv)
    return out


@st.composite
def entity_data(draw: st.DrawFn, *, wide_numbers: bool, seq: bool = True) -> edge_pb2.EntityDataProto:
    msb, lsb = draw(halves)
    d = edge_pb2.EntityDataProto(entityIdMSB=msb, entityIdLSB=lsb, entityType=draw(st.one_of(
        st.sampled_from(["DEVICE", "ASSET", "", "WIDGET", "device"]), st.text(max_size=12))))
    which = draw(st.sampled_from(["telemetry", "post", "updated", "delete", "none"]))
    if which == "telemetry":
        for _ in range(draw(st.integers(0, 3))):
            d.postTelemetryMsg.tsKvList.add(ts=draw(st.integers(*INT64)),
                                            kv=draw(kvs(wide_numbers=wide_numbers)))
        if not d.postTelemetryMsg.tsKvList:
            d.postTelemetryMsg.SetInParent()
    elif which in ("post", "updated"):
        attrs = d.postAttributesMsg if which == "post" else d.attributesUpdatedMsg
        attrs.kv.extend(draw(kvs(wide_numbers=wide_numbers)))
        attrs.shared = draw(st.booleans())
        attrs.SetInParent()
    elif which == "delete":
        d.attributeDeleteMsg.scope = draw(st.sampled_from(["SHARED_SCOPE", "CLIENT_SCOPE", "", "bogus"]))
        d.attributeDeleteMsg.attributeNames.extend(draw(st.lists(st.text(max_size=10), max_size=3)))
        d.attributeDeleteMsg.SetInParent()
    d.postAttributeScope = draw(st.sampled_from(["", "CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE",
                                                 "bogus"]))
    if draw(st.booleans()):
        d.attributeTs = draw(st.integers(*INT64))
    n = draw(seqs) if seq else None
    if n is not None:
        d.edgeSeqId = n
    return d


@st.composite
def device_update(draw: st.DrawFn, *, wide_numbers: bool, known_types: bool = False
                  ) -> edge_pb2.DeviceUpdateMsg:
    device = draw(uuids)
    msb, lsb = uuid_halves(device)
    m = edge_pb2.DeviceUpdateMsg(
        msgType=draw(st.integers(0, 2) if known_types else enum_values), idMSB=msb, idLSB=lsb,
        entity=draw(entity_json(device, wide_numbers=wide_numbers)))
    n = draw(seqs)
    if n is not None:
        m.edgeSeqId = n
    return m


@st.composite
def credentials_update(draw: st.DrawFn, *, wide_numbers: bool) -> edge_pb2.DeviceCredentialsUpdateMsg:
    m = edge_pb2.DeviceCredentialsUpdateMsg(
        entity=draw(entity_json(draw(uuids), wide_numbers=wide_numbers)))
    n = draw(seqs)
    if n is not None:
        m.edgeSeqId = n
    return m


@st.composite
def wire_garbage(draw: st.DrawFn, depth: int = 0) -> bytes:
    """Protobuf-shaped garbage: random field numbers and wire types, negative and oversized
    varints, lengths past the end, invalid UTF-8, groups nested deep, nested garbage."""
    parts = []
    for _ in range(draw(st.integers(0, 5))):
        number = draw(st.one_of(st.integers(1, 30), st.sampled_from([1000, 1001, 18]),
                                st.integers(1, 2**29 - 1)))
        wire_type = draw(st.sampled_from([VARINT, VARINT, I64, LEN, LEN, LEN, SGROUP, EGROUP, I32, 6, 7]))
        if wire_type == VARINT:
            parts.append(tag(number, VARINT) + varint(draw(st.one_of(
                st.integers(-(2**63), 2**64 - 1), st.sampled_from([-1, 2**31, 2**32, 99, 2**70])))))
        elif wire_type in (I64, I32):
            parts.append(tag(number, wire_type) + draw(st.binary(min_size=0, max_size=9)))
        elif wire_type == LEN:
            payload = draw(st.one_of(
                st.binary(max_size=40), st.text(max_size=20).map(str.encode),
                st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"\xc3", b"\xc0\xaf", b"a\x00b"]),
                wire_garbage(depth + 1) if depth < 3 else st.just(b"")))
            length = draw(st.sampled_from([None, None, None, len(payload) + 1, 2**31 - 1, 2**32 + 5,
                                           2**63]))
            parts.append(f_bytes(number, payload, length=length))
        elif wire_type == SGROUP:
            levels = draw(st.integers(1, 1200))
            closed = draw(st.sampled_from([levels, levels, 0]))
            parts.append(tag(number, SGROUP) * levels + tag(number, EGROUP) * closed)
        else:
            parts.append(tag(number, wire_type) + draw(st.binary(max_size=10)))
    return b"".join(parts)


# == a. a rogue edge against the reference cloud ===================================================

ROGUE_RK, ROGUE_SECRET = "rk-rogue", "rogue-secret"
GOOD_RK, GOOD_SECRET = "rk-good", "good-secret"


def connect_frame(store_id: str, routing_key: str = ROGUE_RK) -> bytes:
    return edge_pb2.RequestMsg(
        msgType=edge_pb2.CONNECT_RPC_MESSAGE,
        connectRequestMsg=edge_pb2.ConnectRequestMsg(
            edgeRoutingKey=routing_key, edgeSecret=ROGUE_SECRET, edgeVersion=edge_pb2.V_4_3_0,
            maxInboundMessageSize=4 * 1024 * 1024, edgeStoreId=store_id)).SerializeToString()


@st.composite
def valid_payloads(draw: st.DrawFn) -> dict[str, list[Any]]:
    device = draw(st.uuids())
    seq = draw(st.integers(1, 40))
    which = draw(st.sampled_from(["telemetry", "device", "credentials"]))
    if which == "telemetry":
        values = draw(st.dictionaries(st.text(min_size=1, max_size=8), st.one_of(
            st.booleans(), st.integers(*INT64), st.floats(allow_nan=False), st.text(max_size=8)),
            min_size=1, max_size=3))
        return {"entityData": [telemetry(device, seq, values, ts=draw(st.integers(1, 2**62)))]}
    if which == "device":
        return {"deviceUpdateMsg": [device_added(device, draw(st.text(min_size=1, max_size=20)), seq)]}
    return {"deviceCredentialsUpdateMsg": [credentials(device, draw(st.text(min_size=1, max_size=20)),
                                                       seq)]}


@st.composite
def uplink_requests(draw: st.DrawFn) -> edge_pb2.RequestMsg:
    """A structured RequestMsg with an UplinkMsg: valid payloads mixed with garbage ones."""
    up = edge_pb2.UplinkMsg(uplinkMsgId=draw(st.integers(-(2**31), 2**31 - 1)))
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["valid", "valid", "entity", "device", "credentials", "opaque"]))
        if kind == "valid":
            for name, items in draw(valid_payloads()).items():
                getattr(up, name).extend(items)
        elif kind == "entity":
            up.entityData.append(draw(entity_data(wide_numbers=True)))
        elif kind == "device":
            up.deviceUpdateMsg.append(draw(device_update(wide_numbers=True)))
        elif kind == "credentials":
            up.deviceCredentialsUpdateMsg.append(draw(credentials_update(wide_numbers=True)))
        else:
            msb, lsb = draw(halves)
            alarm = up.alarmUpdateMsg.add(msgType=draw(enum_values), idMSB=msb, idLSB=lsb,
                                          entity=draw(json_texts(wide_numbers=True)))
            if draw(st.booleans()):
                alarm.edgeSeqId = draw(st.integers(1, 40))
    if draw(st.booleans()):
        up.uplinkEpoch = draw(st.integers(-3, 5))
    if draw(st.booleans()):
        up.firstEdgeSeqId = draw(st.integers(*INT64))
    return edge_pb2.RequestMsg(msgType=draw(enum_values), uplinkMsg=up)


@st.composite
def valid_uplinks(draw: st.DrawFn) -> bytes:
    up = edge_pb2.UplinkMsg(uplinkMsgId=draw(st.integers(1, 2**31 - 1)))
    for _ in range(draw(st.integers(1, 3))):
        for name, items in draw(valid_payloads()).items():
            getattr(up, name).extend(items)
    return edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=up).SerializeToString()


@st.composite
def other_requests(draw: st.DrawFn) -> edge_pb2.RequestMsg:
    req = edge_pb2.RequestMsg(msgType=draw(enum_values))
    which = draw(st.sampled_from(["sync", "ack", "connect", "empty"]))
    if which == "sync":
        req.syncRequestMsg.SetInParent()
        if draw(st.booleans()):
            req.syncRequestMsg.fullSync = draw(st.booleans())
    elif which == "ack":
        req.downlinkResponseMsg.success = draw(st.booleans())
        req.downlinkResponseMsg.downlinkMsgId = draw(st.integers(-(2**31), 2**31 - 1))
        req.downlinkResponseMsg.errorMsg = draw(st.text(max_size=20))
    elif which == "connect":  # a stray connect request with wrong credentials
        req.connectRequestMsg.edgeRoutingKey = draw(st.sampled_from(["", ROGUE_RK, "nobody"]))
        req.connectRequestMsg.edgeSecret = draw(st.text(max_size=10))
        req.connectRequestMsg.edgeVersion = draw(enum_values)
    return req


@st.composite
def oversized_frame(draw: st.DrawFn) -> bytes:
    size = draw(st.integers(CLOUD_MAX_INBOUND + 1, CLOUD_MAX_INBOUND + 20_000))
    device = uuid.uuid4()
    req = edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=edge_pb2.UplinkMsg(
        uplinkMsgId=1, entityData=[telemetry(device, 1, {"pad": "p" * size})]))
    return req.SerializeToString()


def _truncate(raw: bytes, cut: int) -> bytes:
    return raw[:cut % max(1, len(raw))]


frames = st.one_of(
    valid_uplinks(),
    st.binary(max_size=300),
    st.builds(_truncate, st.one_of(uplink_requests(), other_requests()).map(
        lambda m: m.SerializeToString()), st.integers(0, 10_000)),
    uplink_requests().map(lambda m: m.SerializeToString()),
    uplink_requests().map(lambda m: m.SerializeToString()),
    other_requests().map(lambda m: m.SerializeToString()),
    st.builds(lambda t, n, g: f_varint(1, t) + f_bytes(n, g), enum_values,
              st.sampled_from([2, 3, 3, 4, 5, 7]), wire_garbage()),
    st.builds(lambda t, g: f_varint(1, t) + f_bytes(3, f_varint(1, 5) + f_bytes(2, g)),
              enum_values, wire_garbage()),
    wire_garbage(),
    oversized_frame(),
)


class RawStream:
    """One handleMsgs call carrying bytes both ways; the responses and the final status."""

    def __init__(self, channel: grpc.Channel, frames: list[bytes]) -> None:
        method = channel.stream_stream(METHOD, request_serializer=lambda b: b,
                                       response_deserializer=lambda b: b)
        self.call = method(iter(frames), timeout=DEADLINE_S)

    def finish(self) -> tuple[grpc.StatusCode, str, list[edge_pb2.ResponseMsg]]:
        responses = []
        try:
            for raw in self.call:
                responses.append(edge_pb2.ResponseMsg.FromString(raw))
        except grpc.RpcError as exc:
            return exc.code(), exc.details() or "", responses
        return grpc.StatusCode.OK, "", responses


def decode(frame: bytes) -> edge_pb2.RequestMsg | None:
    try:
        return edge_pb2.RequestMsg.FromString(frame)
    except DecodeError:
        return None


APPLIED_LISTS = ("entityData", "deviceUpdateMsg", "deviceCredentialsUpdateMsg", "alarmUpdateMsg",
                 "relationUpdateMsg", "deviceRpcCallMsg", "assetUpdateMsg")


def payload_seqs(up: edge_pb2.UplinkMsg) -> list[int | None]:
    """The edgeSeqId (None when absent) of every payload the cloud would apply."""
    return [m.edgeSeqId if m.HasField("edgeSeqId") else None
            for name in APPLIED_LISTS for m in getattr(up, name)]


@dataclass
class Sent:
    """One rogue stream: its edge, the uplinks the cloud may have read, those it acknowledged."""

    routing_key: str
    code: grpc.StatusCode
    candidates: list[edge_pb2.UplinkMsg]
    acked: list[edge_pb2.UplinkMsg]


class Handlers:
    """Counts the cloud's stream handlers (its servicer's handleMsgs calls): started, and still
    running. A session's RPC can end (INTERNAL, RESOURCE_EXHAUSTED) while its handler thread is
    still applying what it read; only a returned handler has surely done all it will do.
    Installed before the server starts, which is when gRPC looks the method up."""

    def __init__(self, server: CloudServer) -> None:
        self._handle = server.servicer.handleMsgs
        self.cond = threading.Condition()
        self.started = 0
        self.running = 0
        server.servicer.handleMsgs = self  # type: ignore[method-assign]

    def __call__(self, requests: Iterator[edge_pb2.RequestMsg], context: grpc.ServicerContext
                 ) -> Iterator[edge_pb2.ResponseMsg]:
        with self.cond:
            self.started += 1
            self.running += 1
        return self._run(requests, context)

    def _run(self, requests: Iterator[edge_pb2.RequestMsg], context: grpc.ServicerContext
             ) -> Iterator[edge_pb2.ResponseMsg]:
        try:
            yield from self._handle(requests, context)
        finally:
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def wait_all_returned_but(self, running: int, *, started: int) -> None:
        """Wait until ``started`` handlers were called in all and only ``running`` still run."""
        wait_until(lambda: self.started == started and self.running == running, timeout=DEADLINE_S,
                   condition=self.cond, what=f"{started} stream handlers started, {running} running",
                   show=lambda: f"{self.started} started, {self.running} running")


@dataclass
class Rogue:
    cloud: CloudServer
    handlers: Handlers
    channel: grpc.Channel
    good: LinkClient
    good_device: uuid.UUID
    good_seq: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    applied_from_rogue: int = 0
    sent: list[Sent] = field(default_factory=list)
    edges: Iterator[int] = field(default_factory=itertools.count)

    def check_applied(self, s: Sent) -> int:
        """The cloud applied, from the stream's edge, payloads of uplinks it read after the
        connect, each seq once; all and only the acknowledged ones when the stream ended OK
        (every answer arrived). The number of events applied."""
        events = self.cloud.service.events(s.routing_key)
        got = Counter(e.seq for e in events)
        possible = Counter(q for m in s.candidates for q in payload_seqs(m))
        assert all(n == 1 for q, n in got.items() if q is not None), f"applied twice: {got}"
        assert set(got) - {None} <= set(possible), (got, possible)
        assert got[None] <= possible[None], (got, possible)
        if s.code is grpc.StatusCode.OK:
            acked = Counter(q for m in s.acked for q in payload_seqs(m))
            assert set(got) - {None} == set(acked) - {None}, (got, acked)
            assert got[None] == acked[None], (got, acked)
        return len(events)

    def good_uplink(self) -> None:
        self.good_seq += 1
        resp = self.good.uplink(entityData=[telemetry(self.good_device, self.good_seq)])
        assert resp.success, resp.errorMsg


@pytest.fixture
def rogue(tmp_path: Path) -> Iterator[Rogue]:
    cfg = load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_HOST": "127.0.0.1", "EDGES_RPC_PORT": "0",
        "CLOUD_ADMIN_HOST": "127.0.0.1", "CLOUD_ADMIN_PORT": "0",
        "EDGES_RPC_MAX_INBOUND_MESSAGE_SIZE": str(CLOUD_MAX_INBOUND)})
    server = CloudServer(cfg, link=LinkSettings(max_inbound_message_size=CLOUD_MAX_INBOUND,
                                                resend_timeout_s=1.0, connect_timeout_s=5.0))
    handlers = Handlers(server)
    server.start()
    server.service.create_edge("rogue", routing_key=ROGUE_RK, secret=ROGUE_SECRET)
    server.service.create_edge("good", routing_key=GOOD_RK, secret=GOOD_SECRET)
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    good = LinkClient(server.port)
    try:
        assert good.connect(GOOD_RK, GOOD_SECRET, store_id="good-store").responseCode == edge_pb2.ACCEPTED
        good.sync(full=False)
        yield Rogue(server, handlers, channel, good, uuid.uuid4())
    finally:
        good.close()
        channel.close()
        # gRPC Python never completes a call it aborted for an undecodable request, so the
        # server's shutdown waits out CloudServer.stop's 5 s on top of the grace period.
        server.stop(grace_s=0.5)


def test_rogue_edge_streams_never_break_the_cloud(rogue: Rogue, soak: bool,
                                                   errors: list[dict[str, Any]]) -> None:
    cloud = rogue.cloud

    @examples(soak, default=150, long=2000)
    @given(scenario=st.one_of(
        # anything, with a valid connect anywhere or nowhere
        st.tuples(st.lists(frames, min_size=1, max_size=4), st.one_of(st.none(), st.integers(0, 4))),
        # a valid connect first, then mostly valid uplinks among the garbage
        st.tuples(st.lists(st.one_of(valid_uplinks(), valid_uplinks(), frames), min_size=1,
                           max_size=4), st.just(0))))
    def prop(scenario: tuple[list[bytes], int | None]) -> None:
        sent, connect_at = scenario
        # A new edge per stream, so that nothing of one example's stream can touch the next one's.
        routing_key = f"{ROGUE_RK}-{next(rogue.edges)}"
        cloud.service.create_edge(routing_key, routing_key=routing_key, secret=ROGUE_SECRET)
        store_id = str(uuid.uuid4())
        connect = connect_frame(store_id, routing_key)
        stream = list(sent)
        if connect_at is not None:
            stream.insert(min(connect_at, len(stream)), connect)
        started = rogue.handlers.started
        code, details, responses = RawStream(rogue.channel, stream).finish()
        # Its handler returned: whatever the cloud applies of this stream is applied by now.
        rogue.handlers.wait_all_returned_but(1, started=started + 1)  # the good edge's runs
        assert cloud.servicer.active() == 1
        rogue.statuses[code.name] += 1
        assert code in (grpc.StatusCode.OK, grpc.StatusCode.INTERNAL,
                        grpc.StatusCode.RESOURCE_EXHAUSTED), (code, details)
        assert crashes(errors) == []

        # What the cloud could have applied: the uplinks it read after an accepted connect.
        candidates: list[edge_pb2.UplinkMsg] = []
        accepted = refused = False
        for frame in stream:
            req = decode(frame)
            if req is None or len(frame) > CLOUD_MAX_INBOUND:
                break  # gRPC ends the call here
            if not accepted:
                if req.HasField("connectRequestMsg"):
                    if frame != connect:
                        refused = True
                        break  # wrong credentials: the stream ends
                    accepted = True
                continue
            if req.HasField("uplinkMsg"):
                candidates.append(req.uplinkMsg)
        answers = [r.uplinkResponseMsg for r in responses if r.HasField("uplinkResponseMsg")]
        assert len(answers) <= len(candidates)
        if code is grpc.StatusCode.OK:
            assert len(answers) == len(candidates), "an uplink went unanswered"
        connects = [r.connectResponseMsg.responseCode for r in responses
                    if r.HasField("connectResponseMsg")]
        assert len(connects) <= 1, connects
        if connects:
            assert connects[0] == (edge_pb2.ACCEPTED if accepted else edge_pb2.BAD_CREDENTIALS)
        elif code is grpc.StatusCode.OK:
            assert not (accepted or refused), "a connect request went unanswered"
        for msg, answer in zip(candidates, answers, strict=False):
            assert answer.uplinkMsgId == msg.uplinkMsgId
            if not answer.success:
                assert answer.errorMsg
        acked = [msg for msg, answer in zip(candidates, answers, strict=False) if answer.success]
        record = Sent(routing_key, code, candidates, acked)
        rogue.sent.append(record)
        rogue.check_applied(record)
        assert cloud.service.events(ROGUE_RK) == []
        rogue.good_uplink()

    prop()
    rogue.applied_from_rogue = sum(rogue.check_applied(s) for s in rogue.sent)

    # A new well-behaved stream of the good edge replaces the old one; a resend is deduplicated.
    rogue.good.close()
    again = LinkClient(cloud.port)
    try:
        assert again.connect(GOOD_RK, GOOD_SECRET, store_id="good-store").responseCode == edge_pb2.ACCEPTED
        again.sync(full=False)
        assert again.uplink(entityData=[telemetry(rogue.good_device, rogue.good_seq)]).success
        assert again.uplink(entityData=[telemetry(rogue.good_device, rogue.good_seq + 1)]).success
    finally:
        again.close()
    good = cloud.service.events(GOOD_RK)
    assert [e.seq for e in good] == list(range(1, rogue.good_seq + 2))
    assert {e.entity_id for e in good} == {rogue.good_device}
    assert [e.body["values"]["t"] for e in good] == list(range(1, rogue.good_seq + 2))
    assert crashes(errors) == []
    if not soak:  # the generators reach every outcome
        assert set(rogue.statuses) == {"OK", "INTERNAL", "RESOURCE_EXHAUSTED"}, rogue.statuses
        assert rogue.applied_from_rogue > 0


def test_requests_that_are_not_protobuf_are_one_line_a_minute_at_the_cloud_and_all_counted(
        tmp_path: Path) -> None:
    """Anything that reaches the cloud's gRPC port can send bytes that are not a RequestMsg,
    before any connect, one stream after another. Each is counted in
    edge_cloud_undecodable_requests_total; only the first of a minute is logged (grpc's own
    "Exception deserializing request!" record not at all), the others told in one line: with
    the next line once the minute has ended, and at the cloud's stop. (The timer that tells
    them when the minute ends is tested with the class itself, in
    tests/unit/test_cloud_undecodable.py.)"""
    forward_stdlib_logging()  # grpc's record would come through, as in the cloud's process
    clock = SteppedClock()
    cfg = load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "cloud"), "EDGES_RPC_HOST": "127.0.0.1",
        "EDGES_RPC_PORT": "0", "CLOUD_ADMIN_HOST": "127.0.0.1", "CLOUD_ADMIN_PORT": "0"})
    server = CloudServer(cfg, clock=clock).start()
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    lines: list[tuple[str, str]] = []

    def sink(message: Any) -> None:
        r = message.record
        if r["extra"].get("logger") == "grpc._common" or "protobuf" in r["message"]:
            lines.append((r["level"].name, r["message"]))

    handle = logger.add(sink, level="DEBUG", format="{message}")

    def garbage(count: int) -> None:
        for _ in range(count):
            code, _, responses = RawStream(channel, [b"\xff"]).finish()  # a bad tag
            assert (code, responses) == (grpc.StatusCode.INTERNAL, [])

    def counted() -> float:
        return server.counters.metrics.value("edge_cloud_undecodable_requests_total")

    first = ("WARNING", "a peer sent a message that is not valid protobuf (DecodeError: Error "
             "parsing message with type 'edge.RequestMsg': Wire format was corrupt, 1 bytes): "
             "its stream ends; further ones within a minute are only counted "
             "(edge_cloud_undecodable_requests_total) and told in one line")

    def more(n: int) -> tuple[str, str]:
        return "WARNING", f"{n} more messages that are not valid protobuf from peers in the last minute"

    try:
        garbage(4)
        assert (lines, counted()) == ([first], 4)
        clock.step(61)  # the minute ends; the next one tells the three first
        garbage(3)
        assert (lines, counted()) == ([first, more(3), first], 7)
    finally:
        channel.close()
        server.stop(grace_s=0.5)
        logger.remove(handle)
    assert (lines, counted()) == ([first, more(3), first, more(2)], 7)


# == b. a rogue cloud against the edge =============================================================

EDGE_RK, EDGE_SECRET = "rk-edge", "edge-secret"
ROGUE_EDGE_ID = uuid.UUID("6f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
ROGUE_TENANT_ID = uuid.UUID("7a8b9c0d-1e2f-4a3b-8c5d-6e7f8a9b0c1d")
_END = object()


@dataclass
class _RogueStream:
    number: int
    outbox: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    accepted: bool = False
    synced: bool = False
    sync_ids: set[int] = field(default_factory=set)


class RogueCloud:
    """A gRPC server for /edge.EdgeRpcService/handleMsgs with a generic handler that sends raw
    bytes. It accepts the edge's connect (or answers with `next_connect_code` once), completes
    its sync, never answers an uplink, and sends whatever a test injects. With `honest` set it
    hands every new stream to that real reference cloud instead."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.streams: list[_RogueStream] = []
        self.acks: list[edge_pb2.DownlinkResponseMsg] = []
        self.uplinks = 0
        self.next_connect_code: int | None = None
        self.refused_connects = 0
        self.honest: CloudServer | None = None
        self._ids = itertools.count(1)
        self._server: grpc.Server | None = None
        self.port = 0

    def start(self) -> RogueCloud:
        handler = grpc.stream_stream_rpc_method_handler(
            self._handle, request_deserializer=edge_pb2.RequestMsg.FromString,
            response_serializer=lambda b: b)
        server = grpc.server(ThreadPoolExecutor(max_workers=32, thread_name_prefix="rogue-cloud"),
                             options=[("grpc.max_send_message_length", -1)])
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler("edge.EdgeRpcService", {"handleMsgs": handler}),))
        self.port = server.add_insecure_port("127.0.0.1:0")
        assert self.port
        server.start()
        self._server = server
        return self

    def stop(self) -> None:
        with self.cond:
            for s in self.streams:
                s.outbox.put(_END)
        if self._server is not None:
            self._server.stop(0.5).wait(5)

    # -- what tests call -----------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], what: str, timeout: float = DEADLINE_S) -> Any:
        """Wait until predicate() (evaluated under the rogue's lock) is truthy; return it."""
        return wait_until(predicate, timeout=timeout, what=f"the rogue cloud: {what}",
                          condition=self.cond)

    def ready(self) -> _RogueStream | None:
        """The newest stream, when it is accepted and its sync was acknowledged."""
        s = self.streams[-1] if self.streams else None
        return s if s is not None and s.synced else None

    def wait_ready(self, after: int = 0) -> int:
        s = self.wait_for(lambda: (r := self.ready()) is not None and r.number > after and r,
                          f"a synced stream after stream {after}")
        return int(s.number)

    def inject(self, raw: bytes, *, end: bool = False) -> int:
        """Send raw bytes as the next ResponseMsg on the ready stream; its number. ``end``: then
        end the call from this side too: a gRPC Python client that cannot decode (or accept) a
        message ends its call locally without telling the server, whose handler would wait
        forever and hold a worker thread."""
        with self.cond:
            s = self.ready()
            assert s is not None, "rogue cloud: no synced stream"
        s.outbox.put(raw)
        if end:
            s.outbox.put(_END)
        return s.number

    def new_id(self) -> int:
        return 1_000_000 + next(self._ids)

    def acks_for(self, downlink_id: int) -> list[edge_pb2.DownlinkResponseMsg]:
        return [a for a in self.acks if a.downlinkMsgId == downlink_id]

    # -- the handler ---------------------------------------------------------------------------

    def _handle(self, requests: Iterator[edge_pb2.RequestMsg], context: grpc.ServicerContext
                ) -> Iterator[bytes]:
        if self.honest is not None:
            for msg in self.honest.servicer.handleMsgs(requests, context):
                yield msg.SerializeToString()
            return
        with self.cond:
            stream = _RogueStream(len(self.streams) + 1)
            self.streams.append(stream)
            self.cond.notify_all()
        context.add_callback(lambda: stream.outbox.put(_END))
        threading.Thread(target=self._read, args=(stream, requests), daemon=True,
                         name=f"rogue-cloud-reader-{stream.number}").start()
        while (item := stream.outbox.get()) is not _END:
            yield item

    def _read(self, stream: _RogueStream, requests: Iterator[edge_pb2.RequestMsg]) -> None:
        try:
            for req in requests:
                self._on_request(stream, req)
        except grpc.RpcError:
            pass
        finally:
            stream.outbox.put(_END)

    def _on_request(self, stream: _RogueStream, req: edge_pb2.RequestMsg) -> None:
        if req.HasField("connectRequestMsg"):
            with self.cond:
                code, self.next_connect_code = self.next_connect_code, None
            if code is not None:
                with self.cond:
                    self.refused_connects += 1
                    self.cond.notify_all()
                stream.outbox.put(_response(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                    responseCode=code, errorMsg="rogue says no")))
                stream.outbox.put(_END)
                return
            e_msb, e_lsb = uuid_halves(ROGUE_EDGE_ID)
            t_msb, t_lsb = uuid_halves(ROGUE_TENANT_ID)
            with self.cond:
                stream.accepted = True
            stream.outbox.put(_response(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                responseCode=edge_pb2.ACCEPTED, maxInboundMessageSize=4 * 1024 * 1024,
                configuration=edge_pb2.EdgeConfiguration(
                    edgeIdMSB=e_msb, edgeIdLSB=e_lsb, tenantIdMSB=t_msb, tenantIdLSB=t_lsb,
                    name="rogue", type="default", routingKey=EDGE_RK, cloudType="CE"))))
            return
        if not stream.accepted:
            return
        if req.HasField("syncRequestMsg"):
            dl_id = next(self._ids)
            with self.cond:
                stream.sync_ids.add(dl_id)
            stream.outbox.put(_response(downlinkMsg=edge_pb2.DownlinkMsg(
                downlinkMsgId=dl_id, syncCompletedMsg=edge_pb2.SyncCompletedMsg())))
        if req.HasField("downlinkResponseMsg"):
            ack = req.downlinkResponseMsg
            with self.cond:
                self.acks.append(ack)
                if ack.downlinkMsgId in stream.sync_ids and ack.success:
                    stream.synced = True
                self.cond.notify_all()
        if req.HasField("uplinkMsg"):
            with self.cond:
                self.uplinks += 1  # never answered: nothing is acknowledged by a rogue


def _response(**fields: Any) -> bytes:
    return edge_pb2.ResponseMsg(**fields).SerializeToString()


# -- what the rogue cloud sends -----------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """Bytes to inject and what the edge must do with them."""

    raw: bytes
    expect: str  # "ack" (answer downlink_id), "reconnect", "ignore", "refused-connect"
    downlink_id: int = 0
    must_fail: bool = False  # a downlink the edge must refuse (success=false)
    code: int | None = None  # "refused-connect": the code of the next connect response


def classify(raw: bytes) -> Frame:
    """What a frame of raw bytes must cause, decided by decoding it as the edge will."""
    try:
        msg = edge_pb2.ResponseMsg.FromString(raw)
    except DecodeError:
        return Frame(raw, "reconnect")
    if len(raw) > EDGE_MAX_INBOUND:
        return Frame(raw, "reconnect")
    # The edge looks at the first of these present (ResponseMsg has no oneof).
    if msg.HasField("connectResponseMsg") or msg.HasField("uplinkResponseMsg"):
        return Frame(raw, "ignore")  # connect answered already; uplink ids never in flight
    if msg.HasField("downlinkMsg"):
        return Frame(raw, "ack", msg.downlinkMsg.downlinkMsgId)
    return Frame(raw, "ignore")  # edgeUpdateMsg is only logged


@st.composite
def downlinks(draw: st.DrawFn, downlink_id: int) -> edge_pb2.DownlinkMsg:
    """A DownlinkMsg full of garbage with JSON nested <= SAFE_DEPTH and createdTime and JSON_V
    numbers inside 64 bits and finite (test_edge_refuses_downlinks_that_make_python_raise sends
    the others)."""
    msg = edge_pb2.DownlinkMsg(downlinkMsgId=downlink_id)
    for _ in range(draw(st.integers(0, 3))):
        kind = draw(st.sampled_from(["device", "device", "credentials", "entity", "other", "config",
                                     "sync"]))
        if kind == "device":
            msg.deviceUpdateMsg.append(draw(device_update(wide_numbers=False)))
        elif kind == "credentials":
            msg.deviceCredentialsUpdateMsg.append(draw(credentials_update(wide_numbers=False)))
        elif kind == "entity":
            msg.entityData.append(draw(entity_data(wide_numbers=False, seq=False)))
        elif kind == "other":
            msb, lsb = draw(halves)
            getattr(msg, draw(st.sampled_from(["assetUpdateMsg", "alarmUpdateMsg", "userUpdateMsg"]))
                    ).add(msgType=draw(enum_values), idMSB=msb, idLSB=lsb, entity=draw(st.text(max_size=20)))
        elif kind == "config":
            e_msb, e_lsb = draw(halves)
            t_msb, t_lsb = draw(halves)
            msg.edgeConfiguration.CopyFrom(edge_pb2.EdgeConfiguration(
                edgeIdMSB=e_msb, edgeIdLSB=e_lsb, tenantIdMSB=t_msb, tenantIdLSB=t_lsb,
                name=draw(st.text(max_size=10))))
        else:
            msg.syncCompletedMsg.SetInParent()
    if draw(st.booleans()):
        msg.cloudTimeMillis = draw(st.integers(*INT64))
    return msg


@st.composite
def big_attributes(draw: st.DrawFn, downlink_id: int) -> bytes:
    """Shared attributes of one entity: tens of thousands of entries, within the edge's limit
    or (sometimes) past it."""
    count = draw(st.integers(1_000, 40_000))
    pad = draw(st.sampled_from([0, 0, 10, 40]))
    kv = [transport_pb2.KeyValueProto(key=f"k{i}", type=transport_pb2.STRING_V, string_v="v" * pad)
          if pad else to_kv(f"k{i}", i) for i in range(count)]
    msb, lsb = draw(halves)
    return _response(downlinkMsg=edge_pb2.DownlinkMsg(downlinkMsgId=downlink_id, entityData=[
        edge_pb2.EntityDataProto(entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
                                 postAttributeScope="SHARED_SCOPE",
                                 attributesUpdatedMsg=transport_pb2.PostAttributeMsg(kv=kv))]))


@st.composite
def rogue_frames(draw: st.DrawFn, downlink_id: int) -> Frame:
    kind = draw(st.sampled_from(["downlink"] * 6 + ["unknown-type", "undecodable", "truncated",
                                                    "wire", "big", "responses", "connect-code"]))
    if kind == "downlink":
        return Frame(_response(downlinkMsg=draw(downlinks(downlink_id))), "ack", downlink_id)
    if kind == "unknown-type":  # deviceUpdateMsg with an UpdateMsgType the edge cannot apply
        msg = draw(downlinks(downlink_id))
        bad = draw(device_update(wide_numbers=False))
        bad.msgType = draw(st.one_of(st.integers(3, 2**31 - 1), st.integers(-(2**31), -1)))
        msg.deviceUpdateMsg.insert(0, bad)
        return Frame(_response(downlinkMsg=msg), "ack", downlink_id, must_fail=True)
    if kind == "undecodable":
        raw = draw(st.one_of(
            st.binary(min_size=1, max_size=200),
            st.just(f_bytes(3, f_varint(1, 7) + f_bytes(5, b"\x0a\xff"))),
            st.builds(lambda n: tag(3, SGROUP) * n, st.integers(1, 1200)),
            st.builds(lambda g: f_bytes(3, g), wire_garbage())))
        return classify(raw)
    if kind == "truncated":
        raw = _response(downlinkMsg=draw(downlinks(downlink_id)))
        return classify(raw[:draw(st.integers(0, max(0, len(raw) - 1)))])
    if kind == "wire":  # a DownlinkMsg with protobuf-level garbage appended
        inner = draw(downlinks(downlink_id)).SerializeToString() + draw(wire_garbage())
        return classify(f_bytes(3, inner))
    if kind == "big":
        return classify(draw(big_attributes(downlink_id)))
    if kind == "responses":
        which = draw(st.sampled_from(["uplink", "connect", "update", "empty"]))
        if which == "uplink":  # a failure for an uplink id (never a success: that would ack data)
            resp = edge_pb2.UplinkResponseMsg(success=False, uplinkMsgId=draw(st.integers(-5, 100)),
                                              errorMsg=draw(st.text(max_size=20)))
            if draw(st.booleans()):
                resp.retryable = draw(st.booleans())
            return Frame(_response(uplinkResponseMsg=resp), "ignore")
        if which == "connect":  # a second connect answer on an accepted stream
            return Frame(_response(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                responseCode=draw(enum_values), errorMsg=draw(st.text(max_size=20)))), "ignore")
        if which == "update":
            e_msb, e_lsb = draw(halves)
            return Frame(_response(edgeUpdateMsg=edge_pb2.EdgeUpdateMsg(
                configuration=edge_pb2.EdgeConfiguration(edgeIdMSB=e_msb, edgeIdLSB=e_lsb))), "ignore")
        return Frame(b"", "ignore")
    code = draw(st.sampled_from([edge_pb2.SERVER_UNAVAILABLE, edge_pb2.BAD_CREDENTIALS]))
    return Frame(b"\xff", "refused-connect", code=code)


@dataclass
class EdgeUnderTest:
    app: EdgeApp
    http: HttpClient
    token: str
    device_id: uuid.UUID
    posted: list[int] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    def post(self) -> None:
        n = len(self.posted)
        status = self.http.post_telemetry(self.token, {"n": n})
        assert status == 200, status
        self.posted.append(n)

    def healthy(self) -> None:
        sup = self.app.supervisor
        assert sup.exit_code is None, "the edge's supervisor gave up"
        assert sup.restarts("downlink") == 0, "the DownlinkActor restarted"
        assert sup.restarts("connection") == 0, "the ConnectionActor restarted"


def edge_env(tmp_path: Path, port: int, **extra: str) -> dict[str, str]:
    return {
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_HTTP_PORT": "0",
        "EDGE_ADMIN_PORT": "0", "EDGE_ACTORS_SHARDS": "2", "EDGE_MQTT_ENABLED": "false",
        "CLOUD_ROUTING_KEY": EDGE_RK, "CLOUD_ROUTING_SECRET": EDGE_SECRET,
        "CLOUD_RPC_HOST": "127.0.0.1", "CLOUD_RPC_PORT": str(port), "CLOUD_RPC_TIMEOUT": "3000",
        "CLOUD_RPC_MAX_INBOUND_MESSAGE_SIZE": str(EDGE_MAX_INBOUND),
        "EDGE_CLOUD_RECONNECT_INTERVAL_MS": "50", "EDGE_CLOUD_RECONNECT_MAX_INTERVAL_MS": "200",
        "EDGE_CLOUD_RECONNECT_JITTER": "0", "EDGE_CLOUD_RETRY_INTERVAL_MS": "2000",
        "EDGE_CLOUD_BATCH_TIMEOUT_MS": "50", **extra,
    }


@pytest.fixture
def rogue_cloud() -> Iterator[RogueCloud]:
    fake = RogueCloud().start()
    yield fake
    fake.stop()


@pytest.fixture
def edge(tmp_path: Path, rogue_cloud: RogueCloud) -> Iterator[EdgeUnderTest]:
    app = EdgeApp(load_edge_config(env=edge_env(tmp_path, rogue_cloud.port))).start()
    http = HttpClient(app.http_port)
    try:
        device, done = app.service.create_device("sensor", token="tok-sensor")
        done.result(DEADLINE_S)
        rogue_cloud.wait_ready()
        yield EdgeUnderTest(app, http, "tok-sensor", device.id)
    finally:
        http.close()
        app.stop(timeout=30)


def _expect(rogue: RogueCloud, edge: EdgeUnderTest, frame: Frame) -> None:
    if frame.expect == "refused-connect":
        with rogue.cond:
            rogue.next_connect_code = frame.code
            refused = rogue.refused_connects
        stream = rogue.inject(frame.raw, end=True)
        rogue.wait_for(lambda: rogue.refused_connects > refused, "the refused connect")
        rogue.wait_ready(after=stream)
        return
    acks_before = len(rogue.acks_for(frame.downlink_id))
    stream = rogue.inject(frame.raw, end=frame.expect == "reconnect")
    if frame.expect == "ack":
        rogue.wait_for(lambda: len(rogue.acks_for(frame.downlink_id)) > acks_before,
                       f"an answer to downlink {frame.downlink_id}")
        ack = rogue.acks_for(frame.downlink_id)[-1]
        edge.outcomes["applied" if ack.success else "refused"] += 1
        if frame.must_fail:
            assert not ack.success, "a deviceUpdateMsg of an unknown type was applied"
        if not ack.success:
            assert ack.errorMsg, "a refused downlink without a reason"
    elif frame.expect == "reconnect":
        rogue.wait_ready(after=stream)
    else:  # "ignore": the edge stays on the stream and answers the next downlink on it
        probe = rogue.new_id()
        assert rogue.inject(_response(downlinkMsg=edge_pb2.DownlinkMsg(downlinkMsgId=probe))) == stream
        rogue.wait_for(lambda: rogue.acks_for(probe), f"an answer to probe downlink {probe}")
        assert [a.success for a in rogue.acks_for(probe)] == [True]
        ready = rogue.ready()
        assert ready is not None and ready.number == stream, "the edge left the stream"


def test_rogue_cloud_never_breaks_the_edge_and_loses_nothing(
        tmp_path: Path, rogue_cloud: RogueCloud, edge: EdgeUnderTest, soak: bool,
        errors: list[dict[str, Any]]) -> None:
    ids = itertools.count(2_000_000)

    @examples(soak, default=120, long=2000)
    @given(data=st.data())
    def prop(data: st.DataObject) -> None:
        frame = data.draw(rogue_frames(next(ids)))
        edge.outcomes[frame.expect] += 1
        _expect(rogue_cloud, edge, frame)
        edge.healthy()
        edge.post()
        assert crashes(errors) == []

    prop()
    if not soak:
        assert {"applied", "refused", "reconnect", "ignore", "refused-connect"} <= set(edge.outcomes), \
            edge.outcomes

    # The rogue turns honest: the real reference cloud gets everything the edge accepted, once.
    honest = CloudServer(load_cloud_config(env={
        "CLOUD_DATA_DIR": str(tmp_path / "honest"), "EDGES_RPC_HOST": "127.0.0.1",
        "EDGES_RPC_PORT": "0", "CLOUD_ADMIN_HOST": "127.0.0.1", "CLOUD_ADMIN_PORT": "0"})).start()
    try:
        honest.service.create_edge("edge", routing_key=EDGE_RK, secret=EDGE_SECRET)
        rogue_cloud.honest = honest
        rogue_cloud.inject(b"\xff", end=True)  # the edge reconnects, to the honest cloud now
        edge.post()
        app = edge.app

        def drained() -> bool:
            with app.store.read() as txn:
                events = list(EventLog(app.store).iter_events(txn))
            return all(e.status is not Status.PENDING for e in events) \
                and app.link_board.value.get("in_flight_messages") == 0

        wait_until(drained, timeout=60, what="the edge's queue to drain into the honest cloud")
        edge.healthy()
        with app.store.read() as txn:
            events = list(EventLog(app.store).iter_events(txn))
        assert [e for e in events if e.status is Status.DEAD] == []
        applied = honest.service.events(EDGE_RK)
        assert sorted(e.seq for e in applied) == sorted(e.seq for e in events), "lost or duplicated"
        assert len({e.seq for e in applied}) == len(applied)
        values = [e.body["values"]["n"] for e in applied if e.action == Action.TIMESERIES_UPDATED]
        assert sorted(values) == edge.posted
        assert values == edge.posted, "applied out of order"
    finally:
        rogue_cloud.honest = None
        honest.stop()
    assert crashes(errors) == []


# == regression tests for the defects found ========================================================

DEEP = 20_000  # past the recursion limit, within the cloud's 64 KiB message limit


def _telemetry_json_v(text: str) -> dict[str, list[Any]]:
    kv = transport_pb2.KeyValueProto(key="j", type=transport_pb2.JSON_V, json_v=text)
    return {"entityData": [edge_pb2.EntityDataProto(
        entityIdMSB=1, entityIdLSB=2, entityType="DEVICE", edgeSeqId=7,
        postTelemetryMsg=transport_pb2.PostTelemetryMsg(
            tsKvList=[transport_pb2.TsKvListProto(ts=1, kv=[kv])]))]}


def _device_entity(text: str) -> dict[str, list[Any]]:
    device = uuid.UUID("0b7f0e59-7a43-4f0e-9b1c-3c0e8e1f2a3b")
    msb, lsb = uuid_halves(device)
    return {"deviceUpdateMsg": [edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
        entity=text.replace("ID", str(device)), edgeSeqId=7)]}


@pytest.mark.parametrize("payloads", [
    _device_entity("[" * DEEP),
    _telemetry_json_v("[" * DEEP),
    _device_entity('{"id": {"entityType": "DEVICE", "id": "ID"}, "name": "n", "createdTime": 1e400}'),
], ids=["deep-device-json", "deep-json-v", "infinite-createdTime"])
def test_cloud_rejects_uplink_payloads_that_make_python_raise(
        rogue: Rogue, errors: list[dict[str, Any]], payloads: dict[str, list[Any]]) -> None:
    client = LinkClient(rogue.cloud.port)
    try:
        assert client.connect(ROGUE_RK, ROGUE_SECRET, store_id="bugs").responseCode == edge_pb2.ACCEPTED
        client.sync(full=False)
        resp = client.uplink(**payloads)
        assert (resp.success, resp.retryable, resp.rejectedEdgeSeqId) == (False, False, 7)
        assert resp.errorMsg
    finally:
        client.close()
    assert crashes(errors) == []
    assert rogue.cloud.service.events(ROGUE_RK) == []


def test_a_stream_aborted_before_its_connect_was_handled_leaves_no_connected_edge(
        rogue: Rogue) -> None:
    edge = rogue.cloud.service.edge(ROGUE_RK)
    frames = [connect_frame("aborted"), b"\xff"]  # the garbage aborts the RPC at once
    started = rogue.handlers.started
    code, _, _ = RawStream(rogue.channel, frames).finish()
    assert code is grpc.StatusCode.INTERNAL
    # The connect's secret check (scrypt, ~0.1 s) may still run after the abort: wait until the
    # stream's handler returned, after which nothing of this stream can register it.
    rogue.handlers.wait_all_returned_but(1, started=started + 1)  # the good edge's runs
    assert not rogue.cloud.registry.is_connected(edge.edge_id), "a dead stream is the edge's stream"


def _downlink_device(entity: str) -> edge_pb2.DownlinkMsg:
    msb, lsb = uuid_halves(uuid.uuid4())
    return edge_pb2.DownlinkMsg(deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
        msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb, entity=entity)])


def _downlink_json_v(text: str) -> edge_pb2.DownlinkMsg:
    msb, lsb = uuid_halves(uuid.uuid4())
    kv = transport_pb2.KeyValueProto(key="j", type=transport_pb2.JSON_V, json_v=text)
    return edge_pb2.DownlinkMsg(entityData=[edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE", postAttributeScope="SHARED_SCOPE",
        attributesUpdatedMsg=transport_pb2.PostAttributeMsg(kv=[kv]))])


@pytest.mark.parametrize("downlink", [
    _downlink_device("[" * DEEP),
    _downlink_json_v("[" * DEEP),
    _downlink_device('{"name": "inf", "createdTime": 1e400}'),
    _downlink_device('{"name": "huge", "createdTime": 1e300}'),
    _downlink_json_v(str(2**70)),
], ids=["deep-device-json", "deep-json-v", "infinite-createdTime", "huge-createdTime",
        "json-v-beyond-64-bits"])
def test_edge_refuses_downlinks_that_make_python_raise(
        rogue_cloud: RogueCloud, edge: EdgeUnderTest, downlink: edge_pb2.DownlinkMsg) -> None:
    msg = edge_pb2.DownlinkMsg()
    msg.CopyFrom(downlink)
    msg.downlinkMsgId = rogue_cloud.new_id()
    rogue_cloud.inject(_response(downlinkMsg=msg))
    rogue_cloud.wait_for(lambda: rogue_cloud.acks_for(msg.downlinkMsgId), "the downlink's answer",
                         timeout=3)
    ack = rogue_cloud.acks_for(msg.downlinkMsgId)[-1]
    assert not ack.success and ack.errorMsg
    edge.healthy()
    edge.post()


def test_edge_survives_an_unknown_connect_response_code(tmp_path: Path) -> None:
    fake = RogueCloud().start()
    fake.next_connect_code = 42
    app = EdgeApp(load_edge_config(env=edge_env(tmp_path, fake.port))).start()
    try:
        fake.wait_for(lambda: fake.refused_connects >= 1, "the edge's connect")
        # The edge retries with backoff; the rogue accepts from the 2nd connect on.
        assert fake.wait_ready() == 2
        assert fake.refused_connects == 1
        assert app.supervisor.exit_code is None, "the agent gave up (exit code 3)"
        assert app.supervisor.restarts("connection") == 0
        _, done = app.service.create_device("after", token="tok-after")
        done.result(DEADLINE_S)
        with HttpClient(app.http_port) as http:
            assert http.post_telemetry("tok-after", {"v": 1}) == 200
    finally:
        app.stop(timeout=30)
        fake.stop()


class SteppedClock:
    """The real clocks, the monotonic one a test steps forward at once (a minute passing)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._step = 0.0

    def step(self, seconds: float) -> None:
        with self._lock:
            self._step += seconds

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        with self._lock:
            return time.monotonic() + self._step


UNDECODABLE = "Error parsing message with type 'edge.ResponseMsg': Wire format was corrupt"


def test_undecodable_messages_from_the_cloud_are_one_line_a_minute_and_all_counted(
        tmp_path: Path, rogue_cloud: RogueCloud) -> None:
    """Each message the rogue cloud sends that is not a ResponseMsg ends the edge's stream (the
    edge reconnects). Only the first of a minute is logged (grpc's own "Exception deserializing
    message!" record not at all); the others are counted in
    edge_sync_cloud_undecodable_messages_total and told in one line: before the next line when
    one comes after the minute, when the minute ends, and when the agent stops."""
    forward_stdlib_logging()  # grpc's record would come through, as in the agent
    clock = SteppedClock()
    app = EdgeApp(load_edge_config(env=edge_env(tmp_path, rogue_cloud.port)), clock=clock).start()
    lines: list[tuple[str, str]] = []

    def sink(message: Any) -> None:
        r = message.record
        if r["extra"].get("logger") == "grpc._common" \
                or any(w in r["message"] for w in ("protobuf", "undecodable")):
            lines.append((r["level"].name, r["message"]))

    handle = logger.add(sink, level="DEBUG", format="{message}")
    stream = rogue_cloud.wait_ready()

    def garbage(count: int) -> None:
        nonlocal stream
        for _ in range(count):
            rogue_cloud.inject(b"\xff", end=True)  # not a protobuf message: a bad tag
            stream = rogue_cloud.wait_ready(after=stream)  # the edge reconnected
        wait_until(lambda: app.link_board.value["state"] == "CONNECTED", timeout=DEADLINE_S,
                   what="link CONNECTED")

    def counted() -> float:
        return app.metrics.value("edge_sync_cloud_undecodable_messages_total")

    first = ("WARNING", f"the cloud sent a message that is not valid protobuf (DecodeError: "
             f"{UNDECODABLE}): the stream ends and the link reconnects; further ones within a "
             "minute are only counted (edge_sync_cloud_undecodable_messages_total) and told in "
             "one line")

    def more(n: int) -> tuple[str, str]:
        return "WARNING", f"{n} more undecodable messages from the cloud in the last minute"

    try:
        _, done = app.service.create_device("sensor", token="tok-sensor")
        done.result(DEADLINE_S)
        garbage(4)
        assert (lines, counted()) == ([first], 4)

        clock.step(61)  # the minute ends; the next one tells the three first
        garbage(1)
        assert (lines, counted()) == ([first, more(3), first], 5)

        garbage(2)
        clock.step(61)  # the minute ends: the edge wakes for it (a post makes it look at once)
        with HttpClient(app.http_port) as http:
            assert http.post_telemetry("tok-sensor", {"n": 1}) == 200
        wait_until(lambda: len(lines) == 4, timeout=DEADLINE_S, what="the minute's line")
        assert (lines, counted()) == ([first, more(3), first, more(2)], 7)

        garbage(3)
        assert lines == [first, more(3), first, more(2), first]
    finally:
        app.stop(timeout=30)
        logger.remove(handle)
    assert (lines, counted()) == ([first, more(3), first, more(2), first, more(2)], 10)
