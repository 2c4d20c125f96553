"""The reference cloud's admin HTTP API (default 127.0.0.1:8091), used by the `edge-cloud` CLI
while the server runs, so that downlinks it queues are sent at once.

  GET  /healthz, /readyz                the health probes (no token needed)
  GET  /api/status                      server, store and every edge (connected or not)
  GET  /api/edges                       registered edges
  POST /api/edges        {name, routing_key?, secret?, type?}          -> 201 (200: existed)
  GET  /api/devices?edge=RK             devices assigned to an edge
  POST /api/devices      {edge, name, type?, label?, token?}           -> 201
  POST /api/attributes   {device, edge?, values: {k: v}} or {device, edge?, key, value}
  GET  /api/events?edge=RK&after=N&limit=N   what the cloud applied from the edge
  GET  /api/edges/{edge}/downlinks/parked  the edge's parked downlinks (routing key or edge id)
  POST /api/edges/{edge}/sync           a full sync of the connected edge now (body: none or {})
                                        -> 202; 409 when the edge is not connected
  POST /api/rpc/twoway/{device}, /api/rpc/oneway/{device}   server-side RPC in ThingsBoard's
                                        shape; GET /api/rpc/{id} (and /api/rpc/persistent/{id})
                                        its status and answer (cloud/rpc_http.py)
  GET  /metrics                         Prometheus text: the cloud's counters
Errors: {"status", "error", "message"} with 400/401/403/404/409/415/500/507.
Every request passes the admin guard first (edge_sync.common.admin_guard): no cross-site writes,
a bearer token when ``admin.token`` is set, no caching (answers carry edge secrets and tokens).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from loguru import logger

from edge_sync.cloud.registry import StreamRegistry
from edge_sync.cloud.rpc_http import RpcRoutes
from edge_sync.cloud.rpc_service import RpcService
from edge_sync.cloud.service import CloudService
from edge_sync.common.admin_guard import AdminGuard
from edge_sync.common.health import healthz, readyz_response
from edge_sync.common.http_errors import error_response, status_of
from edge_sync.common.json_body import parse_json
from edge_sync.errors import BadRequest, Conflict
from edge_sync.metrics import Metrics

_log = logger.bind(component="cloud-admin")

MAX_EVENTS = 100_000
DEFAULT_EVENTS = 1000


def int_param(query: Any, name: str, default: int, low: int, high: int) -> int:
    raw = query.get(name, default)
    try:
        value = int(raw)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"{name}: {raw!r} is not an integer") from exc
    if not low <= value <= high:
        raise BadRequest(f"{name}: {value} is out of range {low}..{high}")
    return value


def _fields(body: Any, allowed: set[str], what: str) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object with {what}")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    return body


class CloudAdminApi:
    def __init__(self, service: CloudService, registry: StreamRegistry,
                 status_extra: Callable[[], dict[str, Any]] | None = None, *,
                 token: str = "", readiness: Callable[[], dict[str, bool]] | None = None,
                 metrics: Metrics | None = None, rpc: RpcService | None = None) -> None:
        self._guard = AdminGuard("cloud-admin", token=token)
        self._rpc = RpcRoutes(rpc if rpc is not None else RpcService(service))
        self._readiness = readiness
        self._service = service
        self._registry = registry
        self._status_extra = status_extra
        self._metrics = metrics if metrics is not None else Metrics()

    def make_app(self) -> web.Application:
        """Runs on the host's loop thread."""
        app = self._guard.install(web.Application(client_max_size=1024 * 1024))
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/status", self._handler(self._status))
        app.router.add_get("/api/edges", self._handler(self._edges))
        app.router.add_post("/api/edges", self._handler(self._create_edge))
        app.router.add_get("/api/devices", self._handler(self._devices))
        app.router.add_post("/api/devices", self._handler(self._create_device))
        app.router.add_post("/api/attributes", self._async_handler(self._set_attributes))
        app.router.add_get("/api/events", self._handler(self._events))
        app.router.add_get("/api/edges/{edge}/downlinks/parked", self._handler(self._parked))
        app.router.add_post("/api/edges/{edge}/sync",
                            self._handler(self._sync, body_optional=True))
        self._rpc.install(app)
        app.router.add_get("/metrics", self._prometheus)
        return app

    async def _prometheus(self, request: web.Request) -> web.StreamResponse:
        return web.Response(text=self._metrics.render_prometheus(), content_type="text/plain")

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        return readyz_response(self._readiness() if self._readiness else {})

    def _handler(
        self, fn: Callable[[web.Request, Any], tuple[int, Any]], *, body_optional: bool = False
    ) -> Callable[[web.Request], Any]:
        """Read the body on the loop, run fn (blocking: LMDB, hashing) on a worker thread. A POST
        needs a JSON body unless ``body_optional`` (then an empty one is None)."""

        async def on_thread(request: web.Request, body: Any) -> tuple[int, Any]:
            return await asyncio.to_thread(fn, request, body)

        return self._async_handler(on_thread, body_optional=body_optional)

    def _async_handler(
        self, fn: Callable[[web.Request, Any], Awaitable[tuple[int, Any]]], *,
        body_optional: bool = False,
    ) -> Callable[[web.Request], Any]:
        """As _handler, for a coroutine function that does its blocking work on worker threads
        itself."""

        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                body = None
                if request.method == "POST":
                    raw = await request.read()
                    body = parse_json(raw) if raw or not body_optional else None
                status, out = await fn(request, body)
            except web.HTTPRequestEntityTooLarge:
                return error_response(413, "body too large")
            except Exception as exc:
                status = status_of(exc)
                log = _log.bind(path=request.path, status=status)
                if status >= 500:
                    log.opt(exception=exc).error("admin request failed: {}", exc)
                else:
                    log.info("admin request refused: {}", exc)
                return error_response(status, str(exc) or type(exc).__name__)
            return web.json_response(out, status=status)

        return handle

    # -- views (worker thread) -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        connected = self._registry.snapshot()
        edges = []
        for row in self._service.edges():
            stream = next((v for k, v in connected.items() if str(k) == row["id"]), None)
            row["connected"] = stream is not None
            row["stream"] = stream
            edges.append(row)
        out: dict[str, Any] = {"server": "running",
                               "data_dir": str(self._service.store.path.resolve()),
                               "edges": edges}
        if self._status_extra is not None:
            out.update(self._status_extra())
        return out

    def _status(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self.status()

    def _edges(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self.status()["edges"]

    def _create_edge(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"name", "routing_key", "secret", "type"}, "name, routing_key, secret")
        edge, secret, created = self._service.create_edge(
            b.get("name"), routing_key=b.get("routing_key"), secret=b.get("secret"),
            type_=b.get("type") or "default")
        return (201 if created else 200), {**edge.as_json(), "secret": secret, "created": created}

    def _devices(self, request: web.Request, body: Any) -> tuple[int, Any]:
        edge = self._service.edge(request.query.get("edge", ""))
        return 200, [d.as_json() for d in self._service.store.devices_of_edge(edge.edge_id)]

    def _create_device(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"edge", "name", "type", "label", "token"}, "edge, name, type, token")
        device, numbers = self._service.create_device(
            b.get("edge"), b.get("name"), type_=b.get("type"), label=b.get("label"),
            token=b.get("token"))
        return 201, {**device.as_json(with_token=True), "downlinks": numbers}

    async def _set_attributes(self, request: web.Request, body: Any) -> tuple[int, Any]:
        """Checked and looked up on a worker thread; the write committed with the others that
        arrive meanwhile (group commit: no thread held while the disk syncs); answered once
        committed."""
        b = _fields(body, {"device", "edge", "values", "key", "value"}, "device, edge, values")
        values = b.get("values")
        if "key" in b:
            if values is not None:
                raise BadRequest("give either values or key/value, not both")
            if "value" not in b:
                raise BadRequest("key given without value")
            values = {b["key"]: b["value"]}
        prepared = await asyncio.to_thread(self._service.prepare_attributes, b.get("device"),
                                           values, edge_ref=b.get("edge"))
        number = await asyncio.wrap_future(self._service.store.submit_shared_attributes(
            prepared.device, prepared.values, prepared.ts, prepared.downlink))
        self._service.attributes_set(prepared, number)
        device = prepared.device
        return 200, {"device": str(device.id), "name": device.name, "edge_id": str(device.edge_id),
                     "values": values, "downlink": number}

    def _parked(self, request: web.Request, body: Any) -> tuple[int, Any]:
        limit = int_param(request.query, "limit", 0, 0, MAX_EVENTS)
        parked = self._service.parked_downlinks(request.match_info["edge"], limit=limit)
        return 200, [p.as_json() for p in parked]

    def _sync(self, request: web.Request, body: Any) -> tuple[int, Any]:
        """A full sync of the edge on its current stream, as ThingsBoard's "Sync edge" does:
        what a sync sends, sent anew (content parked during an earlier sync among it)."""
        if body is not None:
            _fields(body, set(), "no fields")
        edge = self._service.edge(request.match_info["edge"])
        if not self._registry.request_sync(edge.edge_id, "operator"):
            raise Conflict(f"edge {edge.routing_key!r} is not connected: a sync runs on the "
                           "edge's stream (it asks for one itself when it connects)")
        _log.bind(routing_key=edge.routing_key, edge_id=str(edge.edge_id)).info(
            "full sync of edge {} requested by the operator", edge.routing_key)
        return 202, {"edge_id": str(edge.edge_id), "routing_key": edge.routing_key,
                     "sync": "requested"}

    def _events(self, request: web.Request, body: Any) -> tuple[int, Any]:
        q = request.query
        after = int_param(q, "after", 0, 0, 2**63 - 1)
        limit = int_param(q, "limit", DEFAULT_EVENTS, 1, MAX_EVENTS)
        events = self._service.events(q.get("edge", ""), after=after, limit=limit)
        return 200, [e.as_json() for e in events]
