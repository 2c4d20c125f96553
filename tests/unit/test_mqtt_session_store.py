"""mqtt/sessions.py, mqtt/topics.py matching and mqtt/registry.py: what a session keeps, which
session a connecting client gets (kept or new, clean discarding), the cap and the expiry of
kept sessions, packet ids of the outbox, the QoS an outgoing topic is published at, and the
registry closing an older connection of the same device and client id before the newer one
takes the session, and telling a revocation to the connections authenticated as the device and
to every gateway; each kept session the registry drops (beyond mqtt.max_sessions, expired, an
older connection that did not end in time) logged and counted by reason."""

from __future__ import annotations

import asyncio
import tracemalloc
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import pytest

from edge_sync.devices.rpc import RpcSent
from edge_sync.metrics import Metrics
from edge_sync.mqtt.registry import SessionRegistry
from edge_sync.mqtt.sessions import MAX_PACKET_ID, Outbox, OutMessage, Session, SessionStore
from edge_sync.mqtt.topics import matches
from edge_sync.storage.entity_store import TOKEN_CHANGED, Revocation, Revoked
from tests.helpers.mqtt_gateway import Logs

DEV = uuid.UUID(int=1)
OTHER = uuid.UUID(int=2)


def store(max_kept: int = 10, expiry_s: float = 100.0) -> SessionStore:
    return SessionStore(max_kept=max_kept, expiry_s=expiry_s, unacked_limit=5)


# -- topics ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("topic_filter", "topic", "expected"), [
    ("v1/devices/me/attributes", "v1/devices/me/attributes", True),
    ("v1/devices/me/attributes", "v1/devices/me/attributes/response/1", False),
    ("v1/devices/me/rpc/request/+", "v1/devices/me/rpc/request/42", True),
    ("v1/devices/me/rpc/request/+", "v1/devices/me/rpc/request/42/x", False),
    ("v1/devices/me/rpc/request/+", "v1/devices/me/rpc/request", False),
    ("v1/gateway/#", "v1/gateway/rpc", True),
    ("v1/gateway/#", "v1/gateway", True),
    ("#", "anything/at/all", True),
    ("v1/+/me/#", "v1/devices/me/attributes/response/3", True),
    ("v1/+/me/#", "v1/devices/you/attributes", False),
])
def test_topic_filter_matching(topic_filter: str, topic: str, expected: bool) -> None:
    assert matches(topic_filter, topic) is expected


# -- one session -------------------------------------------------------------------------------


def test_qos_for_a_topic_is_the_highest_granted_by_a_matching_filter() -> None:
    session = Session(unacked_limit=5)
    assert session.qos_for("v1/devices/me/attributes") == 0  # nothing subscribed
    session.subscriptions["v1/devices/me/attributes"] = 0
    session.subscriptions["v1/devices/me/rpc/request/+"] = 1
    assert session.qos_for("v1/devices/me/attributes") == 0
    assert session.qos_for("v1/devices/me/rpc/request/9") == 1
    session.subscriptions["#"] = 1
    assert session.qos_for("v1/devices/me/attributes") == 1


def send(box: Outbox, topic: str, payload: bytes) -> tuple[OutMessage | None, OutMessage | None]:
    """Keep a message and send what is due, as a connection does: the message sent (None
    when it waits) and the one dropped."""
    dropped = box.add(topic, payload)
    sent = None
    while (message := box.due()) is not None:
        assert box.sending(message) is False
        sent = message
    return sent, dropped


def test_outbox_keeps_until_puback_in_order_and_drops_the_oldest_beyond_its_limit() -> None:
    box = Outbox(limit=3)
    box.restart(None)  # MQTT 3.1.1: no quota
    ids = []
    for n in range(3):
        message, dropped = send(box, "t", bytes([n]))
        assert dropped is None and message is not None
        ids.append(message.packet_id)
    assert ids == [1, 2, 3]
    acked = box.acked(2)
    assert acked is not None and (acked.topic, acked.payload, acked.packet_id) == ("t", b"\x01", 2)
    assert box.acked(2) is None  # a PUBACK twice, or for an unknown id: nothing to forget
    assert [m.packet_id for m in box.unacked()] == [1, 3]
    send(box, "t", b"x")  # 4
    message, dropped = send(box, "t", b"y")  # full: the oldest (1) goes
    assert dropped is not None and dropped.packet_id == 1
    assert [m.packet_id for m in box.unacked()] == [3, 4, 5]
    assert [m.payload for m in box.unacked()] == [bytes([2]), b"x", b"y"]


def test_outbox_packet_ids_wrap_and_skip_ids_still_unacknowledged() -> None:
    box = Outbox(limit=10)
    box.restart(None)
    first, _ = send(box, "t", b"kept")  # id 1 stays unacknowledged
    for _ in range(MAX_PACKET_ID - 1):  # ids 2..65535, each acknowledged at once
        message, _ = send(box, "t", b"")
        assert message is not None
        box.acked(message.packet_id)
    assert message is not None and message.packet_id == MAX_PACKET_ID
    wrapped, _ = send(box, "t", b"")
    assert wrapped is not None and wrapped.packet_id == 2  # 0 is not a packet id, 1 in use
    assert first is not None and first.packet_id == 1 and len(box) == 2


def test_outbox_quota_holds_back_what_is_beyond_the_receive_maximum_in_order() -> None:
    """MQTT 5 §4.9: at most the quota (the client's Receive Maximum) await their PUBACK; the
    rest wait, oldest first, and are due one per PUBACK."""
    box = Outbox(limit=10)
    box.restart(2)
    sent = [send(box, "t", bytes([n]))[0] for n in range(5)]
    assert [m.payload if m else None for m in sent] == [b"\x00", b"\x01", None, None, None]
    assert (len(box), box.waiting) == (5, 3)
    assert box.due() is None
    acked = box.acked(2)
    assert acked is not None and (acked.topic, acked.payload, acked.packet_id) == ("t", b"\x01", 2)
    message = box.due()
    assert message is not None and message.payload == b"\x02" and message.packet_id == 0
    assert box.sending(message) is False and message.packet_id == 3
    assert box.due() is None  # 1 and 3 in flight
    assert [m.payload for m in box.unacked()] == [bytes([n]) for n in (0, 2, 3, 4)]


def test_outbox_quota_is_at_most_the_limit_and_never_below_one() -> None:
    box = Outbox(limit=3)
    box.restart(65535)
    assert [send(box, "t", b"")[0] is not None for _ in range(4)] == [True, True, True, False]
    box = Outbox(limit=3)
    box.restart(0)
    assert send(box, "t", b"")[0] is not None


def test_a_message_dropped_in_flight_holds_its_place_in_the_quota_until_its_puback() -> None:
    """The client still holds a message dropped while in flight: its packet id is not given
    again and it counts against the Receive Maximum until the client's PUBACK for it (or the
    next connection); over MQTT 3.1.1 it is forgotten at once."""
    box = Outbox(limit=2)
    box.restart(2)
    first, _ = send(box, "t", b"a")  # id 1
    send(box, "t", b"b")  # id 2
    sent, dropped = send(box, "t", b"c")  # full: a (in flight) dropped; c waits
    assert first is not None and dropped is first and sent is None
    assert [m.payload for m in box.unacked()] == [b"b", b"c"]
    assert box.acked(1) is None  # nothing kept under it: but the room is free
    message = box.due()
    assert message is not None and message.payload == b"c"
    box.sending(message)
    assert message.packet_id == 3  # 1 is free again, but ids go on from the last one given
    old = Outbox(limit=2)
    old.restart(None)
    send(old, "t", b"a")
    send(old, "t", b"b")
    sent, dropped = send(old, "t", b"c")  # 3.1.1: a forgotten, c sent at once
    assert dropped is not None and dropped.packet_id == 1
    assert sent is not None and sent.packet_id == 3


def rpc_sent(n: int) -> RpcSent:
    return RpcSent(DEV, uuid.UUID(int=n), n, {"id": n, "method": "m", "params": None})


@pytest.mark.parametrize("quota", [None, 3], ids=["3.1.1", "5"])
def test_beyond_its_limit_the_outbox_drops_the_oldest_message_that_carries_no_rpc_request(
        quota: int | None) -> None:
    """A message that carries an RPC request is kept while another can go: its PUBACK still
    delivers the request, and a discarded session still gives it back. In flight first, then
    waiting (one sent on an earlier connection keeps the count of those right). When every
    message kept carries one, the new message goes, never written, whatever it carries: an
    attribute update used to evict the oldest request, whose PUBACK then did nothing (it was
    EXPIRED though the device had it)."""
    box = Outbox(limit=3)
    box.restart(quota)
    box.add("rpc", b"r1", rpc_sent(1))
    box.add("attr", b"a1")
    box.add("rpc", b"r2", rpc_sent(2))
    for _ in range(3):
        message = box.due()
        assert message is not None
        box.sending(message)
    dropped = box.add("attr", b"a2")  # a1 goes, in flight
    assert dropped is not None and dropped.payload == b"a1"
    dropped = box.add("attr", b"a3")  # a2 goes, waiting or in flight
    assert dropped is not None and dropped.payload == b"a2"
    assert [m.payload for m in box.unacked()] == [b"r1", b"r2", b"a3"]
    acked = box.acked(1)
    assert acked is not None and acked.rpc == rpc_sent(1)
    box.restart(quota)  # a new connection: r2 and a3 (if sent) wait again, sent before
    box.add("rpc", b"r3", rpc_sent(3))
    dropped = box.add("rpc", b"r4", rpc_sent(4))  # a3 goes, the one without a request
    assert dropped is not None and dropped.payload == b"a3"
    assert [m.payload for m in box.unacked()] == [b"r2", b"r3", b"r4"]
    assert box.kept() == (2, 1)  # r3 and r4 never written, r2 written before
    dropped = box.add("rpc", b"r5", rpc_sent(5))  # all carry a request: the new one goes
    assert dropped is not None and (dropped.payload, dropped.packet_id) == (b"r5", 0)
    assert dropped.rpc == rpc_sent(5)
    dropped = box.add("attr", b"a4")  # and an attribute update too, not a request kept
    assert dropped is not None and (dropped.payload, dropped.rpc) == (b"a4", None)
    assert [m.payload for m in box.unacked()] == [b"r2", b"r3", b"r4"]
    assert box.kept() == (2, 1)
    for _ in range(3):  # r2 (DUP), r3, r4
        message = box.due()
        assert message is not None
        box.sending(message)
    r2 = next(m for m in box.unacked() if m.payload == b"r2")
    acked = box.acked(r2.packet_id)  # its PUBACK still delivers it
    assert acked is not None and acked.rpc == rpc_sent(2)


def test_a_restart_makes_everything_due_again_oldest_first_with_dup() -> None:
    """A new connection takes the session: the messages in flight on the last one go first
    (DUP, their packet ids kept), then the ones that waited (never sent: no DUP); a PUBACK
    for one not sent again yet is taken."""
    box = Outbox(limit=10)
    box.restart(2)
    for n in range(4):
        send(box, "t", bytes([n]))  # 0 and 1 in flight (ids 1, 2), 2 and 3 wait
    box.restart(3)
    due = []
    while (message := box.due()) is not None:
        due.append((message.payload, box.sending(message), message.packet_id))
    assert due == [(b"\x00", True, 1), (b"\x01", True, 2), (b"\x02", False, 3)]
    box.restart(1)
    acked = box.acked(2)  # sent on an earlier connection, not yet again
    assert acked is not None and acked.payload == b"\x01"
    message = box.due()
    assert message is not None and message.payload == b"\x00"
    assert box.sending(message) is True
    assert box.due() is None
    assert [m.payload for m in box.unacked()] == [b"\x00", b"\x02", b"\x03"]


def test_a_qos2_id_stays_once_stored_and_leaves_when_its_commit_fails() -> None:
    session = Session(unacked_limit=5)
    stored: Future[range] = Future()
    failed: Future[range] = Future()
    cancelled: Future[range] = Future()
    session.awaiting_release.update({1: stored, 2: failed, 3: cancelled})
    stored.set_result(range(1))
    failed.set_exception(RuntimeError("storage full"))
    cancelled.cancel()
    for packet_id, commit in ((1, stored), (2, failed), (3, cancelled)):
        session.settled(packet_id, commit)
    assert session.awaiting_release == {1: None}  # a resend of 2 or 3 is stored


def test_a_late_commit_outcome_changes_nothing_once_the_id_was_released_or_taken_again() -> None:
    session = Session(unacked_limit=5)
    first: Future[range] = Future()
    second: Future[range] = Future()
    session.awaiting_release[1] = first
    del session.awaiting_release[1]  # PUBREL
    session.awaiting_release[1] = second  # a new message under the same id
    first.set_exception(RuntimeError("late"))
    session.settled(1, first)
    assert session.awaiting_release == {1: second}


# -- the store ---------------------------------------------------------------------------------


def test_a_kept_session_comes_back_present_once() -> None:
    s = store()
    session, present = s.open((DEV, "c1"), clean=False, now=0.0)
    assert present is False
    session.subscriptions["v1/devices/me/attributes"] = 1
    session.awaiting_release[7] = None
    assert s.keep((DEV, "c1"), session, now=1.0) == []
    again, present = s.open((DEV, "c1"), clean=False, now=2.0)
    assert present is True and again is session
    assert again.subscriptions == {"v1/devices/me/attributes": 1}
    assert again.awaiting_release == {7: None}
    assert len(s) == 0  # taken out while its client is connected


def test_clean_session_discards_what_was_kept() -> None:
    s = store()
    session, _ = s.open((DEV, "c1"), clean=False, now=0.0)
    session.subscriptions["x"] = 1
    s.keep((DEV, "c1"), session, now=1.0)
    fresh, present = s.open((DEV, "c1"), clean=True, now=2.0)
    assert present is False and fresh is not session and fresh.subscriptions == {}
    assert (DEV, "c1") not in s
    _, present = s.open((DEV, "c1"), clean=False, now=3.0)
    assert present is False


def test_sessions_are_keyed_by_device_and_client_id() -> None:
    s = store()
    session, _ = s.open((DEV, "same"), clean=False, now=0.0)
    s.keep((DEV, "same"), session, now=0.0)
    _, present = s.open((OTHER, "same"), clean=False, now=1.0)
    assert present is False  # another device's client id names another session
    assert (DEV, "same") in s


def test_expiry_drops_sessions_left_too_long_ago() -> None:
    s = store(expiry_s=10.0)
    for n, left_at in enumerate((0.0, 5.0)):
        session, _ = s.open((DEV, f"c{n}"), clean=False, now=left_at)
        s.keep((DEV, f"c{n}"), session, now=left_at)
    assert s.expire(9.9) == []
    assert [key for key, _ in s.expire(10.0)] == [(DEV, "c0")]
    _, present = s.open((DEV, "c1"), clean=False, now=15.0)  # open expires too
    assert present is False
    assert len(s) == 0


def test_beyond_the_cap_the_longest_disconnected_is_dropped() -> None:
    s = store(max_kept=2)
    for n in range(3):
        session, _ = s.open((DEV, f"c{n}"), clean=False, now=float(n))
        dropped = s.keep((DEV, f"c{n}"), session, now=float(n))
    assert [key for key, _ in dropped] == [(DEV, "c0")]
    assert (DEV, "c0") not in s and (DEV, "c1") in s and (DEV, "c2") in s
    # leaving again makes a session the newest
    session, _ = s.open((DEV, "c1"), clean=False, now=3.0)
    s.keep((DEV, "c1"), session, now=3.0)
    session, _ = s.open((DEV, "c3"), clean=False, now=4.0)
    assert [key for key, _ in s.keep((DEV, "c3"), session, now=4.0)] == [(DEV, "c2")]


def test_a_cap_of_zero_keeps_nothing() -> None:
    s = store(max_kept=0)
    session, _ = s.open((DEV, "c"), clean=False, now=0.0)
    assert s.keep((DEV, "c"), session, now=0.0) == [((DEV, "c"), session)]
    assert len(s) == 0


# -- the registry ------------------------------------------------------------------------------


class FakeHolder:
    def __init__(self, peer: str, *, still_valid: bool = False) -> None:
        self.peer = peer
        self.taken_over = False
        self.ended = asyncio.Event()
        self.still_valid = still_valid  # its token still names its device
        self.revoked: list[Revocation] = []
        self.told: list[Revoked] = []  # as a gateway

    def take_over(self) -> None:
        self.taken_over = True

    async def finished(self) -> None:
        await self.ended.wait()

    def revoke(self, revocation: Revocation) -> bool:
        self.revoked.append(revocation)
        return not self.still_valid

    def forget_devices(self, revoked: Revoked) -> None:
        self.told.append(revoked)


def test_registry_closes_the_older_connection_before_the_newer_takes_the_session() -> None:
    async def scenario() -> None:
        registry = SessionRegistry(store(), takeover_timeout_s=5.0)
        old, new = FakeHolder("a:1"), FakeHolder("b:2")
        session, present = await registry.attach((DEV, "c"), old, clean=False, now=0.0)
        assert present is False
        session.subscriptions["t"] = 1
        attaching = asyncio.create_task(registry.attach((DEV, "c"), new, clean=False, now=1.0))
        await asyncio.sleep(0)
        assert old.taken_over is True and not attaching.done()
        registry.detach((DEV, "c"), old, session, clean=False, now=1.0)  # old ends
        old.ended.set()
        resumed, present = await attaching
        assert present is True and resumed is session
        assert len(registry) == 1

    asyncio.run(scenario())


def test_registry_detach_of_a_connection_that_no_longer_holds_its_key_keeps_nothing() -> None:
    async def scenario() -> None:
        registry = SessionRegistry(store(), takeover_timeout_s=0.01)
        old, new = FakeHolder("a:1"), FakeHolder("b:2")
        stale, _ = await registry.attach((DEV, "c"), old, clean=False, now=0.0)
        # the old one never ends in time: the new one goes ahead with a new session
        session, present = await registry.attach((DEV, "c"), new, clean=False, now=1.0)
        assert present is False and session is not stale
        registry.detach((DEV, "c"), old, stale, clean=False, now=2.0)  # late: ignored
        assert (DEV, "c") not in registry.store
        registry.detach((DEV, "c"), new, session, clean=False, now=3.0)
        assert (DEV, "c") in registry.store and len(registry) == 0

    asyncio.run(scenario())


def test_registry_keeps_no_clean_session() -> None:
    async def scenario() -> None:
        registry = SessionRegistry(store(), takeover_timeout_s=1.0)
        holder = FakeHolder("a:1")
        session, _ = await registry.attach((DEV, "c"), holder, clean=True, now=0.0)
        registry.detach((DEV, "c"), holder, session, clean=True, now=1.0)
        assert len(registry.store) == 0 and len(registry) == 0

    asyncio.run(scenario())


def test_registry_tells_a_revocation_to_its_devices_connections_and_every_gateway() -> None:
    """From its authentication to its end (enter / leave, whether it ever attached), each
    connection of a revoked device is told, and closes unless its token still names the
    device; the connections of other devices are not told; every gateway is told, to forget
    the devices it serves among them."""
    registry = SessionRegistry(store(), takeover_timeout_s=1.0)
    other = uuid.UUID(int=99)
    old, renewed = FakeHolder("a:1"), FakeHolder("b:2", still_valid=True)
    bystander = FakeHolder("c:3")
    gateway, gone = FakeHolder("g:4"), FakeHolder("d:5")
    registry.enter(DEV, old, gateway=False)
    registry.enter(DEV, renewed, gateway=False)
    registry.enter(other, bystander, gateway=False)
    registry.enter(other, gateway, gateway=True)
    registry.enter(DEV, gone, gateway=True)
    registry.leave(DEV, gone)  # ended: told nothing
    revocation = Revocation(DEV, TOKEN_CHANGED, "its access token was changed by the cloud")
    assert registry.revoke({DEV: revocation}) == 1  # renewed stays
    assert (old.revoked, renewed.revoked, bystander.revoked, gateway.revoked) == (
        [revocation], [revocation], [], [])
    assert (gateway.told, gone.told, gone.revoked) == ([{DEV: revocation}], [], [])
    for holder in (old, renewed):
        registry.leave(DEV, holder)
    registry.leave(other, bystander)
    registry.leave(other, gateway)
    assert registry.revoke({DEV: revocation, other: revocation}) == 0
    assert len(old.revoked) == 1 and len(gateway.told) == 1


# -- dropped sessions: logged and counted --------------------------------------------------------


DROPPED = "edge_sync_mqtt_sessions_dropped_total"


def dropped(metrics: Metrics) -> dict[str, float]:
    return {name: value for name, value in metrics.snapshot().items()
            if name.startswith(DROPPED)}


def test_registry_logs_and_counts_sessions_dropped_beyond_the_cap_and_expired() -> None:
    async def scenario() -> None:
        metrics = Metrics()
        registry = SessionRegistry(store(max_kept=1, expiry_s=10.0), takeover_timeout_s=1.0,
                                   metrics=metrics)
        for n, client in enumerate(("c1", "c2")):
            holder = FakeHolder(f"a:{n}")
            session, _ = await registry.attach((DEV, client), holder, clean=False, now=float(n))
            registry.detach((DEV, client), holder, session, clean=False, now=float(n))
        assert dropped(metrics) == {f'{DROPPED}{{reason="max_sessions"}}': 1}
        registry.expire(11.0)  # c2 left at 1.0
        assert dropped(metrics) == {f'{DROPPED}{{reason="expired"}}': 1,
                                    f'{DROPPED}{{reason="max_sessions"}}': 1}
        assert len(registry.store) == 0

    logs = Logs()
    try:
        asyncio.run(scenario())
    finally:
        logs.close()
    (capped,) = logs.matching("kept MQTT session dropped: more than mqtt.max_sessions")
    assert (capped["level"].name, capped["extra"]["client_id"]) == ("WARNING", "c1")
    (expired,) = logs.matching("kept MQTT session expired")
    assert (expired["level"].name, expired["extra"]["client_id"]) == ("INFO", "c2")


def test_registry_counts_a_session_dropped_because_its_older_connection_did_not_end() -> None:
    async def scenario() -> None:
        metrics = Metrics()
        registry = SessionRegistry(store(), takeover_timeout_s=0.01, metrics=metrics)
        await registry.attach((DEV, "c"), FakeHolder("a:1"), clean=False, now=0.0)
        _, present = await registry.attach((DEV, "c"), FakeHolder("b:2"), clean=False, now=1.0)
        assert present is False
        assert dropped(metrics) == {f'{DROPPED}{{reason="takeover"}}': 1}

    asyncio.run(scenario())


# -- what a discarded session loses; an idle session's size; unknown PUBACKs -------------------


def test_outbox_says_what_it_keeps_never_written_and_written_unacknowledged() -> None:
    """Receive Maximum 1: of three messages one is written; after a restart (the written one
    waits again with its id) and one resend, still one written and two never written; the
    written one acknowledged, none."""
    box = Outbox(limit=10)
    box.restart(1)
    for n in range(3):
        send(box, "t", bytes([n]))
    assert box.kept() == (2, 1)
    box.restart(1)  # nothing in flight: 0 waits again, sent before
    assert box.kept() == (2, 1)
    message = box.due()
    assert message is not None and box.sending(message) is True
    assert box.kept() == (2, 1)
    assert box.acked(message.packet_id) is message
    assert box.kept() == (2, 0)


class CountingDeque(deque[OutMessage]):
    """A wait list that counts the messages read from it."""

    reads = 0

    def __iter__(self) -> Iterator[OutMessage]:
        for message in super().__iter__():
            CountingDeque.reads += 1
            yield message

    def __getitem__(self, index: Any) -> Any:
        CountingDeque.reads += 1
        return super().__getitem__(index)


def test_a_puback_for_an_unknown_id_reads_no_waiting_message_unless_one_was_sent_before() -> None:
    """A PUBACK whose id the edge does not know costs no scan of the wait list while none of
    the messages waiting was sent on an earlier connection; with one so sent, only it is
    read."""
    box = Outbox(limit=1000)
    box.restart(1)
    for n in range(1000):
        send(box, "t", str(n).encode())  # 0 written, 999 wait
    box._waiting = CountingDeque(box._waiting or ())
    CountingDeque.reads = 0
    for packet_id in (7, 500, 65535):
        assert box.acked(packet_id) is None
    assert CountingDeque.reads == 0
    box.restart(1)  # the written one waits again, at the front, with its id
    box._waiting = CountingDeque(box._waiting or ())
    CountingDeque.reads = 0
    assert box.acked(7) is None
    assert CountingDeque.reads == 1
    acked = box.acked(1)
    assert acked is not None and acked.payload == b"0" and box.kept() == (999, 0)


def test_an_idle_session_is_small() -> None:
    """What a session of an idle connection holds stays small (10,000 idle connections are a
    benchmark target): a session without messages under 600 bytes (an empty wait list and set
    of held ids took 1 KB more)."""
    tracemalloc.start()
    try:
        before = tracemalloc.take_snapshot()
        sessions = [Session(1000) for _ in range(1000)]
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    assert len(sessions) == 1000
    assert grown / 1000 < 600


DISCARDED = "edge_sync_mqtt_messages_discarded_total"


def lost(metrics: Metrics) -> dict[str, float]:
    return {name: value for name, value in metrics.snapshot().items()
            if name.startswith(DISCARDED) and value}


def holding(session: Session, written: int, waiting: int) -> Session:
    """``session`` with ``written`` messages written and ``waiting`` never written."""
    box = session.outbox
    box.restart(None)
    for n in range(written):
        send(box, "v1/devices/me/rpc/request/1", str(n).encode())
    box.restart(written or 1)  # the written ones wait again, sent before: none is due now
    for _ in range(written):
        message = box.due()
        assert message is not None and box.sending(message) is True
    for n in range(waiting):
        box.add("v1/devices/me/rpc/request/1", str(n).encode())
    return session


def test_registry_counts_and_tells_the_messages_of_every_session_it_discards() -> None:
    """A session not kept at its connection's end (returned for its disconnect line), one a
    clean start discards, one expired, one dropped beyond mqtt.max_sessions and one whose
    connection was taken over without waiting: each of its QoS 1 messages counted, never
    written or written and not acknowledged; the lines that tell of a discard say how many."""
    async def scenario() -> None:
        metrics = Metrics()
        registry = SessionRegistry(store(max_kept=1, expiry_s=10.0), takeover_timeout_s=0.01,
                                   metrics=metrics)
        holder = FakeHolder("a:1")
        session, _ = await registry.attach((DEV, "clean"), holder, clean=True, now=0.0)
        assert registry.detach((DEV, "clean"), holder, holding(session, 1, 2), clean=True,
                               now=0.0) == (2, 1)
        assert lost(metrics) == {f'{DISCARDED}{{reason="session_unsent"}}': 2,
                                 f'{DISCARDED}{{reason="session_unacked"}}': 1}
        # kept, then discarded by a clean start
        session, _ = await registry.attach((DEV, "k"), holder, clean=False, now=1.0)
        assert registry.detach((DEV, "k"), holder, holding(session, 1, 0), clean=False,
                               now=1.0) == (0, 0)
        session, _ = await registry.attach((DEV, "k"), holder, clean=True, now=2.0)
        registry.detach((DEV, "k"), holder, session, clean=True, now=2.0)
        # kept, then dropped beyond the cap by another one kept
        session, _ = await registry.attach((DEV, "m"), holder, clean=False, now=3.0)
        registry.detach((DEV, "m"), holder, holding(session, 0, 3), clean=False, now=3.0)
        session, _ = await registry.attach((DEV, "e"), holder, clean=False, now=4.0)
        registry.detach((DEV, "e"), holder, holding(session, 2, 1), clean=False, now=4.0)
        registry.expire(14.0)  # e left at 4.0
        assert len(registry.store) == 0
        # taken over without waiting: the older connection's session, when it ends
        stale, _ = await registry.attach((DEV, "t"), FakeHolder("b:2"), clean=False, now=15.0)
        await registry.attach((DEV, "t"), FakeHolder("c:3"), clean=False, now=16.0)
        assert registry.detach((DEV, "t"), FakeHolder("b:2"), holding(stale, 1, 0),
                               clean=False, now=17.0) == (0, 1)
        assert lost(metrics) == {f'{DISCARDED}{{reason="session_unsent"}}': 2 + 3 + 1,
                                 f'{DISCARDED}{{reason="session_unacked"}}': 1 + 1 + 2 + 1}

    logs = Logs()
    try:
        asyncio.run(scenario())
    finally:
        logs.close()
    (clean,) = logs.matching("kept MQTT session discarded: its client connected with a clean")
    assert (clean["extra"]["client_id"], clean["extra"]["unsent"],
            clean["extra"]["unacked"]) == ("k", 0, 1)
    (capped,) = logs.matching("kept MQTT session dropped: more than mqtt.max_sessions")
    assert (capped["extra"]["client_id"], capped["extra"]["unsent"],
            capped["extra"]["unacked"]) == ("m", 3, 0)
    (expired,) = logs.matching("kept MQTT session expired")
    assert (expired["extra"]["client_id"], expired["extra"]["unsent"],
            expired["extra"]["unacked"]) == ("e", 1, 2)


def test_the_server_stop_loses_the_kept_sessions_counted_and_told_in_one_line() -> None:
    """``stopped``: the sessions kept are lost (memory only): each counted as server_stop, their
    messages as every discarded session's, one line for them all (INFO when they held no
    message). A connection that ends after the stop keeps nothing: its session is counted
    too, and said in its own disconnect line (the counts ``detach`` returns)."""
    async def scenario() -> None:
        metrics = Metrics()
        registry = SessionRegistry(store(), takeover_timeout_s=0.01, metrics=metrics)
        holder, late = FakeHolder("a:1"), FakeHolder("b:2")
        for client_id, written, waiting in (("one", 1, 2), ("two", 0, 1), ("empty", 0, 0)):
            session, _ = await registry.attach((DEV, client_id), holder, clean=False, now=0.0)
            registry.detach((DEV, client_id), holder, holding(session, written, waiting),
                            clean=False, now=0.0)
        still, _ = await registry.attach((DEV, "late"), late, clean=False, now=0.0)
        registry.stopped()
        assert len(registry.store) == 0
        assert lost(metrics) == {f'{DISCARDED}{{reason="session_unsent"}}': 3,
                                 f'{DISCARDED}{{reason="session_unacked"}}': 1}
        assert registry.detach((DEV, "late"), late, holding(still, 1, 1), clean=False,
                               now=1.0) == (1, 1)
        assert len(registry.store) == 0
        assert lost(metrics) == {f'{DISCARDED}{{reason="session_unsent"}}': 4,
                                 f'{DISCARDED}{{reason="session_unacked"}}': 2}
        assert dropped(metrics) == {f'{DROPPED}{{reason="server_stop"}}': 4}
        quiet = SessionRegistry(store(), takeover_timeout_s=0.01, metrics=Metrics())
        session, _ = await quiet.attach((DEV, "q"), holder, clean=False, now=0.0)
        quiet.detach((DEV, "q"), holder, session, clean=False, now=0.0)
        quiet.stopped()
        SessionRegistry(store(), takeover_timeout_s=0.01, metrics=Metrics()).stopped()  # none

    logs = Logs()
    try:
        asyncio.run(scenario())
    finally:
        logs.close()
    lines = logs.matching("MQTT server stopped")
    assert [(r["level"].name, r["extra"]["sessions"], r["extra"]["unsent"], r["extra"]["unacked"])
            for r in lines] == [("WARNING", 3, 3, 1), ("INFO", 1, 0, 0)]
