"""The entity graph's vocabulary, shared by the edge and the reference cloud: which entity kinds
travel, in which DownlinkMsg list, in which order a full sync sends them, and which references
of an entity's ThingsBoard 4.x JSON must be on the edge before the entity can be applied.

Pure logic over decoded JSON; no storage, no protobuf objects.

Hard references (``references``) are the ones an entity cannot be used without:
- a device names its device profile (``deviceProfileId``), an asset its asset profile;
- an entity view names the device or asset it shows (``entityId``);
- a relation names both its ends (``from``, ``to``), whatever their kinds;
- a rule chain's metadata names its rule chain (``ruleChainId``) and every rule chain its
  nodes forward to (``TbRuleChainInputNode``'s ``configuration.ruleChainId``);
- a dashboard names the tenant widget types its widgets use (``typeFullFqn``: ThingsBoard's
  UI writes ``"tenant." + fqn`` for a tenant widget type and ``"system." + fqn`` for a system
  one, ui-ngx ``widget.models.ts`` ``fullWidgetTypeFqn``; the widget type's own ``fqn`` has no
  prefix); system widget types ship with every ThingsBoard installation, the edge's included,
  and are not references;
- device credentials name their device, user credentials their user.
Soft references (a customer, a default dashboard or rule chain of a profile) are kept in the
JSON but never hold an entity back: ThingsBoard does not send them to every edge that holds the
entity, and waiting for them would wait for ever.

Relations may form cycles (they are not references between entities: a relation waits for its
two ends, never for another relation). References between entities may not: ``find_cycle``
names one, and the reference cloud refuses to create an entity that would close one.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

NULL_ID = uuid.UUID("13814000-1dd2-11b2-8080-808080808080")
"""ThingsBoard's "no entity" id (an unassigned customer, say)."""

RULE_CHAIN_INPUT_NODE = "org.thingsboard.rule.engine.flow.TbRuleChainInputNode"
SYSTEM_WIDGET_PREFIX = "system."
TENANT_WIDGET_PREFIX = "tenant."


@dataclass(frozen=True, slots=True)
class Kind:
    """One entity kind: ThingsBoard's EntityType name, the DownlinkMsg list that carries it,
    its rank in a full sync (lower first) and whether its message has idMSB/idLSB."""

    entity_type: str
    downlink_field: str
    sync_rank: int
    has_id_halves: bool = True


# In ThingsBoard's full-sync order (EdgeSyncCursor): tenant, queues, rule chains (each followed
# by its metadata), users, widget types and bundles, customers, dashboards, profiles, devices
# (with their credentials), assets, entity views; relations come last, once both ends are sent.
KINDS: tuple[Kind, ...] = (
    Kind("TENANT", "tenantUpdateMsg", 0, has_id_halves=False),
    Kind("QUEUE", "queueUpdateMsg", 1),
    Kind("RULE_CHAIN", "ruleChainUpdateMsg", 2),
    Kind("RULE_CHAIN_METADATA", "ruleChainMetadataUpdateMsg", 3, has_id_halves=False),
    Kind("USER", "userUpdateMsg", 4),
    Kind("USER_CREDENTIALS", "userCredentialsUpdateMsg", 5, has_id_halves=False),
    Kind("WIDGET_TYPE", "widgetTypeUpdateMsg", 6),
    Kind("WIDGETS_BUNDLE", "widgetsBundleUpdateMsg", 7),
    Kind("CUSTOMER", "customerUpdateMsg", 8),
    Kind("DASHBOARD", "dashboardUpdateMsg", 9),
    Kind("DEVICE_PROFILE", "deviceProfileUpdateMsg", 10),
    Kind("ASSET_PROFILE", "assetProfileUpdateMsg", 11),
    Kind("DEVICE", "deviceUpdateMsg", 12),
    Kind("DEVICE_CREDENTIALS", "deviceCredentialsUpdateMsg", 13, has_id_halves=False),
    Kind("ASSET", "assetUpdateMsg", 14),
    Kind("ENTITY_VIEW", "entityViewUpdateMsg", 15),
    Kind("RELATION", "relationUpdateMsg", 16, has_id_halves=False),
)
BY_TYPE: Mapping[str, Kind] = {k.entity_type: k for k in KINDS}
BY_FIELD: Mapping[str, Kind] = {k.downlink_field: k for k in KINDS}


@dataclass(frozen=True, slots=True, order=True)
class Ref:
    """What an entity needs, or provides: a kind and a key (an id as text, or for a widget
    type its fqn, kind ``WIDGET_TYPE_FQN``)."""

    kind: str
    key: str

    def __str__(self) -> str:
        return f"{self.kind} {self.key}"


def _typed(value: Any) -> Ref | None:
    """A typed id ``{"entityType": T, "id": U}`` as a Ref; None when absent, nil or NULL_ID."""
    if not isinstance(value, Mapping):
        return None
    kind, raw = value.get("entityType"), value.get("id")
    if not isinstance(kind, str) or not isinstance(raw, str):
        return None
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        return None
    if parsed.int == 0 or parsed == NULL_ID:
        return None
    return Ref(kind, str(parsed))


def _widget_fqns(config: Any) -> Iterable[str]:
    """The tenant widget types a dashboard's configuration uses."""
    if not isinstance(config, Mapping):
        return ()
    widgets = config.get("widgets")
    if isinstance(widgets, Mapping):
        widgets = list(widgets.values())
    if not isinstance(widgets, list):
        return ()
    out: set[str] = set()
    for widget in widgets:
        full = widget.get("typeFullFqn") if isinstance(widget, Mapping) else None
        if not isinstance(full, str) or not full or full.startswith(SYSTEM_WIDGET_PREFIX):
            continue
        fqn = full.removeprefix(TENANT_WIDGET_PREFIX)
        if fqn:
            out.add(fqn)
    return sorted(out)


def _chain_targets(body: Mapping[str, Any]) -> Iterable[Ref]:
    nodes = body.get("nodes")
    if not isinstance(nodes, list):  # absent, or not ThingsBoard's list of nodes: none
        return
    for node in nodes:
        if isinstance(node, Mapping) and node.get("type") == RULE_CHAIN_INPUT_NODE:
            config = node.get("configuration")
            raw = config.get("ruleChainId") if isinstance(config, Mapping) else None
            if isinstance(raw, str):
                try:
                    yield Ref("RULE_CHAIN", str(uuid.UUID(raw)))
                except ValueError:
                    continue


def references(entity_type: str, body: Mapping[str, Any]) -> list[Ref]:
    """The hard references of an entity of ``entity_type`` whose JSON is ``body`` (see the
    module docstring), sorted, without duplicates, never the entity itself."""
    refs: set[Ref | None] = set()
    if entity_type == "DEVICE":
        refs.add(_typed(body.get("deviceProfileId")))
    elif entity_type == "ASSET":
        refs.add(_typed(body.get("assetProfileId")))
    elif entity_type == "ENTITY_VIEW":
        refs.add(_typed(body.get("entityId")))
    elif entity_type == "RELATION":
        refs.add(_typed(body.get("from")))
        refs.add(_typed(body.get("to")))
    elif entity_type == "RULE_CHAIN_METADATA":
        refs.add(_typed(body.get("ruleChainId")))
        refs.update(_chain_targets(body))
    elif entity_type == "DASHBOARD":
        refs.update(Ref("WIDGET_TYPE_FQN", fqn) for fqn in _widget_fqns(body.get("configuration")))
    elif entity_type == "DEVICE_CREDENTIALS":
        refs.add(_typed(body.get("deviceId")))
    elif entity_type == "USER_CREDENTIALS":
        refs.add(_typed(body.get("userId")) or _typed({"entityType": "USER", "id": body.get("userId")}))
    own = _typed(body.get("id"))
    return sorted(r for r in refs if r is not None and r != own)


def provides(entity_type: str, entity_id: uuid.UUID, body: Mapping[str, Any]) -> list[Ref]:
    """What an applied entity satisfies: its own (kind, id), and for a widget type its fqn."""
    out = [Ref(entity_type, str(entity_id))]
    if entity_type == "WIDGET_TYPE":
        fqn = body.get("fqn")
        if isinstance(fqn, str) and fqn:
            out.append(Ref("WIDGET_TYPE_FQN", fqn))
    return out


def relation_key(body: Mapping[str, Any]) -> tuple[Ref, Ref, str, str] | None:
    """A relation's identity: (from, to, type, typeGroup); None when an end is missing."""
    src, dst = _typed(body.get("from")), _typed(body.get("to"))
    if src is None or dst is None:
        return None
    return src, dst, str(body.get("type") or ""), str(body.get("typeGroup") or "COMMON")


def find_cycle(start: Ref, refs_of: Callable[[Ref], Iterable[Ref]]) -> list[Ref] | None:
    """A reference cycle through ``start`` (the path, ``start`` first and last), or None.
    ``refs_of`` gives an entity's references as they would be after the change being checked.
    Relations are not followed (they may form cycles)."""
    stack: list[Iterator[Ref]] = [iter(refs_of(start))]
    path = [start]
    seen = {start}
    while stack:
        nxt = next(stack[-1], None)
        if nxt is None:
            stack.pop()
            path.pop()
            continue
        if nxt == start:
            return [*path, start]
        if nxt in seen or nxt.kind == "RELATION":
            continue
        seen.add(nxt)
        path.append(nxt)
        stack.append(iter(refs_of(nxt)))
    return None
