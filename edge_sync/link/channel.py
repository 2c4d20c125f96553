"""The gRPC side of the link: the channel (keepalive, TLS, message sizes) and one bidi stream,
whose responses a dedicated reader thread hands to a callback. Nothing here decides anything:
the ConnectionActor does.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf.message import DecodeError

from edge_sync.config import CloudLinkConfig
from edge_sync.errors import ConfigError
from edge_sync.link.peer_text import MAX_LOGGED_ERROR_CHARS, one_line
from edge_sync.logsetup import mark_told
from edge_sync.proto import edge_pb2

METHOD = "/edge.EdgeRpcService/handleMsgs"

_CLOSE = object()


def make_channel(cfg: CloudLinkConfig) -> grpc.Channel:
    target = f"{cfg.rpc.host}:{cfg.rpc.port}"
    ka = cfg.keepalive
    options = [
        ("grpc.keepalive_time_ms", int(ka.time_s * 1000)),
        ("grpc.keepalive_timeout_ms", int(ka.timeout_s * 1000)),
        # grpcio waits for a ping's answer ping_timeout_ms (60 s by default), whatever the
        # keepalive timeout says: without this a half-open link is noticed after a minute.
        ("grpc.http2.ping_timeout_ms", int(ka.timeout_s * 1000)),
        ("grpc.keepalive_permit_without_calls", 1 if ka.permit_without_calls else 0),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.max_receive_message_length", cfg.rpc.max_inbound_message_size),
        ("grpc.max_send_message_length", -1),
        # Reconnection pacing is the ConnectionActor's job; keep gRPC's own short.
        ("grpc.initial_reconnect_backoff_ms", 200),
        ("grpc.max_reconnect_backoff_ms", 1000),
        # Not a backoff: gRPC's subchannel gives each connection attempt (TCP connect, TLS
        # handshake, HTTP/2 preface) max(its next backoff delay, this) before it shuts the
        # attempt down (Subchannel::StartConnectingLocked). At 200 ms a TLS handshake on a
        # loaded host or over a link with a round trip near 100 ms was cut short and reported
        # as "Handshake read failed (Endpoint closing)", hiding its real outcome (a certificate
        # the edge does not trust, say), or never connected at all. The attempt gets the
        # edge's own connect deadline, cloud.rpc.timeout_ms, instead. (ThingsBoard Edge's
        # EdgeGrpcClient.connect sets no connect limit: Netty's default is 30 s.)
        ("grpc.min_reconnect_backoff_ms", cfg.rpc.timeout_ms),
        ("grpc.enable_retries", 0),
    ]
    if cfg.rpc.ssl_enabled:
        root = None
        if cfg.rpc.ssl_cert is not None:
            try:
                root = cfg.rpc.ssl_cert.read_bytes()
            except OSError as exc:
                raise ConfigError(f"cloud.rpc.ssl_cert: cannot read {cfg.rpc.ssl_cert}: {exc}") from exc
        return grpc.secure_channel(target, grpc.ssl_channel_credentials(root_certificates=root),
                                   options=options)
    return grpc.insecure_channel(target, options=options)


class Stream:
    """One handleMsgs call. send() from the actor's thread; responses and the end of the stream
    are delivered by the reader thread to on_response / on_end (which only tell the actor).

    A response that is not a valid ResponseMsg is told to on_undecodable (the stream id and
    the decoder's error, on gRPC's thread) before gRPC ends the call (INTERNAL, "Exception
    deserializing response!"): the actor counts and logs it, so gRPC's own record of it is
    not forwarded to the log (logsetup.mark_told)."""

    def __init__(
        self,
        stream_id: int,
        channel: grpc.Channel,
        *,
        on_response: Callable[[int, Any], None],
        on_end: Callable[[int, str, str], None],
        on_undecodable: Callable[[int, str], None] | None = None,
    ) -> None:
        self.id = stream_id
        self._outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._on_response = on_response
        self._on_end = on_end
        self._on_undecodable = on_undecodable
        # edge_pb2_grpc.EdgeRpcServiceStub's call, with a decoder that tells what it refuses
        handle_msgs = channel.stream_stream(
            METHOD, request_serializer=edge_pb2.RequestMsg.SerializeToString,
            response_deserializer=self._decode)
        self._call = handle_msgs(self._requests())
        self._closed = False
        self._reader = threading.Thread(target=self._read, name=f"link-reader-{stream_id}",
                                        daemon=True)
        self._reader.start()

    def _decode(self, data: bytes) -> edge_pb2.ResponseMsg:
        """gRPC's thread: a response's bytes as a ResponseMsg. Bytes that are not one are told
        (``on_undecodable``), and the DecodeError goes on to gRPC, which ends the call."""
        try:
            msg: edge_pb2.ResponseMsg = edge_pb2.ResponseMsg.FromString(data)
        except DecodeError as exc:
            if self._on_undecodable is not None:
                self._on_undecodable(self.id, one_line(f"{type(exc).__name__}: {exc}",
                                                       MAX_LOGGED_ERROR_CHARS))
                mark_told(exc)
            raise
        return msg

    def _requests(self) -> Iterator[edge_pb2.RequestMsg]:
        """gRPC's sending thread pulls from here."""
        while True:
            item = self._outbox.get()
            if item is _CLOSE:
                return
            yield item

    def send(self, msg: edge_pb2.RequestMsg) -> None:
        if not self._closed:
            self._outbox.put(msg)

    def close(self) -> None:
        """End the stream from our side (cancels the call; the reader reports the end)."""
        if self._closed:
            return
        self._closed = True
        self._outbox.put(_CLOSE)
        self._call.cancel()

    def _read(self) -> None:
        """The reader thread: iterate responses, report each, then report the end."""
        code, detail = "OK", "stream ended by the cloud"
        try:
            for response in self._call:
                self._on_response(self.id, response)
        except grpc.RpcError as exc:
            status = exc.code() if hasattr(exc, "code") else None
            code = status.name if status is not None else "UNKNOWN"
            detail = (exc.details() if hasattr(exc, "details") else str(exc)) or code
        except Exception as exc:  # a bug must still end the stream visibly
            code, detail = "INTERNAL", repr(exc)
        self._on_end(self.id, code, one_line(detail, MAX_LOGGED_ERROR_CHARS))  # the peer's text
