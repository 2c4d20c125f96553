"""Client-side RPC: a device's own RPC request, ``{"method": ..., "params": ...}``, published on
``v1/devices/me/rpc/request/{id}`` (or ``v2/r/req/{id}``) or posted to ``POST
/api/v1/{token}/rpc``. ThingsBoard hands it to its rule engine, whose rule chain may answer it,
and answers ``{"error": "timeout"}`` when nothing does in time; the edge's rule engine has no
node that answers one, so the edge answers at once:

- ``getSessionLimits`` over MQTT is answered as ThingsBoard's MQTT transport answers it itself
  (MqttTransportHandler.onGetSessionLimitsRpc): ``{"maxPayloadSize", "maxInflightMessages",
  "rateLimits": {"messages", "telemetryMessages", "telemetryDataPoints"}}``, plus
  ``"gatewayRateLimits"`` for a gateway, with the edge's own limits: the largest MQTT packet
  it reads (``mqtt.max_message_bytes``), the publishes a connection may have waiting for their
  commit (``mqtt.max_inflight_per_client``), and no rate limits (null, as ThingsBoard sends a
  tenant profile's limit that is not set). ThingsBoard's Python SDK asks for it on every
  connect and waits for the answer (its current releases connect with MQTT 5, which the edge
  does not serve; a client of MQTT 3.1.1 that does the same is answered).
- any other method, and every request over HTTP (ThingsBoard's HTTP transport does not answer
  ``getSessionLimits`` itself either), is answered ``{"error": NOT_SERVED}``: the shape of
  ThingsBoard's failed answer (JsonConverter.toJson(ToServerRpcResponseMsg)), at once rather
  than after ThingsBoard's timeout.
"""

from __future__ import annotations

from typing import Any

from edge_sync.errors import BadRequest

__all__ = ["NOT_SERVED", "SESSION_LIMITS", "method_of", "not_served", "session_limits"]

SESSION_LIMITS = "getSessionLimits"
"""The method ThingsBoard's MQTT transport answers itself (MqttTransportHandler.SESSION_LIMITS)."""
NOT_SERVED = "client-side RPC is not served by the edge"


def method_of(body: Any) -> str:
    """The method of a client-side RPC request body; BadRequest unless it is a JSON object
    with a ``method`` string (ThingsBoard's JsonConverter.convertToServerRpcRequest reads
    ``method`` as a string and ``params`` as any JSON, absent included)."""
    method = body.get("method") if isinstance(body, dict) else None
    if not isinstance(method, str):
        raise BadRequest('a client-side RPC request is a JSON object with a "method" string')
    return method


def not_served() -> dict[str, str]:
    """The answer to a client-side RPC request the edge does not serve."""
    return {"error": NOT_SERVED}


def session_limits(*, max_payload_size: int, max_inflight: int,
                   gateway: bool) -> dict[str, Any]:
    """The answer to ``getSessionLimits`` (SessionLimits / GatewaySessionLimits as Jackson
    writes them, null rate limits included)."""
    none = {"messages": None, "telemetryMessages": None, "telemetryDataPoints": None}
    out: dict[str, Any] = {"maxPayloadSize": max_payload_size,
                           "maxInflightMessages": max_inflight, "rateLimits": dict(none)}
    if gateway:
        out["gatewayRateLimits"] = dict(none)
    return out
