"""MQTT 3.1.1 packets built by hand, byte by byte, on a plain socket: for what a well-behaved
client library never does (the same QoS 2 packet id twice before its PUBREL, a will message
followed by a dropped connection, an empty client id with clean session 0) and for reading
exactly what the server answered (CONNACK's session-present flag, PUBREC, PUBCOMP). Packets are
encoded here, independently of the codec the server uses.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass

__all__ = ["PINGREQ", "Packet", "RawClient", "connect_packet", "id_packet", "publish_packet"]

CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 2, 3, 4, 5, 6, 7
SUBACK, PINGRESP = 9, 13
PINGREQ = b"\xc0\x00"
"""A PINGREQ packet. Its PINGRESP is written as soon as the server reads it, not after any
commit: a client that reads it knows the server has taken every packet it sent before."""


def _string(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return len(raw).to_bytes(2, "big") + raw


def _length(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _length(len(body)) + body


def connect_packet(client_id: str, username: str | None, *, clean: bool = True,
                   keep_alive: int = 60, will: tuple[str, bytes] | None = None,
                   password: bytes | None = None) -> bytes:
    """CONNECT; ``username`` None: without the username flag, ``password`` with the password
    flag."""
    flags = (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    flags |= 0x02 if clean else 0
    payload = _string(client_id)
    if will is not None:
        flags |= 0x04  # will flag, QoS 0, not retained
        payload += _string(will[0]) + _string(will[1])
    if username is not None:
        payload += _string(username)
    if password is not None:
        payload += _string(password)
    variable = _string("MQTT") + bytes([4, flags]) + keep_alive.to_bytes(2, "big")
    return _packet(0x10, variable + payload)


def publish_packet(topic: str, payload: bytes, *, qos: int = 0, packet_id: int = 0,
                   dup: bool = False, retain: bool = False) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = _string(topic) + (packet_id.to_bytes(2, "big") if qos else b"") + payload
    return _packet(first, body)


def id_packet(kind: int, packet_id: int) -> bytes:
    """PUBACK, PUBREC, PUBREL (flags 0b0010) or PUBCOMP."""
    return _packet((kind << 4) | (0x02 if kind == PUBREL else 0), packet_id.to_bytes(2, "big"))


@dataclass(frozen=True)
class Packet:
    kind: int
    flags: int
    body: bytes

    @property
    def packet_id(self) -> int:
        """Of PUBACK, PUBREC, PUBREL, PUBCOMP."""
        return int.from_bytes(self.body[:2], "big")


class RawClient:
    """One TCP connection to the server; every read has a deadline."""

    def __init__(self, port: int, *, timeout: float = 10.0, rcvbuf: int | None = None) -> None:
        """``rcvbuf``: a small receive buffer (SO_RCVBUF, set before connecting so the TCP
        window is small too), for a client that stops reading and should fill the server's
        buffers soon."""
        if rcvbuf is None:
            self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        else:
            self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            self.sock.settimeout(timeout)
            self.sock.connect(("127.0.0.1", port))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def connect(self, client_id: str, username: str | None, *, clean: bool = True,
                will: tuple[str, bytes] | None = None, keep_alive: int = 60,
                password: bytes | None = None) -> tuple[int, int]:
        """CONNECT, then (session present, return code) of the CONNACK."""
        self.send(connect_packet(client_id, username, clean=clean, will=will,
                                 keep_alive=keep_alive, password=password))
        packet = self.read()
        assert packet.kind == CONNACK, packet
        return packet.body[0] & 0x01, packet.body[1]

    def read(self) -> Packet:
        first = self._exactly(1)[0]
        multiplier, length = 1, 0
        while True:
            byte = self._exactly(1)[0]
            length += (byte & 0x7F) * multiplier
            multiplier *= 128
            if not byte & 0x80:
                break
        return Packet(first >> 4, first & 0x0F, self._exactly(length))

    def closed_by_server(self) -> bool:
        """True once the server closed the connection (reads until EOF)."""
        try:
            while self.sock.recv(4096):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _exactly(self, n: int) -> bytes:
        out = b""
        while len(out) < n:
            chunk = self.sock.recv(n - len(out))
            if not chunk:
                raise ConnectionError(f"closed by the server after {out!r}")
            out += chunk
        return out
