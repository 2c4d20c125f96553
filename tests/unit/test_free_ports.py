"""bench.common.free_ports (the tests' tests/helpers/ports.py too): ports below the kernel's
ephemeral range, which it never hands to another process's connection or bind to port 0, a
range of their own for each pytest-xdist worker, distinct and free when picked."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from bench.common import _LOWEST_PORT, _port_range, free_ports

EPHEMERAL_LOW = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])


def test_picks_are_distinct_free_and_below_the_ephemeral_range() -> None:
    ports = free_ports(6)
    assert len(set(ports)) == 6
    assert all(_LOWEST_PORT <= p < EPHEMERAL_LOW for p in ports)
    for port in ports:  # free: each can be bound and listened on
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))
            s.listen()


def test_a_port_is_never_handed_out_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    """Separate calls for one server's ports (made before it binds any) never get the same
    one, though each was released: a share of 8 ports gives 4 different ones one by one."""
    low = free_ports(1)[0] // 8 * 8
    while not all(bindable(p) for p in range(low, low + 8)):
        low = free_ports(1)[0] // 8 * 8
    monkeypatch.setattr("bench.common._port_range", lambda: (low, low + 8))
    monkeypatch.setattr("bench.common._handed_out", set())
    assert len({free_ports(1)[0] for _ in range(4)}) == 4


def test_the_picks_leave_the_global_random_alone() -> None:
    """A test that seeds the global generator gets the same draws whether or not it starts
    servers in between."""
    random.seed(7)
    free_ports(3)
    after_picks = random.random()
    random.seed(7)
    assert random.random() == after_picks


def test_each_worker_has_its_own_share(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
    shares = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        shares.append(_port_range())
        low, high = shares[-1]  # type: ignore[misc]
        assert all(low <= p < high for p in free_ports(3))
    share = (EPHEMERAL_LOW - _LOWEST_PORT) // 3
    assert shares == [(_LOWEST_PORT + k * share, _LOWEST_PORT + (k + 1) * share)
                      for k in range(3)]


def test_outside_pytest_xdist_the_whole_range(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    monkeypatch.delenv("PYTEST_XDIST_WORKER_COUNT", raising=False)
    assert _port_range() == (_LOWEST_PORT, EPHEMERAL_LOW)


def bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_taken_port_is_never_picked(monkeypatch: pytest.MonkeyPatch) -> None:
    """A share of two ports, one of them taken: the other is the pick, every time."""
    low = next(p for p in free_ports(20) if bindable(p + 1))
    monkeypatch.setattr("bench.common._port_range", lambda: (low, low + 2))
    picks = []
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", low))
        for _ in range(5):
            monkeypatch.setattr("bench.common._handed_out", set())  # each a fresh process
            picks += free_ports(1)
    assert picks == [low + 1] * 5
