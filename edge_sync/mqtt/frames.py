"""The packets of one MQTT connection cut out of the bytes read from its socket, and decoded by
amqtt's codec from memory, not from the stream byte by byte.

The connection reads what its socket has (up to ``read_size`` bytes at a time) and feeds it
here; ``next`` hands out each complete packet as it is in the buffer. amqtt decodes everything:
the fixed header (type, flags and the remaining-length varint: ``MQTTFixedHeader.from_stream``),
a PUBLISH's variable header (``PublishVariableHeader.from_stream``: topic, packet id; its payload
is the rest of the packet, as amqtt's ``PublishPayload`` reads it) and any other packet
(``from_stream`` of its class). Its decoders are coroutines reading a ``ReaderAdapter``; over
bytes in memory they never wait, so they are run to their end at once (``_run``), without a
loop, a task or a timer.

A fixed header of two bytes (a packet of at most 127 bytes after it: the usual telemetry
publish) is remembered once decoded: the same two bytes always decode the same way, and a
connection publishing the same way sends the same two bytes again and again. Likewise a PUBLISH
whose topic is in the same bytes as the last topic amqtt decoded on the connection has that
topic (the packet id after it is read with amqtt's ``bytes_to_int``).

The fixed header is the same in MQTT 5: an MQTT 5 connection's packets are cut here too, and
decoded whole (``Frame.head`` to ``Frame.end``) by the ``mqtt5`` package (mqtt/codec.py).

A packet larger than ``max_body`` is refused (``Oversize``) as soon as its fixed header is in
the buffer, before its body is: at most one read of ``read_size`` bytes (no more than the limit)
is buffered beyond its header. A fixed header or packet amqtt cannot decode raises
``Malformed``.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, TypeVar

from amqtt.adapters import ReaderAdapter
from amqtt.codecs_amqtt import bytes_to_int
from amqtt.errors import AMQTTError, CodecError, MQTTError, NoDataError
from amqtt.mqtt import packet_dict
from amqtt.mqtt.packet import MQTTFixedHeader
from amqtt.mqtt.publish import PublishPacket, PublishVariableHeader

__all__ = ["READ_SIZE", "Frame", "FrameReader", "Malformed", "Oversize"]

T = TypeVar("T")

READ_SIZE = 65536
"""The most bytes read from a socket at once (less when ``max_body`` is smaller)."""

_QOS_FLAG = PublishPacket.QOS_FLAG
_HEADER_CACHE_MAX = 4096
_headers: dict[bytes, tuple[int, int, int, MQTTFixedHeader]] = {}
"""Two-byte fixed headers decoded so far -> (type, flags, remaining length, the header). Shared
by every connection (of every server in the process): a dict's get and set are atomic, and an
entry never changes once made; the header objects are only read."""


class Malformed(Exception):
    """Bytes the connection's codec cannot decode (amqtt's as MQTT 3.1.1, the ``mqtt5``
    package's as MQTT 5)."""


class Oversize(Exception):
    """A packet whose remaining length is above the limit (its body is not read)."""

    def __init__(self, length: int, limit: int) -> None:
        super().__init__(f"packet of {length} bytes is larger than the limit of {limit} bytes "
                         "(mqtt.max_message_bytes)")
        self.length = length


class _Memory(ReaderAdapter):
    """amqtt's reader over bytes in memory, from ``pos`` up to ``end``: a read never waits, and
    at the end it returns fewer bytes than asked for (amqtt's ``read_or_raise`` makes that a
    NoDataError)."""

    __slots__ = ("data", "end", "pos")

    def __init__(self) -> None:
        self.data = b""
        self.pos = 0
        self.end = 0

    def at(self, data: bytes, pos: int, end: int) -> _Memory:
        self.data, self.pos, self.end = data, pos, end
        return self

    async def read(self, n: int = -1) -> bytes:
        pos = self.pos
        stop = self.end if n < 0 else min(pos + n, self.end)
        self.pos = stop
        return self.data[pos:stop]

    def feed_eof(self) -> None:
        pass


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """An amqtt decoder over ``_Memory`` run to its end: it never awaits anything that waits."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise RuntimeError("amqtt's decoder waited while reading bytes in memory")


class Frame:
    """One complete packet in the buffer: ``data[start:end]`` is its body (after the fixed
    header), ``data[head:end]`` the whole packet (what an MQTT 5 codec decodes)."""

    __slots__ = ("data", "end", "flags", "head", "header", "kind", "start")

    def __init__(self, kind: int, flags: int, header: MQTTFixedHeader, data: bytes, start: int,
                 end: int, head: int = 0) -> None:
        self.kind = kind
        self.head = head
        self.flags = flags
        self.header = header
        self.data = data
        self.start = start
        self.end = end


class FrameReader:
    """The bytes read from one connection and not yet decoded; the server's loop thread."""

    __slots__ = ("_data", "_max", "_memory", "_pos", "_topic", "read_size")

    def __init__(self, max_body: int) -> None:
        self._max = max_body
        self._data = b""
        self._pos = 0
        self._memory = _Memory()
        self._topic: tuple[bytes, str] | None = None
        self.read_size = max(16, min(READ_SIZE, max_body))

    def __len__(self) -> int:
        """Bytes buffered, not yet handed out."""
        return len(self._data) - self._pos

    def feed(self, data: bytes) -> None:
        rest = len(self._data) - self._pos
        self._data = self._data[self._pos:] + data if rest else data
        self._pos = 0

    def next(self) -> Frame | None:
        """The next complete packet, taken off the buffer; None until all of it is there.
        Oversize: its header says it is larger than the limit. Malformed: its fixed header
        cannot be decoded."""
        data, pos = self._data, self._pos
        size = len(data)
        if size - pos < 2:
            return None
        key = data[pos:pos + 2]
        known = _headers.get(key)
        if known is not None:
            kind, flags, length, header = known
            start = pos + 2
        else:
            memory = self._memory.at(data, pos, size)
            try:
                decoded = _run(MQTTFixedHeader.from_stream(memory))
            except (MQTTError, CodecError, AMQTTError) as exc:
                raise Malformed(f"fixed header: {exc}") from exc
            if decoded is None:  # the header is not all there yet
                return None
            header = decoded
            kind, flags, length = header.packet_type, header.flags, header.remaining_length
            start = memory.pos
            if start - pos == 2 and len(_headers) < _HEADER_CACHE_MAX:
                _headers[key] = (kind, flags, length, header)
        if length > self._max:
            raise Oversize(length, self._max)
        end = start + length
        if end > size:
            return None
        self._pos = end
        return Frame(kind, flags, header, data, start, end, pos)

    def publish(self, frame: Frame) -> tuple[str, int, int, bytes]:
        """A PUBLISH's topic, QoS (3: malformed, for the caller to refuse), packet id (0 at QoS
        0) and payload. A topic in the same bytes as the last one amqtt decoded on this
        connection (its two length bytes and the name: a client publishes on few topics) is
        that topic again; the packet id after it is read with amqtt's ``bytes_to_int``."""
        data, start, end = frame.data, frame.start, frame.end
        qos = (frame.flags & _QOS_FLAG) >> 1
        last = self._topic
        if last is not None and data.startswith(last[0], start, end):
            pos = start + len(last[0])
            if qos:
                if pos + 2 > end:
                    raise Malformed("PUBLISH: no packet id")
                return last[1], qos, bytes_to_int(data[pos:pos + 2]), data[pos + 2:end]
            return last[1], qos, 0, data[pos:end]
        memory = self._memory.at(data, start, end)
        try:
            variable = _run(PublishVariableHeader.from_stream(memory, frame.header))
        except (NoDataError, MQTTError, CodecError, AMQTTError) as exc:
            raise Malformed(f"PUBLISH: {exc}") from exc
        topic_end = memory.pos - (2 if qos else 0)
        self._topic = (data[start:topic_end], variable.topic_name)
        return variable.topic_name, qos, variable.packet_id or 0, data[memory.pos:end]

    def packet(self, frame: Frame) -> Any:
        """Any packet of MQTT 3.1.1 (amqtt's class of its type)."""
        cls = packet_dict.get(frame.kind)
        if cls is None:
            raise Malformed(f"packet of type {frame.kind}")
        memory = self._memory.at(frame.data, frame.start, frame.end)
        header = MQTTFixedHeader(frame.kind, frame.flags, frame.end - frame.start)  # its own
        try:
            return _run(cls.from_stream(memory, fixed_header=header))
        except (NoDataError, MQTTError, CodecError, AMQTTError) as exc:
            raise Malformed(f"packet of type {frame.kind}: {exc}") from exc
