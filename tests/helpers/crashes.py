"""Crashing an agent's actor on purpose (the ``Crash`` test message) and waiting for its
supervisor to put a new incarnation in its place."""

from __future__ import annotations

from collections.abc import Callable

from edge_sync.actors.messages import Crash
from edge_sync.app import EdgeApp
from tests.helpers.wait import wait_until


def crash_and_wait_restarted(app: EdgeApp, child: str, crash: int, *, timeout: float,
                             then: Callable[[], bool] | None = None) -> None:
    """Tell the child ``child`` of the agent's supervisor its ``crash``-th Crash, and wait until
    it was restarted: ``crash`` restarts counted and a new incarnation in place (and ``then()``
    true, when given)."""
    dead = app._actor_ref(child)
    assert dead is not None, f"{child} is not running"
    dead.tell(Crash(f"test: crash {crash}"))

    def restarted() -> bool:
        return (app.supervisor.restarts(child) == crash
                and app._actor_ref(child) not in (None, dead)
                and (then is None or then()))

    wait_until(restarted, timeout=timeout, what=f"{child} restarted after crash {crash}")
