"""The coordinator's database connection, off the event loop, for SQLite or PostgreSQL.

A :class:`Database` owns ONE connection and ONE worker thread. Every statement of the
coordinator's stores runs in that thread (``await db.read(fn)`` / ``await db.write(fn)``),
so no database call ever blocks the event loop, and the calls of one process are applied
one at a time in submission order, exactly as the single sqlite3 connection did before
(ADR 0013). ``write`` runs ``fn`` in one transaction (SQLite ``BEGIN IMMEDIATE``,
PostgreSQL ``BEGIN``) and commits it before returning; any exception rolls it back.

The writes waiting for the worker thread are committed as one group (issue 14): each runs
in its own savepoint, so an exception rolls back that write alone, and one COMMIT (one
fsync of the write-ahead log) makes the group durable before any of its callers returns.
A write's effect, its atomicity and its order among the process's calls are what they were
with a transaction per write; only the number of fsyncs changes (one per group instead of
one per write), and the group's callers are answered on their event loop in one hand-off
(one wake-up of the loop per group, not one per write). On PostgreSQL a group is also one
BEGIN, one fencing check (ADR 0017: the lease row's FOR KEY SHARE lock, held until the
group's COMMIT, so a takeover waits for the group as it waited for one write) and one
COMMIT instead of one each per write (the one connection's round trips and commit waits
were the coordinator's bottleneck there); a group holds at most
:data:`PG_GROUP_MAX_WRITES` writes, so its savepoints never overflow the server's
per-transaction cache of subtransactions. A write's server-side failure (a statement
timeout, a serialization failure) is that write's own DatabaseUnavailable, as it was with a
transaction per write; a connection lost fails its whole group, which applies nothing.
Reads waiting for the worker thread are handed to it in one turn
and each answered on its caller's event loop as soon as it has run (no thread-pool future
per read: 44-51 -> 23-27 us of CPU per read at 32 concurrent readers; an answer is not held
back for the reads after it, one of which may be a long listing).

The stores write their SQL once, in the subset both engines share; :class:`Conn`
translates placeholders and exposes the few places the dialects differ
(:meth:`Conn.greatest`, :attr:`Conn.for_update`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import fcntl
import functools
import ipaddress
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from bridge.domain.errors import BridgeReason, InvalidInput, PreconditionFailed, Unavailable

T = TypeVar("T")
A = TypeVar("A")

# Connection parameters that carry a secret: never in the URL (review 2 finding 5).
_SECRET_PARAMS = frozenset({"password", "sslpassword"})


# SECURITY/reliability (review 2 finding 3): the coordinator's store calls run one at a time
# in one worker thread, so one statement that never returns (a lock held by a stuck
# session, a dead network path) would freeze every transfer. Bounded on the server
# (statement, lock wait, an idle open transaction) and on the socket (keepalives, unacked
# data): the call fails, the connection is replaced on the next call (``_ensure_connected``).
SESSION_TIMEOUTS = {
    "statement_timeout": "30s",
    "lock_timeout": "10s",
    "idle_in_transaction_session_timeout": "60s",
}
_KEEPALIVES = {
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "60000",  # milliseconds
}


# pg_try_advisory_lock(_LOCK_CLASS, hashtext(current_schema())): one coordinator per
# database and schema (review 2 finding 4), until the lease (ADR 0013) is wired.
_LOCK_CLASS = 0x4B535442  # "KSTB"


class DatabaseInUse(PreconditionFailed):
    """Another coordinator process holds this database (its exclusive start-up lock)."""


class DatabaseUnavailable(Unavailable):
    """The database cannot serve the call now: the PostgreSQL server cannot be reached or
    dropped the connection, a statement timed out, deadlocked or failed serialization, or
    SQLite stayed busy (UNAVAILABLE, reason DATABASE_UNAVAILABLE: the call may be retried,
    here or on another coordinator, and failing-over clients do move on). The transaction
    did not commit, or (a failure at COMMIT) its outcome is unknown; every step is
    idempotent (ADR 0002)."""

    kind = BridgeReason.DATABASE_UNAVAILABLE


class DatabaseSettingRefused(InvalidInput):
    """A PostgreSQL connection setting the coordinator refuses to use (a secret in the URL,
    a remote server without verified TLS). The message never contains the secret."""


class Dialect(enum.Enum):
    """The SQL engine behind a :class:`Database`."""

    SQLITE = "sqlite"
    POSTGRES = "postgres"


class Cursor(Protocol):
    """The part of a DB-API cursor the stores use."""

    @property
    def rowcount(self) -> int: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


class Conn:
    """A connection as the stores see it, inside the database's worker thread only.

    PostgreSQL: every statement runs on one psycopg cursor kept for the connection (no
    cursor made, and no column description built, per statement) and its rows are taken
    when it runs, so a result stays readable after the next statement (:class:`_PgResult`)."""

    def __init__(self, raw: Any, dialect: Dialect) -> None:
        self._raw = raw
        self.dialect = dialect
        self._cursor: Any = raw.cursor() if dialect is Dialect.POSTGRES else None

    def execute(self, sql: str, args: Sequence[object] = ()) -> Cursor:
        """Run one statement with ``?`` placeholders (translated for PostgreSQL)."""
        if self.dialect is Dialect.POSTGRES:
            cur = self._cursor
            cur.execute(_pg_sql(sql), tuple(args))
            return _PgResult(cur)
        result: Cursor = self._raw.execute(sql, tuple(args))
        return result

    def greatest(self, a: str, b: str) -> str:
        """SQL for the larger of two scalar expressions."""
        name = "GREATEST" if self.dialect is Dialect.POSTGRES else "MAX"
        return f"{name}({a}, {b})"

    @property
    def for_update(self) -> str:
        """`` FOR UPDATE`` on PostgreSQL (row lock until commit); SQLite's write
        transactions (BEGIN IMMEDIATE) already exclude every other writer."""
        return " FOR UPDATE" if self.dialect is Dialect.POSTGRES else ""


MAX_ROWS_PER_STATEMENT = 500
"""Most rows one multi-row statement carries (:func:`values_rows`): 500 rows of up to 11
values stay below both engines' bound on parameters (PostgreSQL 65,535; SQLite 32,766 since
3.32, the version bundled here is 3.40)."""


def values_rows(columns: int, rows: int) -> str:
    """``(?,?,...),(?,?,...)``: the placeholders of ``rows`` rows of ``columns`` values,
    for a multi-row ``VALUES`` (constant text: only placeholders, never a value).

    SECURITY (HA): batched store writes are such single statements, never psycopg's
    ``executemany``, which pipelines its statements: a process frozen (SIGSTOP, a hung
    host) between a pipeline's statements leaves its server session waiting for the
    pipeline's Sync, where neither ``statement_timeout`` nor
    ``idle_in_transaction_session_timeout`` ends it, and the transaction's locks (the lease
    row's ``FOR KEY SHARE``) held every takeover back until the frozen process died
    (``tests/e2e/test_ha.py``). A process frozen part-way through sending one large
    statement is not timed out either: the takeover ends such a term's sessions
    (``Lease.end_stale_term``, ADR 0017)."""
    if columns < 1 or not 1 <= rows <= MAX_ROWS_PER_STATEMENT:
        raise ValueError(f"{rows} rows of {columns} values")
    one = "(" + ",".join("?" * columns) + ")"
    return ",".join([one] * rows)


@functools.lru_cache(maxsize=1024)
def _pg_sql(sql: str) -> str:
    """``sql`` with ``?`` placeholders as psycopg's ``%s`` (a literal ``%`` doubled),
    translated once per statement text."""
    return sql.replace("%", "%%").replace("?", "%s")


_TUPLES_OK = 2
"""libpq's PGRES_TUPLES_OK (``psycopg.pq.ExecStatus.TUPLES_OK``): the statement returned
rows (a SELECT, or a write with RETURNING)."""


class _PgResult:
    """One PostgreSQL statement's outcome as plain tuples (``bytes`` for BYTEA): its row
    count and every row it returned, taken from the connection's cursor when it ran (the
    cursor runs the next statement). No rows for a statement that returns none."""

    __slots__ = ("_pos", "_rows", "rowcount")

    def __init__(self, cur: Any) -> None:
        self.rowcount = int(cur.rowcount)
        res = cur.pgresult
        self._rows: list[Any] = (
            cur.fetchall() if res is not None and res.status == _TUPLES_OK else []
        )
        self._pos = 0

    def fetchone(self) -> Any:
        """The next row, or None after the last."""
        if self._pos >= len(self._rows):
            return None
        self._pos += 1
        return self._rows[self._pos - 1]

    def fetchall(self) -> list[Any]:
        """The rows not yet fetched."""
        rest = self._rows[self._pos :]
        self._pos = len(self._rows)
        return rest


class _Job:
    """A queued call: its function, and the event-loop future its caller awaits on
    ``loop``."""

    __slots__ = ("fn", "future", "loop")

    def __init__(
        self,
        fn: Callable[[Conn], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.fn = fn
        self.future = future
        self.loop = loop


class _Write(_Job):
    """A queued write: a job with the thread-safe future the worker thread runs it under
    (``done``: its cancellation, from the caller, means it never starts); the caller's
    ``future`` is settled from ``done`` by :func:`_answer_writes`."""

    __slots__ = ("done",)

    def __init__(
        self,
        fn: Callable[[Conn], Any],
        future: asyncio.Future[Any],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(fn, future, loop)
        self.done: concurrent.futures.Future[Any] = concurrent.futures.Future()
        # A caller cancelled before its write started: the write never runs (as
        # ``asyncio.wrap_future`` did); once it runs it commits or rolls back as a whole.
        future.add_done_callback(self._cancel_if_cancelled)

    def _cancel_if_cancelled(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self.done.cancel()


def _answer_writes(jobs: Sequence[_Write]) -> None:
    """Worker thread (or the loop, for writes never handed over): settle the callers'
    futures of ``jobs``, whose ``done`` futures are settled (or cancelled), with ONE
    hand-off to each event loop for all of them, not one per write."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Write]] = {}
    for job in jobs:
        by_loop.setdefault(job.loop, []).append(job)
    for loop, mine in by_loop.items():
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits them
            loop.call_soon_threadsafe(_settle_writes, mine)


def _settle_writes(jobs: Sequence[_Write]) -> None:
    """On the callers' loop: each caller gets its write's result or exception (a caller
    that was cancelled meanwhile gets nothing), each on its own (:func:`_settle`)."""
    for job in jobs:
        if job.future.done() or not job.done.done():
            continue
        if job.done.cancelled():
            job.future.cancel()
            continue
        error = job.done.exception()
        _settle(job.future, None if error is not None else job.done.result(), error)


class _Read(_Job):
    """A queued read: a job answered on its caller's loop as soon as it has run."""

    __slots__ = ()

    def answer(self, value: Any, error: BaseException | None = None) -> None:
        """Settle the caller's future with ``value``, or raise ``error`` to it, from any
        thread; a cancelled caller's answer, or one for a closed loop, is dropped."""
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it
            self.loop.call_soon_threadsafe(_settle, self.future, value, error)


def _settle(future: asyncio.Future[Any], value: Any, error: BaseException | None) -> None:
    """On the caller's loop: ``future`` gets ``value`` or ``error`` (nothing if it was
    cancelled meanwhile). An error a future cannot carry (StopIteration) reaches it as a
    RuntimeError, so no caller is left waiting."""
    if future.done():  # cancelled meanwhile
        return
    if error is None:
        future.set_result(value)
        return
    try:
        future.set_exception(error)
    except TypeError:
        future.set_exception(RuntimeError(f"{type(error).__name__}: {error}"))


PG_GROUP_MAX_WRITES = 64
"""Most writes in one PostgreSQL group transaction: PostgreSQL caches 64 subtransaction ids
per transaction (PGPROC_MAX_CACHED_SUBXIDS); past them every snapshot of every session
consults pg_subtrans (subtransaction overflow) until the transaction ends."""


class Database:
    """One connection served by one worker thread; see the module docstring.

    GUARANTEES: ``write`` is atomic and durable when it returns (SQLite: WAL with
    ``synchronous=FULL``; PostgreSQL: a committed transaction with the server's
    ``synchronous_commit``); statements never run on the caller's thread. A caller that is
    cancelled while its job runs does not interrupt it: the job still commits or rolls back
    as a whole (the same all-or-nothing the synchronous calls gave); a job not yet started
    when its caller is cancelled never runs.
    """

    def __init__(self, dialect: Dialect, connect: Callable[[], Any], label: str) -> None:
        self.dialect = dialect
        self.label = label
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"db-{dialect.value}"
        )
        self._connect = connect
        self._raw: Any = self._pool.submit(connect).result()
        self._conn = Conn(self._raw, dialect)
        self._closed = False
        self._users = 0
        self._guard = threading.Lock()
        self._exclusive = False
        self._shared = False
        self._lock_file: Any = None
        self.path: Path | None = None
        """The SQLite file (None on PostgreSQL)."""
        self._fence: Callable[[Conn], None] | None = None
        self._group_max = PG_GROUP_MAX_WRITES if dialect is Dialect.POSTGRES else None
        self._pending: list[_Write] = []
        self._pending_guard = threading.Lock()
        self._flush_queued = False
        self._reads: list[_Read] = []  # guarded by _pending_guard, like the writes
        self._reads_queued = False
        self.commits = 0
        """Write transactions committed so far (a group counts once; a test figure)."""

    def set_fence(self, check: Callable[[Conn], None] | None) -> None:
        """Run ``check`` first in every later write transaction (None: no check).

        SECURITY (ADR 0017): the active/passive coordinator sets the lease's fencing check
        here, so every store write of this process, whatever store makes it, is refused by
        the database (``check`` raises, the transaction rolls back, nothing is written)
        unless this process's lease token is still the current one."""
        self._fence = check

    def claim_exclusive(self) -> None:
        """Hold this database for this process alone until :meth:`close`, or raise
        DatabaseInUse (nothing else changed) when another process holds it.

        SECURITY (review 2 finding 4): two coordinators on one database would both drive
        the same transfers and halt orders. PostgreSQL: a session-level advisory lock
        (released by the server when the session ends; re-taken when a broken connection
        is replaced, DatabaseInUse if another coordinator took it meanwhile). SQLite: an
        exclusive ``flock`` on ``<file>.lock`` (released when the process exits)."""
        if self.dialect is Dialect.SQLITE:
            assert self.path is not None
            if self._lock_file is None:  # taken already when opened exclusive
                self._lock_file = _exclusive_lock(self.path, self.label)
            return
        self._pool.submit(self._take_advisory_lock).result()
        self._exclusive = True

    def claim_shared(self) -> None:
        """Hold this database shared with other active/passive coordinators (``[ha]``) until
        :meth:`close`, or raise DatabaseInUse (nothing else changed) while a coordinator
        WITHOUT ``[ha]`` holds it exclusive.

        SECURITY (HA review finding 1): a coordinator without ``[ha]`` never looks at the
        lease and installs no fence, so it must never write beside an HA cluster. The HA
        coordinators take the same advisory lock as :meth:`claim_exclusive`, in shared
        mode (PostgreSQL ``pg_try_advisory_lock_shared``, re-taken when a broken
        connection is replaced): the exclusive try-lock then fails while any HA
        coordinator is up, and this one fails while a non-HA coordinator is up. SQLite:
        nothing to do (the store is opened under its exclusive lock file)."""
        if self.dialect is Dialect.SQLITE:
            return
        self._pool.submit(self._take_advisory_lock, True).result()
        self._shared = True

    def _take_advisory_lock(self, shared: bool = False) -> None:
        fn = "pg_try_advisory_lock_shared" if shared else "pg_try_advisory_lock"
        row = self._raw.execute(
            f"SELECT {fn}(%s, hashtext(current_schema()))", (_LOCK_CLASS,)
        ).fetchone()
        if not row or row[0] is not True:
            raise DatabaseInUse(
                f"{self.label} is in use by "
                + (
                    "a coordinator without [ha] (its exclusive advisory lock is held)"
                    if shared
                    else "another coordinator (its advisory lock is held)"
                )
            )

    def acquire(self) -> Database:
        """Count one more store sharing this database (it closes when the last closes)."""
        with self._guard:
            self._users += 1
        return self

    def run_sync(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in the worker thread and wait (start-up and tests only)."""
        return self._pool.submit(fn, self._conn).result()

    def write_sync(self, fn: Callable[[Conn], T]) -> T:
        """:meth:`write`, waiting in the calling thread (start-up only: migrations)."""
        return self._pool.submit(self._transaction, fn).result()

    async def read(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` (reads only) in the worker thread and return its answer (or raise its
        typed error).

        Reads waiting for the worker thread are handed to it together and run one after
        the other in call order, each answered as soon as it has run (issue 14: one
        hand-off to the thread per turn instead of a thread-pool future per read; the
        coordinator reads several rows per transfer and step). A read runs after every
        write and read called before it was handed over, as before. A read whose caller
        was cancelled may still run (it changes nothing); its answer is dropped."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        with self._pending_guard:
            self._reads.append(_Read(fn, future, loop))
            queue = not self._reads_queued
            self._reads_queued = True
        if queue:  # no await since queueing: a later call reaches the thread after this
            try:
                self._pool.submit(self._run_reads)
            except BaseException as exc:  # closed (RuntimeError): none of them will run
                with self._pending_guard:
                    orphans, self._reads = self._reads, []
                    self._reads_queued = False
                for orphan in orphans:
                    orphan.answer(None, exc)
        return await future

    def _run_reads(self) -> None:
        """Worker thread: run every read handed over so far, answering each at once."""
        with self._pending_guard:
            reads, self._reads = self._reads, []
            self._reads_queued = False
        if self.dialect is Dialect.POSTGRES and len(reads) > 1:
            self._run_pg_reads(reads)
            return
        for read in reads:
            try:
                value = self._typed(self._read, read.fn)
            except BaseException as exc:  # the caller's, typed as before (DatabaseUnavailable)
                read.answer(None, exc)
            else:
                read.answer(value)

    def _run_pg_reads(self, reads: Sequence[_Read]) -> None:
        """Worker thread, PostgreSQL: the reads of one turn in ONE read-only snapshot (one
        ``BEGIN`` and one ``ROLLBACK`` for all of them, not one each), each answered as soon
        as it has run. Every read of the turn was called before the turn began, so the
        snapshot, taken when its first read runs, is at least as new as each read needs
        (it sees every write that returned before the read was called). A read that
        raises gets its own error and ends the snapshot; the next read begins a new one."""
        in_snapshot = False
        try:
            for read in reads:
                try:
                    if not in_snapshot:
                        self._typed(self._begin_snapshot, None)
                        in_snapshot = True
                    value = self._typed(read.fn, self._conn)
                except BaseException as exc:  # the caller's, typed as before
                    read.answer(None, exc)
                    if in_snapshot:
                        in_snapshot = False
                        with contextlib.suppress(Exception):
                            self._end("ROLLBACK")
                else:
                    read.answer(value)
        finally:
            if in_snapshot:
                with contextlib.suppress(Exception):
                    self._end("ROLLBACK")

    def _begin_snapshot(self, _: None) -> None:
        """PostgreSQL: reconnect if the connection broke, then open a read-only snapshot."""
        self._ensure_connected()
        self._conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    async def write(self, fn: Callable[[Conn], T]) -> T:
        """Run ``fn`` in one transaction in the worker thread (in its own savepoint of a
        group transaction; see the module docstring); committed when this returns."""
        loop = asyncio.get_running_loop()
        job = _Write(fn, loop.create_future(), loop)
        with self._pending_guard:
            self._pending.append(job)
            queue = not self._flush_queued
            self._flush_queued = True
        # No await between queueing the write and queueing its flush: any later call of this
        # event loop reaches the worker thread after the flush that applies this write.
        if queue:
            try:
                self._pool.submit(self._flush)
            except BaseException as exc:  # closed (RuntimeError), or anything else: none waits
                # Review (M2): whatever stops the flush from being queued fails every write
                # queued behind it; none is left waiting for a flush that never comes.
                with self._pending_guard:
                    orphans, self._pending = self._pending, []
                    self._flush_queued = False
                for orphan in orphans:
                    if orphan.done.set_running_or_notify_cancel():
                        orphan.done.set_exception(exc)
                _answer_writes(orphans)
                if not isinstance(exc, RuntimeError):
                    raise
        result: T = await job.future
        return result

    def _flush(self) -> None:
        """Worker thread: apply every write queued so far, as one group transaction, then
        answer all of their callers at once (:func:`_answer_writes`)."""
        with self._pending_guard:
            jobs, self._pending = self._pending, []
            self._flush_queued = False
        try:
            self._apply(jobs)
        finally:
            _answer_writes(jobs)

    def _apply(self, jobs: Sequence[_Write]) -> None:
        """Worker thread: run ``jobs`` (those not cancelled) and settle each ``done``, in
        groups of at most ``_group_max`` (PostgreSQL), one after the other."""
        live = [job for job in jobs if not job.done.cancelled()]
        size = self._group_max or len(live) or 1
        for start in range(0, len(live), size):
            self._apply_group(live[start : start + size])

    def _apply_group(self, live: Sequence[_Write]) -> None:
        """Worker thread: run ``live`` as one group (one write: its own transaction)."""
        if len(live) == 1:
            job = live[0]
            if not job.done.set_running_or_notify_cancel():
                return  # its caller was cancelled before it started: it never runs
            try:
                job.done.set_result(self._typed(self._transaction, job.fn))
            except BaseException as exc:
                job.done.set_exception(exc)
            return
        if not live:
            return
        try:
            outcomes = self._typed(self._group_transaction, live)
        except BaseException as exc:  # nothing of the group committed
            for job in live:
                if job.done.done():
                    continue
                if job.done.running() or job.done.set_running_or_notify_cancel():
                    job.done.set_exception(exc)
            return
        for job, (ok, value) in zip(live, outcomes, strict=True):
            if ok is None:
                continue  # cancelled before it started: never ran, its caller was told
            if ok:
                job.done.set_result(value)
            else:
                job.done.set_exception(value)

    def _group_transaction(self, jobs: Sequence[_Write]) -> list[tuple[bool | None, Any]]:
        """One transaction for ``jobs``, each in its own savepoint: an exception rolls back
        that job alone and becomes its outcome; the group commits or fails as a whole
        (BEGIN, the fence, a savepoint that cannot be undone, a connection left unusable,
        COMMIT)."""
        outcomes: list[tuple[bool | None, Any]] = []
        self._ensure_connected()
        self._conn.execute("BEGIN IMMEDIATE" if self.dialect is Dialect.SQLITE else "BEGIN")
        try:
            if self._fence is not None:
                self._fence(self._conn)  # SECURITY: fencing token check, same transaction
            for job in jobs:
                # Review (L1): a caller cancelled while earlier writes of its group ran is
                # still one whose write had not started: it never runs.
                if not job.done.set_running_or_notify_cancel():
                    outcomes.append((None, None))
                    continue
                self._conn.execute("SAVEPOINT kstb_write")
                try:
                    value = job.fn(self._conn)
                except Exception as exc:
                    if not self._savepoint_usable(exc):
                        # Review (M1): SQLite rolled the whole transaction back itself (a
                        # full disk, an I/O error), or the PostgreSQL connection is unusable:
                        # nothing of the group applied; every write gets this error
                        # (``_typed`` maps busy/locked, and a lost connection).
                        raise
                    self._conn.execute("ROLLBACK TO SAVEPOINT kstb_write")
                    self._conn.execute("RELEASE SAVEPOINT kstb_write")
                    outcomes.append((False, self._write_error(exc)))
                else:
                    if self.dialect is Dialect.SQLITE:
                        # PostgreSQL keeps it (a round trip saved per write): the next
                        # write's savepoint nests in it, a ROLLBACK TO undoes the newest
                        # (that write alone), and COMMIT commits them all. The group bound
                        # keeps the nesting within the server's cached subtransactions.
                        # SQLite releases: its cost per page written grows with the open
                        # savepoints, and its groups have no bound.
                        self._conn.execute("RELEASE SAVEPOINT kstb_write")
                    outcomes.append((True, value))
        except BaseException:
            # SQLite may have rolled the whole transaction back itself (a full disk, an I/O
            # error): then the savepoint is gone, nothing of the group applied, and the
            # error that said so is the one every write gets.
            if self.dialect is Dialect.POSTGRES or self._raw.in_transaction:
                self._end("ROLLBACK")
            raise
        self._conn.execute("COMMIT")
        self.commits += 1
        return outcomes

    def _savepoint_usable(self, exc: BaseException) -> bool:
        """Whether the group's transaction survives ``exc`` raised by one of its writes, so
        rolling back to that write's savepoint undoes it alone: not after SQLite rolled the
        whole transaction back, nor on a PostgreSQL connection that is closed (lost, or
        ended by the server). A rollback to the savepoint that fails fails the group."""
        if self.dialect is Dialect.SQLITE:
            return bool(self._raw.in_transaction)
        return not self._raw.closed

    def _write_error(self, exc: BaseException) -> BaseException:
        """What one write of a group that raised ``exc`` gets, as ``_typed`` gave a write
        of its own: a busy SQLite file or a PostgreSQL OperationalError (a statement
        timeout, a serialization failure, a deadlock) as DatabaseUnavailable; any other
        exception unchanged."""
        if self.dialect is Dialect.SQLITE:
            return self._sqlite_error(exc)
        import psycopg

        if not isinstance(exc, psycopg.OperationalError):
            return exc
        unavailable = DatabaseUnavailable(f"database {self.label} unavailable: {exc}"[:400])
        unavailable.__cause__ = exc
        return unavailable

    def _sqlite_error(self, exc: BaseException) -> BaseException:
        """A SQLite busy/locked error as DatabaseUnavailable; any other exception unchanged."""
        if not isinstance(exc, sqlite3.OperationalError):
            return exc
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            return exc
        unavailable = DatabaseUnavailable(f"database {self.label} busy: {exc}"[:400])
        unavailable.__cause__ = exc
        return unavailable

    def _typed(self, run: Callable[[A], T], arg: A) -> T:
        """``run(arg)``, a lost PostgreSQL connection or a SQLite file busy beyond its
        ``busy_timeout`` raised as DatabaseUnavailable (nothing applied either way)."""
        if self.dialect is not Dialect.POSTGRES:
            try:
                return run(arg)
            except sqlite3.OperationalError as exc:
                # ---- batchfix: another process holding the file's write lock longer than
                # busy_timeout is transient, like a lost PostgreSQL connection: UNAVAILABLE
                # (retryable; a batch item says RETRYABLE), not an internal error.
                mapped = self._sqlite_error(exc)
                if mapped is exc:
                    raise
                if self._raw.in_transaction:
                    self._raw.execute("ROLLBACK")
                raise mapped from exc
        import psycopg

        try:
            return run(arg)
        except psycopg.Error as exc:
            # The server or the path to it failed, or the server ended the session (e.g.
            # its idle-in-transaction timeout: HA review finding 2), not a constraint or an
            # SQL error, which stay as they are. The message names host and port only.
            if not isinstance(exc, psycopg.OperationalError) and not self._raw.closed:
                raise
            raise DatabaseUnavailable(f"database {self.label} unavailable: {exc}"[:400]) from exc

    def _ensure_connected(self) -> None:
        """PostgreSQL: replace a connection the server or network broke (a call that was
        running on it failed, its transaction did nothing); the next call reconnects."""
        if self.dialect is Dialect.POSTGRES and self._raw.closed:
            self._raw = self._connect()
            self._conn = Conn(self._raw, self.dialect)
            if self._exclusive:
                self._take_advisory_lock()
            elif self._shared:
                self._take_advisory_lock(shared=True)

    def _end(self, statement: str) -> None:
        """ROLLBACK/COMMIT; a rollback on a broken connection is moot (nothing applied)."""
        if self.dialect is Dialect.POSTGRES and self._raw.closed and statement == "ROLLBACK":
            return
        self._conn.execute(statement)

    def _read(self, fn: Callable[[Conn], T]) -> T:
        if self.dialect is Dialect.SQLITE:
            return fn(self._conn)
        # PostgreSQL: a read of several statements sees one snapshot.
        self._begin_snapshot(None)
        try:
            return fn(self._conn)
        finally:
            self._end("ROLLBACK")

    def _transaction(self, fn: Callable[[Conn], T]) -> T:
        self._ensure_connected()
        self._conn.execute("BEGIN IMMEDIATE" if self.dialect is Dialect.SQLITE else "BEGIN")
        try:
            if self._fence is not None:
                self._fence(self._conn)  # SECURITY: fencing token check, same transaction
            result = fn(self._conn)
        except BaseException:
            self._end("ROLLBACK")
            raise
        # A COMMIT whose connection breaks raises: the caller cannot know whether it
        # applied, exactly as with a crash; every step is idempotent (ADR 0002).
        self._conn.execute("COMMIT")
        self.commits += 1
        return result

    def close(self) -> None:
        """Release one user; the last one closes the connection and stops the thread."""
        with self._guard:
            self._users = max(0, self._users - 1)
            if self._users or self._closed:
                return
            self._closed = True
        self._pool.submit(self._raw.close).result()
        self._pool.shutdown(wait=True)
        if self._lock_file is not None:
            self._lock_file.close()  # releases the flock


def _exclusive_lock(path: Path, label: str) -> Any:
    """The store's lock file (``bridge.storage.sqlite.lock_path``: named from the resolved
    path) held exclusive, or DatabaseInUse."""
    from bridge.storage.sqlite import lock_path

    fh = open(lock_path(path), "a+b")  # noqa: SIM115 (held until close)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.close()
        raise DatabaseInUse(
            f"{label} is in use by another coordinator or a restore (its lock file is held)"
        ) from None
    return fh


def open_sqlite(path: Path, *, exclusive: bool = False) -> Database:
    """The coordinator's SQLite file (WAL, fsync per commit), migrated to the latest
    schema version, refusing (nothing changed) a backup copied into place (NotRestored),
    another kind of store (WrongStore) and a schema not exactly the coordinator's
    (SchemaMismatch), before and after migrating. With ``exclusive`` the store's lock is
    taken BEFORE the file is connected to or migrated (review s17 finding 6):
    DatabaseInUse while another coordinator or a restore holds it, and nothing touched."""
    from bridge.coordinator import schema
    from bridge.storage.sqlite import inspect_store

    path.parent.mkdir(parents=True, exist_ok=True)
    held = _exclusive_lock(path, str(path)) if exclusive else None
    try:
        if path.is_file():
            # SECURITY (review s17 findings 1, 3): read-only, before anything writes: not a
            # backup copied into place, not another kind, exactly the coordinator's schema.
            inspect_store(path, schema.KIND, schema.LATEST, schema.canonical_sqlite, schema.MARKERS)
    except BaseException:
        if held is not None:
            held.close()
        raise

    def connect() -> sqlite3.Connection:
        raw = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        raw.execute("PRAGMA journal_mode=WAL")
        raw.execute("PRAGMA synchronous=FULL")
        raw.execute("PRAGMA busy_timeout=10000")
        return raw

    try:
        db = Database(Dialect.SQLITE, connect, str(path))
    except BaseException:
        if held is not None:
            held.close()
        raise
    db.path = path
    db._lock_file = held
    db = _migrated(db)
    try:
        _check_migrated(path)
    except BaseException:
        db.close()
        raise
    return db


def _check_migrated(path: Path) -> None:
    """SchemaMismatch unless the migrated file's schema is exactly the coordinator's."""
    from bridge.coordinator import schema
    from bridge.storage.schema import check_schema, inspect

    raw = inspect(path)
    try:
        check_schema(raw, schema.KIND, schema.LATEST, schema.canonical_sqlite(schema.LATEST))
    finally:
        raw.close()


def coordinator_session_name(instance: str) -> str:
    """The PostgreSQL ``application_name`` of every session of the coordinator process whose
    lease ``instance`` (:class:`~bridge.coordinator.lease.Lease`) this is: how a standby
    finds the sessions of an expired term that still hold the lease row (ADR 0017)."""
    return f"kstb-coordinator/{instance}"


def open_postgres(
    url: str, password: str | None = None, session_name: str | None = None
) -> Database:
    """A PostgreSQL database (``postgresql://user@host:port/name``), migrated to the latest
    schema version; every session it opens is named ``session_name`` (``application_name``)
    when given. SECURITY: the password comes from ``password`` (a file or environment
    variable read by the caller), never from the URL, so the URL can be logged."""
    import psycopg

    params = {**_KEEPALIVES, **postgres_params(url)}
    if session_name is not None:
        params["application_name"] = session_name

    def connect() -> Any:
        kwargs: dict[str, Any] = {**params, "autocommit": True, "connect_timeout": 10}
        if password is not None:
            kwargs["password"] = password
        raw = psycopg.connect(**kwargs)
        try:
            for name, value in SESSION_TIMEOUTS.items():
                raw.execute(f"SET {name} = '{value}'")
        except BaseException:
            raw.close()
            raise
        return raw

    db = Database(Dialect.POSTGRES, connect, redact(url))
    return _migrated(db)


def _migrated(db: Database) -> Database:
    """``db`` at the latest schema version; closed if migrating fails."""
    from bridge.coordinator.schema import migrate

    try:
        migrate(db)
    except BaseException:
        db.close()
        raise
    return db


def postgres_params(url: str) -> dict[str, str]:
    """The libpq connection parameters of ``url``, parsed by psycopg (the same parser that
    connects), after the coordinator's checks.

    SECURITY (review 2 finding 5): a ``password`` or ``sslpassword`` in any form (URL
    userinfo or query parameter) raises DatabaseSettingRefused, whose message never
    contains it; the password comes from ``database_password_file`` or the environment."""
    from psycopg.conninfo import conninfo_to_dict

    if urlsplit(url).password is not None:
        raise DatabaseSettingRefused(
            "a PostgreSQL URL must not contain a password (use database_password_file)"
        )
    try:
        raw = conninfo_to_dict(url)
    except Exception:  # the parser's message may quote the URL, secrets included
        raise DatabaseSettingRefused(f"not a valid PostgreSQL URL: {redact(url)}") from None
    params = {k: str(v) for k, v in raw.items() if v is not None}
    found = sorted(_SECRET_PARAMS & params.keys())
    if found:
        raise DatabaseSettingRefused(
            f"a PostgreSQL URL must not contain {'/'.join(found)} (use database_password_file)"
        )
    _require_verified_tls(params)
    return params


def _is_local_host(host: str) -> bool:
    """A unix-socket directory, ``localhost`` or a loopback address."""
    if host == "" or host.startswith("/") or host.startswith("@") or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _require_verified_tls(params: dict[str, str]) -> None:
    """Refuse a server reached over the network without verified TLS.

    SECURITY (review 2 finding 2): the database holds the halt book, the transfer states
    and the holds; libpq's default (``sslmode=prefer``) lets anyone on the path downgrade
    and rewrite them. Any host other than a unix socket or loopback needs
    ``sslmode=verify-full`` and a root certificate (``sslrootcert`` or libpq's default
    ``~/.postgresql/root.crt``)."""
    hosts = params.get("host", os.environ.get("PGHOST", ""))
    addrs = params.get("hostaddr", "")
    names = [h for h in (hosts.split(",") + addrs.split(",")) if h]
    if all(_is_local_host(h) for h in names):
        return
    if params.get("sslmode") != "verify-full":
        raise DatabaseSettingRefused(
            "a PostgreSQL server that is not on this host needs sslmode=verify-full"
            f" (got sslmode={params.get('sslmode', '<default prefer>')})"
        )
    default_root = Path.home() / ".postgresql" / "root.crt"
    given = "sslrootcert" in params or "PGSSLROOTCERT" in os.environ
    if not given and not default_root.exists():
        raise DatabaseSettingRefused(
            "sslmode=verify-full needs sslrootcert (or libpq's default"
            f" {default_root}) to verify the PostgreSQL server"
        )


def redact(url: str) -> str:
    """``url`` without any secret (safe to log): the userinfo password and every
    ``password`` / ``sslpassword`` query parameter are replaced by ``***``."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}:***@" + netloc.rpartition("@")[2]
        query = urlencode(
            [
                (k, "***" if k.lower() in _SECRET_PARAMS else v)
                for k, v in parse_qsl(parts.query, keep_blank_values=True)
            ],
            safe="*/",
        )
        return urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return "postgresql://<unparsable, redacted>"


def is_postgres_url(value: str) -> bool:
    """True for a ``postgresql://`` / ``postgres://`` database setting."""
    return value.startswith(("postgresql://", "postgres://"))


def open_database(
    spec: str | Path,
    password: str | None = None,
    *,
    exclusive: bool = False,
    session_name: str | None = None,
) -> Database:
    """The database ``spec`` names: a PostgreSQL URL (its sessions named ``session_name``
    when given), else a SQLite file path (with ``exclusive``, its lock taken before it is
    opened: see :func:`open_sqlite`)."""
    if isinstance(spec, str) and is_postgres_url(spec):
        if password is None:
            password = os.environ.get("BRIDGE_DATABASE_PASSWORD")
        return open_postgres(spec, password, session_name)
    return open_sqlite(Path(spec), exclusive=exclusive)


def as_database(target: Database | Path) -> Database:
    """A store's database: shared when given one, else the SQLite file at ``target``."""
    if isinstance(target, Database):
        return target.acquire()
    return open_sqlite(target).acquire()
