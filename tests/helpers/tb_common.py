"""What the two ThingsBoard emulators (tests/helpers/tb_server.py, tests/helpers/tb_edge.py)
share, written from ThingsBoard's Java sources, independently of edge_sync's own helpers (an
emulator that reused the code under test would agree with it by construction):

- time-based ids as ThingsBoard makes and reads them: ``Uuids.timeBased()`` /
  ``Uuids.unixTimestamp()`` of the Cassandra driver, which a ThingsBoard Edge calls on the tenant
  and edge ids of EdgeConfiguration (TenantCloudProcessor.createTenantIfNotExists,
  EdgeCloudProcessor.processEdgeConfigurationMsgFromCloud) and which throws for any UUID that is
  not version 1;
- UUIDs as two signed int64 halves (``new UUID(msb, lsb)`` / ``getMostSignificantBits()``);
- ``EdgeUtils.nextPositiveInt()``: the random positive int32 ids of UplinkMsg and DownlinkMsg;
- ``EdgeUtils.createErrorMsgFromRootCauseAndStackTrace``: the errorMsg of a failure answer, the
  root cause's message followed by stack frames, one per line (common/data EdgeUtils.java);
- the ``transport.KeyValueProto`` values as Java's JsonConverter reads them;
- the names of the payload lists of a DownlinkMsg, in the order a ThingsBoard Edge processes
  them (DefaultDownlinkMessageService.processDownlinkMsg).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from typing import Any

from edge_sync.proto import edge_pb2, transport_pb2

__all__ = [
    "DOWNLINK_KINDS",
    "NULL_UUID",
    "JavaError",
    "TimeBased",
    "downlink_kinds",
    "halves",
    "java_error_text",
    "kv_value",
    "kv_values",
    "next_positive_int",
    "typed_id",
    "unix_timestamp",
    "uuid_from",
]

NULL_UUID = uuid.UUID("13814000-1dd2-11b2-8080-808080808080")
"""ThingsBoard's EntityId.NULL_UUID (ModelConstants.NULL_UUID): 'no customer'."""

_START_EPOCH_MILLIS = -12219292800000
"""The Cassandra driver's Uuids.START_EPOCH_MILLIS: 1582-10-15 in unix ms."""
_INT64 = 1 << 64

_rng = random.Random()
_rng_lock = threading.Lock()


def next_positive_int() -> int:
    """EdgeUtils.nextPositiveInt(): ThreadLocalRandom.nextInt(0, Integer.MAX_VALUE)."""
    with _rng_lock:
        return _rng.randrange(0, 2**31 - 1)


def halves(value: uuid.UUID) -> tuple[int, int]:
    """(getMostSignificantBits(), getLeastSignificantBits()) of a java.util.UUID."""
    msb, lsb = value.int >> 64, value.int & (_INT64 - 1)
    return (msb - _INT64 if msb >= 1 << 63 else msb, lsb - _INT64 if lsb >= 1 << 63 else lsb)


def uuid_from(msb: int, lsb: int) -> uuid.UUID:
    """new UUID(msb, lsb)."""
    return uuid.UUID(int=((msb % _INT64) << 64) | (lsb % _INT64))


def typed_id(entity_type: str, value: uuid.UUID) -> dict[str, str]:
    """An EntityId as Jackson writes it: {"entityType": ..., "id": ...}."""
    return {"entityType": entity_type, "id": str(value)}


class JavaError(Exception):
    """A Java exception as a ThingsBoard peer would throw it: its class name (for the stack)
    and message (the root cause's message is what travels in errorMsg)."""

    def __init__(self, message: str, java_class: str = "java.lang.RuntimeException",
                 frames: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.java_class = java_class
        self.frames = frames


def java_error_text(err: JavaError) -> str:
    """EdgeUtils.createErrorMsgFromRootCauseAndStackTrace: the root cause's message, then its
    stack frames (at most STACK_TRACE_LIMIT + 1 of them), each on its own line."""
    frames = err.frames or (
        "org.thingsboard.server.dao.service.DataValidator.validate(DataValidator.java:78)",
        "org.thingsboard.server.service.edge.rpc.EdgeGrpcSession.processUplinkMsg"
        "(EdgeGrpcSession.java:853)",
    )
    return "\n".join((err.message, *frames))


def unix_timestamp(value: uuid.UUID) -> int:
    """Uuids.unixTimestamp(uuid) of the Cassandra driver: the unix time in ms of a version 1
    UUID; IllegalArgumentException (JavaError here) for any other version."""
    if value.version != 1:
        raise JavaError(
            f"Can only retrieve the unix timestamp for version 1 uuid (provided version "
            f"{value.version})", "java.lang.IllegalArgumentException")
    return value.time // 10_000 + _START_EPOCH_MILLIS


class TimeBased:
    """Uuids.timeBased(): version 1 UUIDs of the current time (100 ns ticks since 1582-10-15),
    strictly increasing within this generator; clock sequence and node random once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0
        self._low = (0x8000_0000_0000_0000 | (random.getrandbits(14) << 48)
                     | random.getrandbits(48) | (1 << 40))

    def make(self, unix_ms: int | None = None) -> uuid.UUID:
        ms = int(time.time() * 1000) if unix_ms is None else unix_ms
        ticks = (ms - _START_EPOCH_MILLIS) * 10_000
        with self._lock:
            if unix_ms is None:
                ticks = max(ticks, self._last + 1)
                self._last = ticks
        msb = (((ticks & 0xFFFF_FFFF) << 32) | (((ticks >> 32) & 0xFFFF) << 16)
               | 0x1000 | ((ticks >> 48) & 0x0FFF))
        return uuid.UUID(int=(msb << 64) | self._low)


def kv_value(kv: transport_pb2.KeyValueProto) -> Any:
    """One KeyValueProto's value (JsonConverter: bool, long, double, string, JSON)."""
    if kv.type == transport_pb2.BOOLEAN_V:
        return kv.bool_v
    if kv.type == transport_pb2.LONG_V:
        return kv.long_v
    if kv.type == transport_pb2.DOUBLE_V:
        return kv.double_v
    if kv.type == transport_pb2.STRING_V:
        return kv.string_v
    return json.loads(kv.json_v)


def kv_values(kvs: Any) -> dict[str, Any]:
    return {kv.key: kv_value(kv) for kv in kvs}


DOWNLINK_KINDS = (
    "syncCompletedMsg", "edgeConfiguration", "entityData", "deviceRpcCallMsg",
    "deviceProfileUpdateMsg", "deviceUpdateMsg", "deviceCredentialsUpdateMsg",
    "assetProfileUpdateMsg", "assetUpdateMsg", "entityViewUpdateMsg", "ruleChainUpdateMsg",
    "ruleChainMetadataUpdateMsg", "dashboardUpdateMsg", "alarmUpdateMsg", "alarmCommentUpdateMsg",
    "customerUpdateMsg", "relationUpdateMsg", "widgetsBundleUpdateMsg", "widgetTypeUpdateMsg",
    "userUpdateMsg", "userCredentialsUpdateMsg", "adminSettingsUpdateMsg", "otaPackageUpdateMsg",
    "queueUpdateMsg", "tenantProfileUpdateMsg", "notificationTemplateUpdateMsg",
    "notificationTargetUpdateMsg", "notificationRuleUpdateMsg", "oAuth2ClientUpdateMsg",
    "oAuth2DomainUpdateMsg", "tenantUpdateMsg", "resourceUpdateMsg", "calculatedFieldUpdateMsg",
    "aiModelUpdateMsg", "apiKeyUpdateMsg",
)
"""The payloads of a DownlinkMsg in the order a ThingsBoard Edge processes them
(DefaultDownlinkMessageService.processDownlinkMsg; apiKeyUpdateMsg, which it does not list, last)."""


def downlink_kinds(msg: edge_pb2.DownlinkMsg) -> tuple[str, ...]:
    """The kinds present in a DownlinkMsg, in DOWNLINK_KINDS order."""
    out = []
    for name in DOWNLINK_KINDS:
        if name in ("syncCompletedMsg", "edgeConfiguration"):
            if msg.HasField(name):
                out.append(name)
        elif len(getattr(msg, name)):
            out.append(name)
    return tuple(out)
