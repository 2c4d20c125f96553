"""Which of a device's waiters gets its next server-side RPC request (DeviceSession.next_rpc_waiter),
with real standing subscribers (devices/standing.py, an MQTT subscription) and long polls
(devices/subscribers.py, an HTTP poll): always the newest live one. A standing subscriber keeps
its place once claimed, so with two subscribed connections of one device (the device
reconnected under a new client id, its old connection half-open until its keep-alive runs out)
every request goes to the newer one; before, they alternated and every other request went to the
dead connection (DELIVERED, then TIMEOUT).
"""

from __future__ import annotations

import asyncio
from typing import Any

from edge_sync.devices.session import DeviceSession
from edge_sync.devices.standing import StandingSubscriber
from edge_sync.devices.subscribers import LongPoll, Subscriber


def standing(loop: asyncio.AbstractEventLoop) -> tuple[StandingSubscriber, list[Any]]:
    values: list[Any] = []
    return StandingSubscriber(loop, values.append, values.append), values


def taken(session: DeviceSession, n: int) -> list[Subscriber | None]:
    """The waiters of ``n`` requests in a row, each resolved with its number as the entity
    actor does after the delivery's commit."""
    out: list[Subscriber | None] = []
    for i in range(n):
        waiter = session.next_rpc_waiter()
        if waiter is not None:
            waiter.resolve(i)
        out.append(waiter)
    return out


async def settled() -> None:
    """Let the loop run the callbacks that the subscribers scheduled."""
    for _ in range(3):
        await asyncio.sleep(0)


def test_every_request_goes_to_the_newer_of_two_subscribed_connections() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        (older, got_older), (newer, got_newer) = standing(loop), standing(loop)
        session = DeviceSession()
        session.rpc_waiters += [older, newer]  # registered in this order
        assert taken(session, 6) == [newer] * 6
        await settled()
        assert (got_newer, got_older) == ([0, 1, 2, 3, 4, 5], [])
        assert list(session.rpc_waiters) == [older, newer]  # both kept, in their places
        # the newer connection ends: the older one, still open, is served
        newer.close()
        assert taken(session, 2) == [older, older]
        assert list(session.rpc_waiters) == [older]
        older.close()
        assert session.next_rpc_waiter() is None and not session.rpc_waiters

    asyncio.run(scenario())


def test_a_device_that_subscribes_again_is_served_on_its_newest_subscription() -> None:
    """A third subscription (a second reconnect) becomes the newest: the requests go to it."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        first, second, third = (standing(loop)[0] for _ in range(3))
        session = DeviceSession()
        session.rpc_waiters += [first, second]
        assert taken(session, 2) == [second, second]
        session.rpc_waiters.append(third)
        assert taken(session, 2) == [third, third]

    asyncio.run(scenario())


def test_a_newer_long_poll_takes_one_request_then_the_subscription_takes_the_next() -> None:
    """Long polls keep their rule: the newest live waiter, one request each."""
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        subscription, got = standing(loop)
        older_poll, newer_poll = LongPoll(loop), LongPoll(loop)
        session = DeviceSession()
        session.rpc_waiters += [older_poll, subscription, newer_poll]
        assert taken(session, 3) == [newer_poll, subscription, subscription]
        assert list(session.rpc_waiters) == [older_poll, subscription]
        assert older_poll.live  # still waiting: a newer waiter was there each time
        assert await newer_poll.wait(1.0) == (True, 0)
        await settled()
        return got

    assert asyncio.run(scenario()) == [1, 2]


def test_long_polls_alone_go_newest_first_one_request_each() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        polls = [LongPoll(loop) for _ in range(3)]
        session = DeviceSession()
        session.rpc_waiters += polls
        assert polls[2].give_up()  # timed out: skipped and forgotten
        assert taken(session, 3) == [polls[1], polls[0], None]
        assert not session.rpc_waiters
        assert await polls[1].wait(1.0) == (True, 0)
        assert await polls[0].wait(1.0) == (True, 1)

    asyncio.run(scenario())


def test_a_closed_newer_subscription_is_skipped_and_forgotten() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        (older, got), (newer, _) = standing(loop), standing(loop)
        session = DeviceSession()
        session.rpc_waiters += [older, newer]
        newer.close()  # unsubscribed or disconnected before the session's next prune
        assert taken(session, 2) == [older, older]
        assert list(session.rpc_waiters) == [older]
        await settled()
        assert got == [0, 1]

    asyncio.run(scenario())
