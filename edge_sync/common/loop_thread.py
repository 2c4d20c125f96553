"""A server that runs on its own thread and asyncio event loop, as a supervised child: the
thread, start() waiting until the socket is bound (so port 0 gives a real port) or raising why
it could not bind, stop() from any thread, and an unexpected end of the loop reported to the
supervisor. Subclasses (the HTTP hosts, the MQTT server) only say how to serve.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Self

from loguru import logger

from edge_sync.errors import EdgeSyncError
from edge_sync.supervisor import ExitReporter


class LoopThreadServer:
    """Subclasses implement ``_serve``: bind, set ``port``, call ``_listening()``, wait for
    ``_stop``, clean up."""

    def __init__(self, name: str, *, host: str, port: int, thread_name: str,
                 report_exit: ExitReporter | None = None) -> None:
        self.name = name
        self._host = host
        self._requested_port = port
        self._report_exit = report_exit
        self.port = 0
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)
        self._log = logger.bind(component=name)

    def start(self, *, timeout: float = 10.0) -> Self:
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
        """Any thread: ask the loop to stop serving, then wait for the thread."""
        self._stopping = True
        loop = self._loop
        if loop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(self._stop.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _listening(self) -> None:
        """From ``_serve``, once bound: log it and let start() return."""
        self._log.bind(host=self._host, port=self.port).info("{} listening", self.name)
        self._ready.set()

    async def _serve(self) -> None:
        raise NotImplementedError

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._serve()

    def _run(self) -> None:
        """The server's own thread."""
        try:
            asyncio.run(self._main())
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
