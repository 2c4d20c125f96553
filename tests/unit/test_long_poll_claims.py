"""A long poll (devices/subscribers.LongPoll) whose wait is cancelled (its client went away, its
subscription ended) after the device's session claimed it: the value on its way (a server-side
RPC request, recorded DELIVERED by then) is handed to the owner's ``on_orphan``, or logged,
never dropped unseen; a claim released after all ends the poll."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from edge_sync.devices.subscribers import LongPoll

REQUEST = {"id": 7, "method": "setGpio", "params": {"pin": 1}}


@pytest.fixture
def warnings() -> Iterator[list[Any]]:
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="WARNING", format="{message}")
    try:
        yield records
    finally:
        logger.remove(sink)


async def settled() -> None:
    """Let what the loop was told run (the value set, then the callbacks of its future)."""
    for _ in range(3):
        await asyncio.sleep(0)


async def cancelled(wait: asyncio.Task[Any]) -> None:
    """Cancel ``wait`` and let it end."""
    await asyncio.sleep(0)  # it waits now
    wait.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wait


def test_a_value_claimed_before_the_wait_was_cancelled_goes_to_the_owner() -> None:
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        orphans: list[Any] = []
        poll = LongPoll(loop, on_orphan=orphans.append)
        wait = asyncio.create_task(poll.wait(30))
        assert poll.claim()  # the session took it for a request; its record is committing
        await cancelled(wait)
        assert not poll.live and not poll.claim()
        poll.resolve(REQUEST)  # the record committed: the request is handed over
        await settled()
        return orphans

    assert asyncio.run(scenario()) == [REQUEST]


def test_a_value_given_as_the_wait_is_cancelled_reaches_the_waiter_or_the_owner_once() -> None:
    """The value is in, the wait not resumed yet, when it is cancelled: it is returned to the
    waiter (asyncio's wait_for returns a result that is there) or goes to the owner, once."""
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        orphans: list[Any] = []
        poll = LongPoll(loop, on_orphan=orphans.append)
        wait = asyncio.create_task(poll.wait(30))
        await asyncio.sleep(0)
        assert poll.claim()
        poll.resolve(REQUEST)
        await asyncio.sleep(0)  # the value is in; the wait has not resumed yet
        wait.cancel()
        try:
            answered, value = await wait
            returned = [value] if answered else []
        except asyncio.CancelledError:
            returned = []
        await settled()
        return returned + orphans

    assert asyncio.run(scenario()) == [REQUEST]


def test_a_claim_released_after_the_wait_was_cancelled_ends_the_poll() -> None:
    async def scenario() -> tuple[list[Any], bool]:
        loop = asyncio.get_running_loop()
        orphans: list[Any] = []
        poll = LongPoll(loop, on_orphan=orphans.append)
        wait = asyncio.create_task(poll.wait(30))
        assert poll.claim()
        await cancelled(wait)
        poll.release()  # the request expired on its way: nothing comes
        await settled()
        return orphans, poll.claim()

    assert asyncio.run(scenario()) == ([], False)


def test_a_wait_cancelled_while_a_claimed_value_is_awaited_past_its_time_out() -> None:
    async def scenario() -> list[Any]:
        loop = asyncio.get_running_loop()
        orphans: list[Any] = []
        poll = LongPoll(loop, on_orphan=orphans.append)
        assert poll.claim()
        wait = asyncio.create_task(poll.wait(0))  # times out at once, claimed: waits on
        while not poll._timed_out:  # the loop's turns until its time-out has been handled
            await asyncio.sleep(0)
        await cancelled(wait)
        poll.resolve(REQUEST)
        await settled()
        return orphans

    assert asyncio.run(scenario()) == [REQUEST]


def test_without_an_owner_for_it_a_lost_value_is_logged(warnings: list[Any]) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        poll = LongPoll(loop)
        wait = asyncio.create_task(poll.wait(30))
        assert poll.claim()
        await cancelled(wait)
        poll.resolve(REQUEST)
        await settled()

    asyncio.run(scenario())
    [line] = [r for r in warnings if "after its wait was cancelled" in r["message"]]
    assert line["extra"]["rpc_id"] == 7
    assert "pin" not in line["message"]  # what it carried is not logged
