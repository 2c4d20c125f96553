"""One entity's rule state (edge_sync/rules/session.py): messages through a chain with windows
and alarms, the record kept, restored and dropped, exact outcomes; time is given, never read."""

from __future__ import annotations

import json
from typing import Any

import msgpack

from edge_sync.rules import nodes as n
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import (
    ClearAlarm,
    CreateAlarm,
    Deferred,
    Failed,
    Log,
    Outcome,
    PushToCloud,
    RuleEngine,
    SaveTimeseries,
    Visited,
    window_key,
    window_node_name,
)
from edge_sync.rules.message import Originator, RuleMsg
from edge_sync.rules.session import Dropped, EntityRules, Orphaned, Step, WindowClosed
from edge_sync.rules.window import ClockJump
from tests.helpers.rule_state import as_version_1

DEV = Originator("DEVICE", "d1")
ORIGIN = ("DEVICE", "d1")
T0 = 1_700_000_000_000
Node = tuple[str, str, dict[str, Any]]

SAVE_TS: Node = (n.SAVE_TIMESERIES, "Save", {"defaultTTL": 0})
PUSH: Node = (n.PUSH_TO_CLOUD, "Push", {"scope": "SERVER_SCOPE"})
REFUSED: Node = (n.LOG, "Refused", {"jsScript": "return 'refused ' + msg.v;"})


def engine(nodes: list[Node], conns: list[tuple[int, int, str]],
           ids: list[str] | None = None) -> RuleEngine:
    docs = [{"type": t, "name": name, "configuration": c} for t, name, c in nodes]
    for doc, node_id in zip(docs, ids or [], strict=False):
        doc["id"] = {"entityType": "RULE_NODE", "id": node_id}
    rc, meta = parse({"ruleChain": {"name": "t", "type": "EDGE"},
                      "metadata": {"firstNodeIndex": 0, "nodes": docs,
                                   "connections": [{"fromIndex": a, "toIndex": b, "type": r}
                                                   for a, b, r in conns]}})
    ids_given = iter(f"alarm-{i}" for i in range(1, 100))
    return RuleEngine(rc, meta, clock=lambda: 777, new_id=lambda: next(ids_given))


def aggregating(interval: int = 60, max_pending: int | None = None) -> RuleEngine:
    config: dict[str, Any] = {"interval": interval}
    if max_pending is not None:
        config["maxPendingMsgs"] = max_pending
    return engine([(n.AGGREGATE, "Agg", config), SAVE_TS, PUSH, REFUSED],
                  [(0, 1, "Success"), (0, 2, "Success"), (0, 3, "Failure")],
                  ids=["agg", "save", "push", "refused"])


def telemetry(data: Any, ts: int = 1000, **meta: str) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", DEV, data, meta, ts=ts)


def effects(step: Step) -> list[Outcome]:
    return [o for o in step.outcomes if not isinstance(o, Visited)]


def test_1000_messages_give_exactly_one_summary() -> None:
    eng, rules = aggregating(), EntityRules()
    for i in range(1000):
        step = rules.on_message(eng, telemetry({"temp": i + 1, "hum": (i + 1) / 10, "on": True}),
                                T0 + i)
        assert [type(o) for o in step.outcomes] == [Visited, Deferred]
        assert (step.changed, step.jumps, step.dropped) == (True, (), ())
    assert (rules.open_windows, rules.next_deadline()) == (1, T0 + 60_000)
    assert rules.on_due(eng, T0 + 59_999).outcomes == ()

    step = rules.on_due(eng, T0 + 60_000)
    hum_sum = 0.0
    for i in range(1, 1001):
        hum_sum += i / 10
    data = {"hum_min": 0.1, "hum_max": 100.0, "hum_avg": hum_sum / 1000, "hum_sum": hum_sum,
            "hum_count": 1000, "temp_min": 1, "temp_max": 1000, "temp_avg": 500.5,
            "temp_sum": 500500, "temp_count": 1000}
    meta = {"ts": str(T0 + 60_000), "msgCount": "1000"}
    assert step.outcomes == (
        Visited("nodes[1] 'Save'"),
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, T0 + 60_000, data, 0),
        Visited("nodes[2] 'Push'"),
        PushToCloud("nodes[2] 'Push'", ORIGIN, "POST_TELEMETRY_REQUEST", "SERVER_SCOPE",
                    "NORMAL", data, meta, T0 + 60_000))
    # nothing left to keep: the record goes
    assert (step.record, step.changed, rules.open_windows, rules.next_deadline()) == (
        None, True, 0, None)
    assert rules.on_due(eng, T0 + 120_000) == Step((), None, False, (), ())


def test_restored_mid_window_gives_the_same_output_as_without_the_restore() -> None:
    eng = aggregating(interval=10)
    msgs = [telemetry({"v": i * 1.5, "n": i}) for i in range(1, 101)]
    straight = EntityRules()
    for i, msg in enumerate(msgs):
        straight.on_message(eng, msg, T0 + i)
    expected = straight.on_due(eng, T0 + 10_000)

    crashed = EntityRules()
    step = None
    for i, msg in enumerate(msgs[:60]):
        step = crashed.on_message(eng, msg, T0 + i)
    assert step is not None and step.record is not None
    stored = msgpack.unpackb(msgpack.packb(json.loads(json.dumps(step.record))))
    assert stored == step.record
    restored = EntityRules(stored)
    assert (restored.open_windows, restored.next_deadline()) == (1, T0 + 10_000)
    # the same engine again, or one rebuilt for the same chain (a restart)
    again = aggregating(interval=10)
    for i, msg in enumerate(msgs[60:], start=60):
        restored.on_message(again, msg, T0 + i)
    assert restored.on_due(again, T0 + 10_000) == expected


def test_a_record_unchanged_is_not_saved_again() -> None:
    eng = engine([(n.JS_FILTER, "Hot?", {"jsScript": "return msg.v > 5;"}),
                  (n.AGGREGATE, "Agg", {"interval": 10})], [(0, 1, "True")])
    rules = EntityRules()
    assert rules.on_message(eng, telemetry({"v": 1}), T0).changed is False
    first = rules.on_message(eng, telemetry({"v": 9}), T0)
    assert first.changed is True and first.record is not None
    assert first.record["seq"] == 1
    assert [(w["node"], w["type"]) for w in first.record["windows"]] == [
        ('["AggregateNode", "Agg", 1]', n.AGGREGATE)]
    assert rules.on_message(eng, telemetry({"v": 1}), T0).changed is False
    assert rules.on_due(eng, T0 + 1).changed is True  # the window saw a later time
    assert EntityRules(first.record).on_message(eng, telemetry({"v": 1}), T0).changed is False


ALARMS: list[Node] = [
    (n.JS_FILTER, "Hot?", {"jsScript": "return msg.t > 90;"}),
    (n.CREATE_ALARM, "Raise", {"alarmType": "Overheat", "severity": "CRITICAL",
                               "alarmDetailsBuildJs": "return {t: msg.t};"}),
    (n.CLEAR_ALARM, "Clear", {"alarmType": "Overheat", "alarmDetailsBuildJs": "return {t: msg.t};"}),
    (n.LOG, "Route", {"jsScript": "return msgType + ' ' + Object.keys(metadata).join(',');"})]
ALARM_LINKS = [(0, 1, "True"), (0, 2, "False"), (1, 3, "Created"), (1, 3, "Updated"),
               (2, 3, "Cleared"), (2, 3, "False")]


def test_alarm_create_update_clear_clear_again_with_the_state_kept_across_a_restore() -> None:
    eng = engine(ALARMS, ALARM_LINKS)
    rules = EntityRules()
    step = rules.on_message(eng, telemetry({"t": 95}), T0)
    alarm = {"id": {"entityType": "ALARM", "id": "alarm-1"}, "createdTime": 777,
             "type": "Overheat", "originator": {"entityType": "DEVICE", "id": "d1"},
             "severity": "CRITICAL", "acknowledged": False, "cleared": False, "startTs": 1000,
             "endTs": 1000, "ackTs": 0, "clearTs": 0, "assignTs": 0, "details": {"t": 95},
             "propagate": False, "propagateToOwner": False, "propagateToTenant": False,
             "propagateRelationTypes": [], "name": "Overheat", "status": "ACTIVE_UNACK"}
    assert effects(step) == [
        CreateAlarm("nodes[1] 'Raise'", ORIGIN, "Overheat", "CRITICAL", {"t": 95}, 777,
                    "alarm-1", True, alarm),
        Log("nodes[3] 'Route'", "ALARM isNewAlarm")]
    assert step.changed and step.record == {"v": 2, "seq": 0, "originator": ["DEVICE", "d1"],
                                            "alarms": {"Overheat": alarm}, "windows": []}
    assert rules.alarms == {"Overheat": alarm}

    rules = EntityRules(step.record)  # a restart between the create and the update
    step = rules.on_message(eng, telemetry({"t": 97}), T0 + 1)
    updated = {**alarm, "details": {"t": 97}, "endTs": 777}
    assert effects(step) == [
        CreateAlarm("nodes[1] 'Raise'", ORIGIN, "Overheat", "CRITICAL", {"t": 97}, 777,
                    "alarm-1", False, updated),
        Log("nodes[3] 'Route'", "ALARM isExistingAlarm")]
    assert step.changed

    step = rules.on_message(eng, telemetry({"t": 20}), T0 + 2)
    assert effects(step) == [
        ClearAlarm("nodes[2] 'Clear'", ORIGIN, "Overheat", {"t": 20}, 777, "alarm-1",
                   {**updated, "cleared": True, "status": "CLEARED_UNACK",
                    "details": {"t": 20}, "clearTs": 777}),
        Log("nodes[3] 'Route'", "ALARM isClearedAlarm")]
    assert (step.record, step.changed, rules.alarms) == (None, True, {})

    step = rules.on_message(eng, telemetry({"t": 20}), T0 + 3)
    assert effects(step) == [Log("nodes[3] 'Route'", "POST_TELEMETRY_REQUEST ")]
    assert (step.record, step.changed) == (None, False)


def test_an_alarm_kept_by_an_earlier_edge_sync_is_updated_and_cleared() -> None:
    """A rule state record of an earlier edge-sync holds its alarm with a plain-text id and
    originator and a status: restored, the alarm is updated and cleared as one of ThingsBoard's
    Alarm JSON (its id and start kept, not propagated), and kept so."""
    old = {"id": "a-0", "type": "Overheat", "originator": "d1", "severity": "MAJOR",
           "status": "ACTIVE_UNACK", "startTs": 500, "endTs": 600, "details": {"t": 91}}
    rules = EntityRules({"v": 1, "seq": 4, "originator": ["DEVICE", "d1"],
                         "alarms": {"Overheat": old}, "windows": []})
    eng = engine(ALARMS, ALARM_LINKS)
    step = rules.on_message(eng, telemetry({"t": 97}), T0)
    updated = {"id": {"entityType": "ALARM", "id": "a-0"}, "createdTime": 500,
               "type": "Overheat", "originator": {"entityType": "DEVICE", "id": "d1"},
               "severity": "CRITICAL", "acknowledged": False, "cleared": False, "startTs": 500,
               "endTs": 777, "ackTs": 0, "clearTs": 0, "assignTs": 0, "details": {"t": 97},
               "propagate": False, "propagateToOwner": False, "propagateToTenant": False,
               "propagateRelationTypes": [], "name": "Overheat", "status": "ACTIVE_UNACK"}
    assert effects(step) == [
        CreateAlarm("nodes[1] 'Raise'", ORIGIN, "Overheat", "CRITICAL", {"t": 97}, 777,
                    "a-0", False, updated),
        Log("nodes[3] 'Route'", "ALARM isExistingAlarm")]
    assert step.record is not None and step.record["alarms"] == {"Overheat": updated}

    rules = EntityRules({"v": 1, "seq": 4, "originator": ["DEVICE", "d1"],
                         "alarms": {"Overheat": old}, "windows": []})
    step = rules.on_message(eng, telemetry({"t": 20}), T0)
    assert effects(step) == [
        ClearAlarm("nodes[2] 'Clear'", ORIGIN, "Overheat", {"t": 20}, 777, "a-0",
                   {**updated, "severity": "MAJOR", "endTs": 600, "cleared": True,
                    "status": "CLEARED_UNACK", "details": {"t": 20}, "clearTs": 777}),
        Log("nodes[3] 'Route'", "ALARM isClearedAlarm")]
    assert (step.record, rules.alarms) == (None, {})


def test_a_window_over_max_pending_routes_the_message_by_failure() -> None:
    eng, rules = aggregating(max_pending=2), EntityRules()
    for v in (1, 2):
        assert effects(rules.on_message(eng, telemetry({"v": v}), T0)) == [
            Deferred("nodes[0] 'Agg'", 0, telemetry({"v": v}))]
    step = rules.on_message(eng, telemetry({"v": 3}), T0)
    assert step.outcomes == (
        Visited("nodes[0] 'Agg'"),
        Deferred("nodes[0] 'Agg'", 0, telemetry({"v": 3})),
        Failed("nodes[0] 'Agg'", "max limit of pending messages reached (maxPendingMsgs 2)"),
        Visited("nodes[3] 'Refused'"),
        Log("nodes[3] 'Refused'", "refused 3"))
    [closed] = [o for o in rules.on_due(eng, T0 + 60_000).outcomes
                if isinstance(o, SaveTimeseries)]
    assert closed.data == {"v_min": 1, "v_max": 2, "v_avg": 1.5, "v_sum": 3, "v_count": 2}


def test_a_window_whose_node_left_the_chain_is_dropped_at_its_deadline() -> None:
    rules = EntityRules()
    step = rules.on_message(aggregating(interval=10), telemetry({"v": 1}), T0)
    swapped = engine([SAVE_TS], [], ids=["save"])  # the aggregate node is gone
    assert rules.on_message(swapped, telemetry({"v": 2}), T0 + 1).outcomes == (
        Visited("nodes[0] 'Save'"),
        SaveTimeseries("nodes[0] 'Save'", ORIGIN, 1000, {"v": 2}, 0))
    assert (rules.open_windows, rules.next_deadline()) == (1, T0 + 10_000)
    assert rules.on_due(swapped, T0 + 9_999).dropped == ()
    step = rules.on_due(swapped, T0 + 10_000)
    assert (step.outcomes, step.dropped, step.record, step.changed) == (
        (), (Dropped("'Agg' (AggregateNode)", 1, 1),), None, True)
    assert rules.open_windows == 0


def test_a_node_that_changed_type_drops_its_old_window_and_opens_a_new_one() -> None:
    rules = EntityRules()
    dedup = engine([(n.DEDUPLICATION, "D", {"interval": 10, "strategy": "LAST"}), SAVE_TS],
                   [(0, 1, "Success")], ids=["x", "save"])
    rules.on_message(dedup, telemetry({"v": 1}), T0)
    step = rules.on_message(aggregating(interval=20), telemetry({"v": 2}), T0 + 1)
    assert step.record is not None
    agg_key, dedup_key = window_key(n.AGGREGATE, "Agg", 1), window_key(n.DEDUPLICATION, "D", 1)
    assert [(w["node"], w["type"]) for w in step.record["windows"]] == [
        (agg_key, n.AGGREGATE), (dedup_key, n.DEDUPLICATION)]
    agg = engine([(n.AGGREGATE, "D", {"interval": 20}), SAVE_TS], [(0, 1, "Success")],
                 ids=["x", "save"])  # same id and name, now an aggregate
    rules = EntityRules(step.record)
    step = rules.on_message(agg, telemetry({"v": 3}), T0 + 2)
    assert step.record is not None
    assert [(w["node"], w["type"]) for w in step.record["windows"]] == [
        (agg_key, n.AGGREGATE), ('["AggregateNode", "D", 1]', n.AGGREGATE),
        (dedup_key, n.DEDUPLICATION)]
    assert rules.open_windows == 3
    step = rules.on_due(agg, T0 + 10_000)
    # the deduplication window had nowhere to go
    assert (step.outcomes, step.dropped) == ((), (Dropped("'D' (TbMsgDeduplicationNode)", 1, 1),))
    step = rules.on_due(agg, T0 + 20_002)
    assert (effects(step), step.dropped) == ([SaveTimeseries(
        "nodes[1] 'Save'", ORIGIN, T0 + 20_002,
        {"v_min": 3, "v_max": 3, "v_avg": 3.0, "v_sum": 3, "v_count": 1}, 0)],
        (Dropped("'Agg' (AggregateNode)", 1, 1),))  # "Agg" too
    assert (step.record, rules.open_windows) == (None, 0)


def test_a_chain_swap_keeps_the_window_of_a_node_still_there() -> None:
    """The node is known by its type and name: moved to another index, with a new id (the
    cloud's) and another configuration, it keeps its window and deadline; the new
    configuration applies from the wake-up."""
    rules = EntityRules()
    rules.on_message(aggregating(interval=10), telemetry({"v": 1}), T0)
    swapped = engine([(n.LOG, "Out", {"jsScript": "return msgType + ' ' + msg.v_sum;"}),
                      (n.AGGREGATE, "Agg", {"interval": 30, "outMsgType": "AGG"})],
                     [(1, 0, "Success")], ids=["out", "agg-new-id"])
    assert rules.bind(swapped) == ()  # nothing orphaned
    assert effects(rules.on_message(swapped, telemetry({"v": 3}), T0 + 5)) == [
        Log("nodes[0] 'Out'", "POST_TELEMETRY_REQUEST undefined")]
    assert rules.next_deadline() == T0 + 10_000  # the deadline it had
    step = rules.on_due(swapped, T0 + 10_000)
    assert (effects(step), step.dropped) == ([Log("nodes[0] 'Out'", "AGG 1")], ())


def test_window_nodes_read_their_number_fields_as_jackson_reads_an_int() -> None:
    """TbMsgDeduplicationNodeConfiguration's int interval and maxPendingMsgs (and the
    aggregation node's, read alike) given as text or a float are the numbers Jackson reads
    (nodes.java_int): " 10 " is 10, 2.7 is 2."""
    eng = engine([(n.AGGREGATE, "Agg", {"interval": " 10 ", "maxPendingMsgs": 2.7}), SAVE_TS,
                  PUSH, REFUSED], [(0, 1, "Success"), (0, 2, "Success"), (0, 3, "Failure")])
    rules = EntityRules()
    for v in (1, 2):
        rules.on_message(eng, telemetry({"v": v}), T0)
    assert effects(rules.on_message(eng, telemetry({"v": 3}), T0))[1:] == [
        Failed("nodes[0] 'Agg'", "max limit of pending messages reached (maxPendingMsgs 2)"),
        Log("nodes[3] 'Refused'", "refused 3")]
    assert [o.data for o in rules.on_due(eng, T0 + 10_000).outcomes
            if isinstance(o, SaveTimeseries)] == [
        {"v_min": 1, "v_max": 2, "v_avg": 1.5, "v_sum": 3, "v_count": 2}]
    dedup = engine([(n.DEDUPLICATION, "Dedup", {"interval": "5", "strategy": "FIRST",
                                                "maxPendingMsgs": "100"}), SAVE_TS],
                   [(0, 1, "Success")])
    rules = EntityRules()
    for ts in (3000, 1000):
        rules.on_message(dedup, telemetry({"ts": ts}, ts=ts), T0)
    assert effects(rules.on_due(dedup, T0 + 4_999)) == []
    assert effects(rules.on_due(dedup, T0 + 5_000)) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"ts": 1000}, 0)]


def test_deduplication_first_goes_on_by_success() -> None:
    eng = engine([(n.DEDUPLICATION, "Dedup", {"interval": 5, "strategy": "FIRST"}), SAVE_TS],
                 [(0, 1, "Success")])
    rules = EntityRules()
    for ts in (3000, 1000, 2000):
        rules.on_message(eng, telemetry({"ts": ts}, ts=ts), T0)
    assert effects(rules.on_due(eng, T0 + 5_000)) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, 1000, {"ts": 1000}, 0)]


def test_clock_jumps_are_reported() -> None:
    eng, rules = aggregating(interval=10), EntityRules()
    rules.on_message(eng, telemetry({"v": 1}), T0 + 3_000)
    step = rules.on_message(eng, telemetry({"v": 2}), T0)  # set back 3 s: 10 s were left
    assert step.jumps == (ClockJump((AGG_BOUND, "d1"), "backward", 3_000),)
    assert rules.next_deadline() == T0 + 10_000
    assert rules.on_due(eng, T0 + 9_999).outcomes == ()
    step = rules.on_due(eng, T0 + 45_000)  # 3.5 intervals late: closes once
    assert step.jumps == (ClockJump((AGG_BOUND, "d1"), "forward", 35_000),)
    assert step.closed == (WindowClosed(AGG_BOUND, "d1", 2, 1, T0 + 10_000, 35_000, 0),)
    [saved] = [o for o in step.outcomes if isinstance(o, SaveTimeseries)]
    assert saved.data["v_count"] == 2


AGG_BOUND = "nodes[0] 'Agg' (AggregateNode)"
"""How log lines name ``aggregating()``'s window node: index, name and type."""


def test_a_window_that_wakes_on_time_is_reported_with_its_messages_and_no_lateness() -> None:
    eng, rules = aggregating(interval=10), EntityRules()
    step = rules.on_messages(eng, [telemetry({"v": v}) for v in range(3)], T0)
    assert step.closed == ()  # nothing woke: a message never reports one
    assert rules.on_due(eng, T0 + 9_999).closed == ()
    step = rules.on_due(eng, T0 + 10_000)
    assert step.closed == (WindowClosed(AGG_BOUND, "d1", 3, 1, T0 + 10_000, 0, 0),)
    # a window due when a message comes (before the timer) wakes first, and says so
    rules.on_message(eng, telemetry({"v": 1}), T0 + 20_000)
    step = rules.on_messages(eng, [telemetry({"v": 2})], T0 + 30_250)
    assert step.closed == (WindowClosed(AGG_BOUND, "d1", 1, 1, T0 + 30_000, 250, 0),)


def test_a_deduplication_wake_up_is_one_report_for_its_packs_with_what_it_keeps() -> None:
    eng, rules = deduplicating("LAST", 10, 100), EntityRules()
    rules.on_messages(eng, [point(1, T0 - 30_000), point(2, T0 - 21_000), point(3, T0 - 15_000),
                            point(4, T0 + 4_000)], T0)
    step = rules.on_due(eng, T0 + 10_000)  # two packs due, [4 s, 14 s) not yet
    dedup = "nodes[0] 'Dedup' (TbMsgDeduplicationNode)"
    assert step.closed == (WindowClosed(dedup, "d1", 3, 2, T0 + 10_000, 0, 1),)
    assert rules.on_due(eng, T0 + 14_000).closed == (
        WindowClosed(dedup, "d1", 1, 1, T0 + 14_000, 0, 0),)


def test_a_window_node_is_named_one_way_bound_or_orphaned() -> None:
    """Index (when bound), name and type, from one helper: the orphan's name is the bound
    one's without the index, so one grep finds the node's lines either way."""
    rules = EntityRules()
    eng = windowed()
    fill(rules, eng, 5)
    rules.on_message(eng, telemetry({"v": 9}, ts=T0), T0 - 1_000)  # the clock went back
    step = rules.on_message(eng, telemetry({"v": 10}, ts=T0), T0 - 2_000)
    bound = sorted(jump.key[0] for jump in step.jumps)
    assert bound == ["nodes[1] 'dedup all' (TbMsgDeduplicationNode)",
                     "nodes[2] 'agg' (AggregateNode)"]
    assert bound == [window_node_name(n.DEDUPLICATION, "dedup all", 1),
                     window_node_name(n.AGGREGATE, "agg", 2)]
    edited = windowed(second=(n.LOG, "log", {"jsScript": "return 'x';"}))
    [orphan] = rules.bind(edited)
    assert orphan.node == "'agg' (AggregateNode)" == window_node_name(n.AGGREGATE, "agg")
    assert bound[1].endswith(orphan.node)
    assert window_node_name(n.AGGREGATE, "agg", None, 2) == "'agg' (AggregateNode) #2"


def deduplicating(strategy: str, interval: int, max_pending: int) -> RuleEngine:
    return engine([(n.DEDUPLICATION, "Dedup", {"interval": interval, "strategy": strategy,
                                               "maxPendingMsgs": max_pending}), SAVE_TS],
                  [(0, 1, "Success")], ids=["dedup", "save"])


def point(i: int, ts: int) -> RuleMsg:
    return RuleMsg("POST_TELEMETRY_REQUEST", DEV, {"i": i}, {"ts": str(ts)}, ts=ts)


def test_a_backlog_through_deduplication_gives_one_message_per_interval_of_its_ts() -> None:
    """A device back after an hour posts its 600 points (1 s apart) at once: deduplication
    FIRST over 60 s sends ten of them on, one per minute of their ts, as ThingsBoard's
    TbMsgDeduplicationNode does (one message per pack [minTs, minTs + 60 s))."""
    eng, rules = deduplicating("FIRST", 60, 1000), EntityRules()
    start = T0 - 3_600_000
    step = rules.on_messages(eng, [point(i, start + i * 1_000) for i in range(600)], T0)
    assert (step.changed, rules.open_windows, rules.next_deadline()) == (True, 1, T0 + 60_000)
    assert rules.on_due(eng, T0 + 59_999).outcomes == ()
    step = rules.on_due(eng, T0 + 60_000)
    assert effects(step) == [
        SaveTimeseries("nodes[1] 'Save'", ORIGIN, start + k * 60_000, {"i": k * 60}, 0)
        for k in range(10)]
    assert (step.record, step.changed, rules.open_windows) == (None, True, 0)


def test_pending_packs_survive_a_restore_and_go_out_once() -> None:
    """Packs not yet due at a wake-up stay in the saved record (msgpack, as the store keeps
    it); the restored entity sends them once, when their end passes on the edge's clock."""
    eng = deduplicating("LAST", 10, 100)
    msgs = [point(1, T0 - 30_000), point(2, T0 - 21_000), point(3, T0 + 4_000),
            point(4, T0 + 6_000)]
    rules = EntityRules()
    rules.on_messages(eng, msgs, T0)
    step = rules.on_due(eng, T0 + 10_000)  # [-30 s, -20 s) is due, [4 s, 14 s) is not yet
    assert effects(step) == [SaveTimeseries("nodes[1] 'Save'", ORIGIN, T0 - 21_000, {"i": 2}, 0)]
    assert step.record is not None and rules.next_deadline() == T0 + 14_000
    stored = msgpack.unpackb(msgpack.packb(step.record))
    restored = EntityRules(stored)
    assert (restored.open_windows, restored.next_deadline()) == (1, T0 + 14_000)
    assert restored.on_due(eng, T0 + 13_999).outcomes == ()
    step = restored.on_due(eng, T0 + 14_000)
    assert effects(step) == [SaveTimeseries("nodes[1] 'Save'", ORIGIN, T0 + 6_000, {"i": 4}, 0)]
    assert (step.record, restored.open_windows) == (None, 0)
    assert restored.on_due(eng, T0 + 60_000).outcomes == ()


def test_a_deduplication_window_whose_node_left_is_dropped_whole_at_its_deadline() -> None:
    """Pending packs of a window whose node left the chain go with it, counted as one window."""
    rules = EntityRules()
    rules.on_messages(deduplicating("FIRST", 10, 100),
                      [point(1, T0 - 60_000), point(2, T0 + 50_000)], T0)
    swapped = engine([SAVE_TS], [], ids=["save"])
    step = rules.on_due(swapped, T0 + 10_000)
    assert (step.outcomes, step.dropped, step.record, rules.open_windows) == (
        (), (Dropped("'Dedup' (TbMsgDeduplicationNode)", 1, 2),), None, 0)


# -- a node's windows follow the node, not its index or id --------------------------------------

WINDOWED: list[Node] = [
    (n.DEDUPLICATION, "dedup all", {"interval": 20, "strategy": "ALL",
                                    "outMsgType": "POST_TELEMETRY_REQUEST"}),
    (n.AGGREGATE, "agg", {"interval": 20}),
    PUSH,
]
WINDOWED_LINKS = [(0, 2, "Success"), (1, 2, "Success")]


def windowed(first: list[Node] | None = None, ids: list[str] | None = None,
             second: Node | None = None) -> RuleEngine:
    """A type switch sending telemetry to a deduplication (ALL) and an aggregation node, both
    pushed; ``first``: nodes inserted before them (not connected), ``ids``: the nodes' ids
    (a cloud chain), ``second``: a node in place of the aggregation node."""
    before = first or []
    nodes = [(n.MSG_TYPE_SWITCH, "switch", {}), *before, *WINDOWED]
    if second is not None:
        nodes[len(before) + 2] = second
    at = len(before) + 1  # the deduplication node's index
    links = [(0, at, "Post telemetry"), (0, at + 1, "Post telemetry"),
             *[(a + at, b + at, r) for a, b, r in WINDOWED_LINKS]]
    return engine(nodes, links, ids=ids)


def pushed(step: Step) -> list[tuple[str, Any, dict[str, str]]]:
    return [(o.node, o.data, dict(o.metadata)) for o in step.outcomes
            if isinstance(o, PushToCloud)]


def fill(rules: EntityRules, eng: RuleEngine, count: int) -> dict[str, Any] | None:
    """``count`` readings v = 0, 1, ... through the chain at T0; the record (after msgpack, as
    the store keeps it)."""
    step = rules.on_messages(eng, [telemetry({"v": v}, ts=T0) for v in range(count)], T0)
    assert step.record is not None
    return dict(msgpack.unpackb(msgpack.packb(step.record)))


def expected_pushes(push: str, count: int) -> list[tuple[str, Any, dict[str, str]]]:
    """What the two windows push at their deadline T0 + 20 s for ``count`` readings 0, 1, ...
    (windows opened together close in the order of their nodes' keys)."""
    due = str(T0 + 20_000)
    values = range(count)
    return [
        (push, {"v_min": 0, "v_max": count - 1, "v_avg": sum(values) / count,
                "v_sum": sum(values), "v_count": count}, {"ts": due, "msgCount": str(count)}),
        (push, [{"msg": {"v": v}, "metadata": {}} for v in values], {"ts": due})]


def test_a_node_inserted_before_the_windowed_nodes_keeps_both_windows_across_a_restart() -> None:
    """A file chain (no node ids) edited by inserting a node before the window nodes: their
    indexes change, their windows (saved, then restored as after a restart) go on and give
    exactly the summaries of every message they took."""
    before = EntityRules()
    record = fill(before, windowed(), 40)
    edited = windowed(first=[(n.LOG, "inserted", {"jsScript": "return 'x';"})])
    rules = EntityRules(record)
    assert rules.bind(edited) == ()
    assert rules.window_counts() == {"nodes[2] 'dedup all'": (1, 40), "nodes[3] 'agg'": (1, 40)}
    step = rules.on_messages(edited, [telemetry({"v": v}, ts=T0) for v in range(40, 50)],
                             T0 + 1_000)
    assert step.dropped == ()
    step = rules.on_due(edited, T0 + 20_000)
    assert pushed(step) == expected_pushes("nodes[4] 'Push'", 50)
    assert (step.dropped, step.record, rules.open_windows) == ((), None, 0)


def test_a_cloud_chain_sent_again_with_new_node_ids_keeps_the_windows() -> None:
    rules = EntityRules()
    fill(rules, windowed(ids=["s-1", "d-1", "a-1", "p-1"]), 30)
    again = windowed(ids=["s-2", "d-2", "a-2", "p-2"])  # the same chain, every id new
    assert rules.bind(again) == ()
    step = rules.on_due(again, T0 + 20_000)
    assert pushed(step) == expected_pushes("nodes[3] 'Push'", 30)
    assert step.dropped == ()


def test_a_removed_node_is_reported_at_bind_and_its_messages_counted_when_dropped() -> None:
    rules = EntityRules()
    fill(rules, windowed(), 25)
    # the aggregation node gone (a log node in its place)
    edited = windowed(second=(n.LOG, "log", {"jsScript": "return 'x';"}))
    assert rules.bind(edited) == (Orphaned("'agg' (AggregateNode)", 1, 25, T0 + 20_000),)
    assert rules.bind(edited) == ()  # once per chain
    assert rules.window_counts() == {"nodes[1] 'dedup all'": (1, 25),
                                     "'agg' (AggregateNode) (not in the chain)": (1, 25)}
    assert rules.on_due(edited, T0 + 19_999).dropped == ()
    step = rules.on_due(edited, T0 + 20_000)
    assert step.dropped == (Dropped("'agg' (AggregateNode)", 1, 25),)
    assert [p[0] for p in pushed(step)] == ["nodes[3] 'Push'"]  # the deduplication's only


def test_a_node_put_back_before_the_deadline_takes_its_window_again() -> None:
    rules = EntityRules()
    fill(rules, windowed(), 5)
    gone = windowed(second=(n.LOG, "log", {"jsScript": "return 'x';"}))
    assert len(rules.bind(gone)) == 1
    back = windowed()
    assert rules.bind(back) == ()
    assert pushed(rules.on_due(back, T0 + 20_000)) == expected_pushes("nodes[3] 'Push'", 5)


def test_nodes_of_the_same_type_and_name_are_told_apart_by_their_place() -> None:
    same = (n.AGGREGATE, "agg", {"interval": 20})
    eng = engine([(n.MSG_TYPE_SWITCH, "switch", {}), same, same, PUSH],
                 [(0, 1, "Post telemetry"), (1, 3, "Success"), (2, 3, "Success")])
    rules = EntityRules()
    step = rules.on_message(eng, telemetry({"v": 1}), T0)
    assert step.record is not None
    assert [w["node"] for w in step.record["windows"]] == ['["AggregateNode", "agg", 1]']
    # a node inserted before both: the first is still the first
    edited = engine([(n.LOG, "x", {"jsScript": "return 'x';"}),
                     (n.MSG_TYPE_SWITCH, "switch", {}), same, same, PUSH],
                    [(1, 2, "Post telemetry"), (2, 4, "Success"), (3, 4, "Success")])
    assert rules.bind(edited) == ()
    assert rules.window_counts() == {"nodes[2] 'agg'": (1, 1)}


DEDUP_KEY = '["TbMsgDeduplicationNode", "dedup all", 1]'
AGG_KEY = '["AggregateNode", "agg", 1]'


def test_windows_of_an_earlier_version_load_through_the_chain_in_force() -> None:
    """Version 1 kept a file chain's windows under ``#<index>`` and a cloud chain's under the
    node id: read through the chain in force at load, they are the nodes' windows, the outputs
    exact, the record written back as version 2 under the new keys."""
    file_chain = windowed()
    record = fill(EntityRules(), file_chain, 12)
    assert record is not None
    old = as_version_1(record, {DEDUP_KEY: "#1", AGG_KEY: "#2"})
    rules = EntityRules(old)
    assert (rules.open_windows, rules.held_messages) == (2, 24)
    assert rules.bind(file_chain) == ()
    step = rules.on_messages(file_chain, [telemetry({"v": 12}, ts=T0)], T0 + 5)
    assert step.record is not None and step.record["v"] == 2
    assert [w["node"] for w in step.record["windows"]] == [AGG_KEY, DEDUP_KEY]
    assert pushed(rules.on_due(file_chain, T0 + 20_000)) == expected_pushes(
        "nodes[3] 'Push'", 13)

    cloud_chain = windowed(ids=["s", "d", "a", "p"])
    rules = EntityRules(as_version_1(record, {DEDUP_KEY: "d", AGG_KEY: "a"}))
    assert rules.bind(cloud_chain) == ()
    assert pushed(rules.on_due(cloud_chain, T0 + 20_000)) == expected_pushes(
        "nodes[3] 'Push'", 12)


def test_windows_of_an_earlier_version_whose_node_is_not_there_are_orphans() -> None:
    """The chain changed while the agent was down: an old key that names no node of that
    type in the chain in force is an orphan, named by its old key, dropped at its deadline."""
    record = fill(EntityRules(), windowed(), 7)
    assert record is not None
    rules = EntityRules(as_version_1(record, {DEDUP_KEY: "#1", AGG_KEY: "#9"}))
    eng = windowed()
    assert rules.bind(eng) == (Orphaned("#9 (AggregateNode)", 1, 7, T0 + 20_000),)
    step = rules.on_due(eng, T0 + 20_000)
    assert step.dropped == (Dropped("#9 (AggregateNode)", 1, 7),)
    assert [p[0] for p in pushed(step)] == ["nodes[3] 'Push'"]


def test_a_window_closed_late_is_stamped_with_its_deadline() -> None:
    """The agent was down at the deadline and closes the windows at start, 7 s late: the
    aggregation summary and the deduplication ALL output carry the time the window was due to
    close (as they do on time), not the restart's."""
    rules = EntityRules()
    record = fill(rules, windowed(), 3)
    step = EntityRules(record).on_due(windowed(), T0 + 27_000)
    assert pushed(step) == expected_pushes("nodes[3] 'Push'", 3)
    assert [o.ts for o in step.outcomes if isinstance(o, PushToCloud)] == [T0 + 20_000] * 2
