"""The device MQTT server as a supervised child: one thread running one asyncio loop that
accepts every connection (asyncio streams, no thread per connection), as the HTTP APIs do.

The thread's lifecycle (start once bound, stop from any thread, an unexpected end reported to
the supervisor) is edge_sync.common.loop_thread's. Stopping closes the listener and every
connection (PUBACKs not yet due are not sent: their publishes may still commit, and the client
resends them).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from edge_sync.api.device_service import DeviceService
from edge_sync.common.loop_thread import LoopThreadServer
from edge_sync.devices.subscribers import LongPoll
from edge_sync.mqtt.connection import MqttConnection
from edge_sync.supervisor import ExitReporter


class MqttServer(LoopThreadServer):
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
        super().__init__("mqtt", host=host, port=port, thread_name="mqtt", report_exit=report_exit)
        self._service = service
        self._link_connected = link_connected
        self._max = max_message_bytes
        self._commit_timeout = commit_timeout_s
        self._connect_timeout = connect_timeout_s
        self._connections: set[asyncio.Task[None]] = set()
        self._polls: set[LongPoll] = set()  # attribute requests waiting for the cloud

    async def _serve(self) -> None:
        server = await asyncio.start_server(self._accept, self._host, self._requested_port,
                                            reuse_address=True, backlog=1024)
        try:
            self.port = server.sockets[0].getsockname()[1]
            self._listening()
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
