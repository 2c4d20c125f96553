"""The request guard of both admin HTTP APIs (the edge's and the reference cloud's): one aiohttp
middleware that decides, before any route runs, whether a request may reach the API at all.

Loopback is not a boundary against a browser on the same machine: any web page the operator
opens can make the browser send requests to 127.0.0.1. The guard refuses everything a page
could send without the browser asking the API first (a CORS preflight, which this API never
answers with an allow):

- A state-changing request (POST, PUT, PATCH, DELETE) must be ``Content-Type: application/json``
  (415 otherwise): text/plain, form and multipart bodies are what a cross-site page can send
  without a preflight; JSON is not.
- A state-changing request's body is read before its route runs: over the API's size limit it
  is refused with 413, unreadable (a Content-Encoding it does not have) with 400, for every
  route alike.
- When an ``Origin`` header is present it must be the API's own origin (403 otherwise).
- Without a token, the ``Host`` header must be a loopback name (403 otherwise): a page whose
  own domain is made to resolve to 127.0.0.1 (DNS rebinding) is same-origin to the browser,
  and only its Host header gives it away.
- With ``admin.token`` set, every route but ``/healthz`` and ``/readyz`` requires
  ``Authorization: Bearer <token>`` (401 otherwise), compared in constant time. An API may
  name more public paths (``public_paths``): the edge's page shell and its static files, which
  hold no data (the page sends the token with each of its API calls).

Every response carries ``Cache-Control: no-store``: device tokens and edge secrets travel in
admin answers and must never sit in a cache. The token itself is never logged.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from loguru import logger

from edge_sync.common.http_errors import error_response

UNAUTHENTICATED_PATHS = frozenset({"/healthz", "/readyz"})
STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
JSON_CONTENT_TYPE = "application/json"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback address literals (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def check_bind(section: str, host: str, token: str) -> str | None:
    """Why an admin API must not listen on ``host`` without a token, or None when it may."""
    if token or is_loopback_host(host):
        return None
    return (f"{section}.host is {host!r}, which is not a loopback address, and {section}.token "
            f"is empty: anyone who can reach that address could provision devices and read "
            f"their tokens. Set {section}.token (a long random string) or bind to 127.0.0.1.")


class AdminGuard:
    """Builds the middleware and the response hook for one admin API (``component`` names it in
    the log: "admin-http" or "cloud-admin")."""

    def __init__(self, component: str, *, token: str,
                 public_paths: frozenset[str] = frozenset()) -> None:
        self._token = token.encode()
        self._public = UNAUTHENTICATED_PATHS | public_paths
        self._log = logger.bind(component=component)

    def install(self, app: web.Application) -> web.Application:
        app.middlewares.append(self._middleware)
        app.on_response_prepare.append(_no_store)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        refusal = self._refusal(request) or await _unreadable_body(request)
        if refusal is not None:
            status, message = refusal
            self._log.bind(method=request.method, path=request.path, code=str(status),
                           origin=request.headers.get(hdrs.ORIGIN, ""),
                           peer=request.remote or "").warning("admin request refused: {}", message)
            response = error_response(status, message)
            if status == 401:
                response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="admin"'
            return response
        return await handler(request)

    def _refusal(self, request: web.Request) -> tuple[int, str] | None:
        """(status, message) when the request must not reach the API, else None."""
        if self._token:
            if request.path not in self._public and not self._authorized(request):
                return 401, "missing or wrong bearer token (Authorization: Bearer <admin.token>)"
        elif not is_loopback_host(request.url.host or ""):
            return 403, ("Host header is not a loopback name; set admin.token to serve this API "
                         "under other names")
        if request.method in STATE_CHANGING_METHODS:
            if request.content_type != JSON_CONTENT_TYPE:
                return 415, (f"{request.method} needs Content-Type: {JSON_CONTENT_TYPE} "
                             f"(got {request.content_type or 'none'})")
            origin = request.headers.get(hdrs.ORIGIN)
            if origin is not None and origin != own_origin(request):
                return 403, f"cross-origin request refused (Origin {origin[:100]!r})"
        return None

    def _authorized(self, request: web.Request) -> bool:
        scheme, _, credentials = request.headers.get(hdrs.AUTHORIZATION, "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(credentials.strip().encode(), self._token)


async def _unreadable_body(request: web.Request) -> tuple[int, str] | None:
    """A state-changing request's body, read whole before its route runs (aiohttp keeps it: the
    route's own read costs nothing): (413, why) when it is over the API's limit
    (``client_max_size``), (400, why) when it cannot be read (a Content-Encoding it does not
    have), else None. Every route, whether it reads its body or not, refuses the same way."""
    if request.method not in STATE_CHANGING_METHODS or not request.body_exists:
        return None
    try:
        await request.read()
    except web.HTTPRequestEntityTooLarge:
        return 413, f"body too large: at most {request.client_max_size:,} bytes"
    except Exception as exc:  # Content-Encoding: gzip over a plain body; the client went away
        return 400, f"body cannot be read: {type(exc).__name__}: {str(exc)[:200]}"
    return None


def own_origin(request: web.Request) -> str:
    """The origin a browser would send for a page served by this API under its Host header."""
    return f"{request.scheme}://{request.host}"


async def _no_store(request: web.Request, response: web.StreamResponse) -> None:
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
