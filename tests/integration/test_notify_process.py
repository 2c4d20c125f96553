"""systemd's notification protocol with a real `edge-sync run` and a fake NOTIFY_SOCKET (a real
AF_UNIX datagram socket the test reads): READY=1 only once the admin API answers /readyz with
everything up, WATCHDOG=1 at half of WATCHDOG_USEC, no feeding once the supervisor gave up,
and STOPPING=1 before a clean exit on SIGTERM. `edge-cloud serve` sends READY=1 and
STOPPING=1 too.

Cadence is checked on the datagrams' arrival times with bounds a loaded machine keeps: feeds
never come faster than the cadence allows (a slow machine only delays them), and on average
they come within the watchdog interval (what keeps systemd from killing the agent)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.agent import Agent
from tests.helpers.cloud_proc import CloudProc
from tests.helpers.notify_socket import NotifySocket

WATCHDOG_USEC = 400_000
FEED_EVERY_S = WATCHDOG_USEC / 2 / 1_000_000
GAVE_UP = "STOPPING=1\nSTATUS=supervisor gave up (restart intensity exceeded); exiting with code 3"

pytestmark = pytest.mark.slow


@pytest.fixture
def sock() -> Iterator[NotifySocket]:
    with NotifySocket() as s:
        yield s


def started(agent: Agent, sock: NotifySocket) -> None:
    """Spawn the agent and wait for READY=1, then check that the admin API already answers."""
    proc = agent.spawn()

    def ready(messages: list[str]) -> bool:
        assert proc.poll() is None, f"agent exited:\n{agent.stderr_text()[-3000:]}"
        return any(m.startswith("READY=1\n") for m in messages)

    messages = sock.wait_for(ready, what="READY=1")
    readyz = agent.admin("GET", "/readyz")  # answered at once: the API listened before READY
    assert readyz.status == 200, readyz.body
    components = readyz.json()["components"]
    assert all(components.values()), components
    assert {"store", "queue", "device-http", "admin-http"} <= components.keys()
    assert messages[0] == (f"READY=1\nSTATUS=serving: device API port {agent.http_port}, "
                           f"admin API port {agent.admin_port}")


def test_ready_watchdog_cadence_and_stopping_on_sigterm(tmp_path: Path, sock: NotifySocket) -> None:
    env = {"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    with Agent(tmp_path / "agent", env=env) as agent:
        started(agent, sock)
        feeds = 11
        sock.wait_for(lambda ms: ms.count("WATCHDOG=1") >= feeds, what=f"{feeds} WATCHDOG=1")
        agent.signal(signal.SIGTERM)
        assert agent.wait_exit() == 0
    arrivals = sock.arrivals()
    fed = [t for t, m in arrivals if m == "WATCHDOG=1"][:feeds]
    span = fed[-1] - fed[0]
    # never faster than the cadence (5% for the reader thread's own delays) ...
    assert span >= (feeds - 1) * FEED_EVERY_S * 0.95, [round(t - fed[0], 3) for t in fed]
    # ... and on average within the watchdog interval, even on a loaded machine
    assert span <= (feeds - 1) * WATCHDOG_USEC / 1_000_000, [round(t - fed[0], 3) for t in fed]
    messages = [m for _, m in arrivals]
    assert messages[-1] == "STOPPING=1\nSTATUS=stopping"
    assert messages.count("STOPPING=1\nSTATUS=stopping") == 1
    assert set(messages[1:-1]) == {"WATCHDOG=1"}  # no cloud configured: no link status lines


def test_no_watchdog_without_watchdog_usec(tmp_path: Path, sock: NotifySocket) -> None:
    with Agent(tmp_path / "agent", env={"NOTIFY_SOCKET": sock.address}) as agent:
        started(agent, sock)
        assert agent.admin("GET", "/api/status").status == 200  # a round trip after READY
        assert agent.terminate() == 0
    assert sock.messages()[1:] == ["STOPPING=1\nSTATUS=stopping"]


def test_a_supervisor_that_gave_up_is_not_fed(tmp_path: Path, sock: NotifySocket) -> None:
    # A slower cadence (feed every second) so that at most one feed can race the crash.
    env = {"NOTIFY_SOCKET": sock.address, "WATCHDOG_USEC": "2000000",
           "EDGE_FAULT_INJECTION": "true", "EDGE_SUPERVISOR_MAX_RESTARTS": "0"}
    with Agent(tmp_path / "agent", env=env) as agent:
        started(agent, sock)
        sock.wait_for(lambda ms: "WATCHDOG=1" in ms, what="the first WATCHDOG=1")
        before = len(sock.messages())
        resp = agent.admin("POST", "/api/debug/crash", {"target": "queue"})
        assert resp.status == 200, resp.body
        assert agent.wait_exit() == 3
    after = sock.messages()[before:]
    assert after[-1] == GAVE_UP, after
    # a feed whose health check preceded the crash may still come; none after the give-up
    assert after[:-1] in ([], ["WATCHDOG=1"],
                          ["STATUS=supervisor not healthy; watchdog not fed"],
                          ["WATCHDOG=1", "STATUS=supervisor not healthy; watchdog not fed"]), after


def test_the_reference_cloud_sends_ready_and_stopping(tmp_path: Path, sock: NotifySocket) -> None:
    with CloudProc(tmp_path / "cloud", env={"NOTIFY_SOCKET": sock.address}) as cloud:
        cloud.start()
        messages = sock.wait_for(lambda ms: len(ms) >= 1, what="READY=1")
        assert messages[0] == (f"READY=1\nSTATUS=serving: gRPC port {cloud.rpc_port}, "
                               f"admin API port {cloud.admin_port}")
        assert cloud.terminate() == 0
    assert sock.messages() == [messages[0], "STOPPING=1\nSTATUS=stopping"]
