"""The health probes both admin APIs serve without a token (for systemd, supervisors and load
balancers): ``/healthz`` answers while the process serves HTTP; ``/readyz`` answers 200 when
every component the API names is running and 503 (with the ones that are not) otherwise."""

from __future__ import annotations

from typing import Any

from aiohttp import web


async def healthz(request: web.Request) -> web.StreamResponse:
    return web.json_response({"status": "ok"})


def readyz_response(components: dict[str, bool]) -> web.StreamResponse:
    down = sorted(name for name, up in components.items() if not up)
    body: dict[str, Any] = {"status": "ready" if not down else "not ready", "components": components}
    if down:
        body["down"] = down
    return web.json_response(body, status=200 if not down else 503)
