"""Hosts an aiohttp application on its own thread and event loop, as a supervised child (the
thread's lifecycle: edge_sync.common.loop_thread). stop() lets in-flight requests finish.
Every hosted application gets the unexpected-errors middleware first
(edge_sync.common.http_errors): a handler's failure is logged with its route and traceback and
answered with a JSON 500.
"""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from edge_sync.common.http_errors import unexpected_errors
from edge_sync.common.loop_thread import LoopThreadServer
from edge_sync.supervisor import ExitReporter

HANDLER_CANCELLATION = web.AppKey("edge_sync.handler_cancellation", bool)
"""Set True on an application whose handlers are to be cancelled when their client disconnects
(aiohttp's ``handler_cancellation``, off by default): a long poll whose connection closed then
stops waiting at once instead of holding its place until its timeout. Only for applications
whose every handler may be cancelled at any await (the device API: a write it cancels is still
committed, only its answer is dropped); the admin API keeps the default."""


class HttpHost(LoopThreadServer):
    def __init__(
        self,
        name: str,
        make_app: Callable[[], web.Application],
        *,
        host: str,
        port: int,
        report_exit: ExitReporter | None = None,
    ) -> None:
        super().__init__(name, host=host, port=port, thread_name=f"http-{name}",
                         report_exit=report_exit)
        self._make_app = make_app

    async def _serve(self) -> None:
        app = self._make_app()
        app.middlewares.insert(0, unexpected_errors(self.name))  # the outermost
        runner = web.AppRunner(
            app, access_log=None, handle_signals=False, shutdown_timeout=5.0,
            handler_cancellation=app.get(HANDLER_CANCELLATION, False),
        )
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._requested_port, reuse_address=True,
                               backlog=1024)
            await site.start()
            addresses = runner.addresses  # the bound (host, port, ...) tuples: port 0 resolved
            self.port = addresses[0][1] if addresses else self._requested_port
            self._listening()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            self._log.info("{} stopped", self.name)
