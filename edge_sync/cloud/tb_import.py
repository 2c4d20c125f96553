"""Import of ThingsBoard export files into the reference cloud's entity graph: a file (already
decoded JSON) becomes a plan of (entity type, ThingsBoard 4.x JSON) items, in the order they
must be created, plus one note per field the import dropped or changed. Pure: no storage; what
the cloud already has comes in through a ``Lookup``, new ids from the caller's id source.

The files are those ThingsBoard's UI exports (``ui-ngx/src/app/shared/import-export/
import-export.service.ts``, matched at thingsboard/thingsboard dfe65d5abc). Its export strips
``id``, ``createdTime``, ``tenantId``, ``customerId``, ``externalId`` and ``version``
(``prepareExport``); a rule chain is ``{"ruleChain": {...}, "metadata": {...}}`` with the node ids
and the chain id taken out and ``root`` false; a profile is exported with ``default`` false; a
widgets bundle is ``{"widgetsBundle": {...}, "widgetTypes": [...]}`` (or ``widgetTypeFqns``). A
JSON object of ThingsBoard's REST API (ids included) imports too, and so does a JSON array of
such objects.

Rules (docs/reference-cloud.md, "Importing ThingsBoard export files"):

- **New ids.** As ThingsBoard's own import does, every imported entity gets a new time-based id
  (and ``createdTime`` from it) unless ``keep_ids`` is given, which keeps a well-formed id of the
  right kind that the file carries (a REST-shaped file re-imported into the same cloud).
  Rule nodes get new ids, the chain's ``firstRuleNodeId`` is the node at ``firstNodeIndex``.
- **Kind.** Taken from ``entity_type`` when given, else from the shape: ``ruleChain`` +
  ``metadata``, ``widgetsBundle``, a typed ``id``, then the fields each kind must have.
  A shape that fits no kind, or several, is refused and asks for the type.
- **Checked as ThingsBoard's import checks** (``validateImported*``): a dashboard needs ``title``
  and ``configuration``, a rule chain ``ruleChain.name`` and ``metadata`` (``type`` CORE when
  absent), a device profile ``name``, ``type``, ``transportType``, ``provisionType`` and
  ``profileData``, a widget type ``name`` and ``descriptor``, a widgets bundle ``title``. Our
  own: names are text of 1 to 255 bytes, rule node indexes in range, every node has a type, a
  name and an object configuration, a user an ``email`` and an ``authority`` of TENANT_ADMIN or
  CUSTOMER_USER.
- **As ThingsBoard's UI converts on import:** legacy dashboard widgets (``isSystemType``,
  ``bundleAlias``, ``typeAlias``) get their ``typeFullFqn``; legacy rule chain connections
  (``ruleChainConnections``) become TbRuleChainInputNode nodes; a node's old ``debugMode: true``
  becomes ``debugSettings`` (failures and all messages); a widget type without ``fqn`` in a
  bundle gets ``<bundle alias>.<alias or name>``, alone ``<name>`` lower-cased (\\W+ to ``_``).
- **Never imported:** a user's ``password`` (and the other credential fields: they are never
  stored), a dashboard's ``assignedCustomers`` and ``resources`` (the cloud keeps no resources),
  ``externalId``. A profile is not made the default (``default`` false) and a rule chain not the
  root (``root`` false): the cloud's defaults stay. A profile's default rule chain, edge rule
  chain or dashboard the cloud does not have is cleared (ThingsBoard's import does the same);
  so are OTA package ids (the cloud has none), and a customer the cloud does not have becomes no
  customer. Each of these is a note, never silent.
- **References.** A hard reference (``common/entity_graph.references``) must be to an entity the
  cloud has or one the same file brings: a rule node's forward target, an entity view's entity,
  a dashboard's tenant widget types. Otherwise the import is refused, naming what is missing. An
  asset whose profile the cloud does not have takes the profile named by its ``type``, else the
  default one (as the cloud does for an asset without profile; ThingsBoard would make a profile
  of that name), with a note.

Errors are ``BadRequest`` whose message says what is wrong and where (``metadata.nodes[2].type:
missing``).
"""

from __future__ import annotations

import copy
import re
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, Protocol

from edge_sync.cloud.tb_entities import SECRET_USER_FIELDS, SECRET_USER_INFO_FIELDS
from edge_sync.common import entity_graph, ids
from edge_sync.common.entity_graph import NULL_ID, RULE_CHAIN_INPUT_NODE, Ref

# the shapes the edge reads too live in common/tb_shapes.py; re-exported for the import's users
from edge_sync.common.tb_shapes import check_connection, check_node
from edge_sync.common.tb_shapes import check_metadata as check_metadata
from edge_sync.common.tb_shapes import is_index as _is_index
from edge_sync.common.tb_shapes import list_of as _list_of
from edge_sync.common.tb_shapes import load as load
from edge_sync.common.tb_shapes import type_name as _type_name
from edge_sync.common.wire import typed_id
from edge_sync.errors import BadRequest
from edge_sync.validators import MAX_NAME_BYTES, text_fits

IMPORTABLE = ("ASSET", "ASSET_PROFILE", "CUSTOMER", "DASHBOARD", "DEVICE_PROFILE",
              "ENTITY_VIEW", "RULE_CHAIN", "USER", "WIDGETS_BUNDLE", "WIDGET_TYPE")
"""The kinds a file may hold. Devices are made with ``edge-cloud device create`` (they keep
their own tables: token, one edge); tenants, queues and credentials are the cloud's own."""

EXPORT_STRIPPED = ("id", "createdTime", "tenantId", "externalId", "version")
"""What ThingsBoard's prepareExport takes out (customerId is handled per kind)."""


USER_AUTHORITIES = ("TENANT_ADMIN", "CUSTOMER_USER")

PROFILE_SOFT_REFS = (("defaultRuleChainId", "RULE_CHAIN"), ("defaultEdgeRuleChainId", "RULE_CHAIN"),
                     ("defaultDashboardId", "DASHBOARD"))
OTA_FIELDS = ("firmwareId", "softwareId")
DEFAULT_PROFILE = "default"
"""ThingsBoard's default device and asset profile name (the cloud has both)."""

_WORD = re.compile(r"\W+")


class Lookup(Protocol):
    """What the cloud already has."""

    def has(self, ref: Ref) -> bool:
        """True when the cloud holds ``ref``: a typed entity, or a ``WIDGET_TYPE_FQN``."""

    def find(self, entity_type: str, name: str) -> uuid.UUID | None:
        """The id of the entity of that kind with that name, or None."""


class EmptyCloud:
    """A Lookup of a cloud that has nothing (for tests and dry runs)."""

    def has(self, ref: Ref) -> bool:
        return False

    def find(self, entity_type: str, name: str) -> uuid.UUID | None:
        return None


@dataclass(frozen=True, slots=True)
class ImportItem:
    """One entity to create: its kind and its ThingsBoard 4.x JSON, its new id included."""

    entity_type: str
    body: dict[str, Any]
    name: str

    @property
    def id(self) -> uuid.UUID:
        """The item's id (a rule chain's metadata: its chain's)."""
        raw = self.body["ruleChainId" if self.entity_type == "RULE_CHAIN_METADATA" else "id"]
        return uuid.UUID(raw["id"])

    def describe(self) -> str:
        return f"{self.entity_type} {self.id} ({self.name})"


@dataclass(frozen=True, slots=True)
class ImportPlan:
    """What a file imports: the items in creation order (references first) and the notes."""

    items: tuple[ImportItem, ...]
    notes: tuple[str, ...]
    bundle_fqns: Mapping[uuid.UUID, tuple[str, ...]] = field(default_factory=dict)
    """Per imported widgets bundle (by id), the fqns of its widget types, in the file's order."""

    def as_json(self) -> dict[str, Any]:
        return {"entities": [{"entity_type": i.entity_type, "id": str(i.id), "name": i.name}
                             for i in self.items],
                "notes": list(self.notes)}


def detect_kind(doc: Mapping[str, Any]) -> str:
    """The kind of one exported object, from its shape; BadRequest when it cannot be told."""
    if "ruleChain" in doc or ("metadata" in doc and isinstance(doc["metadata"], Mapping)
                              and "nodes" in doc["metadata"]):
        return "RULE_CHAIN"
    if "widgetsBundle" in doc:
        return "WIDGETS_BUNDLE"
    own = doc.get("id")
    if isinstance(own, Mapping) and isinstance(own.get("entityType"), str):
        kind = str(own["entityType"])
        if kind not in IMPORTABLE:
            raise BadRequest(_not_importable(kind))
        return kind
    guesses = [kind for kind, test in _SHAPES if test(doc)]
    if len(guesses) == 1:
        return guesses[0]
    seen = ", ".join(sorted(doc)[:12]) or "none"
    if not guesses:
        raise BadRequest(f"cannot tell what kind of ThingsBoard export this is (fields: {seen}): "
                         f"give the type (one of {', '.join(IMPORTABLE)})")
    raise BadRequest(f"this file could be any of {', '.join(guesses)} (fields: {seen}): give "
                     "the type")


_SHAPES: tuple[tuple[str, Callable[[Mapping[str, Any]], bool]], ...] = (
    ("DASHBOARD", lambda d: "title" in d and "configuration" in d),
    ("DEVICE_PROFILE", lambda d: "profileData" in d or "transportType" in d),
    ("WIDGET_TYPE", lambda d: "descriptor" in d),
    ("USER", lambda d: "email" in d and "authority" in d),
    ("ENTITY_VIEW", lambda d: "entityId" in d and "keys" in d),
    ("ASSET", lambda d: "assetProfileId" in d),
    ("ASSET_PROFILE", lambda d: "name" in d and "defaultEdgeRuleChainId" in d
     and "profileData" not in d and "transportType" not in d),
    ("CUSTOMER", lambda d: "title" in d and "configuration" not in d and "descriptor" not in d
     and "authority" not in d),
)


def _not_importable(kind: str) -> str:
    if kind == "DEVICE":
        return ("DEVICE: devices are not imported from files: create them with `edge-cloud "
                "device create --edge RK --name N` (a device has a token and one edge)")
    return f"{kind}: not a kind that can be imported (one of {', '.join(IMPORTABLE)})"


def plan(doc: Any, *, new_id: Callable[[], uuid.UUID], lookup: Lookup | None = None,
         entity_type: str | None = None, keep_ids: bool = False,
         source: str = "the file") -> ImportPlan:
    """The import plan of a decoded export file (an object, or an array of objects).

    ``new_id`` makes each new id (the cloud's time-based ids); ``lookup`` says what the cloud
    already has (nothing when None); ``entity_type`` overrides the detection for every object
    of the file. BadRequest, naming ``source`` and the place, when the file cannot be imported
    as a whole: nothing of it is to be created then."""
    if entity_type is not None:
        entity_type = entity_type.upper()
        if entity_type not in IMPORTABLE:
            raise BadRequest(f"type: {_not_importable(entity_type)}")
    docs = doc if isinstance(doc, list) else [doc]
    if not docs:
        raise BadRequest(f"{source}: an empty list: nothing to import")
    found: list[tuple[str, Mapping[str, Any], str]] = []
    for index, one in enumerate(docs):
        where = f"{source}[{index}]" if isinstance(doc, list) else source
        if not isinstance(one, Mapping):
            raise BadRequest(f"{where}: expected a JSON object, got {_type_name(one)}")
        found.append((entity_type or _detected(one, where), one, where))
    builder = _Builder(new_id, lookup or EmptyCloud(), keep_ids)
    # what others name first (a profile before its asset), the file's order otherwise
    for kind, one, where in sorted(found, key=lambda f: entity_graph.BY_TYPE[f[0]].sync_rank):
        builder.add(kind, one, where)
    return builder.finish(source)


def _detected(doc: Mapping[str, Any], where: str) -> str:
    try:
        return detect_kind(doc)
    except BadRequest as exc:
        raise BadRequest(f"{where}: {exc}") from None


# -- building ---------------------------------------------------------------------------------


class _Builder:
    """Accumulates the items of one file and checks their references once all are known."""

    def __init__(self, new_id: Callable[[], uuid.UUID], lookup: Lookup, keep_ids: bool) -> None:
        self._new_id = new_id
        self._lookup = lookup
        self._keep_ids = keep_ids
        self.items: list[tuple[ImportItem, str]] = []
        self.notes: list[str] = []
        self.bundle_fqns: dict[uuid.UUID, tuple[str, ...]] = {}

    # -- per kind -----------------------------------------------------------------------------

    def add(self, kind: str, doc: Mapping[str, Any], where: str) -> None:
        adders: dict[str, Callable[[Mapping[str, Any], str], None]] = {
            "ASSET": self._asset, "ASSET_PROFILE": self._asset_profile,
            "CUSTOMER": self._customer, "DASHBOARD": self._dashboard,
            "DEVICE_PROFILE": self._device_profile, "ENTITY_VIEW": self._entity_view,
            "RULE_CHAIN": self._rule_chain, "USER": self._user,
            "WIDGETS_BUNDLE": self._widgets_bundle,
        }
        if kind == "WIDGET_TYPE":
            self._widget_type(doc, where)
        else:
            adders[kind](doc, where)

    def _dashboard(self, doc: Mapping[str, Any], where: str) -> None:
        body = self._base("DASHBOARD", doc, where)
        title = _name(body, "title", where)
        config = body.get("configuration")
        if not isinstance(config, dict):
            raise BadRequest(f"{where}: configuration: "
                             + ("missing" if config is None else
                                f"expected a JSON object, got {_type_name(config)}"))
        for dropped in ("assignedCustomers", "resources"):
            if body.pop(dropped, None):
                self.note(where, f"{dropped} not imported" + (
                    " (the cloud keeps no resources: images the dashboard names by resource "
                    "link are not on the edge)" if dropped == "resources" else
                    " (customers are assigned in the cloud)"))
        converted = _legacy_widgets(config)
        if converted:
            self.note(where, f"{converted} legacy widget(s) given their typeFullFqn "
                             "(isSystemType/bundleAlias/typeAlias), as ThingsBoard's import does")
        body.pop("customerId", None)  # a dashboard has assignedCustomers, never a customerId
        self._push("DASHBOARD", body, title, where)

    def _rule_chain(self, doc: Mapping[str, Any], where: str) -> None:
        chain_doc, meta_doc = doc.get("ruleChain"), doc.get("metadata")
        if not isinstance(chain_doc, Mapping):
            raise BadRequest(f"{where}: ruleChain: " + (
                "missing (a rule chain export is {\"ruleChain\": {...}, \"metadata\": {...}})"
                if chain_doc is None else f"expected a JSON object, got {_type_name(chain_doc)}"))
        if not isinstance(meta_doc, Mapping):
            raise BadRequest(f"{where}: metadata: " + (
                "missing (the rule chain's nodes and connections)" if meta_doc is None else
                f"expected a JSON object, got {_type_name(meta_doc)}"))
        chain = self._base("RULE_CHAIN", chain_doc, f"{where}: ruleChain")
        name = _name(chain, "name", f"{where}: ruleChain")
        chain.setdefault("type", "CORE")
        if chain["type"] not in ("CORE", "EDGE"):
            raise BadRequest(f"{where}: ruleChain.type: expected CORE or EDGE, got "
                             f"{chain['type']!r}")
        if chain.get("root"):
            self.note(where, "root set to false: an imported rule chain does not replace the "
                             "edge's root rule chain")
        chain["root"] = False
        chain.setdefault("debugMode", False)
        chain.setdefault("configuration", None)
        chain.setdefault("additionalInfo", None)
        chain_id = uuid.UUID(chain["id"]["id"])
        meta = self._metadata(meta_doc, chain_id, f"{where}: metadata")
        first = meta["firstNodeIndex"]
        chain["firstRuleNodeId"] = meta["nodes"][first]["id"] if first is not None else None
        self._push("RULE_CHAIN", chain, name, where)
        self._push("RULE_CHAIN_METADATA", meta, name, where)

    def _metadata(self, doc: Mapping[str, Any], chain_id: uuid.UUID, where: str) -> dict[str, Any]:
        meta = copy.deepcopy(dict(doc))
        nodes_raw = _list_of(meta, "nodes", where)
        connections = _list_of(meta, "connections", where)
        nodes = [self._node(n, chain_id, f"{where}.nodes[{i}]") for i, n in enumerate(nodes_raw)]
        legacy = meta.get("ruleChainConnections") or []
        if not isinstance(legacy, list):
            raise BadRequest(f"{where}.ruleChainConnections: expected a list")
        for i, conn in enumerate(legacy):
            nodes.append(self._legacy_input_node(conn, chain_id, len(nodes),
                                                 f"{where}.ruleChainConnections[{i}]",
                                                 len(nodes_raw), connections))
        if legacy:
            self.note(where, f"{len(legacy)} legacy rule chain connection(s) turned into "
                             "TbRuleChainInputNode nodes, as ThingsBoard's import does")
        for i, conn in enumerate(connections):
            check_connection(conn, len(nodes), f"{where}.connections[{i}]")
        first = meta.get("firstNodeIndex")
        if first == -1:  # ThingsBoard's "no first node"
            first = None
        if first is not None and (not _is_index(first) or first >= len(nodes_raw)):
            raise BadRequest(f"{where}.firstNodeIndex: {first!r} names no node (there are "
                             f"{len(nodes_raw)})")
        out: dict[str, Any] = {"ruleChainId": typed_id("RULE_CHAIN", chain_id)}
        out["version"] = None
        out["firstNodeIndex"] = first
        out["nodes"] = nodes
        out["connections"] = [dict(c) for c in connections]
        out["ruleChainConnections"] = None
        if "notes" in meta:
            out["notes"] = meta["notes"]
        return out

    def _node(self, doc: Any, chain_id: uuid.UUID, where: str) -> dict[str, Any]:
        if not isinstance(doc, Mapping):
            raise BadRequest(f"{where}: expected a JSON object, got {_type_name(doc)}")
        node = self._with_id("RULE_NODE", doc, where)
        node.pop("ruleChainId", None)
        check_node(node, where)
        if node.pop("debugMode", False) and not node.get("debugSettings"):
            node["debugSettings"] = {"failuresEnabled": True, "allEnabled": True}
        out = {"id": node.pop("id"), "createdTime": node.pop("createdTime"),
               "ruleChainId": typed_id("RULE_CHAIN", chain_id), "type": node.pop("type"),
               "name": node.pop("name"), "debugSettings": node.pop("debugSettings", None),
               "singletonMode": bool(node.pop("singletonMode", False)),
               "queueName": node.pop("queueName", None),
               "configurationVersion": node.pop("configurationVersion", 0),
               "configuration": node.pop("configuration"),
               "additionalInfo": node.pop("additionalInfo", None), "externalId": None}
        node.pop("externalId", None)
        out.update(node)  # fields of a newer ThingsBoard, kept as they are
        return out

    def _legacy_input_node(self, conn: Any, chain_id: uuid.UUID, index: int, where: str,
                           first_legacy: int, connections: list[Any]) -> dict[str, Any]:
        if not isinstance(conn, Mapping):
            raise BadRequest(f"{where}: expected a JSON object")
        target = _typed_ref(conn.get("targetRuleChainId"), "RULE_CHAIN")
        if target is None:
            raise BadRequest(f"{where}.targetRuleChainId: expected a RULE_CHAIN id")
        if not _is_index(conn.get("fromIndex")):
            raise BadRequest(f"{where}.fromIndex: expected a node index")
        connections.append({"fromIndex": conn["fromIndex"], "toIndex": index,
                            "type": conn.get("type") or "Success"})
        node_id = self._fresh()
        return {"id": typed_id("RULE_NODE", node_id), "createdTime": _created(node_id),
                "ruleChainId": typed_id("RULE_CHAIN", chain_id), "type": RULE_CHAIN_INPUT_NODE,
                "name": "Rule Chain Input", "debugSettings": None, "singletonMode": False,
                "queueName": None, "configurationVersion": 1,
                "configuration": {"ruleChainId": str(target),
                                  "forwardMsgToDefaultRuleChain": False},
                "additionalInfo": conn.get("additionalInfo"), "externalId": None}

    def _device_profile(self, doc: Mapping[str, Any], where: str) -> None:
        body = self._base("DEVICE_PROFILE", doc, where)
        name = _name(body, "name", where)
        missing = [k for k in ("type", "transportType", "provisionType", "profileData")
                   if body.get(k) is None]
        if missing:
            raise BadRequest(f"{where}: missing {', '.join(missing)} (a ThingsBoard device "
                             "profile has name, type, transportType, provisionType and "
                             "profileData)")
        if not isinstance(body["profileData"], dict):
            raise BadRequest(f"{where}: profileData: expected a JSON object")
        self._profile(body, where)
        self._push("DEVICE_PROFILE", body, name, where)

    def _asset_profile(self, doc: Mapping[str, Any], where: str) -> None:
        body = self._base("ASSET_PROFILE", doc, where)
        name = _name(body, "name", where)
        self._profile(body, where)
        self._push("ASSET_PROFILE", body, name, where)

    def _profile(self, body: dict[str, Any], where: str) -> None:
        """As ThingsBoard exports (default false) and imports (missing rule chains cleared)."""
        if body.get("default"):
            self.note(where, "default set to false: the cloud's default profile stays the default")
        body["default"] = False
        for key, kind in PROFILE_SOFT_REFS:
            ref = _typed_ref(body.get(key), kind)
            if ref is not None and not self._has(Ref(kind, str(ref))):
                self.note(where, f"{key} {ref} cleared: the cloud has no such {kind}")
                body[key] = None
        for key in OTA_FIELDS:
            if body.get(key) is not None:
                self.note(where, f"{key} cleared: the cloud has no OTA packages")
                body[key] = None

    def _asset(self, doc: Mapping[str, Any], where: str) -> None:
        body = self._base("ASSET", doc, where)
        name = _name(body, "name", where)
        profile = _typed_ref(body.get("assetProfileId"), "ASSET_PROFILE")
        if profile is None or not self._has(Ref("ASSET_PROFILE", str(profile))):
            type_name = body.get("type") or "default"
            if not text_fits(type_name, MAX_NAME_BYTES):
                raise BadRequest(f"{where}: type: expected text of 1 to {MAX_NAME_BYTES} bytes")
            found, named = self._find("ASSET_PROFILE", type_name), type_name
            if found is None and type_name != DEFAULT_PROFILE:
                found, named = self._find("ASSET_PROFILE", DEFAULT_PROFILE), DEFAULT_PROFILE
            if found is None:
                what = f"asset profile {profile}" if profile else "no asset profile"
                raise BadRequest(f"{where}: asset {name!r} names {what}, and the cloud has no "
                                 f"asset profile named {type_name!r} (its type) nor a default "
                                 "one: import or create the asset profile first")
            if profile is not None or named != type_name:
                self.note(where, f"{'assetProfileId ' + str(profile) if profile else 'no asset profile'}"
                                 f": the cloud's asset profile {named!r} ({found}) taken"
                                 + ("" if named == type_name else f", it has none named "
                                    f"{type_name!r}"))
            body["assetProfileId"] = typed_id("ASSET_PROFILE", found)
        body.setdefault("type", None)
        body.setdefault("label", None)
        self._customer_ref(body, where)
        self._push("ASSET", body, name, where)

    def _entity_view(self, doc: Mapping[str, Any], where: str) -> None:
        body = self._base("ENTITY_VIEW", doc, where)
        name = _name(body, "name", where)
        if _typed_ref(body.get("entityId"), None) is None:
            raise BadRequest(f"{where}: entityId: expected the device or asset it shows, as "
                             "{\"entityType\", \"id\"}")
        self._customer_ref(body, where)
        self._push("ENTITY_VIEW", body, name, where)

    def _customer(self, doc: Mapping[str, Any], where: str) -> None:
        body = self._base("CUSTOMER", doc, where)
        title = _name(body, "title", where)
        body.pop("customerId", None)
        self._push("CUSTOMER", body, title, where)

    def _user(self, doc: Mapping[str, Any], where: str) -> None:
        dropped = [k for k in SECRET_USER_FIELDS if k in doc]
        info = doc.get("additionalInfo")
        body = self._base("USER", {k: v for k, v in doc.items() if k not in SECRET_USER_FIELDS},
                          where)
        if isinstance(info, Mapping) and any(k in info for k in SECRET_USER_INFO_FIELDS):
            body["additionalInfo"] = {k: v for k, v in info.items()
                                      if k not in SECRET_USER_INFO_FIELDS}
            dropped += [f"additionalInfo.{k}" for k in SECRET_USER_INFO_FIELDS if k in info]
        if dropped:
            self.note(where, f"{', '.join(dropped)} not imported: credentials are never stored "
                             "(set the user's password on the edge)")
        email = _name(body, "email", where)
        if "@" not in email:
            raise BadRequest(f"{where}: email: {email!r} is not an e-mail address")
        authority = body.get("authority")
        if authority not in USER_AUTHORITIES:
            raise BadRequest(f"{where}: authority: expected one of {', '.join(USER_AUTHORITIES)}"
                             + ("" if authority is None else f", got {authority!r}"))
        if authority == "CUSTOMER_USER":
            customer = _typed_ref(body.get("customerId"), "CUSTOMER")
            if customer is None or not self._has(Ref("CUSTOMER", str(customer))):
                raise BadRequest(f"{where}: a CUSTOMER_USER needs its customer (customerId), "
                                 "and the cloud has " + (f"no customer {customer}" if customer
                                                         else "none named"))
        else:
            body["customerId"] = typed_id("CUSTOMER", NULL_ID)
        self._push("USER", body, email, where)

    def _widget_type(self, doc: Mapping[str, Any], where: str, *,
                     bundle_alias: str | None = None) -> str:
        body = self._base("WIDGET_TYPE", doc, where)
        name = _name(body, "name", where)
        if not isinstance(body.get("descriptor"), dict):
            raise BadRequest(f"{where}: descriptor: " + ("missing" if body.get("descriptor") is None
                                                         else "expected a JSON object"))
        body.pop("resources", None)
        fqn = body.get("fqn")
        if not isinstance(fqn, str) or not fqn.strip():
            alias = doc.get("alias")
            local = alias if isinstance(alias, str) and alias else _WORD.sub("_", name.lower())
            fqn = f"{bundle_alias}.{local}" if bundle_alias else _WORD.sub("_", name.lower())
            body.pop("alias", None)
            self.note(where, f"fqn {fqn!r} given (the file has none), as ThingsBoard does")
            body["fqn"] = fqn
        body.setdefault("deprecated", False)
        body.setdefault("scada", False)
        self._push("WIDGET_TYPE", body, name, where)
        return fqn

    def _widgets_bundle(self, doc: Mapping[str, Any], where: str) -> None:
        bundle_doc = doc.get("widgetsBundle", doc)
        if not isinstance(bundle_doc, Mapping):
            raise BadRequest(f"{where}: widgetsBundle: expected a JSON object")
        body = self._base("WIDGETS_BUNDLE", bundle_doc, f"{where}: widgetsBundle")
        title = _name(body, "title", f"{where}: widgetsBundle")
        body["name"] = title  # ThingsBoard's read-only name of a bundle is its title
        alias = body.get("alias")
        if not isinstance(alias, str) or not alias.strip():
            alias = _WORD.sub("_", title.lower())
            body["alias"] = alias
        types, fqns = doc.get("widgetTypes"), doc.get("widgetTypeFqns")
        made: list[str] = []
        if types is not None:
            if not isinstance(types, list):
                raise BadRequest(f"{where}: widgetTypes: expected a list")
            made = [self._widget_type(t, f"{where}: widgetTypes[{i}]", bundle_alias=alias)
                    if isinstance(t, Mapping) else _bad_item(f"{where}: widgetTypes[{i}]", t)
                    for i, t in enumerate(types)]
        if fqns is not None:
            if not isinstance(fqns, list) or not all(isinstance(f, str) and f for f in fqns):
                raise BadRequest(f"{where}: widgetTypeFqns: expected a list of fqns")
            made += [f for f in fqns if f not in made]
        self.bundle_fqns[uuid.UUID(body["id"]["id"])] = tuple(made)
        self._push("WIDGETS_BUNDLE", body, title, where)

    # -- shared -------------------------------------------------------------------------------

    def _base(self, kind: str, doc: Mapping[str, Any], where: str) -> dict[str, Any]:
        """A deep copy without what an export strips; the new (or kept) id and createdTime."""
        body = self._with_id(kind, doc, where)
        body.pop("tenantId", None)
        body.pop("version", None)
        if body.pop("externalId", None) is not None:
            self.note(where, "externalId not imported")
        return body

    def _with_id(self, kind: str, doc: Mapping[str, Any], where: str) -> dict[str, Any]:
        body = copy.deepcopy(dict(doc))
        kept = _typed_ref(body.get("id"), kind) if self._keep_ids else None
        if self._keep_ids and body.get("id") is not None and kept is None:
            raise BadRequest(f"{where}: id: expected a {kind} id as {{\"entityType\": "
                             f"\"{kind}\", \"id\": \"<uuid>\"}} (keeping ids)")
        entity_id = kept or self._fresh()
        body["id"] = typed_id(kind, entity_id)
        body["createdTime"] = _created(entity_id)
        return body

    def _fresh(self) -> uuid.UUID:
        return self._new_id()

    def _customer_ref(self, body: dict[str, Any], where: str) -> None:
        """An asset's or entity view's customer: kept when the cloud has it, else none
        (ThingsBoard's NULL_UUID customer; an export carries none)."""
        customer = _typed_ref(body.get("customerId"), "CUSTOMER")
        if customer is not None and not self._has(Ref("CUSTOMER", str(customer))):
            self.note(where, f"customerId {customer} cleared: the cloud has no such customer")
            customer = None
        body["customerId"] = typed_id("CUSTOMER", customer or NULL_ID)

    def _push(self, kind: str, body: dict[str, Any], name: str, where: str) -> None:
        self.items.append((ImportItem(kind, body, name), where))

    def note(self, where: str, text: str) -> None:
        self.notes.append(f"{where}: {text}")

    def _provided(self) -> set[Ref]:
        out: set[Ref] = set()
        for item, _ in self.items:
            if item.entity_type != "RULE_CHAIN_METADATA":
                out.update(entity_graph.provides(item.entity_type, item.id, item.body))
        return out

    def _has(self, ref: Ref) -> bool:
        return ref in self._provided() or self._lookup.has(ref)

    def _find(self, kind: str, name: str) -> uuid.UUID | None:
        for item, _ in self.items:
            if item.entity_type == kind and item.name == name:
                return item.id
        return self._lookup.find(kind, name)

    def finish(self, source: str) -> ImportPlan:
        provided = self._provided()
        seen: set[tuple[str, uuid.UUID]] = set()
        for item, where in self.items:
            key = (item.entity_type, item.id)
            if key in seen:
                raise BadRequest(f"{where}: {item.entity_type} {item.id} appears twice in "
                                 f"{source}")
            seen.add(key)
            missing = [r for r in entity_graph.references(item.entity_type, item.body)
                       if r not in provided and not self._lookup.has(r)]
            if missing:
                raise BadRequest(f"{where}: {item.entity_type} {item.name!r} needs "
                                 f"{', '.join(_describe(r) for r in missing)}, which neither the "
                                 f"cloud nor {source} has: import {'it' if len(missing) == 1 else 'them'} "
                                 "first")
        order = sorted(range(len(self.items)),
                       key=lambda i: (entity_graph.BY_TYPE[self.items[i][0].entity_type].sync_rank,
                                      i))
        return ImportPlan(tuple(self.items[i][0] for i in order), tuple(self.notes),
                          dict(self.bundle_fqns))


# -- small helpers ----------------------------------------------------------------------------


def _describe(ref: Ref) -> str:
    if ref.kind == "WIDGET_TYPE_FQN":
        return f"the widget type {ref.key!r} (typeFullFqn \"tenant.{ref.key}\")"
    return f"{ref.kind} {ref.key}"


def _name(body: Mapping[str, Any], key: str, where: str) -> str:
    value = body.get(key)
    if not text_fits(value, MAX_NAME_BYTES):
        raise BadRequest(f"{where}: {key}: " + ("missing" if value is None else
                         f"expected text of 1 to {MAX_NAME_BYTES} bytes of UTF-8"))
    return value


def _typed_ref(value: Any, kind: str | None) -> uuid.UUID | None:
    """The uuid of a typed id of ``kind`` (any kind when None); None when absent, malformed,
    of another kind or NULL_ID."""
    if not isinstance(value, Mapping) or not isinstance(value.get("id"), str):
        return None
    if kind is not None and value.get("entityType") != kind:
        return None
    if kind is None and not isinstance(value.get("entityType"), str):
        return None
    try:
        parsed = uuid.UUID(value["id"])
    except ValueError:
        return None
    return None if parsed == NULL_ID or parsed.int == 0 else parsed


def _created(entity_id: uuid.UUID) -> int:
    return ids.unix_ms(entity_id) if ids.is_time_based(entity_id) else 0


def _legacy_widgets(config: Mapping[str, Any]) -> int:
    """Give legacy widgets their typeFullFqn, as ThingsBoard's dashboard import does
    (dashboard-utils.service.ts validateAndUpdateWidgetTypeFqn); the number changed."""
    widgets = config.get("widgets")
    values: Iterable[Any] = widgets.values() if isinstance(widgets, Mapping) else (
        widgets if isinstance(widgets, list) else ())
    changed = 0
    for w in values:
        if not isinstance(w, dict):
            continue
        full = w.get("typeFullFqn")
        valid = isinstance(full, str) and full.split(".", 1)[0] in ("system", "tenant") \
            and "." in full
        if not valid and w.get("isSystemType") is not None and w.get("bundleAlias") \
                and w.get("typeAlias"):
            scope = "system" if w["isSystemType"] else "tenant"
            w["typeFullFqn"] = f"{scope}.{w['bundleAlias']}.{w['typeAlias']}"
            changed += 1
        for legacy in ("isSystemType", "bundleAlias", "typeAlias"):
            w.pop(legacy, None)
    return changed


def _bad_item(where: str, value: Any) -> NoReturn:
    raise BadRequest(f"{where}: expected a JSON object, got {_type_name(value)}")
