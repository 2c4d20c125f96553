"""A gRPC server on 127.0.0.1 (port 0) serving one EdgeRpcService servicer, as the test
stand-ins for a cloud (tests.helpers.fake_peer, tests.helpers.tb_server) run it: keepalive
pings permitted as a ThingsBoard server permits them, and the inbound limit enforced when given.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from edge_sync.proto import edge_pb2_grpc


def serve_on_loopback(servicer: edge_pb2_grpc.EdgeRpcServiceServicer, *, name: str,
                      max_inbound: int | None = None) -> tuple[grpc.Server, int]:
    """Start the server; (the server, its port)."""
    options: list[tuple[str, Any]] = [("grpc.http2.min_ping_interval_without_data_ms", 1000),
                                      ("grpc.keepalive_permit_without_calls", 1)]
    if max_inbound is not None:
        options.append(("grpc.max_receive_message_length", max_inbound))
    server = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix=name),
                         options=options)
    edge_pb2_grpc.add_EdgeRpcServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    assert port, f"{name}: no port"
    server.start()
    return server, port
