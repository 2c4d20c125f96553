"""Hosts an aiohttp application on its own thread and event loop, as a supervised child.

start() returns once the socket is bound (so port 0 gives a real port) or raises why it could
not bind; an unexpected end of the loop is reported to the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from aiohttp import web
from loguru import logger

from edge_sync.errors import EdgeSyncError
from edge_sync.supervisor import ExitReporter

HANDLER_CANCELLATION = web.AppKey("edge_sync.handler_cancellation", bool)
"""Set True on an application whose handlers are to be cancelled when their client disconnects
(aiohttp's ``handler_cancellation``, off by default): a long poll whose connection closed then
stops waiting at once instead of holding its place until its timeout. Only for applications
whose every handler may be cancelled at any await (the device API: a write it cancels is still
committed, only its answer is dropped); the admin API keeps the default."""


class HttpHost:
    def __init__(
        self,
        name: str,
        make_app: Callable[[], web.Application],
        *,
        host: str,
        port: int,
        report_exit: ExitReporter | None = None,
    ) -> None:
        self.name = name
        self._make_app = make_app
        self._host = host
        self._requested_port = port
        self._report_exit = report_exit
        self.port = 0
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=f"http-{name}", daemon=True)
        self._log = logger.bind(component=name)

    def start(self, *, timeout: float = 10.0) -> HttpHost:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EdgeSyncError(f"{self.name}: did not start within {timeout}s")
        if self._startup_error is not None:
            raise EdgeSyncError(
                f"{self.name}: cannot listen on {self._host}:{self._requested_port}: "
                f"{self._startup_error}"
            ) from self._startup_error
        return self

    def stop(self, *, timeout: float = 10.0) -> None:
        """Any thread: stop accepting, let in-flight requests finish, wait for the thread."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        """The host's own thread."""
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
                return
            self._log.opt(exception=exc).error("{} stopped unexpectedly", self.name)
            if self._report_exit and not self._stopping:
                self._report_exit(exc)
            return
        if self._report_exit and not self._stopping:
            self._report_exit(None)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        app = self._make_app()
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
            self._log.bind(host=self._host, port=self.port).info("{} listening", self.name)
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()
            self._log.info("{} stopped", self.name)
