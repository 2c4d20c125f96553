"""ThingsBoard's Alarm JSON as the alarm nodes keep it (an entity's active alarms, in its rule
state: ``session.py``) and send it on (the data of their ALARM message), read back from a
message (``useMessageAlarmData``), and turned into the edge's alarm event body by the
push-to-cloud node (``event_body``; ``common/wire.alarm_json`` makes the cloud's JSON of it).

The shape is ``JacksonUtil.valueToTree(alarm)`` (``TbAbstractAlarmNode.toAlarmMsg``), with the
fields of ``Alarm`` in Jackson's order: ``id`` ({"entityType": "ALARM", "id"}), ``createdTime``,
``type``, ``originator`` ({"entityType", "id"}), ``severity``, ``acknowledged``, ``cleared``,
``startTs``, ``endTs``, ``ackTs``, ``clearTs``, ``assignTs``, ``details``, ``propagate``,
``propagateToOwner``, ``propagateToTenant``, ``propagateRelationTypes``, ``name`` (the type),
``status`` (ACTIVE_UNACK, ACTIVE_ACK, CLEARED_UNACK, CLEARED_ACK). What the edge's rule engine
does not know is left out: ``tenantId`` and ``customerId`` (the cloud gives an alarm its
originator's customer), ``assigneeId``/``assignee`` (no users on the edge), and
``AlarmInfo``'s ``originatorName``/``originatorLabel``/``originatorDisplayName``.

Alarms kept by an earlier edge-sync have a plain-text ``id`` and ``originator`` and a
``status`` but none of the flags or the propagation: ``as_alarm`` reads them as this shape
(not propagated, not acknowledged unless their status says so).

The alarm nodes' configurations, as they run them, are read here too: ``CreateAlarmConfig``
(``TbCreateAlarmNodeConfiguration``) and ``ClearAlarmConfig``
(``TbClearAlarmNodeConfiguration``), each read once from a configuration validation has
passed (``nodes.py``) when the rule engine is built; a message reads only those. Their details
script is compiled by validation as every node's script is (``nodes.script_of``).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from edge_sync.rules import nodes as n
from edge_sync.rules.message import Originator

ACTIVE_UNACK, ACTIVE_ACK = "ACTIVE_UNACK", "ACTIVE_ACK"
CLEARED_UNACK, CLEARED_ACK = "CLEARED_UNACK", "CLEARED_ACK"

_EVENT_FIELDS = ("type", "severity", "status", "startTs", "endTs", "ackTs", "clearTs", "details",
                 "propagate", "propagateToOwner", "propagateToTenant", "propagateRelationTypes")
"""What an alarm event's body keeps of the alarm, besides its id and originator (plain text)."""


class AlarmDataError(ValueError):
    """A message's data is not alarm JSON the create alarm node can read."""


def status_of(cleared: bool, acknowledged: bool) -> str:
    """``Alarm.toStatus``."""
    if cleared:
        return CLEARED_ACK if acknowledged else CLEARED_UNACK
    return ACTIVE_ACK if acknowledged else ACTIVE_UNACK


@dataclass(frozen=True, slots=True)
class Propagation:
    """An alarm's propagation settings (``AlarmPropagationInfo``)."""

    propagate: bool = False
    to_owner: bool = False
    to_tenant: bool = False
    relation_types: tuple[str, ...] = ()

    @staticmethod
    def of_config(config: Mapping[str, Any]) -> Propagation:
        """The create alarm node's ``propagate``, ``propagateToOwner``, ``propagateToTenant``
        and ``relationTypes``, as ``TbCreateAlarmNode.buildAlarm``/``updateAlarm`` set them on
        the alarm: the relation types as they are (no pattern substitution)."""
        types = config.get("relationTypes")
        return Propagation(n.config_flag(config, "propagate"), n.config_flag(config, "propagateToOwner"),
                           n.config_flag(config, "propagateToTenant"),
                           tuple(types) if isinstance(types, list) else ())

    def fields(self) -> dict[str, Any]:
        return {"propagate": self.propagate, "propagateToOwner": self.to_owner,
                "propagateToTenant": self.to_tenant,
                "propagateRelationTypes": list(self.relation_types)}


@dataclass(frozen=True, slots=True)
class CreateAlarmConfig:
    """A create alarm node's configuration as ``TbCreateAlarmNode`` reads it at ``init``
    (``TbNodeUtils.convert`` to ``TbCreateAlarmNodeConfiguration``, the class's defaults for
    absent fields: its booleans false, ``overwriteAlarmDetails`` true, no relation types)."""

    use_message_alarm_data: bool
    """The alarm's type, severity and propagation come from the message's alarm JSON
    (``message_alarm``); ``alarm_type``, ``severity`` and ``propagation`` are then unused."""
    build_details: bool
    """The details script builds the alarm's details: always without
    ``useMessageAlarmData``, with it only when ``overwriteAlarmDetails``, else the message's
    alarm's details are kept (``TbCreateAlarmNode.createNewAlarm``/``updateAlarm``:
    ``buildDetails``)."""
    alarm_type: str
    """A pattern (``patterns.py``), substituted per message."""
    severity: str
    """One of ``nodes.ALARM_SEVERITIES``; with ``dynamic_severity`` a pattern whose
    substitution must give one (``TbCreateAlarmNode.processAlarmSeverity``)."""
    dynamic_severity: bool
    propagation: Propagation

    @staticmethod
    def of(config: Mapping[str, Any]) -> CreateAlarmConfig:
        """``config``, validated (``nodes.check_configuration``), read once."""
        if n.config_flag(config, "useMessageAlarmData"):
            return CreateAlarmConfig(True, n.config_flag(config, "overwriteAlarmDetails", True),
                                     "", "", False, Propagation())
        return CreateAlarmConfig(False, True, str(config["alarmType"]), str(config["severity"]),
                                 n.config_flag(config, "dynamicSeverity"),
                                 Propagation.of_config(config))


@dataclass(frozen=True, slots=True)
class ClearAlarmConfig:
    """A clear alarm node's configuration as ``TbClearAlarmNode`` reads it
    (``TbClearAlarmNodeConfiguration``): the alarm type, a pattern substituted per message."""

    alarm_type: str

    @staticmethod
    def of(config: Mapping[str, Any]) -> ClearAlarmConfig:
        """``config``, validated (``nodes.check_configuration``), read once."""
        return ClearAlarmConfig(str(config["alarmType"]))


@dataclass(frozen=True, slots=True)
class MessageAlarm:
    """What ``TbCreateAlarmNode`` takes from a message's alarm JSON with
    ``useMessageAlarmData``."""

    type: str
    severity: str
    propagation: Propagation
    details: Any
    start_ts: int
    end_ts: int


def message_alarm(data: Any) -> MessageAlarm:
    """The message data read as ``Alarm`` (``TbCreateAlarmNode.getAlarmFromMessage``:
    Jackson, unknown fields ignored); AlarmDataError when it is not an object, has no text
    ``type``, no ``severity`` among ThingsBoard's, or a field Jackson would not read (ThingsBoard
    fails the message likewise: Jackson, or the alarm service's @NotNull type and severity)."""
    if not isinstance(data, dict):
        raise AlarmDataError("the message data is not alarm JSON (an object)")
    alarm_type = data.get("type")
    if not isinstance(alarm_type, str):
        raise AlarmDataError("the message's alarm has no type" if alarm_type is None
                             else f"the message's alarm type is not text: {alarm_type!r}")
    severity = data.get("severity")
    if severity not in n.ALARM_SEVERITIES:
        raise AlarmDataError(f"the message's alarm severity {severity!r} is not one of "
                             + ", ".join(n.ALARM_SEVERITIES))
    types = data.get("propagateRelationTypes")
    if types is not None and not (isinstance(types, list)
                                  and all(isinstance(t, str) for t in types)):
        raise AlarmDataError(f"the message's alarm propagateRelationTypes is not a list of "
                             f"relation types: {types!r}")
    return MessageAlarm(
        alarm_type, str(severity),
        Propagation(n.config_flag(data, "propagate"), n.config_flag(data, "propagateToOwner"),
                    n.config_flag(data, "propagateToTenant"), tuple(types or ())),
        data.get("details"), _long(data, "startTs"), _long(data, "endTs"))


def _long(data: Mapping[str, Any], key: str) -> int:
    """A ``long`` field: a whole number, absent or null 0."""
    value = data.get(key)
    if value is None:
        return 0
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise AlarmDataError(f"the message's alarm {key} is not a whole number: {value!r}")


def new_alarm(alarm_id: str, created: int, alarm_type: str, originator: Originator,
              severity: str, start_ts: int, end_ts: int, details: Any,
              propagation: Propagation) -> dict[str, Any]:
    """A new active alarm, not acknowledged."""
    return _alarm(alarm_id, created, alarm_type, originator.entity_type, originator.id,
                  severity, False, False, start_ts, end_ts, 0, 0, details, propagation)


def _alarm(alarm_id: str, created: int, alarm_type: str, originator_type: str,
           originator_id: str, severity: str, acknowledged: bool, cleared: bool,
           start_ts: int, end_ts: int, ack_ts: int, clear_ts: int, details: Any,
           propagation: Propagation) -> dict[str, Any]:
    return {
        "id": {"entityType": "ALARM", "id": alarm_id},
        "createdTime": created,
        "type": alarm_type,
        "originator": {"entityType": originator_type, "id": originator_id},
        "severity": severity,
        "acknowledged": acknowledged,
        "cleared": cleared,
        "startTs": start_ts,
        "endTs": end_ts,
        "ackTs": ack_ts,
        "clearTs": clear_ts,
        "assignTs": 0,
        "details": details,
        **propagation.fields(),
        "name": alarm_type,
        "status": status_of(cleared, acknowledged),
    }


def as_alarm(kept: Mapping[str, Any], originator: Originator) -> dict[str, Any]:
    """An active alarm as the rule state holds it, in this module's shape: a copy of one kept
    in it already, else one kept by an earlier edge-sync read as it (module doc)."""
    if isinstance(kept.get("id"), dict):
        return dict(kept)
    status = str(kept.get("status") or ACTIVE_UNACK)
    start = _whole(kept.get("startTs"))
    alarm_type = str(kept.get("type", ""))
    return _alarm(str(kept.get("id")), _whole(kept.get("createdTime")) or start, alarm_type,
                  originator.entity_type, str(kept.get("originator") or originator.id),
                  str(kept.get("severity", "")), status in (ACTIVE_ACK, CLEARED_ACK),
                  status in (CLEARED_UNACK, CLEARED_ACK), start,
                  _whole(kept.get("endTs")) or start, _whole(kept.get("ackTs")),
                  _whole(kept.get("clearTs")), kept.get("details"), Propagation())


def _whole(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def updated(alarm: Mapping[str, Any], severity: str, propagation: Propagation, details: Any,
            end_ts: int) -> dict[str, Any]:
    """``TbCreateAlarmNode.updateAlarm``: the active alarm with a new severity, propagation,
    details and endTs."""
    return {**alarm, "severity": severity, "endTs": end_ts, "details": details,
            **propagation.fields()}


def cleared(alarm: Mapping[str, Any], details: Any, clear_ts: int) -> dict[str, Any]:
    """``AlarmService.clearAlarm``: cleared at ``clear_ts`` with new details."""
    return {**alarm, "cleared": True, "clearTs": clear_ts, "details": details,
            "status": status_of(True, alarm.get("acknowledged") is True)}


def alarm_id(alarm: Mapping[str, Any]) -> str:
    """The alarm's id (of this module's shape)."""
    return str(alarm["id"]["id"])


def event_body(data: Any, originator_id: str) -> dict[str, Any] | None:
    """An ALARM message's data (this module's shape, or an earlier edge-sync's with a
    plain-text id) -> the edge's alarm event body: the alarm's id and ``originator_id`` as
    plain text, with its type, severity, status, timestamps, details and propagation. None
    when the data names no alarm id (ThingsBoard's push node reads only the id:
    ``AbstractTbMsgPushNode.getUUIDFromMsgData``)."""
    if not isinstance(data, dict):
        return None
    ref = data.get("id")
    try:
        alarm_uuid = uuid.UUID(str(ref.get("id") if isinstance(ref, dict) else ref))
    except ValueError:
        return None
    body: dict[str, Any] = {"id": str(alarm_uuid), "originator": originator_id}
    body.update((key, data[key]) for key in _EVENT_FIELDS if key in data)
    if "status" not in data and isinstance(data.get("cleared"), bool):
        body["status"] = status_of(data["cleared"], data.get("acknowledged") is True)
    return body
