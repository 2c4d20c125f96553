"""The reference cloud assembled: its LMDB store, the gRPC server edges connect to (TLS
optional, keepalive policy admitting the edge's pings, message size limits) and the admin HTTP
API. `edge-cloud serve` and the tests start it the same way:

    server = CloudServer(cfg).start()     # binds; cfg.rpc.port / cfg.admin.port 0 pick free ports
    server.port, server.admin_port        # the bound ports
    server.service.create_edge("edge-1")  # (edge, secret, created): operations in-process
    server.rpc.submit(device, {"method": "m"}, oneway=True)  # server-side RPC in-process
    server.stop()
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from types import TracebackType
from typing import Any

import grpc
from loguru import logger

from edge_sync.clock import SYSTEM_CLOCK, Clock
from edge_sync.cloud.admin_http import CloudAdminApi
from edge_sync.cloud.counters import CloudCounters
from edge_sync.cloud.registry import StreamRegistry
from edge_sync.cloud.rpc_service import RpcService
from edge_sync.cloud.rpc_waiters import RpcWaiters
from edge_sync.cloud.service import CloudService
from edge_sync.cloud.servicer import EdgeRpcServicer
from edge_sync.cloud.session import LinkSettings
from edge_sync.cloud.store import CloudStore
from edge_sync.cloud.undecodable import UndecodableRequests
from edge_sync.common.admin_guard import check_bind
from edge_sync.common.http_host import HttpHost
from edge_sync.config import CloudConfig, EdgesRpcConfig
from edge_sync.errors import ConfigError, EdgeSyncError
from edge_sync.proto import edge_pb2

_log = logger.bind(component="cloud")

MAX_STREAMS = 64
"""Concurrent handleMsgs calls; each holds one worker thread while it lasts."""


def open_cloud_store(cfg: CloudConfig, *, readonly: bool = False) -> CloudStore:
    """The configured store (StorageError / StorageCorrupt / QueueFull on failure)."""
    return CloudStore(cfg.storage.data_dir, max_size_mb=cfg.storage.max_size_mb, readonly=readonly)


def grpc_options(rpc: EdgesRpcConfig) -> list[tuple[str, Any]]:
    permit_ms = int(rpc.keepalive_permit_time_s * 1000)
    return [
        ("grpc.max_receive_message_length", rpc.max_inbound_message_size),
        ("grpc.max_send_message_length", rpc.max_inbound_message_size),
        ("grpc.keepalive_permit_without_calls", 1 if rpc.permit_without_calls else 0),
        ("grpc.http2.min_ping_interval_without_data_ms", permit_ms),
        ("grpc.http2.min_time_between_pings_ms", permit_ms),
        ("grpc.so_reuseport", 0),  # a second server on the same port fails instead of sharing it
    ]


SERVICE = edge_pb2.DESCRIPTOR.services_by_name["EdgeRpcService"].full_name
"""The gRPC service the cloud serves (``edge.EdgeRpcService``), from the protocol's own
descriptor."""

class CloudServer:
    def __init__(self, cfg: CloudConfig, *, clock: Clock = SYSTEM_CLOCK,
                 store: CloudStore | None = None, link: LinkSettings | None = None) -> None:
        """``link`` overrides the stream settings derived from cfg (tests: shorter timeouts)."""
        refusal = check_bind("admin", cfg.admin.host, cfg.admin.token)
        if refusal is not None:
            raise ConfigError(refusal)
        self.cfg = cfg
        self.clock = clock
        self.store = store if store is not None else open_cloud_store(cfg)
        self.registry = StreamRegistry()
        self.service = CloudService(self.store, clock=clock, notify=self.registry.notify)
        self.settings = link or LinkSettings.from_config(cfg)
        self.counters = CloudCounters()
        self.counters.edges_connected(lambda: len(self.registry.snapshot()))
        self.service.attach_counters(self.counters)
        self.rpc = RpcService(self.service, RpcWaiters(self.counters), clock=clock)
        self.servicer = EdgeRpcServicer(self.service, self.registry, self.settings, clock=clock,
                                        counters=self.counters, rpc=self.rpc)
        self.undecodable = UndecodableRequests(self.counters.metrics, clock=clock)
        self.admin = CloudAdminApi(self.service, self.registry, status_extra=self._status_extra,
                                   token=cfg.admin.token, readiness=self._readiness,
                                   metrics=self.counters.metrics, rpc=self.rpc)
        self.port = 0
        self.admin_port = 0
        self._grpc: grpc.Server | None = None
        self._http: HttpHost | None = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> CloudServer:
        """Bind and serve. ConfigError when a port cannot be bound or the TLS files are unusable."""
        try:
            self._start_grpc()
            self._http = HttpHost("cloud-admin", self.admin.make_app, host=self.cfg.admin.host,
                                  port=self.cfg.admin.port).start()
            self.admin_port = self._http.port
        except EdgeSyncError as exc:
            self.stop()
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(str(exc)) from exc
        _log.bind(rpc_port=self.port, admin_port=self.admin_port, tls=self.cfg.rpc.ssl_enabled,
                  data_dir=str(self.store.path)).info("cloud serving")
        return self

    def _start_grpc(self) -> None:
        rpc = self.cfg.rpc
        server = grpc.server(
            ThreadPoolExecutor(max_workers=MAX_STREAMS + 8, thread_name_prefix="cloud-rpc"),
            options=grpc_options(rpc),
            maximum_concurrent_rpcs=MAX_STREAMS,
        )
        # edge_pb2_grpc.add_EdgeRpcServiceServicer_to_server, with a request decoder that
        # counts what it refuses and logs it at most once a minute (cloud/undecodable.py)
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
            SERVICE, {"handleMsgs": grpc.stream_stream_rpc_method_handler(
                self.servicer.handleMsgs, request_deserializer=self.undecodable.decode,
                response_serializer=edge_pb2.ResponseMsg.SerializeToString)}),))
        address = f"{rpc.host}:{rpc.port}"
        try:
            if rpc.ssl_enabled:
                assert rpc.ssl_cert is not None and rpc.ssl_key is not None
                creds = grpc.ssl_server_credentials(
                    [(rpc.ssl_key.read_bytes(), rpc.ssl_cert.read_bytes())])
                port = server.add_secure_port(address, creds)
            else:
                port = server.add_insecure_port(address)
        except OSError as exc:
            raise ConfigError(f"rpc.ssl_cert / rpc.ssl_key: cannot read: {exc}") from exc
        except RuntimeError as exc:
            raise ConfigError(f"rpc: cannot listen on {address}: {exc}") from exc
        if not port:
            raise ConfigError(f"rpc: cannot listen on {address} (port in use?)")
        server.start()
        self._grpc, self.port = server, port

    def stop(self, *, grace_s: float = 2.0) -> None:
        """Stop serving: end every stream, stop the admin API, close the store. Idempotent."""
        with self._stop_lock:
            if self._stopped.is_set():
                return
            self._stopped.set()
        self.registry.end_all("cloud stopping")
        if self._grpc is not None:
            self._grpc.stop(grace_s).wait(grace_s + 5)
            if not self.servicer.wait_finished(timeout=5.0):
                _log.warning("some streams did not finish within 5 s of the stop")
        if self._http is not None:
            self._http.stop()
        self.undecodable.close()
        self.store.close()
        _log.info("cloud stopped")

    def wait(self, timeout: float | None = None) -> bool:
        """Block until stop() was called (True) or the timeout passed."""
        return self._stopped.wait(timeout)

    def __enter__(self) -> CloudServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def _readiness(self) -> dict[str, bool]:
        return {"rpc": self._grpc is not None and not self._stopped.is_set(),
                "store": not self._stopped.is_set()}

    def _status_extra(self) -> dict[str, Any]:
        return {"rpc": {"host": self.cfg.rpc.host, "port": self.port, "tls": self.cfg.rpc.ssl_enabled,
                        "streams": self.servicer.active()}}
