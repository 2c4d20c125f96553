"""A defect inside the rule engine (forced here: it cannot be produced on purpose) fails only
the request it met: the device is told to retry (Unavailable), nothing of it is appended, one
ERROR line says so, and the entity's next request runs normally (a deduplicating save node
saves the retry: what it decided for the failed request is forgotten). The shard is not
crashed."""

from __future__ import annotations

import uuid
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from edge_sync.actors.entity import EntityActor
from edge_sync.actors.messages import (
    PostTelemetry,
    PutLatestTelemetry,
    PutLocalTimeseries,
)
from edge_sync.actors.rule_host import ShardRules
from edge_sync.actors.rule_outcomes import RuleCounters
from edge_sync.errors import Unavailable
from edge_sync.rules.chain import parse
from edge_sync.rules.runtime import RulesRuntime
from edge_sync.rules.session import EntityRules
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.records import Action
from tests.helpers.instant_queue import InstantQueue

DEVICE = uuid.UUID("00000000-0000-4000-8000-0000000000e1")
T0 = 1_700_000_000_000
PUSH_ALL = {"ruleChain": {"name": "push all", "type": "CORE"}, "metadata": {
    "firstNodeIndex": 0, "connections": [], "nodes": [
        {"type": "org.thingsboard.rule.engine.edge.TbMsgPushToCloudNode", "name": "push",
         "configuration": {"scope": "SERVER_SCOPE"}}]}}


def device_under_chain(tmp_path: Path, doc: dict[str, Any],
                       source: str) -> tuple[LmdbStore, InstantQueue, EntityActor]:
    """A device's entity actor on a real store, with ``doc`` in force and a queue that commits
    every Append at once (the caller closes the store)."""
    store = LmdbStore(tmp_path / "edge", initial_map_mb=4, max_size_mb=64)
    runtime = RulesRuntime()
    runtime.install(*parse(doc), source, T0)
    rules = ShardRules(RuleCounters(runtime), store, now_ms=lambda: T0,
                       new_id=lambda: str(uuid.uuid4()))
    queue = InstantQueue()
    entity = EntityActor(DEVICE, queue, 0.0, now_ms=lambda: T0,  # type: ignore[arg-type]
                         rules=rules)
    return store, queue, entity


def test_an_engine_defect_fails_the_request_only(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    store, queue, entity = device_under_chain(tmp_path, PUSH_ALL, "file:push.json")
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")

    def broken(self: EntityRules, *args: object) -> None:
        raise KeyError("a defect")

    try:
        with monkeypatch.context() as patch:
            patch.setattr(EntityRules, "on_messages", broken)
            first: Future[range] = Future()
            entity.handle(PostTelemetry(DEVICE, ((T0, (("t", 1),)),), first), 0.0)
        second: Future[range] = Future()
        entity.handle(PostTelemetry(DEVICE, ((T0 + 1, (("t", 2),)),), second), 0.0)
    finally:
        logger.remove(sink)
        store.close()
    with pytest.raises(Unavailable, match="the rule chain failed"):
        first.result(0)
    assert errors == ["the rule chain could not run on 1 messages; nothing of them was accepted"]
    assert second.result(0) == range(1, 2)
    assert [(e.action, e.body) for a in queue.appends for e in a.events] == [
        (Action.TIMESERIES_UPDATED, {"ts": T0 + 1, "values": {"t": 2}})]


DEDUP_SAVE = {"ruleChain": {"name": "save once a minute", "type": "CORE"}, "metadata": {
    "firstNodeIndex": 0, "connections": [], "nodes": [
        {"type": "org.thingsboard.rule.engine.telemetry.TbMsgTimeseriesNode", "name": "save",
         "configurationVersion": 1, "configuration": {"processingSettings": {
             "type": "DEDUPLICATE", "deduplicationIntervalSecs": 60}}}]}}


def test_a_defect_after_a_deduplicating_save_decided_lets_the_retry_be_saved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine ran (its save node decided to save the message's interval), then a defect:
    nothing was appended and the device is told to retry; the retry is saved, not taken for
    a repeat of the interval."""
    store, queue, entity = device_under_chain(tmp_path, DEDUP_SAVE, "file:save.json")
    ran = EntityRules.on_messages

    def broken(self: EntityRules, *args: Any) -> None:
        ran(self, *args)
        raise KeyError("a defect")

    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        with monkeypatch.context() as patch:
            patch.setattr(EntityRules, "on_messages", broken)
            first: Future[range] = Future()
            entity.handle(PostTelemetry(DEVICE, ((T0, (("t", 1),)),), first), 0.0)
        retry: Future[range] = Future()
        entity.handle(PostTelemetry(DEVICE, ((T0, (("t", 1),)),), retry), 0.0)
    finally:
        logger.remove(sink)
        store.close()
    with pytest.raises(Unavailable, match="the rule chain failed"):
        first.result(0)
    assert errors == ["the rule chain could not run on 1 messages; nothing of them was accepted"]
    assert retry.result(0) == range(1, 2)
    assert [m for a in queue.appends for m in a.mutations] == [
        PutLatestTelemetry(DEVICE, (("t", T0, 1),)),
        PutLocalTimeseries(DEVICE, ((T0, (("t", 1),)),), 0)]
