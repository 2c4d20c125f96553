"""The admin HTTP API (default 127.0.0.1:8090): status, cloud events, device provisioning,
alarms, server-side RPC requests (``GET /api/rpc?device=&status=``), Prometheus metrics, the
Cloud Events page and the health probes. Read views use LMDB read transactions only. Every
request passes the admin guard first (edge_sync.common.admin_guard): no cross-site writes, a
bearer token when ``admin.token`` is set, no caching.

The entity graph (api/entity_service.py): ``GET /api/entities?type=&name=``,
``GET /api/entities/{id}`` (its JSON, relations both ways, attributes by scope, latest values);
changes made on the edge, each answered once its events are on disk with their seqs:
``POST /api/assets``, ``PUT|DELETE /api/assets/{id}``, ``DELETE /api/devices/{id}``,
``POST /api/relations`` (EntityRelation JSON), ``DELETE /api/relations?from=&to=&type=`` (one)
or ``?entity=`` (all of an entity), ``DELETE /api/entities/{id}/attributes/{scope}`` and
``DELETE /api/entities/{id}/timeseries`` (``{"keys": [...]}``),
``POST /api/rule-chains/{id}/metadata-request``; ``POST /api/sync`` (``{"full": true}``) asks
the link for a sync. 400 malformed, 404 unknown entity (named), 409 a name taken.

The rule engine: ``GET /api/rules`` (the chain in force, its source, version, per-node counts,
each window node's open windows and held messages, windows of nodes not in the chain, messages
lost with dropped windows, the scripts blocked on any shard, the last refusal; also under
``rules`` in ``GET /api/status``) and
``GET /api/devices/{id}/timeseries`` (the points a chain saved on the edge only)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from itertools import islice
from typing import Any

from aiohttp import web
from loguru import logger

from edge_sync.actors.messages import ReplayDead
from edge_sync.api import events_page
from edge_sync.api.device_service import DeviceService
from edge_sync.api.entity_service import (
    EntityService,
    apply_log_entries,
    entity_details,
    list_entities,
    parse_end,
    parse_type,
    parse_uuid,
)
from edge_sync.api.events_query import query_int
from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.common.admin_guard import AdminGuard
from edge_sync.common.health import healthz, readyz_response
from edge_sync.common.http_errors import error_response, status_of
from edge_sync.common.json_body import parse_json
from edge_sync.config import HealthConfig
from edge_sync.devices.rpc import RpcRequest, RpcStatus
from edge_sync.errors import BadRequest, NotFound
from edge_sync.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from edge_sync.metrics import Metrics
from edge_sync.status import collect_status
from edge_sync.storage.dead_letters import ReplayResult, Selection
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.graph_store import GraphStore
from edge_sync.storage.rpc_store import RpcStore
from edge_sync.storage.rule_store import RuleStore

_log = logger.bind(component="admin-http")

MAX_LIMIT = 10_000


def list_rpcs(store: LmdbStore, query: Any) -> list[RpcRequest]:
    """Server-side RPC requests, per device in arrival order, filtered by ``device`` and
    ``status`` (QUEUED, DELIVERED, SUCCESSFUL, TIMEOUT, EXPIRED, FAILED); BadRequest."""
    device = parse_uuid(query["device"], "device") if query.get("device") else None
    status = None
    if query.get("status"):
        raw = str(query["status"]).upper()
        try:
            status = RpcStatus(raw)
        except ValueError as exc:
            raise BadRequest(f"status: {raw[:32]!r} is not one of "
                             f"{', '.join(s.value for s in RpcStatus)}") from exc
    limit = query_int(query.get("limit", 1000), "limit", 1, MAX_LIMIT)
    with store.read() as txn:
        found = RpcStore(store).scan(txn, device)
        return list(islice((r for r in found if status is None or r.status is status), limit))


def _path_id(request: web.Request) -> uuid.UUID:
    return parse_uuid(request.match_info["id"], "id")


async def _json_object(request: web.Request, allowed: set[str]) -> dict[str, Any]:
    body = parse_json(await request.read())
    if not isinstance(body, dict):
        raise BadRequest(f"expected a JSON object with {', '.join(sorted(allowed))}")
    unknown = set(body) - allowed
    if unknown:
        raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
    return body


class AdminHttpApi:
    def __init__(
        self,
        store: LmdbStore,
        service: DeviceService,
        metrics: Metrics,
        *,
        link_status: Callable[[], dict[str, Any]] | None = None,
        request_timeout_s: float = 10.0,
        clock: Clock = SYSTEM_CLOCK,
        crash: Callable[[str], bool] | None = None,
        token: str = "",
        readiness: Callable[[], dict[str, bool]] | None = None,
        entities: EntityService | None = None,
        request_sync: Callable[[bool, str], None] | None = None,
        rules_status: Callable[[], dict[str, Any]] | None = None,
        tell_queue: Callable[[ReplayDead], None] | None = None,
        health: HealthConfig | None = None,
        clock_skew_warn_s: float = 60.0,
    ) -> None:
        self._tell_queue = tell_queue  # the QueueActor: POST /api/dead-letters/replay
        self._health = health
        self._skew_warn_s = clock_skew_warn_s
        self._store = store
        self._rules_status = rules_status
        self._service = service
        self._metrics = metrics
        self._link_status = link_status
        self._timeout = request_timeout_s
        self._clock = clock
        self._crash = crash
        self._guard = AdminGuard("admin-http", token=token,
                                 public_paths=events_page.PUBLIC_PATHS)
        self._readiness = readiness
        self._entities = entities or EntityService(service.router, clock=service.clock)
        # the ConnectionActor's RequestSync(full, reason); None: no cloud link configured
        self._request_sync = request_sync

    def make_app(self) -> web.Application:
        """Runs on the host's loop thread."""
        app = self._guard.install(web.Application(client_max_size=64 * 1024))
        app.router.add_get("/healthz", healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/status", self._status)
        app.router.add_get("/api/cloud-events", self._events)
        app.router.add_get("/api/rpc", self._rpcs)
        app.router.add_post("/api/devices", self._create_device)
        app.router.add_post("/api/alarms", self._alarm)
        app.router.add_delete("/api/devices/{id}", self._delete_device)
        app.router.add_get("/api/entities", self._list_entities)
        app.router.add_get("/api/apply-log", self._apply_log)
        app.router.add_get("/api/entities/{id}", self._entity)
        app.router.add_delete("/api/entities/{id}/attributes/{scope}", self._delete_attributes)
        app.router.add_delete("/api/entities/{id}/timeseries", self._delete_timeseries)
        app.router.add_post("/api/assets", self._create_asset)
        app.router.add_put("/api/assets/{id}", self._update_asset)
        app.router.add_delete("/api/assets/{id}", self._delete_asset)
        app.router.add_post("/api/relations", self._add_relation)
        app.router.add_delete("/api/relations", self._delete_relations)
        app.router.add_post("/api/rule-chains/{id}/metadata-request", self._request_metadata)
        app.router.add_post("/api/sync", self._sync)
        app.router.add_post("/api/dead-letters/replay", self._replay_dead)
        app.router.add_get("/api/rules", self._rules)
        app.router.add_get("/api/devices/{id}/timeseries", self._timeseries)
        app.router.add_get("/metrics", self._prometheus)
        app.router.add_get("/", self._page)
        app.router.add_get("/static/{name}", self._static)
        if self._crash is not None:
            app.router.add_post("/api/debug/crash", self._inject_crash)
        return app

    def status(self) -> dict[str, Any]:
        link = self._link_status() if self._link_status else {
            "state": "DISCONNECTED", "note": "cloud link not configured"}
        rules = self._rules_status() if self._rules_status else None
        out = collect_status(self._store, now_ms=self._clock.now_ms(), link=link,
                             health=self._health, clock_skew_warn_s=self._skew_warn_s,
                             rules=rules)
        out["rules"] = rules
        out["metrics"] = self._metrics.snapshot()
        return out

    async def _rules(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/rules``: the chain in force (name, id, source, version, digest), its
        per-node counts, the scripts blocked now (``blocked_scripts``), and the last
        refusal."""
        return web.json_response(self._rules_status() if self._rules_status else None)

    async def _timeseries(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/devices/{id}/timeseries?keys=a,b&startTs=&endTs=&limit=``: the points a
        rule chain saved on the edge, ThingsBoard's shape ``{key: [{ts, value}]}`` (newest
        last; values keep their JSON type)."""
        try:
            device_id = _path_id(request)
            q = request.query
            keys = [k for k in q.get("keys", "").split(",") if k] or None
            start = query_int(q.get("startTs", "0"), "startTs", 0)
            end = query_int(q.get("endTs", str(2**62)), "endTs", 0)
            limit = query_int(q.get("limit", "1000"), "limit", 1, 100_000)
        except BadRequest as exc:
            return error_response(400, str(exc))
        with self._store.read() as txn:
            if not EntityStore(self._store).has_device(txn, device_id):
                return error_response(404, f"device {device_id} not found")
            series = RuleStore(self._store).local_series(txn, device_id, keys, start, end, limit)
        return web.json_response({k: [{"ts": ts, "value": v} for ts, v in points]
                                  for k, points in series.items()})

    async def _readyz(self, request: web.Request) -> web.StreamResponse:
        return readyz_response(self._readiness() if self._readiness else {})

    async def _status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.status())

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """The events query (api/events_query.py): filters, seq cursors both ways."""
        return await events_page.events_response(self._store, request.query, request.path)

    async def _rpcs(self, request: web.Request) -> web.StreamResponse:
        try:
            requests = list_rpcs(self._store, request.query)
        except BadRequest as exc:
            return error_response(400, str(exc))
        return web.json_response([r.as_json() for r in requests])

    async def _create_device(self, request: web.Request) -> web.StreamResponse:
        try:
            body = parse_json(await request.read())
            if not isinstance(body, dict):
                raise BadRequest("expected a JSON object with name, type, token, label, gateway")
            unknown = set(body) - {"name", "type", "token", "label", "gateway"}
            if unknown:
                raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
            gateway = body.get("gateway", False)
            if not isinstance(gateway, bool):
                raise BadRequest("gateway must be true or false")
            device, future = self._service.create_device(
                body.get("name", ""), type_=body.get("type", "default"),
                token=body.get("token"), label=body.get("label", ""), gateway=gateway,
            )
            seqs = await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except Exception as exc:
            status = status_of(exc)
            _log.bind(code=str(status)).warning("device create refused: {}", exc)
            return error_response(status, str(exc) or type(exc).__name__)
        _log.bind(entity=str(device.id), name=device.name, seq=f"{seqs.start}..{seqs.stop - 1}").info(
            "device created on the edge"
        )
        out = device.as_json(with_token=True)
        out["seqs"] = [seqs.start, seqs.stop - 1]
        return web.json_response(out, status=201)

    # -- the entity graph ----------------------------------------------------------------------

    async def _list_entities(self, request: web.Request) -> web.StreamResponse:
        try:
            kind = parse_type(request.query.get("type"))
        except BadRequest as exc:
            return error_response(400, str(exc))
        name = request.query.get("name") or None
        return web.json_response(list_entities(self._store, entity_type=kind, name=name))

    async def _apply_log(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/apply-log?after=N&limit=N`` (limit 1..10,000, default 1,000)."""
        try:
            after = query_int(request.query.get("after", "0"), "after", 0)
            limit = query_int(request.query.get("limit", "1000"), "limit", 1, 10_000)
        except BadRequest as exc:
            return error_response(400, str(exc))
        return web.json_response(apply_log_entries(self._store, after=after, limit=limit))

    async def _entity(self, request: web.Request) -> web.StreamResponse:
        try:
            return web.json_response(entity_details(self._store, _path_id(request)))
        except Exception as exc:
            return error_response(status_of(exc), str(exc))

    async def _change(self, what: str, make: Callable[[dict[str, Any]], Awaitable[Future[range]]],
                      *, status: int = 200, entity: str | None = None) -> web.StreamResponse:
        """Make the change, wait for its commit and answer with the seqs of its events (and
        the entity's id, or what ``make`` puts in the answer)."""
        answer: dict[str, Any] = {} if entity is None else {"id": entity}
        try:
            future = await make(answer)
            seqs = await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except Exception as exc:
            code = status_of(exc)
            _log.bind(code=str(code)).warning("{} refused: {}", what, exc)
            return error_response(code, str(exc) or type(exc).__name__)
        return web.json_response({**answer, "seqs": list(seqs)}, status=status)

    async def _create_asset(self, request: web.Request) -> web.StreamResponse:
        async def make(answer: dict[str, Any]) -> Future[range]:
            body = await _json_object(request, {"name", "type", "label", "additionalInfo"})
            asset_id, future = self._entities.create_asset(
                body.get("name", ""), type_=body.get("type", "default"),
                label=body.get("label", ""), additional_info=body.get("additionalInfo"))
            answer["id"] = str(asset_id)
            return future

        return await self._change("asset create", make, status=201)

    async def _update_asset(self, request: web.Request) -> web.StreamResponse:
        async def make(_answer: dict[str, Any]) -> Future[range]:
            asset_id = _path_id(request)
            body = await _json_object(request, {"name", "type", "label", "additionalInfo"})
            return self._entities.update_asset(asset_id, **body)

        return await self._change("asset update", make, entity=request.match_info["id"])

    async def _delete_asset(self, request: web.Request) -> web.StreamResponse:
        async def make(_answer: dict[str, Any]) -> Future[range]:
            return self._entities.delete_asset(_path_id(request))

        return await self._change("asset delete", make, entity=request.match_info["id"])

    async def _delete_device(self, request: web.Request) -> web.StreamResponse:
        async def make(_answer: dict[str, Any]) -> Future[range]:
            return self._entities.delete_device(_path_id(request))

        return await self._change("device delete", make, entity=request.match_info["id"])

    async def _add_relation(self, request: web.Request) -> web.StreamResponse:
        async def make(_answer: dict[str, Any]) -> Future[range]:
            return self._entities.add_relation(parse_json(await request.read()))

        return await self._change("relation add", make, status=201)

    async def _delete_relations(self, request: web.Request) -> web.StreamResponse:
        """``?entity=ID``: every relation from or to it; else ``?from=&to=&type=`` (with
        ``fromType``, ``toType``, ``typeGroup`` when wanted): one relation."""
        q = request.query

        async def make(_answer: dict[str, Any]) -> Future[range]:
            if q.get("entity"):
                if set(q) - {"entity"}:
                    raise BadRequest("entity= deletes all relations of an entity: no other "
                                     "parameter")
                return self._entities.delete_relations(parse_uuid(q["entity"], "entity"))
            src = parse_end({"entityType": q["fromType"], "id": q.get("from")}
                            if q.get("fromType") else q.get("from"), "from")
            dst = parse_end({"entityType": q["toType"], "id": q.get("to")}
                            if q.get("toType") else q.get("to"), "to")
            return self._entities.delete_relation(src, dst, q.get("type", ""),
                                                  q.get("typeGroup", "COMMON"))

        return await self._change("relation delete", make)

    async def _keys(self, request: web.Request) -> list[str]:
        """The keys of a delete: the body's ``{"keys": [...]}``, else ``?keys=a,b``."""
        raw = await request.read()
        if raw:
            body = parse_json(raw)
            if not isinstance(body, dict) or set(body) != {"keys"}:
                raise BadRequest('expected {"keys": ["key", ...]}')
            keys = body["keys"]
            if not isinstance(keys, list):
                raise BadRequest("keys must be a list of keys")
            return keys
        return [k for part in request.query.getall("keys", []) for k in part.split(",") if k]

    async def _delete_attributes(self, request: web.Request) -> web.StreamResponse:
        async def make(_answer: dict[str, Any]) -> Future[range]:
            entity_id = _path_id(request)
            return self._entities.delete_attributes(entity_id, request.match_info["scope"],
                                                    await self._keys(request))

        return await self._change("attribute delete", make, entity=request.match_info["id"])

    async def _delete_timeseries(self, request: web.Request) -> web.StreamResponse:
        async def make(_answer: dict[str, Any]) -> Future[range]:
            entity_id = _path_id(request)
            return self._entities.delete_timeseries(entity_id, await self._keys(request))

        return await self._change("timeseries delete", make, entity=request.match_info["id"])

    async def _request_metadata(self, request: web.Request) -> web.StreamResponse:
        async def make(_answer: dict[str, Any]) -> Future[range]:
            chain_id = _path_id(request)
            with self._store.read() as txn:  # the cloud answers only for a chain on the edge
                if GraphStore(self._store).entity(txn, chain_id, "RULE_CHAIN") is None:
                    raise NotFound(f"rule chain {chain_id} is not on this edge")
            return self._entities.request_rule_chain_metadata(chain_id)

        return await self._change("rule chain metadata request", make, status=202,
                                  entity=request.match_info["id"])

    async def _sync(self, request: web.Request) -> web.StreamResponse:
        """Ask the link for a sync (``{"full": true}``: a full one), as the operator."""
        try:
            raw = await request.read()
            body = parse_json(raw) if raw else {}
            if not isinstance(body, dict) or set(body) - {"full"}:
                raise BadRequest('expected {"full": true|false}')
            full = body.get("full", False)
            if not isinstance(full, bool):
                raise BadRequest("full must be true or false")
        except BadRequest as exc:
            return error_response(400, str(exc))
        if self._request_sync is None:
            return error_response(503, "no cloud link configured (cloud.routing_key is empty)")
        try:
            self._request_sync(full, "operator")
        except Exception as exc:
            return error_response(status_of(exc), str(exc) or type(exc).__name__)
        _log.bind(full=full).info("{} sync requested by the operator", "full" if full else "a")
        return web.json_response({"full": full, "requested": True}, status=202)

    async def _replay_dead(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/dead-letters/replay`` with ``{"seqs": [...]}``, ``{"entity": "<uuid>"}``
        or ``{"all": true}``: the dead letters PENDING again, in seq order (the QueueActor, one
        transaction); 200 ``{"replayed": [seq, ...], "skipped": [{"seq", "reason"}]}``."""
        try:
            selection = Selection.from_json(parse_json(await request.read()))
        except BadRequest as exc:
            return error_response(400, str(exc))
        if self._tell_queue is None:
            return error_response(503, "the queue is not running")
        future: Future[ReplayResult] = Future()
        try:
            self._tell_queue(ReplayDead(selection, future))
            result = await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except Exception as exc:
            code = status_of(exc)
            _log.bind(code=str(code)).warning("dead-letter replay refused: {}", exc)
            return error_response(code, str(exc) or type(exc).__name__)
        _log.bind(replayed=len(result.replayed), skipped=len(result.skipped)).info(
            "dead letters replayed by the operator: {}", len(result.replayed))
        return web.json_response(result.as_json())

    async def _inject_crash(self, request: web.Request) -> web.StreamResponse:
        """Fault injection (admin.fault_injection): tell an actor to raise."""
        try:
            body = parse_json(await request.read())
            target = body.get("target") if isinstance(body, dict) else None
            if not isinstance(target, str):
                raise BadRequest('expected {"target": "queue" | "shard-N"}')
        except BadRequest as exc:
            return error_response(400, str(exc))
        assert self._crash is not None
        if not self._crash(target):
            return error_response(404, f"no running actor {target!r}")
        _log.bind(target=target).warning("fault injected: {} told to crash", target)
        return web.json_response({"crashed": target})

    async def _alarm(self, request: web.Request) -> web.StreamResponse:
        """Raise, acknowledge or clear an alarm on a device (the rule engine's job in
        ThingsBoard; here an integrator's or operator's)."""
        try:
            body = parse_json(await request.read())
            if not isinstance(body, dict):
                raise BadRequest("expected a JSON object with device, type, severity, ...")
            unknown = set(body) - {"device", "type", "severity", "details", "action", "alarm_id"}
            if unknown:
                raise BadRequest(f"unknown fields: {', '.join(sorted(unknown))}")
            action = body.get("action", "ADDED")
            alarm_id = parse_uuid(body["alarm_id"], "alarm_id") if body.get("alarm_id") else None
            if action != "ADDED" and alarm_id is not None and not (
                    body.get("device") and body.get("type")):
                # acknowledge or clear by id: device and type from the alarm's last event
                device = parse_uuid(body["device"], "device") if body.get("device") else None
                service, known = self._service, alarm_id
                future = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: service.change_alarm(known, action, device_id=device,
                                                       alarm_type=body.get("type") or None))
                device_id = device or known
            else:
                device_id = parse_uuid(body.get("device"), "device")
                alarm_id, future = self._service.raise_alarm(
                    device_id, body.get("type", ""), severity=body.get("severity", "CRITICAL"),
                    details=body.get("details"), alarm_id=alarm_id, action=action)
            seqs = await asyncio.wait_for(asyncio.wrap_future(future), self._timeout)
        except Exception as exc:
            status = status_of(exc)
            _log.bind(code=str(status)).warning("alarm refused: {}", exc)
            return error_response(status, str(exc) or type(exc).__name__)
        _log.bind(entity=str(alarm_id), device=str(device_id), seq=seqs.start).info(
            "alarm {} queued", body.get("action", "ADDED"))
        return web.json_response({"alarm_id": str(alarm_id), "seq": seqs.start}, status=201)

    async def _prometheus(self, request: web.Request) -> web.StreamResponse:
        return web.Response(body=self._metrics.exposition(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def _page(self, request: web.Request) -> web.StreamResponse:
        """The Cloud Events page (api/static/, served by api/events_page.py)."""
        return events_page.page_response()

    async def _static(self, request: web.Request) -> web.StreamResponse:
        return events_page.static_response(request.match_info["name"])
