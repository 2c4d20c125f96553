"""docs/logs.md lists every log event of edge_sync/ (message template, level, bound fields, by
component) and nothing else: the events are read from the source with ast
(tests/helpers/log_events.py). When this fails, `python -m tests.helpers.log_events` prints
the tables as they should be. The matching itself is tested on made-up differences."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from tests.helpers.log_events import DOC, Event, code_events, compare, doc_events, rows

Events = dict[tuple[str, str], Event]


@pytest.fixture(scope="module")
def parsed() -> Events:
    return code_events()  # the whole package once (about 2 s)


@pytest.fixture
def code(parsed: Events) -> Events:
    return copy.deepcopy(parsed)


def test_docs_logs_lists_every_log_event_and_nothing_else(code: Events) -> None:
    doc, unreadable = doc_events(DOC.read_text())
    assert unreadable == []
    assert compare(code, doc) == []


def test_the_extraction_finds_the_operators_lines(code: Events) -> None:
    # an f-string variable (the supervisor's give-up), a .log() with a computed level (the
    # link), a logger bound in a class (the supervisor), one bound in a closure (the device
    # service; a logger passed in: the test below)
    gave_up = code[("(process)", "supervisor {} gave up: {} failed, {} restarts within {}s "
                                 "exceed the limit of {}")]
    assert gave_up.levels == {"ERROR"} and gave_up.fields == {"child", "supervisor"}
    link = code[("link", "link {} -> {}: {}")]
    assert link.levels == {"INFO", "WARNING", "ERROR"} and link.fields == {"old_state", "state"}
    dropped = code[("device-api", "RPC answer dropped: {}")]
    assert dropped.levels == {"WARNING"} and dropped.fields == {"device", "rpc_id"}
    assert code[("(server)", "{} listening")].fields == {"host", "port"}
    # JSON field names: the metric label names for the same concepts
    refused = code[("device-http", "{} refused with {}: {}")]
    assert "code" in refused.fields and "status" not in refused.fields


def test_the_comparison_fails_on_each_kind_of_difference(code: Events) -> None:
    doc, _ = doc_events(DOC.read_text())
    assert compare(code, doc) == []

    made_up = dict(code)
    made_up[("queue", "a made-up event {}")] = Event("queue", "a made-up event {}", {"INFO"},
                                                     {"seq"}, ["edge_sync/made_up.py:1"])
    assert compare(made_up, doc) == [
        "missing from docs/logs.md: component 'queue', INFO 'a made-up event {}' "
        "(edge_sync/made_up.py:1)"]

    gone = dict(code)
    removed = gone.pop(("link", "link {} -> {}: {}"))
    assert compare(gone, doc) == [
        f"docs/logs.md lists what the code no longer logs: component 'link', {removed.template!r}"]

    changed = copy.deepcopy(code)
    event = changed[("link", "link {} -> {}: {}")]
    event.levels = {"INFO"}
    event.fields = {"state"}
    problems = compare(changed, doc)
    assert len(problems) == 2
    assert problems[0].startswith("level of 'link {} -> {}: {}': docs/logs.md says "
                                  "ERROR/INFO/WARNING, the code INFO")
    assert problems[1].startswith("fields of 'link {} -> {}: {}': docs/logs.md lists "
                                  "['old_state', 'state'], the code binds ['state']")


def test_rows_read_back_as_they_were_written(code: Events) -> None:
    doc, unreadable = doc_events("## Events\n\n" + "\n".join(rows(code)))
    assert unreadable == []
    assert compare(code, doc) == []
    # a row outside a table, or listed twice, is reported
    text = "\n".join(rows({("q", "x"): Event("q", "x", {"INFO"}, set())}))
    _, problems = doc_events(text + "\n| INFO | `x` | - |\n")
    assert problems == ["docs/logs.md:7: listed twice: 'x'"]


def test_the_extraction_finds_a_line_logged_through_a_logger_passed_in(tmp_path: Path) -> None:
    """A function handed a logger (``log``) logs as its module's logger, with what the caller
    did not bind left out: the module's component, the level, the call's own fields."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "mod.py").write_text(
        "from loguru import logger\n"
        "_log = logger.bind(component='mqtt-gateway')\n"
        "def answered(log):\n"
        "    log.bind(rpc_id=1).warning('RPC answer dropped: {}', 'late')\n")
    events = code_events(package)
    assert list(events) == [("mqtt-gateway", "RPC answer dropped: {}")]
    event = events[("mqtt-gateway", "RPC answer dropped: {}")]
    assert (event.levels, event.fields) == ({"WARNING"}, {"rpc_id"})
