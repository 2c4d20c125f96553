"""The device MQTT server as a supervised child: one thread running one asyncio loop that
accepts every connection (asyncio streams, no thread per connection), as the HTTP APIs do, on
a plain listener (``mqtt.port``), a TLS one (``mqtt.tls.port``), or both, as ThingsBoard runs
1883 and 8883 side by side. It owns the clients' sessions (mqtt/registry.py): kept in memory
for clean-session-false clients, dropped past ``mqtt.session_expiry_s`` (checked every minute
at most) or beyond ``mqtt.max_sessions``, and lost when the server stops or restarts (counted,
with the messages they kept, and told in one line: registry.stopped). A commit
that changes or removes a device's access token, or removes the device, closes the device's
connections at once (the device service tells the registry, which closes them on this loop).

The thread's lifecycle (start once bound, stop from any thread, an unexpected end reported to
the supervisor) is edge_sync.common.loop_thread's. Stopping closes the listeners and every
connection (acknowledgements not yet due are not sent: their publishes may still commit, and
the client resends them).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from edge_sync.api.device_service import DeviceService
from edge_sync.common.loop_thread import LoopThreadServer
from edge_sync.devices.subscribers import LongPoll
from edge_sync.metrics import Metrics
from edge_sync.mqtt.connection import Limits, MqttConnection
from edge_sync.mqtt.registry import SessionRegistry
from edge_sync.mqtt.sessions import SessionStore
from edge_sync.mqtt.subscriptions import DRAIN_S
from edge_sync.storage.entity_store import Revoked
from edge_sync.supervisor import ExitReporter

SWEEP_MAX_S = 60.0
"""The longest pause between two checks for expired sessions."""
SWEEP_MIN_S = 1.0
"""The shortest: a tiny mqtt.session_expiry_s does not make the check spin."""

CLOSE_MARGIN_S = 1.0
"""Beyond the longest a connection takes to end (mqtt/connection.Limits.close_s): how long a
newer connection of the same client id waits for the older one to give its session back
(close_s + this), and how long stopping waits for connections, which, cancelled, wait for
what their subscriptions were given only (subscriptions.DRAIN_S + this)."""

KEEPALIVE_PROBES = (("TCP_KEEPIDLE", 60), ("TCP_KEEPINTVL", 10), ("TCP_KEEPCNT", 6))
"""TCP keep-alive on every accepted socket (SO_KEEPALIVE), where the platform has these
options: probes after 60 s without traffic, 10 s apart, the connection dropped after 6 unanswered
(about 2 minutes). What finds a vanished client that connected with MQTT keep-alive 0, which the
server never times out; a client with a keep-alive is timed out by it first."""


@dataclass(frozen=True, slots=True)
class Listener:
    host: str
    port: int
    context: ssl.SSLContext | None = None
    """TLS: the server's SSL context (mqtt/tls.py)."""


class MqttServer(LoopThreadServer):
    def __init__(
        self,
        service: DeviceService,
        *,
        plain: Listener | None,
        tls: Listener | None = None,
        limits: Limits,
        max_sessions: int,
        session_expiry_s: float,
        max_unacked_per_session: int,
        link_connected: Callable[[], bool] | None = None,
        on_pause: Callable[[], None] | None = None,
        report_exit: ExitReporter | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """``metrics``: where the sessions' counters are registered (mqtt/registry.py); a
        registry of the server's own when None."""
        first = plain or tls
        assert first is not None, "no listener"
        super().__init__("mqtt", host=first.host, port=first.port, thread_name="mqtt",
                         report_exit=report_exit)
        self._service = service
        self._plain = plain
        self._tls = tls
        self._limits = limits
        self._link_connected = link_connected
        self._on_pause = on_pause
        self._expiry = session_expiry_s
        self.registry = SessionRegistry(
            SessionStore(max_kept=max_sessions, expiry_s=session_expiry_s,
                         unacked_limit=max_unacked_per_session),
            takeover_timeout_s=limits.close_s + CLOSE_MARGIN_S, metrics=metrics,
            lost=service.rpc_unsent)
        self.tls_port = 0
        self._connections: set[asyncio.Task[None]] = set()
        self._live: set[MqttConnection] = set()
        self._polls: set[LongPoll] = set()  # attribute requests waiting for the cloud

    @property
    def connections(self) -> int:
        return len(self._connections)

    @property
    def results_pending(self) -> int:
        """What the devices' sessions took for the subscriptions of the open connections and
        have not handed over yet (read on any thread: a snapshot)."""
        return sum(c.results_pending for c in list(self._live))

    @property
    def unacked(self) -> int:
        """QoS 1 messages the sessions of the open connections keep for their clients, awaiting
        their PUBACK (read on any thread: a snapshot)."""
        return sum(c.unacked for c in list(self._live))

    async def _serve(self) -> None:
        servers: list[asyncio.Server] = []
        sweeper: asyncio.Task[None] | None = None
        unwatch = self._service.watch_access(self._revoked(asyncio.get_running_loop()))
        try:
            if self._plain is not None:
                servers.append(await self._listen(self._plain))
                self.port = servers[-1].sockets[0].getsockname()[1]
            if self._tls is not None:
                servers.append(await self._listen(self._tls))
                self.tls_port = servers[-1].sockets[0].getsockname()[1]
                self._log.bind(host=self._tls.host, port=self.tls_port).info(
                    "mqtt listening with TLS")
                if self._plain is None:
                    self.port = self.tls_port
            self._listening()
            sweeper = asyncio.create_task(self._sweep())
            await self._stop.wait()
        finally:
            unwatch()
            if sweeper is not None:
                sweeper.cancel()
            for server in servers:
                server.close()
            for task in list(self._connections):
                task.cancel()
            if self._connections:  # cancelled, a connection waits for its subscriptions only
                await asyncio.wait(self._connections, timeout=DRAIN_S + CLOSE_MARGIN_S)
            self.registry.stopped()  # the sessions kept are lost: counted, one line
            for server in servers:
                await server.wait_closed()
            self._log.info("mqtt stopped")

    def _revoked(self, loop: asyncio.AbstractEventLoop) -> Callable[[Revoked], None]:
        """What the device service's token cache tells (on the committing thread) about
        devices whose token changed or went, or that were removed: handed to the registry on
        this server's loop, which closes their connections (mqtt/registry.py)."""

        def tell(revoked: Revoked) -> None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: no connection left
                loop.call_soon_threadsafe(self.registry.revoke, revoked)

        return tell

    async def _listen(self, listener: Listener) -> asyncio.Server:
        return await asyncio.start_server(
            self._accept, listener.host, listener.port, reuse_address=True, backlog=1024,
            ssl=listener.context,
            ssl_handshake_timeout=self._limits.connect_timeout_s if listener.context else None)

    async def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(min(self._expiry, SWEEP_MAX_S), SWEEP_MIN_S))
            self.registry.expire(loop.time())

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        keep_alive(writer)
        connection: MqttConnection | None = None
        try:
            connection = MqttConnection(
                self._service, reader, writer, limits=self._limits, registry=self.registry,
                link_connected=self._link_connected, polls=self._polls, on_pause=self._on_pause)
            self._live.add(connection)
            await connection.run()
        except asyncio.CancelledError:
            # the server stops and the connection has ended; a task left cancelled would make
            # asyncio's stream callback (Python 3.11) log an "Exception in callback" for it
            pass
        finally:
            self._connections.discard(task)
            if connection is not None:
                self._live.discard(connection)
            with contextlib.suppress(Exception):
                writer.close()


def keep_alive(writer: asyncio.StreamWriter) -> None:
    """SO_KEEPALIVE on the connection's socket, with KEEPALIVE_PROBES' timing where the platform
    has those options (the system's defaults, two hours idle on Linux, otherwise)."""
    sock = writer.get_extra_info("socket")
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE_PROBES:
            option = getattr(socket, name, None)
            if option is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, value)
