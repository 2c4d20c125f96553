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


# -- deduplication packs by message ts (TbMsgDeduplicationNode.processDeduplication) ------------

HOUR_AGO = T0 - 3_600_000


def backlog(n: int = 600, start: int = HOUR_AGO, step_ms: int = 1_000) -> list[Msg]:
    """A device catching up: ``n`` points ``step_ms`` apart from ``start`` (seq 1..n)."""
    return [Msg(i + 1, start + i * step_ms, "POST_TELEMETRY_REQUEST", json.dumps({"i": i}),
                {"ts": str(start + i * step_ms)}) for i in range(n)]


def pack_of(msgs: list[Msg]) -> str:
    return json.dumps([{"msg": json.loads(x.data), "metadata": x.metadata} for x in msgs])


@pytest.mark.parametrize("strategy", ["FIRST", "LAST", "ALL"])
def test_an_hour_old_backlog_gives_one_output_per_interval_of_its_ts(strategy: str) -> None:
    """600 points 1 s apart, an hour old, arriving at once, interval 60 s: ThingsBoard's
    findValidPack splits them into ten packs [minTs, minTs + 60 s), each due (its end is long
    past), and sends one message per pack in ts order."""
    msgs = backlog()
    w = DedupWindows(strategy, interval_s=60, max_pending=1000, out_msg_type="DEDUP")
    assert feed(w, msgs) == [Added.ADDED] * 600
    assert w.due(T0 + 59_999).closed == []  # the wake-up is interval after the first arrival
    res = w.due(T0 + 60_000)
    packs = [msgs[k * 60:(k + 1) * 60] for k in range(10)]
    if strategy == "ALL":
        expected = [OutMsg(DEV, "DEDUP", pack_of(p), {"ts": str(T0 + 60_000)}, None,
                           T0 + 60_000) for p in packs]
    else:
        picked = [p[0] if strategy == "FIRST" else p[-1] for p in packs]
        expected = [OutMsg(DEV, x.type, x.data, x.metadata, None, x.ts) for x in picked]
    assert [c.output for c in res.closed] == expected
    assert [(c.key, c.count, c.overflow, c.opened, c.closed) for c in res.closed] == [
        ((NODE, DEV), 60, 0, T0, T0 + 60_000)] * 10
    assert (res.jumps, w.open_keys(), w.next_deadline()) == ([], [], None)
    assert w.to_record() == {"windows": [], "closed_seq": [[NODE, DEV, 600]]}


def test_a_pack_starts_at_the_smallest_pending_ts_not_at_a_grid() -> None:
    """Packs follow the pending messages' ts (minTs, minTs + interval), whatever the arrival
    order; a gap in the ts makes the next pack start at the next ts."""
    ts = [HOUR_AGO + 25_000, HOUR_AGO, HOUR_AGO + 9_999, HOUR_AGO + 10_000, HOUR_AGO + 31_000,
          HOUR_AGO + 19_000]
    msgs = [m(i + 1, t, {"i": i}) for i, t in enumerate(ts)]
    w = DedupWindows("ALL", interval_s=10, out_msg_type="DEDUP")
    feed(w, msgs)
    res = w.due(T0 + 10_000)
    # [0, 10 s): msgs 1, 2 (arrival order); [10 s, 20 s): 3, 5; [25 s, 35 s): 0, 4
    assert [c.output.data for c in res.closed] == [
        pack_of([msgs[1], msgs[2]]), pack_of([msgs[3], msgs[5]]), pack_of([msgs[0], msgs[4]])]
    assert [c.count for c in res.closed] == [2, 2, 2]


@pytest.mark.parametrize(("strategy", "expected"), [("FIRST", 1), ("LAST", 2)])
def test_first_last_in_a_pack_break_ties_by_earliest_arrival(strategy: str,
                                                             expected: int) -> None:
    msgs = [m(1, HOUR_AGO + 5, {"i": 1}), m(2, HOUR_AGO, {"i": 2}), m(3, HOUR_AGO + 9, {"i": 3}),
            m(4, HOUR_AGO, {"i": 4}), m(5, HOUR_AGO + 9, {"i": 5}),
            m(6, HOUR_AGO + 10_000, {"i": 6})]
    w = DedupWindows(strategy, interval_s=10)
    feed(w, msgs)
    res = w.due(T0 + 10_000)
    second = msgs[5]
    assert [c.output.data for c in res.closed] == [msgs[expected].data, second.data]


def test_packs_not_yet_due_stay_and_go_out_when_their_end_passes() -> None:
    """At the wake-up only the packs whose end is at or before the edge's now go out; the rest
    stay pending, counted against maxPendingMsgs, and the window wakes again when the earliest
    of them is due (its ts + interval on the edge's clock)."""
    w = DedupWindows("LAST", interval_s=10, max_pending=4)
    old = [m(1, T0 - 30_000, {"i": 1}), m(2, T0 - 25_000, {"i": 2})]
    live = [m(3, T0 + 5_000, {"i": 3}), m(4, T0 + 8_000, {"i": 4})]
    assert feed(w, old + live) == [Added.ADDED] * 4
    assert w.add(NODE, DEV, m(5, T0 + 9_000, {"i": 5}), T0).added == Added.OVERFLOW
    res = w.due(T0 + 10_000)
    assert [(c.output.data, c.count, c.overflow) for c in res.closed] == [(old[1].data, 2, 1)]
    assert (w.open_keys(), w.next_deadline()) == ([(NODE, DEV)], T0 + 15_000)
    # two pending now: room for two more (ThingsBoard counts the pending messages)
    assert [w.add(NODE, DEV, m(s, T0 + 9_000 + s, {"i": s}), T0 + 11_000).added
            for s in (6, 7, 8)] == [Added.ADDED, Added.ADDED, Added.OVERFLOW]
    assert w.due(T0 + 14_999).closed == []
    [c] = w.due(T0 + 15_000).closed
    assert (c.output.data, c.count, c.overflow, c.opened, c.closed) == (
        json.dumps({"i": 7}), 4, 1, T0, T0 + 15_000)
    assert (w.open_keys(), w.to_record()["closed_seq"]) == ([], [[NODE, DEV, 8]])


def test_a_message_coming_while_a_later_pack_waits_is_looked_at_interval_after_arrival() -> None:
    """A pack far ahead (a device clock ahead of the edge's) does not hold back a message that
    comes meanwhile: it is looked at ``interval`` after its arrival at the latest, as
    ThingsBoard's tick (every interval while messages are pending) would."""
    w = DedupWindows("FIRST", interval_s=10)
    ahead = m(1, T0 + 3_600_000, {"i": 1})
    w.add(NODE, DEV, ahead, T0)
    assert w.due(T0 + 10_000).closed == []
    assert w.next_deadline() == T0 + 3_610_000
    assert w.add(NODE, DEV, ahead, T0 + 15_000).added == Added.DUPLICATE  # changes nothing
    assert w.next_deadline() == T0 + 3_610_000
    late = m(2, T0 - 60_000, {"i": 2})
    w.add(NODE, DEV, late, T0 + 20_000)
    assert w.next_deadline() == T0 + 30_000
    assert [c.output.data for c in w.due(T0 + 30_000).closed] == [late.data]
    assert w.next_deadline() == T0 + 3_610_000
    assert w.due(T0 + 3_609_999).closed == []
    assert [c.output.data for c in w.due(T0 + 3_610_000).closed] == [ahead.data]


def test_after_the_clock_goes_back_a_pack_waits_for_its_end_on_the_new_clock() -> None:
    """The wake-up keeps the time it had left; a pack whose end is ahead of the edge's clock
    after the jump is not sent early (ThingsBoard: packEndTs <= now)."""
    w = DedupWindows("FIRST", interval_s=10)
    msg = m(1, T0 + 1_000, {"i": 1})
    w.add(NODE, DEV, msg, T0 + 1_000)
    res = w.due(T0 - 59_000)  # set back 60 s; 10 s were left
    assert (res.closed, res.jumps) == ([], [ClockJump((NODE, DEV), "backward", 60_000)])
    assert w.next_deadline() == T0 - 49_000
    assert w.due(T0 - 49_000).closed == []  # the pack ends at T0 + 11 s on the new clock
    assert w.next_deadline() == T0 + 11_000
    [c] = w.due(T0 + 11_000).closed
    assert c.output.data == msg.data


def test_packs_across_a_restart_neither_lost_nor_sent_twice() -> None:
    """The window after a partial release is saved and restored as any other: the replayed
    seqs are duplicates, the pending packs go out once, at the same time as without the
    restart."""
    msgs = [*backlog(20, start=T0 - 25_000), m(21, T0 + 1_000, {"i": 21}),
            m(22, T0 + 3_000, {"i": 22})]
    straight = DedupWindows("ALL", interval_s=10, out_msg_type="DEDUP")
    feed(straight, msgs)
    first = straight.due(T0 + 10_000)
    assert [c.count for c in first.closed] == [10, 10]  # [-25 s, -15 s), [-15 s, -5 s)
    rest = [straight.due(T0 + 10_999), straight.due(T0 + 11_000), straight.due(T0 + 30_000)]

    crashed = DedupWindows("ALL", interval_s=10, out_msg_type="DEDUP")
    feed(crashed, msgs)
    assert crashed.due(T0 + 10_000) == first
    record = crashed.to_record()
    assert [(r["count"], r["deadline"], [s["seq"] for s in r["state"]])
            for r in record["windows"]] == [(2, T0 + 11_000, [21, 22])]
    restored = DedupWindows.from_record(json.loads(json.dumps(record)), "ALL", 10,
                                        out_msg_type="DEDUP")
    assert feed(restored, msgs, now=T0 + 10_500) == [Added.DUPLICATE] * 22
    assert [restored.due(T0 + 10_999), restored.due(T0 + 11_000),
            restored.due(T0 + 30_000)] == rest
    assert [c.output.data for r in rest for c in r.closed] == [pack_of(msgs[20:])]
    assert restored.to_record() == straight.to_record() == {
        "windows": [], "closed_seq": [[NODE, DEV, 22]]}


def test_a_record_saved_before_packs_loads_and_splits_by_ts() -> None:
    """The record's shape is unchanged: a window saved by an edge that sent one message per
    window is restored and, at its deadline, sends one message per pack."""
    old = {"windows": [{"node": NODE, "originator": DEV, "opened": T0, "deadline": T0 + 10_000,
                        "last_seen": T0, "count": 3, "overflow": 0, "last_seq": 3,
                        "state": [{"seq": s, "ts": HOUR_AGO + s * 6_000, "type": "T",
                                   "data": json.dumps({"s": s}), "metadata": {}}
                                  for s in (1, 2, 3)]}],
           "closed_seq": []}
    w = DedupWindows.from_record(old, "FIRST", 10)
    assert w.due(T0 + 9_999).closed == []
    res = w.due(T0 + 10_000)
    assert [(c.output.data, c.output.ts) for c in res.closed] == [
        ('{"s": 1}', HOUR_AGO + 6_000), ('{"s": 3}', HOUR_AGO + 18_000)]


def test_aggregation_follows_arrival_not_ts() -> None:
    """The edge's AggregateNode keeps a running summary (its state the same size whatever it
    holds), not the messages: its window is the arrival window, one summary for a backlog."""
    w = AggregateWindows(interval_s=60)
    feed(w, [m(x.seq, x.ts, {"v": x.seq}) for x in backlog()])
    [c] = w.due(T0 + 60_000).closed
    assert (c.count, json.loads(c.output.data)["v_count"], c.output.metadata) == (
        600, 600, {"ts": str(T0 + 60_000), "msgCount": "600"})
