"""The metrics facade over prometheus-client: one counter per name however often it is asked
for, gauges read when scraped (absent while their source fails, replaced when registered
again), the batch histogram, the exposition as the library's parser reads it, the snapshot the
status API embeds; and the link's per-event bookkeeping behind the sync latency."""

from __future__ import annotations

import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge_sync.link.sent_events import SentEvents
from edge_sync.metrics import Metrics
from edge_sync.storage.records import Lane, StoredEvent


def parsed(m: Metrics) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    return {f.name: [(s.name, s.labels, s.value) for s in f.samples]
            for f in text_string_to_metric_families(m.exposition().decode())}


def test_a_counter_is_one_per_name_with_its_labels_and_the_parser_reads_it() -> None:
    m = Metrics()
    events = m.counter("edge_sync_events_total", "events", ("lane", "outcome"))
    assert m.counter("edge_sync_events_total", "ignored", ("lane", "outcome")) is events
    events.labels(lane="high", outcome="appended").inc(3)
    events.labels(lane="normal", outcome="appended").inc(2)
    m.counter("edge_sync_x_total", "x").inc()
    assert parsed(m) == {
        "edge_sync_events": [
            ("edge_sync_events_total", {"lane": "high", "outcome": "appended"}, 3.0),
            ("edge_sync_events_total", {"lane": "normal", "outcome": "appended"}, 2.0)],
        "edge_sync_x": [("edge_sync_x_total", {}, 1.0)]}  # no _created series
    assert m.value("edge_sync_events_total", lane="high", outcome="appended") == 3
    assert m.value("edge_sync_events_total", lane="high", outcome="acked") == 0
    assert m.snapshot() == {'edge_sync_events_total{lane="high",outcome="appended"}': 3,
                            'edge_sync_events_total{lane="normal",outcome="appended"}': 2,
                            "edge_sync_x_total": 1}


def test_names_are_checked() -> None:
    m = Metrics()
    m.counter("edge_sync_a_total", "a", ("kind",))
    with pytest.raises(ValueError, match="labels"):
        m.counter("edge_sync_a_total", "a", ("reason",))
    with pytest.raises(ValueError, match="prefix"):
        m.counter("edge_b_total", "b")
    with pytest.raises(ValueError, match="_total"):
        m.counter("edge_sync_b", "b")
    with pytest.raises(ValueError, match="prefix"):
        Metrics("edge_cloud").gauge("edge_sync_g", "g", lambda: 1.0)


def test_gauges_are_read_when_scraped_absent_while_failing_and_replaced() -> None:
    m = Metrics()
    state = {"v": 1.5}
    m.gauge("edge_sync_g", "g", lambda: state["v"])
    m.gauge_family("edge_sync_link_state", "state", ("state",),
                   lambda: {("CONNECTED",): 1.0, ("BACKOFF",): 0.0})
    state["v"] = 2.5
    assert parsed(m) == {
        "edge_sync_g": [("edge_sync_g", {}, 2.5)],
        "edge_sync_link_state": [("edge_sync_link_state", {"state": "CONNECTED"}, 1.0),
                                 ("edge_sync_link_state", {"state": "BACKOFF"}, 0.0)]}

    def failing() -> float:
        raise RuntimeError("restarting")

    m.gauge("edge_sync_g", "g", failing)  # a restarted source registers again
    assert "edge_sync_g" not in parsed(m)
    m.gauge("edge_sync_g", "g", lambda: 7.0)
    assert parsed(m)["edge_sync_g"] == [("edge_sync_g", {}, 7.0)]


def test_an_info_metric_is_read_when_scraped_and_absent_without_a_value() -> None:
    """``info`` exposes ``<name>_info`` (value 1, the labels read) as the library's
    InfoMetricFamily; None leaves no sample, a failing reader no family."""
    m = Metrics()
    state: dict[str, dict[str, str] | None] = {"v": None}
    m.info("edge_sync_rule_chain", "chain", ("chain", "source", "digest"), lambda: state["v"])
    text = m.exposition().decode()
    assert "# TYPE edge_sync_rule_chain_info gauge" in text
    assert parsed(m) == {"edge_sync_rule_chain_info": []}
    state["v"] = {"chain": "Boiler ops", "source": "file", "digest": "e5203266035e"}
    assert parsed(m) == {"edge_sync_rule_chain_info": [
        ("edge_sync_rule_chain_info",
         {"chain": "Boiler ops", "source": "file", "digest": "e5203266035e"}, 1.0)]}
    assert m.value("edge_sync_rule_chain_info", chain="Boiler ops", source="file",
                   digest="e5203266035e") == 1
    with pytest.raises(ValueError, match="without _info"):
        m.info("edge_sync_x_info", "x", (), lambda: None)

    def failing() -> dict[str, str]:
        raise RuntimeError("restarting")

    m.info("edge_sync_rule_chain", "chain", ("chain", "source", "digest"), failing)
    assert "edge_sync_rule_chain_info" not in parsed(m)


def test_a_counter_read_when_scraped_is_a_counter_family() -> None:
    m = Metrics()
    tally = {"n": 0}
    m.read_counter("edge_sync_lost_total", "lost", lambda: tally["n"])
    assert parsed(m) == {"edge_sync_lost": [("edge_sync_lost_total", {}, 0.0)]}
    tally["n"] = 12
    assert parsed(m) == {"edge_sync_lost": [("edge_sync_lost_total", {}, 12.0)]}
    assert "# TYPE edge_sync_lost_total counter" in m.exposition().decode()
    assert m.value("edge_sync_lost_total") == 12
    with pytest.raises(ValueError, match="must end in _total"):
        m.read_counter("edge_sync_lost", "lost", lambda: 0)


def test_a_batch_histogram_has_cumulative_buckets_sum_and_count() -> None:
    m = Metrics()
    h = m.histogram("edge_sync_sync_latency_seconds", "latency", (0.5, 5.0))
    assert m.histogram("edge_sync_sync_latency_seconds", "latency", (1.0,)) is h
    h.observe_many([0.1, 0.5, 3.0])
    h.observe_many([])
    h.observe_many([60.0])
    [(name, samples)] = [(k, v) for k, v in parsed(m).items()]
    assert name == "edge_sync_sync_latency_seconds"
    assert samples == [
        ("edge_sync_sync_latency_seconds_bucket", {"le": "0.5"}, 2.0),
        ("edge_sync_sync_latency_seconds_bucket", {"le": "5.0"}, 3.0),
        ("edge_sync_sync_latency_seconds_bucket", {"le": "+Inf"}, 4.0),
        ("edge_sync_sync_latency_seconds_count", {}, 4.0),
        ("edge_sync_sync_latency_seconds_sum", {}, 63.6)]
    assert m.snapshot() == {"edge_sync_sync_latency_seconds_count": 4,
                            "edge_sync_sync_latency_seconds_sum": 63.6}


def test_a_label_value_is_escaped() -> None:
    m = Metrics()
    m.counter("edge_sync_f_total", "f", ("kind",)).labels(kind='a"b\\c\nd').inc()
    assert parsed(m)["edge_sync_f"] == [("edge_sync_f_total", {"kind": 'a"b\\c\nd'}, 1.0)]
    assert m.snapshot() == {'edge_sync_f_total{kind="a\\"b\\\\c\\nd"}': 1}


def _event(seq: int, created: int, lane: Lane) -> StoredEvent:
    return StoredEvent(seq=seq, id=uuid.uuid4(), created_time=created, tenant_id=uuid.UUID(int=0),
                       edge_id=uuid.UUID(int=0), type="DEVICE", entity_type="DEVICE",
                       entity_id=uuid.uuid4(), action="ADDED", body=None, ts=created, lane=lane)


def test_sent_events_give_an_acknowledged_batch_lanes_and_latencies() -> None:
    sent = SentEvents()
    sent.read([_event(1, 1_000, Lane.HIGH), _event(2, 2_000, Lane.NORMAL),
               _event(3, 9_000, Lane.NORMAL), _event(4, 4_000, Lane.NORMAL)])
    sent.forget(4)  # dead-lettered
    acked = sent.acked([1, 2, 3], now_ms=5_000)
    assert (acked.high, acked.normal, acked.latencies_s) == (1, 2, [4.0, 3.0, 0.0])
    assert acked.max_latency_ms == 4_000
    assert len(sent) == 0
    unknown = sent.acked([7], now_ms=5_000)  # never read: counted, no latency
    assert (unknown.high, unknown.normal, unknown.max_latency_ms) == (0, 1, None)
    sent.read([_event(8, 1, Lane.HIGH)])
    sent.clear()
    assert len(sent) == 0
