"""A ThingsBoard CE 4.3 server as an edge meets it, for tests of the real `edge-sync run`: a
real gRPC server on 127.0.0.1 (port 0) implementing EdgeRpcService.handleMsgs, which behaves
by the rules below, read from ThingsBoard CE v4.3.1.3's Java sources (paths relative to the
thingsboard/thingsboard repository), and records everything it receives and applies.

    server = TbServer("rk-1", "secret-1", sync=SyncContent(widget_types=100)).start()
    ... edge-sync run with CLOUD_RPC_PORT=server.port ...
    server.wait_for(lambda: server.points(device_id), what="telemetry")
    server.stop()

Connect (application/.../service/edge/rpc/EdgeGrpcSession.java, processConnect)
- Only a RequestMsg of type CONNECT_RPC_MESSAGE is read before the edge is connected; anything
  else is ignored.
- Unknown routing key: BAD_CREDENTIALS "Failed to find the edge! Routing key: <key>"; wrong
  secret: BAD_CREDENTIALS "Failed to validate the edge! Provided request secret: <secret>".
  Either way the stream then ends with an error (outputStream.onError: status UNKNOWN).
- ACCEPTED carries EdgeConfiguration (EdgeMsgConstructorUtils.constructEdgeConfiguration):
  edge, tenant and customer ids (time-based, version 1 UUIDs, Uuids.timeBased(); the customer
  is NULL_UUID, the edge assigned to none, unless ``customer`` names the edge's), name, type,
  routingKey, secret, additionalInfo, cloudType "CE"; and maxInboundMessageSize
  (edges.rpc.max_inbound_message_size, 4 MiB). It never carries edge-sync's cloudCapabilities
  extension, and no uplink answer ever carries retryable or rejectedEdgeSeqId: a ThingsBoard
  server does not know those fields.
- The edge's announced version is kept (processSaveEdgeVersionAsAttribute); so is the
  client's maxInboundMessageSize, and a downlink larger than that is dropped, not sent.

Sync (EdgeGrpcSession.startSyncProcess / doSync / processEdgeEvents, EdgeSyncCursor.java,
fetch/*EdgeEventFetcher.java, thingsboard.yml section edges.storage)
- A SyncRequestMsg starts a sync; fullSync defaults to false when the field is absent. A
  second SyncRequestMsg while one runs is ignored ("Sync is already started") and never
  answered. The sync counts as running until its SyncCompletedMsg is acknowledged and the
  sync's own thread has seen that (ThingsBoard clears syncInProgress in the pack future's
  callback, on another executor: markSyncCompletedSendEdgeEventUpdate), so a request right
  behind that acknowledgement may still be ignored.
- The fetchers run in EdgeSyncCursor's order. Full sync: tenant (TenantUpdateMsg with its
  TenantProfileUpdateMsg in one DownlinkMsg, TenantEdgeProcessor), queues, rule chains (the
  RuleChainUpdateMsg and its RuleChainMetadataUpdateMsg in one DownlinkMsg,
  RuleChainEdgeProcessor), admin settings (system, then tenant), tenant admin users, system
  widget types, tenant widget types, system widgets bundles; then, full or not: default
  profiles (device and asset), device profiles, asset profiles, devices (DeviceUpdateMsg,
  DeviceCredentialsUpdateMsg and DeviceProfileUpdateMsg in one DownlinkMsg,
  DeviceEdgeProcessor.convertEdgeEventToDownlink); full sync again: device profiles a second
  time ("to update software and hardware fields"). Then a DownlinkMsg with SyncCompletedMsg.
- Each fetcher is read in pages of max_read_records_count (50) events; a page is one pack of
  DownlinkMsgs, each with a random downlinkMsgId (EdgeUtils.nextPositiveInt), all sent at
  once (sendDownlinkMsgsPack). The next pack waits until every DownlinkMsg of this one is
  answered. success=true removes it from the pack; success=false removes it too unless it
  carries entityData (onDownlinkResponse). What is still unanswered is resent after
  sleep_between_batches (60 s), at most MAX_DOWNLINK_ATTEMPTS (3) sends in all, then the pack
  is given up ("Next messages are going to be discarded") and the sync moves on.

Uplinks (EdgeGrpcSession.onUplinkMsg / processUplinkMsg, isRateLimitViolated)
- A rate-limited message is answered at once, success=false, "Failed to process uplink
  message. Rate limit reached", and nothing of it is processed (here: the first
  ``rate_limited_first`` messages).
- Otherwise the payload lists are walked in processUplinkMsg's fixed order (device profiles,
  devices, credentials, asset profiles, assets, rule chains, ..., entityData, alarms, ...,
  attribute and relation requests, ..., RPC calls): whatever each processor writes is written
  when the message arrives, while the answer waits for every future of the message
  (Futures.allAsList), so it comes later and answers come out of order (here: after
  ``answer_delay``). The work is not transactional: a failed payload leaves the others applied.
  A processor that throws synchronously (an entity JSON that does not parse, an attribute scope
  that is no AttributeScope, credentials that cannot be saved) ends the walk: the payloads after
  it in that order are not processed. A failure answer is success=false with
  EdgeUtils.createErrorMsgFromRootCauseAndStackTrace: the root cause's message and its stack
  frames, one per line. It never says whether a retry could help.
- No deduplication: uplinkMsgId is opaque; a message sent twice is processed twice (the
  records below count every application).
- Devices (processor/device/DeviceEdgeProcessor.java, BaseDeviceProcessor.java,
  dao/.../validator/DeviceDataValidator.java): created or updated from the JSON of
  `entity` with the id of idMSB/idLSB; validated: a blank name -> "Device name should be
  specified!", no tenantId -> "Device should be assigned to tenant!", another tenant than the
  edge's -> "Device is referencing to non-existent tenant!", a customer that is neither
  NULL_UUID nor known (the edge's ``customer``, a synced device's) -> "Can't assign device to
  non-existent customer!"; a device's customer is the JSON's (DeviceEdgeProcessor.setCustomerId).
  A validation failure fails that payload only. A name another device already has is made
  unique (name + "_" + 15 random letters, generateUniqueNameIfDuplicateExists). ENTITY_DELETED
  deletes a known device. A missing deviceProfileId is tolerated.
- Credentials (BaseDeviceProcessor.updateDeviceCredentials, DeviceCredentialsDataValidator):
  for an unknown device they are skipped (success); an empty credentialsId -> "Device
  credentials id should be specified!"; a token another device has -> "Device credentials are
  already assigned to another device!" (thrown synchronously).
- entityData (processor/telemetry/BaseTelemetryProcessor.java, processTelemetryMsg): for an
  entity the server does not know, skipped with success ("Skipping telemetry update msg
  because entity doesn't exists"); postTelemetryMsg: every tsKvList entry is applied;
  postAttributesMsg / attributesUpdatedMsg: postAttributeScope must name an AttributeScope
  (CLIENT_SCOPE, SERVER_SCOPE, SHARED_SCOPE), else "No enum constant
  org.thingsboard.server.common.data.AttributeScope.<scope>" (thrown synchronously);
  attributeTs is the attributes' time, the server's clock when absent.
- Alarms (processor/alarm/BaseAlarmProcessor.java, dao/.../validator/AlarmDataValidator.java):
  the JSON must parse with a typed originator (an EntityId needs entityType and id) and a known
  severity, else "cannot be converted to alarm" (thrown synchronously); no originator: skipped
  with success; ENTITY_CREATED validates: a blank type -> "Alarm type should be specified!",
  no tenantId -> "Alarm should be assigned to tenant!", another tenant -> "Alarm is referencing
  to non-existent tenant!"; then the customer (BaseAlarmService.createAlarm, the originator's
  customer by EntityService.fetchEntityCustomerId: NULL_UUID for a device of none, nothing for
  an originator the server does not know): a customerId in the JSON while the originator is
  unknown -> "Can't assign alarm to customer. Originator is not assigned to customer!", one
  other than the originator's -> "Can't assign alarm to customer. Originator belongs to
  different customer!"; the alarm is stored with the originator's customer (none given: filled
  in). ALARM_ACK / ALARM_CLEAR / ENTITY_DELETED act on a known alarm only.
- DeviceRpcCallMsg with a responseMsg (DeviceEdgeProcessor.processDeviceRpcResponseFromEdge):
  a non-empty responseMsg.error must name an RpcError (RpcError.valueOf, else "No enum constant
  org.thingsboard.server.common.data.rpc.RpcError.<error>", thrown: the walk ends there); the
  answer goes to the device actor as FromDeviceRpcResponseActorMsg(requestId, ..., requestUuid),
  which takes the pending request by the device and requestId
  (DeviceActorMessageProcessor.processRpcResponsesFromEdge): a match settles the REST call, no
  match (unknown id, already answered, or its expirationTime passed: the actor's timeout
  removed it) is "stale" and dropped. Every answer is recorded (``rpc_answers``) with that fate.

Server-side RPC to a device of the edge (``send_rpc``; DeviceActorMessageProcessor
.processRpcRequest / saveRpcRequestToEdgeQueue, EdgeMsgConstructorUtils.constructDeviceRpcCallMsg)
- requestId is the device actor's rpcSeq++: 0 for the device's first request, then 1, 2, ...
- An expirationTime already past: not sent ("Ignoring message due to exp time reached"). The edge
  not connected: not queued either ("The Edge is currently offline or unreachable"): ThingsBoard
  keeps no RPC for an offline edge.
- The edge event body {requestId, requestUUID, oneway, expirationTime, method, params (JSON
  text), persisted, retries, additionalInfo} becomes one DeviceRpcCallMsg in a DownlinkMsg of its
  own with a random downlinkMsgId: deviceIdMSB/LSB, requestUuidMSB/LSB, requestId, oneway,
  expirationTime, persisted, retries (a null retries is a JSON null node: asInt() gives 0),
  additionalInfo (JacksonUtil.toString of the node: "null" when there is none), requestMsg{method,
  params}; no serviceId or sessionId. It is sent as a pack of one (resent after
  sleep_between_batches while unanswered, MAX_DOWNLINK_ATTEMPTS sends in all).
- Redeliveries as ThingsBoard makes them: the same DownlinkMsg sent again (its answer was lost;
  ``copies``), or the same edge event read again after a reconnect, converted anew with a new
  random downlinkMsgId (``redeliver``).
- Relations (processor/relation/BaseRelationProcessor.processRelationMsg): a relationUpdateMsg
  whose entity is no EntityRelation JSON fails ("relationUpdateMsg {...} cannot be converted to
  entity relation"; a failed future: the walk goes on); ENTITY_CREATED / ENTITY_UPDATED saves
  the relation when both ends exist (a device, the tenant, or an end of a relation made with
  ``relate``), else it is skipped with success ("Skipping relating update msg because from/to
  entity doesn't exists on edge"); ENTITY_DELETED deletes it. Relations are kept in the COMMON
  group, one per (from, to, type).
- RelationRequestMsg (sync/DefaultEdgeRequestsService.processRelationRequestMsg): an entityType
  that is no EntityType throws ("No enum constant ...EntityType.<type>": the walk ends); else the
  relations from and to the entity, one level, COMMON group (RelationsSearchParameters'
  default; findRelationByQuery FROM, then TO), except those with an EDGE end, are each saved as
  a RELATION edge event, ADDED, whose body is the relation: RelationEdgeProcessor
  .convertEdgeEventToDownlink makes each a DownlinkMsg of its own (random downlinkMsgId) with one
  relationUpdateMsg ENTITY_CREATED_RPC_MESSAGE, its entity the EntityRelation JSON with version
  null (EdgeMsgConstructorUtils.constructRelationUpdatedMsg). ThingsBoard filters nothing by what
  is assigned to the edge. The answers go out once no sync runs on the edge's stream (edge events
  wait for the sync, EdgeGrpcSession.interruptGeneralProcessingOnSync) as one pack, resent as an
  RPC pack is (below); a pack whose stream ends before it is answered is not sent again (this
  server keeps no edge event queue). Every request is recorded (``applied`` kind
  "relation_request", value: how many relations it answered with).
- AttributesRequestMsg and the other payload kinds: recorded, answered success.

Faults to inject: ``rate_limited_first`` (above); ``refuse_device`` (a device for which it
returns a message is refused every time with that message as a DataValidationException: a
device the server will never accept); ``answer_delay`` (fixed, a random range, or per message);
``hold_sync`` (each sync waits before its SyncCompletedMsg until ``release_sync()``, which
opens the gate for good: a sync that runs as long as the test needs); ``sync_flag_clear_delay_s``
(a sync counts as running that long after its SyncCompletedMsg was acknowledged: ThingsBoard
clears syncInProgress in markSyncCompletedSendEdgeEventUpdate, a callback of the pack's future
run on ctx.getGrpcCallbackExecutorService() (EdgeGrpcSession.doSync), so a busy executor
clears it late; ``math.inf``: never, as a session whose sync failed keeps it set for good,
doSync's onFailure only logging "Exception during sync process").
"""

from __future__ import annotations

import json
import math
import queue
import random
import string
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc

from edge_sync.proto import edge_pb2, edge_pb2_grpc
from tests.helpers.grpc_server import serve_on_loopback
from tests.helpers.tb_common import (
    NULL_UUID,
    JavaError,
    TimeBased,
    halves,
    java_error_text,
    kv_values,
    next_positive_int,
    typed_id,
    uuid_from,
)
from tests.helpers.wait import wait_until

__all__ = ["RATE_LIMIT_ERROR", "RPC_ERRORS", "Applied", "Received", "RpcAnswer", "RpcSent",
           "SyncContent", "SyncDevice", "TbServer"]

DEADLINE_S = 10.0
MAX_READ_RECORDS_COUNT = 50
MAX_DOWNLINK_ATTEMPTS = 3
MAX_INBOUND_MESSAGE_SIZE = 4 * 1024 * 1024
RATE_LIMIT_ERROR = "Failed to process uplink message. Rate limit reached"
SCOPES = ("CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE")
SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING", "INDETERMINATE")
RPC_ERRORS = ("NOT_FOUND", "FORBIDDEN", "NO_ACTIVE_CONNECTION", "TIMEOUT", "INTERNAL")
"""org.thingsboard.server.common.data.rpc.RpcError"""
ENTITY_TYPES = ("TENANT", "CUSTOMER", "USER", "DASHBOARD", "ASSET", "DEVICE", "ALARM",
                "RULE_CHAIN", "RULE_NODE", "ENTITY_VIEW", "WIDGETS_BUNDLE", "WIDGET_TYPE",
                "TENANT_PROFILE", "DEVICE_PROFILE", "ASSET_PROFILE", "API_USAGE_STATE",
                "TB_RESOURCE", "OTA_PACKAGE", "EDGE", "RPC", "QUEUE", "NOTIFICATION_TARGET",
                "NOTIFICATION_TEMPLATE", "NOTIFICATION_REQUEST", "NOTIFICATION",
                "NOTIFICATION_RULE", "QUEUE_STATS", "OAUTH2_CLIENT", "DOMAIN", "MOBILE_APP",
                "MOBILE_APP_BUNDLE", "CALCULATED_FIELD", "JOB", "ADMIN_SETTINGS", "AI_MODEL",
                "API_KEY")
"""org.thingsboard.server.common.data.EntityType (the names an entityType may have)"""
_END = object()


@dataclass(frozen=True)
class SyncDevice:
    """A device assigned to the edge on the server, sent in a sync."""

    name: str
    token: str
    type: str = "default"
    customer: uuid.UUID | None = None  # the customer it is assigned to; None: the tenant's


@dataclass(frozen=True)
class SyncContent:
    """What the server has to send in a full sync (besides the tenant, its profile and the
    default profiles, which it always has)."""

    queues: tuple[str, ...] = ("Main", "HighPriority", "SequentialByOriginator")
    rule_chain: bool = True
    admin_settings: tuple[str, ...] = ("general", "mail")
    tenant_admins: int = 1
    widget_types: int = 0
    widgets_bundles: int = 0
    devices: tuple[SyncDevice, ...] = ()


@dataclass
class Received:
    """One UplinkMsg as received, and its answer once sent."""

    stream: int
    at: float
    msg: edge_pb2.UplinkMsg
    answer: edge_pb2.UplinkResponseMsg | None = None
    answered_at: float | None = None


@dataclass(frozen=True)
class Applied:
    """One application of a payload (each resend of a message applies its payloads again)."""

    uplink_msg_id: int
    kind: str  # "device_created", "credentials", "telemetry", "attributes", "alarm_created", ...
    entity_id: uuid.UUID
    value: Any
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class RpcSent:
    """A server-side RPC request as the server sent it to the edge."""

    device_id: uuid.UUID
    request_uuid: uuid.UUID
    request_id: int
    downlink: edge_pb2.DownlinkMsg

    @property
    def msg(self) -> edge_pb2.DeviceRpcCallMsg:
        return self.downlink.deviceRpcCallMsg[0]


@dataclass(frozen=True)
class RpcAnswer:
    """A DeviceRpcCallMsg answer received from the edge, and what the device actor made of it:
    "settled" (it matched a pending request) or "stale"."""

    uplink_msg_id: int
    msg: edge_pb2.DeviceRpcCallMsg
    fate: str
    at: float = field(default_factory=time.monotonic)


@dataclass
class _Stream:
    number: int
    outbox: queue.SimpleQueue[Any] = field(default_factory=queue.SimpleQueue)
    accepted: bool = False
    ended: bool = False
    client_max_inbound: int = 0
    sync_running: bool = False
    pending: dict[int, edge_pb2.DownlinkMsg] = field(default_factory=dict)  # the pack in flight


class _Abort(Exception):
    """A processor threw synchronously: processUplinkMsg's walk ends with this failure."""

    def __init__(self, err: JavaError) -> None:
        super().__init__(err.message)
        self.err = err


def _validation(message: str) -> JavaError:
    return JavaError(message, "org.thingsboard.server.dao.exception.DataValidationException")


class TbServer(edge_pb2_grpc.EdgeRpcServiceServicer):
    def __init__(
        self,
        routing_key: str,
        secret: str,
        *,
        name: str = "tb-edge",
        sync: SyncContent = SyncContent(),
        answer_delay: float | tuple[float, float] | Callable[[edge_pb2.UplinkMsg], float]
        = (0.005, 0.05),
        refuse_device: Callable[[dict[str, Any]], str | None] | None = None,
        rate_limited_first: int = 0,
        sleep_between_batches_s: float = 60.0,
        seed: int | None = None,
        customer: uuid.UUID | None = None,
        hold_sync: bool = False,
        sync_flag_clear_delay_s: float = 0.0,
    ) -> None:
        self.routing_key = routing_key
        self.secret = secret
        self.name = name
        self.sync_content = sync
        self.answer_delay = answer_delay
        self.refuse_device = refuse_device
        self.rate_limited_first = rate_limited_first
        self.sleep_between_batches_s = sleep_between_batches_s
        self.rng = random.Random(seed)
        self.ids = TimeBased()
        self.tenant_id = self.ids.make()
        self.tenant_profile_id = self.ids.make()
        self.edge_id = self.ids.make()
        self.customer_id = customer if customer is not None else NULL_UUID  # the edge's
        self.customers = {c for c in (customer, *(d.customer for d in sync.devices))
                          if c is not None}  # the customers the tenant has
        self.device_profile_id = self.ids.make()
        self.asset_profile_id = self.ids.make()
        self.rule_chain_id = self.ids.make()
        self.cond = threading.Condition()
        # records (under cond)
        self.connects: list[edge_pb2.ConnectRequestMsg] = []
        self.connect_answers: list[int] = []  # ConnectResponseCode of each connect
        self.sync_requests: list[bool] = []
        self.sync_starts: list[bool] = []  # the requests a sync was started for (fullSync)
        self._sync_held = hold_sync
        self.sync_flag_clear_delay_s = sync_flag_clear_delay_s
        self.uplinks: list[Received] = []
        self.receipts: Counter[int] = Counter()  # uplinkMsgId -> times received
        self.applied: list[Applied] = []
        self.devices: dict[uuid.UUID, dict[str, Any]] = {}
        self.credentials: dict[uuid.UUID, str] = {}
        self.alarms: dict[uuid.UUID, dict[str, Any]] = {}
        self.relations: list[dict[str, Any]] = []  # EntityRelation JSON, COMMON group
        self.relation_answers: list[edge_pb2.DownlinkMsg] = []  # RELATION edge events sent
        self.downlinks_sent: list[tuple[int, edge_pb2.DownlinkMsg]] = []  # (attempt, msg)
        self.downlink_acks: list[edge_pb2.DownlinkResponseMsg] = []
        self.discarded: list[edge_pb2.DownlinkMsg] = []
        self.sync_completed = 0  # syncs whose SyncCompletedMsg was acknowledged
        self.edge_version: int | None = None
        self.rpc_sent: list[RpcSent] = []
        self.rpc_answers: list[RpcAnswer] = []
        self._rpc_seq: dict[uuid.UUID, int] = {}  # the device actor's rpcSeq
        self._rpc_pending: dict[tuple[uuid.UUID, int], tuple[uuid.UUID, int]] = {}
        self._streams: list[_Stream] = []
        self._timers: list[threading.Timer] = []
        self._server: grpc.Server | None = None
        self._stopping = False
        self.port = 0
        for d in sync.devices:
            device_id = self.ids.make()
            self.devices[device_id] = self._device_json(device_id, d.name, d.type, d.customer)
            self.credentials[device_id] = d.token

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> TbServer:
        self._server, self.port = serve_on_loopback(self, name="tb-server",
                                                    max_inbound=MAX_INBOUND_MESSAGE_SIZE)
        return self

    def stop(self) -> None:
        with self.cond:
            self._stopping = True
            for t in self._timers:
                t.cancel()
            for s in self._streams:
                s.outbox.put(_END)
            self.cond.notify_all()
        if self._server is not None:
            self._server.stop(0.5).wait(5)

    def release_sync(self) -> None:
        """Let every held sync, and every later one, send its SyncCompletedMsg."""
        with self.cond:
            self._sync_held = False
            self.cond.notify_all()

    def __enter__(self) -> TbServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests read -------------------------------------------------------------------------

    def wait_for(self, predicate: Callable[[], Any], *, timeout: float = DEADLINE_S,
                 what: str = "condition") -> Any:
        """predicate() evaluated under the server's lock until truthy; its value."""
        return wait_until(predicate, timeout=timeout, what=f"the ThingsBoard server: {what}",
                          condition=self.cond)

    def points(self, device_id: uuid.UUID) -> list[tuple[int, dict[str, Any]]]:
        """Every telemetry point applied for the device, (ts, values), in application order,
        each application counted (a duplicate shows twice)."""
        with self.cond:
            return [a.value for a in self.applied
                    if a.kind == "telemetry" and a.entity_id == device_id]

    def applications(self, kind: str) -> list[Applied]:
        with self.cond:
            return [a for a in self.applied if a.kind == kind]

    def answered(self) -> list[Received]:
        with self.cond:
            return [r for r in self.uplinks if r.answer is not None]

    def payload_receipts(self) -> Counter[bytes]:
        """How many times each payload was received, over every UplinkMsg. A payload's bytes
        (with the name of its list) are the same whenever the edge sends the same event again,
        under whatever uplinkMsgId, so a count above 1 is a resend."""
        out: Counter[bytes] = Counter()
        with self.cond:
            for r in self.uplinks:
                for fd, value in r.msg.ListFields():
                    if fd.is_repeated:
                        for item in value:
                            out[fd.name.encode() + b":"
                                + item.SerializeToString(deterministic=True)] += 1
        return out

    def failures(self) -> list[tuple[int, str]]:
        """(uplinkMsgId, errorMsg) of every failure answer sent."""
        with self.cond:
            return [(r.msg.uplinkMsgId, r.answer.errorMsg) for r in self.uplinks
                    if r.answer is not None and not r.answer.success]

    def device_named(self, name: str) -> tuple[uuid.UUID, dict[str, Any]] | None:
        with self.cond:
            for device_id, device in self.devices.items():
                if device.get("name") == name:
                    return device_id, device
        return None

    def first_sends(self) -> list[edge_pb2.DownlinkMsg]:
        """Every DownlinkMsg as first sent (resends left out), in sending order."""
        with self.cond:
            return [m for attempt, m in self.downlinks_sent if attempt == 1]

    def answers_to(self, request_uuid: uuid.UUID) -> list[RpcAnswer]:
        """Every answer received for the request, in arrival order."""
        with self.cond:
            return [a for a in self.rpc_answers
                    if uuid_from(a.msg.requestUuidMSB, a.msg.requestUuidLSB) == request_uuid]

    # -- changes on the server while the edge is away ----------------------------------------------

    def change_device(self, device_id: uuid.UUID, **fields: Any) -> None:
        """Change fields of a device's JSON (its label, say): the next sync sends the device
        as it is then."""
        with self.cond:
            self.devices[device_id] = {**self.devices[device_id], **fields}
            self.cond.notify_all()

    def replace_device(self, device_id: uuid.UUID, name: str, token: str) -> uuid.UUID:
        """The device deleted on the server and a new one of the same name, with ``token``,
        assigned to the edge, the edge never told of the delete: ThingsBoard keeps an edge's
        events sql.ttl.edge_events.edge_events_ttl seconds only (thingsboard.yml: a month), so
        an edge away longer misses it. Every later sync sends the new device; none sends the
        old one. The new device's id."""
        with self.cond:
            del self.devices[device_id]
            del self.credentials[device_id]
            new_id = self.ids.make()
            self.devices[new_id] = self._device_json(new_id, name, "default", None)
            self.credentials[new_id] = token
            self.cond.notify_all()
        return new_id

    # -- relations -------------------------------------------------------------------------------

    def relate(self, src: tuple[str, uuid.UUID], dst: tuple[str, uuid.UUID],
               rel_type: str = "Contains") -> dict[str, Any]:
        """A relation made in the cloud (RelationService.saveRelation, COMMON group); no edge
        event: it reaches the edge only when the edge asks for the relations of an end."""
        rel = {"from": typed_id(*src), "to": typed_id(*dst), "type": rel_type,
               "typeGroup": "COMMON", "additionalInfo": None}
        with self.cond:
            self._save_relation(rel)
            self.cond.notify_all()
        return rel

    def relations_of(self, entity_id: uuid.UUID) -> list[dict[str, Any]]:
        """The cloud's relations from or to the entity."""
        with self.cond:
            return [r for r in self.relations
                    if str(entity_id) in (r["from"]["id"], r["to"]["id"])]

    def _save_relation(self, rel: dict[str, Any]) -> None:
        key = _relation_key(rel)
        self.relations = [r for r in self.relations if _relation_key(r) != key] + [rel]

    def _exists(self, ref: Any) -> bool:
        """isEntityExists: a device, the tenant, or an end of a relation made with ``relate``."""
        if not isinstance(ref, dict) or "id" not in ref:
            return False
        entity_id = uuid.UUID(str(ref["id"]))
        return (entity_id in self.devices or entity_id == self.tenant_id
                or any(str(entity_id) in (r["from"]["id"], r["to"]["id"]) for r in self.relations))

    def _relation_update(self, mid: int, m: edge_pb2.RelationUpdateMsg,
                         failures: list[JavaError]) -> None:
        """BaseRelationProcessor.processRelationMsg (under the lock)."""
        try:
            rel = json.loads(m.entity)
        except ValueError:
            rel = None
        if not isinstance(rel, dict) or not isinstance(rel.get("from"), dict) \
                or not isinstance(rel.get("to"), dict):
            failures.append(JavaError(f"[{{{self.tenant_id}}}] relationUpdateMsg {{{m}}} cannot "
                                      "be converted to entity relation",
                                      "java.lang.RuntimeException"))
            return
        rel.setdefault("typeGroup", "COMMON")
        if m.msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE:
            key = _relation_key(rel)
            self.relations = [r for r in self.relations if _relation_key(r) != key]
            self.applied.append(Applied(mid, "relation_deleted", uuid.UUID(rel["from"]["id"]),
                                        rel))
        elif not (self._exists(rel["to"]) and self._exists(rel["from"])):
            self.applied.append(Applied(mid, "relation_skipped", uuid.UUID(rel["from"]["id"]),
                                        rel))
        else:
            self._save_relation(rel)
            self.applied.append(Applied(mid, "relation_saved", uuid.UUID(rel["from"]["id"]),
                                        rel))

    def _relation_request(self, mid: int, m: edge_pb2.RelationRequestMsg) -> None:
        """DefaultEdgeRequestsService.processRelationRequestMsg (under the lock): the answer
        goes out after the sync (see the module's docstring)."""
        if m.entityType not in ENTITY_TYPES:
            raise _Abort(JavaError(
                "No enum constant org.thingsboard.server.common.data.EntityType." + m.entityType,
                "java.lang.IllegalArgumentException"))
        entity_id = str(uuid_from(m.entityIdMSB, m.entityIdLSB))
        found = [r for r in self.relations
                 if r["typeGroup"] == "COMMON" and r["from"]["id"] == entity_id] + [
                 r for r in self.relations
                 if r["typeGroup"] == "COMMON" and r["to"]["id"] == entity_id]
        answer = [edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), relationUpdateMsg=[
            edge_pb2.RelationUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
                                       entity=json.dumps({**r, "version": None}))])
            for r in found
            if r["from"]["entityType"] != "EDGE" and r["to"]["entityType"] != "EDGE"]
        self.applied.append(Applied(mid, "relation_request", uuid.UUID(entity_id), len(answer)))
        if answer:
            self.relation_answers.extend(answer)
            threading.Thread(target=self._send_after_sync, args=(answer,), daemon=True,
                             name="tb-server-relations").start()

    def _send_after_sync(self, msgs: list[edge_pb2.DownlinkMsg]) -> None:
        try:
            stream = self._rpc_stream()
        except AssertionError:  # the sync never ended (the test is over)
            return
        if stream is not None:
            self._send_rpc_pack(stream, msgs)

    # -- server-side RPC ---------------------------------------------------------------------------

    def send_rpc(self, device_id: uuid.UUID, method: str, params: Any = None, *,
                 oneway: bool = False, persisted: bool = True, timeout_ms: int = 10_000,
                 expiration_time: int | None = None, retries: int | None = None,
                 additional_info: str | None = None, copies: int = 1) -> RpcSent | None:
        """Send the device a server-side RPC request as ThingsBoard does (see the module's
        docstring), on the edge's current stream once no sync runs; ``copies`` > 1 sends the same
        DownlinkMsg that many times (its acknowledgement lost). None when ThingsBoard would not
        send it (expired, or the edge not connected)."""
        now = self._now()
        expires = expiration_time if expiration_time is not None else now + timeout_ms
        stream = self._rpc_stream()
        with self.cond:
            if expires <= now or stream is None:
                return None
            request_id = self._rpc_seq.get(device_id, 0)
            self._rpc_seq[device_id] = request_id + 1
            request_uuid = uuid.uuid4()
            body: dict[str, Any] = {
                "requestId": request_id, "requestUUID": str(request_uuid), "oneway": oneway,
                "expirationTime": expires, "method": method,
                "params": json.dumps(params if params is not None else {}),
                "persisted": persisted, "retries": retries, "additionalInfo": additional_info}
            sent = RpcSent(device_id, request_uuid, request_id, self._rpc_downlink(device_id, body))
            self.rpc_sent.append(sent)
            self._rpc_pending[(device_id, request_id)] = (request_uuid, expires)
            self.cond.notify_all()
        self._send_async(stream, [sent.downlink] * copies)
        return sent

    def redeliver(self, sent: RpcSent) -> edge_pb2.DownlinkMsg:
        """The same edge event read again (after a reconnect) and converted anew: the same
        DeviceRpcCallMsg in a DownlinkMsg with a new random downlinkMsgId."""
        stream = self._rpc_stream()
        assert stream is not None, "the edge is not connected"
        again = edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(),
                                     deviceRpcCallMsg=[sent.msg])
        self._send_async(stream, [again])
        return again

    def _rpc_stream(self) -> _Stream | None:
        """The edge's connected stream once no sync runs on it; None when it is not connected."""
        def ready() -> tuple[_Stream | None] | None:
            live = [s for s in self._streams if s.accepted and not s.ended]
            if not live:
                return (None,)
            if live[-1].sync_running or not self.sync_completed:
                return None
            return (live[-1],)

        return self.wait_for(ready, what="the sync over before an RPC request")[0]

    def _send_async(self, stream: _Stream, msgs: list[edge_pb2.DownlinkMsg]) -> None:
        threading.Thread(target=self._send_rpc_pack, args=(stream, msgs), daemon=True,
                         name=f"tb-server-rpc-{stream.number}").start()

    def _send_rpc_pack(self, stream: _Stream, msgs: list[edge_pb2.DownlinkMsg]) -> None:
        """A pack of RPC downlinks (copies included, each sent), resent while any is
        unanswered after sleep_between_batches, MAX_DOWNLINK_ATTEMPTS sends in all; kept apart
        from the sync's pack."""
        ids = {m.downlinkMsgId for m in msgs}
        for attempt in range(1, MAX_DOWNLINK_ATTEMPTS + 1):
            with self.cond:
                if stream.ended or self._stopping:
                    return
                for m in msgs:
                    self.downlinks_sent.append((attempt, m))
                    stream.outbox.put(edge_pb2.ResponseMsg(downlinkMsg=m))
                self.cond.notify_all()
                answered = self.cond.wait_for(
                    lambda: stream.ended or self._stopping
                    or ids <= {a.downlinkMsgId for a in self.downlink_acks},
                    self.sleep_between_batches_s)
                if answered:
                    return
        with self.cond:
            self.discarded.extend(msgs)

    @staticmethod
    def _rpc_downlink(device_id: uuid.UUID, body: dict[str, Any]) -> edge_pb2.DownlinkMsg:
        """DeviceEdgeProcessor's RPC_CALL conversion: constructDeviceRpcMsg reads the JSON
        body's nodes; a null node is still a node (retries 0, additionalInfo "null")."""
        d_msb, d_lsb = halves(device_id)
        r_msb, r_lsb = halves(uuid.UUID(body["requestUUID"]))
        retries = body["retries"]
        info = body["additionalInfo"]
        msg = edge_pb2.DeviceRpcCallMsg(
            deviceIdMSB=d_msb, deviceIdLSB=d_lsb, requestId=body["requestId"],
            oneway=body["oneway"], requestUuidMSB=r_msb, requestUuidLSB=r_lsb,
            expirationTime=body["expirationTime"], persisted=body["persisted"],
            retries=0 if retries is None else int(retries),
            additionalInfo="null" if info is None else json.dumps(info),
            requestMsg=edge_pb2.RpcRequestMsg(method=body["method"], params=body["params"]))
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), deviceRpcCallMsg=[msg])

    def _rpc_answer(self, mid: int, rpc: edge_pb2.DeviceRpcCallMsg) -> None:
        """processDeviceRpcResponseFromEdge, then the device actor (under the lock)."""
        error = rpc.responseMsg.error
        if error and error not in RPC_ERRORS:
            raise _Abort(JavaError(
                "No enum constant org.thingsboard.server.common.data.rpc.RpcError." + error,
                "java.lang.IllegalArgumentException"))
        device_id = uuid_from(rpc.deviceIdMSB, rpc.deviceIdLSB)
        pending = self._rpc_pending.get((device_id, rpc.requestId))
        fate = "stale"
        if pending is not None:
            del self._rpc_pending[(device_id, rpc.requestId)]
            request_uuid, expires = pending
            if self._now() <= expires:  # past it, the actor's timeout has removed it
                fate = "settled"
            if request_uuid != uuid_from(rpc.requestUuidMSB, rpc.requestUuidLSB):
                fate = "stale"
        self.rpc_answers.append(RpcAnswer(mid, rpc, fate))
        self.applied.append(Applied(mid, "rpc", uuid_from(
            rpc.requestUuidMSB, rpc.requestUuidLSB), rpc))

    # -- the servicer ----------------------------------------------------------------------------

    def handleMsgs(self, request_iterator: Iterator[edge_pb2.RequestMsg],
                   context: grpc.ServicerContext) -> Iterator[edge_pb2.ResponseMsg]:
        with self.cond:
            stream = _Stream(len(self._streams) + 1)
            self._streams.append(stream)
        context.add_callback(lambda: stream.outbox.put(_END))
        threading.Thread(target=self._read, args=(stream, request_iterator), daemon=True,
                         name=f"tb-server-reader-{stream.number}").start()
        try:
            while True:
                item = stream.outbox.get()
                if item is _END:
                    return
                if isinstance(item, str):  # outputStream.onError after a refused connect
                    context.abort(grpc.StatusCode.UNKNOWN, item)
                yield item
        finally:
            with self.cond:
                stream.ended = True
                self.cond.notify_all()

    def _read(self, stream: _Stream, requests: Iterator[edge_pb2.RequestMsg]) -> None:
        try:
            for req in requests:
                self._on_request(stream, req)
        except grpc.RpcError:
            pass
        finally:
            stream.outbox.put(_END)

    def _on_request(self, stream: _Stream, req: edge_pb2.RequestMsg) -> None:
        if not stream.accepted:
            if req.msgType == edge_pb2.CONNECT_RPC_MESSAGE:
                self._on_connect(stream, req.connectRequestMsg)
            return
        if req.msgType == edge_pb2.SYNC_REQUEST_RPC_MESSAGE and req.HasField("syncRequestMsg"):
            sync = req.syncRequestMsg
            full = sync.fullSync if sync.HasField("fullSync") else False
            with self.cond:
                self.sync_requests.append(full)
                running, stream.sync_running = stream.sync_running, True
                self.cond.notify_all()
            if not running:  # else: "Sync is already started, skipping starting it now"
                with self.cond:
                    self.sync_starts.append(full)
                threading.Thread(target=self._sync, args=(stream, full), daemon=True,
                                 name=f"tb-server-sync-{stream.number}").start()
        if req.msgType == edge_pb2.UPLINK_RPC_MESSAGE:
            if req.HasField("uplinkMsg"):
                self._on_uplink(stream, req.uplinkMsg)
            if req.HasField("downlinkResponseMsg"):
                self._on_downlink_response(stream, req.downlinkResponseMsg)

    def _on_connect(self, stream: _Stream, req: edge_pb2.ConnectRequestMsg) -> None:
        with self.cond:
            self.connects.append(req)
            self.cond.notify_all()
        if req.edgeRoutingKey != self.routing_key:
            error = f"Failed to find the edge! Routing key: {req.edgeRoutingKey}"
        elif req.edgeSecret != self.secret:
            error = f"Failed to validate the edge! Provided request secret: {req.edgeSecret}"
        else:
            error = ""
        with self.cond:
            self.connect_answers.append(edge_pb2.BAD_CREDENTIALS if error else edge_pb2.ACCEPTED)
            self.cond.notify_all()
        if error:
            stream.outbox.put(edge_pb2.ResponseMsg(connectResponseMsg=edge_pb2.ConnectResponseMsg(
                responseCode=edge_pb2.BAD_CREDENTIALS, errorMsg=error,
                configuration=edge_pb2.EdgeConfiguration())))
            stream.outbox.put(error)
            return
        e_msb, e_lsb = halves(self.edge_id)
        t_msb, t_lsb = halves(self.tenant_id)
        c_msb, c_lsb = halves(self.customer_id)
        with self.cond:
            stream.accepted = True
            stream.client_max_inbound = (req.maxInboundMessageSize
                                         if req.HasField("maxInboundMessageSize") else 0)
            self.edge_version = req.edgeVersion
        stream.outbox.put(edge_pb2.ResponseMsg(connectResponseMsg=edge_pb2.ConnectResponseMsg(
            responseCode=edge_pb2.ACCEPTED, errorMsg="",
            configuration=edge_pb2.EdgeConfiguration(
                edgeIdMSB=e_msb, edgeIdLSB=e_lsb, tenantIdMSB=t_msb, tenantIdLSB=t_lsb,
                customerIdMSB=c_msb, customerIdLSB=c_lsb, name=self.name, type="default",
                routingKey=self.routing_key, secret=self.secret, additionalInfo="null",
                cloudType="CE"),
            maxInboundMessageSize=MAX_INBOUND_MESSAGE_SIZE)))

    # -- downlinks: the sync ---------------------------------------------------------------------

    def _sync(self, stream: _Stream, full: bool) -> None:
        try:
            for events in self._fetchers(full):
                for start in range(0, len(events), MAX_READ_RECORDS_COUNT):
                    if not self._send_pack(stream, events[start:start + MAX_READ_RECORDS_COUNT]):
                        return
            with self.cond:
                self.cond.wait_for(lambda: not self._sync_held or stream.ended or self._stopping)
            done = edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(),
                                        syncCompletedMsg=edge_pb2.SyncCompletedMsg())
            if self._send_pack(stream, [done]):
                with self.cond:
                    if not any(a.downlinkMsgId == done.downlinkMsgId and a.success
                               for a in self.downlink_acks):
                        return
                    self.sync_completed += 1
                    self.cond.notify_all()
                    self._clear_flag_late(stream)
        finally:
            with self.cond:
                stream.sync_running = False
                self.cond.notify_all()

    def _clear_flag_late(self, stream: _Stream) -> None:
        """Under the lock, after a sync's SyncCompletedMsg was acknowledged: wait
        sync_flag_clear_delay_s (or until the stream ends) before the flag is cleared."""
        delay = self.sync_flag_clear_delay_s
        if delay <= 0:
            return
        until = None if math.isinf(delay) else time.monotonic() + delay

        def over() -> bool:
            return (stream.ended or self._stopping
                    or (until is not None and time.monotonic() >= until))

        while not over():
            self.cond.wait(None if until is None else max(0.0, until - time.monotonic()))

    def _send_pack(self, stream: _Stream, pack: list[edge_pb2.DownlinkMsg]) -> bool:
        """sendDownlinkMsgsPack + scheduleDownlinkMsgsPackSend: False if the stream ended."""
        with self.cond:
            stream.pending = {m.downlinkMsgId: m for m in pack}
        for attempt in range(1, MAX_DOWNLINK_ATTEMPTS + 1):
            with self.cond:
                if stream.ended or self._stopping:
                    return False
                to_send = list(stream.pending.values())
                for m in to_send:
                    if stream.client_max_inbound and m.ByteSize() > stream.client_max_inbound:
                        del stream.pending[m.downlinkMsgId]  # "exceeds client max inbound"
                        continue
                    self.downlinks_sent.append((attempt, m))
                    stream.outbox.put(edge_pb2.ResponseMsg(downlinkMsg=m))
                self.cond.notify_all()
                deadline = time.monotonic() + self.sleep_between_batches_s
                while stream.pending and not stream.ended and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self.cond.wait(left)
                if not stream.pending:
                    return True
        with self.cond:
            self.discarded.extend(stream.pending.values())
            stream.pending = {}
            return not stream.ended

    def _on_downlink_response(self, stream: _Stream, resp: edge_pb2.DownlinkResponseMsg) -> None:
        with self.cond:
            self.downlink_acks.append(resp)
            msg = stream.pending.get(resp.downlinkMsgId)
            if msg is not None and (resp.success or not len(msg.entityData)):
                del stream.pending[resp.downlinkMsgId]
            self.cond.notify_all()

    def _fetchers(self, full: bool) -> list[list[edge_pb2.DownlinkMsg]]:
        c = self.sync_content
        out: list[list[edge_pb2.DownlinkMsg]] = []
        if full:
            out.append([self._tenant_downlink()])
            out.append([self._queue_downlink(name) for name in c.queues])
            out.append([self._rule_chain_downlink()] if c.rule_chain else [])
            out.append([self._admin_settings_downlink(NULL_UUID, key) for key in c.admin_settings])
            out.append([self._admin_settings_downlink(self.tenant_id, key)
                        for key in c.admin_settings])
            out.append([self._user_downlink(i) for i in range(c.tenant_admins)])
            out.append([self._widget_type_downlink(i) for i in range(c.widget_types)])
            out.append([self._widgets_bundle_downlink(i) for i in range(c.widgets_bundles)])
        out.append([self._device_profile_downlink(), self._asset_profile_downlink()])
        out.append([self._device_profile_downlink()])
        out.append([self._asset_profile_downlink()])
        with self.cond:
            synced = [(i, d) for i, d in self.devices.items()
                      if any(s.name == d["name"] for s in c.devices)]
        out.append([self._device_downlink(i, d) for i, d in synced])
        if full:
            out.append([self._device_profile_downlink()])
        return out

    # -- downlink content (EdgeMsgConstructorUtils: entities as Jackson JSON) ----------------------

    def _now(self) -> int:
        return int(time.time() * 1000)

    def _tenant_downlink(self) -> edge_pb2.DownlinkMsg:
        tenant = {"id": typed_id("TENANT", self.tenant_id), "createdTime": self._now(),
                  "title": "Tenant", "name": "Tenant", "region": "Global",
                  "tenantProfileId": typed_id("TENANT_PROFILE", self.tenant_profile_id),
                  "country": None, "state": None, "city": None, "address": None,
                  "address2": None, "zip": None, "phone": None, "email": None,
                  "additionalInfo": None, "version": 1}
        profile = {"id": typed_id("TENANT_PROFILE", self.tenant_profile_id),
                   "createdTime": self._now(), "name": "Default", "description": "Default",
                   "isolatedTbRuleEngine": False, "default": True,
                   "profileData": {"configuration": {"type": "DEFAULT", "maxDevices": 0}}}
        return edge_pb2.DownlinkMsg(
            downlinkMsgId=next_positive_int(),
            tenantUpdateMsg=[edge_pb2.TenantUpdateMsg(
                msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, entity=json.dumps(tenant))],
            tenantProfileUpdateMsg=[edge_pb2.TenantProfileUpdateMsg(
                msgType=edge_pb2.ENTITY_UPDATED_RPC_MESSAGE, entity=json.dumps(profile))])

    def _queue_downlink(self, name: str) -> edge_pb2.DownlinkMsg:
        queue_id = self.ids.make()
        msb, lsb = halves(queue_id)
        entity = {"id": typed_id("QUEUE", queue_id), "createdTime": self._now(),
                  "tenantId": typed_id("TENANT", NULL_UUID), "name": name,
                  "topic": f"tb_rule_engine.{name.lower()}", "pollInterval": 25, "partitions": 10,
                  "consumerPerPartition": True, "packProcessingTimeout": 2000,
                  "submitStrategy": {"type": "BURST", "batchSize": 1000},
                  "processingStrategy": {"type": "SKIP_ALL_FAILURES", "retries": 3}}
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), queueUpdateMsg=[
            edge_pb2.QueueUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb,
                                    idLSB=lsb, entity=json.dumps(entity))])

    def _rule_chain_downlink(self) -> edge_pb2.DownlinkMsg:
        msb, lsb = halves(self.rule_chain_id)
        chain = {"id": typed_id("RULE_CHAIN", self.rule_chain_id), "createdTime": self._now(),
                 "tenantId": typed_id("TENANT", self.tenant_id), "name": "Edge Root Rule Chain",
                 "type": "EDGE", "firstRuleNodeId": None, "root": True, "debugMode": False,
                 "configuration": None, "additionalInfo": None, "externalId": None}
        nodes: list[dict[str, Any]] = [
            {"type": t, "name": t.rsplit(".", 1)[1], "configuration": {}}
            for t in ("org.thingsboard.rule.engine.telemetry.TbMsgTimeseriesNode",
                      "org.thingsboard.rule.engine.telemetry.TbMsgAttributesNode",
                      "org.thingsboard.rule.engine.filter.TbMsgTypeSwitchNode",
                      "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode")]
        metadata = {"ruleChainId": typed_id("RULE_CHAIN", self.rule_chain_id), "version": 1,
                    "firstNodeIndex": 2, "nodes": nodes,
                    "connections": [{"fromIndex": 2, "toIndex": 0, "type": "Post telemetry"},
                                    {"fromIndex": 0, "toIndex": 3, "type": "Success"}],
                    "ruleChainConnections": None}
        return edge_pb2.DownlinkMsg(
            downlinkMsgId=next_positive_int(),
            ruleChainUpdateMsg=[edge_pb2.RuleChainUpdateMsg(
                msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
                entity=json.dumps(chain))],
            ruleChainMetadataUpdateMsg=[edge_pb2.RuleChainMetadataUpdateMsg(
                msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, entity=json.dumps(metadata))])

    def _admin_settings_downlink(self, tenant: uuid.UUID, key: str) -> edge_pb2.DownlinkMsg:
        entity = {"id": {"id": str(self.ids.make())}, "createdTime": self._now(),
                  "tenantId": typed_id("TENANT", tenant), "key": key,
                  "jsonValue": {"baseUrl": "http://localhost:8080"}}
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), adminSettingsUpdateMsg=[
            edge_pb2.AdminSettingsUpdateMsg(entity=json.dumps(entity))])

    def _user_downlink(self, i: int) -> edge_pb2.DownlinkMsg:
        user_id = self.ids.make()
        msb, lsb = halves(user_id)
        entity = {"id": typed_id("USER", user_id), "createdTime": self._now(),
                  "tenantId": typed_id("TENANT", self.tenant_id),
                  "customerId": typed_id("CUSTOMER", NULL_UUID),
                  "email": f"tenant{i}@thingsboard.org", "authority": "TENANT_ADMIN",
                  "firstName": None, "lastName": None, "additionalInfo": None}
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), userUpdateMsg=[
            edge_pb2.UserUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb,
                                   idLSB=lsb, entity=json.dumps(entity))])

    def _widget_type_downlink(self, i: int) -> edge_pb2.DownlinkMsg:
        widget_id = self.ids.make()
        msb, lsb = halves(widget_id)
        entity = {"id": typed_id("WIDGET_TYPE", widget_id), "createdTime": self._now(),
                  "tenantId": typed_id("TENANT", NULL_UUID), "fqn": f"system.cards.widget_{i}",
                  "name": f"Widget {i}", "deprecated": False, "scada": False,
                  "descriptor": {"type": "latest", "sizeX": 7.5, "sizeY": 3,
                                 "templateHtml": "<div></div>" * 20, "controllerScript": ""}}
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), widgetTypeUpdateMsg=[
            edge_pb2.WidgetTypeUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb,
                                         idLSB=lsb, entity=json.dumps(entity))])

    def _widgets_bundle_downlink(self, i: int) -> edge_pb2.DownlinkMsg:
        bundle_id = self.ids.make()
        msb, lsb = halves(bundle_id)
        entity = {"id": typed_id("WIDGETS_BUNDLE", bundle_id), "createdTime": self._now(),
                  "tenantId": typed_id("TENANT", NULL_UUID), "alias": f"bundle_{i}",
                  "title": f"Bundle {i}"}
        widgets = [f"system.cards.widget_{k}" for k in range(self.sync_content.widget_types)]
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), widgetsBundleUpdateMsg=[
            edge_pb2.WidgetsBundleUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
                                            idMSB=msb, idLSB=lsb, entity=json.dumps(entity),
                                            widgets=json.dumps(widgets))])

    def _device_profile_json(self) -> dict[str, Any]:
        return {"id": typed_id("DEVICE_PROFILE", self.device_profile_id),
                "createdTime": self._now(), "tenantId": typed_id("TENANT", self.tenant_id),
                "name": "default", "description": "Default device profile", "type": "DEFAULT",
                "transportType": "DEFAULT", "provisionType": "DISABLED", "default": True,
                "defaultRuleChainId": None, "defaultQueueName": None,
                "profileData": {"configuration": {"type": "DEFAULT"},
                                "transportConfiguration": {"type": "DEFAULT"}},
                "version": 1}

    def _device_profile_downlink(self) -> edge_pb2.DownlinkMsg:
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(),
                                    deviceProfileUpdateMsg=[self._device_profile_msg()])

    def _device_profile_msg(self) -> edge_pb2.DeviceProfileUpdateMsg:
        msb, lsb = halves(self.device_profile_id)
        return edge_pb2.DeviceProfileUpdateMsg(
            msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
            entity=json.dumps(self._device_profile_json()))

    def _asset_profile_downlink(self) -> edge_pb2.DownlinkMsg:
        msb, lsb = halves(self.asset_profile_id)
        entity = {"id": typed_id("ASSET_PROFILE", self.asset_profile_id),
                  "createdTime": self._now(), "tenantId": typed_id("TENANT", self.tenant_id),
                  "name": "default", "description": "Default asset profile", "default": True,
                  "defaultRuleChainId": None, "defaultQueueName": None, "version": 1}
        return edge_pb2.DownlinkMsg(downlinkMsgId=next_positive_int(), assetProfileUpdateMsg=[
            edge_pb2.AssetProfileUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
                                           idMSB=msb, idLSB=lsb, entity=json.dumps(entity))])

    def _device_json(self, device_id: uuid.UUID, name: str, type_: str,
                     customer: uuid.UUID | None) -> dict[str, Any]:
        return {"id": typed_id("DEVICE", device_id), "createdTime": self._now(),
                "tenantId": typed_id("TENANT", self.tenant_id),
                "customerId": typed_id("CUSTOMER", customer or NULL_UUID), "name": name,
                "type": type_,
                "label": None, "deviceProfileId": typed_id("DEVICE_PROFILE",
                                                           self.device_profile_id),
                "deviceData": {"configuration": {"type": "DEFAULT"},
                               "transportConfiguration": {"type": "DEFAULT"}},
                "firmwareId": None, "softwareId": None, "externalId": None, "version": 1,
                "additionalInfo": None}

    def _device_downlink(self, device_id: uuid.UUID, device: dict[str, Any]) -> edge_pb2.DownlinkMsg:
        msb, lsb = halves(device_id)
        creds = {"id": {"id": str(self.ids.make())}, "createdTime": self._now(),
                 "deviceId": typed_id("DEVICE", device_id), "credentialsType": "ACCESS_TOKEN",
                 "credentialsId": self.credentials[device_id], "credentialsValue": None,
                 "version": 1}
        return edge_pb2.DownlinkMsg(
            downlinkMsgId=next_positive_int(),
            deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(
                msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE, idMSB=msb, idLSB=lsb,
                entity=json.dumps(device))],
            deviceCredentialsUpdateMsg=[edge_pb2.DeviceCredentialsUpdateMsg(
                entity=json.dumps(creds))],
            deviceProfileUpdateMsg=[self._device_profile_msg()])

    # -- uplinks ---------------------------------------------------------------------------------

    def _on_uplink(self, stream: _Stream, up: edge_pb2.UplinkMsg) -> None:
        with self.cond:
            record = Received(stream.number, time.monotonic(), up)
            self.uplinks.append(record)
            self.receipts[up.uplinkMsgId] += 1
            limited = len(self.uplinks) <= self.rate_limited_first
            self.cond.notify_all()
        if limited:
            self._answer(stream, record, edge_pb2.UplinkResponseMsg(
                uplinkMsgId=up.uplinkMsgId, success=False, errorMsg=RATE_LIMIT_ERROR))
            return
        with self.cond:
            error = self._process(up)
            self.cond.notify_all()
        answer = edge_pb2.UplinkResponseMsg(uplinkMsgId=up.uplinkMsgId, success=error is None)
        if error is not None:
            answer.errorMsg = java_error_text(error)
        delay = self._delay(up)
        if delay <= 0:
            self._answer(stream, record, answer)
            return
        timer = threading.Timer(delay, self._answer, args=(stream, record, answer))
        timer.daemon = True
        with self.cond:
            self._timers.append(timer)
        timer.start()

    def _delay(self, up: edge_pb2.UplinkMsg) -> float:
        d = self.answer_delay
        if callable(d):
            return d(up)
        if isinstance(d, tuple):
            with self.cond:
                return self.rng.uniform(*d)
        return float(d)

    def _answer(self, stream: _Stream, record: Received, answer: edge_pb2.UplinkResponseMsg) -> None:
        with self.cond:
            if stream.ended:
                return  # sendDownlinkMsg: only while connected
            record.answer, record.answered_at = answer, time.monotonic()
            self.cond.notify_all()
        stream.outbox.put(edge_pb2.ResponseMsg(uplinkResponseMsg=answer))

    def _process(self, up: edge_pb2.UplinkMsg) -> JavaError | None:
        """processUplinkMsg under the lock: the first failure of the message, or None."""
        failures: list[JavaError] = []
        mid = up.uplinkMsgId
        try:
            for dev in up.deviceUpdateMsg:
                self._device(mid, dev, failures)
            for cred in up.deviceCredentialsUpdateMsg:
                self._credentials(mid, cred)
            for data in up.entityData:
                self._entity_data(mid, data)
            for alarm in up.alarmUpdateMsg:
                self._alarm(mid, alarm, failures)
            for update in up.relationUpdateMsg:
                self._relation_update(mid, update, failures)
            for req in up.attributesRequestMsg:
                self.applied.append(Applied(mid, "attributes_request", uuid_from(
                    req.entityIdMSB, req.entityIdLSB), req.scope))
            for rel in up.relationRequestMsg:
                self._relation_request(mid, rel)
            for rpc in up.deviceRpcCallMsg:
                if rpc.HasField("responseMsg"):
                    self._rpc_answer(mid, rpc)
        except _Abort as exc:
            return exc.err
        return failures[0] if failures else None

    def _parse(self, text: str, what: str, msg: Any) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise _Abort(JavaError(f"[{{{self.tenant_id}}}] {what}UpdateMsg {{{msg}}} cannot be "
                                   f"converted to {what}"))
        return value

    def _tenant_of(self, value: Any) -> uuid.UUID | None:
        if value is None:
            return None
        if not isinstance(value, dict) or "id" not in value:
            raise _Abort(JavaError("Cannot deserialize value of type `TenantId`",
                                   "com.fasterxml.jackson.databind.exc.MismatchedInputException"))
        return uuid.UUID(str(value["id"]))

    def _device(self, mid: int, m: edge_pb2.DeviceUpdateMsg, failures: list[JavaError]) -> None:
        device_id = uuid_from(m.idMSB, m.idLSB)
        if m.msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE:
            if self.devices.pop(device_id, None) is not None:
                self.applied.append(Applied(mid, "device_deleted", device_id, None))
            return
        device = self._parse(m.entity, "device", m)
        tenant = self._tenant_of(device.get("tenantId"))
        name = device.get("name")
        customer = device.get("customerId")
        if not isinstance(name, str) or not name.strip():
            failures.append(_validation("Device name should be specified!"))
            return
        if tenant is None:
            failures.append(_validation("Device should be assigned to tenant!"))
            return
        if tenant != self.tenant_id:
            failures.append(_validation("Device is referencing to non-existent tenant!"))
            return
        if isinstance(customer, dict) and uuid.UUID(str(customer.get("id"))) not in (
                NULL_UUID, *self.customers):
            failures.append(_validation("Can't assign device to non-existent customer!"))
            return
        refusal = self.refuse_device(device) if self.refuse_device is not None else None
        if refusal is not None:
            failures.append(_validation(refusal))
            return
        if any(d.get("name") == name for i, d in self.devices.items() if i != device_id):
            device["name"] = name + "_" + "".join(self.rng.choices(string.ascii_letters, k=15))
        created = device_id not in self.devices
        self.devices[device_id] = device
        self.applied.append(Applied(mid, "device_created" if created else "device_updated",
                                    device_id, device))

    def _alarm_customer(self, alarm: dict[str, Any], originator: dict[str, Any]) -> str | None:
        """BaseAlarmService.createAlarm's customer check: the refusal, or None with the alarm's
        customerId set to the originator's (fetchEntityCustomerId)."""
        device = self.devices.get(uuid.UUID(str(originator["id"]))) \
            if originator.get("entityType") == "DEVICE" else None
        own = None if device is None else uuid.UUID(str(
            (device.get("customerId") or {}).get("id", NULL_UUID)))
        given = alarm.get("customerId")
        asked = uuid.UUID(str(given["id"])) if isinstance(given, dict) else None
        if own is None and asked is not None:
            return "Can't assign alarm to customer. Originator is not assigned to customer!"
        if own is not None and asked is not None and own != asked:
            return "Can't assign alarm to customer. Originator belongs to different customer!"
        alarm["customerId"] = None if own is None else typed_id("CUSTOMER", own)
        return None

    def _credentials(self, mid: int, m: edge_pb2.DeviceCredentialsUpdateMsg) -> None:
        creds = self._parse(m.entity, "deviceCredentials", m)
        device_ref = creds.get("deviceId")
        device_id = uuid.UUID(str(device_ref["id"])) if isinstance(device_ref, dict) else None
        if device_id is None or device_id not in self.devices:
            return  # "Can't find device by id": skipped
        token = creds.get("credentialsId")
        if not isinstance(token, str) or not token:
            raise _Abort(JavaError("Device credentials id should be specified!",
                                   "org.thingsboard.server.dao.exception."
                                   "DeviceCredentialsValidationException"))
        if any(t == token for i, t in self.credentials.items() if i != device_id):
            raise _Abort(JavaError("Device credentials are already assigned to another device!",
                                   "org.thingsboard.server.dao.exception."
                                   "DeviceCredentialsValidationException"))
        self.credentials[device_id] = token
        self.applied.append(Applied(mid, "credentials", device_id, token))

    def _entity_data(self, mid: int, d: edge_pb2.EntityDataProto) -> None:
        entity_id = uuid_from(d.entityIdMSB, d.entityIdLSB)
        if d.entityType != "DEVICE" or entity_id not in self.devices:
            self.applied.append(Applied(mid, "skipped_entity_data", entity_id, d.entityType))
            return
        for name in ("postAttributesMsg", "attributesUpdatedMsg"):
            if d.HasField(name):
                if d.postAttributeScope not in SCOPES:
                    raise _Abort(JavaError(
                        "No enum constant org.thingsboard.server.common.data.AttributeScope."
                        + d.postAttributeScope, "java.lang.IllegalArgumentException"))
                ts = d.attributeTs if d.HasField("attributeTs") else self._now()
                self.applied.append(Applied(mid, "attributes", entity_id, (
                    d.postAttributeScope, ts, kv_values(getattr(d, name).kv))))
        if d.HasField("postTelemetryMsg"):
            for entry in d.postTelemetryMsg.tsKvList:
                self.applied.append(Applied(mid, "telemetry", entity_id,
                                            (entry.ts, kv_values(entry.kv))))

    def _alarm(self, mid: int, m: edge_pb2.AlarmUpdateMsg, failures: list[JavaError]) -> None:
        alarm_id = uuid_from(m.idMSB, m.idLSB)
        alarm = self._parse(m.entity, "alarm", m)
        originator = alarm.get("originator")
        if originator is None:
            return  # "Originator not found for the alarm msg": skipped
        if (not isinstance(originator, dict) or not originator.get("entityType")
                or "id" not in originator or alarm.get("severity") not in SEVERITIES):
            raise _Abort(JavaError(f"[{{{self.tenant_id}}}] alarmUpdateMsg {{{m}}} cannot be "
                                   "converted to alarm"))
        if m.msgType == edge_pb2.ENTITY_CREATED_RPC_MESSAGE:
            tenant = self._tenant_of(alarm.get("tenantId"))
            if not isinstance(alarm.get("type"), str) or not alarm["type"].strip():
                failures.append(_validation("Alarm type should be specified!"))
            elif tenant is None:
                failures.append(_validation("Alarm should be assigned to tenant!"))
            elif tenant != self.tenant_id:
                failures.append(_validation("Alarm is referencing to non-existent tenant!"))
            elif (refusal := self._alarm_customer(alarm, originator)) is not None:
                failures.append(_validation(refusal))
            else:
                self.alarms[alarm_id] = alarm
                self.applied.append(Applied(mid, "alarm_created", alarm_id, alarm))
            return
        if alarm_id not in self.alarms:
            return
        kind = {edge_pb2.ALARM_ACK_RPC_MESSAGE: "alarm_ack",
                edge_pb2.ALARM_CLEAR_RPC_MESSAGE: "alarm_clear",
                edge_pb2.ENTITY_DELETED_RPC_MESSAGE: "alarm_deleted",
                edge_pb2.ENTITY_UPDATED_RPC_MESSAGE: "alarm_updated"}.get(m.msgType, "alarm_other")
        if kind == "alarm_deleted":
            del self.alarms[alarm_id]
        else:
            self.alarms[alarm_id] = alarm
        self.applied.append(Applied(mid, kind, alarm_id, alarm))


def _relation_key(rel: dict[str, Any]) -> tuple[str, str, str, str]:
    """What identifies a relation (RelationService): its two ends, type and type group."""
    return (rel["from"]["id"], rel["to"]["id"], str(rel.get("type")),
            str(rel.get("typeGroup") or "COMMON"))
