"""The rule windows on their own (edge_sync/rules/window.py): deduplication FIRST / LAST / ALL,
the aggregation summary, maxPendingMsgs overflow, restore + replay idempotency and clock jumps,
every step driven by explicit edge times (ms) standing in for the injected clock."""

from __future__ import annotations

import json

import pytest

from edge_sync.rules.window import (
    Added,
    AggregateWindows,
    ClockJump,
    DedupWindows,
    Msg,
    OutMsg,
)

NODE, DEV = "node-1", "dev-A"
T0 = 1_700_000_000_000


def m(seq: int, ts: int, data: object, **meta: str) -> Msg:
    return Msg(seq, ts, "POST_TELEMETRY_REQUEST", json.dumps(data), dict(meta))


def feed(w: DedupWindows | AggregateWindows, msgs: list[Msg], now: int = T0) -> list[Added]:
    return [w.add(NODE, DEV, x, now).added for x in msgs]


MSGS = [m(1, 500, {"t": 1}, k="a"), m(2, 100, {"t": 2}, k="b"), m(3, 900, {"t": 3}, k="c"),
        m(4, 100, {"t": 4}, k="d"), m(5, 900, {"t": 5}, k="e")]


@pytest.mark.parametrize(("strategy", "expected"), [("FIRST", MSGS[1]), ("LAST", MSGS[2])])
def test_first_last_pick_by_ts_earliest_arrival_on_ties(strategy: str, expected: Msg) -> None:
    w = DedupWindows(strategy, interval_s=10, queue_name="Main")
    assert feed(w, MSGS) == [Added.ADDED] * 5
    assert w.due(T0 + 9_999).closed == []
    res = w.due(T0 + 10_000)
    assert [(c.key, c.output, c.count, c.overflow, c.opened, c.closed) for c in res.closed] == [
        ((NODE, DEV), OutMsg(DEV, expected.type, expected.data, expected.metadata, "Main",
                             expected.ts), 5, 0, T0, T0 + 10_000)]
    assert res.jumps == []
    assert w.open_keys() == []


def test_all_packs_in_arrival_order() -> None:
    w = DedupWindows("ALL", interval_s=10, out_msg_type="DEDUP")
    feed(w, MSGS[:3])
    [closed] = w.due(T0 + 10_000).closed
    assert closed.output == OutMsg(DEV, "DEDUP", json.dumps([
        {"msg": {"t": 1}, "metadata": {"k": "a"}},
        {"msg": {"t": 2}, "metadata": {"k": "b"}},
        {"msg": {"t": 3}, "metadata": {"k": "c"}}]), {"ts": str(T0 + 10_000)}, None, T0 + 10_000)


def test_windows_are_per_node_and_originator_and_a_new_one_opens_after_close() -> None:
    w = DedupWindows("FIRST", interval_s=1)
    w.add(NODE, DEV, MSGS[0], T0)
    w.add(NODE, "dev-B", MSGS[1], T0 + 500)
    w.add("node-2", DEV, MSGS[2], T0 + 500)
    assert [c.key for c in w.due(T0 + 1_000).closed] == [(NODE, DEV)]
    assert [c.key for c in w.due(T0 + 1_500).closed] == [(NODE, "dev-B"), ("node-2", DEV)]
    assert w.add(NODE, DEV, MSGS[3], T0 + 2_000).added == Added.ADDED
    [c] = w.due(T0 + 3_000).closed
    assert (c.opened, c.output.data) == (T0 + 2_000, MSGS[3].data)


def test_max_pending_overflow_is_counted_not_silently_dropped() -> None:
    w = DedupWindows("ALL", interval_s=10, max_pending=2, out_msg_type="DEDUP")
    assert feed(w, MSGS) == [Added.ADDED, Added.ADDED, Added.OVERFLOW, Added.OVERFLOW,
                             Added.OVERFLOW]
    assert w.add(NODE, DEV, MSGS[2], T0).added == Added.DUPLICATE  # counted once
    [c] = w.due(T0 + 10_000).closed
    assert (c.count, c.overflow) == (2, 3)
    assert [e["msg"] for e in json.loads(c.output.data)] == [{"t": 1}, {"t": 2}]


def test_spec_example_1000_messages_one_summary_exact() -> None:
    w = AggregateWindows(interval_s=60)
    added = [w.add(NODE, DEV, m(i, T0 + i, {"temp": i, "hum": i / 10, "on": True, "s": "x"}),
                   T0 + i).added for i in range(1, 1001)]
    assert added == [Added.ADDED] * 1000
    assert w.due(T0 + 60_000).closed == []  # opened at T0 + 1
    [c] = w.due(T0 + 60_001).closed
    hum_sum = 0.0
    for i in range(1, 1001):
        hum_sum += i / 10
    assert c.count == 1000
    assert (c.output.type, c.output.ts) == ("POST_TELEMETRY_REQUEST", T0 + 60_001)
    assert c.output.metadata == {"ts": str(T0 + 60_001), "msgCount": "1000"}
    # flat and telemetry-shaped, keys sorted: ThingsBoard stores it as timeseries
    assert list(json.loads(c.output.data).items()) == [
        ("hum_min", 0.1), ("hum_max", 100.0), ("hum_avg", hum_sum / 1000), ("hum_sum", hum_sum),
        ("hum_count", 1000),
        ("temp_min", 1), ("temp_max", 1000), ("temp_avg", 500.5), ("temp_sum", 500500),
        ("temp_count", 1000)]


def test_float_sum_is_plain_arrival_order_addition() -> None:
    w = AggregateWindows(interval_s=1)
    feed(w, [m(i, 0, {"v": 0.1}) for i in range(10)])
    [c] = w.due(T0 + 1_000).closed
    assert json.loads(c.output.data) == {"v_min": 0.1, "v_max": 0.1,
                                         "v_avg": 0.09999999999999999,
                                         "v_sum": 0.9999999999999999, "v_count": 10}


def test_restore_plus_replay_gives_the_same_summary() -> None:
    msgs = [m(i, T0, {"v": i}) for i in range(1, 101)]
    straight = AggregateWindows(interval_s=10)
    feed(straight, msgs)
    expected = straight.due(T0 + 10_000).closed

    crashed = AggregateWindows(interval_s=10)
    feed(crashed, msgs[:60])
    record = json.loads(json.dumps(crashed.to_record()))
    restored = AggregateWindows.from_record(record, interval_s=10)
    assert feed(restored, msgs) == [Added.DUPLICATE] * 60 + [Added.ADDED] * 40
    assert restored.due(T0 + 10_000).closed == expected
    # a replay after the close is not counted into a new window either
    assert feed(restored, msgs[90:]) == [Added.DUPLICATE] * 10
    assert restored.open_keys() == []


def test_the_record_keeps_the_last_seq_only_whatever_the_window_size() -> None:
    w = AggregateWindows(interval_s=10, out_msg_type="AGG")
    feed(w, [m(i, T0, {"v": i}) for i in range(1, 5001)])
    record = w.to_record()
    assert record == {
        "windows": [{"node": NODE, "originator": DEV, "opened": T0, "deadline": T0 + 10_000,
                     "last_seen": T0, "count": 5000, "overflow": 0, "last_seq": 5000,
                     "state": {"v": {"count": 5000, "sum": 12502500, "min": 1, "max": 5000}}}],
        "closed_seq": []}
    assert w.next_deadline() == T0 + 10_000
    [c] = w.due(T0 + 10_000).closed
    assert c.output.type == "AGG"
    assert (w.next_deadline(), w.to_record()) == (None, {"windows": [],
                                                        "closed_seq": [[NODE, DEV, 5000]]})


def test_a_seq_at_or_below_the_last_one_is_a_duplicate() -> None:
    w = AggregateWindows(interval_s=10)
    assert feed(w, [m(5, 0, {"v": 1}), m(3, 0, {"v": 2}), m(5, 0, {"v": 3}),
                    m(6, 0, {"v": 4})]) == [Added.ADDED, Added.DUPLICATE, Added.DUPLICATE,
                                            Added.ADDED]
    [c] = w.due(T0 + 10_000).closed
    assert (c.count, json.loads(c.output.data)["v_sum"]) == (2, 5)


def test_dedup_restore_plus_replay() -> None:
    w = DedupWindows("ALL", interval_s=10, max_pending=3, out_msg_type="DEDUP")
    feed(w, MSGS[:4])
    restored = DedupWindows.from_record(json.loads(json.dumps(w.to_record())), "ALL", 10, 3,
                                        "DEDUP")
    assert feed(restored, MSGS) == [Added.DUPLICATE] * 4 + [Added.OVERFLOW]
    assert w.add(NODE, DEV, MSGS[4], T0).added == Added.OVERFLOW
    assert restored.due(T0 + 10_000) == w.due(T0 + 10_000)


def test_backward_jump_keeps_the_time_left_on_the_new_clock() -> None:
    w = DedupWindows("LAST", interval_s=10)
    w.add(NODE, DEV, MSGS[0], T0)
    assert w.due(T0 + 4_000).closed == []
    res = w.due(T0 - 50_000)  # clock set back 54 s, 6 s left
    assert (res.closed, res.jumps) == ([], [ClockJump((NODE, DEV), "backward", 54_000)])
    added = w.add(NODE, DEV, MSGS[2], T0 - 49_000)
    assert (added.added, added.jump) == (Added.ADDED, None)
    assert w.due(T0 - 44_001).closed == []
    res = w.due(T0 - 44_000)
    assert [(c.count, c.output.data, c.opened, c.closed) for c in res.closed] == [
        (2, MSGS[2].data, T0, T0 - 44_000)]
    assert res.jumps == []


def test_backward_jump_seen_on_add_is_reported() -> None:
    w = AggregateWindows(interval_s=10)
    w.add(NODE, DEV, m(1, 0, {"v": 1}), T0 + 3_000)
    r = w.add(NODE, DEV, m(2, 0, {"v": 2}), T0)
    assert (r.added, r.jump) == (Added.ADDED, ClockJump((NODE, DEV), "backward", 3_000))
    assert w.due(T0 + 9_999).closed == []  # 10 s were left at the jump
    assert [c.count for c in w.due(T0 + 10_000).closed] == [2]


def test_forward_jump_closes_once_and_never_reopens() -> None:
    w = AggregateWindows(interval_s=10)
    w.add(NODE, DEV, m(1, 0, {"v": 1}), T0)
    res = w.due(T0 + 45_000)  # 3.5 intervals past the deadline
    assert [c.count for c in res.closed] == [1]
    assert res.jumps == [ClockJump((NODE, DEV), "forward", 35_000)]
    assert w.due(T0 + 90_000) == w.due(T0 + 90_001)
    assert w.open_keys() == []


def test_a_late_due_within_one_interval_is_no_jump() -> None:
    w = AggregateWindows(interval_s=10)
    w.add(NODE, DEV, m(1, 0, {"v": 1}), T0)
    res = w.due(T0 + 19_999)
    assert ([c.count for c in res.closed], res.jumps) == ([1], [])


def test_bad_configuration_is_refused() -> None:
    with pytest.raises(ValueError, match="strategy 'NONE'"):
        DedupWindows("NONE", interval_s=1)
    with pytest.raises(ValueError, match="out_msg_type"):
        DedupWindows("ALL", interval_s=1)
    with pytest.raises(ValueError, match=">= 1"):
        AggregateWindows(interval_s=0)
