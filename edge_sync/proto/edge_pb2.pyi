from edge_sync.proto import transport_pb2 as _transport_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RequestMsgType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CONNECT_RPC_MESSAGE: _ClassVar[RequestMsgType]
    UPLINK_RPC_MESSAGE: _ClassVar[RequestMsgType]
    SYNC_REQUEST_RPC_MESSAGE: _ClassVar[RequestMsgType]

class EdgeVersion(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    V_3_3_0: _ClassVar[EdgeVersion]
    V_3_3_3: _ClassVar[EdgeVersion]
    V_3_4_0: _ClassVar[EdgeVersion]
    V_3_6_0: _ClassVar[EdgeVersion]
    V_3_6_1: _ClassVar[EdgeVersion]
    V_3_6_2: _ClassVar[EdgeVersion]
    V_3_6_4: _ClassVar[EdgeVersion]
    V_3_7_0: _ClassVar[EdgeVersion]
    V_3_8_0: _ClassVar[EdgeVersion]
    V_3_9_0: _ClassVar[EdgeVersion]
    V_4_0_0: _ClassVar[EdgeVersion]
    V_4_1_0: _ClassVar[EdgeVersion]
    V_4_2_0: _ClassVar[EdgeVersion]
    V_4_3_0: _ClassVar[EdgeVersion]
    V_4_2_1_2: _ClassVar[EdgeVersion]
    V_4_3_0_1: _ClassVar[EdgeVersion]
    V_4_2_2: _ClassVar[EdgeVersion]
    V_4_2_2_1: _ClassVar[EdgeVersion]
    V_4_2_2_2: _ClassVar[EdgeVersion]
    V_4_2_2_3: _ClassVar[EdgeVersion]
    V_4_2_2_4: _ClassVar[EdgeVersion]
    V_4_2_2_5: _ClassVar[EdgeVersion]
    V_4_3_1: _ClassVar[EdgeVersion]
    V_4_3_1_1: _ClassVar[EdgeVersion]
    V_4_3_1_2: _ClassVar[EdgeVersion]
    V_4_3_1_3: _ClassVar[EdgeVersion]
    V_4_3_1_4: _ClassVar[EdgeVersion]
    V_4_3_1_5: _ClassVar[EdgeVersion]
    V_4_4_0: _ClassVar[EdgeVersion]
    V_LATEST: _ClassVar[EdgeVersion]

class ConnectResponseCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ACCEPTED: _ClassVar[ConnectResponseCode]
    BAD_CREDENTIALS: _ClassVar[ConnectResponseCode]
    SERVER_UNAVAILABLE: _ClassVar[ConnectResponseCode]

class UpdateMsgType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ENTITY_CREATED_RPC_MESSAGE: _ClassVar[UpdateMsgType]
    ENTITY_UPDATED_RPC_MESSAGE: _ClassVar[UpdateMsgType]
    ENTITY_DELETED_RPC_MESSAGE: _ClassVar[UpdateMsgType]
    ALARM_ACK_RPC_MESSAGE: _ClassVar[UpdateMsgType]
    ALARM_CLEAR_RPC_MESSAGE: _ClassVar[UpdateMsgType]
CONNECT_RPC_MESSAGE: RequestMsgType
UPLINK_RPC_MESSAGE: RequestMsgType
SYNC_REQUEST_RPC_MESSAGE: RequestMsgType
V_3_3_0: EdgeVersion
V_3_3_3: EdgeVersion
V_3_4_0: EdgeVersion
V_3_6_0: EdgeVersion
V_3_6_1: EdgeVersion
V_3_6_2: EdgeVersion
V_3_6_4: EdgeVersion
V_3_7_0: EdgeVersion
V_3_8_0: EdgeVersion
V_3_9_0: EdgeVersion
V_4_0_0: EdgeVersion
V_4_1_0: EdgeVersion
V_4_2_0: EdgeVersion
V_4_3_0: EdgeVersion
V_4_2_1_2: EdgeVersion
V_4_3_0_1: EdgeVersion
V_4_2_2: EdgeVersion
V_4_2_2_1: EdgeVersion
V_4_2_2_2: EdgeVersion
V_4_2_2_3: EdgeVersion
V_4_2_2_4: EdgeVersion
V_4_2_2_5: EdgeVersion
V_4_3_1: EdgeVersion
V_4_3_1_1: EdgeVersion
V_4_3_1_2: EdgeVersion
V_4_3_1_3: EdgeVersion
V_4_3_1_4: EdgeVersion
V_4_3_1_5: EdgeVersion
V_4_4_0: EdgeVersion
V_LATEST: EdgeVersion
ACCEPTED: ConnectResponseCode
BAD_CREDENTIALS: ConnectResponseCode
SERVER_UNAVAILABLE: ConnectResponseCode
ENTITY_CREATED_RPC_MESSAGE: UpdateMsgType
ENTITY_UPDATED_RPC_MESSAGE: UpdateMsgType
ENTITY_DELETED_RPC_MESSAGE: UpdateMsgType
ALARM_ACK_RPC_MESSAGE: UpdateMsgType
ALARM_CLEAR_RPC_MESSAGE: UpdateMsgType

class RequestMsg(_message.Message):
    __slots__ = ("msgType", "connectRequestMsg", "uplinkMsg", "downlinkResponseMsg", "syncRequestMsg")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    CONNECTREQUESTMSG_FIELD_NUMBER: _ClassVar[int]
    UPLINKMSG_FIELD_NUMBER: _ClassVar[int]
    DOWNLINKRESPONSEMSG_FIELD_NUMBER: _ClassVar[int]
    SYNCREQUESTMSG_FIELD_NUMBER: _ClassVar[int]
    msgType: RequestMsgType
    connectRequestMsg: ConnectRequestMsg
    uplinkMsg: UplinkMsg
    downlinkResponseMsg: DownlinkResponseMsg
    syncRequestMsg: SyncRequestMsg
    def __init__(self, msgType: _Optional[_Union[RequestMsgType, str]] = ..., connectRequestMsg: _Optional[_Union[ConnectRequestMsg, _Mapping]] = ..., uplinkMsg: _Optional[_Union[UplinkMsg, _Mapping]] = ..., downlinkResponseMsg: _Optional[_Union[DownlinkResponseMsg, _Mapping]] = ..., syncRequestMsg: _Optional[_Union[SyncRequestMsg, _Mapping]] = ...) -> None: ...

class ResponseMsg(_message.Message):
    __slots__ = ("connectResponseMsg", "uplinkResponseMsg", "downlinkMsg", "edgeUpdateMsg")
    CONNECTRESPONSEMSG_FIELD_NUMBER: _ClassVar[int]
    UPLINKRESPONSEMSG_FIELD_NUMBER: _ClassVar[int]
    DOWNLINKMSG_FIELD_NUMBER: _ClassVar[int]
    EDGEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    connectResponseMsg: ConnectResponseMsg
    uplinkResponseMsg: UplinkResponseMsg
    downlinkMsg: DownlinkMsg
    edgeUpdateMsg: EdgeUpdateMsg
    def __init__(self, connectResponseMsg: _Optional[_Union[ConnectResponseMsg, _Mapping]] = ..., uplinkResponseMsg: _Optional[_Union[UplinkResponseMsg, _Mapping]] = ..., downlinkMsg: _Optional[_Union[DownlinkMsg, _Mapping]] = ..., edgeUpdateMsg: _Optional[_Union[EdgeUpdateMsg, _Mapping]] = ...) -> None: ...

class EdgeUpdateMsg(_message.Message):
    __slots__ = ("configuration",)
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    configuration: EdgeConfiguration
    def __init__(self, configuration: _Optional[_Union[EdgeConfiguration, _Mapping]] = ...) -> None: ...

class ConnectRequestMsg(_message.Message):
    __slots__ = ("edgeRoutingKey", "edgeSecret", "edgeVersion", "maxInboundMessageSize", "edgeTimeMillis", "edgeStoreId")
    EDGEROUTINGKEY_FIELD_NUMBER: _ClassVar[int]
    EDGESECRET_FIELD_NUMBER: _ClassVar[int]
    EDGEVERSION_FIELD_NUMBER: _ClassVar[int]
    MAXINBOUNDMESSAGESIZE_FIELD_NUMBER: _ClassVar[int]
    EDGETIMEMILLIS_FIELD_NUMBER: _ClassVar[int]
    EDGESTOREID_FIELD_NUMBER: _ClassVar[int]
    edgeRoutingKey: str
    edgeSecret: str
    edgeVersion: EdgeVersion
    maxInboundMessageSize: int
    edgeTimeMillis: int
    edgeStoreId: str
    def __init__(self, edgeRoutingKey: _Optional[str] = ..., edgeSecret: _Optional[str] = ..., edgeVersion: _Optional[_Union[EdgeVersion, str]] = ..., maxInboundMessageSize: _Optional[int] = ..., edgeTimeMillis: _Optional[int] = ..., edgeStoreId: _Optional[str] = ...) -> None: ...

class ConnectResponseMsg(_message.Message):
    __slots__ = ("responseCode", "errorMsg", "configuration", "maxInboundMessageSize", "cloudCapabilities")
    RESPONSECODE_FIELD_NUMBER: _ClassVar[int]
    ERRORMSG_FIELD_NUMBER: _ClassVar[int]
    CONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    MAXINBOUNDMESSAGESIZE_FIELD_NUMBER: _ClassVar[int]
    CLOUDCAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    responseCode: ConnectResponseCode
    errorMsg: str
    configuration: EdgeConfiguration
    maxInboundMessageSize: int
    cloudCapabilities: CloudCapabilities
    def __init__(self, responseCode: _Optional[_Union[ConnectResponseCode, str]] = ..., errorMsg: _Optional[str] = ..., configuration: _Optional[_Union[EdgeConfiguration, _Mapping]] = ..., maxInboundMessageSize: _Optional[int] = ..., cloudCapabilities: _Optional[_Union[CloudCapabilities, _Mapping]] = ...) -> None: ...

class CloudCapabilities(_message.Message):
    __slots__ = ("orderedApply", "dedupBySeq", "serverTimeMillis")
    ORDEREDAPPLY_FIELD_NUMBER: _ClassVar[int]
    DEDUPBYSEQ_FIELD_NUMBER: _ClassVar[int]
    SERVERTIMEMILLIS_FIELD_NUMBER: _ClassVar[int]
    orderedApply: bool
    dedupBySeq: bool
    serverTimeMillis: int
    def __init__(self, orderedApply: _Optional[bool] = ..., dedupBySeq: _Optional[bool] = ..., serverTimeMillis: _Optional[int] = ...) -> None: ...

class EdgeConfiguration(_message.Message):
    __slots__ = ("edgeIdMSB", "edgeIdLSB", "tenantIdMSB", "tenantIdLSB", "customerIdMSB", "customerIdLSB", "name", "type", "routingKey", "secret", "additionalInfo", "cloudType")
    EDGEIDMSB_FIELD_NUMBER: _ClassVar[int]
    EDGEIDLSB_FIELD_NUMBER: _ClassVar[int]
    TENANTIDMSB_FIELD_NUMBER: _ClassVar[int]
    TENANTIDLSB_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERIDMSB_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERIDLSB_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    ROUTINGKEY_FIELD_NUMBER: _ClassVar[int]
    SECRET_FIELD_NUMBER: _ClassVar[int]
    ADDITIONALINFO_FIELD_NUMBER: _ClassVar[int]
    CLOUDTYPE_FIELD_NUMBER: _ClassVar[int]
    edgeIdMSB: int
    edgeIdLSB: int
    tenantIdMSB: int
    tenantIdLSB: int
    customerIdMSB: int
    customerIdLSB: int
    name: str
    type: str
    routingKey: str
    secret: str
    additionalInfo: str
    cloudType: str
    def __init__(self, edgeIdMSB: _Optional[int] = ..., edgeIdLSB: _Optional[int] = ..., tenantIdMSB: _Optional[int] = ..., tenantIdLSB: _Optional[int] = ..., customerIdMSB: _Optional[int] = ..., customerIdLSB: _Optional[int] = ..., name: _Optional[str] = ..., type: _Optional[str] = ..., routingKey: _Optional[str] = ..., secret: _Optional[str] = ..., additionalInfo: _Optional[str] = ..., cloudType: _Optional[str] = ...) -> None: ...

class SyncRequestMsg(_message.Message):
    __slots__ = ("fullSync",)
    FULLSYNC_FIELD_NUMBER: _ClassVar[int]
    fullSync: bool
    def __init__(self, fullSync: _Optional[bool] = ...) -> None: ...

class SyncCompletedMsg(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UplinkMsg(_message.Message):
    __slots__ = ("uplinkMsgId", "entityData", "deviceUpdateMsg", "deviceCredentialsUpdateMsg", "alarmUpdateMsg", "relationUpdateMsg", "ruleChainMetadataRequestMsg", "attributesRequestMsg", "relationRequestMsg", "deviceRpcCallMsg", "assetUpdateMsg", "dashboardUpdateMsg", "assetProfileUpdateMsg", "deviceProfileUpdateMsg", "ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg", "userUpdateMsg", "firstEdgeSeqId", "uplinkEpoch")
    UPLINKMSGID_FIELD_NUMBER: _ClassVar[int]
    ENTITYDATA_FIELD_NUMBER: _ClassVar[int]
    DEVICEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    DEVICECREDENTIALSUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ALARMUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RELATIONUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RULECHAINMETADATAREQUESTMSG_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTESREQUESTMSG_FIELD_NUMBER: _ClassVar[int]
    RELATIONREQUESTMSG_FIELD_NUMBER: _ClassVar[int]
    DEVICERPCCALLMSG_FIELD_NUMBER: _ClassVar[int]
    ASSETUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    DASHBOARDUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ASSETPROFILEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    DEVICEPROFILEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RULECHAINUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RULECHAINMETADATAUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    USERUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    FIRSTEDGESEQID_FIELD_NUMBER: _ClassVar[int]
    UPLINKEPOCH_FIELD_NUMBER: _ClassVar[int]
    uplinkMsgId: int
    entityData: _containers.RepeatedCompositeFieldContainer[EntityDataProto]
    deviceUpdateMsg: _containers.RepeatedCompositeFieldContainer[DeviceUpdateMsg]
    deviceCredentialsUpdateMsg: _containers.RepeatedCompositeFieldContainer[DeviceCredentialsUpdateMsg]
    alarmUpdateMsg: _containers.RepeatedCompositeFieldContainer[AlarmUpdateMsg]
    relationUpdateMsg: _containers.RepeatedCompositeFieldContainer[RelationUpdateMsg]
    ruleChainMetadataRequestMsg: _containers.RepeatedCompositeFieldContainer[RuleChainMetadataRequestMsg]
    attributesRequestMsg: _containers.RepeatedCompositeFieldContainer[AttributesRequestMsg]
    relationRequestMsg: _containers.RepeatedCompositeFieldContainer[RelationRequestMsg]
    deviceRpcCallMsg: _containers.RepeatedCompositeFieldContainer[DeviceRpcCallMsg]
    assetUpdateMsg: _containers.RepeatedCompositeFieldContainer[AssetUpdateMsg]
    dashboardUpdateMsg: _containers.RepeatedCompositeFieldContainer[DashboardUpdateMsg]
    assetProfileUpdateMsg: _containers.RepeatedCompositeFieldContainer[AssetProfileUpdateMsg]
    deviceProfileUpdateMsg: _containers.RepeatedCompositeFieldContainer[DeviceProfileUpdateMsg]
    ruleChainUpdateMsg: _containers.RepeatedCompositeFieldContainer[RuleChainUpdateMsg]
    ruleChainMetadataUpdateMsg: _containers.RepeatedCompositeFieldContainer[RuleChainMetadataUpdateMsg]
    userUpdateMsg: _containers.RepeatedCompositeFieldContainer[UserUpdateMsg]
    firstEdgeSeqId: int
    uplinkEpoch: int
    def __init__(self, uplinkMsgId: _Optional[int] = ..., entityData: _Optional[_Iterable[_Union[EntityDataProto, _Mapping]]] = ..., deviceUpdateMsg: _Optional[_Iterable[_Union[DeviceUpdateMsg, _Mapping]]] = ..., deviceCredentialsUpdateMsg: _Optional[_Iterable[_Union[DeviceCredentialsUpdateMsg, _Mapping]]] = ..., alarmUpdateMsg: _Optional[_Iterable[_Union[AlarmUpdateMsg, _Mapping]]] = ..., relationUpdateMsg: _Optional[_Iterable[_Union[RelationUpdateMsg, _Mapping]]] = ..., ruleChainMetadataRequestMsg: _Optional[_Iterable[_Union[RuleChainMetadataRequestMsg, _Mapping]]] = ..., attributesRequestMsg: _Optional[_Iterable[_Union[AttributesRequestMsg, _Mapping]]] = ..., relationRequestMsg: _Optional[_Iterable[_Union[RelationRequestMsg, _Mapping]]] = ..., deviceRpcCallMsg: _Optional[_Iterable[_Union[DeviceRpcCallMsg, _Mapping]]] = ..., assetUpdateMsg: _Optional[_Iterable[_Union[AssetUpdateMsg, _Mapping]]] = ..., dashboardUpdateMsg: _Optional[_Iterable[_Union[DashboardUpdateMsg, _Mapping]]] = ..., assetProfileUpdateMsg: _Optional[_Iterable[_Union[AssetProfileUpdateMsg, _Mapping]]] = ..., deviceProfileUpdateMsg: _Optional[_Iterable[_Union[DeviceProfileUpdateMsg, _Mapping]]] = ..., ruleChainUpdateMsg: _Optional[_Iterable[_Union[RuleChainUpdateMsg, _Mapping]]] = ..., ruleChainMetadataUpdateMsg: _Optional[_Iterable[_Union[RuleChainMetadataUpdateMsg, _Mapping]]] = ..., userUpdateMsg: _Optional[_Iterable[_Union[UserUpdateMsg, _Mapping]]] = ..., firstEdgeSeqId: _Optional[int] = ..., uplinkEpoch: _Optional[int] = ...) -> None: ...

class UplinkResponseMsg(_message.Message):
    __slots__ = ("success", "errorMsg", "uplinkMsgId", "rejectedEdgeSeqId", "retryable")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERRORMSG_FIELD_NUMBER: _ClassVar[int]
    UPLINKMSGID_FIELD_NUMBER: _ClassVar[int]
    REJECTEDEDGESEQID_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    errorMsg: str
    uplinkMsgId: int
    rejectedEdgeSeqId: int
    retryable: bool
    def __init__(self, success: _Optional[bool] = ..., errorMsg: _Optional[str] = ..., uplinkMsgId: _Optional[int] = ..., rejectedEdgeSeqId: _Optional[int] = ..., retryable: _Optional[bool] = ...) -> None: ...

class DownlinkMsg(_message.Message):
    __slots__ = ("downlinkMsgId", "syncCompletedMsg", "entityData", "deviceUpdateMsg", "deviceProfileUpdateMsg", "deviceCredentialsUpdateMsg", "ruleChainUpdateMsg", "ruleChainMetadataUpdateMsg", "dashboardUpdateMsg", "assetUpdateMsg", "alarmUpdateMsg", "userUpdateMsg", "customerUpdateMsg", "relationUpdateMsg", "widgetsBundleUpdateMsg", "widgetTypeUpdateMsg", "entityViewUpdateMsg", "userCredentialsUpdateMsg", "adminSettingsUpdateMsg", "deviceRpcCallMsg", "otaPackageUpdateMsg", "queueUpdateMsg", "assetProfileUpdateMsg", "edgeConfiguration", "tenantUpdateMsg", "tenantProfileUpdateMsg", "resourceUpdateMsg", "alarmCommentUpdateMsg", "oAuth2ClientUpdateMsg", "notificationRuleUpdateMsg", "notificationTargetUpdateMsg", "notificationTemplateUpdateMsg", "oAuth2DomainUpdateMsg", "calculatedFieldUpdateMsg", "aiModelUpdateMsg", "apiKeyUpdateMsg", "cloudTimeMillis")
    DOWNLINKMSGID_FIELD_NUMBER: _ClassVar[int]
    SYNCCOMPLETEDMSG_FIELD_NUMBER: _ClassVar[int]
    ENTITYDATA_FIELD_NUMBER: _ClassVar[int]
    DEVICEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    DEVICEPROFILEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    DEVICECREDENTIALSUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RULECHAINUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RULECHAINMETADATAUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    DASHBOARDUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ASSETUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ALARMUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    USERUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    CUSTOMERUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RELATIONUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    WIDGETSBUNDLEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    WIDGETTYPEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ENTITYVIEWUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    USERCREDENTIALSUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ADMINSETTINGSUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    DEVICERPCCALLMSG_FIELD_NUMBER: _ClassVar[int]
    OTAPACKAGEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    QUEUEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ASSETPROFILEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    EDGECONFIGURATION_FIELD_NUMBER: _ClassVar[int]
    TENANTUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    TENANTPROFILEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    RESOURCEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    ALARMCOMMENTUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    OAUTH2CLIENTUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONRULEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONTARGETUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    NOTIFICATIONTEMPLATEUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    OAUTH2DOMAINUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    CALCULATEDFIELDUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    AIMODELUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    APIKEYUPDATEMSG_FIELD_NUMBER: _ClassVar[int]
    CLOUDTIMEMILLIS_FIELD_NUMBER: _ClassVar[int]
    downlinkMsgId: int
    syncCompletedMsg: SyncCompletedMsg
    entityData: _containers.RepeatedCompositeFieldContainer[EntityDataProto]
    deviceUpdateMsg: _containers.RepeatedCompositeFieldContainer[DeviceUpdateMsg]
    deviceProfileUpdateMsg: _containers.RepeatedCompositeFieldContainer[DeviceProfileUpdateMsg]
    deviceCredentialsUpdateMsg: _containers.RepeatedCompositeFieldContainer[DeviceCredentialsUpdateMsg]
    ruleChainUpdateMsg: _containers.RepeatedCompositeFieldContainer[RuleChainUpdateMsg]
    ruleChainMetadataUpdateMsg: _containers.RepeatedCompositeFieldContainer[RuleChainMetadataUpdateMsg]
    dashboardUpdateMsg: _containers.RepeatedCompositeFieldContainer[DashboardUpdateMsg]
    assetUpdateMsg: _containers.RepeatedCompositeFieldContainer[AssetUpdateMsg]
    alarmUpdateMsg: _containers.RepeatedCompositeFieldContainer[AlarmUpdateMsg]
    userUpdateMsg: _containers.RepeatedCompositeFieldContainer[UserUpdateMsg]
    customerUpdateMsg: _containers.RepeatedCompositeFieldContainer[CustomerUpdateMsg]
    relationUpdateMsg: _containers.RepeatedCompositeFieldContainer[RelationUpdateMsg]
    widgetsBundleUpdateMsg: _containers.RepeatedCompositeFieldContainer[WidgetsBundleUpdateMsg]
    widgetTypeUpdateMsg: _containers.RepeatedCompositeFieldContainer[WidgetTypeUpdateMsg]
    entityViewUpdateMsg: _containers.RepeatedCompositeFieldContainer[EntityViewUpdateMsg]
    userCredentialsUpdateMsg: _containers.RepeatedCompositeFieldContainer[UserCredentialsUpdateMsg]
    adminSettingsUpdateMsg: _containers.RepeatedCompositeFieldContainer[AdminSettingsUpdateMsg]
    deviceRpcCallMsg: _containers.RepeatedCompositeFieldContainer[DeviceRpcCallMsg]
    otaPackageUpdateMsg: _containers.RepeatedCompositeFieldContainer[OtaPackageUpdateMsg]
    queueUpdateMsg: _containers.RepeatedCompositeFieldContainer[QueueUpdateMsg]
    assetProfileUpdateMsg: _containers.RepeatedCompositeFieldContainer[AssetProfileUpdateMsg]
    edgeConfiguration: EdgeConfiguration
    tenantUpdateMsg: _containers.RepeatedCompositeFieldContainer[TenantUpdateMsg]
    tenantProfileUpdateMsg: _containers.RepeatedCompositeFieldContainer[TenantProfileUpdateMsg]
    resourceUpdateMsg: _containers.RepeatedCompositeFieldContainer[ResourceUpdateMsg]
    alarmCommentUpdateMsg: _containers.RepeatedCompositeFieldContainer[AlarmCommentUpdateMsg]
    oAuth2ClientUpdateMsg: _containers.RepeatedCompositeFieldContainer[OAuth2ClientUpdateMsg]
    notificationRuleUpdateMsg: _containers.RepeatedCompositeFieldContainer[NotificationRuleUpdateMsg]
    notificationTargetUpdateMsg: _containers.RepeatedCompositeFieldContainer[NotificationTargetUpdateMsg]
    notificationTemplateUpdateMsg: _containers.RepeatedCompositeFieldContainer[NotificationTemplateUpdateMsg]
    oAuth2DomainUpdateMsg: _containers.RepeatedCompositeFieldContainer[OAuth2DomainUpdateMsg]
    calculatedFieldUpdateMsg: _containers.RepeatedCompositeFieldContainer[CalculatedFieldUpdateMsg]
    aiModelUpdateMsg: _containers.RepeatedCompositeFieldContainer[AiModelUpdateMsg]
    apiKeyUpdateMsg: _containers.RepeatedCompositeFieldContainer[ApiKeyUpdateMsg]
    cloudTimeMillis: int
    def __init__(self, downlinkMsgId: _Optional[int] = ..., syncCompletedMsg: _Optional[_Union[SyncCompletedMsg, _Mapping]] = ..., entityData: _Optional[_Iterable[_Union[EntityDataProto, _Mapping]]] = ..., deviceUpdateMsg: _Optional[_Iterable[_Union[DeviceUpdateMsg, _Mapping]]] = ..., deviceProfileUpdateMsg: _Optional[_Iterable[_Union[DeviceProfileUpdateMsg, _Mapping]]] = ..., deviceCredentialsUpdateMsg: _Optional[_Iterable[_Union[DeviceCredentialsUpdateMsg, _Mapping]]] = ..., ruleChainUpdateMsg: _Optional[_Iterable[_Union[RuleChainUpdateMsg, _Mapping]]] = ..., ruleChainMetadataUpdateMsg: _Optional[_Iterable[_Union[RuleChainMetadataUpdateMsg, _Mapping]]] = ..., dashboardUpdateMsg: _Optional[_Iterable[_Union[DashboardUpdateMsg, _Mapping]]] = ..., assetUpdateMsg: _Optional[_Iterable[_Union[AssetUpdateMsg, _Mapping]]] = ..., alarmUpdateMsg: _Optional[_Iterable[_Union[AlarmUpdateMsg, _Mapping]]] = ..., userUpdateMsg: _Optional[_Iterable[_Union[UserUpdateMsg, _Mapping]]] = ..., customerUpdateMsg: _Optional[_Iterable[_Union[CustomerUpdateMsg, _Mapping]]] = ..., relationUpdateMsg: _Optional[_Iterable[_Union[RelationUpdateMsg, _Mapping]]] = ..., widgetsBundleUpdateMsg: _Optional[_Iterable[_Union[WidgetsBundleUpdateMsg, _Mapping]]] = ..., widgetTypeUpdateMsg: _Optional[_Iterable[_Union[WidgetTypeUpdateMsg, _Mapping]]] = ..., entityViewUpdateMsg: _Optional[_Iterable[_Union[EntityViewUpdateMsg, _Mapping]]] = ..., userCredentialsUpdateMsg: _Optional[_Iterable[_Union[UserCredentialsUpdateMsg, _Mapping]]] = ..., adminSettingsUpdateMsg: _Optional[_Iterable[_Union[AdminSettingsUpdateMsg, _Mapping]]] = ..., deviceRpcCallMsg: _Optional[_Iterable[_Union[DeviceRpcCallMsg, _Mapping]]] = ..., otaPackageUpdateMsg: _Optional[_Iterable[_Union[OtaPackageUpdateMsg, _Mapping]]] = ..., queueUpdateMsg: _Optional[_Iterable[_Union[QueueUpdateMsg, _Mapping]]] = ..., assetProfileUpdateMsg: _Optional[_Iterable[_Union[AssetProfileUpdateMsg, _Mapping]]] = ..., edgeConfiguration: _Optional[_Union[EdgeConfiguration, _Mapping]] = ..., tenantUpdateMsg: _Optional[_Iterable[_Union[TenantUpdateMsg, _Mapping]]] = ..., tenantProfileUpdateMsg: _Optional[_Iterable[_Union[TenantProfileUpdateMsg, _Mapping]]] = ..., resourceUpdateMsg: _Optional[_Iterable[_Union[ResourceUpdateMsg, _Mapping]]] = ..., alarmCommentUpdateMsg: _Optional[_Iterable[_Union[AlarmCommentUpdateMsg, _Mapping]]] = ..., oAuth2ClientUpdateMsg: _Optional[_Iterable[_Union[OAuth2ClientUpdateMsg, _Mapping]]] = ..., notificationRuleUpdateMsg: _Optional[_Iterable[_Union[NotificationRuleUpdateMsg, _Mapping]]] = ..., notificationTargetUpdateMsg: _Optional[_Iterable[_Union[NotificationTargetUpdateMsg, _Mapping]]] = ..., notificationTemplateUpdateMsg: _Optional[_Iterable[_Union[NotificationTemplateUpdateMsg, _Mapping]]] = ..., oAuth2DomainUpdateMsg: _Optional[_Iterable[_Union[OAuth2DomainUpdateMsg, _Mapping]]] = ..., calculatedFieldUpdateMsg: _Optional[_Iterable[_Union[CalculatedFieldUpdateMsg, _Mapping]]] = ..., aiModelUpdateMsg: _Optional[_Iterable[_Union[AiModelUpdateMsg, _Mapping]]] = ..., apiKeyUpdateMsg: _Optional[_Iterable[_Union[ApiKeyUpdateMsg, _Mapping]]] = ..., cloudTimeMillis: _Optional[int] = ...) -> None: ...

class DownlinkResponseMsg(_message.Message):
    __slots__ = ("success", "errorMsg", "downlinkMsgId", "retryable")
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    ERRORMSG_FIELD_NUMBER: _ClassVar[int]
    DOWNLINKMSGID_FIELD_NUMBER: _ClassVar[int]
    RETRYABLE_FIELD_NUMBER: _ClassVar[int]
    success: bool
    errorMsg: str
    downlinkMsgId: int
    retryable: bool
    def __init__(self, success: _Optional[bool] = ..., errorMsg: _Optional[str] = ..., downlinkMsgId: _Optional[int] = ..., retryable: _Optional[bool] = ...) -> None: ...

class EntityDataProto(_message.Message):
    __slots__ = ("entityIdMSB", "entityIdLSB", "entityType", "postTelemetryMsg", "postAttributesMsg", "attributesUpdatedMsg", "postAttributeScope", "attributeDeleteMsg", "attributeTs", "edgeSeqId", "timeseriesDeleteMsg")
    ENTITYIDMSB_FIELD_NUMBER: _ClassVar[int]
    ENTITYIDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITYTYPE_FIELD_NUMBER: _ClassVar[int]
    POSTTELEMETRYMSG_FIELD_NUMBER: _ClassVar[int]
    POSTATTRIBUTESMSG_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTESUPDATEDMSG_FIELD_NUMBER: _ClassVar[int]
    POSTATTRIBUTESCOPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTEDELETEMSG_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTETS_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    TIMESERIESDELETEMSG_FIELD_NUMBER: _ClassVar[int]
    entityIdMSB: int
    entityIdLSB: int
    entityType: str
    postTelemetryMsg: _transport_pb2.PostTelemetryMsg
    postAttributesMsg: _transport_pb2.PostAttributeMsg
    attributesUpdatedMsg: _transport_pb2.PostAttributeMsg
    postAttributeScope: str
    attributeDeleteMsg: AttributeDeleteMsg
    attributeTs: int
    edgeSeqId: int
    timeseriesDeleteMsg: TimeseriesDeleteMsg
    def __init__(self, entityIdMSB: _Optional[int] = ..., entityIdLSB: _Optional[int] = ..., entityType: _Optional[str] = ..., postTelemetryMsg: _Optional[_Union[_transport_pb2.PostTelemetryMsg, _Mapping]] = ..., postAttributesMsg: _Optional[_Union[_transport_pb2.PostAttributeMsg, _Mapping]] = ..., attributesUpdatedMsg: _Optional[_Union[_transport_pb2.PostAttributeMsg, _Mapping]] = ..., postAttributeScope: _Optional[str] = ..., attributeDeleteMsg: _Optional[_Union[AttributeDeleteMsg, _Mapping]] = ..., attributeTs: _Optional[int] = ..., edgeSeqId: _Optional[int] = ..., timeseriesDeleteMsg: _Optional[_Union[TimeseriesDeleteMsg, _Mapping]] = ...) -> None: ...

class TimeseriesDeleteMsg(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class AttributeDeleteMsg(_message.Message):
    __slots__ = ("scope", "attributeNames")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTENAMES_FIELD_NUMBER: _ClassVar[int]
    scope: str
    attributeNames: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scope: _Optional[str] = ..., attributeNames: _Optional[_Iterable[str]] = ...) -> None: ...

class AttributesRequestMsg(_message.Message):
    __slots__ = ("entityIdMSB", "entityIdLSB", "entityType", "scope", "edgeSeqId")
    ENTITYIDMSB_FIELD_NUMBER: _ClassVar[int]
    ENTITYIDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITYTYPE_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    entityIdMSB: int
    entityIdLSB: int
    entityType: str
    scope: str
    edgeSeqId: int
    def __init__(self, entityIdMSB: _Optional[int] = ..., entityIdLSB: _Optional[int] = ..., entityType: _Optional[str] = ..., scope: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class RelationRequestMsg(_message.Message):
    __slots__ = ("entityIdMSB", "entityIdLSB", "entityType", "edgeSeqId")
    ENTITYIDMSB_FIELD_NUMBER: _ClassVar[int]
    ENTITYIDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITYTYPE_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    entityIdMSB: int
    entityIdLSB: int
    entityType: str
    edgeSeqId: int
    def __init__(self, entityIdMSB: _Optional[int] = ..., entityIdLSB: _Optional[int] = ..., entityType: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class RuleChainMetadataRequestMsg(_message.Message):
    __slots__ = ("ruleChainIdMSB", "ruleChainIdLSB", "edgeSeqId")
    RULECHAINIDMSB_FIELD_NUMBER: _ClassVar[int]
    RULECHAINIDLSB_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    ruleChainIdMSB: int
    ruleChainIdLSB: int
    edgeSeqId: int
    def __init__(self, ruleChainIdMSB: _Optional[int] = ..., ruleChainIdLSB: _Optional[int] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class DeviceRpcCallMsg(_message.Message):
    __slots__ = ("deviceIdMSB", "deviceIdLSB", "requestUuidMSB", "requestUuidLSB", "requestId", "expirationTime", "oneway", "requestMsg", "responseMsg", "persisted", "retries", "additionalInfo", "serviceId", "sessionId", "edgeSeqId")
    DEVICEIDMSB_FIELD_NUMBER: _ClassVar[int]
    DEVICEIDLSB_FIELD_NUMBER: _ClassVar[int]
    REQUESTUUIDMSB_FIELD_NUMBER: _ClassVar[int]
    REQUESTUUIDLSB_FIELD_NUMBER: _ClassVar[int]
    REQUESTID_FIELD_NUMBER: _ClassVar[int]
    EXPIRATIONTIME_FIELD_NUMBER: _ClassVar[int]
    ONEWAY_FIELD_NUMBER: _ClassVar[int]
    REQUESTMSG_FIELD_NUMBER: _ClassVar[int]
    RESPONSEMSG_FIELD_NUMBER: _ClassVar[int]
    PERSISTED_FIELD_NUMBER: _ClassVar[int]
    RETRIES_FIELD_NUMBER: _ClassVar[int]
    ADDITIONALINFO_FIELD_NUMBER: _ClassVar[int]
    SERVICEID_FIELD_NUMBER: _ClassVar[int]
    SESSIONID_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    deviceIdMSB: int
    deviceIdLSB: int
    requestUuidMSB: int
    requestUuidLSB: int
    requestId: int
    expirationTime: int
    oneway: bool
    requestMsg: RpcRequestMsg
    responseMsg: RpcResponseMsg
    persisted: bool
    retries: int
    additionalInfo: str
    serviceId: str
    sessionId: str
    edgeSeqId: int
    def __init__(self, deviceIdMSB: _Optional[int] = ..., deviceIdLSB: _Optional[int] = ..., requestUuidMSB: _Optional[int] = ..., requestUuidLSB: _Optional[int] = ..., requestId: _Optional[int] = ..., expirationTime: _Optional[int] = ..., oneway: _Optional[bool] = ..., requestMsg: _Optional[_Union[RpcRequestMsg, _Mapping]] = ..., responseMsg: _Optional[_Union[RpcResponseMsg, _Mapping]] = ..., persisted: _Optional[bool] = ..., retries: _Optional[int] = ..., additionalInfo: _Optional[str] = ..., serviceId: _Optional[str] = ..., sessionId: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class RpcRequestMsg(_message.Message):
    __slots__ = ("method", "params")
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    method: str
    params: str
    def __init__(self, method: _Optional[str] = ..., params: _Optional[str] = ...) -> None: ...

class RpcResponseMsg(_message.Message):
    __slots__ = ("response", "error")
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    response: str
    error: str
    def __init__(self, response: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class DeviceUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class DeviceProfileUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class DeviceCredentialsUpdateMsg(_message.Message):
    __slots__ = ("entity", "edgeSeqId")
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    entity: str
    edgeSeqId: int
    def __init__(self, entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class AssetUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class AssetProfileUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class AlarmUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class RelationUpdateMsg(_message.Message):
    __slots__ = ("msgType", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class DashboardUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class RuleChainUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class RuleChainMetadataUpdateMsg(_message.Message):
    __slots__ = ("msgType", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class UserUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity", "edgeSeqId")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    EDGESEQID_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    edgeSeqId: int
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ..., edgeSeqId: _Optional[int] = ...) -> None: ...

class CustomerUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class WidgetsBundleUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "widgets", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    WIDGETS_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    widgets: str
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., widgets: _Optional[str] = ..., entity: _Optional[str] = ...) -> None: ...

class WidgetTypeUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class TenantUpdateMsg(_message.Message):
    __slots__ = ("msgType", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., entity: _Optional[str] = ...) -> None: ...

class TenantProfileUpdateMsg(_message.Message):
    __slots__ = ("msgType", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., entity: _Optional[str] = ...) -> None: ...

class EntityViewUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class OtaPackageUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class QueueUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class ResourceUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class CalculatedFieldUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class AiModelUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class ApiKeyUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class AlarmCommentUpdateMsg(_message.Message):
    __slots__ = ("msgType", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., entity: _Optional[str] = ...) -> None: ...

class AdminSettingsUpdateMsg(_message.Message):
    __slots__ = ("entity",)
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    entity: str
    def __init__(self, entity: _Optional[str] = ...) -> None: ...

class UserCredentialsUpdateMsg(_message.Message):
    __slots__ = ("entity",)
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    entity: str
    def __init__(self, entity: _Optional[str] = ...) -> None: ...

class OAuth2ClientUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class OAuth2DomainUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class NotificationRuleUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class NotificationTargetUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...

class NotificationTemplateUpdateMsg(_message.Message):
    __slots__ = ("msgType", "idMSB", "idLSB", "entity")
    MSGTYPE_FIELD_NUMBER: _ClassVar[int]
    IDMSB_FIELD_NUMBER: _ClassVar[int]
    IDLSB_FIELD_NUMBER: _ClassVar[int]
    ENTITY_FIELD_NUMBER: _ClassVar[int]
    msgType: UpdateMsgType
    idMSB: int
    idLSB: int
    entity: str
    def __init__(self, msgType: _Optional[_Union[UpdateMsgType, str]] = ..., idMSB: _Optional[int] = ..., idLSB: _Optional[int] = ..., entity: _Optional[str] = ...) -> None: ...
