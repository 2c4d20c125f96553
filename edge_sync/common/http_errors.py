"""Mapping of the project's errors to HTTP statuses and JSON error bodies (both HTTP APIs)."""

from __future__ import annotations

from aiohttp import web

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
            500: "internal error", 503: "unavailable", 507: "insufficient storage"}


def error_response(status: int, message: str) -> web.Response:
    body = {"status": status, "error": _REASONS.get(status, "error"), "message": message}
    headers = {"Retry-After": "1"} if status in (503, 507) else None
    return web.json_response(body, status=status, headers=headers)
