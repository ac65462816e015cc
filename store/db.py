"""One SQLite database per node: a dedicated writer thread with group commit, and a reader.

Every state change is a *job*: a plain function ``job(conn) -> result`` that runs on the
writer thread inside a transaction. The writer takes every job waiting in its queue, runs each
in its own savepoint (a failing job is rolled back alone and its caller gets the exception),
commits those it ran (below) with one COMMIT — one fsync for many jobs — and only then wakes
their callers.
So a caller that got a result knows its effects are durable, and a job sees the state left by
every job queued before it by the same owner (below), and by every job whose outcome its
caller had: read-check-write inside a job is atomic.

A job may name its *owner* (the peer whose message it handles). The writer keeps the jobs
waiting by owner, taking in all that came each time; a batch runs each owner's from the front
until they have taken ``OWNER_SLICE`` seconds of the thread's CPU (its first always runs), and
the rest wait, in order, for the next batch, where every owner's first jobs run again. So a
peer whose messages are slow to handle (a partner flooding us with costly ones) delays
everyone else's by a slice a batch, not by everything it managed to queue, however much that
is, and still has the writer to itself when nobody else needs it.

Reads that need no transaction use a second connection on the event-loop thread: indexed
lookups take microseconds, less than the ~250 µs a thread hop costs here.

A node opens its database with a writer thread of its own and ``synchronous = FULL`` (a
commit survives a power cut). ``agentd sim`` runs hundreds of nodes in one process: there,
one :class:`SharedWriter` thread commits for all of them (hundreds of writer threads fight for
the GIL) and ``synchronous = NORMAL`` (a simulated crash is a process crash, which WAL mode
survives either way; only a power cut could lose the last commits).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import sqlite3
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import trio

from store.schema import SchemaError, migrate

if TYPE_CHECKING:
    from store.shared_writer import SharedWriter

T = TypeVar("T")
MAX_BATCH = 2000
# seconds of the writer thread's CPU one owner's jobs may take of a batch before the rest wait
# (its CPU, not the clock's: a job waiting for the GIL while the event loop runs is no cost of
# its owner's). Above what a legitimate peer's batch takes: at 25 ms, `bench chits` (calls of
# 100 payments, ~10 ms each, four at once a side) committed 120 times where it had 70, its
# calls waiting a commit more, and made a fifth fewer chits a second
OWNER_SLICE = 0.1
_log = logging.getLogger("agentd.store")


class DatabaseError(Exception):
    """The database cannot be opened, or the writer has stopped."""


# SQLite's primary result codes that say the database failed, not the statement: busy,
# locked, out of memory, read-only, I/O error, corrupt, full, cannot open, lock protocol,
# not a database
_FAILURE_CODES = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is the database failing (disk full, I/O error, locked, its file deleted
    or corrupt): work that meets it is tried again later. Bad SQL, a broken constraint or a
    misuse is a bug of ours instead, and surfaces as one."""
    if isinstance(exc, DatabaseError):
        return True
    return (isinstance(exc, sqlite3.Error)
            and (getattr(exc, "sqlite_errorcode", 0) & 0xFF) in _FAILURE_CODES)


class _Job:
    __slots__ = ("done", "error", "fn", "owner", "result")

    def __init__(self, fn: Callable[[sqlite3.Connection], Any], done: trio.Event | None,
                 owner: str | None = None) -> None:
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = done
        self.owner = owner


Waiting = OrderedDict[str | None, deque[_Job]]  # the writer's jobs not yet run, by owner


def _ran(conn: sqlite3.Connection) -> None:
    """A job's function once it has run: the writer lets go of what the real one captured
    (a message's object) while the job waits to be collected with its outcome."""
    raise AssertionError("a job runs once")


class PendingWrite(Generic[T]):
    """A queued job; ``await outcome()`` returns its result once committed."""

    __slots__ = ("_job",)

    def __init__(self, job: _Job) -> None:
        self._job = job

    @property
    def done(self) -> bool:
        return self._job.done is not None and self._job.done.is_set()

    async def outcome(self) -> T:
        """The job's result, or its exception. The wait is shielded: a job handed to the
        writer always finishes, and its caller always learns how, so nothing is committed
        behind a cancelled caller's back."""
        job = self._job
        assert job.done is not None
        if not job.done.is_set():
            with trio.CancelScope(shield=True):
                await job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result


_STOP = object()


SYNCHRONOUS = ("FULL", "NORMAL")


def _connect(path: Path, *, readonly: bool = False, synchronous: str = "FULL"
             ) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=30.0)
    conn.execute("PRAGMA busy_timeout = 30000")
    # A savepoint's undo journal (every job of a batch has one) is a temporary file once it
    # passes 64 KiB, and that file is not truncated when the savepoint is released, so a
    # busy writer spilled nearly every commit to /var/tmp: more pwrite calls than the WAL
    # itself took, ~7% of a lift's CPU. In memory it is emptied at each release: a job's
    # memory is bounded by the pages that one job changes.
    conn.execute("PRAGMA temp_store = MEMORY")
    if readonly:
        conn.execute("PRAGMA query_only = ON")
    else:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
    return conn


class Database:
    """The node's database. Use ``async with Database.open(path) as db``."""

    def __init__(self, path: Path, writer: sqlite3.Connection, reader: sqlite3.Connection,
                 shared: SharedWriter | None = None) -> None:
        self.path = path
        self._writer = writer
        self._reader = reader
        self._shared = shared
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._token = trio.lowlevel.current_trio_token()
        self._thread = threading.Thread(target=self._run, name=f"sqlite-writer:{path.name}")
        self._stopped = False
        self.commits = 0
        self.jobs = 0
        self.errors = 0  # failures of ours (disk full, I/O error, locked): never the caller's
        self.last_error: str | None = None
        self.last_error_at: int | None = None  # when (ms since the epoch): is it still news?
        self._files: dict[Path, tuple[int, int]] = {}  # (device, inode) of the db, its WAL
        self._gone: str | None = None  # why the files are no longer ours: no more writes
        self._failing = 0  # the writer's current streak of failed writes (logged once)
        self._files_gone()  # the files as opened: one replaced before the first commit shows

    @classmethod
    def open(cls, path: Path | str, *, shared: SharedWriter | None = None,
             synchronous: str = "FULL") -> _DatabaseContext:
        """``shared``: commit on that writer thread rather than one of our own;
        ``synchronous``: FULL (durable across a power cut) or NORMAL (across a crash)."""
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS}")
        return _DatabaseContext(Path(path), shared, synchronous)

    # -- the event-loop side -------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` in a transaction on the writer thread; return once it is committed."""
        return await self.start(fn).outcome()

    def start(self, fn: Callable[[sqlite3.Connection], T],
              owner: str | None = None) -> PendingWrite[T]:
        """Queue ``fn`` now and collect its outcome later, so callers can pipeline jobs
        (many in the same batch) while still learning each one's outcome in order.
        ``owner``: whose share of a batch it takes (``OWNER_SLICE``)."""
        if self._stopped:
            raise DatabaseError("the database is closed")
        job = _Job(fn, trio.Event(), owner)
        self._put(job)
        return PendingWrite(job)

    def submit(self, fn: Callable[[sqlite3.Connection], Any]) -> None:
        """Queue a job whose outcome nobody waits for (e.g. deleting acked outbox rows).

        It commits with the next batch; a failure is logged by the writer. Losing it in a
        crash is harmless by construction (the caller re-derives it).
        """
        if not self._stopped:
            self._put(_Job(fn, None))

    def _put(self, job: _Job) -> None:
        if self._shared is None:
            self._queue.put(job)
        else:
            self._shared.put(self, job)

    def reading(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run the repository function ``fn`` on the read connection (event loop, no wait):
        it sees the last committed state, as one snapshot (a read transaction: each
        statement of its own would see the writer's commits between them, such as a tally
        gone from one table and not yet found in the next). A failure of the database is
        counted, as a write's is."""
        conn = self._reader
        try:
            if conn.in_transaction:  # a reading within another: the outer one's snapshot
                return fn(conn)
            conn.execute("BEGIN")
            try:
                return fn(conn)
            finally:
                conn.execute("COMMIT")  # a read: ends the snapshot, writes nothing
        except sqlite3.Error as exc:
            if is_failure(exc):
                self._count_error(f"{type(exc).__name__}: {exc}")
            raise

    def read(self, sql: str, params: tuple | dict = ()) -> list[sqlite3.Row]:
        return self.reading(lambda conn: conn.execute(sql, params).fetchall())

    def read_one(self, sql: str, params: tuple | dict = ()) -> sqlite3.Row | None:
        return self.reading(lambda conn: conn.execute(sql, params).fetchone())

    # -- the writer thread ---------------------------------------------------------------

    def _run(self) -> None:
        conn = self._writer
        waiting: Waiting = OrderedDict()  # owner -> its jobs not yet run, in order
        stop = False
        while True:
            if not waiting:
                if stop:
                    return
                first = self._queue.get()
                if first is _STOP:
                    return
                waiting[first.owner] = deque([first])
            while not stop:  # all that came: another owner's job is never behind a backlog
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                waiting.setdefault(job.owner, deque()).append(job)
            self._commit(conn, waiting)
            for owner in list(waiting):  # who ran and has more goes last next time
                if waiting[owner]:
                    waiting.move_to_end(owner)
                else:
                    del waiting[owner]

    def commit_shared(self, batch: list[_Job]) -> None:
        """Commit every job of ``batch``, in order, with no slices (the shared writer's way:
        ``agentd sim``'s nodes are all ours, and closing waits for a job queued after all the
        others)."""
        waiting: Waiting = OrderedDict({None: deque(batch)})
        while waiting[None]:
            self._commit(self._writer, waiting, None)

    def _files_gone(self) -> str | None:
        """Why the database file or its WAL is no longer the one this node opened (deleted or
        replaced while it runs: what it wrote there since is lost), or None; once gone, for
        good. Two ``stat`` calls, ~3 µs."""
        if self._gone is not None:
            return self._gone
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            try:
                found = os.stat(path)
            except FileNotFoundError:
                if path in self._files or path == self.path:
                    self._gone = f"{path} was deleted while the node ran"
                continue
            identity = (found.st_dev, found.st_ino)
            if self._files.setdefault(path, identity) != identity:
                self._gone = f"{path} was replaced while the node ran"
        if self._gone is not None:
            _log.critical("%s: nothing more is written (what it would hold would be lost); "
                          "stop the node, and restore the file or start afresh", self._gone)
        return self._gone

    def _commit(self, conn: sqlite3.Connection, waiting: Waiting,
                owner_slice: float | None = OWNER_SLICE) -> None:
        """Run and commit the next batch of ``waiting`` (each owner's jobs from the front, up
        to its slice), or, once the files are gone, fail every job waiting; then wake the
        callers of those. The files are looked at after the commit: one deleted before it
        ended holds what the batch wrote where nobody will read it, and no caller may be told
        its work was done."""
        gone = self._gone
        if gone is None:
            batch = self._write(conn, waiting, owner_slice)
            gone = self._files_gone()
        else:
            batch = [job for jobs in waiting.values() for job in jobs]
            for jobs in waiting.values():
                jobs.clear()
        if gone is not None:
            self._count_error(gone)
            failure = DatabaseError(f"not written: {gone}")
            for job in batch:
                job.fn, job.error, job.result = _ran, failure, None
        for job in batch:  # a failure of the database is logged once per streak (_failed)
            if job.done is None and job.error is not None and not is_failure(job.error):
                _log.error("background database job failed (a bug?): %r", job.error)
        events = [job.done for job in batch if job.done is not None]
        if events:
            self._token.run_sync_soon(_set_all, events)

    def _write(self, conn: sqlite3.Connection, waiting: Waiting,
               owner_slice: float | None) -> list[_Job]:
        """Run jobs from the front of each owner's queue in ``waiting``, each in a
        savepoint, until the owner's ``owner_slice`` of this batch (seconds of this thread's
        CPU) is spent or ``MAX_BATCH`` jobs ran, and commit them together; returns the jobs
        that ran (taken off their queues)."""
        alone = sum(len(jobs) for jobs in waiting.values()) == 1  # no savepoint needed
        changes = conn.total_changes
        batch: list[_Job] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for jobs in waiting.values():
                spent = 0.0
                while jobs and len(batch) < MAX_BATCH and (owner_slice is None
                                                           or spent < owner_slice):
                    job = jobs.popleft()
                    batch.append(job)
                    started = time.thread_time()
                    self._run_job(conn, job, alone)
                    spent += time.thread_time() - started
            if conn.in_transaction:
                conn.execute("COMMIT")
            self.commits += 1
            self.jobs += len(batch)
            if (self._failing and conn.total_changes > changes  # one that wrote, not empty
                    and not any(is_failure(job.error) for job in batch)):
                _log.warning("database writes work again, after %d failed", self._failing)
                self._failing = 0
        except sqlite3.Error as exc:
            self._failed(exc)
            with contextlib.suppress(sqlite3.Error):
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
            failure = DatabaseError(f"commit failed, nothing in this batch was written: {exc}")
            for job in batch:
                job.error = failure
                job.result = None
        return batch

    def _run_job(self, conn: sqlite3.Connection, job: _Job, alone: bool) -> None:
        """Run one job in its own savepoint (none when it is alone: its failure undoes the
        transaction); its failure is its own, undone alone."""
        if not alone:
            conn.execute("SAVEPOINT job")
        try:
            job.result = job.fn(conn)
            job.fn = _ran  # what it captured can go now (a message's object)
        except BaseException as exc:  # the job's own failure: undo it alone
            job.fn = _ran
            job.error = exc
            if isinstance(exc, sqlite3.Error):
                self._failed(exc)
            if not alone:
                conn.execute("ROLLBACK TO job")
            elif conn.in_transaction:
                conn.execute("ROLLBACK")
        if not alone:
            conn.execute("RELEASE job")

    def _failed(self, exc: sqlite3.Error) -> None:
        """Count a failed write (getinfo shows each); log the first of a streak of failures
        of the database, not every job of it: the work that waits on them logs its own."""
        self._count_error(f"{type(exc).__name__}: {exc}")
        if not is_failure(exc):  # a statement's error: its caller has the exception
            return
        self._failing += 1
        if self._failing == 1:
            _log.error("database write failed (%s): nothing of it was written. Messages we "
                       "could not commit stay unacked for their senders to retry, and the "
                       "node's own work is tried again later; logged once until a write "
                       "works again (getinfo: db_errors, last_db_error)", self.last_error)

    def _count_error(self, error: str) -> None:
        """Count a failure of the database (shown by getinfo): a write's, on the writer
        thread, or a read's, on the event loop."""
        self.errors += 1
        self.last_error, self.last_error_at = error, time.time_ns() // 1_000_000

    # -- lifecycle -----------------------------------------------------------------------

    def _start(self) -> None:
        if self._shared is None:
            self._thread.start()

    @property
    def closed(self) -> bool:
        """Whether every job is done and the connections are closed (after ``_close``)."""
        return self._stopped and self._writer is None

    async def _close(self) -> None:
        if self._shared is None:
            self._stopped = True
            self._queue.put(_STOP)
            await trio.to_thread.run_sync(self._thread.join)
        else:  # the shared thread commits in order: once this job is done, all ours are
            last = self.start(lambda conn: None)
            self._stopped = True
            await last.outcome()
        self._writer.close()
        self._reader.close()
        self._writer = None  # type: ignore[assignment]


def _set_all(events: list[trio.Event]) -> None:
    for event in events:
        event.set()


def _make_private(path: Path) -> None:
    """The database holds signing seeds: it is 0600 whatever the umask. SQLite gives its
    -wal and -shm files the database file's mode; ones left by an older run are fixed too."""
    os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        with contextlib.suppress(FileNotFoundError):
            os.chmod(file, 0o600)


class _DatabaseContext:
    def __init__(self, path: Path, shared: SharedWriter | None, synchronous: str) -> None:
        self.path = path
        self.shared = shared
        self.synchronous = synchronous
        self.db: Database | None = None

    async def __aenter__(self) -> Database:
        writer = None
        try:
            _make_private(self.path)
            writer = _connect(self.path, synchronous=self.synchronous)
            migrate(writer)
            reader = _connect(self.path, readonly=True)
        except (sqlite3.Error, SchemaError, OSError) as exc:
            if writer is not None:
                writer.close()
            raise DatabaseError(f"cannot open database {self.path}: {exc}") from exc
        for conn in (writer, reader):
            conn.row_factory = sqlite3.Row
        self.db = Database(self.path, writer, reader, self.shared)
        self.db._start()
        return self.db

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.db is not None
        with trio.CancelScope(shield=True):
            await self.db._close()


@contextlib.contextmanager
def savepoint(conn: sqlite3.Connection, name: str = "step") -> Iterator[None]:
    """Undo what the block wrote if it raises (the exception propagates), keep it otherwise:
    part of a transaction that can fail alone."""
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")

