"""The rule node subset the edge supports, by ThingsBoard class name, and what each node's
configuration must hold to be run. Each check reads a node's ``configuration`` object (as its
ThingsBoard configuration class names the fields, rule-engine-components
``org.thingsboard.rule.engine.*.*NodeConfiguration``) and returns one problem per field, as
``(field, message)``; an empty list is a usable configuration. Scripts are checked for
presence here; ``script_of`` names the script a node runs, which validation then compiles
(``validate.py``).

The rule engine reads what a check passes: the check fields, save timeseries
(``timeseries_settings``), save attributes (``attributes_settings``) and alarm nodes'
configurations (``alarms.CreateAlarmConfig``,
``alarms.ClearAlarmConfig``) once, into typed objects, when it is built. A configuration that
would fail every message (a dynamic severity no message can make a severity) is refused here,
not found per message.

Script nodes pick their script by ``scriptLang``: ``JS`` reads ``jsScript``, ``TBEL`` reads
``tbelScript``; a configuration without ``scriptLang`` is one from before TBEL (ThingsBoard
3.5) and is JS. The alarm nodes build the alarm's details by script the same way
(``alarmDetailsBuildJs`` / ``alarmDetailsBuildTbel``).

One node type is the edge's own, not ThingsBoard's: ``edge_sync.rules.AggregateNode`` (min /
max / avg / sum / count per numeric key over a window; ``window.py``), configured with
``interval`` (whole seconds, 1 to MAX_INTERVAL_S), ``maxPendingMsgs`` (1 to 100000, default 10000) and
``outMsgType`` (default ``POST_TELEMETRY_REQUEST``).

The RPC call request node (``rpc.TbSendRPCRequestNode``) takes ``timeoutInSeconds`` (whole
seconds, 0 to MAX_INTERVAL_S; absent or null 0, as ThingsBoard's ``int``).

Every number field (``defaultTTL``, ``interval``, ``maxPendingMsgs``, ``maxRetries``,
``timeoutInSeconds``, ``deduplicationIntervalSecs``, and the aggregation node's own) is read as
ThingsBoard's Jackson reads a Java ``int`` or ``long`` (``java_int``): the text of a number and
a JSON float are taken, as there.

Durations have a maximum ThingsBoard does not set (its configuration classes declare ``int
interval`` and ``long defaultTTL`` and check nothing more): a window's deadline and a point's
expiry are kept as 64-bit milliseconds, and a chain whose every message's outcome could not be
stored would refuse all ingest. MAX_INTERVAL_S and MAX_TTL_S keep both far inside.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from edge_sync.rules.patterns import has_pattern
from edge_sync.validators import INT64_MAX, INT64_MIN

Problems = list[tuple[str, str]]
"""(field of the configuration, what is wrong with it)."""

_ENGINE = "org.thingsboard.rule.engine."
MSG_TYPE_SWITCH = _ENGINE + "filter.TbMsgTypeSwitchNode"
JS_FILTER = _ENGINE + "filter.TbJsFilterNode"
JS_SWITCH = _ENGINE + "filter.TbJsSwitchNode"
CHECK_MESSAGE = _ENGINE + "filter.TbCheckMessageNode"
TRANSFORM = _ENGINE + "transform.TbTransformMsgNode"
SAVE_TIMESERIES = _ENGINE + "telemetry.TbMsgTimeseriesNode"
SAVE_ATTRIBUTES = _ENGINE + "telemetry.TbMsgAttributesNode"
PUSH_TO_CLOUD = _ENGINE + "edge.TbMsgPushToCloudNode"
CREATE_ALARM = _ENGINE + "action.TbCreateAlarmNode"
CLEAR_ALARM = _ENGINE + "action.TbClearAlarmNode"
LOG = _ENGINE + "action.TbLogNode"
DEDUPLICATION = _ENGINE + "deduplication.TbMsgDeduplicationNode"
RPC_REQUEST = _ENGINE + "rpc.TbSendRPCRequestNode"
DEVICE_PROFILE = _ENGINE + "profile.TbDeviceProfileNode"
"""Runs as a pass-through: every message on by Success (the profiles' alarm rules are not
evaluated on the edge: ``engine.py``, ``validate.notes``)."""
AGGREGATE = "edge_sync.rules.AggregateNode"
AGGREGATE_MAX_PENDING = 100_000
AGGREGATE_DEFAULT_PENDING = 10_000
AGGREGATE_DEFAULT_OUT_TYPE = "POST_TELEMETRY_REQUEST"
DEDUPLICATION_DEFAULT_PENDING = 100
MAX_INTERVAL_S = 366 * 86_400
"""The longest window (deduplication, aggregation): a year, leap day included."""
MAX_TTL_S = 100 * 366 * 86_400
"""The longest a save-timeseries node may keep a point: a hundred (leap) years."""

SCRIPT_LANGS = ("JS", "TBEL")
ATTRIBUTE_SCOPES = ("CLIENT_SCOPE", "SERVER_SCOPE", "SHARED_SCOPE")
DEDUPLICATION_STRATEGIES = ("FIRST", "LAST", "ALL")
ALARM_SEVERITIES = ("CRITICAL", "MAJOR", "MINOR", "WARNING", "INDETERMINATE")


def _script(config: Mapping[str, Any], js_field: str, tbel_field: str) -> Problems:
    """The script of ``scriptLang`` (absent: JS) is non-blank text."""
    lang = config.get("scriptLang")
    said = f"scriptLang {lang}" if lang is not None else "no scriptLang: JS"
    if lang is None:
        lang = "JS"
    if lang not in SCRIPT_LANGS:
        return [("scriptLang", f"expected JS or TBEL, got {lang!r}")]
    field = js_field if lang == "JS" else tbel_field
    if not _text(config.get(field)):
        return [(field, f"missing (the script, {said})")]
    return []


def _scripted(config: Mapping[str, Any]) -> Problems:
    return _script(config, "jsScript", "tbelScript")


def _no_fields(config: Mapping[str, Any]) -> Problems:
    return []


def flag(value: Any) -> bool | None:
    """A boolean configuration field as ThingsBoard reads it into its configuration class's
    primitive ``boolean`` (Jackson, ``TbNodeUtils.convert``): absent or null is false; JSON
    true/false; text "true", "True", "TRUE" / "false", "False", "FALSE" (older configurations
    hold booleans as text), blanks around it ignored, "" and "null" false; a whole number, 0
    false. None: a value Jackson refuses (the node cannot start)."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if isinstance(value, str):
        text = value.strip()
        if text in ("true", "True", "TRUE"):
            return True
        if text in ("false", "False", "FALSE", "", "null"):
            return False
        return None
    if isinstance(value, int):
        return value != 0
    return None


INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
_JAVA_TRIMMED = "".join(map(chr, range(33)))
"""What Java's String.trim takes off both ends: every character up to the space."""


def java_int(value: Any, *, long: bool = False) -> int | None:
    """A Java ``int`` configuration field (``long`` with ``long``) as ThingsBoard reads it into
    its configuration class: TbNodeUtils.convert -> JacksonUtil.treeToValue, Jackson's default
    coercion (StdDeserializer._parseIntPrimitive / _parseLongPrimitive), checked against
    jackson-databind 2.18 and 2.20:

    - absent or null: 0;
    - a JSON integer within the type's range;
    - a JSON float within it, truncated toward zero (DeserializationFeature
      .ACCEPT_FLOAT_AS_INT, on by default): 180.0 and 180.5 are 180, -180.5 is -180;
    - text, trimmed as String.trim does: "" and "null" are 0; else an optional sign and
      decimal digits within the range (Integer.parseInt / Long.parseLong): "180", " 180 ",
      "+180" and "0180" are 180; "180.0", "1e2", "0x10", "1_000" are refused.

    None: what Jackson refuses (the node cannot start): a boolean, an array, an object, other
    text, a number out of the type's range."""
    low, high = (INT64_MIN, INT64_MAX) if long else (INT32_MIN, INT32_MAX)
    if value is None:
        return 0
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if low <= value <= high else None
    if isinstance(value, float):
        # ParserBase.convertNumberToInt/Long: the double against the range as a double, then
        # Java's cast (which saturates: 2^63 as a double is Long.MAX_VALUE)
        if float(low) <= value <= float(high):
            return max(low, min(high, int(value)))
        return None  # NaN and the infinities too
    if isinstance(value, str):
        text = value.strip(_JAVA_TRIMMED)
        if text in ("", "null"):
            return 0
        digits = text[1:] if text[:1] in ("+", "-") else text
        if not digits.isdecimal():  # Character.digit: any Unicode decimal digit, as int()
            return None
        try:
            number = int(text)
        except ValueError:  # beyond Python's digit limit: far beyond any range
            return None
        return number if low <= number <= high else None
    return None


def read_int(value: Any, *, long: bool = False) -> int:
    """A validated number field's value (``java_int``); ValueError for one validation refuses."""
    number = java_int(value, long=long)
    if number is None:
        raise ValueError(f"not a Java {'long' if long else 'int'}: {value!r}")
    return number


def _flags(config: Mapping[str, Any], *keys: str) -> Problems:
    return [(key, f"expected true or false, got {config[key]!r}") for key in keys
            if flag(config.get(key)) is None]


def _check_message(config: Mapping[str, Any]) -> Problems:
    out: Problems = []
    for key in ("messageNames", "metadataNames"):
        value = config.get(key)
        if value is not None and not (isinstance(value, list) and all(_text(v) for v in value)):
            out.append((key, "expected a list of key names"))
    return out + _flags(config, "checkAllKeys")


def _scope(config: Mapping[str, Any]) -> Problems:
    scope = config.get("scope")
    if scope not in ATTRIBUTE_SCOPES:
        return [("scope", ("missing" if scope is None else f"got {scope!r}")
                 + f": expected one of {', '.join(ATTRIBUTE_SCOPES)}")]
    return []


def _push_scope(config: Mapping[str, Any]) -> Problems:
    """BaseTbMsgPushNodeConfiguration.scope: a plain String, not checked by
    AbstractTbMsgPushNode.init and read only for an attribute message without scope metadata
    (getScope). Absent, null or "": the node pushes telemetry, alarms and RPC requests; an
    attribute message without scope metadata fails the node, but for "" an attribute post
    or update, which goes up as SERVER_SCOPE (``engine``); otherwise one of the scopes. The
    save attributes node's ``scope`` is read the same way (TbMsgAttributesNode.getScope)."""
    if config.get("scope") in (None, ""):
        return []
    return _scope(config)


# -- the save nodes' processing settings -------------------------------------------------------
# TimeseriesProcessingSettings and AttributesProcessingSettings (rule-engine-components
# .../telemetry/settings): the basic modes, and ADVANCED's per-action ProcessingStrategy
# (.../telemetry/strategy)
ON_EVERY_MESSAGE, WEBSOCKETS_ONLY, DEDUPLICATE, ADVANCED, SKIP = (
    "ON_EVERY_MESSAGE", "WEBSOCKETS_ONLY", "DEDUPLICATE", "ADVANCED", "SKIP")
SETTINGS_TYPES = (ON_EVERY_MESSAGE, WEBSOCKETS_ONLY, DEDUPLICATE, ADVANCED)
STRATEGY_TYPES = (ON_EVERY_MESSAGE, DEDUPLICATE, SKIP)
ADVANCED_ACTIONS = ("timeseries", "latest", "webSockets", "calculatedFields")
"""TimeseriesProcessingSettings.Advanced's actions."""
ATTRIBUTES_ADVANCED_ACTIONS = ("attributes", "webSockets", "calculatedFields")
"""AttributesProcessingSettings.Advanced's actions."""
ATTRIBUTES_SETTINGS_VERSION = 3
"""TbMsgAttributesNode's configuration version with ``processingSettings`` (ThingsBoard 4.0)."""
DEDUPLICATION_INTERVAL_MAX_S = 86_400
"""DeduplicateProcessingStrategy's bounds: 1 s to a day."""


@dataclass(frozen=True, slots=True)
class Strategy:
    """One action's ProcessingStrategy: ON_EVERY_MESSAGE, SKIP, or DEDUPLICATE (the first
    message of an originator in each ``interval_s`` window of its ts)."""

    type: str
    interval_s: int = 0


EVERY = Strategy(ON_EVERY_MESSAGE)
NEVER = Strategy(SKIP)


@dataclass(frozen=True, slots=True)
class TimeseriesSettings:
    """A save timeseries node's configuration as the edge runs it. ``timeseries`` (the local
    timeseries) and ``latest`` (the latest values) are the two actions the edge has of
    ThingsBoard's four (WebSocket updates and calculated fields have no counterpart on the
    edge). ``shared``: one decision for both (basic DEDUPLICATE), as ThingsBoard's
    TbMsgTimeseriesNode.determineSaveStrategy makes it."""

    mode: str
    timeseries: Strategy
    latest: Strategy
    shared: bool
    default_ttl: int
    use_server_ts: bool


def timeseries_settings(config: Mapping[str, Any], version: int) -> TimeseriesSettings:
    """A validated save timeseries configuration as ThingsBoard reads it. A version 0
    configuration (``configurationVersion`` absent or 0: before ThingsBoard 4.0) is first
    upgraded as TbMsgTimeseriesNode.upgrade does: ``skipLatestPersistence`` "true" (JSON true
    or the text) keeps the timeseries and skips the latest values, anything else saves both
    on every message; its ``processingSettings``, if any, is replaced. (A later configuration
    without ``processingSettings`` is refused by validation.)"""
    default_ttl = read_int(config.get("defaultTTL"), long=True)
    use_server_ts = flag(config.get("useServerTs")) is True
    mode, series, latest, shared = ON_EVERY_MESSAGE, EVERY, EVERY, False
    settings = config.get("processingSettings")
    if version < 1:
        skip = config.get("skipLatestPersistence")
        if skip is True or skip == "true":
            mode, latest = ADVANCED, NEVER
    elif settings is not None:
        mode = settings["type"]
        series, latest = _strategy(settings, "timeseries"), _strategy(settings, "latest")
        shared = mode == DEDUPLICATE
    return TimeseriesSettings(mode, series, latest, shared, default_ttl, use_server_ts)


def _strategy(settings: Mapping[str, Any], action: str) -> Strategy:
    """What validated processing settings decide for one action: the basic modes for every
    action alike (WEBSOCKETS_ONLY skips every action but the WebSocket updates), ADVANCED the
    action's own strategy, whose ``deduplicationIntervalSecs`` is read only for a DEDUPLICATE
    one (SkipProcessingStrategy and OnEveryMessageProcessingStrategy have no properties)."""
    mode = settings["type"]
    if mode == ADVANCED:
        given = settings[action]
        if given["type"] != DEDUPLICATE:
            return NEVER if given["type"] == SKIP else EVERY
        return Strategy(DEDUPLICATE, read_int(given["deduplicationIntervalSecs"]))
    if mode == DEDUPLICATE:
        return Strategy(DEDUPLICATE, read_int(settings["deduplicationIntervalSecs"]))
    if mode == WEBSOCKETS_ONLY:
        return EVERY if action == "webSockets" else NEVER
    return EVERY


@dataclass(frozen=True, slots=True)
class AttributesSettings:
    """A save attributes node's three actions as ThingsBoard's TbMsgAttributesNode
    .determineSaveStrategy decides them: ``attributes`` (the save, the one action the edge
    takes), ``web_sockets`` and ``calculated_fields`` (nothing to act on at the edge, but
    when either says process, the message's scope is looked at: onMsg's short-circuit
    needs all three to say no). ``shared``: one decision for all three (basic
    DEDUPLICATE)."""

    attributes: Strategy
    web_sockets: Strategy
    calculated_fields: Strategy
    shared: bool


ALL_ATTRIBUTE_ACTIONS = AttributesSettings(EVERY, EVERY, EVERY, False)


def attributes_settings(config: Mapping[str, Any], version: int) -> AttributesSettings:
    """A validated save attributes configuration's processing settings. A configuration of a
    version before 3 (``configurationVersion`` absent, 0, 1 or 2: before ThingsBoard 4.0) is
    read as TbMsgAttributesNode.upgrade upgrades it: its ``processingSettings``, if any,
    replaced by ON_EVERY_MESSAGE. (A later one without them is refused by validation.)"""
    settings = config.get("processingSettings")
    if version < ATTRIBUTES_SETTINGS_VERSION or settings is None:
        return ALL_ATTRIBUTE_ACTIONS
    attrs = _strategy(settings, "attributes")
    return AttributesSettings(attrs, _strategy(settings, "webSockets"),
                              _strategy(settings, "calculatedFields"),
                              settings["type"] == DEDUPLICATE)


def _dedup_interval(where: str, given: Mapping[str, Any]) -> Problems:
    secs = given.get("deduplicationIntervalSecs")
    if _whole(secs, minimum=1, maximum=DEDUPLICATION_INTERVAL_MAX_S):
        return []
    return [(f"{where}.deduplicationIntervalSecs",
             ("missing" if secs is None else f"got {secs!r}")
             + f": expected whole seconds from 1 to {DEDUPLICATION_INTERVAL_MAX_S} (a day)")]


def _processing_settings(settings: Any, actions: tuple[str, ...]) -> Problems:
    """What Jackson would refuse to read into the settings class (TbNodeUtils.convert: the
    node cannot start), or DeduplicateProcessingStrategy's constructor refuses; ``actions``:
    those of the class's ADVANCED mode."""
    where = "processingSettings"
    kind = settings.get("type") if isinstance(settings, dict) else None
    if kind not in SETTINGS_TYPES:
        return [(where, f"expected an object whose type is one of {', '.join(SETTINGS_TYPES)}, "
                        f"got {settings!r}")]
    if kind == DEDUPLICATE:
        return _dedup_interval(where, settings)
    if kind != ADVANCED:
        return []
    out: Problems = []
    for action in actions:
        given = settings.get(action)
        strategy = given.get("type") if isinstance(given, dict) else None
        if strategy not in STRATEGY_TYPES:
            out.append((f"{where}.{action}",
                        ("missing" if given is None else f"got {given!r}")
                        + ": expected an object whose type is one of "
                        + ", ".join(STRATEGY_TYPES)))
        elif strategy == DEDUPLICATE:
            out.extend(_dedup_interval(f"{where}.{action}", given))
        elif "deduplicationIntervalSecs" in given:
            # SkipProcessingStrategy and OnEveryMessageProcessingStrategy have no properties,
            # and JacksonUtil.OBJECT_MAPPER keeps FAIL_ON_UNKNOWN_PROPERTIES:
            # UnrecognizedPropertyException, the node cannot start
            out.append((f"{where}.{action}.deduplicationIntervalSecs",
                        f"not a field of a {strategy} strategy (only DEDUPLICATE has an "
                        f"interval): remove it"))
    return out


def _timeseries(config: Mapping[str, Any], version: int) -> Problems:
    """TbMsgTimeseriesNodeConfiguration. ``processingSettings`` is read from version 1 on,
    where it is required (``@NotNull``: RuleChainDataValidator.validateRuleNode refuses the
    configuration, and determineSaveStrategy would fail every message on null). In a version
    0 configuration TbMsgTimeseriesNode.upgrade replaces it, and none is needed; one given
    there is still checked."""
    out: Problems = []
    ttl = config.get("defaultTTL")
    if ttl is not None and not _whole(ttl, minimum=0, maximum=MAX_TTL_S, long=True):
        out.append(("defaultTTL", f"expected whole seconds from 0 to {MAX_TTL_S} (100 years; "
                                  f"0: no TTL), got {ttl!r}"))
    out.extend(_flags(config, "useServerTs"))
    settings = config.get("processingSettings")
    if settings is not None:
        out.extend(_processing_settings(settings, ADVANCED_ACTIONS))
    elif version >= 1:
        out.append(_settings_required(config, 1))
    return out


def _settings_required(config: Mapping[str, Any], version: int) -> tuple[str, str]:
    return ("processingSettings",
            ("null" if "processingSettings" in config else "missing")
            + f": required from configurationVersion {version} on "
              "(e.g. {\"type\": \"ON_EVERY_MESSAGE\"})")


def _attributes(config: Mapping[str, Any], version: int) -> Problems:
    """TbMsgAttributesNodeConfiguration. ``scope`` is read only for a message without scope
    metadata (TbMsgAttributesNode.getScope; init checks nothing): absent, null or "", the
    node saves the messages that name their scope and fails the others (``engine``);
    otherwise one of the scopes. ``processingSettings`` as the save timeseries node's (with
    AttributesProcessingSettings.Advanced's actions) from version 3 on, where it is required
    (``@NotNull``: RuleChainDataValidator.validateRuleNode refuses the configuration, and
    determineSaveStrategy would fail every message on null); before version 3 it is not read:
    TbMsgAttributesNode.upgrade replaces it with ON_EVERY_MESSAGE."""
    out = _push_scope(config)
    if version < ATTRIBUTES_SETTINGS_VERSION:
        return out
    settings = config.get("processingSettings")
    if settings is None:
        out.append(_settings_required(config, ATTRIBUTES_SETTINGS_VERSION))
        return out
    out.extend(_processing_settings(settings, ATTRIBUTES_ADVANCED_ACTIONS))
    return out


def config_flag(config: Mapping[str, Any], key: str, default: bool = False) -> bool:
    """A ``boolean`` field of a configuration class read as ``flag`` reads it; absent: the
    class's default (a value Jackson would refuse reads false here: validation names it)."""
    if key not in config:
        return default
    return flag(config[key]) is True


def _device_profile(config: Mapping[str, Any]) -> Problems:
    # TbDeviceProfileNodeConfiguration: two booleans, read as Jackson reads them
    return _flags(config, "persistAlarmRulesState", "fetchAlarmRulesStateOnStart")


def _alarm_type(config: Mapping[str, Any]) -> Problems:
    """The alarm nodes' ``alarmType``: non-blank text (a pattern, ``patterns.py``)."""
    alarm_type = config.get("alarmType")
    if alarm_type is not None and not isinstance(alarm_type, str):
        return [("alarmType", f"expected text (the type of the alarm, e.g. \"High "
                              f"Temperature\"), got {alarm_type!r}")]
    if not _text(alarm_type):
        return [("alarmType", "missing (the type of the alarm, e.g. \"High Temperature\")")]
    return []


def _alarm_script(config: Mapping[str, Any]) -> Problems:
    return _script(config, "alarmDetailsBuildJs", "alarmDetailsBuildTbel")


def _alarm(config: Mapping[str, Any]) -> Problems:
    return _alarm_type(config) + _alarm_script(config)


def _create_alarm(config: Mapping[str, Any]) -> Problems:
    """TbCreateAlarmNodeConfiguration. With ``useMessageAlarmData`` the alarm's type, severity
    and propagation come from the message: ThingsBoard's UI (create-alarm-config.component.ts
    updateValidators) then requires no alarm type or severity, and the details script only
    with ``overwriteAlarmDetails``. Otherwise ``severity`` is one of ThingsBoard's; with
    ``dynamicSeverity`` it may be a pattern instead (``patterns.py``), but not a text no message
    can change that is none of them. ``relationTypes`` (``List<String>``) is a list of text
    when given."""
    relation_types = config.get("relationTypes")
    listed: Problems = _flags(config, "useMessageAlarmData", "overwriteAlarmDetails",
                              "dynamicSeverity", "propagate", "propagateToOwner",
                              "propagateToTenant")
    if relation_types is not None and not (
            isinstance(relation_types, list) and all(isinstance(t, str) for t in relation_types)):
        listed.append(("relationTypes",
                       f"expected a list of relation types, got {relation_types!r}"))
    if config_flag(config, "useMessageAlarmData"):  # type and severity come from the message
        # the details script runs only to overwrite the message's details (TbCreateAlarmNode
        # .createNewAlarm; the class's overwriteAlarmDetails is true when absent)
        script = _alarm_script(config) if config_flag(config, "overwriteAlarmDetails", True) else []
        return script + listed
    out = _alarm(config)
    severity = config.get("severity")
    names = ", ".join(ALARM_SEVERITIES)
    if severity is not None and not isinstance(severity, str):
        out.append(("severity", f"got {severity!r}: expected one of {names}"))
    elif not _text(severity):
        out.append(("severity", f"missing: expected one of {names}"))
    elif severity in ALARM_SEVERITIES:
        return out + listed
    elif not config_flag(config, "dynamicSeverity"):  # TbCreateAlarmNode.init refuses it
        out.append(("severity", f"got {severity!r}: expected one of {names} (or "
                                "dynamicSeverity with a ${key} pattern)"))
    elif not has_pattern(str(severity)):
        # every message would give this text, which is no severity: ThingsBoard starts the
        # node and fails each message (TbCreateAlarmNode.processAlarmSeverity); refused here
        out.append(("severity", f"got {severity!r}, with dynamicSeverity but no ${{key}} or "
                                f"$[path] pattern: every message would fail; expected one of "
                                f"{names}, or a pattern"))
    return out + listed


def _interval(config: Mapping[str, Any]) -> Problems:
    """A window node's ``interval``: whole seconds from 1 to MAX_INTERVAL_S."""
    interval = config.get("interval")
    if _whole(interval, minimum=1, maximum=MAX_INTERVAL_S):
        return []
    return [("interval", "missing" if interval is None else
             f"expected whole seconds from 1 to {MAX_INTERVAL_S} (366 days), got {interval!r}")]


def _deduplication(config: Mapping[str, Any]) -> Problems:
    out = _interval(config)
    strategy = config.get("strategy")
    if strategy not in DEDUPLICATION_STRATEGIES:
        out.append(("strategy", ("missing" if strategy is None else f"got {strategy!r}")
                    + ": expected one of " + ", ".join(DEDUPLICATION_STRATEGIES)))
    elif strategy == "ALL" and not _text(config.get("outMsgType")):
        out.append(("outMsgType", "missing (strategy ALL sends one message of this type)"))
    for key, minimum in (("maxPendingMsgs", 1), ("maxRetries", 0)):
        value = config.get(key)
        if value is not None and not _whole(value, minimum=minimum):
            out.append((key, f"expected a whole number >= {minimum}, got {value!r}"))
    return out


def rpc_timeout_s(config: Mapping[str, Any]) -> int:
    """An RPC call request node's ``timeoutInSeconds`` as ThingsBoard's
    TbSendRpcRequestNodeConfiguration reads it into its ``int`` (``java_int``: absent or null
    0; ``_rpc_request`` has checked it)."""
    return read_int(config.get("timeoutInSeconds"))


def _rpc_request(config: Mapping[str, Any]) -> Problems:
    """``timeoutInSeconds``: whole seconds from 0 to MAX_INTERVAL_S (an expiry kept in 64-bit
    milliseconds, as a window's deadline), absent or null 0 as ThingsBoard's ``int``."""
    value = config.get("timeoutInSeconds")
    if value is None or _whole(value, minimum=0, maximum=MAX_INTERVAL_S):
        return []
    return [("timeoutInSeconds",
             f"expected whole seconds from 0 to {MAX_INTERVAL_S} (366 days), got {value!r}")]


def _aggregate(config: Mapping[str, Any]) -> Problems:
    out = _interval(config)
    pending = config.get("maxPendingMsgs")
    if pending is not None and not _whole(pending, minimum=1, maximum=AGGREGATE_MAX_PENDING):
        out.append(("maxPendingMsgs",
                    f"expected a whole number from 1 to {AGGREGATE_MAX_PENDING}, got {pending!r}"))
    kind = config.get("outMsgType")
    if kind is not None and not _text(kind):
        out.append(("outMsgType", f"expected a message type, got {kind!r}"))
    return out


@dataclass(frozen=True, slots=True)
class NodeSpec:
    """A supported node: its class name, a short label and its configuration check."""

    type: str
    label: str
    check: Callable[[Mapping[str, Any]], Problems]
    versioned: Callable[[Mapping[str, Any], int], Problems] | None = None
    """A check that reads the node's ``configurationVersion`` too (instead of ``check``)."""

    @property
    def short(self) -> str:
        """The class's simple name (``TbLogNode``)."""
        return self.type.rsplit(".", 1)[-1]


SUPPORTED: Mapping[str, NodeSpec] = {s.type: s for s in (
    NodeSpec(MSG_TYPE_SWITCH, "message type switch", _no_fields),
    NodeSpec(JS_FILTER, "script filter", _scripted),
    NodeSpec(JS_SWITCH, "script switch", _scripted),
    NodeSpec(CHECK_MESSAGE, "check fields presence", _check_message),
    NodeSpec(TRANSFORM, "script transformation", _scripted),
    NodeSpec(SAVE_TIMESERIES, "save timeseries", _no_fields, _timeseries),
    NodeSpec(SAVE_ATTRIBUTES, "save attributes", _no_fields, _attributes),
    NodeSpec(PUSH_TO_CLOUD, "push to cloud", _push_scope),
    NodeSpec(CREATE_ALARM, "create alarm", _create_alarm),
    NodeSpec(CLEAR_ALARM, "clear alarm", _alarm),
    NodeSpec(LOG, "log", _scripted),
    NodeSpec(DEDUPLICATION, "deduplication", _deduplication),
    NodeSpec(AGGREGATE, "aggregation (the edge's own)", _aggregate),
    NodeSpec(RPC_REQUEST, "rpc call request", _rpc_request),
    NodeSpec(DEVICE_PROFILE, "device profile (passes messages on)", _device_profile),
)}
"""Every node type the edge accepts; a chain with any other is refused as a whole."""


SCRIPT_FIELDS: Mapping[str, tuple[str, str]] = {
    JS_FILTER: ("jsScript", "tbelScript"),
    JS_SWITCH: ("jsScript", "tbelScript"),
    TRANSFORM: ("jsScript", "tbelScript"),
    LOG: ("jsScript", "tbelScript"),
    CREATE_ALARM: ("alarmDetailsBuildJs", "alarmDetailsBuildTbel"),
    CLEAR_ALARM: ("alarmDetailsBuildJs", "alarmDetailsBuildTbel"),
}
"""The nodes that run a script: its field for JS and for TBEL."""


def script_of(node_type: str, config: Mapping[str, Any]) -> tuple[str, str, str] | None:
    """The script a node runs, as (language, field, script text); None for a node without one
    or whose configuration does not name a usable one (``check_configuration`` says why)."""
    fields = SCRIPT_FIELDS.get(node_type)
    if fields is None:
        return None
    lang = config.get("scriptLang", "JS")
    if lang is None:
        lang = "JS"
    if lang not in SCRIPT_LANGS:
        return None
    field = fields[0] if lang == "JS" else fields[1]
    script = config.get(field)
    if not isinstance(script, str) or not _text(script):
        return None
    return str(lang), field, script


def check_configuration(node_type: str, config: Mapping[str, Any], version: int = 0
                        ) -> Problems:
    """The problems of a supported node's configuration of that ``configurationVersion``
    (KeyError for an unsupported type)."""
    spec = SUPPORTED[node_type]
    return spec.check(config) if spec.versioned is None else spec.versioned(config, version)


def _text(value: Any) -> bool:
    return isinstance(value, str) and bool(value.strip())


def _whole(value: Any, *, minimum: int, maximum: int | None = None, long: bool = False) -> bool:
    """A number field (``java_int``: a Java ``int``, or ``long``) Jackson reads, within the
    bounds."""
    number = java_int(value, long=long)
    return number is not None and number >= minimum and (maximum is None or number <= maximum)
