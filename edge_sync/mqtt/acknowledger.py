"""The loop side of one connection's acknowledgements (mqtt/acks.py holds their order): commit
outcomes arriving from the committing actors' threads, the acknowledgements sent as they fall
due, the commit timeout of the oldest waiting publish, and the inflight cap that pauses the
connection's reading.

Outcomes are handed over in a list, and the loop is woken once for all the outcomes that
arrive together (a group commit settles many publishes at once), not once per publish. The
publishes of one read burst that went to the store as one command (mqtt/burst.py) are one entry
waiting on its one commit: one done callback for all of them. The acknowledgements that fall
due together are written in one write; each frame is the fixed header amqtt encodes for its
kind (computed once) followed by the packet id. An MQTT 5 PUBACK with a reason code (0x90,
0x99) is encoded by the ``mqtt5`` package.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import mqtt5
from amqtt.mqtt.puback import PubackPacket
from amqtt.mqtt.pubcomp import PubcompPacket
from amqtt.mqtt.pubrec import PubrecPacket

from edge_sync.mqtt.acks import AckQueue, Pending, Reply

__all__ = ["Acknowledger", "frame"]

_BUILD = {Reply.PUBACK: PubackPacket.build, Reply.PUBREC: PubrecPacket.build,
          Reply.PUBCOMP: PubcompPacket.build}
_HEADERS = {reply: bytes(build(0).to_bytes())[:2] for reply, build in _BUILD.items()}
"""The fixed header amqtt encodes for each reply (type and remaining length 2); the packet id
follows it, big-endian (MQTT 3.1.1 §2.3.1)."""


_REASONS = {Reply.PUBACK_TOPIC_INVALID: mqtt5.PubAckReasonCode.TOPIC_NAME_INVALID,
            Reply.PUBACK_PAYLOAD_INVALID: mqtt5.PubAckReasonCode.PAYLOAD_FORMAT_INVALID}
"""The MQTT 5 PUBACKs with a reason code (only ever owed on an MQTT 5 connection)."""


def frame(reply: Reply, packet_id: int) -> bytes:
    """The frame of ``reply`` for ``packet_id``: what amqtt's ``build(packet_id).to_bytes()``
    encodes (tests/unit/test_mqtt_frames.py checks every id), without building a packet; an
    MQTT 5 PUBACK with a reason code as the ``mqtt5`` package encodes it."""
    header = _HEADERS.get(reply)
    if header is None:
        return mqtt5.PubAckPacket(packet_id, reason_code=_REASONS[reply]).write()
    return header + packet_id.to_bytes(2, "big")


class Acknowledger:
    """The server's loop thread only, but for ``_committed`` (any thread). An idle connection's
    holds two empty lists: the futures it waits on are made when it waits."""

    __slots__ = ("_acks", "_closed", "_commit_timeout", "_drained", "_fail", "_failed", "_loop",
                 "_lost", "_max", "_orphans", "_outcomes", "_room", "_send", "_timer",
                 "_wake_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, *, send: Callable[[bytes], None],
                 fail: Callable[[Pending, str], None], commit_timeout_s: float,
                 max_inflight: int, lost: Callable[[Pending], None] | None = None) -> None:
        self._loop = loop
        self._send = send  # writes frames
        # publishes were not committed (any QoS): the connection closes without their replies
        # or any after them; told once per failed entry, with why
        self._fail = fail
        # publishes owed when the connection closed whose commit failed, then or later: never
        # answered, told once per entry (counted as not committed)
        self._lost = lost
        self._orphans: dict[int, Pending] = {}  # by id: owed at close, outcome not known yet
        self._commit_timeout = commit_timeout_s
        self._max = max_inflight
        self._acks = AckQueue()
        # appended by the committing threads, taken by the loop (list operations are atomic)
        self._outcomes: list[tuple[Pending, BaseException | None]] = []
        self._wake_scheduled = False
        self._timer: asyncio.TimerHandle | None = None
        self._room: asyncio.Future[None] | None = None  # while room() waits
        self._drained: asyncio.Future[None] | None = None  # while drain() waits
        self._closed = False
        self._failed = False

    def __len__(self) -> int:
        """Publishes accepted and not yet acknowledged."""
        return len(self._acks)

    @property
    def full(self) -> bool:
        return len(self._acks) >= self._max

    def expect(self, reply: Reply, packet_id: int, committed: Future[Any]) -> None:
        """``reply`` is due once ``committed`` completes (and all before it are sent)."""
        self.expect_all(((reply, packet_id),), committed)

    def expect_all(self, replies: Sequence[tuple[Reply, int]], committed: Future[Any]) -> None:
        """Each of ``replies`` (publishes stored by one command) is due once ``committed``
        completes, in their order, after all before them."""
        entry = self._acks.add_all(replies, self._loop.time() + self._commit_timeout)
        committed.add_done_callback(lambda done: self._committed(entry, done))
        if self._timer is None:
            self._arm_timer()

    def now(self, reply: Reply, packet_id: int) -> None:
        """``reply`` is due once all before it are sent."""
        self._acks.add_settled(reply, packet_id)
        self.send_due()

    async def room(self) -> None:
        """Return once fewer than ``max_inflight`` publishes wait (or a commit failed, or the
        connection ends)."""
        if self.full and not (self._closed or self._failed):
            self._room = self._loop.create_future()
            try:
                await self._room
            finally:
                self._room = None

    async def drain(self, timeout: float) -> None:
        """Wait (up to ``timeout``) until every reply owed is sent or the connection failed."""
        if self._acks and not (self._closed or self._failed):
            self._drained = self._loop.create_future()
            try:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._drained, timeout)
            finally:
                self._drained = None

    def close(self) -> list[Pending]:
        """The connection ends: nothing more is sent; what was still owed. Its entries whose
        commit failed go to ``lost``: at once when known, else when their outcome comes."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        _wake(self._room)
        _wake(self._drained)
        owed = self._acks.drain()
        if self._lost is not None:
            for entry in owed:
                if not entry.settled:
                    self._orphans[id(entry)] = entry
                elif entry.error is not None:
                    self._lost(entry)
        return owed

    def _committed(self, entry: Pending, done: Future[Any]) -> None:
        """Any thread (the committing actor's)."""
        error = done.exception() if not done.cancelled() else asyncio.CancelledError()
        self._outcomes.append((entry, error))
        if not self._wake_scheduled:
            self._wake_scheduled = True
            with contextlib.suppress(RuntimeError):  # the loop has closed: nobody listens
                self._loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        self._wake_scheduled = False
        outcomes = self._outcomes
        taken = outcomes[:]
        del outcomes[:len(taken)]  # what a committing thread appended meanwhile stays
        for entry, error in taken:
            entry.settle(error)
            orphan = self._orphans.pop(id(entry), None) if self._orphans else None
            if orphan is not None and entry.error is not None and self._lost is not None:
                self._lost(entry)
        self.send_due()

    def send_due(self) -> None:
        """Send the replies now due, in order, in one write. A failed commit, of publishes at
        any QoS, goes to ``fail`` (which closes the connection: nothing is sent after it)."""
        frames: list[bytes] = []
        headers = _HEADERS
        while (entry := self._acks.pop_due()) is not None:
            if entry.error is not None:
                if frames:  # what was due before it still goes out
                    self._send(b"".join(frames))
                    frames = []
                self._failed_entry(entry, f"not committed: {_reason(entry.error)}")
            elif not self._failed:
                for reply, packet_id in entry.replies:
                    if reply:  # not Reply.NONE
                        header = headers.get(reply)
                        frames.append(header + packet_id.to_bytes(2, "big") if header is not None
                                      else frame(reply, packet_id))
        if frames:
            self._send(b"".join(frames))
        if not self.full:
            _wake(self._room)
        if not self._acks:
            _wake(self._drained)
        if self._timer is None:
            self._arm_timer()

    def _arm_timer(self) -> None:
        deadline = self._acks.next_deadline()
        if deadline is not None and not self._closed:
            self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        entry = self._acks.pop_overdue(self._loop.time())
        if entry is None:
            self._arm_timer()
        else:
            self._failed_entry(entry, "not confirmed in time")

    def _failed_entry(self, entry: Pending, reason: str) -> None:
        """The commit of ``entry`` failed (or was not confirmed in time), whatever the QoS of
        its publishes (as ThingsBoard's getPubAckCallback.onError closes the connection for
        any publish): nothing is sent any more; the connection is told (it closes) and stops
        waiting."""
        self._failed = True
        self._fail(entry, reason)
        _wake(self._room)
        _wake(self._drained)


def _wake(waiter: asyncio.Future[None] | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


def _reason(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__
