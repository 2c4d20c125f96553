"""Shared pytest fixtures: the --soak flag, and a guard that stops every pykka actor after a test."""

from __future__ import annotations

from collections.abc import Iterator

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
