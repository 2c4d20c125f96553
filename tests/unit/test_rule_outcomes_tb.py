"""actors/rule_outcomes.py against ThingsBoard: what a save timeseries node's processing
settings keep, and the cloud event each message type the push to cloud node takes becomes
(ThingsBoard's AbstractTbMsgPushNode.buildEvent, ThingsBoard Edge's TbMsgPushToCloudNode)."""

from __future__ import annotations

import uuid

import pytest

from edge_sync.actors.messages import PutLatestTelemetry, PutLocalTimeseries
from edge_sync.actors.rule_outcomes import RuleCounters, plan
from edge_sync.metrics import Metrics
from edge_sync.rules.chain import parse
from edge_sync.rules.engine import SaveTimeseries
from edge_sync.rules.runtime import RulesRuntime

DEV = uuid.UUID("00000000-0000-0000-0000-00000000d001")
ORIGIN = ("DEVICE", str(DEV))
NOW = 1_700_000_000_000


@pytest.fixture
def counters() -> RuleCounters:
    runtime = RulesRuntime()
    chain, meta = parse({"ruleChain": {"name": "c", "type": "CORE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "push",
             "configuration": {"scope": "SERVER_SCOPE"}}]}})
    runtime.install(chain, meta, "file:c.json", NOW)
    return RuleCounters(runtime, Metrics())


def test_a_save_keeps_the_timeseries_and_the_latest_values_its_settings_name(
        counters: RuleCounters) -> None:
    """TimeseriesSaveRequest.Strategy's saveTimeseries / saveLatest: a save without the latest
    values (skipLatestPersistence, ADVANCED latest SKIP) leaves them as they were; one without
    the timeseries keeps no point."""
    out = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1}, 0, True, False),
                     SaveTimeseries("n", ORIGIN, 11, {"t": 2, "h": 3}, 0, False, True),
                     SaveTimeseries("n", ORIGIN, 12, {"h": 4}, 0, True, False)],
               counters, NOW)
    assert out.mutations == [
        PutLatestTelemetry(DEV, (("t", 11, 2), ("h", 11, 3))),
        PutLocalTimeseries(DEV, ((10, (("t", 1),)), (12, (("h", 4),))), 0)]
    assert out.kept_local == 3
    only_series = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1}, 60, True, False)],
                       counters, NOW)
    assert only_series.mutations == [PutLocalTimeseries(DEV, ((10, (("t", 1),)),), 60)]
    only_latest = plan(DEV, [SaveTimeseries("n", ORIGIN, 10, {"t": 1}, 60, False, True)],
                       counters, NOW)
    assert only_latest.mutations == [PutLatestTelemetry(DEV, (("t", 10, 1),))]
