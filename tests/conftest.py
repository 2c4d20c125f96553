"""Shared pytest fixtures: the --soak flag, a guard that stops every pykka actor after a test,
and `procs`, which closes every process helper (Agent, CloudProc) a test started."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pykka
import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="run the long soak/chaos sizes (tests marked soak, and soak sizes elsewhere)",
    )


@pytest.fixture(scope="session")
def soak(request: pytest.FixtureRequest) -> bool:
    """True when the long sizes were asked for (scripts/test --soak)."""
    return bool(request.config.getoption("--soak"))


@pytest.fixture(autouse=True)
def _stop_all_actors() -> Iterator[None]:
    yield
    pykka.ActorRegistry.stop_all(timeout=10)


@pytest.fixture
def procs() -> Iterator[Callable[[Any], Any]]:
    """Register a process helper (anything with close()); every one still running is killed
    at teardown, the last started first."""
    started: list[Any] = []

    def add(p: Any) -> Any:
        started.append(p)
        return p

    yield add
    for p in reversed(started):
        p.close()
