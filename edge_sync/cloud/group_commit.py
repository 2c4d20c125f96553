"""Group commit for the cloud's admin writes: writes submitted while another is being committed
share the next LMDB write transaction, so a burst of operator calls (a shared attribute set on
a thousand devices, RPC requests at hundreds a second) costs one fsync per group rather than one
per call. Durability is unchanged: a write's future is resolved only after the transaction
holding it has committed.

One writer thread (started on the first write) takes everything queued, runs each write in a
nested transaction of one write transaction, and commits once. A write that raises (a device
deleted meanwhile, a value that cannot be stored) has its nested transaction aborted and gets
its exception; the others are committed. Should the group's transaction itself fail (the size
cap, a full disk, an LMDB error), each write is run again alone, so only the ones that fail
alone fail.

Callers on an asyncio loop await ``asyncio.wrap_future(submit(fn))`` (no thread of theirs is
held while the disk syncs); blocking callers use ``write(fn)``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, TypeVar

import lmdb
from loguru import logger

from edge_sync.errors import StorageError
from edge_sync.storage.env import LmdbStore

T = TypeVar("T")

_log = logger.bind(component="cloud-store")

MAX_GROUP = 1000
"""Writes in one transaction at most."""


@dataclass(slots=True)
class _Write:
    fn: Callable[[lmdb.Transaction], Any]
    future: Future[Any] = field(default_factory=Future)


class GroupCommit:
    """Writes through ``lmdb`` (its ``write``: map growth, the size cap, a full disk), grouped."""

    def __init__(self, lmdb_store: LmdbStore, *, max_group: int = MAX_GROUP,
                 name: str = "cloud-writer") -> None:
        self._lmdb = lmdb_store
        self._max_group = max_group
        self._name = name
        self._queue: queue.SimpleQueue[_Write | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.groups = 0
        """Transactions committed (for tests and the log)."""

    def submit(self, fn: Callable[[lmdb.Transaction], T]) -> Future[T]:
        """Queue ``fn`` (run in a write transaction, maybe more than once: see LmdbStore.write);
        the future holds its result once committed, or its exception."""
        write = _Write(fn)
        with self._lock:
            if self._closed:
                raise StorageError("store closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()
            self._queue.put(write)
        return write.future

    def write(self, fn: Callable[[lmdb.Transaction], T]) -> T:
        """``fn`` committed (blocking); its result, or its exception raised."""
        return self.submit(fn).result()

    def close(self) -> None:
        """Commit what is queued, then stop the writer thread."""
        with self._lock:
            self._closed = True
            thread = self._thread
            if thread is not None:
                self._queue.put(None)
        if thread is not None and thread is not threading.current_thread():
            thread.join()

    # -- the writer thread -----------------------------------------------------------------------

    def _run(self) -> None:
        stop = False
        while not stop:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            while len(group) < self._max_group:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                group.append(nxt)
            self._commit(group)

    def _commit(self, group: list[_Write]) -> None:
        if len(group) > 1:
            try:
                outcomes = self._lmdb.write(lambda txn: [_nested(txn, self._lmdb, w.fn)
                                                         for w in group])
            except BaseException as exc:  # the group's transaction failed: each alone
                _log.bind(writes=len(group), error=str(exc)[:200]).warning(
                    "group commit of {} writes failed; each written alone", len(group))
            else:
                self.groups += 1
                for w, (ok, value) in zip(group, outcomes, strict=True):
                    if ok:
                        w.future.set_result(value)
                    else:
                        w.future.set_exception(value)
                return
        for w in group:
            try:
                w.future.set_result(self._lmdb.write(w.fn))
                self.groups += 1
            except BaseException as exc:
                w.future.set_exception(exc)


def _nested(txn: lmdb.Transaction, store: LmdbStore,
            fn: Callable[[lmdb.Transaction], Any]) -> tuple[bool, Any]:
    """Run ``fn`` in a transaction nested in ``txn``: (True, result) with its writes kept, or
    (False, exception) with them undone. LMDB errors (a full map, say) end the whole group."""
    child = store.env.begin(write=True, parent=txn)
    try:
        result = fn(child)
    except lmdb.Error:
        child.abort()
        raise
    except Exception as exc:
        child.abort()
        return False, exc
    except BaseException:
        child.abort()
        raise
    child.commit()
    return True, result
