"""Tests of the wire protocol definitions in edge_sync/proto/.

* The committed generated modules are exactly what the .proto files give (scripts/gen-proto).
* Names, field numbers and types match ThingsBoard 4.x edge.proto and transport.proto (its edge
  API), read back from the message descriptors of the generated modules.
* edge-sync's extensions live at field numbers >= 1000, have presence, and survive a round trip
  through a peer that does not know them (as a ThingsBoard server would).
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from grpc_tools import protoc

from edge_sync.proto import edge_pb2, edge_pb2_grpc, transport_pb2

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ("edge_sync/proto/transport.proto", "edge_sync/proto/edge.proto")
GENERATED = (
    "edge_sync/proto/transport_pb2.py",
    "edge_sync/proto/transport_pb2.pyi",
    "edge_sync/proto/edge_pb2.py",
    "edge_sync/proto/edge_pb2.pyi",
    "edge_sync/proto/edge_pb2_grpc.py",
)
EXTENSION_MIN = 1000

# Every payload type that can appear in an UplinkMsg: each carries edgeSeqId = 1000.
UPLINK_PAYLOADS = (
    "EntityDataProto",
    "DeviceUpdateMsg",
    "DeviceCredentialsUpdateMsg",
    "AlarmUpdateMsg",
    "RelationUpdateMsg",
    "DeviceRpcCallMsg",
    "AssetUpdateMsg",
    "DashboardUpdateMsg",
    "AttributesRequestMsg",
    "RelationRequestMsg",
    "RuleChainMetadataRequestMsg",
    "AssetProfileUpdateMsg",
    "DeviceProfileUpdateMsg",
    "RuleChainUpdateMsg",
    "RuleChainMetadataUpdateMsg",
    "UserUpdateMsg",
)


def _message(name: str) -> Descriptor:
    """Descriptor of a message of package edge, or of package transport when prefixed so."""
    if name.startswith("transport."):
        return transport_pb2.DESCRIPTOR.message_types_by_name[name.removeprefix("transport.")]
    return edge_pb2.DESCRIPTOR.message_types_by_name[name]


def _field(message: str, field: str) -> FieldDescriptor:
    return _message(message).fields_by_name[field]


# --- (a) the committed generated modules are up to date --------------------------------------


def test_generated_modules_are_up_to_date(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bundled = importlib.resources.files("grpc_tools") / "_proto"
    monkeypatch.chdir(ROOT)
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{ROOT}",
            f"-I{bundled}",
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *PROTOS,
        ]
    )
    assert rc == 0, "protoc failed on the .proto files"
    stale = [
        name
        for name in GENERATED
        if not (ROOT / name).is_file()
        or (ROOT / name).read_bytes() != (tmp_path / name).read_bytes()
    ]
    assert not stale, f"stale generated module(s), run scripts/gen-proto: {', '.join(stale)}"


def test_generated_imports_are_package_absolute() -> None:
    edge_src = (ROOT / "edge_sync/proto/edge_pb2.py").read_text()
    grpc_src = (ROOT / "edge_sync/proto/edge_pb2_grpc.py").read_text()
    assert "from edge_sync.proto import transport_pb2" in edge_src
    assert "from edge_sync.proto import edge_pb2" in grpc_src
    assert edge_pb2.DESCRIPTOR.dependencies[0] is transport_pb2.DESCRIPTOR


# --- (b) names, numbers and types per protocol.md ----------------------------------------------


def test_packages() -> None:
    assert edge_pb2.DESCRIPTOR.package == "edge"
    assert transport_pb2.DESCRIPTOR.package == "transport"
    for module in (edge_pb2, transport_pb2):
        file_proto = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(file_proto)
        assert file_proto.syntax == "proto3"


def test_service() -> None:
    service = edge_pb2.DESCRIPTOR.services_by_name["EdgeRpcService"]
    assert service.full_name == "edge.EdgeRpcService"
    assert [m.name for m in service.methods] == ["handleMsgs"]
    method = service.methods_by_name["handleMsgs"]
    assert method.client_streaming
    assert method.server_streaming
    assert method.input_type.full_name == "edge.RequestMsg"
    assert method.output_type.full_name == "edge.ResponseMsg"
    assert callable(edge_pb2_grpc.add_EdgeRpcServiceServicer_to_server)
    assert hasattr(edge_pb2_grpc, "EdgeRpcServiceStub")


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        ("RequestMsg", "msgType", 1),
        ("RequestMsg", "connectRequestMsg", 2),
        ("RequestMsg", "uplinkMsg", 3),
        ("RequestMsg", "downlinkResponseMsg", 4),
        ("RequestMsg", "syncRequestMsg", 5),
        ("ResponseMsg", "connectResponseMsg", 1),
        ("ResponseMsg", "downlinkMsg", 3),
        ("ResponseMsg", "edgeUpdateMsg", 4),
        ("ConnectRequestMsg", "edgeVersion", 3),
        ("ConnectRequestMsg", "maxInboundMessageSize", 4),
        ("ConnectResponseMsg", "configuration", 3),
        ("EdgeConfiguration", "cloudType", 12),
        ("SyncRequestMsg", "fullSync", 2),
        ("UplinkMsg", "uplinkMsgId", 1),
        ("UplinkMsg", "entityData", 2),
        ("UplinkMsg", "ruleChainMetadataRequestMsg", 7),
        ("UplinkMsg", "deviceRpcCallMsg", 12),
        ("UplinkMsg", "assetUpdateMsg", 16),
        ("UplinkMsg", "deviceProfileUpdateMsg", 20),
        ("UplinkMsg", "ruleChainMetadataUpdateMsg", 24),
        ("UplinkMsg", "userUpdateMsg", 28),
        ("UplinkResponseMsg", "uplinkMsgId", 3),
        ("DownlinkMsg", "syncCompletedMsg", 2),
        ("DownlinkMsg", "entityData", 3),
        ("DownlinkMsg", "deviceRpcCallMsg", 21),
        ("DownlinkMsg", "assetProfileUpdateMsg", 24),
        ("DownlinkMsg", "edgeConfiguration", 25),
        ("DownlinkMsg", "entityViewUpdateMsg", 12),
        ("DownlinkMsg", "userCredentialsUpdateMsg", 15),
        ("DownlinkMsg", "adminSettingsUpdateMsg", 20),
        ("DownlinkMsg", "otaPackageUpdateMsg", 22),
        ("DownlinkMsg", "queueUpdateMsg", 23),
        ("DownlinkMsg", "tenantUpdateMsg", 26),
        ("DownlinkMsg", "tenantProfileUpdateMsg", 27),
        ("DownlinkMsg", "resourceUpdateMsg", 28),
        ("DownlinkMsg", "alarmCommentUpdateMsg", 29),
        ("DownlinkMsg", "oAuth2ClientUpdateMsg", 30),
        ("DownlinkMsg", "notificationRuleUpdateMsg", 31),
        ("DownlinkMsg", "notificationTargetUpdateMsg", 32),
        ("DownlinkMsg", "notificationTemplateUpdateMsg", 33),
        ("DownlinkMsg", "oAuth2DomainUpdateMsg", 34),
        ("DownlinkMsg", "calculatedFieldUpdateMsg", 35),
        ("DownlinkMsg", "aiModelUpdateMsg", 36),
        ("DownlinkMsg", "apiKeyUpdateMsg", 37),
        ("TenantUpdateMsg", "entity", 17),
        ("TenantProfileUpdateMsg", "entity", 9),
        ("EntityViewUpdateMsg", "entity", 12),
        ("OtaPackageUpdateMsg", "entity", 18),
        ("QueueUpdateMsg", "entity", 14),
        ("ResourceUpdateMsg", "entity", 11),
        ("AlarmCommentUpdateMsg", "entity", 2),
        ("AdminSettingsUpdateMsg", "entity", 4),
        ("UserCredentialsUpdateMsg", "entity", 5),
        ("NotificationRuleUpdateMsg", "entity", 4),
        ("OAuth2DomainUpdateMsg", "idLSB", 3),
        ("CalculatedFieldUpdateMsg", "entity", 4),
        ("ApiKeyUpdateMsg", "entity", 4),
        ("DownlinkResponseMsg", "downlinkMsgId", 3),
        ("EntityDataProto", "postTelemetryMsg", 4),
        ("EntityDataProto", "attributeDeleteMsg", 8),
        ("EntityDataProto", "attributeTs", 9),
        ("DeviceRpcCallMsg", "sessionId", 14),
        ("DeviceUpdateMsg", "entity", 18),
        ("DeviceProfileUpdateMsg", "entity", 22),
        ("DeviceCredentialsUpdateMsg", "entity", 6),
        ("AssetUpdateMsg", "entity", 12),
        ("AssetProfileUpdateMsg", "entity", 13),
        ("AlarmUpdateMsg", "entity", 18),
        ("RelationUpdateMsg", "entity", 11),
        ("DashboardUpdateMsg", "entity", 12),
        ("RuleChainUpdateMsg", "entity", 10),
        ("RuleChainMetadataUpdateMsg", "entity", 8),
        ("UserUpdateMsg", "entity", 11),
        ("CustomerUpdateMsg", "entity", 14),
        ("WidgetsBundleUpdateMsg", "widgets", 9),
        ("WidgetsBundleUpdateMsg", "entity", 11),
        ("WidgetTypeUpdateMsg", "entity", 14),
        ("transport.KeyValueProto", "json_v", 7),
        ("transport.TsKvListProto", "kv", 2),
        ("transport.PostAttributeMsg", "shared", 2),
        # edge-sync extensions
        ("UplinkMsg", "firstEdgeSeqId", 1000),
        ("UplinkResponseMsg", "rejectedEdgeSeqId", 1000),
        ("UplinkResponseMsg", "retryable", 1001),
        ("DownlinkResponseMsg", "retryable", 1000),
        ("DownlinkMsg", "cloudTimeMillis", 1000),
        ("ConnectRequestMsg", "edgeTimeMillis", 1000),
        ("ConnectResponseMsg", "cloudCapabilities", 1000),
    ],
)
def test_field_numbers(message: str, field: str, number: int) -> None:
    assert _field(message, field).number == number


@pytest.mark.parametrize(
    ("message", "field", "type_name"),
    [
        ("RequestMsg", "downlinkResponseMsg", "edge.DownlinkResponseMsg"),
        ("ResponseMsg", "edgeUpdateMsg", "edge.EdgeUpdateMsg"),
        ("EdgeUpdateMsg", "configuration", "edge.EdgeConfiguration"),
        ("DownlinkMsg", "edgeConfiguration", "edge.EdgeConfiguration"),
        ("EntityDataProto", "postTelemetryMsg", "transport.PostTelemetryMsg"),
        ("EntityDataProto", "postAttributesMsg", "transport.PostAttributeMsg"),
        ("EntityDataProto", "attributesUpdatedMsg", "transport.PostAttributeMsg"),
        ("DeviceRpcCallMsg", "requestMsg", "edge.RpcRequestMsg"),
        ("ConnectResponseMsg", "cloudCapabilities", "edge.CloudCapabilities"),
    ],
)
def test_message_field_types(message: str, field: str, type_name: str) -> None:
    assert _field(message, field).message_type.full_name == type_name


@pytest.mark.parametrize(
    ("message", "field", "scalar"),
    [
        ("UplinkMsg", "uplinkMsgId", FieldDescriptor.TYPE_INT32),
        ("DownlinkMsg", "downlinkMsgId", FieldDescriptor.TYPE_INT32),
        ("ConnectRequestMsg", "maxInboundMessageSize", FieldDescriptor.TYPE_INT32),
        ("EdgeConfiguration", "edgeIdMSB", FieldDescriptor.TYPE_INT64),
        ("EntityDataProto", "entityIdLSB", FieldDescriptor.TYPE_INT64),
        ("EntityDataProto", "attributeTs", FieldDescriptor.TYPE_INT64),
        ("DeviceRpcCallMsg", "requestId", FieldDescriptor.TYPE_INT32),
        ("DeviceRpcCallMsg", "expirationTime", FieldDescriptor.TYPE_INT64),
        ("DeviceUpdateMsg", "idMSB", FieldDescriptor.TYPE_INT64),
        ("DeviceUpdateMsg", "entity", FieldDescriptor.TYPE_STRING),
        ("transport.KeyValueProto", "long_v", FieldDescriptor.TYPE_INT64),
        ("transport.KeyValueProto", "double_v", FieldDescriptor.TYPE_DOUBLE),
        ("transport.TsKvListProto", "ts", FieldDescriptor.TYPE_INT64),
        ("CloudCapabilities", "serverTimeMillis", FieldDescriptor.TYPE_INT64),
    ],
)
def test_scalar_field_types(message: str, field: str, scalar: int) -> None:
    assert _field(message, field).type == scalar


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ("ConnectRequestMsg", "maxInboundMessageSize"),
        ("ConnectResponseMsg", "maxInboundMessageSize"),
        ("SyncRequestMsg", "fullSync"),
        ("EntityDataProto", "attributeTs"),
        ("DeviceRpcCallMsg", "persisted"),
        ("DeviceRpcCallMsg", "retries"),
        ("DeviceRpcCallMsg", "additionalInfo"),
        ("WidgetsBundleUpdateMsg", "widgets"),
    ],
)
def test_optional_fields_have_presence(message: str, field: str) -> None:
    assert _field(message, field).has_presence


def test_sync_request_has_no_field_one() -> None:
    assert [f.number for f in _message("SyncRequestMsg").fields] == [2]
    assert list(_message("SyncCompletedMsg").fields) == []


def test_device_credentials_update_has_no_msg_type_or_id() -> None:
    assert set(_message("DeviceCredentialsUpdateMsg").fields_by_name) == {"entity", "edgeSeqId"}


def test_uplink_lists_are_repeated() -> None:
    for field in _message("UplinkMsg").fields:
        if field.number < EXTENSION_MIN and field.number != 1:
            assert field.is_repeated, field.name


@pytest.mark.parametrize(
    ("enum", "values"),
    [
        (
            edge_pb2.RequestMsgType,
            {"CONNECT_RPC_MESSAGE": 0, "UPLINK_RPC_MESSAGE": 1, "SYNC_REQUEST_RPC_MESSAGE": 2},
        ),
        (
            edge_pb2.ConnectResponseCode,
            {"ACCEPTED": 0, "BAD_CREDENTIALS": 1, "SERVER_UNAVAILABLE": 2},
        ),
        (
            edge_pb2.UpdateMsgType,
            {
                "ENTITY_CREATED_RPC_MESSAGE": 0,
                "ENTITY_UPDATED_RPC_MESSAGE": 1,
                "ENTITY_DELETED_RPC_MESSAGE": 2,
                "ALARM_ACK_RPC_MESSAGE": 3,
                "ALARM_CLEAR_RPC_MESSAGE": 4,
            },
        ),
        (
            transport_pb2.KeyValueType,
            {"BOOLEAN_V": 0, "LONG_V": 1, "DOUBLE_V": 2, "STRING_V": 3, "JSON_V": 4},
        ),
    ],
)
def test_enum_values(enum: object, values: dict[str, int]) -> None:
    assert dict(enum.items()) == values  # type: ignore[attr-defined]


def test_edge_versions() -> None:
    versions = dict(edge_pb2.EdgeVersion.items())
    assert versions["V_3_3_0"] == 0
    assert versions["V_4_0_0"] == 10
    assert versions["V_4_1_0"] == 11
    assert versions["V_4_2_0"] == 12
    assert versions["V_4_3_0"] == 13
    assert versions["V_LATEST"] == 99999
    assert versions["V_4_2_1_2"] == 14
    assert versions["V_4_3_0_1"] == 15
    assert versions["V_4_2_2_3"] == 4223
    assert versions["V_4_3_1_3"] == 4313
    assert versions["V_4_4_0"] == 4400
    numbered = sorted(v for name, v in versions.items() if v < 100)
    assert numbered == list(range(16)), "versions 0..15 are contiguous"


# --- edge-sync extensions ----------------------------------------------------------------------


@pytest.mark.parametrize("payload", UPLINK_PAYLOADS)
def test_uplink_payloads_carry_edge_seq_id(payload: str) -> None:
    field = _field(payload, "edgeSeqId")
    assert field.number == EXTENSION_MIN
    assert field.type == FieldDescriptor.TYPE_INT64
    assert field.has_presence


def test_every_uplink_payload_type_is_covered() -> None:
    payload_types = {
        f.message_type.name for f in _message("UplinkMsg").fields if f.message_type is not None
    }
    assert payload_types == set(UPLINK_PAYLOADS)


def test_extensions_are_optional_and_high() -> None:
    """Every field >= 1000 has presence; every field below it is ThingsBoard's (no edgeSeqId)."""
    for message in edge_pb2.DESCRIPTOR.message_types_by_name.values():
        for field in message.fields:
            if field.number >= EXTENSION_MIN:
                assert field.has_presence, f"{message.name}.{field.name}"
            else:
                assert "EdgeSeqId" not in field.name and field.name != "edgeSeqId"


def test_cloud_capabilities_fields() -> None:
    fields = {f.name: f.number for f in _message("CloudCapabilities").fields}
    assert fields == {"orderedApply": 1, "dedupBySeq": 2, "serverTimeMillis": 3}


# --- (c) round trips ---------------------------------------------------------------------------


def _telemetry_uplink() -> edge_pb2.UplinkMsg:
    telemetry = transport_pb2.PostTelemetryMsg(
        tsKvList=[
            transport_pb2.TsKvListProto(
                ts=1_700_000_000_000,
                kv=[
                    transport_pb2.KeyValueProto(
                        key="temperature", type=transport_pb2.DOUBLE_V, double_v=21.5
                    ),
                    transport_pb2.KeyValueProto(
                        key="online", type=transport_pb2.BOOLEAN_V, bool_v=True
                    ),
                ],
            )
        ]
    )
    data = edge_pb2.EntityDataProto(
        entityIdMSB=-0x1234_5678_9ABC_DEF0,
        entityIdLSB=0x0FED_CBA9_8765_4321,
        entityType="DEVICE",
        postTelemetryMsg=telemetry,
        edgeSeqId=42,
    )
    return edge_pb2.UplinkMsg(uplinkMsgId=7, entityData=[data], firstEdgeSeqId=42)


def test_uplink_round_trip() -> None:
    sent = _telemetry_uplink()
    received = edge_pb2.UplinkMsg.FromString(sent.SerializeToString())
    assert received == sent
    data = received.entityData[0]
    assert data.HasField("edgeSeqId")
    assert data.edgeSeqId == 42
    assert received.firstEdgeSeqId == 42
    assert data.entityIdMSB == -0x1234_5678_9ABC_DEF0
    assert data.postTelemetryMsg.tsKvList[0].kv[0].double_v == 21.5
    assert not data.HasField("attributeTs")


def test_message_without_extension() -> None:
    plain = edge_pb2.EntityDataProto(
        entityIdMSB=1,
        entityIdLSB=2,
        entityType="ASSET",
        postAttributesMsg=transport_pb2.PostAttributeMsg(
            kv=[transport_pb2.KeyValueProto(key="k", type=transport_pb2.STRING_V, string_v="v")]
        ),
        postAttributeScope="SERVER_SCOPE",
    )
    parsed = edge_pb2.EntityDataProto.FromString(plain.SerializeToString())
    assert parsed == plain
    assert not parsed.HasField("edgeSeqId")
    assert parsed.edgeSeqId == 0
    assert not edge_pb2.UplinkMsg(uplinkMsgId=1).HasField("firstEdgeSeqId")
    assert not edge_pb2.ConnectResponseMsg().HasField("cloudCapabilities")


def _thingsboard_view(name: str) -> type:
    """Message class of edge.<name> as a peer without edge-sync's extensions sees it."""
    pool = descriptor_pool.DescriptorPool()
    transport_file = descriptor_pb2.FileDescriptorProto()
    transport_pb2.DESCRIPTOR.CopyToProto(transport_file)
    pool.Add(transport_file)
    edge_file = descriptor_pb2.FileDescriptorProto()
    edge_pb2.DESCRIPTOR.CopyToProto(edge_file)
    for message in edge_file.message_type:
        kept = [f for f in message.field if f.number < EXTENSION_MIN]
        del message.field[:]
        message.field.extend(kept)
        # Synthetic oneofs of removed proto3 optional fields would be left empty: drop them.
        used = {f.oneof_index for f in kept if f.HasField("oneof_index")}
        if len(used) != len(message.oneof_decl):
            renumber = {old: new for new, old in enumerate(sorted(used))}
            decls = [message.oneof_decl[i] for i in sorted(used)]
            del message.oneof_decl[:]
            message.oneof_decl.extend(decls)
            for f in message.field:
                if f.HasField("oneof_index"):
                    f.oneof_index = renumber[f.oneof_index]
    kept_messages = [m for m in edge_file.message_type if m.name != "CloudCapabilities"]
    del edge_file.message_type[:]
    edge_file.message_type.extend(kept_messages)
    pool.Add(edge_file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"edge.{name}"))


def test_peer_without_extensions_reads_and_relays_them() -> None:
    sent = _telemetry_uplink()
    thingsboard_uplink = _thingsboard_view("UplinkMsg")
    assert "firstEdgeSeqId" not in thingsboard_uplink.DESCRIPTOR.fields_by_name
    seen = thingsboard_uplink.FromString(sent.SerializeToString())
    assert seen.uplinkMsgId == 7
    assert seen.entityData[0].entityType == "DEVICE"
    assert seen.entityData[0].postTelemetryMsg.tsKvList[0].kv[1].bool_v is True
    # The unknown extension fields are kept and come back intact.
    assert edge_pb2.UplinkMsg.FromString(seen.SerializeToString()) == sent
