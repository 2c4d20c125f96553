"""A deduplicating save timeseries node and a device's retry, in a whole EdgeApp on tmp_path (a
real store, the device HTTP API on loopback): the edge answers a device only once the chain's
outcome is committed, so when that commit fails the device sends the message again, and the
node must save the retry instead of taking it for a second message of the interval it had
decided to save in (ThingsBoard's DeduplicateProcessingStrategy.shouldProcess keeps the same
memory, but ThingsBoard acknowledges a device before its rule engine runs).

The commit is made to fail by a full store (507), as a device meets it: the store is filled with
another device's events up to its size cap, the message is too big for what is left; acking the
filler's events lets the next commit purge them and make room for the retry.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import Future, wait
from pathlib import Path
from typing import Any

import pytest

from edge_sync.actors.messages import MarkDeployed
from edge_sync.app import EdgeApp
from edge_sync.config import load_edge_config
from edge_sync.errors import QueueFull
from edge_sync.rules.nodes import PUSH_TO_CLOUD, SAVE_TIMESERIES
from edge_sync.storage.entity_store import EntityStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action
from edge_sync.storage.rule_store import RuleStore
from tests.helpers.agent import HttpClient

DEADLINE = 10.0
T = 1_700_000_000_000
KEYS = [f"k{i:03}" for i in range(600)]
"""600 values of 90 bytes: a 60 KB event body, more contiguous room than a full store has."""
CHAIN = {"ruleChain": {"name": "dedup then push", "type": "CORE"}, "metadata": {
    "firstNodeIndex": 0, "connections": [{"fromIndex": 0, "toIndex": 1, "type": "Success"}],
    "nodes": [
        {"type": SAVE_TIMESERIES, "name": "save", "configurationVersion": 1,
         "configuration": {"defaultTTL": 0, "processingSettings": {
             "type": "DEDUPLICATE", "deduplicationIntervalSecs": 60}}},
        {"type": PUSH_TO_CLOUD, "name": "push", "configuration": {"scope": "SERVER_SCOPE"}}]}}


@pytest.fixture
def app(tmp_path: Path) -> Iterator[EdgeApp]:
    """An EdgeApp with CHAIN in force on a store capped at 2 MiB, no cloud link."""
    chain = tmp_path / "chain.json"
    chain.write_text(json.dumps(CHAIN))
    cfg = load_edge_config(env={
        "EDGE_DATA_DIR": str(tmp_path / "edge"), "EDGE_HTTP_PORT": "0", "EDGE_ADMIN_PORT": "0",
        "EDGE_HTTP_HOST": "127.0.0.1", "EDGE_MQTT_ENABLED": "false",
        "EDGE_STORAGE_MAP_SIZE_INITIAL_MB": "1", "EDGE_STORAGE_MAX_MB": "2",
        "EDGE_RULES_FILE": str(chain),
    })
    edge = EdgeApp(cfg).start()
    try:
        yield edge
    finally:
        edge.stop(timeout=30)


def post(app: EdgeApp, token: str, body: Any) -> int:
    """The device's HTTP telemetry post; its status."""
    with HttpClient(app.http_port, timeout=DEADLINE) as http:
        return http.post_telemetry(token, body)


def fill(app: EdgeApp, token: str) -> list[int]:
    """Post 1 KB messages until the store refuses one; the seqs of those accepted."""
    seqs: list[int] = []
    for start in range(0, 20_000, 25):
        burst: list[Future[range]] = [
            app.service.post_telemetry(token, {"c": c, "pad": "x" * 1000})
            for c in range(start, start + 25)]
        assert not wait(burst, timeout=DEADLINE).not_done
        refused = [f.exception() for f in burst if f.exception() is not None]
        assert all(isinstance(exc, QueueFull) for exc in refused), refused
        seqs.extend(seq for f in burst if f.exception() is None for seq in f.result())
        if refused:
            return seqs
    raise AssertionError("the store never filled up")


def test_a_message_whose_commit_failed_is_saved_when_the_device_sends_it_again(
        app: EdgeApp) -> None:
    meter, created = app.service.create_device("meter")
    created.result(DEADLINE)
    filler, created = app.service.create_device("filler")
    created.result(DEADLINE)
    filled = fill(app, filler.token)
    assert len(filled) > 500
    reading = {"ts": T, "values": dict.fromkeys(KEYS, "y" * 90)}
    assert post(app, meter.token, reading) == 507  # not stored: the device sends it again
    acked: Future[int] = Future()
    queue = app._actor_ref("queue")
    assert queue is not None
    queue.tell(MarkDeployed(tuple(filled), acked))
    assert acked.result(DEADLINE) == len(filled)
    assert post(app, meter.token, reading) == 200  # saved, not taken for a repeat
    assert post(app, meter.token, {"ts": T + 1, "values": {"k000": "later"}}) == 200  # one

    rules, entities = RuleStore(app.store), EntityStore(app.store)
    with app.store.read() as txn:
        local = rules.local_series(txn, meter.id, None, 0, 2**62, 10)
        latest = entities.latest(txn, meter.id)
        pushed = [(e.action, e.ts, len(e.body["values"]))
                  for e in EventLog(app.store).iter_events(txn, entity_id=meter.id)
                  if e.action == Action.TIMESERIES_UPDATED]
    assert local == {key: [(T, "y" * 90)] for key in KEYS}
    assert latest == {key: (T, "y" * 90) for key in KEYS}
    assert pushed == [(Action.TIMESERIES_UPDATED, T, 600),
                      (Action.TIMESERIES_UPDATED, T + 1, 1)]
