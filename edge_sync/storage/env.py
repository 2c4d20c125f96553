"""The LMDB environment: opening (with clear errors for missing, corrupt or unwritable stores),
named databases, read and write transactions, and map growth up to the configured cap.

All transactions go through LmdbStore.read() / LmdbStore.write(). Growing the map needs no other
transaction open in this process, so both take a shared gate that growth takes exclusively.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import lmdb
from loguru import logger

from edge_sync.errors import QueueFull, StorageCorrupt, StorageError
from edge_sync.storage import codec

T = TypeVar("T")

MiB = 1024 * 1024
STORE_FORMAT = b"edge-sync/2"  # /2: values in the checksummed envelope of codec.py
PREVIOUS_STORE_FORMAT = b"edge-sync/1"  # plain msgpack values: read as they are, see codec.py
_UPGRADED_FROM = b"upgraded_from"  # meta: the stamp a store had before it was upgraded
_LOW_SPACE_BYTES = 1024 * 1024
_BALLAST = "space.reserve"  # disk space held back so maintenance writes work on a full disk
_BALLAST_BYTES = 4 * 1024 * 1024
_BALLAST_MIN_BYTES = 256 * 1024
_CREATED_MARKER = "store.created"
NIL_STORE_ID = uuid.UUID(int=0)

DB_NAMES = (
    "meta",
    "events",
    "pending_high",
    "pending_normal",
    "dead",
    "deployed_by_time",
    "devices",
    "device_tokens",
    "device_names",
    "attributes",
    "latest_ts",
    "downlinks",
    # the entity graph (storage/graph_store.py): added after the edge-sync/2 stamp without a
    # format change, see LATER_DB_NAMES
    "graph_entities",
    "graph_names",
    "graph_provided",
    "graph_refs",
    "graph_relations",
    "graph_relations_to",
    "graph_held",
    "graph_waiting",
    "graph_seen",
    "graph_log",
    # the rule engine's state and local timeseries (storage/rule_store.py): added later still,
    # the same way
    "rule_state",
    "rule_local_ts",
    "rule_local_expiry",
    # the last rule chain in force from each source (storage/rule_chains.py): the same way
    "rule_chains",
    # the event log's entity index (storage/event_log.py): the same way; the agent's
    # QueueActor builds it for a store made before it (EntityIndexBuild), after it starts
    "events_by_entity",
    # the local timeseries' expiry index by write (storage/rule_store.py): the same way;
    # rule_local_expiry, the index by point it replaces, is still read until it is empty
    "rule_local_expiry_sets",
)
LATER_DB_NAMES = frozenset(name for name in DB_NAMES
                           if name.startswith(("graph_", "rule_")) or name == "events_by_entity")
"""Databases newer than the store format stamp: a writable open creates them in a store of an
earlier release (an earlier release simply ignores them); a read-only open of such a store
(``edge-sync status`` with the agent stopped) goes on without them, and their readers see
nothing (``name not in LmdbStore.dbs``)."""

_log = logger.bind(component="storage")


class _Gate:
    """Shared/exclusive gate: many transactions at once, or one map resize alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive_waiting = 0
        self._exclusive = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._exclusive_waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if self._shared == 0:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._exclusive_waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._exclusive_waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_MADV_DONTNEED = 4
_libc: ctypes.CDLL | None = None


def _madvise(start: int, length: int) -> bool:
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            return False
        _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    return bool(_libc.madvise(start, length, _MADV_DONTNEED) == 0)


def _free_bytes(path: Path) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 1 << 62
    return st.f_bavail * st.f_frsize


def _is_disk_full(exc: BaseException, path: Path | None = None) -> bool:
    """ENOSPC, or EIO on a filesystem with next to no free space (LMDB reports a write that
    ran out of space part-way as an I/O error)."""
    if not isinstance(exc, lmdb.Error):
        return False
    code = getattr(exc, "errno", None)
    if code == errno.ENOSPC or "No space left" in str(exc):
        return True
    io_error = code == errno.EIO or "Input/output error" in str(exc)
    return io_error and path is not None and _free_bytes(path) < _LOW_SPACE_BYTES


class LmdbStore:
    """One LMDB environment holding the event log and the entity store."""

    def __init__(
        self,
        path: Path,
        *,
        initial_map_mb: int = 64,
        max_size_mb: int = 10240,
        readonly: bool = False,
        db_names: tuple[str, ...] = DB_NAMES,
        store_format: bytes = STORE_FORMAT,
        previous_format: bytes | None = PREVIOUS_STORE_FORMAT,
        program: str = "edge-sync",
        path_hint: str = "EDGE_DATA_DIR / storage.data_dir",
        exclusive_writer: bool = True,
    ) -> None:
        self._db_names = db_names
        if db_names[0] != "meta":
            raise ValueError("the first database must be 'meta'")
        self.path = Path(path)
        self.readonly = readonly
        self.max_size = max_size_mb * MiB
        # The cap bounds live data (see live_bytes); the map may grow past it by this reserve, so
        # that deletes and acknowledgements (which need fresh pages too) still work when the
        # data has reached the cap, and pages freed by a purge can be waited for.
        self.reserve = max(4 * MiB, self.max_size // 8)
        self.hard_max = self.max_size + self.reserve
        self._format = store_format
        self._previous_format = previous_format
        # whether values of the previous format may be in the store (it was written, or is still
        # stamped, by the previous release): decoders accept them only then (see codec.py)
        self.previous_values = False
        self._upgraded = False
        self._exclusive_writer = exclusive_writer
        self._program = program
        self._path_hint = path_hint
        self._gate = _Gate()
        self._grow_lock = threading.Lock()
        self._writer_lock: int | None = None
        self._released_at = 0.0
        self._disk_full = False  # a data write hit a full disk: refuse data until room is back
        self._disk_full_reason = ""
        try:
            self.env = self._open(initial_map_mb * MiB, max_dbs=len(db_names) + 2)
        except BaseException:
            self._release_writer_lock()
            raise
        self._check_not_truncated()
        self.ensure_ballast()
        self.dbs: dict[str, lmdb._Database] = {}
        try:
            if readonly:
                self.dbs["meta"] = self.env.open_db(b"meta", create=False)
                with self.env.begin() as txn:
                    self._check_or_stamp_format(txn)
                for name in db_names[1:]:
                    try:
                        self.dbs[name] = self.env.open_db(name.encode(), create=False)
                    except lmdb.NotFoundError:
                        if name not in LATER_DB_NAMES:
                            raise
                        # a store of an earlier release: the newer database is simply absent
            else:
                with self.env.begin(write=True) as txn:
                    self.dbs["meta"] = self.env.open_db(b"meta", txn=txn)
                    self._check_or_stamp_format(txn)
                    for name in db_names[1:]:
                        self.dbs[name] = self.env.open_db(name.encode(), txn=txn)
                if self._upgraded and self._previous_format is not None:
                    _log.bind(path=str(self.path)).info(
                        "store format {} upgraded to {}: old records are read as they are, new "
                        "ones are checksummed", self._previous_format.decode(),
                        self._format.decode())
            with self.env.begin() as txn:
                raw = txn.get(b"store_id", db=self.dbs["meta"])
            self.store_id = uuid.UUID(bytes=bytes(raw)) if raw else NIL_STORE_ID
        except lmdb.NotFoundError as exc:
            self.close()
            raise StorageCorrupt(
                f"{self.path}: LMDB file has no {program} databases ({exc}); "
                f"it was not written by {program} or is damaged"
            ) from exc
        except StorageError:
            self.close()
            raise
        except lmdb.Error as exc:
            self.close()
            raise StorageCorrupt(f"{self.path}: cannot read the store: {exc}") from exc

    # -- opening -----------------------------------------------------------------------------

    def _open(self, map_size: int, *, max_dbs: int) -> lmdb.Environment:
        data_file = self.path / "data.mdb"
        if self.readonly:
            if not data_file.exists():
                raise StorageError(
                    f"no {self._program} store at {self.path} (no data.mdb); "
                    f"check {self._path_hint}"
                )
        else:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise StorageError(
                    f"storage path {self.path} cannot be created: {exc.strerror or exc}; "
                    f"set {self._path_hint} to a writable folder"
                ) from exc
            if not os.access(self.path, os.W_OK):
                raise StorageError(f"storage path {self.path} is not writable")
            if self._exclusive_writer:
                self._lock_writer()
        if data_file.exists():
            size = data_file.stat().st_size
            created = (self.path / _CREATED_MARKER).exists()
            if size < 2 * 4096 and (size > 0 or created or self.readonly):
                # (an empty data.mdb without the marker is a creation killed before it wrote
                # anything: no events can be in it, so it is simply created again)
                raise StorageCorrupt(
                    f"{data_file} is truncated ({size} bytes); restore it from a backup or move "
                    "it away to start with an empty queue (events in it would be lost)"
                )
            map_size = max(map_size, size)
        try:
            return lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=max_dbs,
                max_readers=1024,
                readonly=self.readonly,
                lock=True,
                sync=True,
                metasync=True,
                readahead=False,
                create=not self.readonly,
            )
        except lmdb.InvalidError as exc:
            raise StorageCorrupt(
                f"{data_file} is not a valid LMDB file ({exc}); restore it from a backup or move "
                "it away to start with an empty queue (events in it would be lost)"
            ) from exc
        except lmdb.VersionMismatchError as exc:
            raise StorageCorrupt(f"{data_file}: LMDB version mismatch ({exc})") from exc
        except lmdb.Error as exc:
            if _is_disk_full(exc):
                raise QueueFull(f"{self.path}: disk full while opening the store") from exc
            raise StorageError(f"cannot open store at {self.path}: {exc}") from exc

    def _lock_writer(self) -> None:
        """One writing process per store: a second agent on the same folder would hand out
        seqs the first already used. The lock dies with the process (kill -9 included)."""
        lock_path = self.path / "writer.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StorageError(f"cannot create {lock_path}: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StorageError(
                f"{self.path} is in use by another {self._program} process (pid {holder}); "
                "only one may write a store: stop it or use another data folder"
            ) from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._writer_lock = fd

    def _check_not_truncated(self) -> None:
        """A data file shorter than its last used page would crash the process (SIGBUS) on
        first access: refuse it with a clear message instead."""
        data_file = self.path / "data.mdb"
        try:
            needed = (self.env.info()["last_pgno"] + 1) * self.env.stat()["psize"]
            actual = data_file.stat().st_size
        except (OSError, lmdb.Error) as exc:
            self.close()
            raise StorageCorrupt(f"{data_file}: cannot check the file: {exc}") from exc
        if actual < needed:
            self.close()
            raise StorageCorrupt(
                f"{data_file} is truncated ({actual} bytes, its pages need {needed}); restore it "
                "from a backup or move it away to start with an empty queue (events in it would "
                "be lost)"
            )

    def _check_or_stamp_format(self, txn: lmdb.Transaction) -> None:
        """A new store gets the format stamp and a random store id (its incarnation: a store
        created anew, e.g. after a lost disk, restarts seqs at 1 under a new id), and a marker
        file beside it: from then on an empty or truncated data.mdb is damage, not a new store."""
        meta = self.dbs["meta"]
        found = txn.get(b"format", db=meta)
        if found is None:
            if self.readonly:
                raise StorageCorrupt(f"{self.path}: store has no format stamp")
            txn.put(b"format", self._format, db=meta)
            txn.put(b"store_id", uuid.uuid4().bytes, db=meta)
            if "events_by_entity" in self._db_names:  # a new store's events are indexed as appended
                self.put_meta_int(txn, b"entity_index", 1)
            (self.path / _CREATED_MARKER).write_text(
                f"{self._program} store created; data.mdb holds the queue: never delete it alone\n")
        elif self._previous_format is not None and bytes(found) == self._previous_format:
            self.previous_values = True
            if not self.readonly:
                # no scan and no rewrite: old values are read as they are (codec.py), so the
                # upgrade is the new stamp, and a note that old values may still be there
                txn.put(_UPGRADED_FROM, self._previous_format, db=meta)
                txn.put(b"format", self._format, db=meta)
                self._upgraded = True  # logged once the transaction is committed
        elif bytes(found) != self._format:
            raise StorageCorrupt(
                f"{self.path}: store format {bytes(found)!r}, this {self._program} reads "
                f"{self._format!r}; was the folder written by another program or version?"
            )
        else:
            self.previous_values = txn.get(_UPGRADED_FROM, db=meta) is not None

    # -- transactions ------------------------------------------------------------------------

    @contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read-only transaction (a consistent snapshot). Any thread."""
        with self._gate.shared():
            try:
                txn = self.env.begin(buffers=False)
            except lmdb.MapResizedError:
                self.env.set_mapsize(0)  # another process grew the map: adopt its size
                txn = self.env.begin(buffers=False)
            try:
                yield txn
            finally:
                txn.abort()

    def write(self, fn: Callable[[lmdb.Transaction], T], *, maintenance: bool = False) -> T:
        """Run fn in one write transaction and commit it (one fsync).

        fn may run more than once: when the map is full it is grown and fn runs again from
        scratch, so fn must derive everything from its inputs and the transaction. A data write
        that would leave more than the cap of live data is refused with QueueFull; a maintenance
        write (deletes, acknowledgements) may use the reserve above the cap. QueueFull also when
        the disk is full; other LMDB errors as StorageError.
        """
        if self.readonly:
            raise StorageError("store opened read-only")
        if self._disk_full and not maintenance:
            raise QueueFull(f"disk full under {self.path} ({self._disk_full_reason}): new "
                                "data refused until the backlog drains and room is made")
        while True:
            try:
                with self._gate.shared():
                    txn = self.env.begin(write=True)
                    try:
                        result = fn(txn)
                        if not maintenance and self.live_bytes(txn) > self.max_size:
                            raise QueueFull(
                                f"stored data would exceed the size cap of {self.max_size // MiB} "
                                "MiB (storage.max_size_mb)")
                    except BaseException:
                        txn.abort()
                        raise
                    txn.commit()
                    return result
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as exc:
                if not _is_disk_full(exc, self.path):
                    raise StorageError(f"write failed in {self.path}: {exc}") from exc
                if maintenance and self._release_ballast():
                    continue  # the disk space held back for this: try again
                if not maintenance and not self._disk_full:
                    self._disk_full = True
                    self._disk_full_reason = str(exc)
                    _log.bind(path=str(self.path), free_bytes=_free_bytes(self.path)).warning(
                        "disk full: new data is refused until room is made")
                raise QueueFull(f"disk full under {self.path}: {exc}") from exc

    def ensure_ballast(self) -> None:
        """Hold back a little disk space (a file of zeros) that a maintenance write may use when
        the disk is full, so a full edge can still record acknowledgements and purge. Created
        at open and again after purges, when the disk has room."""
        if self.readonly or not self._exclusive_writer:
            return
        ballast = self.path / _BALLAST
        try:
            if ballast.exists():
                return
            size = min(_BALLAST_BYTES, _free_bytes(self.path) // 4)
            if size < _BALLAST_MIN_BYTES:
                return
            fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.posix_fallocate(fd, 0, size)
            finally:
                os.close(fd)
        except OSError as exc:
            ballast.unlink(missing_ok=True)
            _log.bind(path=str(ballast)).warning("cannot hold back disk space: {}", exc)

    def room_made(self) -> None:
        """Delivered events were purged (or evicted): their pages are free inside the file, so
        new data may be tried again after a full disk, and space is held back anew."""
        if self._disk_full:
            self._disk_full = False
            _log.bind(path=str(self.path)).info("room made in the store: new data accepted again")
        self.ensure_ballast()

    def _release_ballast(self) -> bool:
        ballast = self.path / _BALLAST
        if not ballast.exists():
            return False
        size = ballast.stat().st_size
        ballast.unlink()
        _log.bind(path=str(self.path), freed_bytes=size).warning(
            "disk full: released the held-back space so acknowledgements and purges can proceed")
        return True

    def _grow(self) -> None:
        with self._grow_lock, self._gate.exclusive():
            current = self.env.info()["map_size"]
            if current >= self.hard_max:
                raise QueueFull(
                    f"store at its size cap ({self.max_size // MiB} MiB, storage.max_size_mb, "
                    f"plus its {self.reserve // MiB} MiB reserve)"
                )
            new = min(self.hard_max, current * 2)
            try:
                self.env.set_mapsize(new)
            except lmdb.Error as exc:
                raise StorageError(f"cannot grow the map to {new // MiB} MiB: {exc}") from exc
            _log.bind(old_mb=current // MiB, new_mb=new // MiB).info("storage map grown")

    # -- small helpers -----------------------------------------------------------------------

    def entries(self, txn: lmdb.Transaction, name: str) -> int:
        """Entry count of a named database, O(1)."""
        return int(txn.stat(self.dbs[name])["entries"])

    def meta_int(self, txn: lmdb.Transaction, key: bytes, default: int = 0) -> int:
        raw = txn.get(key, db=self.dbs["meta"])
        return default if raw is None else codec.from_u64(raw, f"meta: {key.decode()}")

    def put_meta_int(self, txn: lmdb.Transaction, key: bytes, value: int) -> None:
        txn.put(key, codec.u64(value), db=self.dbs["meta"])

    def live_bytes(self, txn: lmdb.Transaction) -> int:
        """Bytes in pages that hold data, as seen by txn (a write txn sees its own changes).
        Pages on LMDB's free list are not counted, so a purge lowers it at once."""
        pages = 2  # the meta pages
        psize = 4096
        for db in self.dbs.values():
            st = txn.stat(db)
            psize = st["psize"]
            pages += st["branch_pages"] + st["leaf_pages"] + st["overflow_pages"]
        return pages * psize

    def release_pages(self) -> int:
        """Drop this process's resident pages of the data file; returns the bytes advised.

        Reading a large backlog through the memory map would otherwise leave every page read
        counted in the process's resident set, so RSS would grow with the backlog. LMDB maps
        the file shared and read-only (it writes with pwrite), so the pages stay in the OS page
        cache and the next access maps them again, with the same content. Linux only."""
        target = str((self.path / "data.mdb").resolve())
        released = 0
        try:
            with open("/proc/self/maps") as maps:
                ranges = [line.split()[0] for line in maps if line.rstrip().endswith(target)]
        except OSError:
            return 0
        for rng in ranges:
            start, end = (int(x, 16) for x in rng.split("-"))
            if _madvise(start, end - start):
                released += end - start
        return released

    def release_pages_every(self, interval_s: float) -> None:
        """release_pages(), at most once per interval (called after reads and commits, so the
        resident set stays flat however large the backlog grows or drains). Any thread."""
        now = time.monotonic()
        if now - self._released_at >= interval_s:
            self._released_at = now
            self.release_pages()

    def map_size(self) -> int:
        return int(self.env.info()["map_size"])

    def used_bytes(self) -> int:
        info = self.env.info()
        stat = self.env.stat()
        return int((info["last_pgno"] + 1) * stat["psize"])

    def close(self) -> None:
        with self._gate.exclusive():
            self.env.close()
        self._release_writer_lock()

    def _release_writer_lock(self) -> None:
        if self._writer_lock is not None:
            os.close(self._writer_lock)
            self._writer_lock = None
