"""mqtt/acknowledger.py on a real loop, without a server: the publishes of one command (a read
burst) are acknowledged together once its commit completes, in order, in one write; a failed
commit fails the connection whatever the QoS of its publishes (QoS 0 alone too), once per failed
entry, with nothing written after it; commit outcomes from another thread wake the loop once;
a commit not confirmed within the commit timeout fails the same way, wakes a connection
waiting for room under the inflight cap, and what settles after it is not sent."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from edge_sync.mqtt.acknowledger import Acknowledger, frame
from edge_sync.mqtt.acks import Pending, Reply

DEADLINE_S = 5.0
ABSENCE_S = 0.05
"""How long a test looks for something that must not happen (a write, a wake-up)."""


class Wire:
    def __init__(self, loop: asyncio.AbstractEventLoop, *, commit_timeout_s: float = 5.0,
                 max_inflight: int = 10) -> None:
        self.writes: list[bytes] = []
        self.failed: list[tuple[list[tuple[Reply, int]], str]] = []  # (replies, why) per entry
        self.acks = Acknowledger(loop, send=self._sent, fail=self._failed,
                                 commit_timeout_s=commit_timeout_s, max_inflight=max_inflight)
        self._changed = asyncio.Event()  # set at each write and each failure

    def _sent(self, data: bytes) -> None:
        self.writes.append(data)
        self._changed.set()

    def _failed(self, entry: Pending, why: str) -> None:
        self.failed.append((list(entry.replies), why))
        self._changed.set()

    async def until(self, condition: Callable[[], bool], what: str) -> None:
        """Wait until ``condition()`` holds, looked at again after each write and failure;
        fails after DEADLINE_S."""
        async def changes() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        try:
            await asyncio.wait_for(changes(), DEADLINE_S)
        except TimeoutError:
            raise AssertionError(f"not within {DEADLINE_S}s: {what} "
                                 f"(writes {self.writes}, failed {self.failed})") from None


def run(test: Any) -> None:
    asyncio.run(test())


def test_a_group_is_acknowledged_in_one_write_after_what_came_before() -> None:
    async def test() -> None:
        wire = Wire(asyncio.get_running_loop())
        first: Future[range] = Future()
        burst: Future[range] = Future()
        wire.acks.expect(Reply.PUBACK, 1, first)
        wire.acks.expect_all([(Reply.PUBACK, 2), (Reply.NONE, 0), (Reply.PUBACK, 3)], burst)
        assert len(wire.acks) == 4
        committer = threading.Thread(target=burst.set_result, args=(range(0, 3),))
        committer.start()
        committer.join(DEADLINE_S)  # the burst's outcome is handed over
        await asyncio.sleep(ABSENCE_S)
        assert wire.writes == []  # the first publish still waits: nothing overtakes it
        first.set_result(range(3, 4))
        await wire.until(lambda: bool(wire.writes), "the acknowledgements written")
        assert wire.writes == [frame(Reply.PUBACK, 1) + frame(Reply.PUBACK, 2)
                               + frame(Reply.PUBACK, 3)]
        assert len(wire.acks) == 0 and not wire.acks.full

    run(test)


def test_a_failed_group_fails_once_with_all_its_publishes_and_nothing_is_sent_after_it(
        ) -> None:
    async def test() -> None:
        wire = Wire(asyncio.get_running_loop())
        ok: Future[range] = Future()
        bad: Future[range] = Future()
        after: Future[range] = Future()
        wire.acks.expect(Reply.PUBACK, 1, ok)
        wire.acks.expect_all([(Reply.NONE, 0), (Reply.NONE, 0), (Reply.PUBACK, 2),
                              (Reply.PUBACK, 3)], bad)
        wire.acks.expect(Reply.PUBACK, 4, after)
        ok.set_result(range(1))
        bad.set_exception(RuntimeError("storage full"))
        after.set_result(range(1))
        await wire.until(lambda: bool(wire.writes and wire.failed), "a write and the failure")
        await asyncio.sleep(ABSENCE_S)
        assert wire.writes == [frame(Reply.PUBACK, 1)]  # nothing after the failure
        assert wire.failed == [([(Reply.NONE, 0), (Reply.NONE, 0), (Reply.PUBACK, 2),
                                 (Reply.PUBACK, 3)], "not committed: storage full")]

    run(test)


def test_a_failed_commit_of_qos_0_publishes_alone_fails_the_connection() -> None:
    """As ThingsBoard closes the connection on any publish's failure: once, not a warning per
    publish while the connection goes on."""
    async def test() -> None:
        wire = Wire(asyncio.get_running_loop())
        first: Future[range] = Future()
        second: Future[range] = Future()
        then: Future[range] = Future()
        wire.acks.expect_all([(Reply.NONE, 0)] * 3, first)
        wire.acks.expect_all([(Reply.NONE, 0)] * 2, second)
        wire.acks.expect(Reply.PUBACK, 1, then)
        for commit in (first, second):
            commit.set_exception(RuntimeError("storage full"))
        then.set_result(range(1))
        await wire.until(lambda: len(wire.failed) == 2, "both failures")
        await asyncio.sleep(ABSENCE_S)
        assert [(len(replies), why) for replies, why in wire.failed] == [
            (3, "not committed: storage full"), (2, "not committed: storage full")]
        assert wire.writes == []  # not even the PUBACK of a later publish that was stored

    run(test)


def test_the_inflight_count_is_of_publishes_and_room_comes_when_a_group_is_acknowledged(
        ) -> None:
    async def test() -> None:
        wire = Wire(asyncio.get_running_loop())
        burst: Future[range] = Future()
        wire.acks.expect_all([(Reply.PUBACK, i) for i in range(1, 11)], burst)
        assert wire.acks.full
        waiting = asyncio.ensure_future(wire.acks.room())
        await asyncio.sleep(ABSENCE_S)
        assert not waiting.done()
        burst.set_result(range(10))
        await asyncio.wait_for(waiting, DEADLINE_S)
        assert len(wire.writes) == 1 and len(wire.writes[0]) == 40

    run(test)


def test_a_commit_not_confirmed_in_time_fails_and_nothing_after_it_is_sent() -> None:
    async def test() -> None:
        loop = asyncio.get_running_loop()
        wire = Wire(loop, commit_timeout_s=0.05, max_inflight=2)
        stuck: Future[range] = Future()  # never completes
        later: Future[range] = Future()
        wire.acks.expect(Reply.PUBACK, 1, stuck)
        wire.acks.expect(Reply.PUBREC, 2, later)
        assert wire.acks.full
        waiting = asyncio.ensure_future(wire.acks.room())  # the connection paused at the cap
        started = loop.time()
        await wire.until(lambda: bool(wire.failed), "the commit timed out")
        assert loop.time() - started >= 0.05
        assert wire.failed == [([(Reply.PUBACK, 1)], "not confirmed in time")]
        await asyncio.wait_for(waiting, DEADLINE_S)  # woken: it ends instead of waiting on
        later.set_result(range(1))
        # returns at once: the connection failed (else it would wait its whole 60 s)
        await asyncio.wait_for(wire.acks.drain(60.0), DEADLINE_S)
        assert wire.writes == []  # PUBREC 2 is not sent after the failure
        stuck.set_result(range(1))  # too late: nothing changes

    run(test)
