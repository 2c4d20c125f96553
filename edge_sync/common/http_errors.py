"""Mapping of the project's errors to HTTP statuses and JSON error bodies (every HTTP API),
and the middleware that answers a handler's unexpected failure with one of them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware
from loguru import logger

from edge_sync.errors import (
    BadRequest,
    Conflict,
    EdgeSyncError,
    NotFound,
    QueueFull,
    StorageError,
    Unauthorized,
    Unavailable,
)
from edge_sync.logsetup import redact


def status_of(exc: BaseException) -> int:
    match exc:
        case Conflict():
            return 409
        case BadRequest():
            return 400
        case Unauthorized():
            return 401
        case NotFound():
            return 404
        case QueueFull():
            return 507
        case Unavailable() | TimeoutError():
            return 503
        case StorageError() | EdgeSyncError():
            return 500
    return 500


_REASONS = {400: "bad request", 401: "unauthorized", 403: "forbidden", 404: "not found",
            409: "conflict", 413: "payload too large", 415: "unsupported media type",
            500: "internal error", 501: "not implemented", 503: "unavailable",
            507: "insufficient storage"}


def error_response(status: int, message: str) -> web.Response:
    body = {"status": status, "error": _REASONS.get(status, "error"), "message": message}
    headers = {"Retry-After": "1"} if status in (503, 507) else None
    return web.json_response(body, status=status, headers=headers)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def unexpected_errors(component: str) -> Middleware:
    """The outermost middleware of every HTTP API (installed by common/http_host.py): a handler
    that fails with an exception it did not turn into an answer is a defect. It is logged once
    at ERROR with the method, the path and the traceback, and answered with the JSON 500 every
    other error has (not aiohttp's plain-text one). aiohttp's own answers pass through."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except Exception as exc:
            path = loggable_path(request)
            logger.bind(component=component, method=request.method, path=path).opt(
                exception=exc).error("{} {} failed: {}: {}", request.method, path,
                                     type(exc).__name__, str(exc)[:200])
            return error_response(500, f"internal error ({type(exc).__name__}); the log has "
                                       "the details")

    return middleware


def loggable_path(request: web.Request) -> str:
    """The request's path with a device token in it masked (the device API's routes hold
    one): tokens are never logged."""
    token = request.match_info.get("token")
    return request.path.replace(token, redact(token)) if token else request.path
