"""The thread-free parts of device sessions, with time passed in: the RPC lifecycle of one
device (devices/rpc.py), when to ask the cloud for shared attributes (devices/fetch.py), the
long poll's claim / give-up race (devices/subscribers.py), the long-poll timeout parameter, and
the durable RPC records (storage/rpc_store.py, real LMDB)."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path

import pytest

from edge_sync.api.payloads import LONG_POLL_DEFAULT_MS, LONG_POLL_MAX_MS, parse_timeout
from edge_sync.common.wire import RPC_ERRORS
from edge_sync.devices.fetch import FetchDecision, FetchPolicy
from edge_sync.devices.rpc import DEFAULT_RPC_TIMEOUT_MS, RpcBook, RpcRequest, RpcStatus, expiration_of
from edge_sync.devices.session import DeviceSession
from edge_sync.devices.subscribers import LongPoll
from edge_sync.errors import BadRequest, Conflict, NotFound
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.rpc_store import RpcStore

DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000d1")
T0 = 1_700_000_000_000


def request(n: int, *, oneway: bool = False, expires: int = T0 + 10_000, queued: int | None = None,
            method: str = "m") -> RpcRequest:
    return RpcRequest(DEVICE, uuid.UUID(int=n), n, method, json.dumps({"n": n}), oneway, expires,
                      queued if queued is not None else T0 + n)


# -- the lifecycle -------------------------------------------------------------------------------


def test_two_way_queued_delivered_answered_reports_the_answer_with_the_echo() -> None:
    book = RpcBook()
    assert book.add(request(1))
    delivered = book.take_next(T0 + 100)
    assert delivered is not None and delivered.report is None
    assert (delivered.request.status, delivered.request.updated_at) == (RpcStatus.DELIVERED, T0 + 100)
    assert delivered.request.device_json() == {"id": 1, "method": "m", "params": {"n": 1}}
    assert book.take_next(T0 + 101) is None  # nothing else queued
    done = book.answer(1, {"ok": 1}, T0 + 200)
    assert (done.request.status, done.request.response) == (RpcStatus.SUCCESSFUL, {"ok": 1})
    assert done.report == {"requestUuid": str(uuid.UUID(int=1)), "requestId": 1, "oneway": False,
                           "expirationTime": T0 + 10_000, "response": {"ok": 1}}
    assert len(book) == 0
    with pytest.raises(Conflict, match="SUCCESSFUL"):
        book.answer(1, {"again": 1}, T0 + 300)


# -- sent in flight: DELIVERED on the device's acknowledgement (MQTT QoS 1) ------------------


def test_a_request_sent_in_flight_stays_queued_until_acknowledged() -> None:
    book = RpcBook()
    book.add(request(1))
    book.add(request(2))
    sent = book.send_next(T0 + 10)
    assert sent is not None and sent.body == {"id": 1, "method": "m", "params": {"n": 1}}
    assert [r.status for r in book.open_requests()] == [RpcStatus.QUEUED, RpcStatus.QUEUED]
    second = book.send_next(T0 + 11)  # the next one, not the one in flight
    assert second is not None and second.request_id == 2
    assert book.send_next(T0 + 12) is None and not book.has_next(T0 + 12)
    assert book.in_flight == 2
    change = book.acknowledged(sent, T0 + 20)
    assert change is not None and change.report is None
    assert (change.request.status, change.request.updated_at) == (RpcStatus.DELIVERED, T0 + 20)
    assert change.previous is not None and change.previous.status is RpcStatus.QUEUED
    assert book.acknowledged(sent, T0 + 21) is None  # a PUBACK twice: nothing more
    assert book.in_flight == 1


def test_a_one_way_request_in_flight_is_successful_on_its_acknowledgement() -> None:
    book = RpcBook()
    book.add(request(3, oneway=True))
    sent = book.send_next(T0)
    assert sent is not None
    change = book.acknowledged(sent, T0 + 5)
    assert change is not None and change.request.status is RpcStatus.SUCCESSFUL
    assert change.report is not None and change.report["response"] == {}
    assert len(book) == 0


def test_a_request_lost_in_flight_is_queued_again_in_its_place_and_sent_anew() -> None:
    book = RpcBook()
    for n in (1, 2):
        book.add(request(n))
    first = book.send_next(T0)
    assert first is not None
    assert book.unsent(first) is True
    assert book.unsent(first) is False  # said twice: once is enough
    again = book.send_next(T0 + 1)  # the oldest again, before 2
    assert again is not None and again.request_id == 1 and again.attempt != first.attempt
    assert book.unsent(first) is False  # the loss of the earlier sending changes nothing
    change = book.acknowledged(again, T0 + 3)
    assert change is not None and change.request.status is RpcStatus.DELIVERED


def test_the_acknowledgement_of_any_sending_delivers_a_request_still_queued() -> None:
    """The device has the request whichever sending it acknowledges: a PUBACK of the sending
    lost (it comes late) delivers it though it was sent again since; the newer sending's own
    PUBACK, or its loss, then changes nothing."""
    book = RpcBook()
    book.add(request(1))
    first = book.send_next(T0)
    assert first is not None and book.unsent(first)
    again = book.send_next(T0 + 1)
    assert again is not None
    change = book.acknowledged(first, T0 + 2)
    assert change is not None and change.request.status is RpcStatus.DELIVERED
    assert book.in_flight == 0
    assert book.acknowledged(again, T0 + 3) is None
    assert book.unsent(again) is False and not book.has_next(T0 + 3)


def test_a_book_made_again_takes_the_acknowledgement_and_the_answer_of_an_earlier_sending() -> None:
    """After its shard restarts a device's book is made again from disk, where a request in
    flight is QUEUED (nothing is recorded before the PUBACK): the device's PUBACK of the
    earlier sending delivers it, and its answer is taken, before or after that PUBACK
    (DeviceActorMessageProcessor.processRpcResponses takes a response for any pending
    request). They used to be ignored and refused ("not delivered yet")."""
    old = RpcBook()
    old.add(request(1))
    old.add(request(2))
    sent1, sent2 = old.send_next(T0), old.send_next(T0)
    assert sent1 is not None and sent2 is not None
    book = RpcBook()  # the shard restarted: both QUEUED on disk
    book.add(request(1))
    book.add(request(2))
    change = book.acknowledged(sent1, T0 + 5)
    assert change is not None and change.request.status is RpcStatus.DELIVERED
    answered = book.answer(2, {"v": 2}, T0 + 6)  # its PUBACK still to come
    assert (answered.request.status, answered.request.response) == (RpcStatus.SUCCESSFUL,
                                                                   {"v": 2})
    assert answered.report is not None and answered.report["response"] == {"v": 2}
    assert book.acknowledged(sent2, T0 + 7) is None
    assert book.answer(1, {"v": 1}, T0 + 8).request.status is RpcStatus.SUCCESSFUL


def test_requests_the_transport_still_holds_are_in_flight_again_not_sent_again() -> None:
    """``holding``: a transport asks again while it holds sendings unacknowledged (after the
    shard restarted): each request still QUEUED and not in flight is in flight by it, its
    acknowledgement or loss counts, and it is not given to anyone else meanwhile. A request
    answered, or in flight by another sending, is left as it is."""
    old = RpcBook()
    for n in (1, 2, 3, 4):
        old.add(request(n))
    sent = [old.send_next(T0) for _ in range(3)]
    assert all(s is not None for s in sent)
    s1, s2, s3 = (s for s in sent if s is not None)
    book = RpcBook()
    for n in (1, 2, 3, 4):
        book.add(request(n))
    book.answer(2, {"ok": 1}, T0 + 1)  # answered meanwhile: closed
    other = book.send_next(T0 + 1)  # 1 went to another subscriber first
    assert other is not None and other.request_id == 1
    assert [s.request_id for s in book.holding([s1, s2, s3])] == [3]
    nxt = book.send_next(T0 + 2)  # 3 is not sent again: 4 is next
    assert nxt is not None and nxt.request_id == 4
    assert book.in_flight == 3
    assert book.unsent(s3) is True  # the session that held it lost it: queued again
    again = book.send_next(T0 + 3)
    assert again is not None and again.request_id == 3


def test_an_answer_before_the_acknowledgement_is_taken() -> None:
    book = RpcBook()
    book.add(request(4))
    sent = book.send_next(T0)
    assert sent is not None
    done = book.answer(4, {"v": 1}, T0 + 1)
    assert (done.request.status, done.request.response) == (RpcStatus.SUCCESSFUL, {"v": 1})
    assert book.acknowledged(sent, T0 + 2) is None and book.in_flight == 0


def test_a_request_in_flight_expires_at_its_time_and_a_late_acknowledgement_too() -> None:
    book = RpcBook()
    book.add(request(5, expires=T0 + 100))
    book.add(request(6, expires=T0 + 100))
    sent5, sent6 = book.send_next(T0), book.send_next(T0)
    assert sent5 is not None and sent6 is not None
    assert book.next_deadline() == T0 + 100
    late = book.acknowledged(sent6, T0 + 100)  # acknowledged at its expirationTime
    assert late is not None and late.request.status is RpcStatus.EXPIRED
    assert late.report is not None and late.report["error"] == "TIMEOUT"
    (expired,) = book.expire_due(T0 + 100)
    assert (expired.request.request_id, expired.request.status) == (5, RpcStatus.EXPIRED)
    assert book.acknowledged(sent5, T0 + 101) is None and len(book) == 0


def test_a_request_the_transport_can_never_send_fails() -> None:
    book = RpcBook()
    book.add(request(7))
    sent = book.send_next(T0)
    assert sent is not None
    failed = book.unsendable(sent, "too large", T0 + 1)
    assert failed is not None
    assert (failed.request.status, failed.request.error) == (RpcStatus.FAILED, "too large")
    assert failed.report is not None and failed.report["error"] == "INTERNAL"
    assert failed.report["error"] in RPC_ERRORS
    assert len(book) == 0


def test_one_way_is_successful_on_delivery_and_reported_with_an_empty_answer() -> None:
    book = RpcBook()
    book.add(request(2, oneway=True))
    done = book.take_next(T0)
    assert done is not None and done.request.status is RpcStatus.SUCCESSFUL
    assert done.report is not None and done.report["response"] == {} and done.report["oneway"]
    with pytest.raises(Conflict):
        book.answer(2, 1, T0 + 1)


def test_every_failure_is_reported_by_an_rpc_error_name_and_kept_with_its_reason() -> None:
    """ThingsBoard reads the report's error with RpcError.valueOf: a request without a method is
    FAILED with the reason "no method" in the record and INTERNAL in the report; expiries and
    timeouts are TIMEOUT."""
    book = RpcBook()
    book.add(request(1, method=""))
    book.add(request(2, expires=T0 + 500))
    book.add(request(3, expires=T0 + 500, queued=T0 + 400))
    delivered = book.take_next(T0 + 100)  # 2: the oldest with a method
    assert delivered is not None and delivered.request.request_id == 2
    book.handed(delivered.request.request_uuid)
    changes = book.expire_due(T0 + 500)
    assert [(c.request.request_id, c.request.status, c.request.error) for c in changes] == [
        (1, RpcStatus.FAILED, "no method"), (2, RpcStatus.TIMEOUT, "TIMEOUT"),
        (3, RpcStatus.EXPIRED, "TIMEOUT")]
    assert [c.report["error"] if c.report else None for c in changes] == [
        "INTERNAL", "TIMEOUT", "TIMEOUT"]
    assert all(c.report is not None and c.report["error"] in RPC_ERRORS for c in changes)


def test_requests_are_delivered_oldest_first_whatever_order_they_came_in() -> None:
    book = RpcBook()
    book.add(request(5, queued=T0 + 50))
    book.add(request(3, queued=T0 + 10))
    first, second = book.take_next(T0 + 60), book.take_next(T0 + 60)
    assert first is not None and second is not None
    assert (first.request.request_id, second.request.request_id) == (3, 5)


def test_a_queued_request_is_never_delivered_at_or_after_its_expiration() -> None:
    book = RpcBook()
    book.add(request(1, expires=T0 + 1_000))
    assert book.next_deadline() == T0 + 1_000
    assert book.take_next(T0 + 1_000) is None
    (expired,) = book.expire_due(T0 + 1_000)
    assert (expired.request.status, expired.request.error) == (RpcStatus.EXPIRED, "TIMEOUT")
    assert expired.report is not None and expired.report["error"] == "TIMEOUT"
    assert book.next_deadline() is None and book.expire_due(T0 + 5_000) == []


def test_a_delivered_request_not_answered_in_time_times_out_and_a_late_answer_is_refused() -> None:
    book = RpcBook()
    book.add(request(1, expires=T0 + 1_000))
    delivered = book.take_next(T0)
    assert delivered is not None
    book.handed(delivered.request.request_uuid)
    with pytest.raises(Conflict, match="too late"):
        book.answer(1, "x", T0 + 1_000)  # expired but not yet swept: still refused
    assert book.expire_due(T0 + 999) == []
    (timed_out,) = book.expire_due(T0 + 1_000)
    assert timed_out.request.status is RpcStatus.TIMEOUT
    with pytest.raises(Conflict, match="TIMEOUT"):
        book.answer(1, "x", T0 + 1_001)


def test_an_unknown_id_is_refused_and_a_queued_request_takes_its_answer() -> None:
    """An answer to a request still QUEUED is taken (the device got it over a connection the
    edge no longer counts), as DeviceActorMessageProcessor.processRpcResponses takes any
    pending request's; it used to be refused as not delivered yet."""
    book = RpcBook()
    book.add(request(1))
    with pytest.raises(NotFound, match="no RPC request 9"):
        book.answer(9, None, T0)
    done = book.answer(1, {"ok": True}, T0)
    assert (done.request.status, done.request.response) == (RpcStatus.SUCCESSFUL, {"ok": True})
    assert done.previous is not None and done.previous.status is RpcStatus.QUEUED
    assert not book.has_next(T0)


def test_a_known_or_finished_request_is_not_taken_again() -> None:
    book = RpcBook()
    assert book.add(request(1)) and not book.add(request(1))
    finished = RpcRequest(DEVICE, uuid.UUID(int=7), 7, "m", "", False, T0, T0,
                          status=RpcStatus.EXPIRED)
    assert not book.add(finished) and len(book) == 1


def test_an_undone_delivery_is_queued_again() -> None:
    book = RpcBook()
    book.add(request(1, oneway=True))
    done = book.take_next(T0)
    assert done is not None and done.request.status is RpcStatus.SUCCESSFUL
    assert book.restore(done)
    again = book.take_next(T0 + 1)
    assert again is not None and again.request.request_id == 1


def test_a_delivery_in_flight_at_its_expiration_is_expired_only_once_known_not_handed_over(
) -> None:
    book = RpcBook()
    book.add(request(1, expires=T0 + 10))
    done = book.take_next(T0)
    assert done is not None and book.next_deadline() is None
    assert book.expire_due(T0 + 10) == []  # not yet known whether the device got it
    assert book.restore(done)  # its record failed: never handed over
    (expired,) = book.expire_due(T0 + 11)
    assert (expired.request.status, expired.previous) == (RpcStatus.EXPIRED, request(1, expires=T0 + 10))
    assert not book.restore(done)  # changed since: nothing revived
    assert len(book) == 0 and book.take_next(T0 + 12) is None


def test_a_delivery_recorded_after_the_expiration_is_expired_not_timed_out() -> None:
    book = RpcBook()
    book.add(request(1, expires=T0 + 10))
    done = book.take_next(T0)
    assert done is not None
    late = book.expire_late(done, T0 + 12)
    assert late is not None and (late.request.status, late.request.error) == (RpcStatus.EXPIRED,
                                                                              "TIMEOUT")
    assert book.expire_late(done, T0 + 13) is None and len(book) == 0


def test_an_answer_or_expiry_not_recorded_is_restored_so_it_can_happen_again() -> None:
    book = RpcBook()
    book.add(request(1, expires=T0 + 10))
    delivered = book.take_next(T0)
    assert delivered is not None
    book.handed(delivered.request.request_uuid)
    answered = book.answer(1, {"ok": 1}, T0 + 1)
    assert book.restore(answered)
    assert book.answer(1, {"ok": 1}, T0 + 2).request.status is RpcStatus.SUCCESSFUL
    book.add(request(2, expires=T0 + 10))
    (expired,) = book.expire_due(T0 + 10)
    assert book.restore(expired) and book.next_deadline() == T0 + 10
    assert [c.request.status for c in book.expire_due(T0 + 11)] == [RpcStatus.EXPIRED]


def test_a_delivery_the_device_acknowledged_is_kept_when_its_record_fails_and_recorded_again(
) -> None:
    """The record of a PUBACK's DELIVERED (a one-way request's SUCCESSFUL) fails, storage
    full: the device has the request, so it stays delivered and is not sent again; only the
    record is tried again (``unrecorded``), as ThingsBoard keeps it delivered whatever its save
    does (DeviceActorMessageProcessor.processRpcResponseStatus). It used to be QUEUED again:
    sent again, acknowledged again, refused again, thousands of times a second."""
    book = RpcBook()
    book.add(request(1))
    book.add(request(2, oneway=True))
    sent1, sent2 = book.send_next(T0), book.send_next(T0)
    assert sent1 is not None and sent2 is not None
    delivered, done = book.acknowledged(sent1, T0 + 1), book.acknowledged(sent2, T0 + 1)
    assert delivered is not None and done is not None and delivered.kept and done.kept
    assert book.keep(delivered) is delivered and book.keep(done) is done
    assert [r.status for r in book.open_requests()] == [RpcStatus.DELIVERED]
    assert not book.has_next(T0 + 2) and book.send_next(T0 + 2) is None and book.in_flight == 0
    assert (book.next_deadline(), book.unrecorded_count) == (0, 2)  # due: the owner's backoff
    assert book.unrecorded() == [delivered, done]
    assert (book.unrecorded(), book.unrecorded_count) == ([], 0)  # handed out once
    assert book.next_deadline() == T0 + 10_000
    assert book.keep(delivered) is delivered  # its retry failed too: kept again
    answered = book.answer(1, {"ok": 1}, T0 + 3)  # the device answers meanwhile
    assert answered.request.status is RpcStatus.SUCCESSFUL and not answered.kept
    assert book.unrecorded() == []  # recorded with the answer: the delivery is not
    assert book.keep(delivered) is None  # changed since: nothing kept


def test_an_answer_to_a_queued_request_not_recorded_leaves_it_delivered_not_queued() -> None:
    """A two-way request answered while QUEUED (before its PUBACK, or after a restart): its
    answer is not recorded, so the request is DELIVERED (the device has it; the device's retry
    of its answer is taken) and that is recorded again; never QUEUED and sent again. An answer
    to a request delivered already is undone as before (DELIVERED: the retry is taken)."""
    book = RpcBook()
    book.add(request(1))
    book.add(request(2))
    sent = book.send_next(T0)
    assert sent is not None
    answered = book.answer(1, {"v": 1}, T0 + 1)
    assert answered.kept
    kept = book.keep(answered)
    assert kept is not None and kept.kept and kept.report is None
    assert (kept.request.status, kept.request.updated_at, kept.previous) == (
        RpcStatus.DELIVERED, T0 + 1, request(1))
    assert [(r.request_id, r.status) for r in book.open_requests()] == [
        (1, RpcStatus.DELIVERED), (2, RpcStatus.QUEUED)]  # in arrival order
    nxt = book.send_next(T0 + 2)
    assert nxt is not None and nxt.request_id == 2  # 1 is not sent again
    assert book.acknowledged(sent, T0 + 3) is None  # its late PUBACK: nothing more
    assert book.unrecorded() == [kept]
    retry = book.answer(1, {"v": 1}, T0 + 4)
    assert (retry.request.status, retry.kept) == (RpcStatus.SUCCESSFUL, False)
    assert book.restore(retry)  # not recorded: DELIVERED again, as kept
    assert [r.status for r in book.open_requests()] == [RpcStatus.DELIVERED, RpcStatus.QUEUED]


def test_a_request_without_expiration_gets_the_default_timeout() -> None:
    assert expiration_of(0, T0) == T0 + DEFAULT_RPC_TIMEOUT_MS
    assert expiration_of(T0 + 5, T0) == T0 + 5


def test_params_that_are_not_json_reach_the_device_as_text() -> None:
    r = RpcRequest(DEVICE, uuid.UUID(int=1), 1, "m", "not json", False, T0, T0)
    assert r.device_json() == {"id": 1, "method": "m", "params": "not json"}


# -- asking the cloud ------------------------------------------------------------------------------


def test_the_cloud_is_asked_at_most_once_per_interval_and_waited_for_while_it_may_answer() -> None:
    policy = FetchPolicy(interval_ms=1_000)
    seen = [(d.ask, d.wait) for d in (policy.decide(t, 300) for t in (T0, T0 + 1, T0 + 299,
                                                                        T0 + 300))]
    assert seen == [(True, True), (False, True), (False, True), (False, False)]  # silent cloud
    policy.queued(1)  # its event, deployed at once (decide's default: nothing pending)
    assert policy.decide(T0 + 1_000, 300) == FetchDecision(ask=True, wait=True)
    policy.queued(2)
    policy.answered()
    assert policy.decide(T0 + 1_001, 300) == FetchDecision(ask=False, wait=False)  # no more
    assert policy.decide(T0 + 2_000, 300) == FetchDecision(ask=True, wait=True)


# -- long polls ------------------------------------------------------------------------------------


def test_a_long_poll_times_out_unless_claimed_and_a_claimed_one_gets_its_value() -> None:
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        idle, taken = LongPoll(loop), LongPoll(loop)
        first = await idle.wait(0.01)
        assert not idle.live and not idle.claim()  # timed out: no request is taken for it
        assert taken.claim() and not taken.live
        loop.call_later(0.05, taken.resolve, {"id": 1})
        second = await taken.wait(0.01)  # claimed before its time-out: the value still comes
        return [first, second]

    assert asyncio.run(scenario()) == [(False, None), (True, {"id": 1})]


def test_a_session_hands_an_update_to_live_polls_only() -> None:
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        session = DeviceSession()
        gone, waiting = LongPoll(loop), LongPoll(loop)
        assert gone.give_up()
        session.attribute_waiters += [gone, waiting]
        assert session.busy
        assert session.publish_attributes({"a": 1}) == 1
        assert not session.busy
        return [await waiting.wait(1)]

    assert asyncio.run(scenario()) == [(True, {"a": 1})]


class Subscription:
    """A subscriber that stays (what a connected transport, MQTT, would register)."""

    def __init__(self) -> None:
        self.got: list[object] = []

    @property
    def live(self) -> bool:
        return True

    def claim(self) -> bool:
        return True

    def resolve(self, value: object) -> None:
        self.got.append(value)

    def fail(self, exc: BaseException) -> None:
        self.got.append(exc)

    def release(self) -> None:
        pass


def test_a_subscription_stays_for_every_update_and_takes_its_turn_for_requests() -> None:
    session = DeviceSession()
    sub = Subscription()
    session.attribute_waiters.append(sub)
    session.rpc_waiters.append(sub)
    assert session.publish_attributes({"a": 1}) == 1 and session.publish_attributes({"b": 2}) == 1
    assert sub.got == [{"a": 1}, {"b": 2}]
    assert session.next_rpc_waiter() is sub and session.next_rpc_waiter() is sub
    assert session.busy


@pytest.mark.parametrize(("raw", "ms"), [(None, LONG_POLL_DEFAULT_MS), ("", LONG_POLL_DEFAULT_MS),
                                         ("0", LONG_POLL_DEFAULT_MS), ("1", 1),
                                         (str(LONG_POLL_MAX_MS), LONG_POLL_MAX_MS),
                                         # longer: the longest, ThingsBoard's
                                         # transport.http.max_request_timeout (300000)
                                         (str(LONG_POLL_MAX_MS + 1), LONG_POLL_MAX_MS),
                                         ("600000", 300_000),
                                         (str(2**63 - 1), LONG_POLL_MAX_MS)])
def test_timeout_parameter(raw: str | None, ms: int) -> None:
    assert LONG_POLL_MAX_MS == 300_000
    assert parse_timeout(raw) == ms


@pytest.mark.parametrize("raw", [str(2**63), "9" * 20, "-1", "1e3", "ten", "٣", " 5"])
def test_timeout_parameter_out_of_range_or_malformed(raw: str) -> None:
    with pytest.raises(BadRequest, match="timeout"):
        parse_timeout(raw)


# -- the durable records -----------------------------------------------------------------------------


def test_records_round_trip_in_arrival_order_and_finished_ones_are_purged(tmp_path: Path) -> None:
    store = LmdbStore(tmp_path / "s", initial_map_mb=8, max_size_mb=64)
    rpcs = RpcStore(store)
    other = uuid.UUID(int=99)
    a, b = request(2, queued=T0 + 20), request(1, queued=T0 + 10)
    c = RpcRequest(other, uuid.UUID(int=3), 3, "x", "", True, T0, T0, RpcStatus.EXPIRED, T0 + 5,
                   None, "TIMEOUT")
    store.write(lambda txn: [rpcs.put(txn, r) for r in (a, b, c)])
    with store.read() as txn:
        assert list(rpcs.scan(txn, DEVICE)) == [b, a]
        assert rpcs.find(txn, other, uuid.UUID(int=3)) == c
        assert rpcs.find(txn, DEVICE, uuid.UUID(int=3)) is None
        assert rpcs.open_requests(txn) == [b, a]
    # b finishes: no longer open, purged once old enough
    b_done = RpcRequest(DEVICE, b.request_uuid, 1, "m", b.params, False, b.expiration_time,
                        b.queued_at, RpcStatus.SUCCESSFUL, T0 + 50, {"ok": 1})
    store.write(lambda txn: rpcs.put(txn, b_done))
    with store.read() as txn:
        assert rpcs.open_requests(txn) == [a]
        assert rpcs.find(txn, DEVICE, b.request_uuid) == b_done
    assert store.write(lambda txn: rpcs.purge_finished(txn, older_than_ms=T0 + 5, limit=10)) == 0
    assert store.write(lambda txn: rpcs.purge_finished(txn, older_than_ms=T0 + 51, limit=1)) == 1
    with store.read() as txn:
        assert list(rpcs.scan(txn)) == [b_done, a]  # c (finished first) went first
        assert rpcs.find(txn, other, uuid.UUID(int=3)) is None
    assert store.write(lambda txn: rpcs.purge_finished(txn, older_than_ms=T0 + 51, limit=10)) == 1
    store.close()
    readonly = LmdbStore(tmp_path / "s", readonly=True)
    with readonly.read() as txn:
        assert list(RpcStore(readonly).scan(txn)) == [a]
        assert RpcStore(readonly).open_requests(txn) == [a]
    readonly.close()


def test_a_request_goes_to_the_newest_live_poll() -> None:
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        session = DeviceSession()
        older, newer = LongPoll(loop), LongPoll(loop)
        session.rpc_waiters += [older, newer]
        assert session.next_rpc_waiter() is newer
        assert session.next_rpc_waiter() is older and session.next_rpc_waiter() is None
        return [newer.live, older.live]

    assert asyncio.run(scenario()) == [False, False]


def test_a_released_poll_waits_on_or_ends_as_timed_out_when_its_time_ran_out() -> None:
    async def scenario() -> list[object]:
        loop = asyncio.get_running_loop()
        early, late = LongPoll(loop), LongPoll(loop)
        assert early.claim()
        early.release()  # before its time-out: it waits on and may be claimed again
        assert early.live and early.claim()
        loop.call_later(0.02, early.resolve, {"id": 2})
        assert late.claim()
        loop.call_later(0.05, late.release)  # claimed across its time-out, then nothing came
        return [await early.wait(1), await late.wait(0.01), late.live]

    assert asyncio.run(scenario()) == [(True, {"id": 2}), (False, None), False]


def test_no_new_request_while_the_previous_one_waits_in_the_queue() -> None:
    policy = FetchPolicy(interval_ms=1_000)
    in_queue = {7}
    pending = in_queue.__contains__
    assert policy.decide(T0, 300, pending).ask
    assert not policy.decide(T0 + 1_000, 300, pending).ask  # still being appended
    policy.queued(7)
    assert policy.decide(T0 + 5_000, 300, pending) == FetchDecision(ask=False, wait=False)
    in_queue.clear()  # deployed: the next read due asks again
    assert policy.decide(T0 + 5_001, 300, pending) == FetchDecision(ask=True, wait=True)
    policy.queued(None)  # that one could not be appended
    assert not policy.decide(T0 + 5_002, 300, pending).ask  # the interval still holds
    assert policy.decide(T0 + 6_001, 300, pending).ask
