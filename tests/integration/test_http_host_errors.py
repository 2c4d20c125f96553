"""A handler that fails unexpectedly, on a real HttpHost on loopback (the host of every HTTP API
of the edge and the reference cloud): answered with the JSON 500, logged once at ERROR with
the method, the path (a device token in it masked) and the traceback; aiohttp itself logs
nothing (its record would read as a parser refusal), and the server keeps serving."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from aiohttp import web

from edge_sync.common.http_host import HttpHost
from tests.helpers.agent import HttpClient
from tests.helpers.log_capture import log_records

TOKEN = "device-token-0123456789"


def _make_app() -> web.Application:
    async def boom(request: web.Request) -> web.StreamResponse:
        raise OverflowError("int too large to convert")

    async def fine(request: web.Request) -> web.StreamResponse:
        return web.json_response({"ok": True})

    async def not_found(request: web.Request) -> web.StreamResponse:
        raise web.HTTPNotFound(text="aiohttp's own answer")

    app = web.Application()
    app.router.add_get("/api/boom", boom)
    app.router.add_post("/api/v1/{token}/boom", boom)
    app.router.add_get("/api/fine", fine)
    app.router.add_get("/api/gone", not_found)
    return app


@pytest.fixture
def host() -> Iterator[HttpHost]:
    server = HttpHost("test-http", _make_app, host="127.0.0.1", port=0).start()
    yield server
    server.stop()


def test_a_handler_failure_is_a_json_500_logged_once_with_route_and_traceback(
        host: HttpHost, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="aiohttp")
    with log_records() as records, HttpClient(host.port) as client:
        failed = client.request("GET", "/api/boom?after=99999999999999999999999")
        failed_device = client.request("POST", f"/api/v1/{TOKEN}/boom", b"{}")
        fine = client.request("GET", "/api/fine")
        gone = client.request("GET", "/api/gone")
    for resp in (failed, failed_device):
        assert resp.headers["content-type"].startswith("application/json")
        assert (resp.status, json.loads(resp.body)) == (500, {
            "status": 500, "error": "internal error",
            "message": "internal error (OverflowError); the log has the details"})
    assert (fine.status, fine.json()) == (200, {"ok": True})
    assert (gone.status, gone.body) == (404, b"aiohttp's own answer")  # passed through
    errors = [r for r in records if r["level"].name == "ERROR"]
    assert [(r["extra"]["component"], r["extra"]["method"], r["extra"]["path"], r["message"])
            for r in errors] == [
        ("test-http", "GET", "/api/boom",
         "GET /api/boom failed: OverflowError: int too large to convert"),
        ("test-http", "POST", "/api/v1/de****/boom",
         "POST /api/v1/de****/boom failed: OverflowError: int too large to convert")]
    assert all(r["exception"] is not None and r["exception"].type is OverflowError
               for r in errors)
    assert not any(TOKEN in r["message"] or TOKEN in str(r["extra"]) for r in records)
    assert [r for r in caplog.records if r.name.startswith("aiohttp.server")] == []
