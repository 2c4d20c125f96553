"""The cloud's error text as the edge keeps it: a 1 MB errorMsg of many lines (a stack trace, a
terminal escape) refusing an event is stored as the dead letter's reason at most
MAX_ERROR_CHARS long and on one line; a log line that quotes it is one line with at most
MAX_LOGGED_ERROR_CHARS of it, a field bound to a log record at most MAX_ERROR_CHARS. Both ways
an event is refused for good: a peer that names the event (rejectedEdgeSeqId, retryable
false), and a ThingsBoard-like peer whose plain failure repeats until the event, alone in its
message, is dead-lettered. A connect refused with such a text is logged the same way. A whole
EdgeApp against the scripted fake cloud (tests/helpers/fake_peer.py) over gRPC on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_sync.link.peer_text import MAX_ERROR_CHARS, MAX_LOGGED_ERROR_CHARS
from edge_sync.proto import edge_pb2
from edge_sync.storage.records import Action, Status
from tests.helpers.log_capture import log_records as capture_logs
from tests.helpers.wait import wait_until
from tests.integration.test_link_peers import (
    SECRET,
    Harness,
    edge_events,
    make_device,
    post,
    settled,
)

DEADLINE_S = 30.0
FRAMES = "\n\tat org.thingsboard.server.dao.Validator.validate(Validator.java:42)"
HUGE_ERROR = ("Value out of range \x1b[31m" + FRAMES * (1_048_576 // len(FRAMES)))[:1_048_576]
ESCAPED_START = "rejected by the cloud: Value out of range \\x1b[31m\\n\\tat org.thingsboard"


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path)
    yield h
    h.close()


@pytest.fixture
def log_records() -> Iterator[list[dict[str, Any]]]:
    """Every loguru record (DEBUG and up) logged during the test."""
    with capture_logs() as records:
        yield records


def assert_kept_short(app: Any, log_records: list[dict[str, Any]], dead_seq: int) -> None:
    dead = [(e.seq, e.error) for e in edge_events(app) if e.status is Status.DEAD]
    assert [seq for seq, _ in dead] == [dead_seq]
    reason = dead[0][1]
    assert reason is not None
    assert len(reason) <= MAX_ERROR_CHARS
    assert reason.startswith(ESCAPED_START)
    assert reason.endswith(f" ... ({len('rejected by the cloud: ') + len(HUGE_ERROR)} chars in all)")
    assert "\n" not in reason and "\x1b" not in reason
    quoted = 0
    for r in log_records:
        if "Value out of range" in r["message"]:  # the line's text: a shorter cut
            quoted += 1
            assert "\n" not in r["message"] and "\x1b" not in r["message"], r["message"][:200]
            assert len(r["message"]) < MAX_LOGGED_ERROR_CHARS + 200
        for key, value in r["extra"].items():  # a bound field (JSON logs): the stored cut
            if isinstance(value, str) and "Value out of range" in value:
                quoted += 1
                assert "\n" not in value and "\x1b" not in value, key
                assert len(value) <= MAX_ERROR_CHARS, key
    assert quoted, "no log line quotes the cloud's text: nothing checked"


def test_a_huge_rejection_naming_the_event_is_stored_and_logged_short_on_one_line(
        harness: Harness, log_records: list[dict[str, Any]]) -> None:
    ordered = edge_pb2.CloudCapabilities(orderedApply=True, dedupBySeq=False)
    fake = harness.fake(uplinks="ordered", capabilities=ordered, hold_sync=True,
                        reject_error=HUGE_ERROR)
    app = harness.edge(fake)
    fake.wait_for(lambda: fake.sync_requests, what="a sync request")
    device = make_device(app, "huge-reject")
    seqs = post(app, device, [{"n": k} for k in range(3)])
    fake.reject_seqs = {seqs[1]}
    fake.release_sync()
    wait_until(lambda: settled(app, 5), timeout=DEADLINE_S, what="every event settled")
    assert fake.rejected == [seqs[1]]
    assert_kept_short(app, log_records, seqs[1])


def test_a_huge_plain_failure_is_stored_and_logged_short_on_one_line(
        harness: Harness, log_records: list[dict[str, Any]]) -> None:
    fake = harness.fake(uplinks="ack", capabilities=None, hold_sync=True, fail_error=HUGE_ERROR)
    app = harness.edge(fake, EDGE_CLOUD_RETRY_INTERVAL_MS="200", EDGE_CLOUD_RETRY_MAX_RETRIES="1")
    fake.wait_for(lambda: fake.sync_requests, what="a sync request")
    device = make_device(app, "huge-failure")
    added = next(e.seq for e in edge_events(app)
                 if e.entity_id == device.id and e.action == Action.ADDED)
    fake.fail_seqs = {added}
    fake.release_sync()
    wait_until(lambda: settled(app, 2), timeout=DEADLINE_S, what="every event settled")
    assert_kept_short(app, log_records, added)


@pytest.mark.parametrize("code", [edge_pb2.BAD_CREDENTIALS, edge_pb2.SERVER_UNAVAILABLE],
                         ids=["bad-credentials", "server-unavailable"])
def test_a_huge_connect_refusal_is_logged_short_on_one_line(
        harness: Harness, log_records: list[dict[str, Any]], code: int) -> None:
    """A connect the cloud refuses with a 1 MB errorMsg: the link's state change quotes it on
    one line, at most MAX_LOGGED_ERROR_CHARS of it."""
    fake = harness.fake(response_code=code, connect_error=HUGE_ERROR)
    harness.edge(fake)
    fake.wait_for(lambda: fake.connects, what="a connect")

    def refusals() -> list[str]:
        return [r["message"] for r in log_records
                if r["message"].startswith("link CONNECTING -> ")
                and "Value out of range" in r["message"]]

    lines = wait_until(refusals, timeout=DEADLINE_S, what="the refusal's log line")
    for line in lines:
        assert "\n" not in line and "\x1b" not in line, line[:200]
        assert line.count("Value out of range") == 1
        assert len(line) < MAX_LOGGED_ERROR_CHARS + 300, len(line)
        assert f"({len(HUGE_ERROR)} chars in all)" in line


def test_the_routing_secret_thingsboard_quotes_back_is_never_logged(
        harness: Harness, log_records: list[dict[str, Any]]) -> None:
    """ThingsBoard refuses a wrong secret by quoting it (EdgeGrpcSession.processConnect: "Failed
    to validate the edge! Provided request secret: <secret>"): the edge logs the refusal with
    the secret masked."""
    fake = harness.fake(response_code=edge_pb2.BAD_CREDENTIALS,
                        connect_error=f"Failed to validate the edge! Provided request secret: "
                                      f"{SECRET}")
    harness.edge(fake)

    def refusal() -> list[str]:
        return [r["message"] for r in log_records if "Failed to validate the edge!" in r["message"]]

    lines = wait_until(refusal, timeout=DEADLINE_S, what="the refusal's log line")
    assert "Provided request secret: " + SECRET[:2] + "****" in lines[0]
    leaked = [r["message"] for r in log_records
              if SECRET in r["message"] or any(SECRET in str(v) for v in r["extra"].values())]
    assert leaked == []
