"""The device HTTP API (ThingsBoard's): telemetry and client attributes in, attributes out,
server-side RPC and shared attribute updates by long poll (docs/device-rpc.md).

200 only once the data is on disk; 400 malformed body or timeout parameter, 401 unknown token,
413 body too large, 503 restarting or not confirmed in time, 507 storage full; errors carry a
JSON body. An RPC answer no request awaits is answered 200 and dropped (logged and counted), as
ThingsBoard's HTTP transport answers it; an RPC answer that is not JSON is carried as its text.
A long poll that times out is answered 408 with an empty body, as ThingsBoard does. Every
refusal is logged once with the device (never the token) and counted.

What ThingsBoard serves and the edge does not is answered plainly: a device's own (client-side)
RPC request 200 with ``{"error": ...}`` (api/client_rpc.py), a provisioning request 200 with
ThingsBoard's NOT_FOUND answer (api/provisioning.py), device claiming 501.

Long polls are futures of this server's loop (devices/subscribers.py), no thread each; when the
server stops they are answered 503. A handler is cancelled when its client disconnects, so a
closed poll stops waiting at once. A poll whose device's token the cloud changed or removed is
answered 408 at once (``_end_revoked``); a deleted device's polls are answered 404.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Future
from typing import Any
from urllib.parse import quote

from aiohttp import web
from loguru import logger

from edge_sync.api import client_rpc, provisioning
from edge_sync.api.attribute_read import read_attributes
from edge_sync.api.device_service import DeviceService
from edge_sync.api.payloads import parse_keys, parse_request_id, parse_timeout
from edge_sync.common.http_errors import error_response, status_of
from edge_sync.common.http_host import HANDLER_CANCELLATION
from edge_sync.common.json_body import parse_json, parse_values_json
from edge_sync.devices.rpc import answer_of
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import BadRequest, Restarting, Unauthorized
from edge_sync.metrics import Metrics, device_answers
from edge_sync.storage.entity_store import Revoked
from edge_sync.storage.records import Device

_log = logger.bind(component="device-http")

MISSING_HEADER = "X-Edge-Sync-Missing-Shared-Keys"
"""On GET attributes: the shared keys asked for that the edge could not serve (not held, and
the cloud did not answer in time or is unreachable), each percent-encoded (a key may hold a
comma or a control character), joined by commas; ``*`` when all were asked for and the edge
holds none. Absent when the answer is complete."""


class DeviceHttpApi:
    def __init__(
        self,
        service: DeviceService,
        *,
        max_body_bytes: int,
        request_timeout_s: float,
        metrics: Metrics,
        link_connected: Callable[[], bool] | None = None,
    ) -> None:
        self._service = service
        self._max_body = max_body_bytes
        self._timeout = request_timeout_s
        # None: no cloud link, nothing to fetch; else whether the link is up now
        self._link_connected = link_connected
        self._polls: set[LongPoll] = set()  # the loop's open long polls
        # the RPC and attribute update polls among them, with the device each authenticated as
        self._device_polls: dict[LongPoll, Device] = {}
        metrics.gauge("edge_sync_http_long_polls", "device long polls waiting now (rpc, "
                      "attribute updates, attribute requests)", lambda: float(len(self._polls)))
        self._answers = device_answers(metrics)
        self._accepted = self._answers.labels(protocol="http", code="200")

    def make_app(self) -> web.Application:
        """Runs on the host's loop thread."""
        app = web.Application(client_max_size=self._max_body + 1)
        # a device that closes its connection cancels its handler: its long poll gives up its
        # place at once (it would otherwise claim the next request until its timeout)
        app[HANDLER_CANCELLATION] = True
        # a token may hold any character but '/' (aiohttp's default pattern also refuses '{}')
        app.router.add_post("/api/v1/{token:[^/]+}/telemetry", self._telemetry)
        app.router.add_post("/api/v1/{token:[^/]+}/attributes", self._post_attributes)
        app.router.add_get("/api/v1/{token:[^/]+}/attributes", self._get_attributes)
        app.router.add_get("/api/v1/{token:[^/]+}/attributes/updates", self._attribute_updates)
        app.router.add_get("/api/v1/{token:[^/]+}/rpc", self._rpc_poll)
        app.router.add_post("/api/v1/{token:[^/]+}/rpc", self._client_rpc)
        app.router.add_post("/api/v1/{token:[^/]+}/rpc/{request_id}", self._rpc_response)
        app.router.add_post("/api/v1/{token:[^/]+}/claim", self._claim)
        app.router.add_post("/api/v1/provision", self._provision)
        app.on_shutdown.append(self._end_polls)
        app.cleanup_ctx.append(self._watch_access)
        return app

    async def _watch_access(self, _app: web.Application) -> AsyncIterator[None]:
        """While the app runs: revoked devices' long polls end (``_end_revoked``)."""
        unwatch = self._service.watch_access(self._revoked(asyncio.get_running_loop()))
        try:
            yield
        finally:
            unwatch()

    def _revoked(self, loop: asyncio.AbstractEventLoop) -> Callable[[Revoked], None]:
        """What the device service's token cache tells (on the committing thread) about
        devices whose token changed or went: handed to this server's loop."""

        def tell(revoked: Revoked) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: no poll left
                loop.call_soon_threadsafe(self._end_revoked, revoked)

        return tell

    def _end_revoked(self, revoked: Revoked) -> None:
        """The loop: a long poll of a device whose access token was changed or removed ends
        at once with 408, unless its token still names the device (it came with the new one)
        or a result is on its way, as ThingsBoard's HTTP transport answers a session the
        device actor closes (DeviceApiController.HttpSessionListener
        .onRemoteSessionCloseCommand: REQUEST_TIMEOUT); the device's next poll with the old
        token gets 401. One INFO line per poll ended. A deleted device's polls are answered by
        its entity actor (404), as before the token cache is told."""
        for poll, device in list(self._device_polls.items()):
            revocation = revoked.get(device.id)
            if (revocation is None or revocation.deleted
                    or self._service.still_authenticates(device)):
                continue
            if poll.end():
                _log.bind(device=str(device.id), reason=revocation.reason).info(
                    "long poll of device {} ended with 408: {}", device.name, revocation.why)

    async def _end_polls(self, _app: web.Application) -> None:
        for poll in list(self._polls):
            poll.abandon(Restarting("the agent is stopping; poll again"))

    async def _rpc_poll(self, request: web.Request) -> web.StreamResponse:
        return await self._long_poll(request, "rpc poll", self._service.poll_rpc)

    async def _attribute_updates(self, request: web.Request) -> web.StreamResponse:
        return await self._long_poll(request, "attribute updates poll",
                                     self._service.poll_attributes)

    async def _long_poll(self, request: web.Request, what: str,
                         subscribe: Callable[[Any, LongPoll], None]) -> web.StreamResponse:
        """Wait for the device's next RPC request / attribute update: 200 with its JSON, or
        408 with an empty body when ``timeout`` ms pass first, or when the token is revoked
        meanwhile (ThingsBoard's answers)."""
        token = request.match_info["token"]
        try:
            timeout_ms = parse_timeout(request.query.get("timeout"))
            device = self._service.authenticate(token)
            poll = LongPoll(asyncio.get_running_loop())
            self._polls.add(poll)
            self._device_polls[poll] = device
            try:
                subscribe(device.id, poll)
                answered, value = await poll.wait(timeout_ms / 1000)
            finally:
                self._polls.discard(poll)
                del self._device_polls[poll]
        except Exception as exc:
            return self._refuse_error(exc, what, token)
        if not answered:
            self._answers.labels(protocol="http", code="408").inc()
            return web.Response(status=408)
        self._accepted.inc()
        return web.json_response(value)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_length is not None and request.content_length > self._max_body:
            raise _TooLarge(request.content_length, self._max_body)
        chunks: list[bytes] = []
        size = 0
        while True:  # the body may arrive in many segments: read to its end
            try:
                chunk = await request.content.read(65536)
            except Exception as exc:  # e.g. a gzip Content-Encoding over a plain body
                if isinstance(exc, asyncio.CancelledError | ConnectionError):
                    raise
                raise BadRequest(f"body cannot be decoded: {exc}") from exc
            if not chunk:
                break
            size += len(chunk)
            if size > self._max_body:
                raise _TooLarge(None, self._max_body)
            chunks.append(chunk)
        return b"".join(chunks)

    async def _telemetry(self, request: web.Request) -> web.StreamResponse:
        return await self._write(request, "telemetry", self._service.post_telemetry,
                                 parse=parse_values_json)

    async def _post_attributes(self, request: web.Request) -> web.StreamResponse:
        return await self._write(request, "attributes", self._service.post_attributes,
                                 parse=parse_values_json)

    async def _rpc_response(self, request: web.Request) -> web.StreamResponse:
        """The device's answer to a server-side RPC request. Its body may be any text: one that
        is not JSON is carried as its text (devices/rpc.TextAnswer), as ThingsBoard's
        DeviceApiController.replyToCommand takes the body as a String; an empty body is 400,
        as Spring refuses a missing required @RequestBody there. One that no request awaits
        (unknown id; not delivered, expired or answered already) is answered 200 all the same,
        logged, counted and dropped by the service, nothing queued: replyToCommand answers
        through its HttpOkCallback, 200 whatever becomes of the answer, and the MQTT API
        acknowledges such an answer too."""
        raw_id = request.match_info["request_id"]

        def submit(token: str, body: Any) -> Future[range]:
            request_id = parse_request_id(raw_id)
            device = self._service.authenticate(token)
            return self._service.answer_rpc(device.id, request_id, body)

        return await self._write(request, "rpc response", submit, parse=_rpc_answer)

    async def _client_rpc(self, request: web.Request) -> web.StreamResponse:
        """The device's own RPC request (``{"method", "params"}``): 200 with ``{"error": ...}``
        at once (api/client_rpc.py). ThingsBoard's DeviceApiController.postRpcRequest hands it
        to the rule engine and answers what a rule chain replies, or ``{"error": "timeout"}``;
        the edge's rule engine answers none."""
        token = request.match_info["token"]
        try:
            raw = await self._read_body(request)
            device = self._service.authenticate(token)
            method = client_rpc.method_of(parse_json(raw))
        except _TooLarge as exc:
            return self._refuse(413, str(exc), "client-side rpc", token)
        except Exception as exc:
            return self._refuse_error(exc, "client-side rpc", token)
        _log.bind(device=str(device.id)).info(
            "client-side RPC {!r} of device {} answered with an error: {}", method[:64],
            device.name, client_rpc.NOT_SERVED)
        self._accepted.inc()
        return web.json_response(client_rpc.not_served())

    async def _claim(self, request: web.Request) -> web.StreamResponse:
        """Device claiming (``{"secretKey", "durationMs"}``): 501, the edge does not serve it.
        ThingsBoard's DeviceApiController.saveClaimingInfo answers 200 once the claim is
        handed to the device's actor, and only logs a failure; on the edge a claim would go
        nowhere, so it is refused plainly rather than acknowledged."""
        token = request.match_info["token"]
        try:
            await self._read_body(request)  # the limit holds; the body says nothing more
            self._service.authenticate(token)
        except _TooLarge as exc:
            return self._refuse(413, str(exc), "claim", token)
        except Exception as exc:
            return self._refuse_error(exc, "claim", token)
        return self._refuse(501, "device claiming is not served by the edge: claim the device "
                            "through ThingsBoard", "claim", token)

    async def _provision(self, request: web.Request) -> web.StreamResponse:
        """Device provisioning: 200 with ThingsBoard's answer for a provision key it does not
        know, whatever the body (api/provisioning.py), as DeviceApiController.provisionDevice
        answers through its DeviceProvisionCallback: the edge does not provision devices."""
        try:
            await self._read_body(request)
        except _TooLarge as exc:
            return self._refuse(413, str(exc), "provision", "")
        except Exception as exc:
            return self._refuse_error(exc, "provision", "")
        _log.bind(peer=str(request.remote)).info(
            "provisioning request answered NOT_FOUND: the edge does not provision devices "
            "(create the device and give it its access token)")
        self._accepted.inc()
        return web.json_response(provisioning.NOT_FOUND)

    async def _write(
        self,
        request: web.Request,
        what: str,
        submit: Callable[[str, Any], Future[range]],
        *,
        parse: Callable[[bytes], Any] = parse_json,
    ) -> web.StreamResponse:
        token = request.match_info["token"]
        try:
            body = parse(await self._read_body(request))
            future = submit(token, body)
            await _wait(asyncio.wrap_future(future), self._timeout)
        except _TooLarge as exc:
            return self._refuse(413, str(exc), what, token)
        except Exception as exc:
            return self._refuse_error(exc, what, token)
        self._accepted.inc()
        return web.Response(status=200)

    async def _get_attributes(self, request: web.Request) -> web.StreamResponse:
        """From the edge's store; shared keys it does not hold are asked of the cloud
        (api/attribute_read.py), then what is known is answered and the keys still missing are
        named in MISSING_HEADER."""
        token = request.match_info["token"]
        try:
            device = self._service.authenticate(token)
            result, missing = await read_attributes(
                self._service, device.id,
                # DeviceApiController.getDeviceAttributes: a parameter naming no key (empty,
                # StringUtils.isEmpty; or only commas) is as absent: all of that scope
                client_keys=parse_keys(request.query.get("clientKeys")) or None,
                shared_keys=parse_keys(request.query.get("sharedKeys")) or None,
                link_connected=self._link_connected, timeout_s=self._timeout, polls=self._polls)
        except Exception as exc:
            return self._refuse_error(exc, "attributes read", token)
        headers = {MISSING_HEADER: _header_list(missing)} if missing else None
        if missing:
            _log.bind(device=str(device.id), missing=len(missing)).debug(
                "attributes answered without {} shared keys the edge does not hold", len(missing))
        return web.json_response(result, headers=headers)

    def _refuse_error(self, exc: BaseException, what: str, token: str) -> web.Response:
        """``_refuse`` with the answer ``exc`` maps to; an actor not running (Restarting) is
        logged at DEBUG: its run has lines of its own, and it refuses at the devices' rate."""
        return self._refuse(status_of(exc), _message(exc), what, token,
                            quiet=isinstance(exc, Restarting))

    def _refuse(self, status: int, message: str, what: str, token: str, *,
                quiet: bool = False) -> web.Response:
        self._answers.labels(protocol="http", code=str(status)).inc()
        device = "unknown"
        if status != 401:
            try:
                device = str(self._service.authenticate(token).id)
            except Unauthorized:
                device = "unknown"
            except Exception:
                device = "unavailable"
        # 507 (storage full) and a 503 for an actor not running (``quiet``) at DEBUG: both
        # refuse every request at the devices' rate while they last; the queue's refusal
        # lines, and the Address and supervisor lines (when it started, how many, when it
        # ended) tell of them, and device_requests_total{code} counts each
        level = ("DEBUG" if status == 507 or quiet else
                 "ERROR" if status >= 500 and status not in (501, 503) else "WARNING")
        _log.bind(code=str(status), device=device, what=what).log(
            level, "{} refused with {}: {}", what, status, message
        )
        return error_response(status, message)


class _TooLarge(Exception):
    def __init__(self, size: int | None, limit: int) -> None:
        what = f"body of {size} bytes" if size else "body"
        super().__init__(f"{what} is larger than the limit of {limit} bytes (http.max_body_bytes)")


def _rpc_answer(raw: bytes) -> Any:
    """An RPC answer's body: its JSON value, or its text when it is not JSON; BadRequest when
    it is empty."""
    if not raw:
        raise BadRequest("empty body: an RPC answer is JSON or text")
    return answer_of(raw)


def _message(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "not confirmed in time; it may or may not have been stored, retry"
    return str(exc) or type(exc).__name__


async def _wait(awaitable: Awaitable[Any], timeout: float) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


def _header_list(keys: tuple[str, ...]) -> str:
    """Keys as one header value: percent-encoded, comma-joined (``*`` stays as it is)."""
    return ",".join(k if k == "*" else quote(k, safe="") for k in keys)
