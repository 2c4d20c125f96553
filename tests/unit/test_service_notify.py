"""The service manager notifications (edge_sync.service_notify): the pure parts (watchdog
interval and cadence, message formatting, link status texts) directly, and the notifier against
a real AF_UNIX datagram socket (a path and an abstract name) with a health query the test
turns on and off. The watchdog is observed by counting datagrams and health checks, never by
timing: the test waits for the thread to have looked a number of times."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from loguru import logger

from edge_sync.link.state import LinkState
from edge_sync.service_notify import (
    LinkStatusBoard,
    ServiceNotifier,
    WatchdogCadence,
    link_status,
    notify_message,
    watchdog_interval_s,
)
from tests.helpers.notify_socket import NotifySocket
from tests.helpers.wait import wait_until

DEADLINE_S = 10.0

# -- pure parts -----------------------------------------------------------------------------


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),
    ({"WATCHDOG_USEC": "400000"}, 0.4),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 30.0),
    ({"WATCHDOG_USEC": "400000", "WATCHDOG_PID": "1"}, None),  # another process's watchdog
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_follows_sd_watchdog_enabled(
    environ: dict[str, str], expected: float | None
) -> None:
    assert watchdog_interval_s(environ, pid=4242) == expected


def test_cadence_feeds_at_half_the_interval_and_looks_again_sooner_while_unhealthy() -> None:
    cadence = WatchdogCadence(0.4)
    assert cadence.feed_every_s == pytest.approx(0.2)
    assert cadence.recheck_s == pytest.approx(0.04)
    assert cadence.wait_after(True) == pytest.approx(0.2)
    assert cadence.wait_after(False) == pytest.approx(0.04)
    assert WatchdogCadence(30.0).wait_after(True) == pytest.approx(15.0)


def test_messages_are_key_value_lines_of_printable_ascii() -> None:
    assert notify_message(("READY", "1")) == "READY=1"
    assert notify_message(("STOPPING", "1"), ("STATUS", "stopping")) == "STOPPING=1\nSTATUS=stopping"
    # a newline would start another assignment; systemd reads UTF-8, the library sends latin-1
    assert notify_message(("STATUS", "a\nWATCHDOG=1\r\tb")) == "STATUS=a WATCHDOG=1  b"
    assert notify_message(("STATUS", "Zürich ✓ ")) == "STATUS=Z?rich ?"


@pytest.mark.parametrize(("state", "text"), [
    (LinkState.CONNECTED, "connected to cloud c:7070"),
    (LinkState.SYNCING, "syncing with cloud c:7070"),
    (LinkState.CONNECTING, "connecting to cloud c:7070"),
    (LinkState.BACKOFF, "connecting to cloud c:7070"),
    (LinkState.AUTH_FAILED,
     "cloud c:7070 refused the edge's credentials; retrying at the longest backoff"),
    (LinkState.DISCONNECTED, "not connected to cloud c:7070"),
])
def test_link_status_texts(state: LinkState, text: str) -> None:
    assert link_status(state.value, "c:7070") == text
    after = link_status(state.value, "c:7070", connected_before=True)
    assert after == text.replace("connecting", "reconnecting")  # once the link was accepted


# -- against a real socket ------------------------------------------------------------------


@pytest.fixture
def sock(monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    with NotifySocket() as s:
        monkeypatch.setenv("NOTIFY_SOCKET", s.address)
        yield s


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    handler = logger.add(lambda m: seen.append(m.record["message"]), level="WARNING",
                         format="{message}")
    yield seen
    logger.remove(handler)


def test_without_notify_socket_everything_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = ServiceNotifier.from_environ({"WATCHDOG_USEC": "400000"})
    assert not notifier.enabled
    assert notifier.link_board() is None
    notifier.ready("serving")
    notifier.start_watchdog(lambda: True)
    notifier.stopping()
    assert not any(t.name == "service-watchdog" for t in threading.enumerate())


def test_an_unreachable_socket_is_one_warning_not_a_crash(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any, warnings: list[str]
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    notifier = ServiceNotifier(watchdog_s=None)
    notifier.ready("serving")
    assert not notifier.enabled
    assert len(warnings) == 1 and warnings[0].startswith(
        "service manager notifications off: NOTIFY_SOCKET ")


def test_ready_status_and_stopping_reach_an_abstract_socket(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with NotifySocket(abstract=True) as s:
        monkeypatch.setenv("NOTIFY_SOCKET", s.address)
        notifier = ServiceNotifier(watchdog_s=None)
        notifier.ready("serving")
        notifier.status("serving")  # unchanged: not sent again
        board = notifier.link_board()
        assert isinstance(board, LinkStatusBoard)
        # start-up: not started, then attempts until the cloud is first reached; an outage
        for state in ("DISCONNECTED", "CONNECTING", "BACKOFF", "CONNECTING", "SYNCING",
                      "CONNECTED", "BACKOFF", "CONNECTING", "BACKOFF"):
            board.publish({"state": state, "cloud": "c:7070"})
        assert board.value["state"] == "BACKOFF"  # still the board it replaces
        notifier.stopping()
        board.publish({"state": "DISCONNECTED", "cloud": "c:7070"})  # the link stops: no line
        notifier.status("after the stop")  # a datagram the test can wait for
        messages = s.wait_for(lambda ms: len(ms) >= 8, what="8 datagrams")
    assert messages == [
        "READY=1\nSTATUS=serving",
        "STATUS=not connected to cloud c:7070",
        "STATUS=connecting to cloud c:7070",  # one line for every attempt before the first
        "STATUS=syncing with cloud c:7070",
        "STATUS=connected to cloud c:7070",
        "STATUS=reconnecting to cloud c:7070",  # the link was lost: one line for the outage
        "STOPPING=1\nSTATUS=stopping",
        "STATUS=after the stop",
    ]


class Health:
    """A health query the test switches; counts how often the watchdog asked."""

    def __init__(self) -> None:
        self.ok = True
        self.asked = 0
        self._condition = threading.Condition()

    def __call__(self) -> bool:
        with self._condition:
            self.asked += 1
            self._condition.notify_all()
            return self.ok

    def wait_asked(self, more: int) -> None:
        target = self.asked + more
        wait_until(lambda: self.asked >= target, timeout=DEADLINE_S,
                   what=f"the watchdog to ask {more} more times", condition=self._condition)


def test_watchdog_is_fed_only_while_healthy_and_never_after_stopping(
    sock: NotifySocket, warnings: list[str]
) -> None:
    health = Health()
    notifier = ServiceNotifier(watchdog_s=0.2)
    notifier.ready("serving")
    notifier.start_watchdog(health)
    sock.wait_for(lambda ms: ms.count("WATCHDOG=1") >= 3, what="3 WATCHDOG=1")

    health.ok = False
    sock.wait_for(lambda ms: "STATUS=supervisor not healthy; watchdog not fed" in ms,
                  what="the unhealthy status")
    health.wait_asked(5)  # five more looks, none of them fed
    messages = sock.messages()
    starved = messages.index("STATUS=supervisor not healthy; watchdog not fed")
    assert "WATCHDOG=1" not in messages[starved + 1:]
    assert warnings == ["supervisor not healthy (a child down or given up); watchdog not fed"]

    health.ok = True
    # two datagrams (the feed, then the status back): wait for both before judging their order
    fed_again = sock.wait_for(lambda ms: "WATCHDOG=1" in ms[starved + 1:]
                              and len(ms) >= starved + 3, what="fed again, and a status")
    # healthy again: fed, and the status before the starvation is back
    assert fed_again[starved + 1:starved + 3] == ["WATCHDOG=1", "STATUS=serving"]

    notifier.stopping()
    asked = health.asked
    final = sock.wait_for(lambda ms: "STOPPING=1\nSTATUS=stopping" in ms, what="STOPPING=1")
    assert final[-1] == "STOPPING=1\nSTATUS=stopping"
    assert not any(t.name == "service-watchdog" for t in threading.enumerate())
    assert health.asked == asked
    assert sock.messages()[-1] == "STOPPING=1\nSTATUS=stopping"
