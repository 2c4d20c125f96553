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
  GET  /metrics                         Prometheus text: the cloud's metrics (docs/metrics.md)

The entity graph (cloud/graph_store.py: every kind but devices; EntityAdmin in
cloud/entity_admin.py). ``{id}`` is an entity id, or a name that only one entity has (``?type=T``
narrows it):
  POST   /api/entities       {type, name?, entity?}   -> 201 the entity (ThingsBoard JSON in
                                                          "entity"); 409 when the name is taken
  GET    /api/entities?type=T&name=N&edge=RK          entities (rows without their JSON)
  GET    /api/entities/{id}                           the entity (a rule chain's metadata too)
  PUT    /api/entities/{id}  the entity's JSON (replaces it; a rule chain also takes a rule
                             chain export, {"ruleChain"?, "metadata"?})   -> 200
  DELETE /api/entities/{id}                           -> 200 {"deleted": [...]} (what cascaded)
  POST   /api/entities/import {file, type?, assign?, keep_ids?, source?}   a ThingsBoard export
                             file (cloud/tb_import.py), all or nothing -> 201 {entities, notes}
  POST   /api/edges/{edge}/entities/{id}   assign to the edge (ThingsBoard: POST
                             /api/edge/{edgeId}/{asset|dashboard|ruleChain|entityView|device}/{id},
                             also served here) -> 200 {"changed": bool}
  DELETE /api/edges/{edge}/entities/{id}   unassign (ThingsBoard: DELETE on the same paths)
  POST   /api/relations      EntityRelation JSON (ThingsBoard's POST /api/v2/relation, also
                             served with /api/relation); from/to may be an id or name -> 201
  DELETE /api/relations?fromId=&fromType=&toId=&toType=&relationType=&relationTypeGroup=
                             ThingsBoard's query (also /api/v2/relation, /api/relation)
                             -> 200; 404 when there is no such relation
  GET    /api/relations?id=ID                         relations from and to the entity
Errors: {"status", "error", "message"} with 400/401/403/404/409/413/415/500/507.
Every request passes the admin guard first (edge_sync.common.admin_guard): no cross-site writes,
a bearer token when ``admin.token`` is set, no caching (answers carry edge secrets and tokens).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from loguru import logger

from edge_sync.cloud.entity_admin import EntityAdmin as EntityAdmin  # also imported from here
from edge_sync.cloud.registry import StreamRegistry
from edge_sync.cloud.rpc_http import RpcRoutes
from edge_sync.cloud.rpc_service import RpcService
from edge_sync.cloud.service import CloudService
from edge_sync.common.admin_guard import AdminGuard
from edge_sync.common.health import healthz, readyz_response
from edge_sync.common.http_errors import error_response, status_of
from edge_sync.common.json_body import parse_json
from edge_sync.common.limits import DEFAULT_MAX_MESSAGE_BYTES
from edge_sync.errors import BadRequest, Conflict
from edge_sync.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_sync.metrics import Metrics

_log = logger.bind(component="cloud-admin")

MAX_EVENTS = 100_000
DEFAULT_EVENTS = 1000
MAX_BODY_BYTES = 2 * DEFAULT_MAX_MESSAGE_BYTES
"""The largest request body: an entity may be as large as one message to an edge (4 MiB by
default), an import file may hold several."""

# ThingsBoard's edge assignment paths (EdgeController & co: POST/DELETE
# /api/edge/{edgeId}/{kind}/{entityId}), by the kind segment.
TB_ASSIGN_KINDS: Mapping[str, str] = {"device": "DEVICE", "asset": "ASSET",
                                      "dashboard": "DASHBOARD", "ruleChain": "RULE_CHAIN",
                                      "entityView": "ENTITY_VIEW"}


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
        self._metrics = metrics if metrics is not None else Metrics("edge_cloud")
        self._entities = EntityAdmin(service)

    def make_app(self) -> web.Application:
        """Runs on the host's loop thread."""
        app = self._guard.install(web.Application(client_max_size=MAX_BODY_BYTES))
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
        self._install_entities(app)
        app.router.add_get("/metrics", self._prometheus)
        return app

    def _install_entities(self, app: web.Application) -> None:
        """The entity graph's routes (EntityAdmin), with ThingsBoard's paths where they map."""
        h = self._handler
        app.router.add_post("/api/entities/import", h(self._import))
        app.router.add_post("/api/entities", h(self._create_entity))
        app.router.add_get("/api/entities", h(self._list_entities))
        app.router.add_get("/api/entities/{id}", h(self._show_entity))
        app.router.add_put("/api/entities/{id}", h(self._update_entity))
        app.router.add_delete("/api/entities/{id}", h(self._delete_entity))
        app.router.add_post("/api/edges/{edge}/entities/{id}", h(self._assign, body_optional=True))
        app.router.add_delete("/api/edges/{edge}/entities/{id}", h(self._unassign))
        kinds = "{kind:" + "|".join(TB_ASSIGN_KINDS) + "}"
        app.router.add_post(f"/api/edge/{{edge}}/{kinds}/{{id}}",
                            h(self._assign, body_optional=True))
        app.router.add_delete(f"/api/edge/{{edge}}/{kinds}/{{id}}", h(self._unassign))
        for path in ("/api/relations", "/api/relation", "/api/v2/relation"):
            app.router.add_post(path, h(self._add_relation))
            app.router.add_delete(path, h(self._delete_relation))
        app.router.add_get("/api/relations", h(self._relations))

    async def _prometheus(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._metrics.exposition(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

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
                if request.method in ("POST", "PUT"):
                    raw = await request.read()
                    body = parse_json(raw) if raw or not body_optional else None
                status, out = await fn(request, body)
            except Exception as exc:
                status = status_of(exc)
                log = _log.bind(path=request.path, code=str(status))
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

    # -- the entity graph (worker thread) --------------------------------------------------------

    def _create_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"type", "name", "entity"}, "type, name, entity")
        return 201, self._entities.create(b.get("type"), b.get("name"), b.get("entity"))

    def _list_entities(self, request: web.Request, body: Any) -> tuple[int, Any]:
        q = request.query
        unknown = set(q) - {"type", "name", "edge"}
        if unknown:
            raise BadRequest(f"unknown parameters: {', '.join(sorted(unknown))}")
        return 200, self._entities.entities(entity_type=q.get("type"), name=q.get("name"),
                                        edge=q.get("edge"))

    def _show_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.show(request.match_info["id"], request.query.get("type"))

    def _update_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.update(request.match_info["id"], body,
                                          request.query.get("type"))

    def _delete_entity(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.delete(request.match_info["id"], request.query.get("type"))

    def _import(self, request: web.Request, body: Any) -> tuple[int, Any]:
        b = _fields(body, {"file", "type", "assign", "keep_ids", "source"},
                    "file (the export's JSON), type, assign, keep_ids, source")
        if "file" not in b:
            raise BadRequest("file: missing (the ThingsBoard export's JSON)")
        return 201, self._entities.import_file(b["file"], entity_type=b.get("type"),
                                               assign=b.get("assign"),
                                               keep_ids=b.get("keep_ids", False),
                                               source=b.get("source"))

    def _assignment(self, request: web.Request, body: Any, on: bool) -> tuple[int, Any]:
        if body is not None and body != {}:
            raise BadRequest("expected no body (or {})")
        info = request.match_info
        kind = TB_ASSIGN_KINDS.get(info.get("kind", ""), request.query.get("type"))
        return 200, self._entities.assign(info["edge"], info["id"], kind, on=on)

    def _assign(self, request: web.Request, body: Any) -> tuple[int, Any]:
        """Assign to an edge (ThingsBoard's POST /api/edge/{edgeId}/{kind}/{id}, which also
        answers here)."""
        return self._assignment(request, body, True)

    def _unassign(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return self._assignment(request, body, False)

    def _add_relation(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 201, self._entities.add_relation(body)

    def _delete_relation(self, request: web.Request, body: Any) -> tuple[int, Any]:
        return 200, self._entities.delete_relation(dict(request.query))

    def _relations(self, request: web.Request, body: Any) -> tuple[int, Any]:
        q = request.query
        unknown = set(q) - {"id"}
        if unknown:
            raise BadRequest(f"unknown parameters: {', '.join(sorted(unknown))} (give id)")
        return 200, self._entities.relations(q.get("id"))
