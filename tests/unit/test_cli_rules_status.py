"""`edge-sync status`'s rule chain lines (cli/edge.py ``_rules_text``): a window node's open
windows and held messages, windows of nodes not in the chain, messages lost with dropped
windows."""

from __future__ import annotations

from edge_sync.cli.edge import _rules_text
from edge_sync.rules import nodes as n


def test_window_nodes_show_their_open_windows_and_held_messages() -> None:
    rules = {
        "chain": "Windows", "source": "cloud", "version": 3, "digest": "931a1a400a0a",
        "nodes": [
            {"node": "nodes[0] 'switch'", "type": n.MSG_TYPE_SWITCH, "in": 40, "failed": 0},
            {"node": "nodes[1] 'dedup all'", "type": n.DEDUPLICATION, "in": 40, "failed": 0,
             "open_windows": 2, "held_messages": 70},
        ],
        "orphaned_windows": [{"node": "'agg' (AggregateNode) (not in the chain)",
                              "entities": 1, "open_windows": 1, "held_messages": 40}],
        "dropped_windows": {"'agg' (AggregateNode)": 1, "#3 (AggregateNode)": 1},
        "dropped_messages": {"'agg' (AggregateNode)": 12, "#3 (AggregateNode)": 5},
        "last_refusal": None,
    }
    assert _rules_text(rules, running=True) == [
        "rule chain:   'Windows' from cloud (version 3, digest 931a1a400a0a)",
        "  nodes[0] 'switch': in 40, failed 0",
        "  nodes[1] 'dedup all': in 40, failed 0, open windows 2 (70 messages held)",
        "  'agg' (AggregateNode) (not in the chain): open windows 1 (40 messages held), dropped "
        "at their deadline",
        "  dropped at their deadline (node not in the chain): 2 windows, 17 messages lost",
    ]
