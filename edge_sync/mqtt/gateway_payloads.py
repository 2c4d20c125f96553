"""The wire format of ThingsBoard's MQTT gateway API: its topics, and the JSON a gateway
publishes (parsed into plain values here, every problem a BadRequest saying what and where)
and the JSON the edge publishes to it. Pure: no I/O, no state, time passed in.

Shapes as ThingsBoard's MQTT transport reads and writes them (AbstractGatewaySessionHandler,
JsonConverter, JsonMqttAdaptor; docs/mqtt-gateway.md): a device's data is keyed by its name;
telemetry and attribute values are checked as the device API checks them (api/payloads.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from edge_sync.api import payloads as device_api
from edge_sync.api.payloads import Entry, Values
from edge_sync.common.json_body import NumberTexts
from edge_sync.errors import BadRequest
from edge_sync.validators import MAX_NAME_BYTES, key_fits, text_fits

PREFIX = "v1/gateway/"
CONNECT = "v1/gateway/connect"
DISCONNECT = "v1/gateway/disconnect"
TELEMETRY = "v1/gateway/telemetry"
ATTRIBUTES = "v1/gateway/attributes"
"""Published by the gateway: its devices' client attributes; subscribed: their shared
attribute updates."""
ATTRIBUTES_REQUEST = "v1/gateway/attributes/request"
ATTRIBUTES_RESPONSE = "v1/gateway/attributes/response"
RPC = "v1/gateway/rpc"
"""Published by the gateway: a device's answer to an RPC request; subscribed: the requests."""
CLAIM = "v1/gateway/claim"
"""ThingsBoard's device claiming: not served by the edge (acknowledged and dropped)."""

DEFAULT_TYPE = "default"
"""The type (device profile) of a device a gateway names without one (ThingsBoard's
DEFAULT_DEVICE_TYPE)."""

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class DeviceData(Generic[T]):
    """One message's data of several devices, in message order; ``skipped``: devices whose
    value had a shape ThingsBoard skips (logged, not stored); ``nulls``: per device, the keys
    of its null values, skipped as ThingsBoard skips them."""

    devices: tuple[tuple[str, T], ...]
    skipped: tuple[str, ...] = ()
    nulls: tuple[tuple[str, tuple[str, ...]], ...] = ()


@dataclass(frozen=True, slots=True)
class AttributeRequest:
    """``keys`` None: every attribute of the scope (``"keys": []``)."""

    request_id: int
    device: str
    client: bool
    keys: tuple[str, ...] | None

    @property
    def multiple(self) -> bool:
        """ThingsBoard answers ``values`` when more than one key was asked, else ``value``."""
        return self.keys is not None and len(self.keys) > 1


@dataclass(frozen=True, slots=True)
class RpcReply:
    device: str
    request_id: int
    data: Any


# -- names ---------------------------------------------------------------------------------------


def device_name(value: Any, where: str) -> str:
    """A device name as the edge stores one: 1 to 255 bytes of UTF-8, not blank."""
    if not isinstance(value, str):
        raise BadRequest(f"{where}: the device name must be a string")
    if not text_fits(value, MAX_NAME_BYTES):
        raise BadRequest(f"{where}: device name {value[:64]!r} is not 1 to {MAX_NAME_BYTES} "
                         "bytes of UTF-8 (or is blank)")
    return value


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"{what}: expected a JSON object")
    return body


def _named(body: Any, what: str) -> tuple[dict[str, Any], str]:
    obj = _object(body, what)
    if "device" not in obj:
        raise BadRequest(f"{what}: no \"device\"")
    return obj, device_name(obj["device"], what)


# -- what the gateway publishes ------------------------------------------------------------------


def parse_connect(body: Any) -> tuple[str, str]:
    """``{"device": name, "type": profile}`` -> (name, type); a type left out, null or empty
    is "default"."""
    obj, name = _named(body, "connect")
    dtype = obj.get("type")
    if dtype is None or dtype == "":
        return name, DEFAULT_TYPE
    if not text_fits(dtype, MAX_NAME_BYTES):
        raise BadRequest(f"connect: device type must be 1 to {MAX_NAME_BYTES} bytes of UTF-8")
    return name, dtype


def parse_disconnect(body: Any) -> str:
    return _named(body, "disconnect")[1]


def _without_metadata(item: Any, where: str) -> Any:
    """A telemetry entry without the gateway's ``metadata`` (connector, receivedTs,
    publishedTs: ThingsBoard's gateway latency metrics, which the edge does not keep)."""
    if not isinstance(item, dict) or "metadata" not in item:
        return item
    if not isinstance(item["metadata"], dict):
        raise BadRequest(f"{where}: \"metadata\" must be a JSON object")
    return {k: v for k, v in item.items() if k != "metadata"}


def parse_telemetry(body: Any, *, now_ms: int,
                    type_cast: bool = True) -> DeviceData[tuple[Entry, ...]]:
    """``{"Dev A": [entry, ...], "Dev B": entry}`` where an entry is ``{"k": v}`` (at
    ``now_ms``) or ``{"ts": ms, "values": {...}}`` -> each device's entries in message order,
    values read as the device API reads them (api/payloads.py: ``type_cast``, nulls skipped).
    An empty list, or entries without a pair: the device, no data. A value that is neither a
    list nor an object is skipped (ThingsBoard skips all but lists); a message with nothing
    else is refused."""
    marked = type(body) is NumberTexts
    obj = _object(body.body if marked else body, "gateway telemetry")
    devices: list[tuple[str, tuple[Entry, ...]]] = []
    skipped: list[str] = []
    nulls: list[tuple[str, tuple[str, ...]]] = []
    for name, value in obj.items():
        if not isinstance(value, list | dict):
            skipped.append(name)
            continue
        where = f"telemetry of device {name[:64]!r}"
        device_name(name, where)
        if value == []:
            devices.append((name, ()))
            continue
        if isinstance(value, list):
            items: Any = [_without_metadata(v, f"{where}[{i}]") for i, v in enumerate(value)]
        else:
            items = _without_metadata(value, where)
        found: list[str] = []
        try:
            entries = device_api.parse_telemetry(NumberTexts(items) if marked else items,
                                                 now_ms=now_ms, type_cast=type_cast,
                                                 nulls=found)
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc}") from exc
        devices.append((name, entries))
        if found:
            nulls.append((name, tuple(found)))
    if not devices:
        raise BadRequest("gateway telemetry: no device with a list or an object of data")
    return DeviceData(tuple(devices), tuple(skipped), tuple(nulls))


def parse_attributes(body: Any, *, type_cast: bool = True) -> DeviceData[Values]:
    """``{"Dev A": {"k": v}, ...}`` -> each device's client attributes, read as the device API
    reads them. An empty object (or one of nulls): the device, no data. A value that is not
    an object is skipped, as ThingsBoard does; a message with nothing else is refused."""
    marked = type(body) is NumberTexts
    obj = _object(body.body if marked else body, "gateway attributes")
    devices: list[tuple[str, Values]] = []
    skipped: list[str] = []
    nulls: list[tuple[str, tuple[str, ...]]] = []
    for name, value in obj.items():
        if not isinstance(value, dict):
            skipped.append(name)
            continue
        where = f"attributes of device {name[:64]!r}"
        device_name(name, where)
        found: list[str] = []
        try:
            values = device_api.parse_attributes(NumberTexts(value) if marked else value,
                                                 type_cast=type_cast, nulls=found)
        except BadRequest as exc:
            raise BadRequest(f"{where}: {exc}") from exc
        devices.append((name, values))
        if found:
            nulls.append((name, tuple(found)))
    if not devices:
        raise BadRequest("gateway attributes: no device with an object of attributes")
    return DeviceData(tuple(devices), tuple(skipped), tuple(nulls))


def parse_attribute_request(body: Any) -> AttributeRequest:
    """``{"id": n, "device": name, "client": bool, "key": k}`` or ``..., "keys": [k, ...]}``
    (``"key"`` first, as ThingsBoard reads it; ``"keys": []``: all of the scope)."""
    obj, name = _named(body, "attribute request")
    request_id = obj.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int) \
            or not INT32_MIN <= request_id <= INT32_MAX:
        raise BadRequest("attribute request: \"id\" must be a 32-bit integer")
    client = obj.get("client")
    if not isinstance(client, bool):
        raise BadRequest("attribute request: \"client\" must be true (client attributes) or "
                         "false (shared attributes)")
    if "key" in obj:
        raw: Any = [obj["key"]]
    elif "keys" in obj:
        raw = obj["keys"]
        if not isinstance(raw, list):
            raise BadRequest("attribute request: \"keys\" must be a list of keys")
    else:
        raise BadRequest("attribute request: no \"key\" nor \"keys\"")
    for key in raw:
        if not key_fits(key):
            raise BadRequest(f"attribute request: key {repr(key)[:64]} is not 1 to 255 bytes "
                             "of UTF-8")
    keys = tuple(dict.fromkeys(raw)) if raw else None
    return AttributeRequest(request_id, name, client, keys)


def parse_rpc_reply(body: Any) -> RpcReply:
    """``{"device": name, "id": n, "data": answer}``: a device's answer to RPC request n (any
    JSON value the store can hold, as the device API takes an answer)."""
    obj, name = _named(body, "RPC reply")
    request_id = obj.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, int) \
            or not 0 <= request_id <= INT32_MAX:
        raise BadRequest("RPC reply: \"id\" must be an integer 0..2147483647")
    if "data" not in obj:
        raise BadRequest("RPC reply: no \"data\"")
    # checked here, before the device is connected (or created): nothing of a refused answer
    # is taken
    device_api.check_json_value(f"RPC reply of device {name[:64]!r}", obj["data"])
    return RpcReply(name, request_id, obj["data"])


# -- what the edge publishes to the gateway ------------------------------------------------------


def attribute_response(request: AttributeRequest, found: dict[str, Any]) -> dict[str, Any]:
    """ThingsBoard's answer: ``{"id", "device", "value"}`` when one value was found and no
    more than one key was asked (``"key"``, a list of one key, or ``"keys": []`` for all of the
    scope: ThingsBoard counts a request as multiple only when it names more than one key),
    ``{"id", "device", "values": {...}}`` when more values were found or more keys asked,
    neither when nothing was found."""
    out: dict[str, Any] = {"id": request.request_id, "device": request.device}
    if len(found) == 1 and not request.multiple:
        out["value"] = next(iter(found.values()))
    elif found:
        out["values"] = found
    return out


def rpc_request(device: str, request: dict[str, Any]) -> dict[str, Any]:
    """A server-side RPC request to ``device`` (``request``: its id, method and params)."""
    return {"device": device, "data": request}


def attribute_update(device: str, update: dict[str, Any]) -> dict[str, Any]:
    """A shared attribute update of ``device``: the changed keys, deletions as ``deleted``."""
    return {"device": device, "data": update}
