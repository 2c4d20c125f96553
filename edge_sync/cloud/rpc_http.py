"""Server-side RPC routes of the cloud's admin API, in ThingsBoard's REST shape
(RpcV2Controller):

  POST /api/rpc/twoway/{deviceId}   body {method, params, timeout, expirationTime, persistent,
                                    retries, additionalInfo}; ?edge=RK with a device name
        -> 200 the device's response (its JSON; empty when it answered nothing), 406 when the
           response is not JSON, 504 when no answer came by the request's expirationTime or the
           answer was an error; persistent: 200 {"rpcId"} at once
  POST /api/rpc/oneway/{deviceId}   the same body -> 200 (empty) once the request is in the edge's
                                    durable queue; persistent: 200 {"rpcId"}
  GET  /api/rpc/{rpcId}, /api/rpc/persistent/{rpcId}   the request, its status and answer
  DELETE /api/rpc/persistent/{rpcId}  DELETED (out of the queue when still queued) -> 200, the
                                      request as it now is
Every POST answer carries the request's id in the header X-Rpc-Id. Bad bodies 400, an unknown
device 404 (the admin API's JSON error shape).

A two-way call waits on an asyncio future (rpc_waiters.py), never on a thread of its own; its
durable write is committed together with the others arriving meanwhile (group_commit.py).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from aiohttp import web
from loguru import logger

from edge_sync.cloud import downlinks
from edge_sync.cloud.rpc import RestAnswer, RpcRecord, final_answer, submitted_answer
from edge_sync.cloud.rpc_service import RpcService
from edge_sync.common.http_errors import error_response, status_of
from edge_sync.common.json_body import parse_json

_log = logger.bind(component="cloud-admin")

RPC_ID_HEADER = "X-Rpc-Id"


class RpcRoutes:
    def __init__(self, rpc: RpcService, tenant_id: uuid.UUID | None = None) -> None:
        self._rpc = rpc
        self._tenant_id = tenant_id

    def install(self, app: web.Application) -> None:
        app.router.add_post("/api/rpc/twoway/{device}", self._twoway)
        app.router.add_post("/api/rpc/oneway/{device}", self._oneway)
        app.router.add_get("/api/rpc/persistent/{rpc_id}", self._get)
        app.router.add_get("/api/rpc/{rpc_id}", self._get)
        app.router.add_delete("/api/rpc/persistent/{rpc_id}", self._delete)

    async def _twoway(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, oneway=False)

    async def _oneway(self, request: web.Request) -> web.StreamResponse:
        return await self._call(request, oneway=True)

    async def _call(self, request: web.Request, *, oneway: bool) -> web.StreamResponse:
        rpc_id = uuid.uuid4()
        # registered before the request is stored: its answer cannot come first
        future = self._rpc.waiters.register(rpc_id)
        try:
            try:
                body = parse_json(await request.read())
                record, device = await asyncio.to_thread(
                    self._rpc.prepare, request.match_info["device"], body, oneway=oneway,
                    edge_ref=request.query.get("edge") or None, rpc_id=rpc_id)
                # committed with the requests that arrive meanwhile (group commit): no thread
                # is held while the disk syncs
                record = await asyncio.wrap_future(
                    self._rpc.store.submit_rpc(record, downlinks.device_rpc_request))
                self._rpc.submitted(record, device)
            except Exception as exc:
                return _refused(request, exc)
            answer = submitted_answer(record)
            if answer is None:
                record = await self._wait(record, future)
                answer = final_answer(record)
            return _response(answer, record)
        finally:
            self._rpc.waiters.discard(rpc_id)

    async def _wait(self, record: RpcRecord, future: asyncio.Future[RpcRecord]) -> RpcRecord:
        """The request once settled: its answer, or at its expirationTime what it is then
        (TIMEOUT or EXPIRED, durably, unless the answer won the race)."""
        while True:
            # until 1 ms past it: the request expires once the time is beyond its expirationTime
            left_s = max(0.0, (record.expiration_time + 1 - self._rpc.clock.now_ms()) / 1000)
            try:
                return await asyncio.wait_for(asyncio.shield(future), timeout=left_s)
            except TimeoutError:
                pass
            settled = await asyncio.to_thread(self._rpc.settle_if_due, record.id)
            if settled is None or settled.status.final:
                return settled or record
            # (a timer that fired early: wait for the rest)

    async def _delete(self, request: web.Request) -> web.StreamResponse:
        return await self._get(request, delete=True)

    async def _get(self, request: web.Request, *, delete: bool = False) -> web.StreamResponse:
        try:
            record = await asyncio.to_thread(self._rpc.delete if delete else self._rpc.get,
                                             request.match_info["rpc_id"])
            tenant = self._tenant_id or await asyncio.to_thread(self._rpc.store.tenant_id)
        except Exception as exc:
            return _refused(request, exc)
        return web.json_response(record.as_json(tenant))


def _response(answer: RestAnswer, record: RpcRecord) -> web.StreamResponse:
    headers = {RPC_ID_HEADER: str(record.id)}
    if answer.status == 504:
        # ThingsBoard answers 504 with no body; the body here says why (clients may ignore it)
        body: dict[str, Any] = {
            "status": 504, "error": "gateway timeout", "rpcId": str(record.id),
            "rpcStatus": str(record.status),
            "message": (f"rpc {record.status.lower()}: {record.error}" if record.error else
                        f"no answer from the device by the request's expirationTime "
                        f"({record.status})")}
        return web.json_response(body, status=504, headers=headers)
    if answer.body is None:
        return web.Response(status=answer.status, headers=headers)
    return web.json_response(answer.body, status=answer.status, headers=headers)


def _refused(request: web.Request, exc: Exception) -> web.StreamResponse:
    status = status_of(exc)
    log = _log.bind(path=request.path, code=str(status))
    if status >= 500:
        log.opt(exception=exc).error("rpc request failed: {}", exc)
    else:
        log.info("rpc request refused: {}", exc)
    return error_response(status, str(exc) or type(exc).__name__)
