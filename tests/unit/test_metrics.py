"""The metrics registry's Prometheus text: plain counters, counter families told apart by one
label (sorted, escaped), gauges, and the snapshot the status API embeds."""

from __future__ import annotations

from edge_sync.metrics import Metrics


def test_a_counter_family_renders_one_header_and_a_sample_per_label_value() -> None:
    m = Metrics()
    m.counter("edge_x_total", "x").inc(2)
    kinds = m.counter_family("edge_set_aside_total", "set aside by kind", "kind")
    assert kinds.inc("queueUpdateMsg") == 1
    assert kinds.inc("queueUpdateMsg", 4) == 5
    kinds.inc("adminSettingsUpdateMsg")
    assert m.counter_family("edge_set_aside_total", "ignored", "kind") is kinds
    m.gauge("edge_g", "g", lambda: 1.5)
    assert m.render_prometheus() == (
        "# HELP edge_x_total x\n"
        "# TYPE edge_x_total counter\n"
        "edge_x_total 2\n"
        "# HELP edge_set_aside_total set aside by kind\n"
        "# TYPE edge_set_aside_total counter\n"
        'edge_set_aside_total{kind="adminSettingsUpdateMsg"} 1\n'
        'edge_set_aside_total{kind="queueUpdateMsg"} 5\n'
        "# HELP edge_g g\n"
        "# TYPE edge_g gauge\n"
        "edge_g 1.5\n")
    assert m.snapshot() == {"edge_x_total": 2, 'edge_set_aside_total{kind="adminSettingsUpdateMsg"}': 1,
                            'edge_set_aside_total{kind="queueUpdateMsg"}': 5, "edge_g": 1.5}


def test_a_label_value_is_escaped_and_an_empty_family_has_only_its_header() -> None:
    m = Metrics()
    f = m.counter_family("edge_f_total", "f", "kind")
    assert m.render_prometheus() == "# HELP edge_f_total f\n# TYPE edge_f_total counter\n"
    f.inc('a"b\\c\nd')
    assert m.render_prometheus().splitlines()[-1] == 'edge_f_total{kind="a\\"b\\\\c\\nd"} 1'
    assert (f.get("nope"), f.values()) == (0, {'a"b\\c\nd': 1})
