"""The error family means what it says: how each type maps to HTTP, and that an unexpected
failure inside a QueueActor commit is an InternalError (HTTP 500) followed by a restart, never a
400, while a value the store cannot encode fails its own command alone."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

import edge_sync
from edge_sync.actors.messages import Append
from edge_sync.actors.queue_actor import QueueActor, QueuePolicy
from edge_sync.common.http_errors import status_of
from edge_sync.config import FullPolicy
from edge_sync.errors import (
    BadRequest,
    Conflict,
    EdgeSyncError,
    IllegalTransition,
    InternalError,
    PayloadRejected,
    QueueFull,
    StorageCorrupt,
    SupervisorGaveUp,
    Unavailable,
    Unstorable,
)
from edge_sync.metrics import Metrics
from edge_sync.storage.env import LmdbStore
from edge_sync.storage.event_log import EventLog
from edge_sync.storage.records import Action, Lane, NewEvent

DEADLINE = 10.0
ENTITY = uuid.UUID(int=5)


@pytest.mark.parametrize(("error", "status"), [
    (BadRequest("x"), 400), (Unstorable("x"), 400), (PayloadRejected("x", 3), 400),
    (Conflict("x"), 409), (QueueFull("x"), 507), (Unavailable("x"), 503),
    (StorageCorrupt("x"), 500), (InternalError("x"), 500), (RuntimeError("x"), 500),
])
def test_http_status_of_each_error(error: BaseException, status: int) -> None:
    assert status_of(error) == status


def test_every_project_error_is_an_edge_sync_error() -> None:
    for cls in (Conflict, PayloadRejected, IllegalTransition, SupervisorGaveUp, InternalError,
                Unstorable):
        assert issubclass(cls, EdgeSyncError)


def test_the_package_exports_the_embedding_surface() -> None:
    assert {"EdgeApp", "load_edge_config", "EdgeSyncError", "__version__"} <= set(edge_sync.__all__)
    assert edge_sync.Conflict is Conflict
    assert isinstance(edge_sync.__version__, str) and edge_sync.__version__
    with pytest.raises(AttributeError):
        edge_sync.no_such_thing  # noqa: B018


def _events(value: Any) -> tuple[NewEvent, ...]:
    return (NewEvent("DEVICE", "DEVICE", ENTITY, Action.TIMESERIES_UPDATED, {"v": value}, 1,
                     Lane.NORMAL),)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LmdbStore]:
    s = LmdbStore(tmp_path / "store", initial_map_mb=4, max_size_mb=16)
    yield s
    s.close()


def _start(store: LmdbStore, exits: list[BaseException | None], exited: threading.Event) -> Any:
    def report(reason: BaseException | None) -> None:
        exits.append(reason)
        exited.set()

    policy = QueuePolicy(full_policy=FullPolicy.REFUSE, purge_interval_s=3600)
    return QueueActor.start(report, store, policy=policy, metrics=Metrics())


def test_an_unstorable_value_fails_alone_and_the_actor_keeps_running(store: LmdbStore) -> None:
    exits: list[BaseException | None] = []
    exited = threading.Event()
    ref = _start(store, exits, exited)
    try:
        bad: Future[range] = Future()
        good: Future[range] = Future()
        ref.tell(Append(ENTITY, _events(2**70), bad))
        ref.tell(Append(ENTITY, _events(1), good))
        assert isinstance(bad.exception(DEADLINE), Unstorable)
        assert good.result(DEADLINE) == range(1, 2)
        assert status_of(bad.exception(0)) == 400
        assert not exited.is_set() and ref.is_alive()
    finally:
        ref.stop()


def test_an_unexpected_commit_failure_is_internal_and_restarts(
        store: LmdbStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_append(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("a bug")

    monkeypatch.setattr(EventLog, "append", broken_append)
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    try:
        exits: list[BaseException | None] = []
        exited = threading.Event()
        ref = _start(store, exits, exited)
        reply: Future[range] = Future()
        ref.tell(Append(ENTITY, _events(1), reply))
        error = reply.exception(DEADLINE)
        assert isinstance(error, InternalError) and "RuntimeError: a bug" in str(error)
        assert status_of(error) == 500
        assert exited.wait(DEADLINE)  # the supervisor is told, so it restarts the actor
        assert isinstance(exits[0], RuntimeError)
    finally:
        logger.remove(sink)
    assert any("QueueActor failed" in line and "a bug" in line for line in errors)
