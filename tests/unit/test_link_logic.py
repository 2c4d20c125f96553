"""Pure link logic: backoff with jitter and stable reset, the circuit breaker, the link state
machine's guarded transitions, and packing events into UplinkMsgs."""

from __future__ import annotations

import dataclasses
import random
import uuid
from typing import Any

import pytest

from edge_sync.cloud.uplink_payloads import uplink_events
from edge_sync.common.wire import Owner, uuid_halves, uuid_of
from edge_sync.link.backoff import Backoff, BackoffPolicy
from edge_sync.link.breaker import BreakerPolicy, BreakerState, CircuitBreaker
from edge_sync.link.packer import ENVELOPE_BYTES, hold_keys, holds, pack, relation_ends
from edge_sync.link.state import IllegalTransition, LinkState, LinkStateMachine
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import NIL_UUID, Action, Lane, StoredEvent

OWNER = Owner(uuid.UUID(int=7))


def test_backoff_grows_exponentially_to_the_cap_without_jitter() -> None:
    b = Backoff(BackoffPolicy(initial_s=3, max_s=60, multiplier=2, jitter=0))
    assert [b.next_delay() for _ in range(7)] == [3, 6, 12, 24, 48, 60, 60]


def test_backoff_jitter_stays_within_its_fraction() -> None:
    b = Backoff(BackoffPolicy(initial_s=10, max_s=10, multiplier=2, jitter=0.2),
                rng=random.Random(7))
    delays = [b.next_delay() for _ in range(500)]
    assert min(delays) >= 8 and max(delays) <= 12
    assert max(delays) - min(delays) > 2  # it really spreads


def test_backoff_resets_only_after_a_stable_connection() -> None:
    b = Backoff(BackoffPolicy(initial_s=1, max_s=100, multiplier=2, jitter=0, stable_after_s=30))
    for _ in range(3):
        b.next_delay()
    b.connected(now=100.0)
    b.disconnected(now=110.0)  # up 10 s: a flap, keep backing off
    assert b.next_delay() == 8
    b.connected(now=200.0)
    b.disconnected(now=240.0)  # up 40 s: stable, start again
    assert b.next_delay() == 1
    assert b.max_delay() == 100


def test_breaker_opens_after_threshold_and_closes_after_a_good_probe() -> None:
    br = CircuitBreaker(BreakerPolicy(failure_threshold=3, open_s=60))
    assert br.allows(0)
    assert [br.record_failure(t) for t in (1, 2)] == [BreakerState.CLOSED] * 2
    assert br.record_failure(3) is BreakerState.OPEN
    assert not br.allows(62.9)
    assert br.reopens_at() == 63
    assert br.allows(63) and br.state is BreakerState.HALF_OPEN
    assert br.record_failure(64) is BreakerState.OPEN  # failed probe: open again at once
    assert not br.allows(100) and br.allows(124)
    assert br.record_success() is BreakerState.CLOSED
    assert br.failures == 0 and br.times_opened == 2


def test_link_state_machine_refuses_illegal_transitions() -> None:
    seen: list[tuple[str, str]] = []
    sm = LinkStateMachine(on_change=lambda a, b, _r: seen.append((a.value, b.value)))
    sm.to(LinkState.CONNECTING, "start")
    sm.to(LinkState.SYNCING, "accepted")
    sm.to(LinkState.CONNECTED, "synced")
    sm.to(LinkState.CONNECTED, "again")  # no-op, not logged twice
    with pytest.raises(IllegalTransition):
        sm.to(LinkState.SYNCING, "not from CONNECTED")
    sm.to(LinkState.BACKOFF, "broken")
    assert seen == [("DISCONNECTED", "CONNECTING"), ("CONNECTING", "SYNCING"),
                    ("SYNCING", "CONNECTED"), ("CONNECTED", "BACKOFF")]
    assert sm.transitions == 4


def test_uuid_halves_round_trip_and_sign() -> None:
    for u in [uuid.uuid4() for _ in range(200)] + [uuid.UUID(int=2**128 - 1), NIL_UUID]:
        assert uuid_of(*uuid_halves(u)) == u
    assert uuid_halves(uuid.UUID(int=2**128 - 1)) == (-1, -1)


def _event(seq: int, entity: uuid.UUID, action: str = Action.TIMESERIES_UPDATED,
           size: int = 1, lane: Lane = Lane.NORMAL) -> StoredEvent:
    if action == Action.TIMESERIES_UPDATED:
        body: object = {"ts": 1000 + seq, "values": {"v": "x" * size}}
    elif action == Action.CREDENTIALS_UPDATED:
        body = {"deviceId": str(entity), "credentialsId": "tok"}
    else:
        body = {"id": str(entity), "name": f"d-{entity}", "type": "default"}
    return StoredEvent(seq=seq, id=uuid.uuid4(), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="DEVICE", entity_type="DEVICE", entity_id=entity,
                       action=action, body=body, ts=1000 + seq, lane=lane)


def test_pack_keeps_read_order_and_sets_seqs() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    events = [_event(1, a, Action.ADDED, lane=Lane.HIGH), _event(2, a), _event(3, b)]
    p = pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER, ordered_peer=True)
    assert p.seqs == [1, 2, 3]
    assert p.msg.firstEdgeSeqId == 1
    assert p.last_seq == {Lane.HIGH: 1, Lane.NORMAL: 3}
    applied = uplink_events(p.msg)
    assert sorted((e.seq, e.action) for e in applied) == [
        (1, "ADDED"), (2, "TIMESERIES_UPDATED"), (3, "TIMESERIES_UPDATED")]


def test_pack_respects_size_and_count_limits() -> None:
    a = uuid.uuid4()
    events = [_event(i, a, size=1000) for i in range(1, 11)]
    p = pack(events, max_bytes=ENVELOPE_BYTES + 3 * 1100, max_events=100, owner=OWNER,
             ordered_peer=True)
    assert p.seqs == [1, 2, 3]
    assert p.msg.ByteSize() <= ENVELOPE_BYTES + 3 * 1100
    p = pack(events, max_bytes=4 << 20, max_events=4, owner=OWNER, ordered_peer=True)
    assert p.seqs == [1, 2, 3, 4]


def test_an_event_larger_than_any_message_is_set_aside_not_stuck() -> None:
    a = uuid.uuid4()
    events = [_event(1, a, size=10), _event(2, a, size=50_000), _event(3, a, size=10)]
    p = pack(events, max_bytes=10_000, max_events=100, owner=OWNER, ordered_peer=True)
    assert p.seqs == [1, 3]
    assert [(e.seq, s > 10_000) for e, s in p.too_large] == [(2, True)]
    assert p.last_seq[Lane.NORMAL] == 3


def test_thingsboard_peer_never_has_two_order_sensitive_events_of_an_entity_in_flight() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    events = [_event(1, a, Action.ADDED, lane=Lane.HIGH),
              _event(2, a, Action.CREDENTIALS_UPDATED, lane=Lane.HIGH),
              _event(3, b, Action.ADDED, lane=Lane.HIGH)]
    p = pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER, ordered_peer=False)
    assert p.seqs == [1]  # a's second lifecycle event waits for the first to be acknowledged
    # with a's creation in flight, a's telemetry waits too; b is free
    p2 = pack([_event(4, a), _event(5, b)], max_bytes=4 << 20, max_events=100,
              owner=OWNER, ordered_peer=False, busy={a}, busy_sensitive={a})
    assert p2.seqs == []
    p3 = pack([_event(5, b), _event(6, b)], max_bytes=4 << 20, max_events=100,
              owner=OWNER, ordered_peer=False, busy={a}, busy_sensitive={a})
    assert p3.seqs == [5, 6]  # telemetry of one entity may be pipelined
    # the ordered reference cloud needs none of that
    assert pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER,
                ordered_peer=True).seqs == [1, 2, 3]


def test_pack_holds_a_waiting_entity_and_its_later_events_and_packs_the_others() -> None:
    """Hold mode (a peer without ordered apply): an event that must wait, or whose entity is in
    ``hold``, is set aside with its entity's later events, up to max_hold; then packing stops."""
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    events = [_event(1, a, Action.ADDED, lane=Lane.HIGH), _event(2, a), _event(3, b),
              _event(4, c), _event(5, a), _event(6, b)]
    p = pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER, ordered_peer=False,
             hold={c}, max_hold=10)
    assert (p.seqs, [e.seq for e in p.held], p.consumed) == ([1, 3, 6], [2, 4, 5], 6)
    assert p.last_seq == {Lane.HIGH: 1, Lane.NORMAL: 6}
    p = pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER, ordered_peer=False,
             hold={c}, max_hold=1)
    assert (p.seqs, [e.seq for e in p.held], p.consumed) == ([1, 3], [2], 3)  # stops at 4


def _alarm(seq: int, alarm_id: uuid.UUID, device: uuid.UUID) -> StoredEvent:
    return StoredEvent(seq=seq, id=uuid.uuid4(), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="ALARM", entity_type="ALARM", entity_id=alarm_id,
                       action=Action.ADDED, body={"id": str(alarm_id), "originator": str(device),
                                                  "type": "overheat", "severity": "MAJOR"},
                       ts=1000 + seq, lane=Lane.HIGH)


def test_an_alarm_is_held_for_its_originator_device() -> None:
    """A peer without ordered apply: an alarm's entity is the alarm, but it must not overtake
    its device's creation, so it waits while its originator has an order-sensitive event in
    flight or in this message, events held, or a failed message unsettled (``hold``)."""
    a, b, alarm_a = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    alarm = _alarm(2, alarm_a, a)
    assert hold_keys(alarm) == (alarm_a, a) and hold_keys(_event(1, a)) == (a,)

    def packed(events: list[StoredEvent], **kw: Any) -> tuple[list[int], list[int]]:
        p = pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER, ordered_peer=False,
                 max_hold=10, **kw)
        return p.seqs, [e.seq for e in p.held]

    assert packed([alarm, _event(3, b)], busy={a}, busy_sensitive={a}) == ([3], [2])
    assert packed([_event(1, a, Action.ADDED, lane=Lane.HIGH), alarm]) == ([1], [2])
    assert packed([alarm, _event(3, b)], hold={a}) == ([3], [2])
    # the device's update held behind its telemetry in flight: the alarm stays behind it too
    assert packed([_event(4, a, Action.UPDATED), alarm, _event(3, b)], busy={a}) == ([3], [4, 2])
    # the device's telemetry in flight alone does not hold it
    assert packed([alarm], busy={a}) == ([2], [])
    # an alarm's acknowledgement waiting for its creation in flight does not hold the device
    ack = dataclasses.replace(_alarm(5, alarm_a, a), action=Action.ALARM_ACK)
    assert packed([ack, _event(6, a)], busy={alarm_a}, busy_sensitive={alarm_a}) == ([6], [5])
    assert packed([alarm, ack, _event(6, b)], hold={a}) == ([6], [2, 5])
    # the ordered reference cloud needs none of that
    assert pack([_event(1, a, Action.ADDED, lane=Lane.HIGH), alarm], max_bytes=4 << 20,
                max_events=100, owner=OWNER, ordered_peer=True).seqs == [1, 2]


def _relation(seq: int, src: uuid.UUID, dst: uuid.UUID,
              action: str = Action.RELATION_DELETED) -> StoredEvent:
    return StoredEvent(seq=seq, id=uuid.uuid4(), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="RELATION", entity_type="ASSET", entity_id=src,
                       action=action, body={"from": {"entityType": "ASSET", "id": str(src)},
                                            "to": {"entityType": "DEVICE", "id": str(dst)},
                                            "type": "Contains", "typeGroup": "COMMON"},
                       ts=1000 + seq, lane=Lane.NORMAL)


def _relation_request(seq: int, entity: uuid.UUID) -> StoredEvent:
    return StoredEvent(seq=seq, id=uuid.uuid4(), created_time=1, tenant_id=NIL_UUID,
                       edge_id=NIL_UUID, type="DEVICE", entity_type="DEVICE", entity_id=entity,
                       action=Action.RELATION_REQUEST, body={}, ts=1000 + seq, lane=Lane.NORMAL)


def test_a_relation_held_holds_both_its_ends_and_a_request_for_either() -> None:
    """A peer without ordered apply: a relation C -> A held (C busy) holds A's later events too,
    so a RELATION_REQUEST for A cannot overtake it (ThingsBoard would answer with C -> A as it
    still is in the cloud). A request also waits while its entity is an end of a relation in
    this message or in flight (``busy_relations``)."""
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    rel = _relation(10, c, a)
    assert relation_ends(rel) == (c, a) and holds(rel) == (c, a)
    assert relation_ends(_event(1, a)) == () and holds(_event(1, a)) == (a,)
    alarm = _alarm(2, uuid.uuid4(), a)
    assert holds(alarm) == (alarm.entity_id,)  # an alarm held leaves its device free

    def packed(events: list[StoredEvent], **kw: Any) -> tuple[list[int], list[int]]:
        p = pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER, ordered_peer=False,
                 max_hold=10, **kw)
        return p.seqs, [e.seq for e in p.held]

    request_a, request_b = _relation_request(11, a), _relation_request(12, b)
    assert packed([rel, request_a, request_b], busy={c}, busy_sensitive={c}) == ([12], [10, 11])
    assert packed([rel, _event(13, a), request_b], hold={c}) == ([12], [10, 13])
    # in one message: the relation goes, the request for either end waits
    assert packed([rel, request_a, _relation_request(14, c), request_b]) == ([10, 12], [11, 14])
    # in flight: the request for its to end waits (its from end is busy_sensitive anyway)
    assert packed([request_a, request_b], busy={c}, busy_sensitive={c},
                  busy_relations={c, a}) == ([12], [11])
    assert packed([request_a, _event(13, a)], busy={c}, busy_sensitive={c},
                  busy_relations={c, a}) == ([], [11, 13])
    # the ordered reference cloud needs none of that
    assert pack([rel, request_a], max_bytes=4 << 20, max_events=100, owner=OWNER,
                ordered_peer=True, busy={c}, busy_sensitive={c},
                busy_relations={c, a}).seqs == [10, 11]


def test_held_events_are_bounded_by_their_stored_size() -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    events = [dataclasses.replace(_event(s, a), size=400) for s in (1, 2, 3)] + [_event(4, b)]
    p = pack(events, max_bytes=4 << 20, max_events=100, owner=OWNER, ordered_peer=False,
             hold={a}, max_hold=10, max_hold_bytes=800)
    assert (p.seqs, [e.seq for e in p.held], p.held_bytes, p.consumed) == ([], [1, 2], 800, 2)


def test_pack_skips_dead_lettered_seqs() -> None:
    a = uuid.uuid4()
    p = pack([_event(1, a), _event(2, a), _event(3, a)], max_bytes=4 << 20, max_events=100,
             owner=OWNER, ordered_peer=True, skip={2})
    assert p.seqs == [1, 3]
    assert p.last_seq[Lane.NORMAL] == 3


def test_uplink_events_rejects_bad_payloads_naming_the_seq() -> None:
    msg = edge_pb2.UplinkMsg()
    d = msg.entityData.add(entityIdMSB=1, entityIdLSB=2, entityType="DEVICE", edgeSeqId=9)
    d.postTelemetryMsg.tsKvList.add(ts=5)  # no kv
    with pytest.raises(Exception) as info:
        uplink_events(msg)
    assert getattr(info.value, "seq", None) == 9
    assert "no key/value" in str(info.value)
