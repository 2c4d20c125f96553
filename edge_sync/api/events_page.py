"""The HTTP side of the Cloud Events page: ``GET /api/cloud-events`` (the events query of
events_query.py, with its cursors in a ``Link`` header and its server time in a
``Server-Timing`` header) and the page itself, a small static app (``static/``: HTML, CSS and
JavaScript, no build step, nothing fetched from elsewhere) served at ``/`` and ``/static/``.

The page shell holds no data, so it is served without the admin token (PUBLIC_PATHS); every
API call the page makes carries ``Authorization: Bearer <token>``, which the operator types
once into the page's token field (kept in the tab's sessionStorage, gone with the tab).
"""

from __future__ import annotations

import asyncio
from importlib import resources
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from edge_sync.api.events_query import MAX_SCAN, EventPage, parse_query, run_query
from edge_sync.common.http_errors import error_response
from edge_sync.errors import BadRequest
from edge_sync.storage.env import LmdbStore

STATIC_FILES = {"index.html": "text/html", "app.js": "text/javascript", "app.css": "text/css"}
PUBLIC_PATHS = frozenset({"/", *(f"/static/{name}" for name in STATIC_FILES)})
_SECURITY_HEADERS = {
    # only this origin's own files; no framing (clickjacking); no inline script
    "Content-Security-Policy": ("default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
                                "base-uri 'none'; form-action 'none'"),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def _static(name: str) -> bytes:
    return (resources.files("edge_sync.api") / "static" / name).read_bytes()


def page_response() -> web.Response:
    """``GET /``: the page shell."""
    return static_response("index.html")


def static_response(name: str) -> web.Response:
    """``GET /static/{name}``: one of the page's files (404 for anything else)."""
    if name not in STATIC_FILES:
        return error_response(404, f"no static file {name[:64]!r}")
    return web.Response(body=_static(name), content_type=STATIC_FILES[name],
                        charset="utf-8", headers=_SECURITY_HEADERS)


async def events_response(store: LmdbStore, query: Any, path: str) -> web.Response:
    """``GET /api/cloud-events``: a JSON list of rows (the answer it always gave), or with
    ``envelope=true`` an object with the rows, the cursors, ``scanned`` and ``partial``.
    Without ``envelope`` and ``scan`` the scan is not bounded in practice (MAX_SCAN), as it
    was before the cursors existed."""
    envelope = str(query.get("envelope", "")).lower() in ("1", "true", "yes")
    try:
        q = parse_query(query if envelope or query.get("scan")
                        else {**query, "scan": str(MAX_SCAN)})
    except BadRequest as exc:
        return error_response(400, str(exc))
    # in a worker thread: a filter without an index may examine up to ``scan`` events
    page = await asyncio.get_running_loop().run_in_executor(None, run_query, store, q)
    body: Any = page.as_json() if envelope else page.rows
    response = web.json_response(body)
    response.headers["Server-Timing"] = f"query;dur={page.server_ms:.2f}"
    links = _links(query, path, page)
    if links:
        response.headers["Link"] = links
    return response


def _links(query: Any, path: str, page: EventPage) -> str:
    """RFC 8288 ``Link`` values for the next (higher seqs) and previous (lower seqs) pages."""
    keep = {k: v for k, v in query.items() if k not in ("after", "after_seq", "before")}
    out = []
    if page.next_after is not None:
        out.append(f'<{path}?{urlencode({**keep, "after": page.next_after})}>; rel="next"')
    if page.prev_before is not None:
        out.append(f'<{path}?{urlencode({**keep, "before": page.prev_before})}>; rel="prev"')
    return ", ".join(out)
