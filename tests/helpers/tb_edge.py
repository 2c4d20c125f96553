"""A ThingsBoard Edge 4.3 as a cloud meets it, for tests of the real `edge-cloud serve`: a gRPC
client of EdgeRpcService.handleMsgs that behaves by the rules below, read from ThingsBoard Edge
v4.3.1.2's Java sources (paths relative to the thingsboard/thingsboard-edge repository), and
records everything it receives.

    edge = TbEdge(cloud.rpc_port, "rk-1", "secret-1")
    config = edge.connect()          # raises EdgeInitError where a real Edge stays uninitialised
    edge.wait_synced()
    answers = edge.flush_requests()  # the attribute / relation requests it queued meanwhile
    edge.close()

Connect (common/edge-api/.../edge/rpc/EdgeGrpcClient.java)
- One handleMsgs stream called with gzip compression; its first message is a ConnectRequestMsg
  with the routing key, the secret, the newest EdgeVersion the Edge knows (here V_4_3_1_3 by
  default) and its maxInboundMessageSize (cloud.rpc.max_inbound_message_size, 4 MiB).
- A connect answer other than ACCEPTED: "Failed to establish the connection! Response code:
  <code>" and the Edge disconnects (EdgeInitError here).

Initialisation (application/.../service/cloud/rpc/BaseGrpcClientManager.java onEdgeUpdate,
cloud/config/BaseEdgeConfigurationHandler.java, cloud/rpc/processor/TenantCloudProcessor.java,
cloud/rpc/processor/EdgeCloudProcessor.java, dao/.../validator/EdgeDataValidator.java)
- cloudType must be "CE", else "Terminating application. CE edge can be connected only to CE
  server version..." and the process exits.
- The tenant is created with createdTime = Uuids.unixTimestamp(tenantId) and the edge with
  createdTime = Uuids.unixTimestamp(edgeId): both ids must be version 1 UUIDs, else
  IllegalArgumentException "Can only retrieve the unix timestamp for version 1 uuid (provided
  version N)"; the real Edge logs it and stays uninitialised for ever, the emulator raises
  EdgeInitError (loudly) instead. The edge record needs a secret: "Edge secret should be
  specified!".
- A customer id (both halves non-zero) is taken as the edge's customer.
- After its edge record is saved, the Edge queues an ATTRIBUTES_REQUEST and a
  RELATION_REQUEST for its own EDGE entity; then, as its first initialisation needs a full
  sync, it sends SyncRequestMsg{fullSync=true}.

Downlinks (BaseGrpcClientManager.onDownlink, cloud/DefaultDownlinkMessageService.java,
cloud/DownlinkMsgProcessedCallback.java, the cloud processors)
- Each DownlinkMsg is processed, then answered DownlinkResponseMsg{downlinkMsgId, success}; a
  processor that throws makes it success=false with errorMsg = the root cause's message and
  its stack (EdgeUtils.createErrorMsgFromRootCauseAndStackTrace). Its payloads are processed in
  a fixed order: syncCompletedMsg, edgeConfiguration, entityData, RPC calls, device profiles,
  devices, device credentials, asset profiles, assets, ..., rule chains, rule chain metadata,
  ..., tenant profiles, ..., tenant (tests.helpers.tb_common.DOWNLINK_KINDS). The first
  failure ends the processing of that DownlinkMsg.
- Devices (cloud/rpc/processor/DeviceCloudProcessor.java, BaseDeviceProcessor.java, the same
  DeviceDataValidator as the server): a blank name -> "Device name should be specified!", no
  tenantId -> "Device should be assigned to tenant!", another tenant than the Edge's ->
  "Device is referencing to non-existent tenant!", a customer that is neither NULL_UUID nor
  the Edge's -> "Can't assign device to non-existent customer!"; an id that is not a typed
  EntityId does not parse. A device created queues an ATTRIBUTES_REQUEST and a
  RELATION_REQUEST for it (BaseEdgeProcessor.requestForAdditionalData). ENTITY_DELETED
  deletes it.
- Credentials for a device the Edge does not have are skipped (success).
- entityData for an entity the Edge does not have is skipped; attributes need a
  postAttributeScope that is an AttributeScope.
- syncCompletedMsg ends the sync (the uplinks may start) and queues an ATTRIBUTES_REQUEST for
  the TENANT (and the customer, if any).
- Configurable extra refusals: ``refuse_device`` (a device for which it returns a message is
  answered success=false with that message, every time).

Uplinks (cloud/event/sender/GrpcCloudEventUplinkSender.java,
cloud/rpc/processor/TelemetryCloudProcessor.java, tb-edge.yml section cloud)
- Only after SyncCompletedMsg. Cloud events are read up to 50 at a time, each one its own
  UplinkMsg with a random uplinkMsgId (EdgeUtils.nextPositiveInt) and none of edge-sync's
  extensions (no edgeSeqId, no uplinkEpoch); the pack is sent at once, then the Edge waits up
  to uplink_pack_timeout_sec (60 s) for every answer; what failed or stayed unanswered is
  resent after sleep_between_batches (1 s), for at most 3 attempts of a general pack.
- The queued cloud events are sent when the test calls ``flush_requests`` (the real Edge's
  uplink loop sends them on its own once the sync is over), so a test decides when.
- An ATTRIBUTES_REQUEST becomes one UplinkMsg with an AttributesRequestMsg of SERVER_SCOPE
  and, for a device, a second one of SHARED_SCOPE; a RELATION_REQUEST one UplinkMsg with a
  RelationRequestMsg.
"""

from __future__ import annotations

import json
import queue
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from edge_sync.proto import edge_pb2, edge_pb2_grpc, transport_pb2
from tests.helpers.tb_common import (
    NULL_UUID,
    JavaError,
    downlink_kinds,
    halves,
    java_error_text,
    kv_values,
    next_positive_int,
    typed_id,
    unix_timestamp,
    uuid_from,
)
from tests.helpers.wait import wait_until

__all__ = ["EdgeInitError", "ReceivedDownlink", "TbEdge", "device_created_uplink",
           "telemetry_entity_data"]

DEADLINE_S = 10.0
UPLINK_PACK_TIMEOUT_S = 60.0
SLEEP_BETWEEN_BATCHES_S = 1.0
MAX_SEND_UPLINK_ATTEMPTS = 3
MAX_INBOUND_MESSAGE_SIZE = 4 * 1024 * 1024
SCOPES = ("CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE")


class EdgeInitError(AssertionError):
    """Where a real ThingsBoard Edge would stop, exit or stay uninitialised."""


@dataclass(frozen=True)
class ReceivedDownlink:
    """One DownlinkMsg as received, and how the Edge answered it."""

    at: float
    msg: edge_pb2.DownlinkMsg
    kinds: tuple[str, ...]
    success: bool
    error: str


class _Ended:
    def __init__(self, code: grpc.StatusCode | None, details: str) -> None:
        self.code = code
        self.details = details


def telemetry_entity_data(device_id: uuid.UUID, ts: int,
                          values: dict[str, int]) -> edge_pb2.EntityDataProto:
    """A device's telemetry as the Edge's TelemetryCloudProcessor uplinks it."""
    msb, lsb = halves(device_id)
    kvs = [transport_pb2.KeyValueProto(key=k, type=transport_pb2.LONG_V, long_v=v)
           for k, v in values.items()]
    return edge_pb2.EntityDataProto(
        entityIdMSB=msb, entityIdLSB=lsb, entityType="DEVICE",
        postTelemetryMsg=transport_pb2.PostTelemetryMsg(
            tsKvList=[transport_pb2.TsKvListProto(ts=ts, kv=kvs)]))


class TbEdge:
    def __init__(
        self,
        port: int,
        routing_key: str,
        secret: str,
        *,
        edge_version: int = edge_pb2.V_4_3_1_3,
        max_inbound: int = MAX_INBOUND_MESSAGE_SIZE,
        refuse_device: Callable[[dict[str, Any]], str | None] | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.routing_key = routing_key
        self.secret = secret
        self.edge_version = edge_version
        self.max_inbound = max_inbound
        self.refuse_device = refuse_device
        self.cond = threading.Condition()
        # state and records (under cond)
        self.configuration: edge_pb2.EdgeConfiguration | None = None
        self.server_max_inbound = 0
        self.tenant_id: uuid.UUID | None = None
        self.edge_id: uuid.UUID | None = None
        self.customer_id: uuid.UUID | None = None
        self.tenant_created_ms: int | None = None
        self.edge_created_ms: int | None = None
        self.sync_in_progress = False
        self.syncs_completed = 0
        self.downlinks: list[ReceivedDownlink] = []
        self.kind_counts: Counter[str] = Counter()
        self.tenant: dict[str, Any] | None = None
        self.devices: dict[uuid.UUID, dict[str, Any]] = {}
        self.device_profiles: dict[uuid.UUID, dict[str, Any]] = {}
        self.credentials: dict[uuid.UUID, str] = {}
        self.rule_chains: dict[uuid.UUID, dict[str, Any]] = {}
        self.rule_chain_metadata: list[dict[str, Any]] = []
        self.attributes: list[tuple[float, uuid.UUID, str, dict[str, Any]]] = []
        self.telemetry: list[tuple[uuid.UUID, int, dict[str, Any]]] = []
        self.cloud_events: list[edge_pb2.UplinkMsg] = []  # queued, not yet sent
        self.uplinks_sent: list[tuple[float, edge_pb2.UplinkMsg]] = []
        self.uplink_answers: dict[int, list[edge_pb2.UplinkResponseMsg]] = {}
        self.edge_updates: list[edge_pb2.EdgeConfiguration] = []
        self.ended: _Ended | None = None
        self._connect_answer: queue.SimpleQueue[edge_pb2.ConnectResponseMsg] = queue.SimpleQueue()
        self._out: queue.SimpleQueue[edge_pb2.RequestMsg | None] = queue.SimpleQueue()
        self.channel = grpc.insecure_channel(
            f"{host}:{port}", options=[("grpc.max_receive_message_length", max_inbound),
                                       ("grpc.keepalive_time_ms", 10_000),
                                       ("grpc.keepalive_timeout_ms", 5_000),
                                       ("grpc.keepalive_permit_without_calls", 1)])
        stub = edge_pb2_grpc.EdgeRpcServiceStub(self.channel)
        self._call = stub.handleMsgs(self._requests(), compression=grpc.Compression.Gzip)
        self._reader = threading.Thread(target=self._read, daemon=True, name="tb-edge-reader")
        self._reader.start()

    # -- the stream ------------------------------------------------------------------------------

    def _requests(self) -> Iterator[edge_pb2.RequestMsg]:
        while (msg := self._out.get()) is not None:
            yield msg

    def _send(self, msg: edge_pb2.RequestMsg) -> None:
        self._out.put(msg)

    def _read(self) -> None:
        ended = _Ended(grpc.StatusCode.OK, "")
        try:
            for resp in self._call:
                self._on_response(resp)
        except grpc.RpcError as exc:
            ended = _Ended(exc.code(), exc.details() or "")
        finally:
            with self.cond:
                self.ended = ended
                self.cond.notify_all()

    def close(self) -> None:
        self._out.put(None)
        self.channel.close()

    def __enter__(self) -> TbEdge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def wait_for(self, predicate: Callable[[], Any], *, timeout: float = DEADLINE_S,
                 what: str = "condition") -> Any:
        """predicate() evaluated under the Edge's lock until truthy; its value."""
        return wait_until(predicate, timeout=timeout, what=f"the ThingsBoard Edge: {what}",
                          condition=self.cond)

    def _on_response(self, resp: edge_pb2.ResponseMsg) -> None:
        if resp.HasField("connectResponseMsg"):
            self._connect_answer.put(resp.connectResponseMsg)
        elif resp.HasField("edgeUpdateMsg"):
            with self.cond:
                self.edge_updates.append(resp.edgeUpdateMsg.configuration)
                self.cond.notify_all()
        elif resp.HasField("uplinkResponseMsg"):
            answer = resp.uplinkResponseMsg
            with self.cond:
                self.uplink_answers.setdefault(answer.uplinkMsgId, []).append(answer)
                self.cond.notify_all()
        elif resp.HasField("downlinkMsg"):
            self._on_downlink(resp.downlinkMsg)

    # -- connect and initialisation --------------------------------------------------------------

    def connect(self, *, timeout: float = DEADLINE_S,
                full_sync: bool = True) -> edge_pb2.EdgeConfiguration:
        """Connect, initialise from the EdgeConfiguration as a real Edge does (EdgeInitError
        where it would not), then send SyncRequestMsg. The EdgeConfiguration."""
        self._send(edge_pb2.RequestMsg(
            msgType=edge_pb2.CONNECT_RPC_MESSAGE,
            connectRequestMsg=edge_pb2.ConnectRequestMsg(
                edgeRoutingKey=self.routing_key, edgeSecret=self.secret,
                edgeVersion=self.edge_version,  # type: ignore[arg-type]
                maxInboundMessageSize=self.max_inbound)))
        try:
            resp = self._connect_answer.get(timeout=timeout)
        except queue.Empty:
            raise EdgeInitError(f"no connect answer within {timeout}s (stream: "
                                f"{self.ended and (self.ended.code, self.ended.details)})") from None
        if resp.responseCode != edge_pb2.ACCEPTED:
            raise EdgeInitError("Failed to establish the connection! Response code: "
                                f"{edge_pb2.ConnectResponseCode.Name(resp.responseCode)}; "
                                f"{resp.errorMsg}")
        config = resp.configuration
        if config.cloudType != "CE":
            raise EdgeInitError("Terminating application. CE edge can be connected only to CE "
                                f"server version... (cloudType {config.cloudType!r})")
        tenant_id = uuid_from(config.tenantIdMSB, config.tenantIdLSB)
        edge_id = uuid_from(config.edgeIdMSB, config.edgeIdLSB)
        try:
            tenant_ms = unix_timestamp(tenant_id)
            edge_ms = unix_timestamp(edge_id)
        except JavaError as exc:
            raise EdgeInitError(f"{exc.java_class}: {exc.message} (tenant {tenant_id}, edge "
                                f"{edge_id}): a ThingsBoard Edge stays uninitialised") from None
        if not config.secret.strip():
            raise EdgeInitError("Edge secret should be specified!")
        customer = None
        if config.customerIdMSB != 0 and config.customerIdLSB != 0:
            customer = uuid_from(config.customerIdMSB, config.customerIdLSB)
        with self.cond:
            self.configuration = config
            self.server_max_inbound = (resp.maxInboundMessageSize
                                       if resp.HasField("maxInboundMessageSize") else 0)
            self.tenant_id, self.edge_id, self.customer_id = tenant_id, edge_id, customer
            self.tenant_created_ms, self.edge_created_ms = tenant_ms, edge_ms
            self.cloud_events.append(self._attributes_request("EDGE", edge_id))
            self.cloud_events.append(self._relation_request("EDGE", edge_id))
            self.sync_in_progress = True
        self._send(edge_pb2.RequestMsg(
            msgType=edge_pb2.SYNC_REQUEST_RPC_MESSAGE,
            syncRequestMsg=edge_pb2.SyncRequestMsg(fullSync=full_sync)))
        return config

    def wait_synced(self, *, timeout: float = 30.0) -> None:
        """Wait until a SyncCompletedMsg was processed and answered."""
        self.wait_for(lambda: self.syncs_completed > 0, timeout=timeout,
                      what="SyncCompletedMsg processed")

    # -- downlinks -------------------------------------------------------------------------------

    def _on_downlink(self, msg: edge_pb2.DownlinkMsg) -> None:
        kinds = downlink_kinds(msg)
        error = ""
        try:
            with self.cond:
                if msg.HasField("syncCompletedMsg"):
                    self.sync_in_progress = False
                self._apply(msg)
        except JavaError as exc:
            error = java_error_text(exc)
        with self.cond:
            self.downlinks.append(ReceivedDownlink(time.monotonic(), msg, kinds, not error, error))
            self.kind_counts.update(kinds)
        self._send(edge_pb2.RequestMsg(
            msgType=edge_pb2.UPLINK_RPC_MESSAGE,
            downlinkResponseMsg=edge_pb2.DownlinkResponseMsg(
                downlinkMsgId=msg.downlinkMsgId, success=not error, errorMsg=error)))
        if msg.HasField("syncCompletedMsg") and not error:
            with self.cond:
                self.syncs_completed += 1
                self.cond.notify_all()
        else:
            with self.cond:
                self.cond.notify_all()

    def _apply(self, msg: edge_pb2.DownlinkMsg) -> None:
        """DefaultDownlinkMessageService.processDownlinkMsg, under the lock; JavaError on the
        first failure."""
        assert self.tenant_id is not None, "a downlink before the connect answer"
        if msg.HasField("syncCompletedMsg"):
            self.cloud_events.append(self._attributes_request("TENANT", self.tenant_id))
            if self.customer_id is not None and self.customer_id != NULL_UUID:
                self.cloud_events.append(self._attributes_request("CUSTOMER", self.customer_id))
        if msg.HasField("edgeConfiguration"):
            self.edge_updates.append(msg.edgeConfiguration)
        for data in msg.entityData:
            self._entity_data(data)
        for profile in msg.deviceProfileUpdateMsg:
            entity = self._parse(profile.entity, "deviceProfile")
            self.device_profiles[uuid_from(profile.idMSB, profile.idLSB)] = entity
        for dev in msg.deviceUpdateMsg:
            self._device(dev)
        for cred in msg.deviceCredentialsUpdateMsg:
            creds = self._parse(cred.entity, "deviceCredentials")
            ref = creds.get("deviceId")
            device_id = uuid.UUID(str(ref["id"])) if isinstance(ref, dict) else None
            if device_id is not None and device_id in self.devices:
                token = creds.get("credentialsId")
                if not isinstance(token, str) or not token:
                    raise JavaError("Device credentials id should be specified!")
                self.credentials[device_id] = token
        for chain in msg.ruleChainUpdateMsg:
            self.rule_chains[uuid_from(chain.idMSB, chain.idLSB)] = self._parse(chain.entity,
                                                                                "ruleChain")
        for meta in msg.ruleChainMetadataUpdateMsg:
            self.rule_chain_metadata.append(self._parse(meta.entity, "ruleChainMetadata"))
        for tenant in msg.tenantUpdateMsg:
            self.tenant = self._parse(tenant.entity, "tenant")

    def _parse(self, text: str, what: str) -> dict[str, Any]:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
        if not isinstance(value, dict):
            raise JavaError(f"[{{{self.tenant_id}}}] {what}UpdateMsg cannot be converted to {what}")
        return value

    def _typed(self, value: Any, entity_type: str) -> uuid.UUID | None:
        if value is None:
            return None
        if not isinstance(value, dict) or "id" not in value:
            raise JavaError(f"Cannot deserialize value of type `{entity_type.title()}Id` from "
                            f"{type(value).__name__}",
                            "com.fasterxml.jackson.databind.exc.MismatchedInputException")
        return uuid.UUID(str(value["id"]))

    def _device(self, m: edge_pb2.DeviceUpdateMsg) -> None:
        device_id = uuid_from(m.idMSB, m.idLSB)
        if m.msgType == edge_pb2.ENTITY_DELETED_RPC_MESSAGE:
            self.devices.pop(device_id, None)
            return
        device = self._parse(m.entity, "device")
        tenant = self._typed(device.get("tenantId"), "TENANT")
        customer = self._typed(device.get("customerId"), "CUSTOMER")
        self._typed(device.get("deviceProfileId"), "DEVICE_PROFILE")
        name = device.get("name")
        if not isinstance(name, str) or not name.strip():
            raise JavaError("Device name should be specified!")
        if tenant is None:
            raise JavaError("Device should be assigned to tenant!")
        if tenant != self.tenant_id:
            raise JavaError("Device is referencing to non-existent tenant!")
        if customer is not None and customer not in (NULL_UUID, self.customer_id):
            raise JavaError("Can't assign device to non-existent customer!")
        refusal = self.refuse_device(device) if self.refuse_device is not None else None
        if refusal is not None:
            raise JavaError(refusal)
        created = device_id not in self.devices
        self.devices[device_id] = device
        if created:
            self.cloud_events.append(self._attributes_request("DEVICE", device_id))
            self.cloud_events.append(self._relation_request("DEVICE", device_id))

    def _entity_data(self, d: edge_pb2.EntityDataProto) -> None:
        entity_id = uuid_from(d.entityIdMSB, d.entityIdLSB)
        known = (entity_id in self.devices or entity_id in (self.tenant_id, self.edge_id))
        if not known:
            return  # "Skipping telemetry update msg because entity doesn't exists on edge"
        for name in ("postAttributesMsg", "attributesUpdatedMsg"):
            if d.HasField(name):
                if d.postAttributeScope not in SCOPES:
                    raise JavaError("No enum constant org.thingsboard.server.common.data."
                                    "AttributeScope." + d.postAttributeScope,
                                    "java.lang.IllegalArgumentException")
                self.attributes.append((time.monotonic(), entity_id, d.postAttributeScope,
                                        kv_values(getattr(d, name).kv)))
        if d.HasField("postTelemetryMsg"):
            for entry in d.postTelemetryMsg.tsKvList:
                self.telemetry.append((entity_id, entry.ts, kv_values(entry.kv)))

    # -- uplinks ---------------------------------------------------------------------------------

    @staticmethod
    def _attributes_request(entity_type: str, entity_id: uuid.UUID) -> edge_pb2.UplinkMsg:
        msb, lsb = halves(entity_id)
        scopes = ["SERVER_SCOPE"] + (["SHARED_SCOPE"] if entity_type == "DEVICE" else [])
        return edge_pb2.UplinkMsg(attributesRequestMsg=[
            edge_pb2.AttributesRequestMsg(entityIdMSB=msb, entityIdLSB=lsb,
                                          entityType=entity_type, scope=s) for s in scopes])

    @staticmethod
    def _relation_request(entity_type: str, entity_id: uuid.UUID) -> edge_pb2.UplinkMsg:
        msb, lsb = halves(entity_id)
        return edge_pb2.UplinkMsg(relationRequestMsg=[
            edge_pb2.RelationRequestMsg(entityIdMSB=msb, entityIdLSB=lsb,
                                        entityType=entity_type)])

    def flush_requests(self, *, timeout_s: float = UPLINK_PACK_TIMEOUT_S
                       ) -> dict[int, edge_pb2.UplinkResponseMsg]:
        """Send the queued cloud events (attribute and relation requests), up to 50 per pack,
        as the Edge's uplink sender does, once the sync is over. {uplinkMsgId: last answer}."""
        with self.cond:
            assert not self.sync_in_progress and self.syncs_completed, "uplinks before the sync"
            events, self.cloud_events = self.cloud_events, []
        answers: dict[int, edge_pb2.UplinkResponseMsg] = {}
        for start in range(0, len(events), 50):
            answers.update(self.send_pack(events[start:start + 50], timeout_s=timeout_s))
        return answers

    def send_pack(self, msgs: list[edge_pb2.UplinkMsg], *,
                  timeout_s: float = UPLINK_PACK_TIMEOUT_S,
                  attempts: int = MAX_SEND_UPLINK_ATTEMPTS,
                  ) -> dict[int, edge_pb2.UplinkResponseMsg]:
        """Send a pack of UplinkMsgs (each given a random uplinkMsgId) at once and wait up to
        timeout_s for every answer; resend the failed or unanswered ones after 1 s, for at
        most ``attempts`` sends in all. {uplinkMsgId: the last answer} of those answered."""
        pending: dict[int, edge_pb2.UplinkMsg] = {}
        for m in msgs:
            out = edge_pb2.UplinkMsg()
            out.CopyFrom(m)
            out.uplinkMsgId = next_positive_int()
            pending[out.uplinkMsgId] = out
        last: dict[int, edge_pb2.UplinkResponseMsg] = {}
        for attempt in range(1, attempts + 1):
            with self.cond:
                seen = {i: len(self.uplink_answers.get(i, [])) for i in pending}
                now = time.monotonic()
                self.uplinks_sent.extend((now, m) for m in pending.values())
            for m in pending.values():
                self._send(edge_pb2.RequestMsg(msgType=edge_pb2.UPLINK_RPC_MESSAGE, uplinkMsg=m))

            deadline = time.monotonic() + timeout_s
            with self.cond:
                while self.ended is None and any(
                        len(self.uplink_answers.get(i, [])) <= seen[i] for i in pending):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break  # unanswered within uplink_pack_timeout_sec: resent below
                    self.cond.wait(left)
                for i in list(pending):
                    got = self.uplink_answers.get(i, [])
                    if len(got) > seen[i]:
                        last[i] = got[-1]
                        if got[-1].success:
                            del pending[i]
            if not pending or attempt == attempts or self.ended is not None:
                break
            resend_at = time.monotonic() + SLEEP_BETWEEN_BATCHES_S
            with self.cond:
                while self.ended is None and (left := resend_at - time.monotonic()) > 0:
                    self.cond.wait(left)
        return last

    # -- what tests read -------------------------------------------------------------------------

    def kinds_in_order(self) -> list[tuple[str, ...]]:
        with self.cond:
            return [d.kinds for d in self.downlinks]

    def refused(self) -> list[ReceivedDownlink]:
        with self.cond:
            return [d for d in self.downlinks if not d.success]

    def shared_attributes(self, device_id: uuid.UUID, *, after: float = 0.0) -> dict[str, Any]:
        """The device's SHARED_SCOPE attributes received (after the monotonic time ``after``)."""
        out: dict[str, Any] = {}
        with self.cond:
            for at, entity_id, scope, values in self.attributes:
                if entity_id == device_id and scope == "SHARED_SCOPE" and at > after:
                    out.update(values)
        return out


def device_created_uplink(tenant_id: uuid.UUID, device_id: uuid.UUID, name: str,
                          token: str) -> edge_pb2.UplinkMsg:
    """A device the Edge created, as its DeviceCloudProcessor uplinks it: device and
    credentials (4.x JSON), no edge-sync extension."""
    msb, lsb = halves(device_id)
    device = {"id": typed_id("DEVICE", device_id), "createdTime": unix_timestamp(device_id)
              if device_id.version == 1 else int(time.time() * 1000),
              "tenantId": typed_id("TENANT", tenant_id),
              "customerId": typed_id("CUSTOMER", NULL_UUID), "name": name, "type": "default",
              "label": None, "deviceProfileId": None, "additionalInfo": None}
    creds = {"deviceId": typed_id("DEVICE", device_id), "credentialsType": "ACCESS_TOKEN",
             "credentialsId": token, "credentialsValue": None}
    return edge_pb2.UplinkMsg(
        deviceUpdateMsg=[edge_pb2.DeviceUpdateMsg(msgType=edge_pb2.ENTITY_CREATED_RPC_MESSAGE,
                                                  idMSB=msb, idLSB=lsb,
                                                  entity=json.dumps(device))],
        deviceCredentialsUpdateMsg=[edge_pb2.DeviceCredentialsUpdateMsg(
            entity=json.dumps(creds))])
