"""The chain in force (edge_sync/rules/runtime.py): install, refusal keeping the previous chain,
versions and digests, per-node counts, the status snapshot and the failure log rate limit."""

from __future__ import annotations

import re
import threading
from typing import Any

from edge_sync.rules import nodes as n
from edge_sync.rules.chain import RuleChain, RuleChainMetaData, parse
from edge_sync.rules.runtime import ChainInForce, Refusal, RulesRuntime, digest
from edge_sync.rules.sandbox import ScriptLimits
from tests.helpers.log_capture import log_records

T0 = 1_700_000_000_000


def chain(ttl: int = 0, name: str = "Edge root",
          conns: list[tuple[int, int]] | None = None) -> tuple[RuleChain, RuleChainMetaData]:
    nodes = [{"type": n.SAVE_TIMESERIES, "name": "Save", "configuration": {"defaultTTL": ttl}},
             {"type": n.PUSH_TO_CLOUD, "name": "Push", "configuration": {"scope": "SERVER_SCOPE"}}]
    links = [(0, 1)] if conns is None else conns
    return parse({"ruleChain": {"name": name, "type": "EDGE",
                                "id": {"entityType": "RULE_CHAIN", "id": "rc-1"}},
                  "metadata": {"firstNodeIndex": 0, "nodes": nodes,
                               "connections": [{"fromIndex": a, "toIndex": b, "type": "Success"}
                                               for a, b in links]}})


def test_install_then_a_refusal_keeps_the_chain_in_force() -> None:
    rt = RulesRuntime()
    assert (rt.current(), rt.last_refusal, rt.version) == (None, None, 0)
    rc, meta = chain()
    first = rt.install(rc, meta, "file:/etc/rules.json", T0)
    assert first == ChainInForce(rc, meta, "file:/etc/rules.json", 1, digest(rc, meta), T0)
    assert rt.current() is first

    bad_rc, bad_meta = chain(conns=[(0, 1), (1, 0)])
    refused = rt.install(bad_rc, bad_meta, "cloud", T0 + 5)
    assert refused == Refusal("cloud", T0 + 5, (
        "metadata.connections: cycle: nodes[0] 'Save' -> nodes[1] 'Push' -> nodes[0] 'Save'",))
    # returned, not recorded: the caller records the refusal it logs (``refuse``)
    assert (rt.current(), rt.last_refusal) == (first, None)
    assert rt.refuse("cloud", refused.problems, T0 + 5) == refused
    assert (rt.current(), rt.last_refusal) == (first, refused)

    parse_error = rt.refuse("cloud", ["RULE_CHAIN.name: missing"], T0 + 6)
    assert parse_error == Refusal("cloud", T0 + 6, ("RULE_CHAIN.name: missing",))
    assert (rt.current(), rt.last_refusal) == (first, parse_error)


def test_a_chain_whose_script_the_sandbox_refuses_is_refused_and_the_chain_stays() -> None:
    """A script that does not compile refuses the chain when it is loaded (file or cloud),
    naming the node and the reason; the chain in force before stays."""
    rt = RulesRuntime()
    rc, meta = chain()
    first = rt.install(rc, meta, "cloud", T0)
    bad_rc, bad_meta = parse({"ruleChain": {"name": "Bad", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": n.TRANSFORM, "name": "Sum", "configuration": {
                "scriptLang": "TBEL", "tbelScript": "return msg.list.stream();"}}]}})
    refused = rt.install(bad_rc, bad_meta, "cloud", T0 + 1)
    assert refused == Refusal("cloud", T0 + 1, (
        "metadata.nodes[0].configuration.tbelScript: nodes[0] 'Sum': the TBEL script is "
        "refused: ScriptSyntaxError: TBEL: the method stream() is not in the supported "
        "subset (line 1: '.stream('); see docs/rules-scripts.md",))
    assert (rt.current(), rt.last_refusal, rt.version) == (first, None, 1)


def test_scripts_are_compiled_under_the_runtimes_limits() -> None:
    script = "var s = '" + "x" * 1_500_000 + "';\nreturn s.length > 0;"
    rc, meta = parse({"ruleChain": {"name": "Big", "type": "EDGE"}, "metadata": {
        "firstNodeIndex": 0, "connections": [], "nodes": [
            {"type": n.JS_FILTER, "name": "Big", "configuration": {"jsScript": script}}]}})
    assert isinstance(RulesRuntime().install(rc, meta, "cloud", T0), ChainInForce)
    small = RulesRuntime(ScriptLimits(memory_limit_bytes=1024 * 1024))
    refused = small.install(rc, meta, "cloud", T0)
    assert isinstance(refused, Refusal)
    assert refused.problems[0].startswith(
        "metadata.nodes[0].configuration.jsScript: nodes[0] 'Big': the JS script is refused: "
        "ScriptMemoryExceeded: ")
    assert small.current() is None


def test_the_same_chain_again_keeps_its_version_a_change_is_a_new_one() -> None:
    rt = RulesRuntime()
    rc, meta = chain()
    first = rt.install(rc, meta, "cloud", T0)
    again_rc, again_meta = chain()  # parsed again: equal, not the same objects
    assert rt.install(again_rc, again_meta, "cloud", T0 + 1) is first
    assert isinstance(first, ChainInForce)
    assert re.fullmatch(r"[0-9a-f]{12}", first.digest), first.digest  # sha256, 12 hex digits

    same_elsewhere = rt.install(rc, meta, "file:/x.json", T0 + 2)
    assert isinstance(same_elsewhere, ChainInForce)
    assert (same_elsewhere.version, same_elsewhere.digest) == (2, first.digest)

    changed = rt.install(*chain(ttl=60), "file:/x.json", T0 + 3)
    assert isinstance(changed, ChainInForce)
    assert changed.version == 3 and changed.digest != first.digest

    rt.clear("rules.file removed")
    assert rt.current() is None
    back = rt.install(*chain(ttl=60), "file:/x.json", T0 + 4)
    assert isinstance(back, ChainInForce) and back.version == 4


def test_versions_go_on_across_restarts_and_a_kept_chain_keeps_its_own() -> None:
    """A new process resumes the version count from what the store kept; the same chain as
    the one kept (same digest) takes its version and since again, another one a new version."""
    rc, meta = chain()
    rt = RulesRuntime()
    rt.resume_version(7)
    same = rt.install(rc, meta, "file:/x.json", T0 + 50, kept=(digest(rc, meta), 5, T0))
    assert same == ChainInForce(rc, meta, "file:/x.json", 5, digest(rc, meta), T0 + 50, T0)
    assert (same.in_force_since_ms, rt.version) == (T0, 7)
    other = RulesRuntime()
    other.resume_version(7)
    changed = other.install(*chain(ttl=60), "file:/x.json", T0 + 50,
                            kept=(digest(rc, meta), 5, T0))
    assert isinstance(changed, ChainInForce)
    assert (changed.version, changed.in_force_since_ms, other.version) == (8, T0 + 50, 8)


def test_counts_per_node_from_any_thread_reset_at_a_swap() -> None:
    rt = RulesRuntime()
    rt.install(*chain(), "cloud", T0)

    def count() -> None:
        for _ in range(1000):
            rt.count("nodes[0] 'Save'", visited=1)
            rt.count("nodes[1] 'Push'", visited=1, failed=1)

    threads = [threading.Thread(target=count) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert rt.counts() == {"nodes[0] 'Save'": {"in": 4000, "failed": 0},
                           "nodes[1] 'Push'": {"in": 4000, "failed": 4000}}
    rt.install(*chain(ttl=5), "cloud", T0 + 1)
    assert rt.counts() == {}


def test_snapshot_shape() -> None:
    rt = RulesRuntime()
    assert rt.snapshot() == {"chain": None, "id": None, "source": None, "version": 0,
                             "digest": None, "loaded_at_ms": None, "since_ms": None,
                             "nodes": [], "last_refusal": None, "cleared": None}
    rc, meta = chain()
    rt.install(rc, meta, "cloud", T0)
    rt.count("nodes[0] 'Save'", visited=3)
    rt.count("nodes[1] 'Push'", visited=2, failed=1)
    rt.refuse("file:/x.json", ["a", "b"], T0 + 9)
    expected: dict[str, Any] = {
        "chain": "Edge root", "id": "rc-1", "source": "cloud", "version": 1,
        "digest": digest(rc, meta), "loaded_at_ms": T0, "since_ms": T0,
        "nodes": [{"node": "nodes[0] 'Save'", "type": n.SAVE_TIMESERIES, "in": 3, "failed": 0},
                  {"node": "nodes[1] 'Push'", "type": n.PUSH_TO_CLOUD, "in": 2, "failed": 1}],
        "last_refusal": {"source": "file:/x.json", "at_ms": T0 + 9, "problems": ["a", "b"]},
        "cleared": None}
    assert rt.snapshot() == expected
    rt.clear("the cloud deleted the root rule chain")
    assert rt.snapshot() == {**expected, "chain": None, "id": None, "source": None,
                             "digest": None, "loaded_at_ms": None, "since_ms": None,
                             "nodes": [], "cleared": "the cloud deleted the root rule chain"}


def test_failure_logs_are_limited_to_one_line_per_node_per_minute() -> None:
    rt = RulesRuntime()
    save, push = "nodes[0] 'Save'", "nodes[1] 'Push'"
    assert rt.should_log_failure(save, T0) == (True, 0)
    assert [rt.should_log_failure(save, T0 + i * 1000) for i in range(1, 4)] == [
        (False, 1), (False, 2), (False, 3)]
    assert rt.should_log_failure(push, T0 + 1) == (True, 0)  # per node
    assert rt.should_log_failure(save, T0 + 59_999) == (False, 4)
    assert rt.should_log_failure(save, T0 + 60_000) == (True, 4)  # 4 not logged meanwhile
    assert rt.should_log_failure(save, T0 + 60_001) == (False, 1)
    assert rt.should_log_failure(save, T0 + 10) == (True, 1)  # the clock went back


def test_the_runtime_says_when_the_failures_not_logged_are_due_a_line() -> None:
    """When a node's minute of failure lines ends with failures not logged (the shards wake
    then); taken lines move it on; a swap or a clear starts afresh."""
    rt = RulesRuntime()
    rt.install(*chain(), "cloud", T0)
    save, push = "nodes[0] 'Save'", "nodes[1] 'Push'"
    assert rt.failure_lines_due() is None
    assert rt.should_log_failure(save, T0) == (True, 0)
    assert rt.failure_lines_due() is None  # logged: nothing due
    assert rt.should_log_failure(push, T0 + 5_000) == (True, 0)
    assert rt.should_log_failure(push, T0 + 6_000) == (False, 1)
    assert rt.failure_lines_due() == T0 + 65_000
    assert rt.should_log_failure(save, T0 + 7_000) == (False, 1)
    assert rt.failure_lines_due() == T0 + 60_000  # the earlier minute
    assert rt.take_failure_lines(T0 + 60_000) == [(save, 1, "Edge root")]
    assert rt.failure_lines_due() == T0 + 65_000
    assert rt.should_log_failure(push, T0 + 65_000) == (True, 1)  # its line tells them
    assert rt.failure_lines_due() is None
    assert rt.should_log_failure(push, T0 + 65_001) == (False, 1)
    assert rt.failure_lines_due() == T0 + 125_000
    rt.clear("no root rule chain synced from the cloud")
    assert (rt.failure_lines_due(), rt.take_failure_lines(T0 + 125_000)) == (
        T0 + 125_000, [(push, 1, "Edge root")])  # the chain cleared: still told, its name
    assert (rt.failure_lines_due(), rt.take_failure_lines(T0 + 200_000)) == (None, [])


def test_failures_not_logged_of_a_chain_swapped_out_are_still_told_with_its_name() -> None:
    rt = RulesRuntime()
    rt.install(*chain(name="Old"), "cloud", T0)
    save = "nodes[0] 'Save'"
    assert rt.should_log_failure(save, T0) == (True, 0)
    assert rt.should_log_failure(save, T0 + 1) == (False, 1)
    assert rt.should_log_failure(save, T0 + 2) == (False, 2)
    rt.install(*chain(name="New"), "cloud", T0 + 3)
    assert rt.failure_lines_due() == T0 + 60_000
    # the new chain's node of the same name has its own lines from the swap on
    assert rt.should_log_failure(save, T0 + 4) == (True, 0)
    assert rt.should_log_failure(save, T0 + 5) == (False, 1)
    assert rt.take_failure_lines(T0 + 59_999) == []
    assert rt.take_failure_lines(T0 + 60_000) == [(save, 2, "Old")]
    assert rt.failure_lines_due() == T0 + 60_004
    assert rt.take_failure_lines(T0 + 60_004) == [(save, 1, "New")]
    assert rt.failure_lines_due() is None


def test_listeners_are_told_of_each_swap_recorded_refusal_and_clear() -> None:
    """Not of the same chain installed again, nor of a chain install finds invalid until the
    caller records the refusal (rules/source.py records each refusal it logs once)."""
    rt = RulesRuntime()
    told: list[ChainInForce | Refusal | None] = []
    rt.listen(told.append)
    rc, meta = chain()
    first = rt.install(rc, meta, "cloud", T0)
    assert rt.install(rc, meta, "cloud", T0 + 1) is first  # no swap: nothing told
    invalid = rt.install(*chain(conns=[(0, 1), (1, 0)]), "cloud", T0 + 2)
    assert isinstance(invalid, Refusal) and told == [first]
    refused = rt.refuse("cloud", invalid.problems, T0 + 2)
    unread = rt.refuse("file:/x.json", ["cannot read /x.json"], T0 + 3)
    rt.clear("no root rule chain synced from the cloud")
    assert told == [first, refused, unread, None]


def test_a_listener_that_raises_is_logged_and_the_change_stands() -> None:
    """The chain goes in force (and the other listeners are told) all the same: the caller
    goes on to keep it and log it."""
    rt = RulesRuntime()

    def broken(event: ChainInForce | Refusal | None) -> None:
        raise RuntimeError("series not made")

    told: list[ChainInForce | Refusal | None] = []
    rt.listen(broken)
    rt.listen(told.append)
    with log_records() as records:
        first = rt.install(*chain(), "cloud", T0)
        refused = rt.refuse("cloud", ["x"], T0 + 1)
        rt.clear("gone")
    assert isinstance(first, ChainInForce)
    assert (rt.current(), rt.last_refusal, told) == (None, refused, [first, refused, None])
    assert [(r["level"].name, r["message"]) for r in records] == [
        ("ERROR", f"rule chain listener failed on {what}: RuntimeError: series not made")
        for what in ("ChainInForce", "Refusal", "a clear")]
