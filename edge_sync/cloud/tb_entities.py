"""The ThingsBoard 4.x entity JSON the reference cloud sends a ThingsBoard Edge in a sync: its
tenant, ThingsBoard's default queues, device and asset profiles, the edge's root rule chain and
its metadata, and devices.

Each builder returns compact JSON text with Jackson's property names of ThingsBoard's entity
classes; every id is typed (``{"entityType": ..., "id": ...}``), every entity names its tenant,
and the customer of an entity assigned to none is ThingsBoard's NULL_UUID customer. Creation
times come from the (time-based) ids. Pure functions; the ids are the caller's
(`CloudStore.named_ids` keeps them stable across restarts).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from edge_sync.common import ids
from edge_sync.common.wire import typed_id

DEFAULT_PROFILE = "default"
"""The name of the default device profile and of the default asset profile (ThingsBoard's)."""

SECRET_USER_FIELDS = ("password", "credentials", "userCredentials", "activateToken",
                      "resetToken")
"""Fields of a user's JSON that would carry a credential: dropped wherever a user enters the
cloud (an import, a create or update), never stored nor logged."""
SECRET_USER_INFO_FIELDS = ("userPasswordHistory",)
"""Fields of a user's ``additionalInfo`` dropped for the same reason."""

TENANT_TITLE = "Tenant"
ROOT_CHAIN_NAME = "Edge Root Rule Chain"
PUSH_TO_CLOUD_NODE = "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode"


@dataclass(frozen=True, slots=True)
class RuleNodeSpec:
    """One node of the root rule chain: its class, name, configuration and place."""

    type: str
    name: str
    configuration: dict[str, Any]
    configuration_version: int
    layout: tuple[int, int]


# The edge's root rule chain, in the shape of ThingsBoard 4.3's own edge root rule chain: a
# message type switch routes device telemetry to "save timeseries" and client attributes to
# "save attributes"; what they saved goes to a push-to-cloud node of scope CLIENT_SCOPE, and
# attribute updates and deletions made on the edge to one of scope SERVER_SCOPE (the push node
# takes the scope from the message's metadata, and from its configuration when the metadata has
# none). A ThingsBoard Edge uplinks device data only through such nodes.
#
# Each configuration carries exactly the fields of the node's configuration class in 4.3, its
# @NotNull ones included, at the node class's version (@RuleNode(version=...)): the Edge
# validates a rule node's configuration against that class (unknown fields refused) and does
# not upgrade it.
ON_EVERY_MESSAGE = {"type": "ON_EVERY_MESSAGE"}
ROOT_CHAIN_NODES: tuple[RuleNodeSpec, ...] = (
    RuleNodeSpec("org.thingsboard.rule.engine.filter.TbMsgTypeSwitchNode", "Message Type Switch",
                 {"version": 0}, 0, (300, 150)),
    RuleNodeSpec("org.thingsboard.rule.engine.telemetry.TbMsgTimeseriesNode", "Save Timeseries",
                 {"defaultTTL": 0, "useServerTs": False, "processingSettings": ON_EVERY_MESSAGE},
                 1, (600, 50)),
    RuleNodeSpec("org.thingsboard.rule.engine.telemetry.TbMsgAttributesNode", "Save Attributes",
                 {"processingSettings": ON_EVERY_MESSAGE, "scope": "CLIENT_SCOPE",
                  "notifyDevice": False, "sendAttributesUpdatedNotification": False,
                  "updateAttributesOnlyOnValueChange": True}, 3, (600, 150)),
    RuleNodeSpec(PUSH_TO_CLOUD_NODE, "Push to Cloud", {"scope": "CLIENT_SCOPE"}, 0, (900, 100)),
    RuleNodeSpec(PUSH_TO_CLOUD_NODE, "Push to Cloud", {"scope": "SERVER_SCOPE"}, 0, (900, 250)),
)
ROOT_CHAIN_FIRST_NODE = 0
ROOT_CHAIN_CONNECTIONS: tuple[tuple[int, int, str], ...] = (
    (0, 1, "Post telemetry"),
    (0, 2, "Post attributes"),
    (1, 3, "Success"),
    (2, 3, "Success"),
    (0, 4, "Attributes Updated"),
    (0, 4, "Attributes Deleted"),
)

# ThingsBoard's three default rule engine queues (DefaultSystemDataLoaderService.createQueues),
# owned by the system tenant: (name, topic, submit strategy, batch size, processing strategy,
# retries, pause between retries in seconds).
DEFAULT_QUEUES: tuple[tuple[str, str, str, int, str, int, int], ...] = (
    ("Main", "tb_rule_engine.main", "BURST", 1000, "SKIP_ALL_FAILURES", 3, 3),
    ("HighPriority", "tb_rule_engine.hp", "BURST", 100, "RETRY_FAILED_AND_TIMED_OUT", 0, 5),
    ("SequentialByOriginator", "tb_rule_engine.sq", "SEQUENTIAL_BY_ORIGINATOR", 100,
     "RETRY_FAILED_AND_TIMED_OUT", 3, 5),
)


def _compact(value: dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"))


def created_time(value: uuid.UUID) -> int:
    """The creation time of an entity, from its id (0 for an id that is not time-based: ids
    stored before the cloud made time-based ones)."""
    return ids.unix_ms(value) if ids.is_time_based(value) else 0


def _owned(tenant_id: uuid.UUID) -> dict[str, Any]:
    return {"tenantId": typed_id("TENANT", tenant_id)}


def tenant_json(tenant_id: uuid.UUID) -> str:
    """Tenant: no tenant profile is named, so an edge keeps (or makes) its default one."""
    return _compact({
        "id": typed_id("TENANT", tenant_id), "createdTime": created_time(tenant_id),
        "title": TENANT_TITLE, "name": TENANT_TITLE, "region": "Global", "tenantProfileId": None,
        "country": None, "state": None, "city": None, "address": None, "address2": None,
        "zip": None, "phone": None, "email": None, "additionalInfo": None, "version": None,
    })


def device_profile_json(profile_id: uuid.UUID, tenant_id: uuid.UUID, name: str) -> str:
    """A device profile of type DEFAULT and transport DEFAULT (plain MQTT/HTTP/CoAP access
    tokens), no provisioning, no alarm rules; the one named "default" is the default."""
    default = name == DEFAULT_PROFILE
    return _compact({
        "id": typed_id("DEVICE_PROFILE", profile_id), "createdTime": created_time(profile_id),
        **_owned(tenant_id), "name": name,
        "description": "Default device profile" if default else f"Devices of type {name}",
        "image": None, "type": "DEFAULT", "transportType": "DEFAULT", "provisionType": "DISABLED",
        "defaultRuleChainId": None, "defaultDashboardId": None, "defaultQueueName": None,
        "defaultEdgeRuleChainId": None,
        "profileData": {
            "configuration": {"type": "DEFAULT"},
            "transportConfiguration": {"type": "DEFAULT"},
            "provisionConfiguration": {"type": "DISABLED", "provisionDeviceSecret": None},
            "alarms": None,
        },
        "provisionDeviceKey": None, "firmwareId": None, "softwareId": None, "externalId": None,
        "version": None, "default": default,
    })


def asset_profile_json(profile_id: uuid.UUID, tenant_id: uuid.UUID,
                       name: str = DEFAULT_PROFILE) -> str:
    """An asset profile: the default one, or one made for an asset type that named no profile
    (as ThingsBoard's AssetProfileService.findOrCreateAssetProfile makes it)."""
    default = name == DEFAULT_PROFILE
    return _compact({
        "id": typed_id("ASSET_PROFILE", profile_id), "createdTime": created_time(profile_id),
        **_owned(tenant_id), "name": name,
        "description": "Default asset profile" if default else None,
        "image": None, "defaultRuleChainId": None, "defaultDashboardId": None,
        "defaultQueueName": None, "defaultEdgeRuleChainId": None, "externalId": None,
        "version": None, "default": default,
    })


def rule_chain_json(chain_id: uuid.UUID, tenant_id: uuid.UUID, first_node_id: uuid.UUID) -> str:
    """The edge's root rule chain (type EDGE, root)."""
    return _compact({
        "id": typed_id("RULE_CHAIN", chain_id), "createdTime": created_time(chain_id),
        **_owned(tenant_id), "name": ROOT_CHAIN_NAME, "type": "EDGE",
        "firstRuleNodeId": typed_id("RULE_NODE", first_node_id), "root": True,
        "debugMode": False, "configuration": None, "additionalInfo": None, "externalId": None,
        "version": None,
    })


def rule_chain_metadata_json(chain_id: uuid.UUID, node_ids: list[uuid.UUID]) -> str:
    """The root rule chain's nodes and connections (RuleChainMetaData)."""
    if len(node_ids) != len(ROOT_CHAIN_NODES):
        raise ValueError(f"{len(node_ids)} node ids for {len(ROOT_CHAIN_NODES)} nodes")
    nodes = [{
        "id": typed_id("RULE_NODE", node_id), "createdTime": created_time(node_id),
        "ruleChainId": typed_id("RULE_CHAIN", chain_id), "type": spec.type, "name": spec.name,
        "debugSettings": None, "singletonMode": False, "queueName": None,
        "configurationVersion": spec.configuration_version, "configuration": spec.configuration,
        "additionalInfo": {"description": "", "layoutX": spec.layout[0],
                           "layoutY": spec.layout[1]},
        "externalId": None,
    } for spec, node_id in zip(ROOT_CHAIN_NODES, node_ids, strict=True)]
    return _compact({
        "ruleChainId": typed_id("RULE_CHAIN", chain_id), "version": None,
        "firstNodeIndex": ROOT_CHAIN_FIRST_NODE, "nodes": nodes,
        "connections": [{"fromIndex": a, "toIndex": b, "type": kind}
                        for a, b, kind in ROOT_CHAIN_CONNECTIONS],
        "ruleChainConnections": None,
    })


def device_json(device_id: uuid.UUID, tenant_id: uuid.UUID, profile_id: uuid.UUID, *,
                name: str, type_: str, label: str, created: int) -> str:
    """A device of the edge's tenant, assigned to no customer, with its profile (the profile
    named by its type). Our edge reads name, type, label and createdTime."""
    return _compact({
        "id": typed_id("DEVICE", device_id), "createdTime": created, **_owned(tenant_id),
        "customerId": typed_id("CUSTOMER", ids.NULL_UUID), "name": name, "type": type_,
        "label": label, "deviceProfileId": typed_id("DEVICE_PROFILE", profile_id),
        "deviceData": {"configuration": {"type": "DEFAULT"},
                       "transportConfiguration": {"type": "DEFAULT"}},
        "firmwareId": None, "softwareId": None, "externalId": None, "version": None,
        "additionalInfo": None,
    })


def queue_json(queue_id: uuid.UUID, name: str) -> str:
    """One of ThingsBoard's default queues (a name of DEFAULT_QUEUES), as ThingsBoard sends a
    system queue: owned by the system tenant (NULL_UUID), 10 partitions, a consumer per
    partition, polled every 25 ms, packs processed within 2 s."""
    _, topic, submit, batch, processing, retries, pause = next(
        q for q in DEFAULT_QUEUES if q[0] == name)
    return _compact({
        "id": typed_id("QUEUE", queue_id), "createdTime": created_time(queue_id),
        "additionalInfo": None, "tenantId": typed_id("TENANT", ids.NULL_UUID), "name": name,
        "topic": topic, "pollInterval": 25, "partitions": 10, "consumerPerPartition": True,
        "packProcessingTimeout": 2000,
        "submitStrategy": {"type": submit, "batchSize": batch},
        "processingStrategy": {"type": processing, "retries": retries, "failurePercentage": 0.0,
                               "pauseBetweenRetries": pause, "maxPauseBetweenRetries": pause},
    })
