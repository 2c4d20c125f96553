"""The device MQTT server as a supervised child: one thread running one asyncio loop that
accepts every connection (asyncio streams, no thread per connection), as the HTTP APIs do.

start() returns once the socket is bound (so port 0 gives a real port) or raises why it could
not bind; stop() closes the listener and every connection (PUBACKs not yet due are not sent:
their publishes may still commit, and the client resends them); an unexpected end of the loop
is reported to the supervisor.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from loguru import logger

from edge_sync.api.device_service import DeviceService
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import EdgeSyncError
from edge_sync.mqtt.connection import MqttConnection
from edge_sync.supervisor import ExitReporter


class MqttServer:
    def __init__(
        self,
        service: DeviceService,
        *,
        host: str,
        port: int,
        max_message_bytes: int,
        commit_timeout_s: float,
        connect_timeout_s: float,
        link_connected: Callable[[], bool] | None = None,
        report_exit: ExitReporter | None = None,
    ) -> None:
        self._service = service
        self._link_connected = link_connected
        self._host = host
        self._requested_port = port
        self._max = max_message_bytes
        self._commit_timeout = commit_timeout_s
        self._connect_timeout = connect_timeout_s
        self._report_exit = report_exit
        self.port = 0
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._stopping = False
        self._connections: set[asyncio.Task[None]] = set()
        self._polls: set[LongPoll] = set()  # attribute requests waiting for the cloud
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        self._log = logger.bind(component="mqtt")

    def start(self, *, timeout: float = 10.0) -> MqttServer:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise EdgeSyncError(f"mqtt: did not start within {timeout}s")
        if self._startup_error is not None:
            raise EdgeSyncError(
                f"mqtt: cannot listen on {self._host}:{self._requested_port}: "
                f"{self._startup_error}"
            ) from self._startup_error
        return self

    def stop(self, *, timeout: float = 10.0) -> None:
        """Any thread: stop accepting, close the connections, wait for the thread."""
        self._stopping = True
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(stop.set)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def _run(self) -> None:
        """The server's own thread."""
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
                return
            self._log.opt(exception=exc).error("mqtt stopped unexpectedly")
            if self._report_exit and not self._stopping:
                self._report_exit(exc)
            return
        if self._report_exit and not self._stopping:
            self._report_exit(None)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self._accept, self._host, self._requested_port,
                                            reuse_address=True, backlog=1024)
        try:
            self.port = server.sockets[0].getsockname()[1]
            self._log.bind(host=self._host, port=self.port).info("mqtt listening")
            self._ready.set()
            await self._stop.wait()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:
                await asyncio.wait(self._connections, timeout=5.0)
            await server.wait_closed()
            self._log.info("mqtt stopped")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await MqttConnection(
                self._service, reader, writer, max_message_bytes=self._max,
                commit_timeout_s=self._commit_timeout, connect_timeout_s=self._connect_timeout,
                link_connected=self._link_connected, polls=self._polls,
            ).run()
        finally:
            self._connections.discard(task)
