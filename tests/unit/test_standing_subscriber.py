"""The standing subscriber (devices/standing.py) and the MQTT subscriptions built on it
(mqtt/subscriptions.py), without a server: a real event loop, the device session and entity
actor driven by hand, results given from other threads as the shard and the queue give them.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable
from typing import Any

from edge_sync.actors.messages import PollAttributes, PollRpc, SharedAttributesApplied
from edge_sync.devices.rpc import RpcSent
from edge_sync.devices.session import DeviceSession
from edge_sync.devices.standing import StandingSubscriber
from edge_sync.devices.subscribers import Subscriber
from edge_sync.errors import QueueFull, Unavailable
from edge_sync.mqtt import topics
from edge_sync.mqtt.subscriptions import Subscriptions
from tests.helpers.mqtt_gateway import Logs
from tests.unit.test_rpc_commit_failures import DEVICE, T0, Rig

Outcome = tuple[list[Any], list[BaseException]]


def standing(loop: asyncio.AbstractEventLoop) -> tuple[StandingSubscriber, Outcome]:
    values: list[Any] = []
    failures: list[BaseException] = []
    return StandingSubscriber(loop, values.append, failures.append), (values, failures)


async def settled() -> None:
    """Let the loop run the callbacks already scheduled (and those they schedule)."""
    for _ in range(3):
        await asyncio.sleep(0)


# -- the subscriber ------------------------------------------------------------------------------


def test_it_stays_live_and_claimable_and_hands_every_value_over_in_order() -> None:
    async def scenario() -> list[Any]:
        subscriber, (values, _) = standing(asyncio.get_running_loop())

        def shard() -> None:  # another thread, as the entity actor
            for n in range(1000):
                assert subscriber.claim()
                subscriber.resolve(n)

        thread = threading.Thread(target=shard)
        thread.start()
        await asyncio.to_thread(thread.join)
        await settled()
        assert subscriber.live and subscriber.pending == 0
        return values

    assert asyncio.run(scenario()) == list(range(1000))


def test_a_release_keeps_it_waiting() -> None:
    async def scenario() -> None:
        subscriber, (values, failures) = standing(asyncio.get_running_loop())
        assert subscriber.claim()
        assert subscriber.pending == 1
        subscriber.release()
        await settled()
        assert (subscriber.live, subscriber.pending, values, failures) == (True, 0, [], [])
        assert subscriber.claim()

    asyncio.run(scenario())


def test_a_failure_closes_it_once_and_what_was_claimed_before_still_comes() -> None:
    async def scenario() -> None:
        subscriber, (values, failures) = standing(asyncio.get_running_loop())
        assert subscriber.claim() and subscriber.claim() and subscriber.claim()
        subscriber.fail(Unavailable("shard-0 is restarting"))
        assert not subscriber.live
        assert not subscriber.claim()
        subscriber.fail(QueueFull("full"))  # a second claim failing: not told again
        subscriber.resolve("claimed before")
        await settled()
        assert values == ["claimed before"]
        assert [type(f) for f in failures] == [Unavailable]
        assert subscriber.pending == 0

    asyncio.run(scenario())


def test_closed_it_takes_nothing_more_and_drained_waits_for_earlier_claims() -> None:
    async def scenario() -> None:
        subscriber, (values, _) = standing(asyncio.get_running_loop())
        assert subscriber.claim()
        subscriber.close()
        assert (subscriber.live, subscriber.closed, subscriber.claim()) == (False, True, False)
        drained = asyncio.ensure_future(subscriber.drained())
        await settled()
        assert not drained.done()
        threading.Thread(target=subscriber.resolve, args=("late",)).start()
        await asyncio.wait_for(drained, 5.0)
        assert values == ["late"]

    asyncio.run(scenario())


def test_a_result_after_the_loop_closed_is_dropped_quietly() -> None:
    loop = asyncio.new_event_loop()
    subscriber, (values, _) = standing(loop)
    assert subscriber.claim()
    loop.close()
    subscriber.resolve("nobody")
    subscriber.fail(Unavailable("gone"))
    assert values == []


def test_a_result_after_the_loop_closed_goes_to_its_on_lost() -> None:
    """What the owner must not lose with its loop (a request in flight) is told to
    ``on_lost``, on the resolving thread; a release or a failure is not."""
    loop = asyncio.new_event_loop()
    values: list[Any] = []
    lost: list[Any] = []
    subscriber = StandingSubscriber(loop, values.append, lambda _exc: None, on_lost=lost.append)
    assert subscriber.claim() and subscriber.claim() and subscriber.claim()
    loop.close()
    subscriber.resolve("request")
    # closed with its loop: the session claims it no more (a request given back would
    # otherwise come to it again, and back, for ever)
    assert not subscriber.live and not subscriber.claim()
    subscriber.release()
    subscriber.fail(Unavailable("gone"))
    assert (values, lost) == ([], ["request"])


# -- in the device's session and entity actor ------------------------------------------------------


def test_the_session_keeps_it_for_every_update_and_request_until_it_closes() -> None:
    async def scenario() -> None:
        subscriber, (values, _) = standing(asyncio.get_running_loop())
        session = DeviceSession()
        session.attribute_waiters.append(subscriber)
        session.rpc_waiters.append(subscriber)
        for n in range(3):
            assert session.publish_attributes({f"k{n}": n}) == 1
            assert session.next_rpc_waiter() is subscriber
        assert session.busy  # its entity is not passivated
        await settled()
        assert values == [{"k0": 0}, {"k1": 1}, {"k2": 2}]
        subscriber.close()
        assert session.publish_attributes({"k3": 3}) == 0
        assert session.next_rpc_waiter() is None
        assert not session.busy  # forgotten: the entity may be passivated
        await settled()
        assert values == [{"k0": 0}, {"k1": 1}, {"k2": 2}]

    asyncio.run(scenario())


def test_registered_once_it_gets_every_update_applied_back_to_back() -> None:
    async def scenario() -> list[Any]:
        subscriber, (values, _) = standing(asyncio.get_running_loop())
        rig = Rig()
        rig.handle(PollAttributes(DEVICE, subscriber))
        for n in range(20):
            rig.handle(SharedAttributesApplied(DEVICE, ((f"k{n}", n),), ()))
        await settled()
        return values

    assert asyncio.run(scenario()) == [{f"k{n}": n} for n in range(20)]


def test_rpc_requests_are_delivered_to_it_one_after_the_other_as_their_commits_complete() -> None:
    async def scenario() -> None:
        subscriber, (values, _) = standing(asyncio.get_running_loop())
        rig = Rig()
        for n in (1, 2):
            rig.queue_request(n, T0 + 60_000)
        rig.handle(PollRpc(DEVICE, subscriber))
        assert len(rig.queue.pending) == 2  # both deliveries being recorded at once
        rig.queue.commit()
        rig.queue.commit()
        rig.drain()
        rig.queue_request(3, T0 + 60_000)  # one more while it stays subscribed
        rig.queue.commit()
        rig.drain()
        await settled()
        assert [v["id"] for v in values] == [1, 2, 3]
        assert rig.queue.statuses() == [(1, "DELIVERED"), (2, "DELIVERED"), (3, "DELIVERED")]

    asyncio.run(scenario())


def test_a_delivery_that_could_not_be_recorded_fails_it_and_the_request_waits_for_the_next(
        ) -> None:
    async def scenario() -> None:
        subscriber, (values, failures) = standing(asyncio.get_running_loop())
        rig = Rig()
        rig.queue_request(4, T0 + 60_000)
        rig.handle(PollRpc(DEVICE, subscriber))
        rig.queue.refuse()
        rig.drain()
        await settled()
        assert (values, [type(f) for f in failures]) == ([], [QueueFull])
        assert rig.queue.pending == []  # put back QUEUED; the failed subscriber is forgotten
        again, (values2, _) = standing(asyncio.get_running_loop())
        rig.handle(PollRpc(DEVICE, again))
        rig.queue.commit()
        rig.drain()
        await settled()
        assert [v["id"] for v in values2] == [4]

    asyncio.run(scenario())


def test_a_delivery_recorded_after_the_expiration_is_not_given_and_it_serves_on() -> None:
    async def scenario() -> None:
        subscriber, (values, failures) = standing(asyncio.get_running_loop())
        rig = Rig()
        rig.queue_request(5, T0 + 1_000)
        rig.queue_request(6, T0 + 60_000)
        rig.handle(PollRpc(DEVICE, subscriber))
        rig.now = T0 + 1_000  # the first commit completes at request 5's expiration
        rig.queue.commit()
        rig.queue.commit()
        rig.drain()
        rig.queue.commit()  # 5 EXPIRED
        rig.queue_request(7, T0 + 60_000)
        rig.queue.commit()
        rig.drain()
        await settled()
        assert ([v["id"] for v in values], failures) == ([6, 7], [])  # each once
        assert rig.queue.statuses() == [(5, "DELIVERED"), (6, "DELIVERED"), (5, "EXPIRED"),
                                        (7, "DELIVERED")]
        assert subscriber.live and subscriber.pending == 0

    asyncio.run(scenario())


def test_a_restarting_shard_fails_it_so_its_owner_registers_again() -> None:
    async def scenario() -> None:
        subscriber, (_, failures) = standing(asyncio.get_running_loop())
        entity = Rig().entity
        entity.handle(PollAttributes(DEVICE, subscriber), 0.0)
        entity.handle(PollRpc(DEVICE, subscriber), 0.0)
        assert entity.busy
        assert entity.abandon_waiters(Unavailable("shard-0 is restarting; poll again")) == 1
        await settled()
        assert [type(f) for f in failures] == [Unavailable]
        assert not subscriber.live and not entity.busy

    asyncio.run(scenario())


# -- the MQTT subscriptions ------------------------------------------------------------------------


class Service:
    """The DeviceService's poll_rpc and poll_attributes, recording who registered (on the
    loop: Subscriptions registers from there)."""

    def __init__(self) -> None:
        self.polls: list[tuple[str, Subscriber]] = []
        self.unsent: list[tuple[uuid.UUID, tuple[Any, ...], str]] = []
        self.refuse: Callable[[Subscriber], None] | None = None
        self._polled = asyncio.Event()

    async def registered(self, n: int) -> None:
        """Until ``n`` registrations were made."""
        while len(self.polls) < n:
            self._polled.clear()
            await self._polled.wait()

    def poll_rpc(self, device_id: uuid.UUID, subscriber: Subscriber) -> None:
        self._poll("rpc", subscriber)

    def poll_attributes(self, device_id: uuid.UUID, subscriber: Subscriber) -> None:
        self._poll("attributes", subscriber)

    def rpc_unsent(self, device_id: uuid.UUID, sent: Any, reason: str, *,
                   failed: bool = False, quiet: bool = False) -> None:
        self.unsent.append((device_id, tuple(sent), reason))

    def _poll(self, kind: str, subscriber: Subscriber) -> None:
        self.polls.append((kind, subscriber))
        self._polled.set()
        if self.refuse is not None:
            self.refuse(subscriber)

    def current(self, kind: str) -> Subscriber:
        return [s for k, s in self.polls if k == kind][-1]


def subscriptions(service: Service, sent: list[tuple[str, bytes]], *,
                  retry_s: float = 0.01, drain_s: float = 5.0) -> Subscriptions:
    def send(topic: str, payload: bytes) -> None:
        sent.append((topic, payload))

    return Subscriptions(service, DEVICE, send,  # type: ignore[arg-type]
                         retry_s=retry_s, drain_s=drain_s)


def test_a_subscription_is_registered_before_subscribe_returns_and_only_once() -> None:
    async def scenario() -> None:
        service, sent = Service(), list[tuple[str, bytes]]()
        subs = subscriptions(service, sent)
        assert subs.subscribe(topics.ATTRIBUTES)
        assert [k for k, _ in service.polls] == ["attributes"]  # before the SUBACK is written
        assert subs.subscribe(topics.RPC_REQUEST_FILTER)
        assert subs.subscribe(topics.ATTRIBUTES)  # a repeated SUBSCRIBE changes nothing
        assert subs.subscribe(topics.ATTRIBUTES_RESPONSE_FILTER)  # granted, nothing to wait on
        assert not subs.subscribe("v1/devices/me/nothing/#")
        assert [k for k, _ in service.polls] == ["attributes", "rpc"]
        attributes = service.current("attributes")
        for n in range(5):
            assert attributes.claim()
            attributes.resolve({f"k{n}": n})
        rpc = service.current("rpc")
        assert rpc.claim()
        rpc.resolve({"id": 7, "method": "m", "params": {"a": 1}})
        await settled()
        assert sent == [*((topics.ATTRIBUTES, f'{{"k{n}":{n}}}'.encode()) for n in range(5)),
                        ("v1/devices/me/rpc/request/7", b'{"method":"m","params":{"a":1}}')]
        assert len(service.polls) == 2  # no wait renewed between results
        await subs.close()

    asyncio.run(scenario())


def test_unsubscribed_it_takes_nothing_more_but_publishes_what_it_took_before() -> None:
    async def scenario() -> None:
        service, sent = Service(), list[tuple[str, bytes]]()
        subs = subscriptions(service, sent)
        subs.subscribe(topics.RPC_REQUEST_FILTER)
        rpc = service.current("rpc")
        assert rpc.claim()  # a delivery being recorded
        subs.unsubscribe(topics.RPC_REQUEST_FILTER)
        assert not rpc.live and not rpc.claim()
        rpc.resolve({"id": 3, "method": "m", "params": None})
        await settled()
        assert sent == [("v1/devices/me/rpc/request/3", b'{"method":"m","params":null}')]
        subs.subscribe(topics.RPC_REQUEST_FILTER)  # subscribing again registers a new one
        assert len(service.polls) == 2 and service.current("rpc").live
        await subs.close()
        assert not service.current("rpc").live

    asyncio.run(scenario())


def test_a_failed_subscription_is_registered_again_after_the_pause() -> None:
    async def scenario() -> None:
        service, sent = Service(), list[tuple[str, bytes]]()
        subs = subscriptions(service, sent, retry_s=0.01)
        refusals = [Unavailable("shard-0 is restarting; try again")] * 2

        def refuse(subscriber: Subscriber) -> None:  # as Address.tell to a shard that is down
            if refusals and subscriber.claim():
                subscriber.fail(refusals.pop())

        service.refuse = refuse
        subs.subscribe(topics.ATTRIBUTES)
        first = service.current("attributes")
        assert not first.live
        await asyncio.wait_for(service.registered(3), 5.0)
        current = service.current("attributes")
        assert current.live and current is not first
        assert current.claim()
        current.resolve({"k": 1})
        first.resolve({"old": 0})  # claimed by the failed one before it failed: still comes
        await settled()
        assert [p for _, p in sent] == [b'{"k":1}', b'{"old":0}']
        await subs.close()
        assert not current.live

    asyncio.run(scenario())


def test_a_poll_that_raises_is_tried_again() -> None:
    async def scenario() -> None:
        service, sent = Service(), list[tuple[str, bytes]]()
        subs = subscriptions(service, sent, retry_s=0.01)

        def refuse(_subscriber: Subscriber) -> None:
            service.refuse = None
            raise RuntimeError("unexpected")

        service.refuse = refuse
        subs.subscribe(topics.ATTRIBUTES)
        await asyncio.wait_for(service.registered(2), 5.0)
        assert service.current("attributes").live
        await subs.close()

    asyncio.run(scenario())


def test_close_waits_for_results_on_their_way_and_drops_what_comes_after_it() -> None:
    async def scenario() -> None:
        service, sent = Service(), list[tuple[str, bytes]]()
        subs = subscriptions(service, sent)
        subs.subscribe(topics.RPC_REQUEST_FILTER)
        rpc = service.current("rpc")
        assert rpc.claim()
        closing = asyncio.ensure_future(subs.close())
        await settled()
        assert not closing.done() and not rpc.live  # the connection waits: a delivery comes
        threading.Thread(target=rpc.resolve,
                         args=({"id": 9, "method": "m", "params": None},)).start()
        await asyncio.wait_for(closing, 5.0)
        assert sent == [("v1/devices/me/rpc/request/9", b'{"method":"m","params":null}')]

        subs2 = subscriptions(service, sent, drain_s=0.05)
        subs2.subscribe(topics.RPC_REQUEST_FILTER)
        stuck = service.current("rpc")
        assert stuck.claim()
        await asyncio.wait_for(subs2.close(), 5.0)  # gives up after drain_s
        stuck.resolve({"id": 10, "method": "m", "params": None})
        await settled()
        assert [t for t, _ in sent] == ["v1/devices/me/rpc/request/9"]  # logged, not sent

    asyncio.run(scenario())


def test_close_with_nothing_on_its_way_returns_at_once() -> None:
    async def scenario() -> None:
        service, sent = Service(), list[tuple[str, bytes]]()
        subs = subscriptions(service, sent, drain_s=60.0)
        subs.subscribe(topics.RPC_REQUEST_FILTER)
        subs.subscribe(topics.ATTRIBUTES)
        await asyncio.wait_for(subs.close(), 1.0)
        assert all(not s.live for _, s in service.polls)
        assert subs.subscribe(topics.ATTRIBUTES)  # after close: nothing is registered
        assert len(service.polls) == 2

    asyncio.run(scenario())



def test_a_request_in_flight_that_comes_after_the_loop_closed_goes_back_to_the_queue() -> None:
    """The MQTT server's loop closed (a stop, a restart of the server) before a request the
    device's session sent in flight reached it: it is given back to the device's queue
    (rpc_unsent), never written. It used to be dropped silently, in flight until its expiry.
    The subscriber registers with what its connection's session still holds (``held``)."""
    service = Service()
    sent: list[tuple[str, bytes]] = []
    request = RpcSent(DEVICE, uuid.UUID(int=9), 1, {"id": 9, "method": "m", "params": None})
    still = RpcSent(DEVICE, uuid.UUID(int=8), 2, {"id": 8, "method": "m", "params": None})

    async def scenario() -> Subscriber:
        def send_rpc(topic: str, payload: bytes, _rpc: RpcSent) -> None:
            sent.append((topic, payload))

        subs = Subscriptions(service, DEVICE, lambda t, p: None,  # type: ignore[arg-type]
                             send_rpc=send_rpc, held=lambda: [still])
        assert subs.subscribe(topics.RPC_REQUEST_FILTER, 1)
        subscriber = service.current("rpc")
        assert getattr(subscriber, "acks", False) is True
        assert getattr(subscriber, "holding", ()) == (still,)
        assert subscriber.claim()
        return subscriber

    loop = asyncio.new_event_loop()
    try:
        subscriber = loop.run_until_complete(scenario())
    finally:
        loop.close()
    subscriber.resolve(request)
    assert sent == []
    assert service.unsent == [(DEVICE, (request,), "its MQTT server stopped before it was "
                                                   "written")]


def test_a_request_in_flight_that_comes_after_the_connection_ended_goes_back_unlogged_here() -> None:
    """Given back to the device's queue (rpc_unsent), never written; the device's entity
    logs the requeue, so the subscription adds no line of its own (it used to add a second
    INFO line for the same event)."""
    service = Service()
    request = RpcSent(DEVICE, uuid.UUID(int=9), 1, {"id": 9, "method": "m", "params": None})
    sent: list[tuple[str, bytes]] = []
    logs = Logs()

    async def scenario() -> None:
        subs = Subscriptions(service, DEVICE, lambda t, p: None,  # type: ignore[arg-type]
                             send_rpc=lambda t, p, _r: sent.append((t, p)), drain_s=0.01)
        assert subs.subscribe(topics.RPC_REQUEST_FILTER, 1)
        subscriber = service.current("rpc")
        assert subscriber.claim()
        await subs.close()  # gives up waiting after drain_s: the subscription is finished
        subscriber.resolve(request)
        await settled()

    try:
        asyncio.run(scenario())
    finally:
        logs.close()
    assert sent == []
    assert service.unsent == [(DEVICE, (request,), "its connection closed before it was "
                                                   "written")]
    assert [r["message"] for r in logs.records if "RPC request 9" in r["message"]] == []
